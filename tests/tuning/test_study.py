"""The study driver on the tiny model: strategies, stopping rules, records, and resuming after a kill."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from tests.conftest import kill_when, sentiment_rows, use_text_grid, write_csv

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.errors import ConfigError
from tuneloop.store.workspace import Workspace
from tuneloop.training.loop import EpochRecord, StopTraining
from tuneloop.tuning.policy import recipe_key
from tuneloop.tuning.study import Budget, ReportToOptuna, _StudyDriver


@pytest.mark.parametrize("text, seconds, trials", [("15m", 900, None), ("90s", 90, None), ("1.5h", 5400, None),
                                                   ("30trials", None, 30), ("1trial", None, 1)])
def test_budget_parse(text, seconds, trials):
    assert Budget.parse(text) == Budget(seconds, trials)


@pytest.mark.parametrize("text", ["", "15", "fast", "-1m", "0trials"])
def test_bad_budget_is_named(text):
    with pytest.raises(ConfigError, match="'budget' parameter"):
        Budget.parse(text)


def tune(tiny_model, data, workspace, seed_check=False, refit=False, **options):
    base = Recipe(epochs=2, batch_size=8, patience=0)
    return api.tune(data, model=str(tiny_model), workspace=workspace, recipe=base, seed_check=seed_check,
                    refit=refit, **options)


@pytest.mark.parametrize("strategy", ["guided", "grid", "random", "bayes"])
def test_every_strategy_runs_distinct_recipes_recorded_as_runs(strategy, tiny_model, toy_csv, workspace):
    result = tune(tiny_model, toy_csv, workspace, budget="3trials", strategy=strategy, prune="none")
    assert len(result.trials) == 3
    keys = [recipe_key(t.recipe) for t in result.trials]
    assert len(set(keys)) == 3, "no recipe is run twice"
    assert all(t.status == "completed" and t.diagnosis is not None for t in result.trials)
    assert result.best_run is not None and result.best_run.id in {t.run_id for t in result.trials}
    assert result.best_run.predict(["good fine", "bad sad"]).labels  # the best trial is a loadable model
    with Workspace.open(workspace) as store:
        rows = store.trials(result.study_id)
        assert [r["status"] for r in rows] == ["completed"] * 3
        assert all(r["diagnosis"] and r["reason"] for r in rows)
        assert {r.id for r in store.runs()} == {t.run_id for t in result.trials}
    optuna_study = optuna.load_study(study_name=result.study_id, storage=f"sqlite:///{workspace / 'tuneloop.db'}")
    assert len(optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


def test_guided_starts_head_only_and_says_why(tiny_model, toy_csv, workspace):
    result = tune(tiny_model, toy_csv, workspace, budget="2trials")
    first, second = result.trials
    assert first.recipe.trainable_layers == 0 and "cheapest capacity" in first.reason
    assert "range test suggests" in first.reason
    assert first.diagnosis.label in second.reason and "->" in second.reason


def test_seed_check_reruns_the_top_two_recipes_and_weighs_the_lead(tiny_model, toy_csv, workspace):
    """Within a quarter of an 8-trial budget (2 runs): the top two recipes once more each, from the same
    initial weights as their first runs (init_seed), then the winner's runs averaged into a soup."""
    result = tune(tiny_model, toy_csv, workspace, budget="8trials", seed_check=True, strategy="random",
                  prune="none")
    search = result.trials[:8]
    assert all(t.reason == "random sample" for t in search), "a sampler runs every trial asked for"
    check = [t for t in result.trials if t.reason.startswith("seed check")]
    assert len(check) == 2, result.seed_check.verdict
    top = sorted((t for t in search if not t.no_effect), key=lambda t: t.value, reverse=True)[:2]
    for trial in top:
        (rerun,) = [t for t in check if recipe_key(t.recipe) == recipe_key(trial.recipe)]
        assert rerun.recipe.seed == trial.recipe.seed + 1 and rerun.recipe.init_seed == trial.recipe.seed
    groups = result.seed_check.groups
    assert [len(g.values) for g in groups] == [2, 2]
    assert "seed noise" in result.seed_check.verdict
    winner = max(groups, key=lambda g: g.mean)
    winner_key = recipe_key(result.trials[winner.original].recipe)
    same_recipe = [t for t in result.trials if recipe_key(t.recipe) == winner_key
                   and not t.reason.startswith("soup")]
    soups = [t for t in result.trials if t.reason.startswith("soup")]
    if soups:  # the winner's two runs differ: their average is a model, handed back where it scores their mean
        (soup,) = soups
        assert result.best_run.predict(["good fine", "bad sad"]).labels
        chosen = soup if soup.value >= winner.mean else max(same_recipe, key=lambda t: t.value)
        assert result.best_run.id == chosen.run_id
    else:
        assert result.best_run.id == max(same_recipe, key=lambda t: t.value).run_id


