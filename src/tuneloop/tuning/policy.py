"""The policy: a diagnosis and the recipe it was read from -> the next recipe to try, with a one-line reason.

A rule table lists for each diagnosis the moves to try, in order: ``TEXT_RULES`` for a pretrained encoder,
``TABLE_RULES``, ``IMAGE_RULES`` and ``IMAGE_SCRATCH_RULES``; each task's family (``tuning.family``) names its
own. ``next_recipe`` walks it and takes the first move that changes the recipe into a valid one not run
before, one move (one knob) at a time, so each trial answers one question and its reason can say which. A move
whose trial changed no validation prediction (no effect) is taken once more, further, before the table moves
on. ``explore`` proposes the family's larger moves left untried once the search stops gaining. Pure: no I/O,
no randomness, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from tuneloop.config import INTEGER_KNOBS, Recipe
from tuneloop.tuning.diagnose import Diagnosis

if TYPE_CHECKING:
    from tuneloop.tuning.family import Family

MIN_LEARNING_RATE = 1e-7
MAX_EPOCHS = 20
DEEPER_STEPS = (2, 4)  # trainable_layers climbs 0 -> 2 -> 4 -> "all"
TABLE_MAX_EPOCHS = 200  # an MLP epoch over a table takes milliseconds
TABLE_MAX_RATE = 3e-2
MAX_HIDDEN_UNITS = 2048
MAX_HIDDEN_LAYERS = 6
CNN_MAX_WIDTH = 512
CNN_MAX_STAGES = 5
CNN_MAX_EPOCHS = 60


def learning_rate_cap(recipe: Recipe) -> float:
    """The highest learning rate a raise may reach: a freshly initialised head tolerates far more than
    pretrained layers, which a large rate wrecks."""
    if recipe.trainable_layers == 0:
        return 1e-2
    return 3e-3 if recipe.lora_rank > 0 else 2e-4


FEW_PER_CLASS = 64  # up to this many training examples in the smallest class, pairs are a move of their own
CONTRASTIVE_PAIRS = 20  # pairs per training example when contrastive tuning is switched on (time allowing)
MIN_CONTRASTIVE_PAIRS = 4  # fewer pairs per example than this are not worth a trial
# Optimizer steps a run needs to get anywhere: 26 training texts in batches of 16 for 5 epochs are 10 steps,
# too few for a head from random weights (and a head on cached vectors takes microseconds a step) or for a
# whole fine-tune; such runs get more epochs (and a fine-tune smaller batches) until they have these many.
MIN_HEAD_STEPS = 100
MIN_FINETUNE_STEPS = 60
MAX_HEAD_EPOCHS = 100


def epochs_for_steps(recipe: Recipe, train_size: int | None, steps: int, cap: int) -> int:
    """At least ``recipe.epochs``, and enough for ``steps`` optimizer steps over ``train_size`` examples, at most
    ``cap`` (the recipe's own where it is higher)."""
    if not train_size:
        return recipe.epochs
    per_epoch = math.ceil(train_size / recipe.batch_size)
    return max(recipe.epochs, min(cap, math.ceil(steps / per_epoch)))


@dataclass(frozen=True)
class Context:
    """What a move may read besides the recipe: the trial's best epoch, the backbone's depth, the number of
    training examples and of examples in the smallest class, where known."""

    best_epoch: int | None = None
    num_layers: int | None = None
    train_size: int | None = None
    examples_per_class: int | None = None
    pairs_affordable: int | None = None  # pairs per example the time left allows (None: no time limit known)

    def steps(self, recipe: Recipe) -> int | None:
        """Optimizer steps in a whole run of ``recipe``."""
        if self.train_size is None:
            return None
        return math.ceil(self.train_size / recipe.batch_size) * recipe.epochs


class Change(Protocol):
    """How one move changes a recipe: the new value of each knob it touches (unchanged ones may be left out)."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]: ...


def _tidy(value: float) -> float:
    """Four significant digits, so 5e-05 x 1.5 / 1.5 is 5e-05 again (and counts as tried)."""
    return float(f"{value:.4g}")


def _bounded(old: float, new: float, low: float, high: float, up: bool) -> float:
    """Clamp to [low, high] without moving against the intended direction (a raise never lowers)."""
    new = min(max(new, low), high)
    return max(new, old) if up else min(new, old)


@dataclass(frozen=True)
class Scale:
    """Multiply by ``factor`` within [low, high]; a cut that lands under ``zero_below`` switches the knob off.

    ``high`` may depend on the recipe (the learning rate's cap depends on the trainable depth). Integer knobs
    (epochs) round away from the old value.
    """

    factor: float
    low: float = 0.0
    high: float | Callable[[Recipe], float] = math.inf
    zero_below: float = 0.0

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = getattr(recipe, knob)
        high = self.high(recipe) if callable(self.high) else self.high
        up = self.factor > 1
        new = _bounded(old, old * self.factor, self.low, high, up)
        if not up and new < self.zero_below:
            new = 0.0
        if knob in INTEGER_KNOBS:  # not isinstance(old, int): weight_decay=0 is a valid float knob too
            return {knob: int(math.ceil(new) if up else max(1, math.floor(new)))}
        return {knob: _tidy(new)}


@dataclass(frozen=True)
class Step:
    """Add ``delta`` within [low, high]."""

    delta: float
    low: float = 0.0
    high: float = math.inf

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = getattr(recipe, knob)
        new = _bounded(old, old + self.delta, self.low, self.high, self.delta > 0)
        return {knob: int(new) if knob in INTEGER_KNOBS else _tidy(new)}


@dataclass(frozen=True)
class AtLeast:
    """Raise to ``value`` if below it; never lowers (a stronger setting already in place stays)."""

    value: float

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        return {knob: max(getattr(recipe, knob), self.value)}


@dataclass(frozen=True)
class SetTo:
    """Set to ``value``: one of a knob's choices (a forecaster's network, say)."""

    value: Any

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        return {knob: self.value}


@dataclass(frozen=True)
class SwitchOn:
    """Set to ``value`` where the knob is off (0); an existing setting stays."""

    value: float

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = getattr(recipe, knob)
        return {knob: self.value if old == 0 else old}


@dataclass(frozen=True)
class ToBestEpoch:
    """Train only as many epochs as the best epoch needed (at least 1): later ones only overfit."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = getattr(recipe, knob)
        if context.best_epoch is None:
            return {}
        return {knob: max(1, min(old, context.best_epoch))}


@dataclass(frozen=True)
class Shallower:
    """Halve the trainable layers: k -> k // 2; "all" -> the top half when the depth is known."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = recipe.trainable_layers
        if old == "all":
            return {} if context.num_layers is None else {knob: context.num_layers // 2}
        return {knob: old // 2}


@dataclass(frozen=True)
class Deeper:
    """Train more layers: 0 -> 2 -> 4 -> "all" (sooner when the backbone has no more layers than that).

    Ties the learning rate: leaving head-only training, a rate above what pretrained layers tolerate comes
    down to their cap in the same move, else the first deeper trial would wreck the backbone and diverge.
    """

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = recipe.trainable_layers
        if old == "all":
            return {}
        new: int | str = next((k for k in DEEPER_STEPS if k > old), "all")
        if context.num_layers is not None and new != "all" and new >= context.num_layers:
            new = "all"
        deeper = recipe.replace(trainable_layers=new)
        return {knob: new, "learning_rate": min(recipe.learning_rate, learning_rate_cap(deeper))}


MIN_RAISE = 1.5  # a pull raised by less than this (the cap cutting it short) asks nothing new


@dataclass(frozen=True)
class Felt:
    """A per-step pull (weight decay toward zero, L2-SP toward the pretrained weights) raised to one the run
    can feel, then ``factor`` times stronger, up to ``high``.

    Each step moves a weight by lr x value of its distance, so over a run of T steps the pull adds up to about
    lr x value x T. A fixed step ignores that: weight decay 0.01 -> 0.05 at a rate of 2e-4 over 300 steps adds
    up to 0.003 and changes no prediction. The first raise therefore goes to at least ``total`` / (lr x T),
    where the run's length is known (``Context.train_size``); later raises multiply by ``factor``. Where even
    ``high`` would not add up to ``total`` (a whole encoder at 2e-4 for 150 steps needs weight decay 3.3, and
    at its cap of 1 the run's predictions matched its parent's on 199 of 200 texts), the move is not made: it
    would be a trial that asks nothing. Nor is a raise the cap cuts to less than MIN_RAISE times the current
    value (L2-SP 83 -> 100 on the tweets: a third trial inside validation noise after two that were).
    """

    total: float
    factor: float = 5.0
    first: float = 0.0  # the least value the first raise gives (where the knob is still off or below it)
    high: float = math.inf

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        old = getattr(recipe, knob)
        steps = context.steps(recipe)
        felt = self.total / (recipe.learning_rate * steps) if steps else 0.0
        if felt > self.high:
            return {}
        new = min(self.high, max(old * self.factor, self.first, felt))
        if old > 0 and new < old * MIN_RAISE:
            return {}
        return {knob: _tidy(new)}


@dataclass(frozen=True)
class PretrainedPull:
    """L2-SP on at a strength the run feels (a pull adding up to half the distance back over the run: an idle
    weight ends about 40% nearer its pretrained value), then x5, up to 100; only where encoder layers' own
    weights train: a head has no pretrained weights to be pulled toward, and under LoRA the pretrained weights
    are frozen and the adapters that train start from nothing, so there is nothing to pull."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        if recipe.trainable_layers == 0 or recipe.lora_rank > 0:
            return {}
        return Felt(total=0.5, first=0.1, high=100.0).apply(recipe, knob, context)


@dataclass(frozen=True)
class ContrastivePairs:
    """Where the smallest class has few examples (at most ``FEW_PER_CLASS``) and the encoder is pretrained:
    tune the encoder on pairs of training texts (same class or not, a cosine-similarity loss), then train the
    head on its vectors (SetFit's method, arXiv:2209.11055). With few examples a head on frozen vectors learns
    little more, and a whole fine-tune has too few examples for its many weights; pairs are many."""

    pairs: int = CONTRASTIVE_PAIRS

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        few = context.examples_per_class is not None and context.examples_per_class <= FEW_PER_CLASS
        if not few or recipe.contrastive > 0 or recipe.init != "pretrained" or recipe.lora_rank > 0:
            return {}
        pairs = self.pairs if context.pairs_affordable is None else min(self.pairs, context.pairs_affordable)
        if pairs < MIN_CONTRASTIVE_PAIRS:  # the time left does not allow enough pairs to matter
            return {}
        # The head trains on the tuned encoder's vectors at a head's rate, as the first trial's does.
        return {knob: pairs, "trainable_layers": 0, "unfreezing": "none",
                "learning_rate": max(recipe.learning_rate, 1e-3) if recipe.trainable_layers != 0
                else recipe.learning_rate}


@dataclass(frozen=True)
class Deepest:
    """Every layer trains (the whole encoder), with the learning rate brought within what pretrained layers
    tolerate in the same move."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        if recipe.trainable_layers == "all":
            return {}
        # A head on cached vectors trains for many cheap epochs; those say nothing about an encoder's, which
        # start from the default and are raised to enough steps below.
        epochs = Recipe().epochs if recipe.trainable_layers == 0 else recipe.epochs
        deeper = recipe.replace(trainable_layers="all", contrastive=0, epochs=epochs)
        changes: dict[str, Any] = {knob: "all", "contrastive": 0,
                                   "learning_rate": min(recipe.learning_rate, learning_rate_cap(deeper))}
        # A few dozen examples make a handful of steps an epoch: smaller batches, more epochs.
        if context.train_size and context.train_size < MIN_FINETUNE_STEPS * recipe.batch_size / MAX_EPOCHS:
            deeper = deeper.replace(batch_size=min(recipe.batch_size, 8))
            changes["batch_size"] = deeper.batch_size
        changes["epochs"] = epochs_for_steps(deeper, context.train_size, MIN_FINETUNE_STEPS, MAX_EPOCHS)
        return changes


@dataclass(frozen=True)
class EncoderOnly:
    """Another change, applied only where encoder layers train (a head alone has no hidden dropout or
    adapters to change: with the encoder frozen its output is computed once, without dropout; and augmenting
    its inputs would give up that cache, making a second-long trial a minute long)."""

    change: Change

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        return {} if recipe.trainable_layers == 0 else self.change.apply(recipe, knob, context)


@dataclass(frozen=True)
class LoraInstead:
    """Train low-rank adapters instead of the layers' weights (far fewer trainable parameters: a regularizer).
    Adapters start at zero and need a rate well above a full fine-tune's, so the rate rises in the same move."""

    rank: int = 8
    learning_rate: float = 5e-4

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        if recipe.trainable_layers == 0 or recipe.lora_rank > 0:
            return {}
        return {knob: self.rank, "learning_rate": max(recipe.learning_rate, self.learning_rate)}


@dataclass(frozen=True)
class LoraRank:
    """Scale the rank of existing adapters by ``factor`` within [low, high]; nothing where LoRA is off."""

    factor: float
    low: int = 2
    high: int = 64

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        if recipe.lora_rank == 0:
            return {}
        return {knob: int(min(max(recipe.lora_rank * self.factor, self.low), self.high))}


@dataclass(frozen=True)
class LoraEverywhere:
    """Adapters on every linear layer of the trainable layers, not only attention; nothing where LoRA is off."""

    def apply(self, recipe: Recipe, knob: str, context: Context) -> dict[str, Any]:
        return {knob: "all-linear"} if recipe.lora_rank > 0 else {}


@dataclass(frozen=True)
class Move:
    """One candidate step of the rule table: which knob, how it changes, and why (quoted in the reason)."""

    knob: str
    change: Change
    reason: str

    def changes(self, recipe: Recipe, context: Context) -> dict[str, tuple[Any, Any]]:
        """Knob -> (old, new) for each knob this move actually changes on ``recipe``."""
        new_values = self.change.apply(recipe, self.knob, context)
        return {knob: (getattr(recipe, knob), new) for knob, new in new_values.items()
                if new != getattr(recipe, knob)}


# Around a good recipe: a converged head or partial fine-tune has reached what its capacity allows, so
# unfreezing more (fastai's "train the head, then unfreeze") comes first; then small learning-rate steps.
# A noisy validation set gets the same, since no recipe change fixes it (more validation data does) and the
# search may as well go on meanwhile.
_EXPLOIT = (
    Move("trainable_layers", Deeper(), "converged at this depth: unfreeze more layers"),
    Move("learning_rate", Scale(1.5, high=learning_rate_cap), "a little higher learning rate"),
    Move("learning_rate", Scale(1 / 1.5, low=MIN_LEARNING_RATE), "a little lower learning rate"),
    Move("label_smoothing", AtLeast(0.1), "label smoothing"),
)

_PAIRS = Move("contrastive", ContrastivePairs(),
              "few examples per class: tune the encoder on pairs of texts first, then the head (SetFit)")
# A text encoder is a stack of alike transformer layers, fine-tuned whole in common practice; the climb
# 0 -> 2 -> 4 -> all suits a CNN, whose lower layers hold generic features. Measured on R8 at 1,000 texts, the
# climb spent the budget on the top two layers (test accuracy 0.967) where Trainer + Optuna's whole fine-tunes
# in the same time scored 0.975. The whole encoder comes first; the next step up stays for where the whole
# does not fit the time left.
_WHOLE = Move("trainable_layers", Deepest(), "converged at this depth: the whole encoder")
_TEXT_EXPLOIT = (_PAIRS, _WHOLE, *_EXPLOIT)
# Training too slowly on a pretrained body: a higher rate, longer, then more layers (a text encoder: whole first).
_FASTER_THEN_LONGER = (Move("learning_rate", Scale(2, high=learning_rate_cap), "higher learning rate"),
                       Move("epochs", Scale(2, high=MAX_EPOCHS), "more epochs"))
_SLOW_DEEPER = Move("trainable_layers", Deeper(), "still slow at the highest rate: more trainable layers")
# Where validation cannot tell small changes apart, each approach is tried once (a head, the whole encoder,
# pairs) and the final choice between them is left to cross-validation over every example, or to an ensemble of
# those still within noise; knob nudges after that, since the validation set will not show what they do. The
# whole encoder comes before pairs: at 16 and 64 texts per class its final fit scored above pairs' on three of
# four datasets measured (tweets, 20 Newsgroups, R8 within noise), in a quarter of their time.
_TEXT_NOISY = (Move("trainable_layers", Deepest(), "validation too small for small steps: the whole encoder"),
               _PAIRS, *_EXPLOIT)

TEXT_RULES: dict[str, tuple[Move, ...]] = {
    "overfitting": (
        Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
        _PAIRS,
        Move("l2sp", PretrainedPull(), "pull the encoder toward its pretrained weights (L2-SP)"),
        Move("lora_rank", LoraRank(1 / 2), "lower LoRA rank"),
        Move("dropout", EncoderOnly(Step(+0.1, high=0.5)), "more dropout"),
        Move("head_dropout", Step(+0.1, high=0.5), "more dropout before the head"),
        Move("label_smoothing", AtLeast(0.1), "label smoothing"),
        Move("augment", EncoderOnly(Step(+0.1, high=0.5)), "augment the training texts (more)"),
        Move("lora_rank", LoraInstead(), "low-rank adapters (LoRA) instead of the layers' weights"),
        Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
        Move("epochs", ToBestEpoch(), "stop at the best epoch"),
        Move("trainable_layers", Shallower(), "fewer trainable layers"),
    ),
    "underfitting": (
        _PAIRS,
        Move("trainable_layers", Deepest(), "more trainable layers: the whole encoder"),
        Move("trainable_layers", Deeper(), "more trainable layers"),
        Move("learning_rate", Scale(2, high=learning_rate_cap), "higher learning rate"),
        Move("epochs", Scale(2, high=MAX_EPOCHS), "more epochs"),
        Move("lora_rank", LoraRank(2), "higher LoRA rank"),
        Move("lora_targets", LoraEverywhere(), "LoRA adapters on every linear layer"),
        Move("weight_decay", Scale(1 / 5, zero_below=1e-3), "less weight decay"),
        Move("dropout", EncoderOnly(Step(-0.1)), "less dropout"),
        Move("head_dropout", Step(-0.1), "less dropout before the head"),
    ),
    "diverged": (
        Move("learning_rate", Scale(1 / 10, low=MIN_LEARNING_RATE), "much lower learning rate"),
        Move("warmup_ratio", Scale(2, low=0.1, high=0.3), "longer warmup"),
        Move("grad_clip", SwitchOn(1.0), "gradient clipping on"),
    ),
    "too_slow": (
        *_FASTER_THEN_LONGER,
        _PAIRS,
        Move("trainable_layers", Deepest(), "still slow at the highest rate: the whole encoder"),
        _SLOW_DEEPER,
    ),
    "good_fit": _TEXT_EXPLOIT,
    "noisy_validation": _TEXT_NOISY,
}


# Tables: an MLP trained from scratch, so capacity is its width and depth ("add neurons or layers"), and
# there are no pretrained weights to pull toward or unfreeze.
_TABLE_EXPLOIT = (
    Move("hidden_units", Scale(2, high=MAX_HIDDEN_UNITS), "converged at this size: a wider MLP"),
    Move("hidden_layers", Step(+1, high=MAX_HIDDEN_LAYERS), "a deeper MLP"),
    Move("learning_rate", Scale(1.5, high=TABLE_MAX_RATE), "a little higher learning rate"),
    Move("learning_rate", Scale(1 / 1.5, low=MIN_LEARNING_RATE), "a little lower learning rate"),
)

TABLE_RULES: dict[str, tuple[Move, ...]] = {
    "overfitting": (
        Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
        Move("dropout", Step(+0.1, high=0.5), "more dropout"),
        Move("augment", Step(+0.1, high=0.5), "augment the training rows (more): noise, rebalanced classes"),
        Move("mixup", Step(+0.2, high=0.6), "mix training rows with each other (mixup)"),
        Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
        Move("epochs", ToBestEpoch(), "stop at the best epoch"),
        Move("hidden_units", Scale(1 / 2, low=16), "a narrower MLP"),
        Move("hidden_layers", Step(-1, low=1), "a shallower MLP"),
    ),
    "underfitting": (
        Move("hidden_units", Scale(2, high=MAX_HIDDEN_UNITS), "more neurons"),
        Move("hidden_layers", Step(+1, high=MAX_HIDDEN_LAYERS), "more layers"),
        Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
        Move("epochs", Scale(2, high=TABLE_MAX_EPOCHS), "more epochs"),
        Move("weight_decay", Scale(1 / 5, zero_below=1e-3), "less weight decay"),
        Move("dropout", Step(-0.1), "less dropout"),
    ),
    "diverged": TEXT_RULES["diverged"],
    "too_slow": (
        Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
        Move("epochs", Scale(2, high=TABLE_MAX_EPOCHS), "more epochs"),
        Move("hidden_units", Scale(2, high=MAX_HIDDEN_UNITS), "still slow at the highest rate: more neurons"),
    ),
    "good_fit": _TABLE_EXPLOIT,
    "noisy_validation": _TABLE_EXPLOIT,
}

# Images on a pretrained body (EfficientNet-Lite0, or a base trained earlier): as for texts, the head first,
# then unfreezing; overfitting is met with augmentation and mixing of the training images once layers train
# (a frozen body's outputs are cached; augmenting would recompute them every epoch).
_IMAGE_AUGMENT = Move("augment", EncoderOnly(Step(+0.2, high=0.6)),
                      "augment the training images (more): crops, flips, rotation, colour")
_IMAGE_MIXUP = Move("mixup", EncoderOnly(Step(+0.2, high=0.6)), "mix training images (mixup, cutmix)")

IMAGE_RULES: dict[str, tuple[Move, ...]] = {
    "overfitting": (
        Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
        Move("l2sp", PretrainedPull(), "pull the body toward its pretrained weights (L2-SP)"),
        _IMAGE_AUGMENT,
        _IMAGE_MIXUP,
        Move("dropout", Step(+0.1, high=0.5), "more dropout before the head"),
        Move("label_smoothing", AtLeast(0.1), "label smoothing"),
        Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
        Move("epochs", ToBestEpoch(), "stop at the best epoch"),
        Move("trainable_layers", Shallower(), "fewer trainable layers"),
    ),
    "underfitting": (
        Move("trainable_layers", Deeper(), "more trainable layers"),
        Move("learning_rate", Scale(2, high=learning_rate_cap), "higher learning rate"),
        Move("epochs", Scale(2, high=MAX_EPOCHS), "more epochs"),
        Move("weight_decay", Scale(1 / 5, zero_below=1e-3), "less weight decay"),
        Move("dropout", Step(-0.1), "less dropout before the head"),
        Move("augment", Step(-0.2), "less augmentation"),
    ),
    "diverged": TEXT_RULES["diverged"],
    "too_slow": (*_FASTER_THEN_LONGER, _SLOW_DEEPER),
    "good_fit": _EXPLOIT,
    "noisy_validation": _EXPLOIT,
}

# A small CNN from scratch: capacity is its width (channels) and depth (stages), as an MLP's is for tables.
_CNN_EXPLOIT = (
    Move("hidden_units", Scale(2, high=CNN_MAX_WIDTH), "converged at this size: a wider CNN (more channels)"),
    Move("hidden_layers", Step(+1, high=CNN_MAX_STAGES), "a deeper CNN (one more stage)"),
    Move("learning_rate", Scale(1.5, high=TABLE_MAX_RATE), "a little higher learning rate"),
    Move("learning_rate", Scale(1 / 1.5, low=MIN_LEARNING_RATE), "a little lower learning rate"),
)

IMAGE_SCRATCH_RULES: dict[str, tuple[Move, ...]] = {
    "overfitting": (
        Move("augment", Step(+0.2, high=0.6), "augment the training images (more): crops, flips, rotation, colour"),
        Move("mixup", Step(+0.2, high=0.6), "mix training images (mixup, cutmix)"),
        Move("weight_decay", Felt(total=0.1, first=0.05, high=1.0), "more weight decay"),
        Move("dropout", Step(+0.1, high=0.5), "more dropout"),
        Move("learning_rate", Scale(1 / 2, low=MIN_LEARNING_RATE), "lower learning rate"),
        Move("epochs", ToBestEpoch(), "stop at the best epoch"),
        Move("hidden_units", Scale(1 / 2, low=16), "a narrower CNN"),
        Move("hidden_layers", Step(-1, low=1), "a shallower CNN"),
    ),
    "underfitting": (
        Move("hidden_units", Scale(2, high=CNN_MAX_WIDTH), "more channels"),
        Move("hidden_layers", Step(+1, high=CNN_MAX_STAGES), "one more stage"),
        Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
        Move("epochs", Scale(2, high=CNN_MAX_EPOCHS), "more epochs"),
        Move("weight_decay", Scale(1 / 5, zero_below=1e-3), "less weight decay"),
        Move("augment", Step(-0.2), "less augmentation"),
        Move("dropout", Step(-0.1), "less dropout"),
    ),
    "diverged": TEXT_RULES["diverged"],
    "too_slow": (
        Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "higher learning rate"),
        Move("epochs", Scale(2, high=CNN_MAX_EPOCHS), "more epochs"),
        Move("hidden_units", Scale(2, high=CNN_MAX_WIDTH), "still slow at the highest rate: more channels"),
    ),
    "good_fit": _CNN_EXPLOIT,
    "noisy_validation": _CNN_EXPLOIT,
}

