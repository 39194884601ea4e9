"""The update's knob rules: forgetting (a fall of more than half the tolerance) calls for more replay and a
stronger pull to the parent, then, with replay at its cap, a lower learning rate; a trial still improving gets
more epochs; otherwise the search stops. And which trial to keep."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tuneloop.continual.policy import (
    MAX_EPOCHS,
    MAX_REPLAY,
    MIN_LEARNING_RATE,
    SEARCH_MARGIN,
    UpdateKnobs,
    UpdateOutcome,
    best_outcome,
    first_knobs,
    next_knobs,
)

TOLERANCE = 0.02
KNOBS = UpdateKnobs(learning_rate=1e-3, epochs=10, replay_ratio=0.5, l2sp=0.1)


def outcome(knobs: UpdateKnobs = KNOBS, new_gain: float = 0.05, old_drop: float = 0.0,
            best_epoch_was_last: bool = False) -> UpdateOutcome:
    return UpdateOutcome(knobs, new_gain, old_drop, best_epoch_was_last)


def test_the_first_trial_keeps_the_parents_learning_rate_and_epochs():
    knobs = first_knobs(3e-4, 7)
    assert (knobs.learning_rate, knobs.epochs) == (3e-4, 7)
    assert knobs.replay_ratio == 0.5
    assert knobs.l2sp == 0.1


def test_forgetting_raises_replay_and_strengthens_the_pull():
    knobs, reason = next_knobs([outcome(old_drop=0.05)], TOLERANCE)

    assert knobs.replay_ratio == pytest.approx(0.65)
    assert knobs.l2sp == pytest.approx(0.5)
    assert knobs.learning_rate == KNOBS.learning_rate, "the learning rate moves only once replay is at its cap"
    assert knobs.epochs == KNOBS.epochs
    assert reason.startswith("forgetting")


def test_forgetting_with_replay_at_its_cap_halves_the_learning_rate():
    at_cap = replace(KNOBS, replay_ratio=MAX_REPLAY)
    knobs, reason = next_knobs([outcome(at_cap, old_drop=0.05)], TOLERANCE)
    assert knobs.learning_rate == pytest.approx(KNOBS.learning_rate / 2)
    assert knobs.l2sp == pytest.approx(0.5)
    assert "learning rate halved" in reason


def test_forgetting_wins_over_still_improving():
    knobs, reason = next_knobs([outcome(old_drop=0.05, best_epoch_was_last=True)], TOLERANCE)
    assert knobs.epochs == KNOBS.epochs
    assert knobs.replay_ratio > KNOBS.replay_ratio
    assert reason.startswith("forgetting")


def test_replay_never_goes_beyond_its_cap():
    near = replace(KNOBS, replay_ratio=0.75)
    knobs, _ = next_knobs([outcome(near, old_drop=0.1)], TOLERANCE)
    assert knobs.replay_ratio == MAX_REPLAY

    at_cap = replace(KNOBS, replay_ratio=MAX_REPLAY)
    knobs, _ = next_knobs([outcome(at_cap, old_drop=0.1)], TOLERANCE)
    assert knobs.replay_ratio == MAX_REPLAY
    assert knobs.l2sp > at_cap.l2sp and knobs.learning_rate < at_cap.learning_rate, "the other knobs still move"


def test_repeated_forgetting_keeps_moving_until_every_knob_is_at_its_limit():
    outcomes = [outcome(old_drop=0.1)]
    steps = 0
    while (step := next_knobs(outcomes, TOLERANCE)) is not None:
        knobs, _ = step
        assert knobs.replay_ratio <= MAX_REPLAY
        assert knobs.learning_rate >= MIN_LEARNING_RATE
        outcomes.append(outcome(knobs, old_drop=0.1))
        steps += 1
        assert steps < 100, "the rules must stop"
    last = outcomes[-1].knobs
    assert last.replay_ratio == MAX_REPLAY
    assert last.learning_rate == MIN_LEARNING_RATE
    assert last.l2sp == 100.0


def test_forgetting_with_every_knob_at_its_limit_stops_the_search():
    stuck = UpdateKnobs(learning_rate=MIN_LEARNING_RATE, epochs=10, replay_ratio=MAX_REPLAY, l2sp=100.0)
    assert next_knobs([outcome(stuck, old_drop=0.3)], TOLERANCE) is None


def test_the_search_allows_itself_half_the_tolerance():
    assert next_knobs([outcome(old_drop=TOLERANCE * SEARCH_MARGIN)], TOLERANCE) is None
    knobs, reason = next_knobs([outcome(old_drop=TOLERANCE * 0.99)], TOLERANCE)
    assert reason.startswith("forgetting"), "just inside the tolerance on validation is not safe at the gate"


def test_a_trial_still_improving_at_its_last_epoch_gets_twice_the_epochs():
    knobs, reason = next_knobs([outcome(best_epoch_was_last=True)], TOLERANCE)
    assert knobs == replace(KNOBS, epochs=20)
    assert "still improving" in reason and "10 -> 20" in reason


def test_more_epochs_are_capped():
    long = replace(KNOBS, epochs=40)
    knobs, _ = next_knobs([outcome(long, best_epoch_was_last=True)], TOLERANCE)
    assert knobs.epochs == MAX_EPOCHS

    at_cap = replace(KNOBS, epochs=MAX_EPOCHS)
    assert next_knobs([outcome(at_cap, best_epoch_was_last=True)], TOLERANCE) is None


def test_a_converged_trial_stops_the_search():
    assert next_knobs([outcome(new_gain=0.1, old_drop=0.0, best_epoch_was_last=False)], TOLERANCE) is None


def test_only_the_last_trial_decides_the_next_knobs():
    earlier = outcome(old_drop=0.5)
    assert next_knobs([earlier, outcome()], TOLERANCE) is None


def test_the_description_names_every_knob():
    text = KNOBS.describe()
    assert "learning rate" in text and "10 epochs" in text and "replay 0.50" in text and "L2-SP" in text


def test_best_keeps_the_largest_new_gain_among_trials_within_half_the_tolerance():
    outcomes = [
        outcome(new_gain=0.20, old_drop=0.05),  # the largest gain, but forgot too much
        outcome(new_gain=0.08, old_drop=0.005),
        outcome(new_gain=0.12, old_drop=0.01),
        outcome(new_gain=0.15, old_drop=0.02),  # within the tolerance, not within the search's margin
        outcome(new_gain=0.03, old_drop=-0.01),
    ]
    assert best_outcome(outcomes, TOLERANCE) == 2


def test_best_falls_back_to_trials_within_the_tolerance():
    outcomes = [outcome(new_gain=0.2, old_drop=0.05), outcome(new_gain=0.1, old_drop=0.015),
                outcome(new_gain=0.15, old_drop=0.02)]
    assert best_outcome(outcomes, TOLERANCE) == 2


def test_best_breaks_a_tie_in_gain_by_the_smaller_old_drop():
    outcomes = [outcome(new_gain=0.1, old_drop=0.008), outcome(new_gain=0.1, old_drop=0.005)]
    assert best_outcome(outcomes, TOLERANCE) == 1


def test_best_falls_back_to_the_least_old_drop_when_every_trial_forgot():
    outcomes = [
        outcome(new_gain=0.3, old_drop=0.09),
        outcome(new_gain=0.1, old_drop=0.04),
        outcome(new_gain=0.2, old_drop=0.06),
    ]
    assert best_outcome(outcomes, TOLERANCE) == 1


def test_best_of_one_trial_is_that_trial():
    assert best_outcome([outcome(old_drop=0.5)], TOLERANCE) == 0
    assert best_outcome([outcome(old_drop=0.0)], TOLERANCE) == 0