@pytest.mark.parametrize("combined_by", ["weights", "predictions"])
def test_time_the_search_leaves_buys_draws_of_the_lead_combined_with_it(combined_by, tiny_model, toy_csv,
                                                                      workspace, monkeypatch):
    """A grid of one whole fine-tune is done after one trial, with most of a 120 s budget left and nothing to
    choose between: the lead's recipe runs again with two other seeds from its initial weights, and the three
    runs are combined (weight average or averaged predictions, whichever validation prefers: both are forced
    here), handed back where the combination scores at least their mean; it reloads, predicts and registers."""
    from tuneloop import pipeline
    from tuneloop.continual.versions import register

    use_text_grid(monkeypatch, {"trainable_layers": ["all"], "lr_multiplier": [1.0]})
    monkeypatch.setattr(pipeline, "combine_by", lambda weights, predictions, metric: combined_by)
    result = tune(tiny_model, toy_csv, workspace, budget="120s", seed_check=True, strategy="grid", prune="none")
    lead = result.trials[0]
    draws = [t for t in result.trials if t.kind == "seed check"]
    assert "nothing left" in result.stop_reason and len(draws) == 2, result.seed_check.verdict
    assert all(f"another draw of the recipe of trial {lead.number}" in t.reason for t in draws)
    assert all(t.recipe.init_seed == lead.recipe.seed for t in draws), "from the lead's initial weights"
    assert [t.recipe.seed for t in draws] == [lead.recipe.seed + 1, lead.recipe.seed + 2]
    (group,) = result.seed_check.groups
    assert group.original == lead.number and len(group.values) == 3
    assert result.seed_check.verdict.startswith("not run to choose (only one distinct model completed")
    (soup,) = [t for t in result.trials if t.kind == "soup"]
    assert soup.evidence["combined_by"] == {"weights": "weight average", "predictions": "averaged predictions"}[
        combined_by]
    chosen = soup if soup.value >= group.mean else max((lead, *draws), key=lambda t: t.value)
    assert result.best_run.id == chosen.run_id
    if chosen is soup:
        assert result.choice.endswith(f"handed back: trial {soup.number}, the {soup.evidence['combined_by']} of the "
                                      f"recipe's runs ({soup.value:.4f} on validation, at least their mean)")
    else:
        assert result.choice.endswith(f"handed back: trial {chosen.number}'s own model, the best run of the recipe "
                                      "with the best mean over seeds")
    with Workspace.open(workspace) as store:
        (row,) = [r for r in store.runs() if r.id == soup.run_id]
    key = "soup_of" if combined_by == "weights" else "averaged_predictions_of"
    assert row.metrics[key] == [t.run_id for t in (lead, *draws)]
    loaded = api.load_run(soup.run_id, workspace)
    assert loaded.predict(["good fine", "bad sad"]).labels
    assert register("sentiment", soup.run_id, workspace=workspace).version == 1


