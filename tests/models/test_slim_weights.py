"""A text model that changed little of its backbone is saved as what it changed plus a checked pointer to the rest."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tuneloop.config import Recipe
from tuneloop.errors import ModelError
from tuneloop.models import get_adapter
from tuneloop.models.hf_text import BASE_FILE, TRAINED_WEIGHTS, WEIGHTS


@pytest.fixture
def backbone(tiny_model, tmp_path):
    """A copy of the tiny backbone that a test may change or remove."""
    return shutil.copytree(tiny_model, tmp_path / "backbone")


def trained(backbone, recipe: Recipe):
    """A classifier built on ``backbone`` whose trainable weights (only those) were moved, as training would."""
    adapter = get_adapter("hf_text")
    model, tokenizer = adapter.build(str(backbone), 3, recipe)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    return adapter, model, tokenizer


def same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_head_only_model_is_saved_as_its_head_and_a_checked_pointer_and_loads_the_same(backbone, tmp_path):
    adapter, model, tokenizer = trained(backbone, Recipe(trainable_layers=0))
    adapter.save(model, tokenizer, str(tmp_path / "run"))
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    assert TRAINED_WEIGHTS in saved and BASE_FILE in saved and WEIGHTS not in saved
    base = json.loads((tmp_path / "run" / BASE_FILE).read_text())
    assert base["weights"] == str((backbone / WEIGHTS).resolve()) and len(base["sha256"]) == 64
    assert (tmp_path / "run" / TRAINED_WEIGHTS).stat().st_size < 0.01 * (backbone / WEIGHTS).stat().st_size
    loaded, _ = adapter.load(str(tmp_path / "run"))
    assert same_weights(loaded, model.eval())


def test_a_model_that_changed_most_of_its_weights_is_saved_whole(backbone, tmp_path):
    adapter, model, tokenizer = trained(backbone, Recipe(trainable_layers="all"))
    adapter.save(model, tokenizer, str(tmp_path / "run"))
    assert (tmp_path / "run" / WEIGHTS).exists() and not (tmp_path / "run" / BASE_FILE).exists()
    assert same_weights(adapter.load(str(tmp_path / "run"))[0], model.eval())


def test_top_layers_save_only_those_layers_and_the_head(backbone, tmp_path):
    adapter, model, tokenizer = trained(backbone, Recipe(trainable_layers=1))
    adapter.save(model, tokenizer, str(tmp_path / "run"))
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "run" / TRAINED_WEIGHTS)))
    assert names and all(n.startswith(("head.", "encoder.encoder.layer.1.")) for n in names), sorted(names)[:5]
    assert same_weights(adapter.load(str(tmp_path / "run"))[0], model.eval())


def test_a_slim_model_whose_base_changed_or_went_is_an_error_naming_it(backbone, tmp_path):
    adapter, model, tokenizer = trained(backbone, Recipe(trainable_layers=0))
    adapter.save(model, tokenizer, str(tmp_path / "run"))
    weights = backbone / WEIGHTS
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    first = sorted(state)[0]
    state[first] = state[first] + 1.0
    save_file(state, str(weights))
    with pytest.raises(ModelError, match=r"has changed since it was saved") as caught:
        adapter.load(str(tmp_path / "run"))
    assert str(weights.resolve()) in str(caught.value)
    weights.unlink()
    with pytest.raises(ModelError, match=r"which is missing"):
        adapter.load(str(tmp_path / "run"))
