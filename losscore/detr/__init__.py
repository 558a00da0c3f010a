"""DETR (facebookresearch/detr): Hungarian matching and the set-prediction loss.

* :mod:`.box_ops`: ``box_cxcywh_to_xyxy``, ``box_xyxy_to_cxcywh``, ``box_area``, ``box_iou``,
  ``generalized_box_iou`` (``util/box_ops.py``).
* :mod:`.matcher`: ``HungarianMatcher`` and the cost matrices (``models/matcher.py``).
* :mod:`.loss`: ``SetCriterion`` and its losses (``models/detr.py``), ``weighted_total``
  (``engine.py``).
* :mod:`.scene`: the learner's query-based scheme ``detr``.
* :mod:`.vectors`: the conformance runners for ``detr.json``.
"""
from __future__ import annotations

from ..family import Family
from .box_ops import (BoxIoU, GIoUTerms, box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                      check_boxes, generalized_box_iou)
from .loss import (LOSS_NAMES, BoxLoss, LabelLoss, SetCriterion, SetLoss, build_weight_dict, count_boxes,
                   loss_boxes, loss_cardinality, loss_labels, set_criterion, weighted_total)
from .matcher import HungarianMatcher, ImageCost, Match, MatchCost, Matching, hungarian_match, matching_cost
from .scene import SPEC
from .vectors import GROUPS, TOLERANCES

__all__ = [
    "box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_area", "box_iou", "generalized_box_iou", "check_boxes",
    "BoxIoU", "GIoUTerms",
    "HungarianMatcher", "Match", "MatchCost", "ImageCost", "Matching", "matching_cost", "hungarian_match",
    "SetCriterion", "SetLoss", "LabelLoss", "BoxLoss", "loss_labels", "loss_boxes", "loss_cardinality",
    "weighted_total", "set_criterion", "count_boxes", "build_weight_dict", "LOSS_NAMES",
    "FAMILY",
]

FAMILY = Family(name="detr", schemes=(SPEC,), vectors=GROUPS, tolerances=TOLERANCES)