def test_no_draws_of_a_head_on_cached_vectors_nor_with_a_trial_budget(tiny_model, toy_csv, workspace,
                                                                      monkeypatch):
    use_text_grid(monkeypatch, {"trainable_layers": [0], "lr_multiplier": [1.0]})
    result = tune(tiny_model, toy_csv, workspace, budget="120s", seed_check=True, strategy="grid", prune="none")
    assert [t.kind for t in result.trials] == ["search"] and result.seed_check.verdict.startswith("not run")
    use_text_grid(monkeypatch, {"trainable_layers": ["all"], "lr_multiplier": [1.0]})
    result = tune(tiny_model, toy_csv, workspace, budget="3trials", seed_check=True, strategy="grid", prune="none")
    assert [t.kind for t in result.trials] == ["search"], "the user counted the trials"


def test_no_two_trials_share_their_validation_predictions_unless_marked_without_effect(tiny_model, tmp_path,
                                                                                       workspace):
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(150))  # 60 validation texts
    result = tune(tiny_model, data, workspace, budget="10trials")
    with Workspace.open(workspace) as store:
        rows = store.trials(result.study_id)
        study = store.studies()[0]
    seen: list[tuple[int, np.ndarray]] = []
    for row in rows:
        mine = np.asarray(row["predictions"])
        repeats = [number for number, theirs in seen if np.mean(mine != theirs) <= 0.01]
        assert bool(repeats) == bool(row["no_effect"]), (row["number"], repeats, row["no_effect"])
        if repeats:
            assert f"match trial {repeats[0]}'s" in row["no_effect"]
        seen.append((row["number"], mine))
    assert any(row["no_effect"] for row in rows), "the tiny model's saturated trials repeat each other"
    assert study["spent_seconds"] > sum(row["seconds"] for row in rows), "reading data and the range test count"


def test_small_validation_cross_validates_cheap_recipes_and_trains_the_chosen_one_on_every_example(
        tiny_model, toy_csv, workspace):
    """16 validation examples cannot tell recipes apart: the head recipes in the running are scored by
    cross-validation over all 80 labelled examples, and the chosen recipe is trained on all of them."""
    result = tune(tiny_model, toy_csv, workspace, budget="3trials", refit=True, strategy="grid", prune="none")
    folds = [t for t in result.trials if t.reason.startswith("cross-validation")]
    (refit,) = [t for t in result.trials if t.reason.startswith("refit")]
    assert folds and all(t.evidence["n"] == 80 and t.evidence["k"] == 5 and t.run_id is None for t in folds)
    assert all(t.recipe.trainable_layers == 0 for t in folds), "the grid's cheap recipes: heads on cached vectors"
    assert result.best_run.id == refit.run_id and "trained on all 80 labelled examples" in result.choice
    with Workspace.open(workspace) as store:
        (row,) = [r for r in store.runs() if r.id == refit.run_id]
    assert row.n_train == 80 and row.metrics["estimated_by"].startswith(("5-fold", "trial "))
    chosen = result.trials[refit.parent]
    assert refit.recipe.epochs <= chosen.recipe.epochs and refit.recipe.patience == 0
    assert result.best_run.predict(["good fine", "bad sad"]).labels
    assert api.load_run(refit.run_id, workspace).predict(["good fine"]).labels


