"""Growing a classifier's head to more classes without disturbing the classes it knows."""

from __future__ import annotations

import torch
from torch import nn


def grow_head(head: nn.Linear, known: list[str], classes: list[str]) -> nn.Linear:
    """A linear head for ``classes`` whose row for each class in ``known`` (the old head's classes, in its
    order) is that class's old row, so a known class's score is unchanged; rows of new classes are freshly
    initialised, with the old rows' mean bias so that a new class does not start out predicted everywhere.
    The old head itself is returned where the classes are the same."""
    if list(known) == list(classes):
        return head
    grown = nn.Linear(head.in_features, len(classes)).to(device=head.weight.device, dtype=head.weight.dtype)
    row_of = {name: i for i, name in enumerate(known)}
    with torch.no_grad():
        grown.bias.fill_(float(head.bias.mean()))
        for i, name in enumerate(classes):
            if name in row_of:
                grown.weight[i] = head.weight[row_of[name]]
                grown.bias[i] = head.bias[row_of[name]]
    return grown
