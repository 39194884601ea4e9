"""The HTML study report: every section, one embedded figure per plot, escaped user text, and no network."""

from __future__ import annotations

import html
import math
import re

import optuna
import pytest
from tests.conftest import sentiment_rows, write_csv

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.errors import ConfigError, RunNotFoundError
from tuneloop.report.html import spearman_rho, write_report
from tuneloop.store.workspace import Workspace

SECTIONS = ("Learning curves", "Decision timeline", "Trials", "Parameter importance",
            "Confusion matrix of the best model", "Seed check")


@pytest.fixture(scope="module")
def study(tiny_model, tmp_path_factory):
    """A guided study of up to 8 trials with its seed check (a re-run of each of the top two), on the tiny
    model: seconds."""
    folder = tmp_path_factory.mktemp("report")
    data = write_csv(folder / "train.csv", ["text", "label"], sentiment_rows(40))
    result = api.tune(data, model=str(tiny_model), workspace=folder / "ws", name="s1", budget="8trials",
                      recipe=Recipe(epochs=2, batch_size=8, patience=0), prune="none", seed_check=True,
                      refit=False)
    return result, folder / "ws"


@pytest.fixture(scope="module")
def report(study):
    result, workspace = study
    return write_report(workspace, result.study_id)


def headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def copy_study(workspace, source: str, new_id: str, rows: list[dict], **option_changes) -> None:
    """A new study in the same workspace whose trials are ``rows`` (pointing at the source's runs)."""
    with Workspace.open(workspace) as store:
        row = next(s for s in store.studies() if s["id"] == source)
        store.create_study(new_id, row["strategy"], row["metric"], {**row["options"], **option_changes})
        for number, trial in enumerate(rows):
            store.start_trial(new_id, number, number, trial["recipe"], trial["reason"])
            store.end_trial(new_id, number, status=trial["status"], run_id=trial["run_id"], value=trial["value"],
                            diagnosis=trial["diagnosis"], summary=trial["diagnosis_summary"],
                            evidence=trial["evidence"], seconds=trial["seconds"])
        store.finish_study(new_id, "copied for a test")


def trial_rows(workspace, study_id: str) -> list[dict]:
    with Workspace.open(workspace) as store:
        return store.trials(study_id)


def test_report_has_every_section_one_figure_per_plot_and_no_external_reference(study, report):
    result, workspace = study
    assert report == workspace / "reports" / "s1.html"
    page = report.read_text(encoding="utf-8")
    assert headings(page) == list(SECTIONS)
    assert "<h1>Study s1</h1>" in page
    # two learning-curve figures, the importance chart, the confusion matrix, the seed check
    assert page.count("<img") == 5
    assert page.count('src="data:image/png;base64,') == 5
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert not list(report.parent.glob("*.partial")), "written atomically"


def test_report_tells_every_decision_and_names_the_studys_best_run(study, report):
    result, _ = study
    page = report.read_text(encoding="utf-8")
    timeline = page[page.index("<h2>Decision timeline</h2>"):page.index("<h2>Trials</h2>")]
    for trial in result.trials:
        assert html.escape(trial.reason) in timeline
        if trial.diagnosis is not None:  # a soup is made, not trained: nothing to read off curves
            assert html.escape(trial.diagnosis.summary) in timeline
    assert timeline.count("<li") == len(result.trials)
    header = page[:page.index("<h2>")]
    assert result.best_run.id in header, "the report's best is the study's best (after the seed check)"
    assert f"{result.best_run.metrics['val_accuracy']:.4f}" in header


def test_trials_table_shows_only_the_knobs_that_vary(study, report):
    page = report.read_text(encoding="utf-8")
    table = page[page.index("<h2>Trials</h2>"):page.index("<h2>Parameter importance</h2>")]
    columns = re.findall(r"<th>(.*?)</th>", table)
    assert {"trainable_layers", "learning_rate", "seed"} <= set(columns)
    assert not {"batch_size", "dropout", "max_length"} & set(columns)
    assert table.count("<tr") == 1 + len(study[0].trials)


def test_seed_check_groups_the_reruns_by_recipe(study, report):
    result, _ = study
    page = report.read_text(encoding="utf-8")
    section = page[page.index("<h2>Seed check</h2>"):]
    groups = result.seed_check.groups
    assert len(groups) == 2
    for group in groups:
        assert f"trial {group.original}" in section
        assert f"{group.mean:.4f}</b> ± {group.half_width:.4f}" in section
    assert html.escape(result.seed_check.verdict.capitalize()) in section


@pytest.mark.parametrize("combined_by, said", [("averaged predictions", "their averaged predictions"),
                                                ("weight average", "a weight average (soup) of them")])