def test_recipes_within_noise_are_trained_on_every_example_and_handed_back_as_an_ensemble(
        tiny_model, toy_csv, workspace, monkeypatch):
    """A head and a whole fine-tune that 16 validation examples cannot tell apart: both are trained on all 80
    examples, and the study hands back their average, which reloads, predicts and registers like any run."""
    from tuneloop.continual.versions import register

    use_text_grid(monkeypatch, {"trainable_layers": [0, "all"], "lr_multiplier": [1.0]})
    result = tune(tiny_model, toy_csv, workspace, budget="2trials", refit=True, strategy="grid", prune="none")
    refits = [t for t in result.trials if t.kind == "refit"]
    (ensemble,) = [t for t in result.trials if t.kind == "ensemble"]
    assert [t.recipe.trainable_layers for t in refits] == [
        result.trials[t.parent].recipe.trainable_layers for t in refits]
    assert {str(t.recipe.trainable_layers) for t in refits} == {"0", "all"}
    lead = result.trials[refits[0].parent]
    # A fine-tune's final fit is joined by the trial's own model (a second draw of the same recipe); a head's
    # final fit is not (a head on cached vectors trains near-deterministically).
    members = ([refits[0], lead, refits[1]] if lead.recipe.trainable_layers == "all" else refits)
    assert ensemble.evidence["members"] == [t.number for t in members] and ensemble.parent == refits[0].number
    assert ensemble.value == refits[0].value, "scored by its lead's estimate: nothing is left to score it on"
    assert result.best_run.id == ensemble.run_id
    assert result.choice.startswith(f"an ensemble averaging the predictions of the recipe of trial {lead.number}")
    assert "and of the final fits on all 80 labelled examples of the recipes within noise of it" in result.choice
    texts = ["good fine", "bad sad", "fine"]
    probabilities = [api.load_run(t.run_id, workspace).predict(texts).probabilities for t in members]
    reloaded = api.load_run(ensemble.run_id, workspace)
    np.testing.assert_allclose(reloaded.predict(texts).probabilities, np.mean(probabilities, axis=0), atol=1e-5)
    with Workspace.open(workspace) as store:
        (row,) = [r for r in store.runs() if r.id == ensemble.run_id]
        assert row.n_train == 80 and row.adapter == "hf_text" and row.metrics["ensemble_of"] == [
            t.run_id for t in members]
    version = register("sentiment", ensemble.run_id, workspace=workspace)
    assert version.run_id == ensemble.run_id


def test_a_fine_tunes_final_fit_is_averaged_with_the_trials_own_model(tiny_model, toy_csv, workspace,
                                                                     monkeypatch):
    """One whole fine-tune chosen on 16 validation examples: its fit on all 80 is one noisy draw that nothing
    is left to check, so the study hands back its average with the trial's own model (trained on the 64
    training examples), a second draw of the same recipe that costs no training."""
    use_text_grid(monkeypatch, {"trainable_layers": ["all"], "lr_multiplier": [1.0]})
    result = tune(tiny_model, toy_csv, workspace, budget="1trials", refit=True, strategy="grid", prune="none")
    (trial,) = [t for t in result.trials if t.kind == "search"]
    (refit,) = [t for t in result.trials if t.kind == "refit"]
    (ensemble,) = [t for t in result.trials if t.kind == "ensemble"]
    assert refit.parent == trial.number and ensemble.evidence["members"] == [refit.number, trial.number]
    assert f"the final fit of trial {trial.number} (trial {refit.number}), trial {trial.number}'s own model" in (
        ensemble.reason)
    assert result.best_run.id == ensemble.run_id
    assert result.choice == (f"an ensemble averaging the predictions of the recipe of trial {trial.number}, chosen "
                             f"by {result.choice.split('chosen by ')[1].split(', trained on')[0]}, trained on all 80 "
                             f"labelled examples for {refit.recipe.epochs} epochs and trial {trial.number}'s own "
                             f"model (the same recipe on the 64 training examples)")
    texts = ["good fine", "bad sad", "fine"]
    probabilities = [api.load_run(t.run_id, workspace).predict(texts).probabilities for t in (refit, trial)]
    np.testing.assert_allclose(api.load_run(ensemble.run_id, workspace).predict(texts).probabilities,
                               np.mean(probabilities, axis=0), atol=1e-5)


