"""Runners for the ``yolov9.json`` reference vectors (see ../shared/vectors/README.md)."""
from __future__ import annotations

from typing import Any

import torch

from ..boxes import bbox_iou
from .loss import BboxLoss, ComputeLoss, VarifocalLoss
from .tal import TaskAlignedAssigner, bbox2dist, dist2bbox, make_anchors

def _run_make_anchors(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    points, strides = make_anchors(inputs["feat_shapes"], inputs["strides"], inputs["grid_cell_offset"],
                                   device=device)
    return {"anchor_points": points, "stride_tensor": strides}


def _run_dist2bbox(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"bbox": dist2bbox(inputs["distance"], inputs["anchor_points"], inputs["xywh"], inputs["dim"])}


def _run_bbox2dist(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"dist": bbox2dist(inputs["anchor_points"], inputs["bbox"], inputs["reg_max"])}


def _run_bbox_iou(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for kind in ("IoU", "GIoU", "DIoU", "CIoU"):
        flags = {k: kind == k for k in ("GIoU", "DIoU", "CIoU")}
        out[kind] = bbox_iou(inputs["box1"], inputs["box2"], xywh=inputs["xywh"], eps=inputs["eps"],
                             variant="yolov9", **flags)
    return out


def _run_varifocal(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"loss": VarifocalLoss()(inputs["pred_score"], inputs["gt_score"], inputs["label"],
                                    inputs["alpha"], inputs["gamma"])}


def _run_bbox_loss(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    loss_iou, loss_dfl, iou = BboxLoss(inputs["reg_max"], inputs["use_dfl"])(
        inputs["pred_dist"], inputs["pred_bboxes"], inputs["anchor_points"], inputs["target_bboxes"],
        inputs["target_scores"], inputs["target_scores_sum"], inputs["fg_mask"])
    return {"loss_iou": loss_iou, "loss_dfl": loss_dfl, "iou": iou}


def _run_assigner(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    assigner = TaskAlignedAssigner(inputs["topk"], inputs["num_classes"], inputs["alpha"], inputs["beta"],
                                   inputs["eps"])
    out = assigner(inputs["pd_scores"], inputs["pd_bboxes"], inputs["anc_points"], inputs["gt_labels"],
                   inputs["gt_bboxes"], inputs["mask_gt"])
    return {"target_labels": out.target_labels, "target_bboxes": out.target_bboxes,
            "target_scores": out.target_scores, "fg_mask": out.fg_mask}


def _run_compute_loss(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    hyp, cfg = inputs["hyp"], inputs["assigner"]
    loss_fn = ComputeLoss(inputs["nc"], inputs["strides"], inputs["reg_max"], hyp, cfg["topk"], cfg["alpha"],
                          cfg["beta"], inputs["use_dfl"])
    out = loss_fn.breakdown(inputs["p"], inputs["targets"])
    fg = 0 if out.assignment is None else int(out.assignment.fg_mask.sum())
    score_sum = 0.0 if out.assignment is None else float(out.assignment.score.sum())  # before max(., 1)
    return {"loss": out.total, "loss_items": out.items,
            "diagnostics": {"fg_count": fg, "target_scores_sum": score_sum}}


GROUPS = {
    "yolov9": {
        "make_anchors": _run_make_anchors,
        "dist2bbox": _run_dist2bbox,
        "bbox2dist": _run_bbox2dist,
        "bbox_iou": _run_bbox_iou,
        "varifocal_loss": _run_varifocal,
        "bbox_loss": _run_bbox_loss,
        "assigner": _run_assigner,
        "compute_loss": _run_compute_loss,
    },
}

# The class loss sums ~1e6 terms: the README allows rtol 2e-4 on the loss scalars.
TOLERANCES = {
    ("yolov9", "compute_loss", "loss"): {"rtol": 2e-4, "atol": 1e-5},
    ("yolov9", "compute_loss", "loss_items"): {"rtol": 2e-4, "atol": 1e-5},
}
