"""The seed check's pure functions over stored trial rows."""

from __future__ import annotations

import pytest

from tuneloop.tuning.seeds import SeedGroup, best_trial, seed_groups, seed_verdict


def row(number: int, value: float, seed: int = 42, lr: float = 1e-3, reason: str = "search") -> dict:
    return {"number": number, "status": "completed", "value": value, "reason": reason, "run_id": f"r{number}",
            "recipe": {"learning_rate": lr, "seed": seed}}


def test_best_follows_the_seed_check_mean_not_the_single_best_value():
    rows = [row(0, 0.90, lr=1e-3), row(1, 0.85, lr=2e-3),
            row(2, 0.70, 43, 1e-3, "seed check: the recipe of trial 0 with seed 43"),
            row(3, 0.72, 44, 1e-3, "seed check: the recipe of trial 0 with seed 44"),
            row(4, 0.86, 43, 2e-3, "seed check: the recipe of trial 1 with seed 43"),
            row(5, 0.84, 44, 2e-3, "seed check: the recipe of trial 1 with seed 44")]
    groups = seed_groups(rows)
    assert [(g.original, [t["number"] for t in g.trials]) for g in groups] == [(0, [0, 2, 3]), (1, [1, 4, 5])]
    assert best_trial(rows)["number"] == 4, "the best run of the recipe with the best mean"
    assert best_trial(rows[:2])["number"] == 0, "without a seed check: the best single value"


def test_seed_group_half_width_is_the_t_interval_of_the_mean():
    group = SeedGroup(0, [], [1.0, 3.0])
    assert group.mean == 2.0 and group.half_width == pytest.approx(12.706)  # t(1) * sd / sqrt(2), sd = sqrt(2)
    assert SeedGroup(0, [], [0.5]).half_width is None


def test_a_pruned_rerun_is_not_counted_and_one_run_has_unknown_noise():
    pruned = {**row(3, 0.95, 43, 2e-3, "seed check: the recipe of trial 1 with seed 43"), "status": "pruned"}
    rows = [row(0, 0.90, lr=1e-3), row(1, 0.85, lr=2e-3),
            row(2, 0.88, 43, 1e-3, "seed check: the recipe of trial 0 with seed 43"), pruned]
    first, second = seed_groups(rows)
    assert second.values == [0.85] and second.half_width is None
    assert "seed noise is unknown" in seed_verdict([first, second])


# -- whether the check can change the answer, and the soup -------------------------------------------------

def ranked(number: int, value: float, lr: float, noise: float | None = 0.05, no_effect: str = "") -> dict:
    evidence = {} if noise is None else {"ci_half_width": noise}
    return {**row(number, value, lr=lr), "evidence": evidence, "no_effect": no_effect}


def test_the_check_runs_only_where_the_top_two_are_within_noise_and_differ():
    from tuneloop.tuning.seeds import seed_check_plan

    assert seed_check_plan([ranked(0, 0.80, 1e-3), ranked(1, 0.78, 2e-3)]) == ([0, 1], "")
    planned, why = seed_check_plan([ranked(0, 0.90, 1e-3), ranked(1, 0.78, 2e-3)])
    assert planned == [] and "more than validation noise" in why
    same = [ranked(0, 0.80, 1e-3), ranked(1, 0.80, 2e-3, no_effect="no effect: ...")]
    planned, why = seed_check_plan(same)
    assert planned == [] and "only one distinct model" in why
    assert seed_check_plan([ranked(0, 0.9, 1e-3, None), ranked(1, 0.1, 2e-3, None)])[0] == [0, 1], (
        "no interval (a regressor): the noise is unknown, so the check runs")