def test_without_the_leaders_final_fit_its_own_model_leads_the_ensemble(tiny_model, toy_csv, workspace,
                                                                       monkeypatch):
    """Where the chosen recipe's fit on every example would not fit in the budget left, the chosen trial's own
    model (trained on the training examples) is averaged with the final fits of the recipes within noise of it
    that do fit: a hedge, not a bet on a choice made on 16 validation examples."""
    use_text_grid(monkeypatch, {"trainable_layers": [0, "all"], "lr_multiplier": [1.0]})
    asked: list[int] = []
    final_fit = _StudyDriver._final_fit

    def lead_does_not_fit(self, number, estimate, cross_validated_epoch):
        asked.append(number)
        return None if len(asked) == 1 else final_fit(self, number, estimate, cross_validated_epoch)

    monkeypatch.setattr(_StudyDriver, "_final_fit", lead_does_not_fit)
    result = tune(tiny_model, toy_csv, workspace, budget="2trials", refit=True, strategy="grid", prune="none")
    lead, other = asked
    (refit,) = [t for t in result.trials if t.kind == "refit"]
    (ensemble,) = [t for t in result.trials if t.kind == "ensemble"]
    assert refit.parent == other and ensemble.evidence["members"] == [lead, refit.number]
    assert result.best_run.id == ensemble.run_id
    assert result.choice.startswith(f"an ensemble averaging the predictions of trial {lead}'s own model")
    assert f"trial {lead}'s own model" in ensemble.reason and "would not fit" in result.choice
    texts = ["good fine", "bad sad", "fine"]
    members = [api.load_run(result.trials[n].run_id, workspace).predict(texts).probabilities
               for n in (lead, refit.number)]
    np.testing.assert_allclose(api.load_run(ensemble.run_id, workspace).predict(texts).probabilities,
                               np.mean(members, axis=0), atol=1e-5)


def test_target_stops_the_study(tiny_model, toy_csv, workspace):
    result = tune(tiny_model, toy_csv, workspace, budget="5trials", target=0.0)
    assert len(result.trials) == 1 and "target" in result.stop_reason


def test_grid_stops_when_exhausted(tiny_model, toy_csv, workspace, monkeypatch):
    use_text_grid(monkeypatch, {"trainable_layers": [0], "lr_multiplier": [1.0, 3.0]})
    result = tune(tiny_model, toy_csv, workspace, budget="10trials", strategy="grid", prune="none")
    assert len(result.trials) == 2 and "nothing left" in result.stop_reason
    assert [t.reason for t in result.trials] == ["grid point 1 of 2", "grid point 2 of 2"]


def test_bad_study_options_are_all_reported(tiny_model, toy_csv, workspace):
    with pytest.raises(ConfigError) as caught:
        api.tune(toy_csv, model=str(tiny_model), workspace=workspace, strategy="hill", prune="maybe",
                 name="../escape", budget="soon")
    assert len(caught.value.problems) == 4
    assert not workspace.exists()


class FakeTrial:
    def __init__(self, prune: bool):
        self.prune, self.reported = prune, []

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.prune


def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 0.5, 0.4, 0.8, 0.7, 1e-3, 10.0, 1.0)


def test_pruner_and_deadline_end_training():
    trial = FakeTrial(prune=False)
    ReportToOptuna(trial, "macro_f1", deadline=None, epochs=4).on_epoch_end(record(1), True)
    assert trial.reported == [(25, 0.7)], "reported at the share of the schedule done"
    longer = FakeTrial(prune=False)
    ReportToOptuna(longer, "loss", deadline=None, epochs=8).on_epoch_end(record(2), True)
    assert longer.reported == [(25, -0.4)], "epoch 2 of 8 is compared with epoch 1 of 4; a loss is negated"
    with pytest.raises(StopTraining, match="pruned"):
        ReportToOptuna(FakeTrial(prune=True), "loss", deadline=None).on_epoch_end(record(2), True)
    with pytest.raises(StopTraining, match="budget"):
        ReportToOptuna(FakeTrial(prune=False), "accuracy", deadline=time.monotonic() - 1).on_epoch_end(record(1), 1)


