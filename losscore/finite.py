"""Where a scheme's result or its trace holds a NaN or an infinity.

A scheme's note then says where the number comes from (upstream gives the same number on the same
logits: the library never hides it). One test covers the common all-finite case: a float tensor's
float64 sum is finite exactly when all its values are (a NaN or an infinity makes the sum NaN or
infinite, and float32 values cannot overflow a float64 sum); only when it fails is each tensor tested.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from .text import T, Text
from .trace import Trace

__all__ = ["non_finite_places"]


def non_finite_places(positives: Mapping[str, Tensor], losses: Mapping[str, Tensor],
                      maps: Mapping[str, Sequence[Tensor]], trace: Trace | None) -> list[Text]:
    """The names ("column x", "loss y", "map z", "stage s: key") of the float tensors with a NaN or an infinity."""
    named = [(T("column {name}", name=k), v) for k, v in positives.items()]
    named += [(T("loss {name}", name=k), v) for k, v in losses.items()]
    named += [(T("map {name}", name=k), level) for k, levels in maps.items() for level in levels]
    if trace is not None:
        named += [(T("stage {stage}: {key}", stage=stage.name, key=key), rec.value) for stage in trace
                  for key, rec in stage.tensors.items()]
    floats = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if not floats or bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float64) for _, t in floats])).all()):
        return []
    bad: list[Text] = []
    for name, t in floats:
        if not bool(torch.isfinite(t).all()) and name not in bad:  # a map's levels: named once
            bad.append(name)
    return bad
