"""The text-classification task: checked texts and classes, tokenized once per tokenizer length, and the
outputs of frozen encoder layers cached across epochs and trials."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tuneloop.config import Recipe
from tuneloop.data.augment_text import SynonymTable, TextAugmenter
from tuneloop.data.batches import Encoded, Features, PerEpoch, TokenStates
from tuneloop.data.feature_cache import FeatureCache, feature_key
from tuneloop.data.pairs import MAX_VAL_PAIRS, VAL_PAIRS_PER_EXAMPLE, TextPairs
from tuneloop.data.text import (
    TextExamples,
    check_validation_labels,
    class_names,
    load_text_examples,
    stratified_split,
)
from tuneloop.errors import ConfigError
from tuneloop.models import get_adapter
from tuneloop.models.hf_text import HeadOnly, PairSimilarity, TopLayers, default_backbone
from tuneloop.tasks import Phase, Prepared, classes_keeping, saved_classes
from tuneloop.training.device import pick_device, resolve_precision
from tuneloop.training.objective import CLASSIFICATION, PAIRS

KIND = "text-classification"
# Contrastive tuning as SetFit does it by default: the whole encoder, AdamW at 2e-5 with a tenth of the steps
# warming up, batches of 16 pairs, one pass over the pairs.
PAIRS_LEARNING_RATE = 2e-5
PAIRS_BATCH = 16
# What one pair of contrastive tuning costs (two texts forward and backward, the loss, the step), in the
# encoder's reads of one text for inference: 8.4x, 10.1x and 10.6x measured on R8, 20 Newsgroups and election
# tweets with MiniLM on a 2-core AMD EPYC. Estimating it from the reads the feature cache times anyway saves
# timing pairs (6-15 s of a study whose budget may be 30 s).
PAIR_COST = 10.0
TIMING_TEXTS = 32  # training texts read to time the encoder where no vectors were computed to time it by


def pairs_key(recipe: Recipe, precision: str) -> tuple:
    """What decides the encoder that contrastive tuning makes: two recipes with equal keys tune it alike."""
    return (recipe.contrastive, recipe.seed, recipe.dropout, recipe.attention_dropout, recipe.max_length, precision,
            recipe.init)


def pairs_recipe(recipe: Recipe) -> Recipe:
    """The recipe of contrastive tuning before ``recipe``'s own training: what SetFit does by default, on the
    recipe's seed, precision and text length."""
    return recipe.replace(learning_rate=PAIRS_LEARNING_RATE, epochs=1, batch_size=PAIRS_BATCH, warmup_ratio=0.1,
                          weight_decay=0.01, schedule="linear", trainable_layers="all", grad_clip=1.0, l2sp=0.0,
                          layer_lr_decay=1.0, unfreezing="none", label_smoothing=0.0, patience=0, metric="loss",
                          augment=0.0, mixup=0.0, contrastive=0)


@dataclass(frozen=True)
class AugmentedTexts(PerEpoch):
    """Training texts augmented afresh each epoch. The draw is seeded by the recipe's seed and the epoch, so
    a run resumed from a checkpoint sees the same texts as an uninterrupted one."""

    texts: list[str]
    augmenter: TextAugmenter
    encode: Callable[[list[str]], Encoded]
    seed: int

    def for_epoch(self, epoch: int) -> Encoded:
        return self.encode(self.augmenter.augment(self.texts, np.random.default_rng([self.seed, epoch])))