# The larger moves a search tries, from its best recipe, once it stops gaining while much of its budget is
# left: capacity the rule tables only reach step by step, longer training, higher rates, and pairs where
# examples are few. A search stops on a plateau only when these are tried, or its budget is nearly spent.
_LONGER = Move("epochs", Scale(2, high=MAX_EPOCHS), "longer training")
_FASTER = Move("learning_rate", Scale(2, high=learning_rate_cap), "a higher learning rate")
TEXT_EXPLORE = (Move("trainable_layers", Deepest(), "the whole encoder"), _PAIRS, _LONGER, _FASTER)
IMAGE_EXPLORE = (Move("trainable_layers", Deepest(), "the whole network"), _LONGER, _FASTER)
TABLE_EXPLORE = (Move("hidden_units", Scale(4, high=MAX_HIDDEN_UNITS), "a much wider MLP"),
                 Move("hidden_layers", Step(+2, high=MAX_HIDDEN_LAYERS), "a much deeper MLP"),
                 Move("epochs", Scale(2, high=TABLE_MAX_EPOCHS), "longer training"),
                 Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "a higher learning rate"))
IMAGE_SCRATCH_EXPLORE = (Move("hidden_units", Scale(4, high=CNN_MAX_WIDTH), "a much wider CNN"),
                         Move("hidden_layers", Step(+2, high=CNN_MAX_STAGES), "a much deeper CNN"),
                         Move("epochs", Scale(2, high=CNN_MAX_EPOCHS), "longer training"),
                         Move("learning_rate", Scale(2, high=TABLE_MAX_RATE), "a higher learning rate"))