def test_a_trial_that_ran_its_whole_schedule_is_not_pruned():
    last = FakeTrial(prune=True)
    ReportToOptuna(last, "accuracy", deadline=None, epochs=3).on_epoch_end(record(3), True)
    assert last.reported == [(100, 0.8)], "its last value still reaches the pruner, for the trials after it"
    with pytest.raises(StopTraining, match="pruned"):
        ReportToOptuna(FakeTrial(prune=True), "accuracy", deadline=None, epochs=3).on_epoch_end(record(2), True)


def test_killed_study_resumes_without_repeating_trials(tiny_model, tmp_path):
    """SIGKILL during the third trial, then --resume: finished trials are kept, the interrupted one runs again."""
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(150))
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "tuneloop", "tune", str(data), "--model", str(tiny_model), "--workspace",
               str(workspace), "--budget", "4trials", "--name", "s1", "--strategy", "random", "--prune", "none",
               "--no-seed-check", "--no-refit", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = workspace / "tuneloop.db"

    def third_trial_mid_run() -> bool:
        """The third trial is running and its run has finished an epoch."""
        if not db.exists():
            return False
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                return bool(connection.execute(
                    "SELECT t.number FROM tuneloop_trials t, runs r, epochs e WHERE t.status='running' "
                    "AND t.number=2 AND r.status='running' AND e.run_id=r.id").fetchall())
        except sqlite3.OperationalError:
            return False

    kill_when(process, third_trial_mid_run, "its third trial")

    with Workspace.open(workspace) as store:
        before = store.trials("s1")
        assert [t["status"] for t in before] == ["completed", "completed", "interrupted"]
        assert store.studies()[0]["status"] == "interrupted"
        (killed_run,) = [r for r in store.runs() if r.status == "interrupted"]
        killed_epochs = store.epochs(killed_run.id)
    # The newest complete epoch folder is the last recorded epoch, or the one before when the kill came
    # between recording an epoch and finishing its checkpoint (a partial folder, or none, is then all there is).
    trial_folder = workspace / "checkpoints" / "s1" / "trial-2"
    folders = trial_folder.iterdir() if trial_folder.exists() else []
    saved = sorted(p.name for p in folders if p.name.startswith("epoch-"))
    last = killed_epochs[-1]["epoch"]
    assert saved in ([f"epoch-{last}"], [f"epoch-{last - 1}"], []), saved
    resumed_from = int(saved[0].split("-")[1]) if saved else 0

    resumed = subprocess.run([sys.executable, "-m", "tuneloop", "tune", "--resume", "s1", "--workspace",
                              str(workspace), "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    with Workspace.open(workspace) as store:
        after = store.trials("s1")
        study = store.studies()[0]
        runs = {r.id: r for r in store.runs()}
    assert [t["status"] for t in after] == ["completed", "completed", "interrupted", "completed", "completed"], (
        [(t["status"], t["reason"][:60]) for t in after], study["stop_reason"])
    assert after[3]["recipe"] == after[2]["recipe"] and "interrupted" in after[3]["reason"]
    rerun = runs[after[3]["run_id"]]
    assert rerun.metrics["resumed_from_epoch"] == resumed_from, "continued from its checkpoint"
    with Workspace.open(workspace) as store:
        rerun_epochs = store.epochs(rerun.id)
    same = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")
    assert [{k: e[k] for k in same} for e in rerun_epochs[:1]] == [{k: e[k] for k in same} for e in killed_epochs[:1]]
    assert not (workspace / "checkpoints" / "s1" / "trial-2").exists(), "checkpoints are removed when done"
    assert [t["run_id"] for t in after[:2]] == [t["run_id"] for t in before[:2]], "finished trials are not re-run"
    finished = [json.dumps(t["recipe"], sort_keys=True) for t in after if t["status"] == "completed"]
    assert len(finished) == len(set(finished)) == 4, "no recipe completed twice"
    assert study["status"] == "finished" and "4 trials" in study["stop_reason"]
    assert all(runs[t["run_id"]].status == "completed" for t in after if t["status"] == "completed")
    assert result["best_run"] in {t["run_id"] for t in after}


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryProbe:
    def __init__(self):
        self.samples = []

    def training_callbacks(self):
        return []

    def on_trial_start(self, number, recipe, reason):
        pass

    def on_trial_end(self, trial, best):
        import gc

        gc.collect()
        self.samples.append(resident_mib())


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_memory_does_not_grow_over_forty_trials(tiny_model, toy_csv, workspace):
    """The allocator settles over the first trials (new batch shapes, LoRA and cached-state variants); after
    that, memory must stay flat: a leak of 1.6 MiB per trial fails this."""
    probe = MemoryProbe()
    result = api.tune(toy_csv, model=str(tiny_model), workspace=workspace, budget="40trials", strategy="random",
                      prune="none", seed_check=False, refit=False, callbacks=[probe],
                      recipe=Recipe(epochs=1, batch_size=16, patience=0))
    assert len(result.trials) == 40
    growth = probe.samples[-1] - probe.samples[14]
    assert growth < 40, f"resident memory grew {growth:.0f} MiB from trial 15 to trial 40: {probe.samples}"


def test_the_driver_measures_a_lead_on_its_trials_predictions_once_per_pair():
    """The seed check's judgement of a lead reads the two trials' stored validation predictions against the
    validation labels in the task's class order; where it cannot (a metric other than accuracy or macro-F1, a
    regressor, predictions of another validation set) it says so with None, and the accuracy interval judges."""
    from types import SimpleNamespace

    from tuneloop.tuning.noise import paired_difference

    labels = ["pos", "neg", "neg", "pos"] * 25
    ids = np.array([1 if label == "pos" else 0 for label in labels])
    first, second = ids.copy(), ids.copy()
    second[:20] = 1 - ids[:20]

    def driver(metric="accuracy", objective="classification", predictions=(first, second)):
        task = SimpleNamespace(classes=["neg", "pos"], val_labels=labels, objective=SimpleNamespace(name=objective))
        trials = [SimpleNamespace(predictions=p) for p in predictions]
        return SimpleNamespace(trials=trials, task=task, base=Recipe(metric=metric), differences={})

    fake = driver()
    found = _StudyDriver._paired(fake, 0, 1)
    assert found == paired_difference(ids, first, second, 2, "accuracy") and found.value == pytest.approx(0.2)
    assert found.beyond_noise
    fake.trials[0].predictions = second  # measured once: a pair's predictions do not change
    assert _StudyDriver._paired(fake, 0, 1) is found
    assert _StudyDriver._paired(driver(metric="loss"), 0, 1) is None
    assert _StudyDriver._paired(driver(objective="regression"), 0, 1) is None
    assert _StudyDriver._paired(driver(predictions=(first[:50], second)), 0, 1) is None


def test_no_seeds_are_affordable_past_the_deadline():
    """A search that ran to its deadline (no time was held for the check: its re-runs did not fit) leaves the
    check no seeds; a negative count had read as some, and the study's choice said "the seed check was only one
    recipe completed"."""
    from types import SimpleNamespace

    def driver(deadline_in: float):
        return SimpleNamespace(budget=Budget(seconds=160), deadline=time.monotonic() + deadline_in)

    originals = [SimpleNamespace(seconds=35.0), SimpleNamespace(seconds=40.0)]
    assert _StudyDriver._affordable_seeds(driver(-5.0), originals) == 0
    assert _StudyDriver._affordable_seeds(driver(30.0), originals) == 0
    assert _StudyDriver._affordable_seeds(driver(1000.0), originals[:1]) == 1, "a quarter of 160 s fits one of 35 s"
