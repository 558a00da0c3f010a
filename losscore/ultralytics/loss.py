"""Ultralytics detection losses (release 8.4.190, ``utils/loss.py``): YOLOv8 / YOLO11
``v8DetectionLoss``, YOLOv10's legacy ``E2EDetectLoss`` and YOLO26's ``E2ELoss``.

``v8DetectionLoss`` = task-aligned assignment (:mod:`losscore.ultralytics.tal`) + BCE of every
anchor's class logits against the normalised target scores + CIoU box loss and DFL on the
positives, weighted by the target scores and divided by ``max(sum of target scores, 1)``. Unlike
YOLOv9 (:mod:`losscore.yolov9.loss`), the gains are read from the model's ``args`` (``box``,
``cls``, ``dfl``; defaults 7.5, 0.5, 1.5), class weights may scale the BCE, and a head with
``reg_max = 1`` (YOLO26) predicts raw distances: the DFL term is replaced by an L1 loss on the
side distances in image fractions (still reported third, as ``l1_loss``, still times ``hyp.dfl``).

The end-to-end losses run two branches over the same targets: one-to-many (top-k 10) and
one-to-one (top-k 1 in ``E2EDetectLoss``; top-k 7 then ``topk2`` 1 in ``E2ELoss``).
``E2ELoss`` weights them ``o2m`` / ``o2o``, from 0.8 / 0.2 decaying linearly over the epochs to
0.1 / 0.9 (``update()`` once per epoch), and reports only the one-to-one branch's items.

The class loss runs densely over ``(B, A, C)`` exactly as upstream; the assignment and the box
terms run over candidate pairs and positives, gathered in upstream's ``(image, anchor)`` order,
so the sums see the same values in the same order.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..text import T, Text
from ..trace import Stage, Trace
from ..yolov9.loss import df_loss, preprocess_targets
from .metrics import bbox_iou
from .tal import Assignment, DensePredictions, TaskAlignedAssigner, bbox2dist, densify, dist2bbox, make_anchors

__all__ = [
    "DFLoss",
    "BboxLoss",
    "BoxTerms",
    "v8DetectionLoss",
    "E2EDetectLoss",
    "E2ELoss",
    "DetectionLoss",
    "E2EBreakdown",
    "detection_loss",
    "e2e_weights",
    "DEFAULT_HYP",
    "LOSS_CODE",
]

LOSS_CODE = "ultralytics/utils/loss.py"
DEFAULT_HYP = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics/cfg/default.yaml


class DFLoss:
    """Distribution focal loss: ``DFLoss(reg_max)(pred_dist, target) -> Tensor[P, 1]``.

    Per side, the target distance ``d`` (clamped **in place** to ``[0, reg_max - 1 - 0.01]``) sits
    between bins ``floor(d)`` and ``floor(d) + 1`` with weights ``floor(d) + 1 - d`` and
    ``d - floor(d)``; the loss is ``-(log_softmax[left] * w_left + log_softmax[right] * w_right)``,
    averaged over the 4 sides (YOLOv9's :func:`~losscore.yolov9.loss.df_loss`, same bits).

    Shape: pred_dist ``(4P, R)`` logits, row ``4i + side``; target ``(P, 4)`` in bins; output ``(P, 1)``.
    Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020.
    """

    def __init__(self, reg_max: int = 16) -> None:
        self.reg_max = reg_max

    def __call__(self, pred_dist: Tensor, target: Tensor, trace: Trace | None = None) -> Tensor:
        target = target.clamp_(0, self.reg_max - 1 - 0.01)  # upstream clamps the caller's tensor
        loss = df_loss(pred_dist, target)
        if trace is not None:
            left = target.long()
            trace.record(
                "dfl.bins", "Two-bin DFL targets",
                "each side's distance d lies between bins floor(d) and floor(d)+1, weighted floor(d)+1-d "
                "and d-floor(d); the loss is the weighted cross-entropy at both bins, mean over the sides",
                code=f"{LOSS_CODE} DFLoss",
                tensors={"target": (target, "P 4"), "bin_left": (left, "P 4"), "bin_right": (left + 1, "P 4"),
                         "weight_left": ((left + 1) - target, "P 4"), "loss": (loss, "P 1")},
                values={"reg_max": self.reg_max})
        return loss


class BoxTerms(NamedTuple):
    """The box terms of the positives (P rows, ``(image, anchor)`` order), grid units."""

    loss_iou: Tensor  # 0-dim: sum((1 - CIoU) * weight) / target_scores_sum
    loss_dfl: Tensor  # 0-dim: the DFL term, or the L1 term when reg_max == 1
    ciou: Tensor  # (P, 1)
    weight: Tensor  # (P, 1) target score of each positive
    target_ltrb: Tensor  # (P, 4) target distances: bins (clamped) for DFL, image fractions for L1
    pred_ltrb: Tensor  # (P, 4) predicted distances in image fractions (L1); empty for DFL
    per_positive: Tensor  # (P, 1) DFL (or L1) of each positive before the weight


def _box_terms(pred_dist: Tensor, pred_box: Tensor, anchor: Tensor, target_box: Tensor, weight: Tensor,
               target_scores_sum: Tensor | float, stride: Tensor, imgsz: Tensor, reg_max: int,
               trace: Trace | None = None) -> BoxTerms:
    """``BboxLoss.forward`` on already gathered positives: pred_dist ``(P, 4R)``, boxes ``(P, 4)``
    xyxy grid units, anchor ``(P, 2)``, weight ``(P, 1)``, stride ``(P, 1)``, imgsz ``[H, W]``."""
    iou = bbox_iou(pred_box, target_box, xywh=False, CIoU=True)  # (P, 1)
    loss_iou = ((1.0 - iou) * weight).sum() / target_scores_sum
    if reg_max > 1:
        target_ltrb = bbox2dist(anchor, target_box, reg_max - 1)  # (P, 4), clamped to [0, R - 1.01]
        per_positive = DFLoss(reg_max)(pred_dist.view(-1, reg_max), target_ltrb, trace=trace)  # (P, 1)
        pred_ltrb = pred_dist.new_zeros((0, 4))
    else:  # raw distances: L1 on the sides in image fractions, target not clamped
        target_ltrb = bbox2dist(anchor, target_box) * stride
        target_ltrb[..., 0::2] /= imgsz[1]
        target_ltrb[..., 1::2] /= imgsz[0]
        pred_ltrb = pred_dist * stride
        pred_ltrb[..., 0::2] /= imgsz[1]
        pred_ltrb[..., 1::2] /= imgsz[0]
        per_positive = F.l1_loss(pred_ltrb, target_ltrb, reduction="none").mean(-1, keepdim=True)
    loss_dfl = (per_positive * weight).sum() / target_scores_sum
    return BoxTerms(loss_iou, loss_dfl, iou, weight, target_ltrb, pred_ltrb, per_positive)


class BboxLoss:
    """``BboxLoss(reg_max)(pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores,
    target_scores_sum, fg_mask, imgsz, stride) -> (loss_iou, loss_dfl)``, as upstream.

    ``reg_max`` is the number of bins (16; ``bbox2dist`` gets ``reg_max - 1``); ``reg_max = 1``
    swaps DFL for the L1 term. Shapes: pred_dist ``(B, A, 4R)``; boxes ``(B, A, 4)`` xyxy grid
    units; anchor_points ``(A, 2)``; target_scores ``(B, A, C)``; fg_mask ``(B, A)``; imgsz
    ``[H, W]`` px; stride ``(A, 1)``. With no foreground both terms are exactly 0.
    """

    def __init__(self, reg_max: int = 16) -> None:
        self.reg_max = reg_max

    def __call__(self, pred_dist: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, target_bboxes: Tensor,
                 target_scores: Tensor, target_scores_sum: Tensor | float, fg_mask: Tensor, imgsz: Tensor,
                 stride: Tensor, trace: Trace | None = None) -> tuple[Tensor, Tensor]:
        batch, anchor = fg_mask.nonzero(as_tuple=True)  # (P,) each, row-major
        weight = target_scores[batch, anchor].sum(-1, keepdim=True)  # (P, 1)
        terms = _box_terms(pred_dist[batch, anchor], pred_bboxes[batch, anchor], anchor_points[anchor],
                           target_bboxes[batch, anchor], weight, target_scores_sum, stride[anchor], imgsz,
                           self.reg_max, trace=trace)
        return terms.loss_iou, terms.loss_dfl


class DetectionLoss(NamedTuple):
    """Everything :func:`detection_loss` computed; P rows per positive in ``(image, anchor)`` order."""

    loss: Tensor  # (3,) [box, cls, dfl] after the gains, times the batch size: upstream's return
    items: Tensor  # (3,) the same before the batch size, detached (upstream's loss_items)
    box: Tensor  # 0-dim raw CIoU term (before its gain)
    cls: Tensor  # 0-dim raw class term
    dfl: Tensor  # 0-dim raw DFL term (L1 when reg_max == 1)
    target_scores_sum: Tensor  # 0-dim, max(sum of target scores, 1)
    assignment: Assignment
    target_scores: Tensor  # (B, A, C) the class targets
    anchor_points: Tensor  # (A, 2) grid units
    stride_tensor: Tensor  # (A, 1)
    gt: Tensor  # (B, M, 5) class, xyxy px
    pred_box: Tensor  # (P, 4) xyxy grid units
    target_box: Tensor  # (P, 4) xyxy grid units
    box_terms: BoxTerms
    loss_names: tuple[str, str, str]


def _head_outputs(preds: Any, reg_max: int, nc: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(pred_distri (B, A, 4R), pred_scores (B, A, C), feats)`` from the level maps
    ``[B, 4R + C, H, W]`` or from upstream's training dict ``{"boxes", "scores", "feats"}``."""
    preds = preds[1] if isinstance(preds, tuple) else preds
    if isinstance(preds, Mapping):
        boxes, scores, feats = preds["boxes"], preds["scores"], list(preds["feats"])
    else:
        feats = list(preds)
        B = feats[0].shape[0]
        if feats[0].shape[1] != 4 * reg_max + nc:
            raise ValueError(f"feats: expected {4 * reg_max + nc} channels (4*reg_max + nc), got {feats[0].shape[1]}")
        boxes = torch.cat([f[:, :4 * reg_max].reshape(B, 4 * reg_max, -1) for f in feats], 2)  # (B, 4R, A)
        scores = torch.cat([f[:, 4 * reg_max:].reshape(B, nc, -1) for f in feats], 2)  # (B, C, A)
    return boxes.permute(0, 2, 1).contiguous(), scores.permute(0, 2, 1).contiguous(), feats


class _Head(NamedTuple):
    """A decoded head: what :func:`detection_loss` computes from ``preds`` before it looks at targets."""

    pred_distri: Tensor  # (B, A, 4R)
    pred_scores: Tensor  # (B, A, C) logits
    feats: list[Tensor]
    anchor_points: Tensor  # (A, 2) grid units
    stride_tensor: Tensor  # (A, 1)
    imgsz: Tensor  # [H, W] px
    pred_dist: Tensor  # (B, A, 4) decoded side distances, grid units
    pred_bboxes: Tensor  # (B, A, 4) xyxy grid units
    scores_prob: Tensor  # (B, A, C) sigmoid of the detached logits (what the assigner reads)


def _decode_head(preds: Any, reg_max: int, nc: int, strides: Sequence[float],
                 shared: dict[Any, Any] | None = None) -> _Head:
    """Upstream's head parsing and ``bbox_decode``. With ``shared`` (a dict the caller passes to every
    branch that reads the very same ``preds`` object, e.g. :class:`E2ELoss` on one head), the decode
    runs once and the later branch reuses its tensors: the same operations on the same inputs, so the
    same bits. Only without autograd: a shared node would sum the branches' gradients before its
    backward, which can round differently from two separate backwards."""
    key = (id(preds), reg_max, nc, tuple(float(s) for s in strides))
    if shared is not None and key in shared:
        cached_preds, head = shared[key]
        if cached_preds is preds:
            return head
    pred_distri, pred_scores, feats = _head_outputs(preds, reg_max, nc)
    B, A, C = pred_scores.shape
    dtype, device = pred_scores.dtype, pred_scores.device
    anchor_points, stride_tensor = make_anchors(feats, strides, 0.5)
    anchor_points, stride_tensor = anchor_points.to(device, dtype), stride_tensor.to(device, dtype)
    imgsz = torch.tensor(feats[0].shape[2:], device=device, dtype=dtype) * float(strides[0])  # [H, W]
    # decode every anchor (upstream's bbox_decode), grid units
    if reg_max > 1:
        proj = torch.arange(reg_max, dtype=torch.float, device=device)
        pred_dist = pred_distri.view(B, A, 4, reg_max).softmax(3).matmul(proj.type(dtype))  # (B, A, 4)
    else:
        pred_dist = pred_distri
    pred_bboxes = dist2bbox(pred_dist, anchor_points, xywh=False)  # (B, A, 4)
    head = _Head(pred_distri, pred_scores, feats, anchor_points, stride_tensor, imgsz, pred_dist, pred_bboxes,
                 pred_scores.detach().sigmoid())
    if shared is not None and not (torch.is_grad_enabled() and pred_scores.requires_grad):
        shared[key] = (preds, head)
    return head


def _targets_tensor(batch: Any) -> Tensor:
    """Rows ``(image, class, cx, cy, w, h)`` from a tensor or upstream's batch dict."""
    if isinstance(batch, Mapping):
        return torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
    return batch


def detection_loss(preds: Any, batch: Any, *, nc: int, reg_max: int = 16, strides: Sequence[float] = (8, 16, 32),
                   hyp: Mapping[str, float] | None = None, class_weights: Tensor | None = None, topk: int = 10,
                   topk2: int | None = None, alpha: float = 0.5, beta: float = 6.0,
                   assigner_stride: Sequence[float] | None = None, trace: Trace | None = None,
                   shared: dict[Any, Any] | None = None) -> DetectionLoss:
    """``v8DetectionLoss(model, tal_topk, tal_topk2)(preds, batch)`` without a model object.

    Args:
        preds: the L level maps ``Tensor[B, 4R + C, H, W]`` (box channels first, side-major
            l, t, r, b, then class logits), or upstream's dict ``{"boxes" (B, 4R, A), "scores"
            (B, C, A), "feats"}`` (or a tuple whose second item is that).
        batch: ``Tensor[n, 6]`` rows ``(image, class, cx, cy, w, h)`` normalised, grouped by image,
            or upstream's dict ``{"batch_idx", "cls", "bboxes"}``.
        nc, reg_max, strides: the head (``reg_max = 1``: raw distances and the L1 term).
        hyp: gains ``box``, ``cls``, ``dfl`` (defaults 7.5, 0.5, 1.5).
        class_weights (Tensor[C], optional): per-class factors on the BCE (``model.class_weights``).
        topk, topk2, alpha, beta: the assigner (every upstream loss uses alpha 0.5, beta 6.0).
        assigner_stride: the ``stride`` list the assigner gets (None: ``strides``, as upstream). It
            only sets ``stride_val``; ``[0]`` makes the small-object enlargement a no-op (no side is
            shorter than 0), which is how a learner's scene switches it off.
        shared: a dict passed to every branch that reads the same ``preds`` object (see
            :func:`_decode_head`); the decoded head is computed once. Same bits; None: no sharing.

    Returns:
        :class:`DetectionLoss`; ``loss`` and ``items`` are upstream's two return values.
    """
    gains = {**DEFAULT_HYP, **{k: float(v) for k, v in (hyp or {}).items() if k in DEFAULT_HYP}}
    loss_names = ("box_loss", "cls_loss", "dfl_loss" if reg_max > 1 else "l1_loss")
    head = _decode_head(preds, reg_max, nc, strides, shared)
    pred_distri, pred_scores, feats = head.pred_distri, head.pred_scores, head.feats
    B, A, C = pred_scores.shape
    dtype, device = pred_scores.dtype, pred_scores.device
    anchor_points, stride_tensor, imgsz = head.anchor_points, head.stride_tensor, head.imgsz
    targets = _targets_tensor(batch).to(device)
    gt = preprocess_targets(targets, B, imgsz.flip(0))  # (B, M, 5)
    gt_labels, gt_bboxes = gt.split((1, 4), 2)
    mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)  # (B, M, 1)
    if trace is not None:
        trace.record(
            "inputs.anchors", "Anchor points",
            T("one anchor per cell centre ((i + 0.5) * stride px), level by level, no anchor boxes: {A} anchors; "
              "the image size is the first level's grid times its stride", A=A),
            code=f"{LOSS_CODE} v8DetectionLoss.get_assigned_targets_and_loss (make_anchors)",
            tensors={"anchor_points": (anchor_points, "A 2"), "stride": (stride_tensor, "A 1"), "imgsz": (imgsz, "2")},
            values={"strides": [float(s) for s in strides], "grid_cell_offset": 0.5, "reg_max": reg_max, "nc": C})
        trace.record(
            "inputs.targets", "Targets per image",
            "rows (image, class, cx, cy, w, h) scaled to pixels, turned to xyxy and padded to M per image; "
            "mask_gt marks real rows (box coordinates summing to > 0)",
            code=f"{LOSS_CODE} v8DetectionLoss.preprocess",
            tensors={"gt_labels": (gt_labels, "B M 1"), "gt_bboxes": (gt_bboxes, "B M 4"),
                     "mask_gt": (mask_gt, "B M 1")},
            values={"B": B, "M": gt.shape[1]})

    pred_dist, pred_bboxes = head.pred_dist, head.pred_bboxes  # (B, A, 4) each, grid units

    assigner = TaskAlignedAssigner(topk, C, alpha, beta, topk2=topk2,
                                   stride=[float(s) for s in (strides if assigner_stride is None else assigner_stride)])
    predictions = DensePredictions(head.scores_prob, (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype))
    result = assigner.assign(predictions, anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt,
                             num_anchors=A, trace=trace)
    target_scores = densify(result, gt_labels, gt_bboxes, C, result.score.dtype).target_scores \
        if gt.shape[1] else torch.zeros_like(pred_scores)
    raw_score_sum = target_scores.sum()
    target_scores_sum = raw_score_sum.clamp(min=1)

    # class loss: BCE of every (anchor, class) logit against its target score
    bce = F.binary_cross_entropy_with_logits(pred_scores, target_scores.to(dtype), reduction="none")  # (B, A, C)
    if class_weights is not None:
        bce = bce * class_weights.to(device).view(1, 1, -1)
    loss_cls = bce.sum() / target_scores_sum
    fg_batch, fg_anchor, fg_label = result.batch, result.anchor, result.label
    if trace is not None:
        bce_pos = bce[fg_batch, fg_anchor, fg_label]
        trace.record(
            "loss.cls", "Class loss",
            T("BCE-with-logits of every anchor's class logits against the target scores (0 except each "
              "positive's own class, which gets its normalised score), times the class weights, summed and divided "
              "by max(sum of target scores, 1); no focal loss, no label smoothing" if class_weights is not None else
              "BCE-with-logits of every anchor's class logits against the target scores (0 except each "
              "positive's own class, which gets its normalised score), summed and divided by max(sum of target "
              "scores, 1); no focal loss, no label smoothing"),
            code=f"{LOSS_CODE} v8DetectionLoss.get_assigned_targets_and_loss (bce)",
            tensors={"cls_logit": (pred_scores[fg_batch, fg_anchor, fg_label], "P"),
                     "target_score": (target_scores[fg_batch, fg_anchor, fg_label], "P"),
                     "bce_positive": (bce_pos, "P"), "bce_per_anchor": (bce.sum(-1), "B A"), "loss_cls": loss_cls},
            values={"bce_sum": bce.sum().item(), "bce_positive_sum": bce_pos.sum().item(),
                    "target_scores_sum_raw": raw_score_sum.item(), "target_scores_sum": target_scores_sum.item(),
                    "class_weights": None if class_weights is None else class_weights.tolist()})

    # box terms on the positives
    weight = target_scores[fg_batch, fg_anchor].sum(-1, keepdim=True)  # (P, 1)
    stride_fg = stride_tensor[fg_anchor]  # (P, 1)
    target_box = result.box.to(dtype) / stride_fg  # (P, 4) grid units
    pred_box = pred_bboxes[fg_batch, fg_anchor]
    terms = _box_terms(pred_distri[fg_batch, fg_anchor], pred_box, anchor_points[fg_anchor], target_box, weight,
                       target_scores_sum, stride_fg, imgsz, reg_max)
    if trace is not None:
        trace.record(
            "loss.box", "CIoU box loss",
            "1 - CIoU(predicted, target) per positive (grid units), times its target score, summed and "
            "divided by max(sum of target scores, 1)",
            code=f"{LOSS_CODE} BboxLoss.forward",
            tensors={"batch": (fg_batch, "P"), "anchor": (fg_anchor, "P"), "pred_box": (pred_box, "P 4"),
                     "target_box": (target_box, "P 4"), "ciou": (terms.ciou, "P 1"), "weight": (weight, "P 1"),
                     "loss_box": terms.loss_iou})
        if reg_max > 1:
            left = terms.target_ltrb.long()
            trace.record(
                "loss.dfl", "Distribution focal loss",
                T("per positive and side: softmax over {reg_max} bins; the target distance d (clamped to "
                  "[0, {last} - 0.01]) is split over bins floor(d) and floor(d)+1 with weights "
                  "floor(d)+1-d and d-floor(d); loss = weighted cross-entropy at both bins, mean over the "
                  "sides, times the target score", reg_max=reg_max, last=reg_max - 1),
                code=f"{LOSS_CODE} DFLoss",
                tensors={"pred_ltrb": (pred_dist[fg_batch, fg_anchor], "P 4"),
                         "target_ltrb": (terms.target_ltrb, "P 4"), "bin_left": (left, "P 4"),
                         "bin_right": (left + 1, "P 4"), "weight_left": ((left + 1) - terms.target_ltrb, "P 4"),
                         "weight_right": (terms.target_ltrb - left, "P 4"), "dfl": (terms.per_positive, "P 1"),
                         "loss_dfl": terms.loss_dfl})
        else:
            trace.record(
                "loss.l1", "L1 distance loss (no DFL)",
                "reg_max 1 predicts the four side distances directly; target distances are not clamped (negative "
                "when the anchor lies outside its box); both are scaled by the stride and divided by the image "
                "width (l, r) or height (t, b); L1 per side, mean over the sides, times the target score",
                code=f"{LOSS_CODE} BboxLoss.forward (reg_max <= 1)",
                tensors={"pred_ltrb": (terms.pred_ltrb, "P 4"), "target_ltrb": (terms.target_ltrb, "P 4"),
                         "l1": (terms.per_positive, "P 1"), "loss_l1": terms.loss_dfl})

    raw = (terms.loss_iou, loss_cls, terms.loss_dfl)
    items = torch.stack((raw[0] * gains["box"], raw[1] * gains["cls"], raw[2] * gains["dfl"]))
    loss = items * B
    if trace is not None:
        trace.record(
            "loss.total", "Gains and batch size",
            T("[box, cls, {third}] times the gains ({box:g}, {cls:g}, {dfl:g}) from the model's args, then times "
              "the batch size {B}; training back-propagates the sum", third=loss_names[2][:-5], box=gains["box"],
              cls=gains["cls"], dfl=gains["dfl"], B=B),
            code=f"{LOSS_CODE} v8DetectionLoss.loss",
            tensors={"raw": (torch.stack(raw), "3"), "items": (items, "3"), "loss": (loss, "3"),
                     "total": loss.sum()},
            values={"box_gain": gains["box"], "cls_gain": gains["cls"], "dfl_gain": gains["dfl"], "batch_size": B,
                    "names": list(loss_names)})
    return DetectionLoss(loss, items.detach(), raw[0], raw[1], raw[2], target_scores_sum, result, target_scores,
                         anchor_points, stride_tensor, gt, pred_box, target_box, terms, loss_names)


