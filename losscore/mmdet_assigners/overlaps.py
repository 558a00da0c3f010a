"""Box overlaps as MMDetection 3.3.0 computes them for its assigners.

``mmdet/structures/bbox/bbox_overlaps.py bbox_overlaps`` (called through
``mmdet/models/task_modules/assigners/iou2d_calculator.py BboxOverlaps2D``)::

    area      = (x2 - x1) * (y2 - y1)
    inter     = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)
    union     = max(area1 + area2 - inter, eps)      ("iof": union = area1, the FIRST box's area)
    IoU / IoF = inter / union                          eps = 1e-6

Unlike the YOLO ``bbox_iou`` (``losscore.boxes``), the floor is on the union (``max(union, eps)``),
not an ``eps`` added to it, and boxes are always corners. Every operation runs in the same order
as upstream, so an overlap has upstream's bits whichever way the pairs are laid out: an overlap
of a gathered (candidate, target) pair equals the same entry of the dense matrix.

Shapes: ``A`` boxes of the first set, ``B`` of the second; ``(..., A, 4)`` with matching leading
batch dimensions (upstream's ``B`` batch axes).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bbox_overlaps", "check_iou_calculator", "BBOX_OVERLAPS_CODE"]

BBOX_OVERLAPS_CODE = "mmdet 3.3.0 mmdet/structures/bbox/bbox_overlaps.py bbox_overlaps"
_MODES = ("iou", "iof", "giou")


def _clamp_min0(x: Tensor) -> Tensor:
    # upstream's fp16_clamp: CPU half has no clamp kernel, so it goes through float32
    if not x.is_cuda and x.dtype == torch.float16:
        return x.float().clamp(min=0).half()
    return x.clamp(min=0)


def bbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, mode: str = "iou", is_aligned: bool = False,
                  eps: float = 1e-6) -> Tensor:
    """IoU, IoF or GIoU of every box of ``bboxes1`` against every box of ``bboxes2``.

    Args:
        bboxes1 (Tensor[..., A, 4]): xyxy boxes (or empty).
        bboxes2 (Tensor[..., B, 4]): xyxy boxes (or empty); the leading dims equal ``bboxes1``'s.
        mode: ``"iou"``, ``"iof"`` (intersection over the area of the ``bboxes1`` box) or ``"giou"``.
        is_aligned: overlaps of the pairs ``(bboxes1[i], bboxes2[i])`` only (``A == B``).
        eps: floor of the union (and of the enclosing area for GIoU).

    Returns:
        Tensor[..., A, B], or Tensor[..., A] when ``is_aligned``. With no pair (``A * B == 0``)
        an empty tensor of that shape.

    Raises:
        ValueError: unknown ``mode``, a last dim other than 4, mismatched batch dims, or
            ``is_aligned`` with ``A != B`` (upstream asserts these).
    """
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if not (bboxes1.size(-1) == 4 or bboxes1.size(0) == 0) or not (bboxes2.size(-1) == 4 or bboxes2.size(0) == 0):
        raise ValueError(f"boxes: expected (..., 4) tensors, got {tuple(bboxes1.shape)} and {tuple(bboxes2.shape)}")
    if bboxes1.shape[:-2] != bboxes2.shape[:-2]:
        raise ValueError(f"boxes: batch dims differ: {tuple(bboxes1.shape)} vs {tuple(bboxes2.shape)}")
    batch_shape = bboxes1.shape[:-2]
    rows, cols = bboxes1.size(-2), bboxes2.size(-2)
    if is_aligned and rows != cols:
        raise ValueError(f"is_aligned: needs as many boxes on both sides, got {rows} and {cols}")
    if rows * cols == 0:
        return bboxes1.new_empty(batch_shape + ((rows,) if is_aligned else (rows, cols)))

    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])  # (..., A)
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])  # (..., B)
    # upstream stacks x and y into a last dim of 2; each coordinate on its own gives the same
    # numbers (every element sees the same operations) without the strided (..., A, B, 2) tensors
    if is_aligned:
        a, b = bboxes1.unbind(-1), bboxes2.unbind(-1)  # 4 x (..., A)
    else:
        a = tuple(c[..., :, None] for c in bboxes1.unbind(-1))  # 4 x (..., A, 1)
        b = tuple(c[..., None, :] for c in bboxes2.unbind(-1))  # 4 x (..., 1, B)
        area1, area2 = area1[..., None], area2[..., None, :]
    inter_w = _clamp_min0(torch.min(a[2], b[2]) - torch.max(a[0], b[0]))
    inter_h = _clamp_min0(torch.min(a[3], b[3]) - torch.max(a[1], b[1]))
    inter = inter_w * inter_h  # (..., A) aligned, (..., A, B) otherwise
    union = area1 + area2 - inter if mode in ("iou", "giou") else area1
    floor = union.new_tensor([eps])
    union = torch.max(union, floor)
    ious = inter / union
    if mode != "giou":
        return ious
    enclose_w = _clamp_min0(torch.max(a[2], b[2]) - torch.min(a[0], b[0]))
    enclose_h = _clamp_min0(torch.max(a[3], b[3]) - torch.min(a[1], b[1]))
    enclose_area = torch.max(enclose_w * enclose_h, floor)
    return ious - (enclose_area - union) / enclose_area


def check_iou_calculator(config: dict | None) -> None:
    """An assigner's ``iou_calculator`` config: only ``BboxOverlaps2D`` with its defaults (``scale=1``,
    ``dtype=None``: no fp16 cast) is implemented; anything else is a ``ValueError``."""
    if config is None:
        return
    if (config.get("type") != "BboxOverlaps2D" or set(config) - {"type", "scale", "dtype"}
            or config.get("scale", 1.0) != 1.0 or config.get("dtype") is not None):
        raise ValueError(f"iou_calculator: only dict(type='BboxOverlaps2D') is implemented, got {config!r}")
