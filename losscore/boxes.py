"""Box overlap: IoU, GIoU, DIoU and CIoU as the YOLO families compute them.

Two upstream copies differ only in how the xyxy branch guards the height against zero:

* ``variant="yolov5"`` (ultralytics/yolov5 ``utils/metrics.py``): ``h = (y2 - y1).clamp(eps)``.
* ``variant="yolov9"`` (WongKinYiu/yolov9 ``utils/metrics.py``): ``h = y2 - y1 + eps``.

Both take the CIoU trade-off ``alpha = v / (v - iou + 1 + eps)`` under ``torch.no_grad()`` (it is a
weight, not a path for gradients) and apply it for every IoU. The CIoU paper and mmdet PR #5835
gate it with ``(iou > 0.5)``; :func:`ciou_alpha_paper` gives that variant for comparison.

Reference: Zheng et al., "Distance-IoU Loss", AAAI 2020 (DIoU/CIoU); Rezatofighi et al.,
"Generalized Intersection over Union", CVPR 2019 (GIoU).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .text import T
from .trace import Trace

__all__ = ["bbox_iou", "IoUTerms", "iou_terms", "ciou_alpha_paper", "xywh2xyxy", "xyxy2xywh"]


class IoUTerms(NamedTuple):
    """Every term of the overlap family for a batch of box pairs, each ``(..., 1)``."""

    inter: Tensor
    union: Tensor
    iou: Tensor
    cw: Tensor  # width of the smallest enclosing box
    ch: Tensor  # height of the smallest enclosing box
    c2: Tensor  # squared diagonal of the enclosing box (+ eps)
    rho2: Tensor  # squared distance between the centres
    v: Tensor  # aspect-ratio consistency (4/pi^2)(atan(w2/h2) - atan(w1/h1))^2
    alpha: Tensor  # CIoU trade-off v / (v - iou + 1 + eps), no gradient
    giou: Tensor
    diou: Tensor
    ciou: Tensor


def xywh2xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre-size boxes to corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def xyxy2xywh(boxes: Tensor) -> Tensor:
    """(..., 4) corner boxes to centre-size."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def _corners(box1: Tensor, box2: Tensor, xywh: bool, eps: float, variant: str):
    if variant not in ("yolov5", "yolov9"):
        raise ValueError(f"variant: expected 'yolov5' or 'yolov9', got {variant!r}")
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        half_w1, half_h1, half_w2, half_h2 = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        a = (x1 - half_w1, y1 - half_h1, x1 + half_w1, y1 + half_h1)
        b = (x2 - half_w2, y2 - half_h2, x2 + half_w2, y2 + half_h2)
    else:
        a = box1.chunk(4, -1)
        b = box2.chunk(4, -1)
        w1, w2 = a[2] - a[0], b[2] - b[0]
        if variant == "yolov5":
            h1, h2 = (a[3] - a[1]).clamp(eps), (b[3] - b[1]).clamp(eps)
        else:
            h1, h2 = a[3] - a[1] + eps, b[3] - b[1] + eps
    return a, b, (w1, h1), (w2, h2)


def iou_terms(box1: Tensor, box2: Tensor, xywh: bool = True, eps: float = 1e-7,
              variant: str = "yolov5") -> IoUTerms:
    """All overlap terms of ``box1`` against ``box2`` (broadcasting ``(..., 4)`` boxes).

    The arithmetic follows upstream operation by operation, so every returned value has the bits
    of the corresponding upstream intermediate.
    """
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), (w1, h1), (w2, h2) = _corners(box1, box2, xywh, eps, variant)
    inter = (ax2.minimum(bx2) - ax1.maximum(bx1)).clamp(0) * (ay2.minimum(by2) - ay1.maximum(by1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = ax2.maximum(bx2) - ax1.minimum(bx1)
    ch = ay2.maximum(by2) - ay1.minimum(by1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    c_area = cw * ch + eps
    giou = iou - (c_area - union) / c_area
    diou = iou - rho2 / c2
    ciou = iou - (rho2 / c2 + v * alpha)
    return IoUTerms(inter, union, iou, cw, ch, c2, rho2, v, alpha, giou, diou, ciou)


def bbox_iou(box1: Tensor, box2: Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7, variant: str = "yolov5",
             trace: Trace | None = None) -> Tensor:
    """IoU of ``box1`` against ``box2``, or GIoU / DIoU / CIoU when asked.

    Args:
        box1 (Tensor[..., 4]), box2 (Tensor[..., 4]): boxes that broadcast against each other,
            ``(cx, cy, w, h)`` when ``xywh`` else ``(x1, y1, x2, y2)``.
        eps: guards the divisions (upstream's 1e-7).
        variant: ``"yolov5"`` or ``"yolov9"`` (see the module docstring).
        trace: when given, records a stage ``bbox_iou`` with every term.

    Returns:
        Tensor[..., 1]. A zero-area box gives NaN CIoU (0/0 in ``w/h``), as upstream.
    """
    kind = "CIoU" if CIoU else "DIoU" if DIoU else "GIoU" if GIoU else "IoU"
    if trace is not None:
        # every term once, recorded; the result is the same expression of the same terms
        terms = iou_terms(box1, box2, xywh, eps, variant)
        trace.record(
            "bbox_iou", T("{kind} of predicted vs target boxes", kind=kind),
            "IoU = inter/union; GIoU subtracts the empty share of the enclosing box; DIoU subtracts "
            "rho²/c² (centre distance over enclosing diagonal); CIoU also subtracts v·alpha "
            "(aspect-ratio term, alpha taken without gradient)",
            code=f"utils/metrics.py bbox_iou ({variant})",
            tensors={name: (getattr(terms, name), "P 1") for name in IoUTerms._fields},
            values={"kind": kind, "xywh": xywh, "eps": eps, "variant": variant},
        )
        return getattr(terms, kind.lower())
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), (w1, h1), (w2, h2) = _corners(box1, box2, xywh, eps, variant)
    inter = (ax2.minimum(bx2) - ax1.maximum(bx1)).clamp(0) * (ay2.minimum(by2) - ay1.maximum(by1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (CIoU or DIoU or GIoU):
        return iou
    cw = ax2.maximum(bx2) - ax1.minimum(bx1)
    ch = ay2.maximum(by2) - ay1.minimum(by1)
    if GIoU and not (CIoU or DIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def ciou_alpha_paper(iou: Tensor, v: Tensor, eps: float = 1e-7) -> Tensor:
    """The CIoU paper's trade-off, gated ``(iou > 0.5)`` (mmdet PR #5835); YOLO uses no gate."""
    with torch.no_grad():
        return (iou > 0.5).to(v.dtype) * v / (1 - iou + v + eps)
