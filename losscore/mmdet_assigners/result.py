"""MMDetection's assignment convention (``assigners/assign_result.py AssignResult``).

Every prior gets one integer in ``gt_inds``:

* ``0``: negative (background), no target assigned;
* ``-1``: ignored (neither positive nor negative; ATSS with ignore boxes);
* ``k > 0``: positive for target ``k - 1`` (1-based, so that 0 can mean background).

``labels`` holds the assigned target's class for positives and ``-1`` for everything else;
``max_overlaps`` the overlap (or cost, DDOD) of the prior with its assigned target. Both
assigners write ``-100000000.0`` (upstream's ``-INF``) there for non-positives, but ``0.0`` on
their early return (no targets, no priors, or for RTMDet no prior inside any target).
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["AssignResult", "INF"]

INF = 100000000  # upstream's sentinel (exact in float32); non-positives get max_overlaps = -INF


class AssignResult(NamedTuple):
    """One image's assignment; ``N`` priors."""

    num_gts: int
    gt_inds: Tensor  # (N,) int64: 0 negative, -1 ignored, k > 0 the 1-based target index
    max_overlaps: Tensor  # (N,) float
    labels: Tensor  # (N,) int64: the target's class for positives, -1 otherwise

    @property
    def num_preds(self) -> int:
        return int(self.gt_inds.numel())
