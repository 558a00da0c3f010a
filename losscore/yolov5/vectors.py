"""Runners for the ``yolov5.json`` reference vectors (see ../shared/vectors/README.md)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..boxes import bbox_iou
from .loss import BCEBlurWithLogitsLoss, ComputeLoss, FocalLoss, QFocalLoss, build_targets, smooth_BCE


def _smooth_bce(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    cp, cn = smooth_BCE() if inputs["eps"] is None else smooth_BCE(inputs["eps"])
    return {"cp": cp, "cn": cn}


def _bbox_iou(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    box1, box2, xywh, eps = inputs["box1"], inputs["box2"], inputs["xywh"], inputs.get("eps", 1e-7)
    return {
        "IoU": bbox_iou(box1, box2, xywh=xywh, eps=eps),
        "GIoU": bbox_iou(box1, box2, xywh=xywh, GIoU=True, eps=eps),
        "DIoU": bbox_iou(box1, box2, xywh=xywh, DIoU=True, eps=eps),
        "CIoU": bbox_iou(box1, box2, xywh=xywh, CIoU=True, eps=eps),
    }


def _wrapped(inputs: dict[str, Any], device: torch.device) -> nn.BCEWithLogitsLoss:
    pos_weight = inputs.get("pos_weight")
    weight = None if pos_weight is None else torch.tensor([float(pos_weight)], device=device)
    return nn.BCEWithLogitsLoss(reduction=inputs["reduction"], pos_weight=weight)


def _focal(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    loss = FocalLoss(_wrapped(inputs, device), inputs["gamma"], inputs["alpha"])(inputs["pred"], inputs["true"])
    return {"loss": loss}


def _qfocal(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    loss = QFocalLoss(_wrapped(inputs, device), inputs["gamma"], inputs["alpha"])(inputs["pred"], inputs["true"])
    return {"loss": loss}


def _bce_blur(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"loss": BCEBlurWithLogitsLoss(inputs["alpha"])(inputs["pred"], inputs["true"])}


def _build_targets(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    anchors = inputs["anchors_grid"].to(device)
    assigned = build_targets(inputs["p_shapes"], inputs["targets"], anchors, anchor_t=inputs["anchor_t"])
    return {
        "tcls": assigned.tcls,
        "tbox": assigned.tbox,
        "indices": [list(index) for index in assigned.indices],
        "anch": assigned.anch,
    }


def _compute_loss(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    compute = ComputeLoss(
        inputs["nc"], anchors_grid=inputs["anchors_grid"], strides=inputs["strides"], hyp=inputs["hyp"],
        gr=inputs.get("gr", 1.0), sort_obj_iou=inputs.get("sort_obj_iou", False),
        autobalance=inputs.get("autobalance", False),
    )
    loss, items = compute(inputs["p"], inputs["targets"])
    return {"loss": loss, "loss_items": items}


GROUPS = {
    "yolov5": {
        "smooth_bce": _smooth_bce,
        "bbox_iou": _bbox_iou,
        "focalloss": _focal,
        "qfocalloss": _qfocal,
        "bce_blur": _bce_blur,
        "build_targets": _build_targets,
        "compute_loss": _compute_loss,
    },
}
