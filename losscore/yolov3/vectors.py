"""Runners for the ``yolov3.json`` reference vectors (see ../shared/vectors/README.md)."""
from __future__ import annotations

import torch
from torch import Tensor

from .loss import build_targets, compute_loss, legacy_build_targets, legacy_scaled_anchors, yolo_layer_loss

def _run_legacy_build_targets(inputs: dict, device: torch.device) -> dict:
    out = legacy_build_targets(inputs["pred_boxes"], inputs["pred_cls"], inputs["target"],
                               inputs["anchors"], inputs["ignore_thres"])
    names = ("iou_scores", "class_mask", "obj_mask", "noobj_mask", "tx", "ty", "tw", "th", "tcls", "tconf")
    return {name: getattr(out, name) for name in names}


def _run_legacy_yolo_layer(inputs: dict, device: torch.device) -> dict:
    raw = inputs["x"]
    B, _, H, W = raw.shape
    A, C = len(inputs["anchors_px"]), inputs["num_classes"]
    prediction = raw.view(B, A, C + 5, H, W).permute(0, 1, 3, 4, 2).contiguous()  # (B, A, H, W, 5 + C)
    anchors = legacy_scaled_anchors(inputs["anchors_px"], inputs["img_dim"], H, device)
    out = yolo_layer_loss(prediction, inputs["targets"], anchors, ignore_thres=inputs["ignore_thres"],
                          obj_scale=inputs["obj_scale"], noobj_scale=inputs["noobj_scale"])
    return {"total_loss": out.total, "metrics": out.metrics, "obj_mask": out.targets.obj_mask,
            "noobj_mask": out.targets.noobj_mask}


def _head_layers(inputs: dict, device: torch.device) -> tuple[list[Tensor], list[float]]:
    layers = inputs["yolo_layers"]
    anchors = [torch.tensor(layer["anchors_px"], dtype=torch.float32, device=device) for layer in layers]
    return anchors, [layer["stride"] for layer in layers]


def _run_build_targets(inputs: dict, device: torch.device) -> dict:
    anchors, strides = _head_layers(inputs, device)
    out = build_targets(inputs["p_shapes"], inputs["targets"], anchors, strides)
    return {"tcls": out.tcls, "tbox": out.tbox, "indices": [list(ix) for ix in out.indices], "anch": out.anch}


def _run_compute_loss(inputs: dict, device: torch.device) -> dict:
    anchors, strides = _head_layers(inputs, device)
    out = compute_loss(inputs["p"], inputs["targets"], anchors, strides)
    return {"loss": out.loss, "loss_items": out.loss_items}


GROUPS = {
    "yolov3": {
        "legacy_build_targets": _run_legacy_build_targets,
        "legacy_yolo_layer": _run_legacy_yolo_layer,
        "build_targets": _run_build_targets,
        "compute_loss": _run_compute_loss,
    },
}