def test_a_combination_of_runs_handed_back_says_how_they_were_combined(study, combined_by, said):
    from tuneloop.tuning.seeds import seed_groups

    result, workspace = study
    rows = [r for r in trial_rows(workspace, "s1") if not r["reason"].startswith("soup")]
    winner = max(seed_groups(rows), key=lambda g: g.mean)
    lead = next(r for r in rows if r["number"] == winner.original)
    combined = {**lead, "reason": "soup: the winner's runs combined", "value": max(winner.values),
                "evidence": {"combined_by": combined_by}, "diagnosis": None, "diagnosis_summary": None}
    study_id = f"combined-{combined_by.split()[0]}"
    copy_study(workspace, "s1", study_id, [*rows, combined])
    header = write_report(workspace, study_id).read_text(encoding="utf-8").split("<h2>")[0]
    assert f"The runs of the recipe with the best mean over seeds combined, {said}, which scored at least" in (
        html.unescape(header))


def test_unknown_study_is_named_with_the_known_ones(study):
    _, workspace = study
    with pytest.raises(RunNotFoundError, match=r"no study 'nope'.*s1"):
        write_report(workspace, "nope")


def test_user_text_is_escaped(study, tmp_path):
    """A reason and a recipe value with HTML in them are shown as text, never as markup."""
    _, workspace = study
    rows = trial_rows(workspace, "s1")[:2]
    reason = '<script>alert("x")</script> & weight_decay 0.01 -> 0.05 <b>'
    rows[1] = {**rows[1], "reason": reason, "recipe": {**rows[1]["recipe"], "schedule": "<i>cosine</i>"}}
    copy_study(workspace, "s1", "odd<&>", rows)
    with pytest.raises(ConfigError, match="give an output path"):
        write_report(workspace, "odd<&>")
    page = write_report(workspace, "odd<&>", tmp_path / "odd.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<i>cosine" not in page and "odd<&>" not in page
    assert html.escape(reason) in page
    assert "&lt;i&gt;cosine&lt;/i&gt;" in page
    assert "<h1>Study odd&lt;&amp;&gt;</h1>" in page
    assert "The seed check was not run" in page
    assert "Optuna&#x27;s importances are unavailable" in page, "no Optuna study of that name: said, not fatal"


def test_missing_data_is_said_instead_of_failing(study, tmp_path):
    _, workspace = study
    gone = tmp_path / "moved.csv"
    copy_study(workspace, "s1", "moved", trial_rows(workspace, "s1")[:3], data=str(gone))
    page = write_report(workspace, "moved").read_text(encoding="utf-8")
    section = page[page.index("<h2>Confusion matrix of the best model</h2>"):page.index("<h2>Seed check</h2>")]
    assert "Not available" in section and html.escape(str(gone)) in section
    assert "<img" not in section
    assert page.count("<img") == 3  # the curves and the importance chart are still there


def test_optuna_importances_are_shown_when_trials_were_sampled(study, tmp_path):
    _, workspace = study
    rows = trial_rows(workspace, "s1")[:3]
    copy_study(workspace, "s1", "sampled", rows)
    storage = f"sqlite:///{workspace / 'tuneloop.db'}"
    sampled = optuna.create_study(study_name="sampled", storage=storage, direction="maximize")
    distributions = {"lr_multiplier": optuna.distributions.FloatDistribution(0.1, 10, log=True),
                     "dropout": optuna.distributions.FloatDistribution(0.0, 0.3)}
    for i in range(5):
        params = {"lr_multiplier": 0.2 * 2**i, "dropout": 0.05 * (i % 3)}
        sampled.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5 + 0.1 * i))
    page = write_report(workspace, "sampled", tmp_path / "sampled.html").read_text(encoding="utf-8")
    assert "Right panel: Optuna" in page


def test_spearman_rho_ranks_ties_by_their_average():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1e-5, 1e-4, 1e-3], [0.5, 0.9, 0.7]) == pytest.approx(0.5)  # ranks, not values
    # x ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4: 4.5 / sqrt(4.5 * 5)
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman_rho([1, 2], [1, 2]) is None
    assert spearman_rho([1, 1, 1], [1, 2, 3]) is None


def test_a_study_without_a_completed_trial_still_gets_a_report(study, tmp_path):
    _, workspace = study
    first = trial_rows(workspace, "s1")[0]
    failed = {**first, "status": "failed", "run_id": None, "value": None, "diagnosis": "diverged",
              "diagnosis_summary": "the loss became NaN: diverged", "evidence": {}}
    copy_study(workspace, "s1", "failed", [failed])
    copy_study(workspace, "s1", "empty", [])
    for study_id in ("failed", "empty"):
        page = write_report(workspace, study_id).read_text(encoding="utf-8")
        assert headings(page) == list(SECTIONS)
        assert "no best model" in page and "<img" not in page
