"""Box conversions and (generalised) IoU as DETR computes them (``util/box_ops.py``).

DETR's boxes are normalised: ``(cx, cy, w, h)`` with the image spanning [0, 1] on both axes; the
image size never enters. Nothing is clipped and no epsilon is added anywhere, so two zero-area
boxes whose enclosing box also has zero area give ``0 / 0 = nan``; that is why upstream asserts
``x2 >= x1`` and ``y2 >= y1`` for every box before computing the generalised IoU.

Every function here evaluates the same float operations, in the same order, as upstream, so each
result carries upstream's bits. Internally the pairwise terms are computed coordinate by
coordinate (``(N, M)`` tensors instead of upstream's ``(N, M, 2)`` corner pairs) and the same
core serves three layouts: pairwise ``(N, 4) x (M, 4)``, per image ``(B, Q, 1, 4) x (B, 1, M, 4)``
(the matcher) and aligned ``(P, 4) x (P, 4)`` (the loss, where upstream builds the ``(P, P)``
matrix and keeps its diagonal).

Reference: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019;
Carion et al., "End-to-End Object Detection with Transformers" (DETR), ECCV 2020.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..trace import Trace

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_area", "box_iou", "generalized_box_iou",
           "BoxIoU", "GIoUTerms", "check_boxes"]

BOX_OPS_CODE = "util/box_ops.py"


class BoxIoU(NamedTuple):
    """Pairwise IoU and union, each ``(N, M)`` (upstream's ``box_iou`` returns both)."""

    iou: Tensor
    union: Tensor


class GIoUTerms(NamedTuple):
    """Every intermediate of the generalised IoU, each of the broadcast pair shape (``None`` where
    the computation was asked to keep ``giou`` only)."""

    inter: Tensor | None
    union: Tensor | None
    iou: Tensor | None
    enclose: Tensor | None  # area of the smallest axis-aligned box holding both
    giou: Tensor


def box_cxcywh_to_xyxy(x: Tensor, *, trace: Trace | None = None) -> Tensor:
    """Centre-size boxes to corners: ``x1 = cx - 0.5 * w`` ... ``y2 = cy + 0.5 * h``.

    Args:
        x (Tensor[..., 4]): ``(cx, cy, w, h)``; any leading shape, including ``(0, 4)``.

    Returns:
        Tensor[..., 4]: ``(x1, y1, x2, y2)``. No clipping and no check: zero or negative sizes and
        boxes outside [0, 1] convert as they are.
    """
    cx, cy, w, h = x.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    xyxy = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
    if trace is not None:
        trace.record(
            "boxes.xyxy", "Centre-size to corners",
            "x1 = cx - 0.5*w, y1 = cy - 0.5*h, x2 = cx + 0.5*w, y2 = cy + 0.5*h in float32; nothing is "
            "clipped, so predicted boxes may reach outside the image",
            code=f"{BOX_OPS_CODE} box_cxcywh_to_xyxy",
            tensors={"cxcywh": (x, "... 4"), "xyxy": (xyxy, "... 4")})
    return xyxy


def box_xyxy_to_cxcywh(x: Tensor, *, trace: Trace | None = None) -> Tensor:
    """Corners to centre-size: ``((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)``.

    Args:
        x (Tensor[..., 4]): ``(x1, y1, x2, y2)``.

    Returns:
        Tensor[..., 4]: ``(cx, cy, w, h)``.
    """
    x1, y1, x2, y2 = x.unbind(-1)
    cxcywh = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    if trace is not None:
        trace.record(
            "boxes.cxcywh", "Corners to centre-size",
            "cx = (x1 + x2)/2, cy = (y1 + y2)/2, w = x2 - x1, h = y2 - y1",
            code=f"{BOX_OPS_CODE} box_xyxy_to_cxcywh",
            tensors={"xyxy": (x, "... 4"), "cxcywh": (cxcywh, "... 4")})
    return cxcywh


def _upcast(t: Tensor) -> Tensor:
    # torchvision's ops/_utils.py _upcast: area products of half boxes are taken in float32
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1) * (y2 - y1)`` per box, as torchvision's ``box_area`` (which DETR imports).

    Args:
        boxes (Tensor[..., 4]): xyxy; half precision is upcast to float32 first.

    Returns:
        Tensor[...]: the areas. A box with x2 < x1 xor y2 < y1 has a negative area (no check).
    """
    x1, y1, x2, y2 = _upcast(boxes).unbind(-1)
    return (x2 - x1) * (y2 - y1)


def check_boxes(boxes: Tensor) -> None:
    """Upstream's early check ``assert (boxes[:, 2:] >= boxes[:, :2]).all()``.

    Raises:
        AssertionError: some box has ``x2 < x1`` or ``y2 < y1``, or a NaN corner (a comparison
            with NaN is false). A zero width or height passes.
    """
    if not bool((boxes[..., 2:] >= boxes[..., :2]).all()):
        raise AssertionError("degenerate boxes: generalized_box_iou needs x2 >= x1 and y2 >= y1 for every box")


def _giou_terms(boxes1: Tensor, boxes2: Tensor, keep_terms: bool = True) -> GIoUTerms:
    """GIoU terms of two broadcasting xyxy box tensors, upstream's float ops in upstream's order.

    Per pair: ``inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0)``,
    ``union = (area1 + area2) - inter``, ``iou = inter / union``,
    ``enclose = clamp(max(x2) - min(x1), 0) * clamp(max(y2) - min(y1), 0)``,
    ``giou = iou - (enclose - union) / enclose``. Out of place (the loss needs gradients); each
    temporary is released as soon as it is used, and with ``keep_terms=False`` only ``giou`` is
    kept (the other fields are ``None``), which keeps the matcher's peak memory low.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    ax1, ay1, ax2, ay2 = boxes1.unbind(-1)
    bx1, by1, bx2, by2 = boxes2.unbind(-1)
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = inter_w * inter_h
    del inter_w, inter_h
    union = area1 + area2 - inter
    iou = inter / union
    if not keep_terms:
        inter = None
    enclose_w = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    enclose_h = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    enclose = enclose_w * enclose_h
    del enclose_w, enclose_h
    empty_share = (enclose - union) / enclose
    if not keep_terms:
        union = enclose = None
    giou = iou - empty_share
    if not keep_terms:
        iou = None
    return GIoUTerms(inter, union, iou, enclose, giou)


