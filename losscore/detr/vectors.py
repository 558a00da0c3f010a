"""Runners for the ``detr.json`` reference vectors (see ../shared/vectors/README-detr.md).

Each runner returns a dict shaped like the case's ``expected``. ``diagnostics`` is informational
(the README says a checker may skip it): the runners fill what is exact and cheap (``iou``,
``union``, ``total_cost``, ``num_boxes``, ``indices``, ``aux_indices``, ``noobj_argmax_ties``) and
leave out ``assignment_margin`` / ``aux_assignment_margin`` (a re-solve per matched pair).
"""
from __future__ import annotations

from typing import Any

import torch

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou, _giou_terms
from .loss import SetCriterion, weighted_total
from .matcher import HungarianMatcher, Match

VECTOR_FAMILY = "detr"


def _indices(indices: list[Match]) -> list[list[torch.Tensor]]:
    return [[m.query_idx, m.target_idx] for m in indices]


def _noobj_ties(pred_logits: torch.Tensor) -> int:
    best_class = pred_logits[..., :-1].max(-1).values
    return int((best_class == pred_logits[..., -1]).sum())


def _box_cxcywh_to_xyxy(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"xyxy": box_cxcywh_to_xyxy(inputs["x"])}


def _generalized_box_iou(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    boxes1, boxes2 = inputs["boxes1"], inputs["boxes2"]
    giou = generalized_box_iou(boxes1, boxes2)  # raises AssertionError on degenerate boxes
    terms = _giou_terms(boxes1[:, None, :], boxes2[None, :, :])
    return {"giou": giou, "diagnostics": {"iou": terms.iou, "union": terms.union}}


def _matcher(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    matcher = HungarianMatcher(inputs["cost_class"], inputs["cost_bbox"], inputs["cost_giou"])
    matching = matcher.match(inputs["outputs"], inputs["targets"])
    blocks = [matching.cost.block(b) for b in range(len(matching.indices))]
    return {
        "indices": _indices(matching.indices),
        "cost": [{"C": blk.C, "cost_class": blk.cost_class, "cost_bbox": blk.cost_bbox,
                  "cost_giou": blk.cost_giou} for blk in blocks],
        "diagnostics": {
            "total_cost": [float(blk.C[m.query_idx, m.target_idx].double().sum())
                           for blk, m in zip(blocks, matching.indices)],
        },
    }


def _set_criterion(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    criterion = SetCriterion(inputs["num_classes"], HungarianMatcher(**inputs["matcher"]), inputs["weight_dict"],
                             inputs["eos_coef"], inputs["losses"])
    outputs = inputs["outputs"]
    result = criterion.compute(outputs, inputs["targets"])
    aux = outputs.get("aux_outputs", [])
    return {
        "losses": result.losses,
        "weighted_total": weighted_total(result.losses, criterion.weight_dict),
        "diagnostics": {
            "num_boxes": result.num_boxes,
            "indices": _indices(result.indices),
            "aux_indices": [_indices(layer) for layer in result.aux_indices],
            "noobj_argmax_ties": _noobj_ties(outputs["pred_logits"]),
            "aux_noobj_argmax_ties": [_noobj_ties(layer["pred_logits"]) for layer in aux],
        },
    }


GROUPS = {
    VECTOR_FAMILY: {
        "box_cxcywh_to_xyxy": _box_cxcywh_to_xyxy,
        "generalized_box_iou": _generalized_box_iou,
        "matcher": _matcher,
        "set_criterion": _set_criterion,
    },
}

# README-detr.md allows nothing beyond the defaults for the values checked: elementwise
# rtol 1e-5 atol 1e-6 (giou, costs, losses); box_cxcywh_to_xyxy is tighter (rtol 1e-6 atol 1e-7).
TOLERANCES = {(VECTOR_FAMILY, "box_cxcywh_to_xyxy", "xyxy"): {"rtol": 1e-6, "atol": 1e-7}}
