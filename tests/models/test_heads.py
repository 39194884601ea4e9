"""Growing a classifier's head to new classes: the classes it knew keep their rows, and so their scores."""

from __future__ import annotations

import torch
from torch import nn

from tuneloop.models.heads import grow_head

KNOWN = ["billing", "login", "shipping"]


def old_head(in_features: int = 8, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(in_features, len(KNOWN)).to(dtype)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=dtype))
    return head


def inputs(in_features: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(32, in_features, generator=torch.Generator().manual_seed(1)).to(dtype)


def test_the_same_classes_give_back_the_same_head():
    head = old_head()
    assert grow_head(head, KNOWN, list(KNOWN)) is head
    assert grow_head(head, KNOWN, tuple(KNOWN)) is head


def test_known_classes_keep_their_rows_exactly_and_new_ones_are_appended():
    head = old_head()
    classes = KNOWN + ["refund", "warranty"]

    grown = grow_head(head, KNOWN, classes)

    assert grown is not head
    assert (grown.in_features, grown.out_features) == (8, 5)
    assert torch.equal(grown.weight[:3], head.weight)
    assert torch.equal(grown.bias[:3], head.bias)


def test_known_classes_score_every_input_as_before():
    head = old_head()
    grown = grow_head(head, KNOWN, ["refund"] + KNOWN + ["warranty"])
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(grown(x)[:, 1:4], head(x), rtol=0, atol=1e-6)


def test_new_classes_start_at_the_mean_old_bias():
    head = old_head()
    grown = grow_head(head, KNOWN, KNOWN + ["refund", "warranty"])
    mean_bias = head.bias.mean().item()
    assert grown.bias[3].item() == mean_bias
    assert grown.bias[4].item() == mean_bias


def test_new_classes_get_fresh_weights_not_copies_of_old_rows():
    head = old_head()
    grown = grow_head(head, KNOWN, KNOWN + ["refund"])
    new_row = grown.weight[3]
    assert new_row.abs().sum() > 0
    assert not any(torch.equal(new_row, row) for row in head.weight)


def test_rows_follow_the_class_names_when_the_order_changes():
    head = old_head()
    grown = grow_head(head, KNOWN, ["shipping", "billing", "login"])
    for i, name in enumerate(["shipping", "billing", "login"]):
        assert torch.equal(grown.weight[i], head.weight[KNOWN.index(name)])
        assert torch.equal(grown.bias[i], head.bias[KNOWN.index(name)])


def test_a_dropped_class_keeps_the_rows_of_the_others_by_name():
    head = old_head()
    grown = grow_head(head, KNOWN, ["shipping", "refund", "billing"])  # login dropped, refund new

    assert grown.out_features == 3
    assert torch.equal(grown.weight[0], head.weight[2]) and torch.equal(grown.bias[0], head.bias[2])
    assert torch.equal(grown.weight[2], head.weight[0]) and torch.equal(grown.bias[2], head.bias[0])
    assert grown.bias[1].item() == head.bias.mean().item()


def test_the_old_head_is_left_as_it_was():
    head = old_head()
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    grown = grow_head(head, KNOWN, KNOWN + ["refund"])
    with torch.no_grad():
        grown.weight.add_(1.0)
        grown.bias.add_(1.0)
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias)


def test_the_grown_head_keeps_the_dtype_and_trains():
    head = old_head(dtype=torch.float64)
    grown = grow_head(head, KNOWN, KNOWN + ["refund"])
    assert grown.weight.dtype == torch.float64 and grown.bias.dtype == torch.float64
    assert grown.weight.device == head.weight.device
    assert grown.weight.requires_grad and grown.bias.requires_grad

    loss = grown(inputs(dtype=torch.float64)).logsumexp(dim=1).mean()
    loss.backward()
    assert grown.weight.grad is not None and grown.weight.grad[3].abs().sum() > 0
