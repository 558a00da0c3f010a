"""The toy family's math: IoU of a cell-sized box on the centre cell with the target box."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from losscore.boxes import bbox_iou
from losscore.trace import Trace

__all__ = ["CentreCell", "centre_cell_iou"]


class CentreCell(NamedTuple):
    gi: Tensor  # (N,) int64 column of the cell holding the centre, clamped
    gj: Tensor  # (N,) int64 row
    pred: Tensor  # (N, 4) xywh px: the cell-sized box on the cell centre
    iou: Tensor  # (N,)


def centre_cell_iou(boxes_xywh: Tensor, stride: int, grid: tuple[int, int], trace: Trace | None = None) -> CentreCell:
    """Each box (N, 4) xywh px goes to the cell holding its centre; its prediction is that cell."""
    H, W = grid
    cell = (boxes_xywh[:, :2] / stride).long()  # (N, 2)
    gi, gj = cell[:, 0].clamp(0, W - 1), cell[:, 1].clamp(0, H - 1)
    pred = torch.stack([(gi + 0.5) * stride, (gj + 0.5) * stride,
                        torch.full_like(gi, stride), torch.full_like(gi, stride)], 1).to(boxes_xywh.dtype)
    if trace is not None:
        with trace.scope("toy"):
            iou = bbox_iou(pred, boxes_xywh, trace=trace).squeeze(-1)  # (N,)
    else:
        iou = bbox_iou(pred, boxes_xywh).squeeze(-1)
    if trace is not None:
        trace.record("toy.assign", "Centre cell", "each box goes to the cell holding its centre",
                     tensors={"gi": (gi, "N"), "gj": (gj, "N")}, values={"stride": stride, "odd": float("nan")},
                     code="tests toy")
    return CentreCell(gi, gj, pred, iou)
