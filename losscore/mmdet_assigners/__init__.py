"""MMDetection 3.3.0 label assigners: ATSS (``ATSSAssigner``) and RTMDet's
``DynamicSoftLabelAssigner``, number for number, with their intermediate quantities.

Modules: :mod:`.atss`, :mod:`.dsl` (the assigners), :mod:`.overlaps` (``bbox_overlaps``),
:mod:`.priors` (anchor and point priors as the prior generators lay them out), :mod:`.result`
(the ``AssignResult`` convention: 0 negative, -1 ignored, k > 0 the 1-based target),
:mod:`.scene` (the learner's schemes ``atss`` and ``rtmdet``, with their heads' losses) and
:mod:`.vectors` (conformance runners for ``mmdet_assigners.json``).

Trace stages, in the order the code records them:

ATSS (:func:`atss_assign`)
    ``atss.empty`` (early return only) | ``atss.ignore`` (ignore boxes active) |
    ``atss.<level>.candidates`` per level (``P3``...: each target's k nearest prior centres and
    their distances, ``K M``) | ``atss.overlaps`` (candidate IoUs, DDOD cost terms) |
    ``atss.threshold`` (mean, std, threshold, best candidate, threshold-above-all, which pass) |
    ``atss.centre_test`` (centre margin, inside, positives before conflicts) |
    ``atss.conflicts`` (priors positive for several targets, who won) |
    ``atss.result`` (positives, positives per target, why a target has none).
RTMDet (:func:`dsl_assign`)
    ``dsl.empty`` (early return) | ``dsl.valid`` | ``dsl.centre_prior`` | ``dsl.iou_cost`` |
    ``dsl.class_cost`` | ``dsl.cost`` | ``dsl.dynamic_k`` | ``dsl.matching`` | ``dsl.conflicts`` |
    ``dsl.result``.
"""
from __future__ import annotations

from ..family import Family
from .loss import (INF, ZERO_POSITIVE_REASONS, AssignResult, ATSSAssigner, ATSSAssignResult, ATSSCandidates,
                   DSLAssignResult, DSLDetails, DynamicSoftLabelAssigner, Priors, anchor_priors, atss_assign,
                   bbox_overlaps, dsl_assign, featmap_sizes, point_priors)
from .scene import ATSS_SPEC, RTMDET_SPEC
from .vectors import GROUPS, TOLERANCES

__all__ = [
    "FAMILY", "AssignResult", "INF", "bbox_overlaps", "Priors", "featmap_sizes", "anchor_priors", "point_priors",
    "ATSSAssigner", "ATSSAssignResult", "ATSSCandidates", "ZERO_POSITIVE_REASONS", "atss_assign",
    "DynamicSoftLabelAssigner", "DSLAssignResult", "DSLDetails", "dsl_assign",
]

FAMILY = Family(name="mmdet_assigners", schemes=(ATSS_SPEC, RTMDET_SPEC), vectors=GROUPS, tolerances=TOLERANCES)
