"""The study driver's rules on scripted trials (no training): when a plateau ends a study, what a trial without
effect counts for, where a target for an error is reached, and what the seed check may spend."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from tuneloop.config import Recipe
from tuneloop.store.workspace import Workspace
from tuneloop.training.loop import EpochRecord
from tuneloop.training.objective import CLASSIFICATION, Regression
from tuneloop.tuning.strategies import TrialOutcome, trials_since_gain
from tuneloop.tuning.study import Budget, run_study


def outcome(number: int, value: float, no_effect: bool = False, noise: float = 0.02) -> TrialOutcome:
    diagnosis = SimpleNamespace(evidence={"ci_half_width": noise})
    return TrialOutcome(Recipe(learning_rate=1e-3 * (number + 1)), "completed", value, diagnosis, number, None,
                        no_effect)


def test_trials_without_effect_count_neither_way():
    history = [outcome(0, 0.80), outcome(1, 0.81), outcome(2, 0.80, no_effect=True), outcome(3, 0.79)]
    assert trials_since_gain(history) == 2, "trial 1 is within trial 0's noise; trial 2 is not counted"
    assert trials_since_gain([*history, outcome(4, 0.85)]) == 0, "0.85 beats 0.81 by more than 0.02"
    assert trials_since_gain([outcome(0, 0.8), outcome(1, 0.8, no_effect=True)]) == 0


def test_a_gain_is_judged_on_the_pair_where_it_is_measured():
    from dataclasses import replace

    def measured(verdicts: dict[tuple[int, int], bool | None]):
        return lambda number: lambda other: verdicts.get((number, other))

    # 0.85 is past trial 0's accuracy half-width (0.02), but the pair's interval holds zero: no gain. 0.86 is
    # within 0.02 of the best before it (trial 1's 0.85: the pair asked is (2, 1)), but clear of noise on the
    # pair (the two disagree on a handful of examples, all in trial 2's favour): a gain.
    leads = measured({(1, 0): False, (2, 1): True})
    history = [replace(outcome(n, v), leads=leads(n)) for n, v in ((0, 0.80), (1, 0.85), (2, 0.86))]
    assert trials_since_gain(history[:2]) == 1
    assert trials_since_gain(history) == 0
    unmeasured = [replace(outcome(n, v), leads=measured({})(n)) for n, v in ((0, 0.80), (1, 0.85))]
    assert trials_since_gain(unmeasured) == 0, "not measured: the accuracy half-width judges"
    behind = [replace(outcome(n, v), leads=measured({(1, 0): True})(n)) for n, v in ((0, 0.80), (1, 0.79))]
    assert trials_since_gain(behind) == 1, "a trial below the best gains nothing, whatever the pair says"


@dataclass
class Scripted:
    """A strategy proposing a new learning rate each time, with moves left untried as its caller says."""

    plateau: int
    left: list[str]
    untried_until: int = 10_000
    name: str = "scripted"
    asked: list[int] = field(default_factory=list)

    def sampler(self, seed):
        return optuna.samplers.RandomSampler(seed=seed)

    def propose(self, study, base, history, retry, seconds_left=None):
        trial = study.ask()
        self.asked.append(len(history))
        from tuneloop.tuning.strategies import Proposal

        return Proposal(trial, base.replace(learning_rate=1e-4 * (len(history) + 1)), f"move {len(history)}")

    def untried(self, history):
        return self.left if len(history) < self.untried_until else []

    def done_reason(self):
        return "the script has nothing left"


def scripted_study(tmp_path, strategy, budget: str, values, predictions=None, objective=CLASSIFICATION,
                   target=None, metric="accuracy", seed_check=False, seconds=0.0):
    """run_study over trials whose validation values (and predictions) are given in order."""
    # by default every trial predicts differently: the digits of its number in base 3, each said 20 times (100
    # validation examples: enough to tell trials apart)
    predictions = predictions or [np.eye(3)[[i // 3**k % 3 for k in range(5)] * 20] for i in range(len(values))]
    n = len(predictions[0])
    # Every validation label "c", which the first two trials (digits 0 and 1 only) never predict: between them the
    # scripted values alone differ, and the lead the seed check measures on their predictions is nothing.
    task = SimpleNamespace(val=list(range(n)), val_labels=["c"] * n, classes=["a", "b", "c"], objective=objective,
                           chance_loss=lambda: None)
    counter = iter(range(1000))
    store = Workspace.open(tmp_path / "ws", create=True)

    def train_trial(recipe, callbacks, checkpoint_name):
        i = next(counter)
        run_id = store.start_run(task="t", adapter="a", backbone="b", train_source="x", val_source="y",
                                 train_fingerprint="f", val_fingerprint="g", n_train=10, n_val=n, recipe={})
        value = values[min(i, len(values) - 1)]
        record = EpochRecord(1, 0.3, 0.4, value, value, 1e-3, 10.0, seconds)
        if objective.name == "regression":
            record = EpochRecord(1, 0.3, 0.4, None, None, 1e-3, 10.0, seconds, val_mae=value, val_rmse=value,
                                 val_r2=0.5)
        run = SimpleNamespace(id=run_id, history=[record.__dict__], metrics={f"val_{metric}": value})
        result = SimpleNamespace(stopped_by=None, history=[record], diverged=False,
                                 best_val_predictions=predictions[min(i, len(predictions) - 1)])
        return run, result

    store.create_study("s", strategy.name, metric, {})
    base = Recipe(metric=metric)
    try:
        return run_study(store, "s", task, base, strategy, Budget.parse(budget), target=target, prune="none",
                         train_trial=train_trial, seed_check=seed_check)
    finally:
        store.close()


def test_a_plateau_with_much_budget_left_goes_on_while_larger_moves_remain(tmp_path):
    strategy = Scripted(plateau=2, left=["the whole encoder"], untried_until=6)
    result = scripted_study(tmp_path, strategy, "20trials", [0.8] * 30)
    assert len(result.trials) == 6
    assert result.stop_reason == ("no gain beyond validation noise in 5 trials, and nothing with an expected gain "
                                  "is left untried")


def test_a_plateau_near_the_end_of_the_budget_stops_and_names_what_was_left(tmp_path):
    strategy = Scripted(plateau=2, left=["the whole encoder", "longer training"])
    result = scripted_study(tmp_path, strategy, "5trials", [0.8] * 30)
    assert len(result.trials) == 4, "at 3 trials 40% of the budget is left: on; at 4, 20%: stop"
    assert result.stop_reason == ("no gain beyond validation noise in 3 trials, with 20% of the budget left; "
                                  "not tried: the whole encoder; longer training")


def test_no_plateau_stops_a_strategy_without_one(tmp_path):
    strategy = Scripted(plateau=0, left=[])
    result = scripted_study(tmp_path, strategy, "7trials", [0.8] * 30)
    assert len(result.trials) == 7 and result.stop_reason == "the budget of 7 trials is spent"


def test_a_trial_that_repeats_anothers_predictions_is_recorded_and_not_counted(tmp_path):
    same = np.eye(3)[[0, 1, 2, 0, 1] * 20]
    other = np.eye(3)[[0, 1, 2, 0, 0] * 20]
    strategy = Scripted(plateau=2, left=[])
    result = scripted_study(tmp_path, strategy, "20trials", [0.8] * 30,
                            predictions=[same, other, same, same, same, other, np.eye(3)[[2, 2, 2, 0, 1] * 20]])
    flags = [bool(t.no_effect) for t in result.trials]
    assert flags == [False, False, True, True, True, True, False]
    assert result.trials[2].no_effect == (
        "no effect: its validation predictions match trial 0's on 100 of 100 examples")
    assert "in 2 trials" in result.stop_reason, "only trials 1 and 6 count toward the plateau"
    with Workspace.open(tmp_path / "ws") as store:
        rows = store.trials("s")
    assert [bool(r["no_effect"]) for r in rows] == flags and rows[0]["predictions"] == [0, 1, 2, 0, 1] * 20


def test_a_target_on_an_error_is_reached_when_the_error_is_at_most_it(tmp_path):
    strategy = Scripted(plateau=0, left=[])
    values = [[70.0], [65.0], [59.0], [50.0]]
    result = scripted_study(tmp_path, strategy, "10trials", [70.0, 65.0, 59.0, 50.0], objective=Regression(),
                            metric="rmse", target=60.0,
                            predictions=[np.asarray(v, dtype=np.float32)[:, None] + i for i, v in enumerate(values)])
    assert len(result.trials) == 3 and result.stop_reason == "the target 60 is reached"


@pytest.mark.parametrize(("budget", "reruns"), [("8trials", 2), ("16trials", 4), ("3trials", 0)])
def test_the_seed_check_spends_at_most_a_quarter_of_a_trial_budget(tmp_path, budget, reruns):
    strategy = Scripted(plateau=0, left=[])
    count = int(budget.removesuffix("trials"))
    values = [0.80, 0.79] + [0.5] * 40
    result = scripted_study(tmp_path, strategy, budget, values, seed_check=True)
    check = [t for t in result.trials if t.reason.startswith("seed check")]
    assert len(result.trials) - len(check) == count and len(check) == reruns
    if not reruns:
        assert result.seed_check.verdict == "not run: its re-runs do not fit in a quarter of the budget"