RecipeKey = tuple[tuple[str, Any], ...]


SEED_FIELDS = frozenset({"seed", "init_seed"})


def recipe_key(recipe: Recipe) -> RecipeKey:
    """The recipe's hyperparameters without its seeds: two recipes with equal keys are the same experiment."""
    return tuple((f.name, getattr(recipe, f.name)) for f in fields(recipe) if f.name not in SEED_FIELDS)


def move_key(recipe: Recipe | Hashable) -> Hashable:
    """What the policy counts as tried: the recipe's key, with pairs as on or off (their number is sized to the
    time left, so the same move made later draws fewer: still the move already made)."""
    key = recipe_key(recipe) if isinstance(recipe, Recipe) else recipe
    return tuple((name, value > 0) if name == "contrastive" else (name, value) for name, value in key)


def _seen(recipe: Recipe, tried: Iterable[Recipe | Hashable]) -> set[Hashable]:
    return {move_key(recipe)} | {move_key(t) for t in tried}


@dataclass(frozen=True)
class Decision:
    """The next recipe, why, and exactly what changed (knob -> (old, new))."""

    recipe: Recipe
    reason: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    diagnosis_label: str = ""


def next_recipe(diagnosis: Diagnosis, recipe: Recipe, tried: Iterable[Recipe | Hashable], *,
                num_layers: int | None, family: Family, train_size: int | None = None,
                examples_per_class: int | None = None, ineffective: Sequence[Recipe] = (),
                pairs_affordable: int | None = None) -> Decision | None:
    """The first move of the family's rule table for ``diagnosis.label`` that yields a valid recipe not yet run,
    or None.

    ``tried`` holds recipes already run, or their ``recipe_key``s; ``recipe`` itself counts as run. Seeds are
    ignored in that comparison, so a reseeded copy of a run recipe is not proposed either. ``num_layers`` is
    the backbone's depth, needed to halve ``trainable_layers="all"``; ``family`` holds the rule table (a
    task's: ``TEXT_RULES`` for texts, ``TABLE_RULES`` for tables, ``IMAGE_RULES`` for a pretrained image body,
    ``IMAGE_SCRATCH_RULES`` for the small CNN). ``train_size``, ``examples_per_class`` and
    ``pairs_affordable`` (pairs per example that the time left allows) size the moves that depend on them.
    None means nothing is left to try.

    ``ineffective`` are recipes made from ``recipe`` whose trials changed no validation prediction: the move
    that made each is taken once more, from it, further (weight decay x5 again, say); a knob whose second
    step changed nothing either is left, and the table goes on.
    """
    rules = family.rules
    if diagnosis.label not in rules:
        raise ValueError(f"The 'diagnosis.label' must be one of {', '.join(rules)}. Got {diagnosis.label!r} instead.")
    seen = _seen(recipe, tried)
    best_epoch = diagnosis.evidence.get("best_epoch")
    context = Context(best_epoch if isinstance(best_epoch, int) else None, num_layers, train_size,
                      examples_per_class, pairs_affordable)
    finding = diagnosis.finding or diagnosis.summary
    further = _further(rules[diagnosis.label], recipe, ineffective, context, seen)
    if further is not None:
        move, start, changes = further
        candidate = start.replace(**{knob: new for knob, (_, new) in changes.items()})
        shown = ", ".join(f"{knob} {_show(old)} -> {_show(new)}" for knob, (old, new) in changes.items())
        reason = (f"{diagnosis.label}: {finding} -> {move.reason}, further (the last step changed no "
                  f"prediction): {shown}")
        return Decision(candidate, reason, _changed(recipe, candidate), diagnosis.label)
    for move in rules[diagnosis.label]:
        decision = _decide(move, recipe, context, seen, f"{diagnosis.label}: {finding}")
        if decision is not None:
            return Decision(decision.recipe, decision.reason, decision.changes, diagnosis.label)
    return None


