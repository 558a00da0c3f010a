"""Where a scheme's result or its trace holds a NaN or an infinity.

A scheme's note then says where the number comes from (upstream gives the same number on the same
logits: the library never hides it). One test covers the common all-finite case: a tensor's sum is
finite only when all its values are (a NaN or an infinity makes the sum NaN or infinite). A sum in
the tensor's own dtype costs a tenth of a float64 one but may overflow on finite values, so only a
tensor whose own sum is not finite is summed again in float64 (float32 values cannot overflow a
float64 sum), and only when that fails are its values tested one by one. The names are built only
for the tensors found.
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
    named = [(lambda k=k: T("column {name}", name=k), v) for k, v in positives.items()]
    named += [(lambda k=k: T("loss {name}", name=k), v) for k, v in losses.items()]
    named += [(lambda k=k: T("map {name}", name=k), level) for k, levels in maps.items() for level in levels]
    if trace is not None:
        named += [(lambda s=stage.name, k=key: T("stage {stage}: {key}", stage=s, key=k), rec.value)
                  for stage in trace for key, rec in stage.tensors.items()]
    floats = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if not floats:
        return []
    quick = torch.isfinite(torch.stack([t.sum().to(device=floats[0][1].device, dtype=torch.float64)
                                        for _, t in floats]))
    if bool(quick.all()):
        return []
    bad: list[Text] = []
    for (named_as, t), fine in zip(floats, quick.tolist()):
        if fine or bool(torch.isfinite(t.sum(dtype=torch.float64))) or bool(torch.isfinite(t).all()):
            continue
        name = named_as()
        if name not in bad:  # a map's levels: named once
            bad.append(name)
    return bad
