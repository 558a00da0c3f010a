"""The math of this family, under the file name every family package uses.

Label assigners have no loss of their own: they decide which prior learns which target, and the
heads' losses (``losscore.mmdet`` focal loss, GIoU, quality focal loss...) then read
``gt_inds`` / ``labels``. The code lives in :mod:`.atss`, :mod:`.dsl`, :mod:`.overlaps`,
:mod:`.priors` and :mod:`.result`; this module re-exports it.
"""
from __future__ import annotations

from .atss import ATSSAssigner, ATSSAssignResult, ATSSCandidates, ZERO_POSITIVE_REASONS, atss_assign
from .dsl import DSLAssignResult, DSLDetails, DynamicSoftLabelAssigner, dsl_assign
from .overlaps import bbox_overlaps
from .priors import Priors, anchor_priors, featmap_sizes, point_priors
from .result import INF, AssignResult

__all__ = [
    "AssignResult", "INF", "bbox_overlaps", "Priors", "featmap_sizes", "anchor_priors", "point_priors",
    "ATSSAssigner", "ATSSAssignResult", "ATSSCandidates", "ZERO_POSITIVE_REASONS", "atss_assign",
    "DynamicSoftLabelAssigner", "DSLAssignResult", "DSLDetails", "dsl_assign",
]
