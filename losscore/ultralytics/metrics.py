"""Box overlap as the ``ultralytics`` package (release 8.4.190, ``utils/metrics.py``) computes it.

The formulas are yolov9's (:mod:`losscore.boxes` ``variant="yolov9"``): in xyxy mode the heights
are ``y2 - y1 + eps`` and the widths carry no eps; ``union = w1*h1 + w2*h2 - inter + eps``. One
evaluation order differs: the CIoU trade-off is written ``alpha = v / (1 - iou + v + eps)``,
i.e. ``((1 - iou) + v) + eps``, where yolov9 writes ``v / (v - iou + (1 + eps))``. Both are the
same real number, and float32 can round them one bit apart, so this module keeps its own copy
(every other operation is in the same order as in :func:`losscore.boxes.bbox_iou`).

Reference: Zheng et al., "Distance-IoU Loss", AAAI 2020 (DIoU/CIoU); Rezatofighi et al.,
"Generalized Intersection over Union", CVPR 2019 (GIoU).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..text import T
from ..trace import Trace

__all__ = ["bbox_iou", "ciou_terms", "METRICS_CODE"]

METRICS_CODE = "ultralytics/utils/metrics.py bbox_iou"


def _corners(box1: Tensor, box2: Tensor, xywh: bool, eps: float):
    """Corners and sizes of both box sets, ``(..., 1)`` each, in upstream's operation order."""
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        half_w1, half_h1, half_w2, half_h2 = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        a = (x1 - half_w1, y1 - half_h1, x1 + half_w1, y1 + half_h1)
        b = (x2 - half_w2, y2 - half_h2, x2 + half_w2, y2 + half_h2)
    else:
        a, b = box1.chunk(4, -1), box2.chunk(4, -1)
        w1, h1 = a[2] - a[0], a[3] - a[1] + eps
        w2, h2 = b[2] - b[0], b[3] - b[1] + eps
    return a, b, (w1, h1), (w2, h2)


def ciou_terms(box1: Tensor, box2: Tensor, xywh: bool = True, eps: float = 1e-7) -> dict[str, Tensor]:
    """Every intermediate of :func:`bbox_iou` (``inter, union, iou, cw, ch, c2, rho2, v, alpha,
    giou, diou, ciou``), each ``(..., 1)`` with the bits upstream's intermediates have."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), (w1, h1), (w2, h2) = _corners(box1, box2, xywh, eps)
    inter = (ax2.minimum(bx2) - ax1.maximum(bx1)).clamp(0) * (ay2.minimum(by2) - ay1.maximum(by1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = ax2.maximum(bx2) - ax1.minimum(bx1)
    ch = ay2.maximum(by2) - ay1.minimum(by1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    c_area = cw * ch + eps
    return {"inter": inter, "union": union, "iou": iou, "cw": cw, "ch": ch, "c2": c2, "rho2": rho2,
            "v": v, "alpha": alpha, "giou": iou - (c_area - union) / c_area, "diou": iou - rho2 / c2,
            "ciou": iou - (rho2 / c2 + v * alpha)}


def bbox_iou(box1: Tensor, box2: Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7, trace: Trace | None = None) -> Tensor:
    """IoU of ``box1`` against ``box2``, or GIoU / DIoU / CIoU when asked (the first flag set wins
    in the order CIoU, DIoU, GIoU, as upstream).

    Args:
        box1 (Tensor[..., 4]), box2 (Tensor[..., 4]): boxes that broadcast against each other,
            ``(cx, cy, w, h)`` when ``xywh`` else ``(x1, y1, x2, y2)``.
        eps: guards the divisions (upstream's 1e-7).
        trace: when given, records a stage ``iou.terms`` with every term.

    Returns:
        Tensor[..., 1]. The CIoU trade-off ``alpha = v / (1 - iou + v + eps)`` is taken without
        gradient. Zero-size boxes give NaN CIoU where ``w / h`` is 0/0, as upstream.
    """
    kind = "CIoU" if CIoU else "DIoU" if DIoU else "GIoU" if GIoU else "IoU"
    if trace is not None:
        terms = ciou_terms(box1, box2, xywh, eps)
        trace.record(
            "iou.terms", T("{kind} of the box pairs", kind=kind),
            "IoU = inter/union (xyxy heights carry +eps); GIoU subtracts the empty share of the enclosing "
            "box; DIoU subtracts rho²/c² (centre distance over enclosing diagonal); CIoU also subtracts "
            "v·alpha with alpha = v / (1 - iou + v + eps) taken without gradient",
            code=METRICS_CODE,
            tensors={name: (value, "P 1") for name, value in terms.items()},
            values={"kind": kind, "xywh": xywh, "eps": eps},
        )
        return terms[kind.lower()]
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), (w1, h1), (w2, h2) = _corners(box1, box2, xywh, eps)
    inter = (ax2.minimum(bx2) - ax1.maximum(bx1)).clamp(0) * (ay2.minimum(by2) - ay1.maximum(by1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (CIoU or DIoU or GIoU):
        return iou
    cw = ax2.maximum(bx2) - ax1.minimum(bx1)  # enclosing box width
    ch = ay2.maximum(by2) - ay1.minimum(by1)  # enclosing box height
    if not (CIoU or DIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw.pow(2) + ch.pow(2) + eps  # enclosing diagonal squared
    rho2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4  # centre distance squared
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - (rho2 / c2 + v * alpha)
