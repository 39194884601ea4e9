"""The update's own knobs and the pure rules that move them: how fast and how long to train on the new data,
how much of the old data to replay beside it, and how hard to pull toward the parent's weights (L2-SP).

Each trial of an update is scored against the production version on validation data of both kinds (never
the gate's holdouts). The search aims at half the gate's tolerance on the old data: the gate judges on
other examples, and a trial just inside the tolerance on validation lands outside it there about half the
time (on Reuters R8, a trial at 0.0199 against a tolerance of 0.02 lost 0.024 on the gate's holdout).
Forgetting (a larger fall) calls for more replay and a stronger pull, and once replay is at its cap for a
lower learning rate; a trial still improving at its last epoch calls for more epochs; otherwise the update
has converged and the search stops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_REPLAY = 0.8  # replay beyond this share leaves too little of the new data in each batch
SEARCH_MARGIN = 0.5  # the share of the gate's tolerance the search allows itself on validation data
MAX_EPOCHS = 60
MIN_LEARNING_RATE = 1e-6


@dataclass(frozen=True)
class UpdateKnobs:
    learning_rate: float
    epochs: int
    replay_ratio: float  # share of each epoch's training examples drawn from the kept old data
    l2sp: float  # pull toward the parent's weights

    def describe(self) -> str:
        return (f"learning rate {self.learning_rate:.2g}, {self.epochs} epochs, replay {self.replay_ratio:.2f}, "
                f"L2-SP {self.l2sp:.2g}")


@dataclass(frozen=True)
class UpdateOutcome:
    """What one trial of the update did, on validation data: its score minus production's on the new data,
    production's minus its own on the old data, and whether its best epoch was its last."""

    knobs: UpdateKnobs
    new_gain: float
    old_drop: float
    best_epoch_was_last: bool

    def forgot(self, tolerance: float) -> bool:
        """The old data's score fell by more than the search allows itself (half the gate's tolerance)."""
        return self.old_drop > tolerance * SEARCH_MARGIN


def first_knobs(learning_rate: float, epochs: int) -> UpdateKnobs:
    """The parent's own learning rate and epochs (what trained it well), half the batch from replay, and
    the L2-SP strength the guided policy starts at."""
    return UpdateKnobs(learning_rate, epochs, 0.5, 0.1)


def next_knobs(outcomes: list[UpdateOutcome], tolerance: float) -> tuple[UpdateKnobs, str] | None:
    """The next trial's knobs and why, from the last trial's outcome; None where the update has converged
    or no rule can move (the search stops)."""
    last = outcomes[-1]
    knobs = last.knobs
    if last.forgot(tolerance):
        stronger = round(min(100.0, knobs.l2sp * 5), 4)
        if knobs.replay_ratio < MAX_REPLAY:
            more = replace(knobs, replay_ratio=round(min(MAX_REPLAY, knobs.replay_ratio + 0.15), 2), l2sp=stronger)
            change = f"replay {knobs.replay_ratio:.2f} -> {more.replay_ratio:.2f}"
        else:
            more = replace(knobs, learning_rate=max(MIN_LEARNING_RATE, knobs.learning_rate / 2), l2sp=stronger)
            change = "replay at its cap, learning rate halved"
        if more == knobs:
            return None
        return more, (f"forgetting: the old data's score fell {last.old_drop:.4g} (the search allows "
                      f"{tolerance * SEARCH_MARGIN:.4g}, half the tolerance) -> {change}, L2-SP {knobs.l2sp:.2g} -> "
                      f"{more.l2sp:.2g}")
    if last.best_epoch_was_last and knobs.epochs < MAX_EPOCHS:
        longer = replace(knobs, epochs=min(MAX_EPOCHS, knobs.epochs * 2))
        return longer, (f"still improving at its last epoch (new data {last.new_gain:+.4f}, old data kept) -> "
                        f"epochs {knobs.epochs} -> {longer.epochs}")
    return None


def best_outcome(outcomes: list[UpdateOutcome], tolerance: float) -> int:
    """The index of the trial to keep: the largest gain on the new data among those that kept the old data
    within half the tolerance, else among those within the tolerance, else the one that lost least."""
    for allowed in (tolerance * SEARCH_MARGIN, tolerance):
        kept = [i for i, o in enumerate(outcomes) if o.old_drop <= allowed]
        if kept:
            return max(kept, key=lambda i: (outcomes[i].new_gain, -outcomes[i].old_drop))
    return min(range(len(outcomes)), key=lambda i: outcomes[i].old_drop)