def box_iou(boxes1: Tensor, boxes2: Tensor, *, trace: Trace | None = None) -> BoxIoU:
    """Pairwise IoU of two sets of xyxy boxes, and the union (DETR's variant of torchvision's).

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): xyxy boxes. Not checked.

    Returns:
        :class:`BoxIoU` of ``(N, M)`` tensors. No epsilon: a zero union gives ``nan``.
    """
    terms = _giou_terms(boxes1[:, None, :], boxes2[None, :, :])
    if trace is not None:
        trace.record(
            "iou.pairwise", "Pairwise IoU",
            "inter = overlap width * overlap height (each clamped at 0); union = area1 + area2 - inter; "
            "iou = inter / union, with no epsilon",
            code=f"{BOX_OPS_CODE} box_iou",
            tensors={"inter": (terms.inter, "N M"), "union": (terms.union, "N M"), "iou": (terms.iou, "N M")})
    return BoxIoU(terms.iou, terms.union)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, *, trace: Trace | None = None) -> Tensor:
    """Pairwise generalised IoU ``iou - (enclose - union) / enclose`` of xyxy boxes.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): ``(x1, y1, x2, y2)``.
        trace: when given, records a stage ``giou.pairwise`` with every intermediate.

    Returns:
        Tensor[N, M] in [-1, 1]: identical boxes give 1, edge-touching boxes 0. Two zero-area boxes
        whose enclosing box has zero area too give ``nan`` (0 / 0; no epsilon). ``M = 0`` gives
        ``(N, 0)``.

    Raises:
        AssertionError: a box of either input has ``x2 < x1`` or ``y2 < y1`` or a NaN corner
            (upstream's early check, before anything is computed).
    """
    check_boxes(boxes1)
    check_boxes(boxes2)
    terms = _giou_terms(boxes1[:, None, :], boxes2[None, :, :])
    if trace is not None:
        trace.record(
            "giou.pairwise", "Generalised IoU",
            "iou = inter / union; enclose = area of the smallest box holding both; "
            "giou = iou - (enclose - union) / enclose. No epsilon: 0/0 gives nan",
            code=f"{BOX_OPS_CODE} generalized_box_iou",
            tensors={name: (getattr(terms, name), "N M") for name in GIoUTerms._fields})
    return terms.giou