def test_the_paired_difference_of_the_chosen_metric_judges_the_lead_where_it_is_measured():
    from tuneloop.tuning.noise import Difference
    from tuneloop.tuning.seeds import seed_check_plan

    # R8 at 1,000 texts: macro-F1 0.845 against 0.805 on 200 validation texts, past the accuracy interval's
    # +-0.021, but one text of a class with one example made most of it: the paired interval holds zero.
    rows = [ranked(1, 0.845, 1e-3, noise=0.021), ranked(2, 0.805, 2e-3, noise=0.021)]
    assert seed_check_plan(rows)[0] == [], "by the accuracy interval alone: a lead"
    asked = []

    def paired(first, second):
        asked.append((first, second))
        return Difference(0.04, -0.01, 0.09)

    assert seed_check_plan(rows, paired) == ([1, 2], "")
    assert asked == [(1, 2)], "the leader first"
    planned, why = seed_check_plan(rows, lambda first, second: Difference(0.04, 0.01, 0.07))
    assert planned == [] and why == ("trial 1 leads trial 2 by 0.0400, more than validation noise (paired 95% "
                                     "interval of the difference +0.0100 to +0.0700): other seeds would not "
                                     "change the answer")
    assert seed_check_plan(rows, lambda first, second: None)[0] == [], "not measured: the accuracy interval"


def test_a_soup_is_handed_back_where_it_scores_at_least_its_runs_mean():
    rows = [row(0, 0.80, lr=1e-3), row(1, 0.78, lr=2e-3),
            row(2, 0.76, 43, 1e-3, "seed check: the recipe of trial 0 with seed 43"),
            row(3, 0.70, 43, 2e-3, "seed check: the recipe of trial 1 with seed 43")]
    soup = row(4, 0.79, 42, 1e-3, "soup: the weight average of trials 0, 2")
    assert best_trial([*rows, soup])["number"] == 4, "0.79 >= the mean 0.78, though below the best run's 0.80"
    assert best_trial([*rows, {**soup, "value": 0.77}])["number"] == 0
    groups = seed_groups([*rows, soup])
    assert [len(g.trials) for g in groups] == [2, 2], "a soup is no seed of its recipe"


def test_draws_of_the_lead_alone_are_one_group_whose_combination_is_handed_back_at_its_mean():
    """Where the check could not change the answer, the lead's recipe alone was drawn again: one group, which
    wins by itself once it has more than one run; its combination is handed back where it scores their mean."""
    rows = [row(0, 0.90, lr=1e-3), row(1, 0.80, lr=2e-3),
            row(2, 0.86, 43, 1e-3, "seed check: another draw of the recipe of trial 0, seed 43")]
    (group,) = seed_groups(rows)
    assert group.original == 0 and group.values == [0.90, 0.86]
    assert seed_verdict([group]).startswith("the recipe of trial 0 ran with 2 seeds: 0.8800 ±")
    combined = row(3, 0.885, 42, 1e-3, "soup: trials 0, 2 combined")
    assert best_trial([*rows, combined])["number"] == 3, "0.885 >= the mean 0.88, though below the lead's 0.90"
    assert best_trial([*rows, {**combined, "value": 0.87}])["number"] == 0, "below the mean: the best run"
    failed = {**rows[2], "status": "failed", "value": None}
    assert best_trial([*rows[:2], failed])["number"] == 0, "a single completed run: nothing to combine"
    assert "only one recipe completed" in seed_verdict(seed_groups([*rows[:2], failed]))


def test_a_seed_check_run_cut_short_by_the_budget_enters_no_mean():
    from tuneloop.tuning.study import trial_status

    assert trial_status("budget", seed_check_run=True) == "stopped"
    assert trial_status("budget", seed_check_run=False) == "completed", "a search trial keeps its best model"
    assert trial_status("pruned", seed_check_run=False) == "pruned" and trial_status(None, True) == "completed"
    rows = [row(0, 0.90, lr=1e-3), row(1, 0.85, lr=2e-3),
            row(2, 0.88, seed=43, lr=1e-3, reason="seed check: the recipe of trial 0 with seed 43"),
            {**row(3, 0.50, seed=44, lr=1e-3, reason="seed check: the recipe of trial 0 with seed 44"),
             "status": trial_status("budget", seed_check_run=True)}]
    (group,) = seed_groups(rows)
    assert group.values == [0.90, 0.88], "the truncated run's 0.50 is not a seed sample"


def test_the_seed_check_is_left_time_only_where_one_rerun_of_each_recipe_fits_its_share():
    from tuneloop.tuning.seeds import seed_check_reserve

    assert seed_check_reserve(30.0, 2, 100.0) == 60.0
    assert seed_check_reserve(80.0, 2, 100.0) == 100.0, "one seed each fits: the whole share"
    assert seed_check_reserve(247.0, 2, 93.5) == 0.0, "not one fits: the search keeps the time"
