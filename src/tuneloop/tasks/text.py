"""The text-classification task: checked texts and classes, tokenized once per tokenizer length, and the
outputs of frozen encoder layers cached across epochs and trials."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.config import PRECISIONS, Recipe
from tuneloop.data.augment_text import SynonymTable, TextAugmenter
from tuneloop.data.batches import Encoded, Features, PerEpoch, TokenStates
from tuneloop.data.feature_cache import FeatureCache, feature_key
from tuneloop.data.files import read_table
from tuneloop.data.pairs import MAX_VAL_PAIRS, VAL_PAIRS_PER_EXAMPLE, TextPairs
from tuneloop.data.text import (
    TEXT_COLUMNS,
    TextExamples,
    check_validation_labels,
    class_names,
    load_text_examples,
    stratified_split,
)
from tuneloop.errors import ConfigError
from tuneloop.models import get_adapter
from tuneloop.models.hf_text import HeadOnly, PairSimilarity, TopLayers, default_backbone
from tuneloop.models.quantize import (
    MIN_AGREEMENT,
    agreement,
    agreement_sample,
    int8_is_the_faster_match,
)
from tuneloop.tasks import (
    COMMON_KNOBS,
    DataOptions,
    DataSource,
    KindDefaults,
    Phase,
    Predictions,
    Prepared,
    class_ids,
    classes_keeping,
    fewest_per_class,
    holds_prose,
    label_folds,
    majority_rate,
    register,
    saved_classes,
)
from tuneloop.training.device import bf16_is_fast, pick_device, resolve_precision
from tuneloop.training.loop import predict_probabilities
from tuneloop.training.objective import CLASSIFICATION, PAIRS
from tuneloop.tuning.family import Family, first_head
from tuneloop.tuning.policy import TEXT_EXPLORE, TEXT_RULES
from tuneloop.tuning.space import TEXT_GRID, TEXT_SPACE, text_learning_rate
from tuneloop.tuning.strategies import DataFacts

KIND = "text-classification"
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")  # int8: dynamically quantized linear layers, on the CPU
# Fewer texts than this: measuring int8 against fp32 (256 sampled texts in each) costs more than int8 can save.
# On a 2-core AVX2 CPU a MiniLM head's int8 took 0.72x fp32's time (and agreed on 94.5%: fp32 was kept), so
# the measurement repays itself from a few thousand texts.
AUTO_INT8_MIN_TEXTS = 5000


def encoder_layers(backbone: str) -> int | None:
    """The layers of a Hugging Face encoder folder (its config's ``num_hidden_layers``; None where unreadable)."""
    try:
        return int(json.loads((Path(backbone) / "config.json").read_text()).get("num_hidden_layers"))
    except (OSError, ValueError, TypeError):
        return None


TEXT_FAMILY = Family("text", TEXT_RULES, TEXT_EXPLORE, TEXT_SPACE, TEXT_GRID, text_learning_rate, first_head,
                     "start with the cheapest capacity: the head alone on the frozen encoder", adapters=True)
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


@register
@dataclass
class TextTask(KindDefaults):
    """Checked training and validation texts with their classes; tokenized once per tokenizer length."""

    train: TextExamples
    val: TextExamples
    classes: list[str]
    backbone: str
    modality = "text"
    claim_order = 1  # after images (a table of image paths may have a caption column), before tables
    default_model = "packaged all-MiniLM-L6-v2"  # what it trains where no model is named
    knobs = COMMON_KNOBS | {"attention_dropout", "head_dropout", "trainable_layers", "max_length", "l2sp",
                            "layer_lr_decay", "unfreezing", "lora_rank", "lora_alpha", "lora_dropout",
                            "lora_targets", "init", "contrastive"}
    kind = KIND
    adapter_name = "hf_text"
    objective = CLASSIFICATION
    family = TEXT_FAMILY  # the guided policy's rule table and the search space
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
    data_options: DataOptions | None = None  # how the data was read and split (set by pipeline.load_task)

    @classmethod
    def claims(cls, source: DataSource) -> bool:
        """Texts in memory or a list of texts; a file with a text column named by ``text_col``, named as text
        usually is ('text', 'review_text', ...: ``TEXT_COLUMNS``), or holding sentences."""
        data = source.data
        if isinstance(data, TextExamples) or source.options.text_col is not None:
            return True
        if not source.is_path:
            return isinstance(data, Sequence) and bool(data) and all(isinstance(x, str) for x in data)
        columns = source.table.columns if source.table is not None else {}
        named = any(set(re.split(r"[^a-z0-9]+", name.lower())) & set(TEXT_COLUMNS) for name in columns)
        return named or any(holds_prose(values) for values in columns.values())

    @classmethod
    def read(cls, data: Any, val: Any, options: DataOptions, *, model: str | None = None,
             keep_classes: bool = False) -> TextTask:
        task = cls.load(data, val, text_col=options.text_col, label_col=options.label_col, model=model,
                        val_fraction=options.val_fraction, seed=options.seed, keep_classes=keep_classes)
        get_adapter(cls.adapter_name).check_backbone(task.backbone)
        return task

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

    def folds(self, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return label_folds(self, k, seed)

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

    def facts(self) -> DataFacts:
        """What the guided search sizes its moves by: the encoder's depth, the examples, the rarest class's,
        and what reading a text and a pair of contrastive tuning cost (measured on first use)."""
        return DataFacts(encoder_layers(self.backbone), len(self.train), fewest_per_class(self.train.labels),
                         self.pair_seconds, len(self.val), self.text_seconds)

    def cache_in(self, folder: Path) -> None:
        """Keep frozen-encoder outputs in ``folder`` (a workspace's cache), shared with later trials and studies."""
        self.features = FeatureCache(folder)

    def baseline(self) -> dict[str, float]:
        """What a model that learned nothing scores on the validation texts."""
        return majority_rate(self.val_labels)

    # -- a saved run of this kind, on new texts -------------------------------------------------------------

    @classmethod
    def read_like(cls, run: Any, data: Any, options: DataOptions, *, labelled: bool) -> TextExamples:
        """New texts read as the run's training texts were: a file's text (and label) column, texts in memory,
        or a list of texts."""
        if isinstance(data, TextExamples):
            return data
        if not isinstance(data, (str, os.PathLike)):
            texts = list(data)
            return TextExamples(texts, None, [f"text {i + 1}" for i in range(len(texts))], "texts given")
        return load_text_examples(data, options.text_col, options.label_col, labelled=labelled)

    @classmethod
    def truth(cls, run: Any, examples: TextExamples) -> np.ndarray:
        """The class ids of the texts' labels (a label the run does not know is an error naming it)."""
        return class_ids(examples, run.classes)

    @classmethod
    def predict(cls, run: Any, examples: TextExamples, precision: str = "auto") -> Predictions:
        return cls.predict_texts(run, examples.texts, precision)

    @classmethod
    def output_columns(cls, data: Any, examples: TextExamples) -> dict[str, list]:
        """The rows of the file predicted, to write its predictions next to."""
        return dict(read_table(data).columns)

    @classmethod
    def embed(cls, run: Any, examples: TextExamples) -> np.ndarray:
        """The run's pooled vector of each text (what its head reads)."""
        model, tokenizer = run.model()
        device = pick_device()
        adapter = get_adapter(cls.adapter_name)
        encoded = adapter.encode(tokenizer, examples.texts, None, run.recipe)
        return adapter.embed_all(model, encoded, device, resolve_precision("auto", device)).numpy()

    @classmethod
    def predict_texts(cls, run: Any, texts: Sequence[str], precision: str = "auto") -> Predictions:
        """Labels and class probabilities; with precision 'int8' also how often its labels agree with fp32."""
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError([f"The 'precision' parameter must be one of {', '.join(INFERENCE_PRECISIONS)}. "
                               f"Got {precision!r} instead."])
        if run.task is not cls:
            raise ConfigError([f"run {run.id} is a {run.adapter} model, not a text classifier: predict a data "
                               "file or folder with it."])
        texts = list(texts)
        model, tokenizer = run.model()
        encoded = get_adapter(cls.adapter_name).encode(tokenizer, texts, None, run.recipe)
        if precision == "int8":
            probabilities = predict_probabilities(run.int8_model(), encoded, torch.device("cpu"), "fp32")
            if "int8_agreement" not in run.memo:
                run.memo["int8_agreement"] = cls.int8_check(run, texts, probabilities)
            return Predictions([run.classes[i] for i in probabilities.argmax(1)], probabilities, run.classes,
                               run.memo["int8_agreement"])
        device = pick_device()
        probabilities = predict_probabilities(model, encoded, device, resolve_precision(precision, device))
        return Predictions([run.classes[i] for i in probabilities.argmax(1)], probabilities, run.classes)

    @classmethod
    def int8_check(cls, run: Any, texts: list[str], int8_probabilities: np.ndarray) -> float:
        """How often int8 and fp32 pick the same label, on a sample of the first texts predicted with int8;
        a warning where it is below MIN_AGREEMENT. Once per run: the quantized weights do not change."""
        model, tokenizer = run.model()
        sample = agreement_sample(len(texts))
        encoded = get_adapter(cls.adapter_name).encode(tokenizer, [texts[i] for i in sample], None, run.recipe)
        reference = predict_probabilities(model, encoded, torch.device("cpu"), "fp32")
        share = agreement(reference, int8_probabilities[sample])
        if share < MIN_AGREEMENT:
            warnings.warn(f"int8 predictions agree with fp32 on {share:.1%} of {len(sample)} sampled texts (below "
                          f"{MIN_AGREEMENT:.0%}); predict with precision 'fp32' or 'bf16' where labels matter.",
                          stacklevel=4)
        return share

    @classmethod
    def choose_precision(cls, run: Any, examples: TextExamples) -> tuple[str, str]:
        """What "auto" predicts the texts in, and why. Where the device computes bf16 natively, bf16 (a GPU
        without it: fp32). On a CPU without it, for at least AUTO_INT8_MIN_TEXTS texts, int8 where on a sample
        its labels agree with fp32's on at least MIN_AGREEMENT and it runs faster, else fp32; measured once
        per run (the weights do not change)."""
        texts = examples.texts
        device = pick_device()
        if device.type != "cpu" or bf16_is_fast(device):
            chosen = resolve_precision("auto", device)
            return chosen, f"{chosen}, what 'auto' means on this {device.type.upper()}"
        if len(texts) < AUTO_INT8_MIN_TEXTS:
            return "fp32", (f"fp32: this CPU has no native bf16, and {len(texts)} texts are too few to repay "
                            f"measuring int8 against fp32 (from {AUTO_INT8_MIN_TEXTS})")
        if "auto_precision" not in run.memo:
            run.memo["auto_precision"] = cls.measure_int8(run, texts)
        return run.memo["auto_precision"]

    @classmethod
    def measure_int8(cls, run: Any, texts: list[str]) -> tuple[str, str]:
        """fp32 and int8 on the same sample of ``texts``: their agreement and their seconds, each after a warm-up."""
        model, tokenizer = run.model()
        sample = agreement_sample(len(texts))
        encode = get_adapter(cls.adapter_name).encode
        encoded = encode(tokenizer, [texts[i] for i in sample], None, run.recipe)
        warm_up = encode(tokenizer, [texts[i] for i in sample[:8]], None, run.recipe)
        cpu = torch.device("cpu")
        seconds, outputs = {}, {}
        for name, network in (("fp32", model), ("int8", run.int8_model())):
            predict_probabilities(network, warm_up, cpu, "fp32")
            started = time.perf_counter()
            outputs[name] = predict_probabilities(network, encoded, cpu, "fp32")
            seconds[name] = time.perf_counter() - started
        share = agreement(outputs["fp32"], outputs["int8"])
        run.memo["int8_agreement"] = share
        measured = (f"on {len(sample)} sampled texts int8's labels agree with fp32's on {share:.1%} and it took "
                    f"{seconds['int8'] / seconds['fp32']:.2f}x fp32's time")
        if int8_is_the_faster_match(share, seconds["fp32"], seconds["int8"]):
            return "int8", f"int8: this CPU has no native bf16; {measured}"
        return "fp32", f"fp32: this CPU has no native bf16; {measured} (int8 needs {MIN_AGREEMENT:.0%} and less time)"

    # -- what a trial's time is estimated from ---------------------------------------------------------------

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