def explore(recipe: Recipe, tried: Iterable[Recipe | Hashable], *, num_layers: int | None, family: Family,
            train_size: int | None = None, examples_per_class: int | None = None,
            pairs_affordable: int | None = None) -> Decision | None:
    """The first of the family's larger moves (``family.explore``) that makes ``recipe`` (the best so far) into a valid
    recipe not yet run, or None when every one is tried."""
    seen = _seen(recipe, tried)
    context = Context(None, num_layers, train_size, examples_per_class, pairs_affordable)
    for move in family.explore:
        decision = _decide(move, recipe, context, seen, "no gain beyond validation noise for a while")
        if decision is not None:
            return decision
    return None


def untried(recipe: Recipe, tried: Iterable[Recipe | Hashable], *, num_layers: int | None, family: Family,
            train_size: int | None = None, examples_per_class: int | None = None,
            pairs_affordable: int | None = None) -> list[str]:
    """What ``explore`` would still try from ``recipe``, in words."""
    seen = _seen(recipe, tried)
    context = Context(None, num_layers, train_size, examples_per_class, pairs_affordable)
    return [move.reason for move in family.explore if _decide(move, recipe, context, seen, "") is not None]


def _decide(move: Move, recipe: Recipe, context: Context, seen: set, why: str) -> Decision | None:
    changes = move.changes(recipe, context)
    if not changes:
        return None
    candidate = recipe.replace(**{knob: new for knob, (_, new) in changes.items()})
    if candidate.problems() or move_key(candidate) in seen:
        return None
    shown = ", ".join(f"{knob} {_show(old)} -> {_show(new)}" for knob, (old, new) in changes.items())
    return Decision(candidate, f"{why} -> {move.reason}: {shown}", changes)


def _changed(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    return {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in fields(old)
            if getattr(old, f.name) != getattr(new, f.name)}


def _further(moves: Sequence[Move], recipe: Recipe, ineffective: Sequence[Recipe], context: Context,
             seen: set) -> tuple[Move, Recipe, dict[str, tuple[Any, Any]]] | None:
    """The move that made an ineffective recipe, applied to it once more; None where there is none to take.

    A knob is taken further once: two ineffective steps of it from the same recipe mean it is not the knob
    that matters here."""
    steps_per_knob: dict[str, int] = {}
    for child in ineffective:
        for knob in _changed(recipe, child):
            steps_per_knob[knob] = steps_per_knob.get(knob, 0) + 1
    for child in ineffective:
        changed = _changed(recipe, child)
        if any(steps_per_knob[knob] > 1 for knob in changed):
            continue
        move = next((m for m in moves if m.knob in changed and m.changes(recipe, context)), None)
        if move is None:
            continue
        changes = move.changes(child, context)
        if not changes:
            continue
        candidate = child.replace(**{knob: new for knob, (_, new) in changes.items()})
        if not candidate.problems() and move_key(candidate) not in seen:
            return move, child, changes
    return None


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
