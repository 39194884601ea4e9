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
