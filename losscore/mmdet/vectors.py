"""Runners for the ``mmdet.json`` reference vectors (see ../shared/vectors/README.md)."""
from __future__ import annotations

import torch

from .loss import FocalLoss, py_focal_loss_with_prob, py_sigmoid_focal_loss

def _call_args(inputs: dict) -> dict:
    return dict(weight=inputs["weight"], gamma=inputs["gamma"], alpha=inputs["alpha"],
                reduction=inputs["reduction"], avg_factor=inputs["avg_factor"])


def _run_py_sigmoid(inputs: dict, device: torch.device) -> dict:
    return {"loss": py_sigmoid_focal_loss(inputs["pred"], inputs["target"], **_call_args(inputs))}


def _run_with_prob(inputs: dict, device: torch.device) -> dict:
    return {"loss": py_focal_loss_with_prob(inputs["pred"], inputs["target"], **_call_args(inputs))}


def _run_focal_module(inputs: dict, device: torch.device) -> dict:
    module = FocalLoss(**inputs["init"])
    loss = module(inputs["pred"], inputs["target"], inputs["weight"], avg_factor=inputs["avg_factor"],
                  reduction_override=inputs["reduction_override"])
    return {"loss": loss}


GROUPS = {
    "mmdet": {
        "py_sigmoid_focal_loss": _run_py_sigmoid,
        "py_focal_loss_with_prob": _run_with_prob,
        "FocalLoss": _run_focal_module,
    },
}