class v8DetectionLoss:  # noqa: N801 - upstream's name
    """``v8DetectionLoss(nc, reg_max, strides, hyp, class_weights, tal_topk, tal_topk2)(preds, batch)
    -> (loss (3,) times the batch size, {box_loss, cls_loss, dfl_loss | l1_loss})``, configured
    without a model (upstream reads the same values from ``model.model[-1]`` and ``model.args``)."""

    def __init__(self, nc: int = 80, reg_max: int = 16, strides: Sequence[float] = (8, 16, 32),
                 hyp: Mapping[str, float] | None = None, class_weights: Tensor | None = None, tal_topk: int = 10,
                 tal_topk2: int | None = None, assigner_stride: Sequence[float] | None = None) -> None:
        self.nc, self.reg_max, self.strides = nc, reg_max, tuple(float(s) for s in strides)
        self.hyp = {**DEFAULT_HYP, **dict(hyp or {})}
        self.class_weights = class_weights
        self.topk, self.topk2 = tal_topk, tal_topk2
        self.assigner_stride = None if assigner_stride is None else tuple(float(s) for s in assigner_stride)
        self.loss_names = ("box_loss", "cls_loss", "dfl_loss" if reg_max > 1 else "l1_loss")

    def breakdown(self, preds: Any, batch: Any, trace: Trace | None = None,
                  shared: dict[Any, Any] | None = None) -> DetectionLoss:
        return detection_loss(preds, batch, nc=self.nc, reg_max=self.reg_max, strides=self.strides, hyp=self.hyp,
                              class_weights=self.class_weights, topk=self.topk, topk2=self.topk2,
                              assigner_stride=self.assigner_stride, trace=trace, shared=shared)

    def __call__(self, preds: Any, batch: Any, trace: Trace | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.breakdown(preds, batch, trace)
        return out.loss, dict(zip(self.loss_names, out.items))


class E2EBreakdown(NamedTuple):
    """Both branches of an end-to-end loss and how they combine."""

    loss: Tensor  # (3,) what upstream returns (times the batch size)
    items: dict[str, Tensor]  # upstream's loss items
    one2many: DetectionLoss
    one2one: DetectionLoss
    o2m: float  # weight of the one-to-many branch (1.0 in E2EDetectLoss)
    o2o: float


def _branch(loss_fn: v8DetectionLoss, preds: Any, batch: Any, trace: Trace | None, prefix: str,
            shared: dict[Any, Any] | None = None) -> DetectionLoss:
    """One branch, its stages renamed ``<prefix>_<phase>.<step>`` in the caller's trace."""
    if trace is None:
        return loss_fn.breakdown(preds, batch, shared=shared)
    own = Trace()
    out = loss_fn.breakdown(preds, batch, own, shared=shared)
    for stage in own:
        name = f"{prefix}_{stage.name}"
        title = T("{title} ({branch})", title=stage.title if isinstance(stage.title, Text) else Text(stage.title),
                  branch=prefix)
        if not trace._prefix and trace._level is None:  # no scope open: the branch's snapshots move as they are
            trace.stages.append(Stage(name, title, stage.explain, stage.tensors, stage.code, stage.values))
        else:
            trace.record(name, title, stage.explain, code=stage.code,
                         tensors={k: (r.value, r.dims) for k, r in stage.tensors.items()}, values=stage.values)
    return out


def _branch_preds(preds: Any) -> tuple[Any, Any]:
    preds = preds[1] if isinstance(preds, tuple) and len(preds) == 2 and isinstance(preds[1], Mapping) else preds
    if isinstance(preds, Mapping):
        return preds["one2many"], preds["one2one"]
    one2many, one2one = preds
    return one2many, one2one


def _record_weights(trace: Trace, one2many: DetectionLoss, one2one: DetectionLoss, o2m: float, o2o: float,
                    loss: Tensor, explain: str, code: str) -> None:
    trace.record(
        "e2e.weights", "One-to-many and one-to-one branches", explain, code=code,
        tensors={"loss_one2many": (one2many.loss, "3"), "loss_one2one": (one2one.loss, "3"), "loss": (loss, "3"),
                 "total": loss.sum(), "fg_one2many": one2many.assignment.fg_mask.sum(),
                 "fg_one2one": one2one.assignment.fg_mask.sum()},
        values={"o2m": o2m, "o2o": o2o})


class E2EDetectLoss:
    """YOLOv10's legacy criterion (kept upstream to load old checkpoints): a one-to-many branch
    (top-k 10) plus a one-to-one branch (top-k 1), losses and items summed.

    Call with ``{"one2many": preds, "one2one": preds}`` (each as :func:`detection_loss` takes) or a
    ``(one2many, one2one)`` pair, and the batch.
    """

    def __init__(self, nc: int = 80, reg_max: int = 16, strides: Sequence[float] = (8, 16, 32),
                 hyp: Mapping[str, float] | None = None, class_weights: Tensor | None = None,
                 assigner_stride: Sequence[float] | None = None) -> None:
        self.one2many = v8DetectionLoss(nc, reg_max, strides, hyp, class_weights, tal_topk=10,
                                        assigner_stride=assigner_stride)
        self.one2one = v8DetectionLoss(nc, reg_max, strides, hyp, class_weights, tal_topk=1,
                                       assigner_stride=assigner_stride)

    def breakdown(self, preds: Any, batch: Any, trace: Trace | None = None) -> E2EBreakdown:
        p_o2m, p_o2o = _branch_preds(preds)
        shared: dict[Any, Any] | None = {} if p_o2m is p_o2o else None  # one head feeds both: decode it once
        one2many = _branch(self.one2many, p_o2m, batch, trace, "o2m", shared)
        one2one = _branch(self.one2one, p_o2o, batch, trace, "o2o", shared)
        loss = one2many.loss + one2one.loss
        items = {k: a + b for k, a, b in zip(self.one2many.loss_names, one2many.items, one2one.items)}
        if trace is not None:
            _record_weights(trace, one2many, one2one, 1.0, 1.0, loss,
                            "YOLOv10 (legacy E2EDetectLoss): the one-to-many branch (top-k 10) and the one-to-one "
                            "branch (top-k 1, one anchor per target, what NMS-free inference keeps) are simply added",
                            f"{LOSS_CODE} E2EDetectLoss.__call__")
        return E2EBreakdown(loss, items, one2many, one2one, 1.0, 1.0)

    def __call__(self, preds: Any, batch: Any, trace: Trace | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.breakdown(preds, batch, trace)
        return out.loss, out.items


def e2e_weights(updates: int, epochs: int, start: float = 0.8, final: float = 0.1) -> tuple[float, float]:
    """``(o2m, o2o)`` after ``updates`` calls of ``E2ELoss.update()`` (one per epoch).

    Fresh: ``(0.8, 1 - 0.8)``; then ``o2m = max(1 - updates / max(epochs - 1, 1), 0) * (0.8 - 0.1)
    + 0.1`` and ``o2o = max(1 - o2m, 0)``, in double as upstream: the one-to-many weight falls
    linearly from 0.8 to 0.1 at the last epoch, the one-to-one weight rises to 0.9.
    """
    if updates == 0:
        return start, 1.0 - start
    o2m = max(1 - updates / max(epochs - 1, 1), 0) * (start - final) + final
    return o2m, max(1.0 - o2m, 0)


class E2ELoss:
    """YOLO26 (and YOLOv10 trained by 8.4.190) criterion: ``loss_one2many * o2m + loss_one2one * o2o``,
    with ``o2m`` / ``o2o`` from :func:`e2e_weights`; the items are the one-to-one branch's only.

    One-to-many: top-k 10. One-to-one: top-k 7, then ``topk2`` 1 (at most one anchor per target).
    ``hyp["epochs"]`` sets the schedule; call :meth:`update` once per finished epoch.
    """

    def __init__(self, nc: int = 80, reg_max: int = 1, strides: Sequence[float] = (8, 16, 32),
                 hyp: Mapping[str, float] | None = None, class_weights: Tensor | None = None,
                 assigner_stride: Sequence[float] | None = None) -> None:
        self.one2many = v8DetectionLoss(nc, reg_max, strides, hyp, class_weights, tal_topk=10,
                                        assigner_stride=assigner_stride)
        self.one2one = v8DetectionLoss(nc, reg_max, strides, hyp, class_weights, tal_topk=7, tal_topk2=1,
                                       assigner_stride=assigner_stride)
        self.epochs = int((hyp or {}).get("epochs", 100))  # cfg/default.yaml epochs
        self.updates = 0
        self.o2m, self.o2o = e2e_weights(0, self.epochs)

    def update(self) -> None:
        """One epoch done: move the branch weights along the schedule."""
        self.updates += 1
        self.o2m, self.o2o = e2e_weights(self.updates, self.epochs)

    def breakdown(self, preds: Any, batch: Any, trace: Trace | None = None) -> E2EBreakdown:
        p_o2m, p_o2o = _branch_preds(preds)
        shared: dict[Any, Any] | None = {} if p_o2m is p_o2o else None  # one head feeds both: decode it once
        one2many = _branch(self.one2many, p_o2m, batch, trace, "o2m", shared)
        one2one = _branch(self.one2one, p_o2o, batch, trace, "o2o", shared)
        loss = one2many.loss * self.o2m + one2one.loss * self.o2o
        items = dict(zip(self.one2one.loss_names, one2one.items))
        if trace is not None:
            _record_weights(trace, one2many, one2one, self.o2m, self.o2o, loss,
                            T("YOLO26 E2ELoss: loss = one-to-many * {o2m:.4g} + one-to-one * {o2o:.4g} "
                              "(after {updates} of {epochs} epochs the one-to-many weight has fallen from "
                              "0.8 towards 0.1); the reported items are the one-to-one branch's, unweighted",
                              o2m=self.o2m, o2o=self.o2o, updates=self.updates, epochs=self.epochs),
                            f"{LOSS_CODE} E2ELoss.__call__, E2ELoss.decay")
        return E2EBreakdown(loss, items, one2many, one2one, self.o2m, self.o2o)

    def __call__(self, preds: Any, batch: Any, trace: Trace | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.breakdown(preds, batch, trace)
        return out.loss, out.items
