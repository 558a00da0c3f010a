"""Runners for ``yolox.json`` (see ../shared/vectors/README-yolox.md).

Two vector families answer from the same code, differing only in ``version``:

* ``"yolox"``: checked against ``expected`` (release 0.3.0), every group;
* ``"yolox@main"``: checked against ``expected_main`` (GitHub main 6ddff482), the groups that carry
  it (``geometry_constraint``, ``simota_matching``, ``get_assignments``, ``get_losses``).

Diagnostic-only keys (README): ``diagnostics`` of ``get_assignments`` (``num_candidates``, and
``cost`` / ``pair_wise_ious`` when ``N * Ac <= 1500``) and of ``get_losses`` (``per_image``). The
runners return them all, so the tests compare them too.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from .assign import _assign, _version, bboxes_iou, geometry_constraint, simota_matching
from .loss import IOUloss, get_l1_target, get_output_and_grid, make_grid, yolox_loss

__all__ = ["GROUPS", "TOLERANCES"]

Runner = Callable[[dict[str, Any], torch.device], dict[str, Any]]


def _bboxes_iou(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"iou": bboxes_iou(inputs["bboxes_a"], inputs["bboxes_b"], inputs["xyxy"])}


def _iou_loss(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    loss = IOUloss(reduction=inputs["reduction"], loss_type=inputs["loss_type"])
    return {"loss": loss(inputs["pred"], inputs["target"])}


def _get_output_and_grid(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    decoded = get_output_and_grid(inputs["output"], inputs["stride"])
    return {"output": decoded.output, "grid": decoded.grid}


def _get_l1_target(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    target = get_l1_target(inputs["gt"], inputs["stride"], inputs["x_shifts"], inputs["y_shifts"], inputs["eps"])
    return {"l1_target": target}


def _anchors(inputs: dict[str, Any], device: torch.device):
    grid = make_grid(inputs["img_hw"], inputs["strides"], device=device)
    if "total_num_anchors" in inputs and grid.x_shifts.numel() != inputs["total_num_anchors"]:
        raise ValueError(f"total_num_anchors: {inputs['total_num_anchors']} != {grid.x_shifts.numel()} from img_hw")
    return grid


def _geometry(inputs: dict[str, Any], device: torch.device, version: str) -> dict[str, Any]:
    grid = _anchors(inputs, device)
    geometry = geometry_constraint(inputs["gt_bboxes_per_image"], grid.x_shifts, grid.y_shifts,
                                   grid.expanded_strides, version=version)
    if version == "0.3.0":
        return {"is_in_boxes_anchor": geometry.anchor_filter, "is_in_boxes_and_center": geometry.relation}
    return {"anchor_filter": geometry.anchor_filter, "geometry_relation": geometry.relation}


def _matching_dict(num_fg, classes, ious, gt_inds, fg_mask) -> dict[str, Any]:
    return {"num_fg": num_fg, "gt_matched_classes": classes, "pred_ious_this_matching": ious,
            "matched_gt_inds": gt_inds, "fg_mask": fg_mask}


def _simota_matching(inputs: dict[str, Any], device: torch.device, version: str) -> dict[str, Any]:
    if inputs["cost"].shape[0] != inputs["num_gt"]:
        raise ValueError("num_gt: does not match the cost rows")
    m = simota_matching(inputs["cost"], inputs["pair_wise_ious"], inputs["gt_classes"], inputs["fg_mask"])
    return _matching_dict(m.num_fg, m.gt_matched_classes, m.pred_ious_this_matching, m.matched_gt_inds, m.fg_mask)


def _get_assignments(inputs: dict[str, Any], device: torch.device, version: str) -> dict[str, Any]:
    grid = _anchors(inputs, device)
    spec = _version(version)
    b = inputs["batch_idx"]
    gt = inputs["gt_bboxes_per_image"]
    assignment, details = _assign(
        gt, inputs["gt_classes"], inputs["bboxes_preds_per_image"], inputs["cls_preds"][b], inputs["obj_preds"][b],
        grid.x_shifts, grid.y_shifts, grid.expanded_strides, num_classes=inputs["num_classes"], spec=spec,
        center_radius=spec.center_radius, penalty=spec.penalty, iou_weight=3.0, candidate_topk=10,
        want_details=True)
    out = _matching_dict(assignment.num_fg, assignment.gt_matched_classes, assignment.pred_ious_this_matching,
                         assignment.matched_gt_inds, assignment.fg_mask)
    diagnostics: dict[str, Any] = {"num_candidates": assignment.num_candidates}
    if gt.shape[0] * assignment.num_candidates <= 1500:
        diagnostics.update(cost=details.cost, pair_wise_ious=details.pair_wise_ious)
    out["diagnostics"] = diagnostics
    return out


def _get_losses(inputs: dict[str, Any], device: torch.device, version: str) -> dict[str, Any]:
    head = inputs["head_init"]
    raw = inputs["raw_outputs"]
    if raw[0].shape[1] != 5 + head["num_classes"]:
        raise ValueError("raw_outputs: channel count does not match head_init.num_classes")
    result = yolox_loss(raw, inputs["labels"], strides=head["strides"], use_l1=inputs["use_l1"],
                        iou_loss_type=inputs.get("iou_loss_type", "iou"), version=version)
    per_image = []
    for b, assignment in enumerate(result.per_image):
        num_gt = int((inputs["labels"][b].sum(1) > 0).sum())
        if assignment is None:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            per_image.append({"num_gt": num_gt, "num_fg": 0, "fg_indices": empty, "matched_gt_inds": empty})
        else:
            per_image.append({"num_gt": num_gt, "num_fg": assignment.num_fg,
                              "fg_indices": assignment.fg_mask.nonzero().squeeze(1),
                              "matched_gt_inds": assignment.matched_gt_inds})
    return {"total_loss": result.total_loss, "iou_loss": result.iou_loss, "conf_loss": result.conf_loss,
            "cls_loss": result.cls_loss, "l1_loss": result.l1_loss, "num_fg": result.num_fg,
            "diagnostics": {"per_image": per_image}}


_BOTH = {"geometry_constraint": _geometry, "simota_matching": _simota_matching,
         "get_assignments": _get_assignments, "get_losses": _get_losses}

GROUPS: dict[str, dict[str, Runner]] = {
    "yolox": {
        "bboxes_iou": _bboxes_iou,
        "iou_loss": _iou_loss,
        "get_output_and_grid": _get_output_and_grid,
        "get_l1_target": _get_l1_target,
        **{name: partial(runner, version="0.3.0") for name, runner in _BOTH.items()},
    },
    "yolox@main": {name: partial(runner, version="main") for name, runner in _BOTH.items()},
}

# README-yolox: "Loss scalars: rtol=1e-4, atol=1e-5" for every get_losses scalar (the harness's
# default scalar keys cover only total_loss).
TOLERANCES: dict[tuple[str, str, str], dict[str, float]] = {
    (family, "get_losses", key): {"rtol": 1e-4, "atol": 1e-5}
    for family in GROUPS for key in ("iou_loss", "conf_loss", "cls_loss", "l1_loss")
}
