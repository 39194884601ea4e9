import pytest
import torch
from torch import nn

from tuneloop.training.fast_dropout import FastDropout, cpu_fast_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask, keep = keep_mask((64, 12, 50, 50), p)
    assert keep == pytest.approx(1 - p, abs=1e-4)
    assert mask.float().mean().item() == pytest.approx(keep, abs=0.002)
    flat = mask.flatten().float()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01
    other, _ = keep_mask((64, 12, 50, 50), p)
    assert abs(torch.corrcoef(torch.stack([flat, other.flatten().float()]))[0, 1].item()) < 0.01


def test_seeded_masks_repeat():
    torch.manual_seed(3)
    first = keep_mask((1000,), 0.3)[0]
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((1000,), 0.3)[0])


def test_scaling_preserves_the_mean_and_eval_is_identity():
    layer = FastDropout(0.2)
    x = torch.ones(200_000)
    assert layer(x).mean().item() == pytest.approx(1.0, abs=0.01)
    values = layer(x).unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.8, rel=1e-4)
    layer.eval()
    assert torch.equal(layer(x), x)


def test_gradient_flows_only_through_kept_elements():
    x = torch.ones(1000, requires_grad=True)
    out = FastDropout(0.5)(x)
    out.sum().backward()
    assert torch.equal(x.grad == 0, out == 0)


def test_swap_is_undone_and_state_dict_unchanged(tiny_model):
    from tuneloop.config import Recipe
    from tuneloop.models import get_adapter

    model, _ = get_adapter("hf_text").build(str(tiny_model), 2, Recipe())
    keys = list(model.state_dict())
    stock = [type(m) for m in model.modules()]
    ids = torch.tensor([[101, 2204, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    model.eval()
    before = model(ids, mask)
    with cpu_fast_dropout(model):
        assert any(isinstance(m, FastDropout) for m in model.modules())
        assert model.encoder.config._attn_implementation != "sdpa"
        assert torch.allclose(model(ids, mask), before, atol=1e-6)  # eval: no dropout either way
        model.train()
        assert not torch.allclose(model(ids, mask), before)
        assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == stock
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert model.encoder.config._attn_implementation == "sdpa"
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout))