@dataclass
class TextTask:
    """Checked training and validation texts with their classes; tokenized once per tokenizer length."""

    train: TextExamples
    val: TextExamples
    classes: list[str]
    backbone: str
    kind = KIND
    adapter_name = "hf_text"
    objective = CLASSIFICATION
    family = "text"  # the guided policy's rule table and the search space
    starts_pretrained = True  # runs of one recipe start from the same encoder: their weights can be averaged
    features: FeatureCache = field(default_factory=FeatureCache)  # frozen-encoder vectors, see cached_features
    start_classes: list[str] | None = None  # where the backbone is a saved run's classifier: its classes
    # A fold of another task's pooled examples: that task, and which of its pooled examples train and validate
    # here (frozen-encoder vectors are then that task's, picked, not computed again).
    parent: TextTask | None = field(default=None, repr=False)
    rows: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _text_seconds: float | None = field(default=None, repr=False)  # see text_seconds
    _tuned: tuple[tuple, dict[str, torch.Tensor]] | None = field(default=None, repr=False)  # see _after_pairs
    _encoded: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _synonyms: SynonymTable | None = field(default=None, repr=False)

    @classmethod
    def load(cls, data: str | os.PathLike | TextExamples, val: str | os.PathLike | TextExamples | None, *,
             text_col: str | None, label_col: str | None, model: str | None, val_fraction: float,
             seed: int, keep_classes: bool = False) -> TextTask:
        """Read and check the data (everything that can fail on bad input), before any workspace write.

        ``model`` may be a saved text run's folder: training starts from its classifier, whose head keeps the
        rows of the classes it shares with the data. With ``keep_classes`` (an update of that model) all of
        its classes stay, in their order, and the data's new classes are added after them."""
        train_examples = data if isinstance(data, TextExamples) else load_text_examples(data, text_col, label_col)
        start_classes = saved_classes(model)
        if keep_classes and start_classes is None:
            raise ConfigError([f"Keeping a model's classes needs a saved text run's model folder; got {model!r}."])
        classes = (classes_keeping(start_classes, train_examples.labels) if keep_classes
                   else class_names(train_examples))
        if val is None:
            train_examples, val_examples = stratified_split(train_examples, val_fraction, seed)
        else:
            val_examples = val if isinstance(val, TextExamples) else load_text_examples(val, text_col, label_col)
            check_validation_labels(val_examples, classes)
        return cls(train_examples, val_examples, classes, str(model) if model else default_backbone(),
                   start_classes=start_classes)

    @property
    def val_labels(self) -> list[str]:
        return self.val.labels

    def pool(self) -> TextExamples:
        """Every labelled example: the training ones, then the validation ones."""
        return self.train.joined(self.val)

    def pool_labels(self) -> list[str]:
        return list(self.pool().labels or [])

    def fold(self, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> TextTask:
        """A task on the pooled examples ``train_rows`` (training) and ``val_rows`` (validation; without them,
        this task's validation examples, for the record only: a final fit on every example sets none apart)."""
        pool = self.pool()
        val_rows = np.arange(len(self.train), len(pool)) if val_rows is None else val_rows
        return dataclasses.replace(self, train=pool.subset(train_rows), val=pool.subset(val_rows), parent=self,
                                   rows=(np.asarray(train_rows), np.asarray(val_rows)), _encoded={},
                                   _synonyms=self._synonyms, _tuned=None)

    def default_recipe(self, base: Recipe) -> Recipe:
        """``base``: the recipe's defaults are a text encoder's fine-tune."""
        return base

    def encoded(self, tokenizer, recipe: Recipe):
        """Train and validation token ids for ``recipe.max_length``, tokenized on first use only."""
        if recipe.max_length not in self._encoded:
            adapter = get_adapter("hf_text")
            index = {name: i for i, name in enumerate(self.classes)}
            self._encoded[recipe.max_length] = tuple(
                adapter.encode(tokenizer, part.texts, [index[y] for y in part.labels], recipe)
                for part in (self.train, self.val))
        return self._encoded[recipe.max_length]

    def cached_features(self, network, tokenizer, recipe: Recipe, device: torch.device,
                        precision: str) -> tuple[Features, Features]:
        """Train and validation text vectors of the frozen encoder, computed once per key (see FeatureCache)."""
        adapter = get_adapter("hf_text")
        train_set, val_set = self.encoded(tokenizer, recipe)
        if self.parent is not None and self.rows is not None:  # a fold: pick the parent's pooled vectors
            pooled = torch.cat([f.vectors for f in self.parent.cached_features(network, tokenizer, recipe, device,
                                                                                precision)])
            return (Features(pooled[torch.from_numpy(self.rows[0])], train_set.label_ids),
                    Features(pooled[torch.from_numpy(self.rows[1])], val_set.label_ids))
        def timed(encoded: Encoded) -> torch.Tensor:
            started = time.perf_counter()
            vectors = adapter.embed_all(network, encoded, device, precision)
            if len(encoded) >= TIMING_TEXTS or self._text_seconds is None:
                self._text_seconds = (time.perf_counter() - started) / max(1, len(encoded))
            return vectors

        out = []
        for part, encoded in ((self.train, train_set), (self.val, val_set)):
            key = feature_key(self.backbone, part.fingerprint(), recipe.max_length, precision)
            vectors = self.features.get(key, lambda e=encoded: timed(e))
            out.append(Features(vectors, encoded.label_ids))
        return out[0], out[1]

    def prepare(self, recipe: Recipe, device: torch.device, precision: str, *, cache_features: bool = True
                ) -> Prepared:
        """A fresh classifier for ``recipe`` and what it trains on: frozen layers' outputs come from the cache
        where the recipe freezes layers (and ``cache_features``), else the token ids."""
        adapter = get_adapter("hf_text")
        if self.start_classes is not None:
            network, tokenizer = adapter.load_start(self.backbone, self.start_classes, self.classes, recipe)
        else:
            network, tokenizer = adapter.build(self.backbone, len(self.classes), recipe)
        train_set, val_set = self.encoded(tokenizer, recipe)
        if recipe.contrastive > 0:
            return self._after_pairs(network, tokenizer, recipe, device, precision)
        if recipe.augment > 0:
            # The inputs change every epoch, so frozen layers' outputs do too: nothing to cache.
            augmented = AugmentedTexts(train_set, self.train.texts, TextAugmenter(recipe.augment, self.synonyms()),
                                       lambda texts: adapter.encode(tokenizer, texts, train_set.label_ids, recipe),
                                       recipe.seed)
            return Prepared(network, tokenizer, network, augmented, val_set, None,
                            "off: augmentation changes the training inputs every epoch")
        cached = frozen_input_plan(recipe, network, train_set, val_set) if cache_features else None
        trainable, train_set, val_set = _on_cached_inputs(self, network, tokenizer, recipe, cached, device, precision)
        return Prepared(network, tokenizer, trainable, train_set, val_set, cached)

    def _after_pairs(self, network, tokenizer, recipe: Recipe, device: torch.device, precision: str) -> Prepared:
        """Contrastive tuning first: the whole encoder on pairs of training texts (drawn from the recipe's seed,
        so a resumed run draws the same), then what the recipe trains, on the tuned encoder. Its vectors are
        the run's own, never shared through the feature cache.

        A later trial whose pairs are the same (the same pairs, seed, dropout, text length and precision: a
        change of the head's knobs after pairs) starts from the encoder this task kept from the last tuning,
        instead of tuning it again; the head's training draws from the seed afresh either way, so the result is
        the same."""
        train_set, val_set = self.encoded(tokenizer, recipe)
        key = pairs_key(recipe, precision)

        def then() -> Prepared:
            if self._tuned is None or self._tuned[0] != key:  # keep the tuned encoder for the next trial
                self._tuned = (key, {k: v.detach().clone() for k, v in network.encoder.state_dict().items()})
            torch.manual_seed(recipe.seed)  # the head's dropout: the same draws with or without a kept encoder
            network.set_trainable_layers(recipe.trainable_layers)
            if recipe.trainable_layers != 0 or recipe.augment > 0:
                return Prepared(network, tokenizer, network, train_set, val_set, None,
                                "off: the encoder was tuned on pairs in this run")
            adapter = get_adapter("hf_text")
            vectors = [Features(adapter.embed_all(network, part, device, precision), part.label_ids)
                       for part in (train_set, val_set)]
            return Prepared(network, tokenizer, HeadOnly(network), vectors[0], vectors[1], "vectors after pairs")

        if self._tuned is not None and self._tuned[0] == key:
            network.encoder.load_state_dict(self._tuned[1])
            return then()
        pairs = TextPairs.drawn(train_set, recipe.contrastive, [recipe.seed, 1])
        val_pairs = TextPairs.drawn(val_set, VAL_PAIRS_PER_EXAMPLE, [recipe.seed, 2], limit=MAX_VAL_PAIRS)
        network.requires_grad_(True)
        network.head.requires_grad_(False)  # no gradient reaches it from pairs
        phase = Phase(PairSimilarity(network), pairs, val_pairs, pairs_recipe(recipe), PAIRS, then)
        return Prepared(network, tokenizer, network, None, None, first_phase=phase)

    def text_seconds(self) -> float:
        """Seconds the whole encoder takes to read one training text for inference (in batches, as the feature
        cache reads them): timed where this task computed frozen-encoder vectors, else now, on up to
        TIMING_TEXTS training texts (after one batch to warm up). What a trial's time is estimated from."""
        if self._text_seconds is None:
            from tuneloop.tasks import training_precision

            recipe = Recipe()
            device = pick_device()
            precision = training_precision(self, recipe.precision, device, recipe)
            adapter = get_adapter("hf_text")
            network, tokenizer = adapter.build(self.backbone, len(self.classes), recipe)
            sample = adapter.encode(tokenizer, self.train.texts[:TIMING_TEXTS], None, recipe)
            adapter.embed_all(network, adapter.encode(tokenizer, self.train.texts[:2], None, recipe), device,
                              precision)
            started = time.perf_counter()
            adapter.embed_all(network, sample, device, precision)
            self._text_seconds = (time.perf_counter() - started) / max(1, len(sample))
        return self._text_seconds

    def pair_seconds(self) -> float:
        """Seconds one pair of contrastive tuning takes on these texts: PAIR_COST reads of a text."""
        return PAIR_COST * self.text_seconds()

    def synonyms(self) -> SynonymTable:
        """Neighbours in the backbone's embedding space of the words in the training texts, found once."""
        if self._synonyms is None:
            words = {word for text in self.train.texts for word in text.split()}
            self._synonyms = SynonymTable.from_backbone(self.backbone, vocabulary_words=words)
        return self._synonyms

    def cached_states(self, network, tokenizer, recipe: Recipe, depth: int, device: torch.device,
                      precision: str) -> tuple[TokenStates, TokenStates]:
        """Train and validation hidden states entering encoder layer ``depth`` (the frozen layers' output),
        computed once per key (see FeatureCache)."""
        adapter = get_adapter("hf_text")
        train_set, val_set = self.encoded(tokenizer, recipe)
        out = []
        for part, encoded in ((self.train, train_set), (self.val, val_set)):
            key = feature_key(self.backbone, part.fingerprint(), recipe.max_length, precision, f"layer-{depth}")
            states = self.features.get(
                key, lambda e=encoded: adapter.hidden_all(network, e, depth, device, precision))
            out.append(TokenStates.packed(states, encoded.lengths, encoded.label_ids))
        return out[0], out[1]


def _on_cached_inputs(task: TextTask, network, tokenizer, recipe: Recipe, cached: str | None,
                      device: torch.device, precision: str) -> tuple[torch.nn.Module, Any, Any]:
    """The module to train and its training and validation inputs under the plan ``cached``: frozen layers'
    outputs are the same every epoch and every trial, so the trainable part trains on cached ones."""
    train_set, val_set = task.encoded(tokenizer, recipe)
    if cached == "vectors":
        train_set, val_set = task.cached_features(network, tokenizer, recipe, device, precision)
        return HeadOnly(network), train_set, val_set
    if cached is not None:
        depth = int(cached.removeprefix("layer-"))
        train_set, val_set = task.cached_states(network, tokenizer, recipe, depth, device, precision)
        return TopLayers(network, depth), train_set, val_set
    return network, train_set, val_set


STATES_LIMIT = 2 * 2**30  # bytes of cached token states above which a top-k trial runs the frozen layers itself


def frozen_input_plan(recipe: Recipe, network, train_set, val_set) -> str | None:
    """What a trial can train on instead of running its frozen layers: "vectors" (the whole encoder is
    frozen), "layer-D" (the hidden states entering layer D, below which everything is frozen), or None
    (nothing frozen, or the states would take more than STATES_LIMIT bytes)."""
    if recipe.init == "scratch":  # a random encoder differs with every seed: its outputs are nobody's to share
        return None
    if recipe.trainable_layers == 0:
        return "vectors"
    if recipe.trainable_layers == "all":
        return None
    depth = max(0, len(network.encoder_layers()) - recipe.trainable_layers)
    tokens = int(train_set.lengths.sum() + val_set.lengths.sum())
    bytes_per_value = 2 if resolve_precision(recipe.precision, pick_device()) == "bf16" else 4
    if tokens * network.encoder.config.hidden_size * bytes_per_value > STATES_LIMIT:
        return None
    return f"layer-{depth}"
