"""Runners for toy reference vectors (a case is built in the test; no file ships)."""
from __future__ import annotations

import torch

from .loss import centre_cell_iou


def _run_centre_cell(inputs: dict, device: torch.device) -> dict:
    out = centre_cell_iou(inputs["boxes"], inputs["stride"], tuple(inputs["grid"]))
    return {"gi": out.gi, "gj": out.gj, "iou": out.iou}


GROUPS = {"toy": {"centre_cell": _run_centre_cell}}
