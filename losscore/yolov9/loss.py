"""YOLOv9 losses (WongKinYiu/yolov9 ``utils/loss_tal.py`` at 5b1ea9a8), exact and sparse.

``ComputeLoss`` = task-aligned assignment (:mod:`losscore.tal`) + BCE class loss over every
anchor and class + CIoU box loss and DFL on the positives, weighted by the normalised target
scores, with the hard-coded gains box 7.5, cls 0.5, dfl 1.5 (``hyp['box']`` etc. are not read).

What upstream switches on, and what it does not (LEARNERS.md #9, #10):

* ``VarifocalLoss`` is defined but ``ComputeLoss`` never calls it (the VFL line is commented out).
* ``hyp['label_smoothing']`` is turned into ``self.cp, self.cn`` and then never used: the class
  targets are the normalised scores whatever the smoothing.
* ``hyp['fl_gamma'] > 0`` wraps the class BCE in ``FocalLoss(gamma, alpha=0.25)``.
* DFL has 16 bins (``reg_max`` 16, ``bbox2dist`` clamp 15 - 0.01), as in Ultralytics YOLOv8/11; MMDetection's
  GFL head, whose ``reg_max=16`` counts intervals, has 17 (0..16).
* ``bbox_iou`` is yolov9's copy: xyxy heights are ``y2 - y1 + eps`` (YOLOv5/v8 ``clamp(eps)``).

Speed: upstream concatenates and permutes the whole head output, decodes every anchor and
scores every (target, anchor) pair. Here the class loss is ``softplus`` over the raw level maps
(BCE with target 0) plus a correction at the positives' own class entries, and box logits are
decoded only for anchors that lie inside a box; the outputs agree with upstream (see
``tests/test_yolov9.py``, which checks it against the dense reference in ``benchmarks/bench_yolov9.py``).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import bbox_iou, xywh2xyxy
from ..text import T
from ..trace import Trace
from .tal import Assignment, TaskAlignedAssigner, assign, bbox2dist, dist2bbox, make_anchors

__all__ = [
    "VarifocalLoss",
    "BboxLoss",
    "ComputeLoss",
    "LossBreakdown",
    "compute_loss",
    "df_loss",
    "preprocess_targets",
    "BOX_GAIN",
    "CLS_GAIN",
    "DFL_GAIN",
]

BOX_GAIN, CLS_GAIN, DFL_GAIN = 7.5, 0.5, 1.5  # hard-coded in ComputeLoss.__call__
LOSS_CODE = "utils/loss_tal.py ComputeLoss.__call__"


class VarifocalLoss:
    """``sum(BCE(pred, gt_score) * weight)``, ``weight = alpha * p**gamma * (1 - label) + gt_score * label``.

    Defined upstream but not used by ``ComputeLoss``. Shapes: any, all equal; returns a 0-dim sum.
    Reference: Zhang et al., "VarifocalNet", CVPR 2021.
    """

    def __call__(self, pred_score: Tensor, gt_score: Tensor, label: Tensor, alpha: float = 0.75,
                 gamma: float = 2.0) -> Tensor:
        weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
        bce = F.binary_cross_entropy_with_logits(pred_score.float(), gt_score.float(), reduction="none")
        return (bce * weight).sum()


def df_loss(pred_dist: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss with two-bin interpolation.

    A target distance ``d`` sits between bins ``floor(d)`` and ``floor(d) + 1`` with weights
    ``floor(d) + 1 - d`` and ``d - floor(d)`` (3.3 -> bins 3, 4 with 0.7, 0.3); the loss is the
    weighted cross-entropy of the bin logits at both, averaged over the four sides.

    Args:
        pred_dist (Tensor[P * 4, R]): bin logits. target (Tensor[P, 4]): distances in [0, R - 1).

    Returns:
        Tensor[P, 1].

    Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020.
    """
    bin_left = target.long()  # (P, 4)
    bin_right = bin_left + 1
    weight_left = bin_right.to(target.dtype) - target
    weight_right = 1 - weight_left
    loss_left = F.cross_entropy(pred_dist, bin_left.view(-1), reduction="none").view(bin_left.shape)
    loss_right = F.cross_entropy(pred_dist, bin_right.view(-1), reduction="none").view(bin_left.shape)
    return (loss_left * weight_left + loss_right * weight_right).mean(-1, keepdim=True)


class BboxLoss:
    """CIoU loss and DFL of the positives, both weighted by the target score and divided by
    ``target_scores_sum``. ``reg_max`` is the largest bin index (``ComputeLoss`` passes 16 - 1).

    Call ``(pred_dist (B, N, 4R), pred_bboxes (B, N, 4), anchor_points (N, 2), target_bboxes
    (B, N, 4), target_scores (B, N, C), target_scores_sum, fg_mask (B, N))``, boxes xyxy in grid
    units; returns ``(loss_iou, loss_dfl, iou (P, 1))``.
    """

    def __init__(self, reg_max: int = 15, use_dfl: bool = True) -> None:
        self.reg_max, self.use_dfl = reg_max, use_dfl

    def __call__(self, pred_dist: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, target_bboxes: Tensor,
                 target_scores: Tensor, target_scores_sum: Tensor | float, fg_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        weight = target_scores.sum(-1)[fg_mask].unsqueeze(-1)  # (P, 1)
        iou = bbox_iou(pred_bboxes[fg_mask], target_bboxes[fg_mask], xywh=False, CIoU=True, variant="yolov9")
        loss_iou = ((1.0 - iou) * weight).sum() / target_scores_sum
        if self.use_dfl:
            target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max)  # (B, N, 4)
            bins = self.reg_max + 1
            per_positive = df_loss(pred_dist[fg_mask].view(-1, bins), target_ltrb[fg_mask]) * weight
            loss_dfl = per_positive.sum() / target_scores_sum
        else:
            loss_dfl = torch.tensor(0.0, device=pred_dist.device)
        return loss_iou, loss_dfl, iou


def preprocess_targets(targets: Tensor, batch_size: int, image_wh: Tensor) -> Tensor:
    """Rows ``(image, class, cx, cy, w, h)`` normalised -> ``(B, M, 5)`` of ``(class, x1, y1, x2, y2)`` px.

    Targets of an image keep their row order; images with fewer than M targets are zero-padded
    (upstream's ``ComputeLoss.preprocess``, written without the per-image loop).
    """
    if targets.shape[0] == 0:
        return torch.zeros((batch_size, 0, 5), dtype=targets.dtype, device=targets.device)
    image = targets[:, 0].long()  # (N,)
    per_image = torch.bincount(image)
    M = int(per_image.max())
    order = torch.sort(image, stable=True).indices
    first_row = torch.cumsum(per_image, 0) - per_image  # (images,)
    slot = torch.empty_like(image)
    slot[order] = torch.arange(image.numel(), device=image.device) - first_row[image[order]]
    keep = image < batch_size
    out = torch.zeros((batch_size, M, 5), dtype=targets.dtype, device=targets.device)
    out[image[keep], slot[keep]] = targets[keep, 1:]
    scale = image_wh.to(out.dtype)[[0, 1, 0, 1]]
    out[..., 1:5] = xywh2xyxy(out[..., 1:5] * scale)
    return out


def _decode(box_logits: Tensor, anchor_points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bin logits ``(Q, 4, R)`` -> softmax ``(Q, 4, R)``, expected distances ``(Q, 4)``, xyxy boxes ``(Q, 4)``."""
    R = box_logits.shape[-1]
    probs = box_logits.softmax(-1)
    distances = probs.matmul(torch.arange(R, dtype=box_logits.dtype, device=box_logits.device))
    return probs, distances, dist2bbox(distances, anchor_points, xywh=False)


class _HeadLookup:
    """What the assigner reads from the level maps, for the candidate anchors only (no gradient).

    The candidates' box-bin logits are read once and decoded; a class logit is read only for the
    (anchor, class) pairs the assigner asks about. ``slot`` maps (image, anchor) to the candidate's row.
    """

    def __init__(self, feats: Sequence[Tensor], candidates: "CandidateAnchors", reg_max: int,
                 anchor_points: Tensor, stride_tensor: Tensor, sizes: Sequence[int]) -> None:
        batch, anchor = candidates.batch, candidates.anchor
        B = feats[0].shape[0]
        self.feats, self.sizes, self.box_channels = feats, list(sizes), 4 * reg_max
        self.slot = torch.full((B, sum(sizes)), -1, dtype=torch.long, device=anchor.device)
        self.slot[batch, anchor] = torch.arange(anchor.numel(), device=anchor.device)
        with torch.no_grad():
            box_t = torch.cat([_gather_cells(feat, cells, counts, channels=4 * reg_max)
                               for feat, (cells, counts) in zip(feats, candidates.per_level)], 1)  # (4R, Qa)
            box_logits = box_t.T.reshape(-1, 4, reg_max)  # (Qa, 4, R)
            self.probs, self.distances, boxes_grid = _decode(box_logits, anchor_points[anchor])
            self.boxes_px = boxes_grid * stride_tensor[anchor]  # (Qa, 4)

    def rows(self, batch: Tensor, anchor: Tensor) -> Tensor:
        return self.slot[batch, anchor]

    @torch.no_grad()
    def scores(self, batch: Tensor, anchor: Tensor, cls: Tensor) -> Tensor:
        logits = self.feats[0].new_empty(anchor.shape, dtype=self.feats[0].dtype)
        start = 0
        for feat, cells in zip(self.feats, self.sizes):
            on_level = ((anchor >= start) & (anchor < start + cells)).nonzero().squeeze(1)
            no = feat.shape[1]
            # flat index into the contiguous (B, no, H*W) map
            flat = (batch[on_level] * no + self.box_channels + cls[on_level]) * cells + (anchor[on_level] - start)
            logits[on_level] = feat.reshape(-1)[flat]
            start += cells
        return logits.sigmoid()

    def boxes(self, batch: Tensor, anchor: Tensor) -> Tensor:
        return self.boxes_px[self.rows(batch, anchor)]


def _gather_cells(feat: Tensor, cells: Tensor, counts: Sequence[int], channels: int | None = None) -> Tensor:
    """The first ``channels`` (default all) channels of one level at cells grouped by image: ``(no, q)``."""
    B, no = feat.shape[:2]
    no = no if channels is None else channels
    flat = feat.reshape(B, feat.shape[1], -1)[:, :no]  # (B, no, H*W)
    parts = [flat[b].index_select(1, image_cells) for b, image_cells in enumerate(cells.split(list(counts)))]
    return torch.cat(parts, 1) if parts else feat.new_zeros((no, 0))


class _LevelGather(torch.autograd.Function):
    """One level: every channel at the positive cells, and optionally ``sum softplus(class logits)``.

    ``cells`` are the positives' cell indices on this level, grouped by image (``counts`` per
    image). The backward writes one gradient tensor for the level, ``sigmoid(x)`` on the class
    channels when the softplus sum was asked for (BCE against 0), plus the gathered cells'
    gradients, instead of autograd's separate full-size zero-filled gradients.
    """

    @staticmethod
    def forward(ctx, feat: Tensor, cells: Tensor, counts: tuple[int, ...], box_channels: int,
                with_background: bool) -> tuple[Tensor, Tensor]:
        B, no = feat.shape[:2]
        ctx.save_for_backward(feat, cells)
        ctx.counts, ctx.box_channels, ctx.with_background = counts, box_channels, with_background
        values = _gather_cells(feat, cells, counts).T  # (q, no)
        background = F.softplus(feat[:, box_channels:]).sum() if with_background else feat.new_zeros(())
        return background, values

    @staticmethod
    def backward(ctx, grad_background: Tensor, grad_values: Tensor):
        feat, cells = ctx.saved_tensors
        B, no = feat.shape[:2]
        box = ctx.box_channels
        grad = torch.empty_like(feat)
        if ctx.with_background:
            grad[:, :box] = 0
            torch.mul(torch.sigmoid(feat[:, box:]), grad_background, out=grad[:, box:])
        else:
            grad.zero_()
        if grad_values is not None and cells.numel():
            grad_flat = grad.view(B, no, -1)
            counts = list(ctx.counts)
            for b, (image_cells, image_grad) in enumerate(zip(cells.split(counts), grad_values.split(counts))):
                grad_flat[b].index_add_(1, image_cells, image_grad.T)
        return grad, None, None, None, None


class CandidateAnchors(NamedTuple):
    """A set of (image, anchor) ordered by level, then image, then anchor."""

    batch: Tensor  # (Qa,)
    anchor: Tensor  # (Qa,) global anchor index
    per_level: list[tuple[Tensor, tuple[int, ...]]]  # (cells on the level, count per image)


def _candidate_anchors(is_candidate: Tensor, sizes: Sequence[int]) -> CandidateAnchors:
    """Split the (B, N) candidate mask into per-level, per-image runs."""
    B = is_candidate.shape[0]
    batches, anchors, per_level = [], [], []
    start = 0
    for cells in sizes:
        batch, cell = is_candidate[:, start:start + cells].nonzero(as_tuple=True)  # image-major
        counts = tuple(torch.bincount(batch, minlength=B).tolist())
        per_level.append((cell, counts))
        batches.append(batch)
        anchors.append(cell + start)
        start += cells
    return CandidateAnchors(torch.cat(batches), torch.cat(anchors), per_level)


def _head_channels_and_background(feats: Sequence[Tensor], candidates: CandidateAnchors, box_channels: int,
                                  fl_gamma: float) -> tuple[Tensor, Tensor]:
    """``(channels (P, no) at the given anchors, class loss with target 0 summed over every anchor)``, with gradient."""
    parts = []
    background = feats[0].new_zeros(())
    for feat, (cells, counts) in zip(feats, candidates.per_level):
        level_background, values = _LevelGather.apply(feat.contiguous(), cells, counts, box_channels,
                                                      fl_gamma == 0)
        background = background + level_background
        parts.append(values)
    if fl_gamma > 0:  # focal background: plain autograd
        background = sum(_background_class_loss(f[:, box_channels:], fl_gamma) for f in feats)
    return torch.cat(parts), background


def _candidates_by_level(feats: Sequence[Tensor], strides: Sequence[int], gt_bboxes: Tensor,
                         eps: float = 1e-9) -> Tensor:
    """:func:`select_candidates_in_gts` on the anchor grids, one column and one row test per level.

    The x test of an anchor depends only on its column centre and the y test only on its row, so
    ``(B, M, W)`` and ``(B, M, H)`` comparisons (the same float operations as upstream's) give the
    ``(B, M, N)`` mask with a single ``&`` per level.
    """
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in gt_bboxes.unbind(-1))  # (B, M, 1) each
    masks = []
    for feat, stride in zip(feats, strides):
        H, W = feat.shape[-2:]
        col_px = (torch.arange(W, dtype=feat.dtype, device=feat.device) + 0.5) * stride  # (W,)
        row_px = (torch.arange(H, dtype=feat.dtype, device=feat.device) + 0.5) * stride  # (H,)
        col_ok = ((col_px - x1) > eps) & ((x2 - col_px) > eps)  # (B, M, W)
        row_ok = ((row_px - y1) > eps) & ((y2 - row_px) > eps)  # (B, M, H)
        masks.append((row_ok.unsqueeze(-1) & col_ok.unsqueeze(-2)).flatten(-2))  # (B, M, H*W)
    return torch.cat(masks, -1)


def _bce_focal(logits: Tensor, target: Tensor | float, pos_weight: float, fl_gamma: float) -> Tensor:
    """Elementwise class loss: BCE with ``pos_weight``, wrapped in focal loss when ``fl_gamma > 0``."""
    if isinstance(target, float):
        target = torch.full_like(logits, target)
    weight = torch.tensor([pos_weight], dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    if fl_gamma > 0:  # upstream FocalLoss(BCE, gamma, alpha=0.25)
        prob = torch.sigmoid(logits)
        p_t = target * prob + (1 - target) * (1 - prob)
        alpha_factor = target * 0.25 + (1 - target) * (1 - 0.25)
        loss = loss * (alpha_factor * (1.0 - p_t) ** fl_gamma)
    return loss


def _background_class_loss(logits: Tensor, fl_gamma: float) -> Tensor:
    """Sum of the class loss with target 0 over a level's class logits (any layout)."""
    if fl_gamma > 0:
        # BCE(x, 0) * 0.75 * sigmoid(x)**gamma (p_t = 1 - p, so (1 - p_t)**gamma = p**gamma)
        prob = torch.sigmoid(logits)
        return (F.softplus(logits) * (0.75 * (1.0 - (1 - prob)) ** fl_gamma)).sum()
    return F.softplus(logits).sum()  # BCE with target 0 (pos_weight only scales target-1 terms)


class LossBreakdown(NamedTuple):
    """Everything ``compute_loss`` computed, P rows per positive in (image, anchor) order."""

    total: Tensor  # 0-dim: (box + cls + dfl) * B, after gains
    items: Tensor  # (3,) [7.5*box, 0.5*cls, 1.5*dfl], detached
    box: Tensor  # 0-dim raw CIoU loss (before gain)
    cls: Tensor  # 0-dim raw class loss
    dfl: Tensor  # 0-dim raw DFL
    target_scores_sum: Tensor  # 0-dim, max(sum of target scores, 1)
    assignment: Assignment | None
    anchor_points: Tensor  # (N, 2) grid units
    stride_tensor: Tensor  # (N, 1)
    gt: Tensor  # (B, M, 5) class, xyxy px
    pred_box_grid: Tensor  # (P, 4)
    target_box_grid: Tensor  # (P, 4)
    ciou: Tensor  # (P,)
    dfl_probs: Tensor  # (P, 4, R) softmax over bins
    dfl_expected: Tensor  # (P, 4) expected distance in cells
    target_ltrb: Tensor  # (P, 4) target distances (clamped)
    dfl_per_positive: Tensor  # (P,) mean over sides of the two-bin cross-entropy
    cls_logit: Tensor  # (P,) logit of the positive's own class


def compute_loss(feats: Sequence[Tensor], targets: Tensor, *, nc: int, strides: Sequence[int] = (8, 16, 32),
                 reg_max: int = 16, cls_pw: float = 1.0, label_smoothing: float = 0.0, fl_gamma: float = 0.0,
                 topk: int = 10, alpha: float = 0.5, beta: float = 6.0, use_dfl: bool = True,
                 trace: Trace | None = None) -> LossBreakdown:
    """YOLOv9 ``ComputeLoss(model)(p, targets)`` without a model object.

    Args:
        feats: L raw head maps ``Tensor[B, 4R + C, H, W]`` (box logits first, side-major l, t, r, b).
        targets (Tensor[N, 6]): ``(image, class, cx, cy, w, h)`` normalised to the image.
        nc, strides, reg_max: the head. cls_pw, label_smoothing, fl_gamma: upstream's ``hyp``
            (``label_smoothing`` is read and, as upstream, has no effect).
        topk, alpha, beta: the assigner (upstream reads env ``YOLOM``, ``YOLOA``, ``YOLOB``).

    Returns:
        :class:`LossBreakdown`; ``total`` and ``items`` are upstream's two return values.
    """
    del label_smoothing  # upstream computes smooth_BCE targets and never uses them
    B = feats[0].shape[0]
    R, C = reg_max, nc
    dtype, device = feats[0].dtype, feats[0].device
    if feats[0].shape[1] != 4 * R + C:
        raise ValueError(f"feats: expected {4 * R + C} channels (4*reg_max + nc), got {feats[0].shape[1]}")
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    N = sum(sizes)
    if trace is not None:
        trace.record(
            "inputs.split", "Split the head output",
            T("each level [B, no={no}, H, W] is viewed as [B, no, H*W] and concatenated to "
              "[B, no, N={N}]; .split(({bins}, {C}), 1) splits dim 1, the channels, into box-bin logits "
              "and class logits. That is correct: a blog comment saying it should split dim 2 is wrong "
              "(dim 2 is the N anchors and {bins}+{C} != {N})", no=4 * R + C, N=N, bins=4 * R, C=C),
            code=f"{LOSS_CODE} (split)",
            values={"B": B, "no": 4 * R + C, "N": N, "reg_max": R, "nc": C, "levels": len(feats)},
        )
    anchor_points, stride_tensor = make_anchors(feats, strides, 0.5)  # (N, 2), (N, 1)
    image_hw = torch.tensor(feats[0].shape[2:], device=device, dtype=dtype) * strides[0]
    gt = preprocess_targets(targets.to(device), B, image_hw.flip(0))  # (B, M, 5)
    gt_labels, gt_bboxes = gt.split((1, 4), 2)
    mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0)  # (B, M, 1)
    anchors_px = anchor_points * stride_tensor  # (N, 2)
    if trace is not None:
        trace.record(
            "inputs.anchors", "Anchor points",
            "one anchor per cell centre ((i + 0.5) * stride px), level by level; no anchor boxes",
            code="utils/tal/anchor_generator.py make_anchors",
            tensors={"anchor_points": (anchor_points, "N 2"), "stride": (stride_tensor, "N 1")},
            values={"strides": list(strides), "grid_cell_offset": 0.5})
        trace.record(
            "inputs.targets", "Targets per image",
            "rows (image, class, cx, cy, w, h) scaled to pixels and turned to xyxy, padded to M per "
            "image; mask_gt marks real rows (box coordinates summing to > 0)",
            code="utils/loss_tal.py ComputeLoss.preprocess",
            tensors={"gt_labels": (gt_labels, "B M 1"), "gt_bboxes": (gt_bboxes, "B M 4"),
                     "mask_gt": (mask_gt, "B M 1")})

    in_box = _candidates_by_level(feats, strides, gt_bboxes)  # (B, M, N)
    candidates = _candidate_anchors((in_box & (mask_gt > 0)).any(1), sizes)  # level, image, anchor order
    cand_batch, cand_anchor = candidates.batch, candidates.anchor
    head = _HeadLookup([f.contiguous() for f in feats], candidates, R, anchor_points, stride_tensor, sizes)
    if trace is not None:
        trace.record(
            "inputs.decode", "Decode boxes from bin distributions",
            T("per side, softmax over {R} bins and take the expected bin (softmax @ [0..{last}]) as the "
              "distance in cells; box = anchor -/+ (l, t, r, b). Only anchors inside some box are decoded "
              "here: the others can never be positive and get no box loss", R=R, last=R - 1),
            code="utils/loss_tal.py ComputeLoss.bbox_decode, utils/tal/anchor_generator.py dist2bbox",
            tensors={"batch": (cand_batch, "Q"), "anchor": (cand_anchor, "Q"),
                     "distances": (head.distances, "Q 4"), "pred_box_px": (head.boxes_px, "Q 4")})

    if gt.shape[1]:
        result = assign(head, anchors_px, gt_labels, gt_bboxes, mask_gt, num_anchors=N, topk=topk,
                        alpha=alpha, beta=beta, eps=1e-9, in_box=in_box, trace=trace)
        fg_batch, fg_anchor, fg_score = result.batch, result.anchor, result.score
        fg_box_px, fg_label = result.box, result.label
    else:  # upstream's early return: nothing is foreground
        result = None
        fg_batch = fg_anchor = fg_label = torch.zeros(0, dtype=torch.long, device=device)
        fg_score = torch.zeros(0, dtype=dtype, device=device)
        fg_box_px = torch.zeros((0, 4), dtype=dtype, device=device)
    fg_score = fg_score.to(dtype)
    target_scores_sum = fg_score.sum().clamp(min=1)

    # the positives' channels, with gradient, and the class loss against 0 over every anchor
    fg_mask = torch.zeros((B, N), dtype=torch.bool, device=device) if result is None else result.fg_mask
    positives = _candidate_anchors(fg_mask, sizes)  # level, image, anchor order
    channels, background = _head_channels_and_background(feats, positives, 4 * R, fl_gamma)  # (P, no), 0-dim
    back_to_fg_order = (positives.batch * N + positives.anchor).argsort()  # -> (image, anchor) order
    channels = channels[back_to_fg_order]
    cls_logit = channels[:, 4 * R:].gather(1, fg_label.unsqueeze(1)).squeeze(1)  # (P,)
    correction = _bce_focal(cls_logit, fg_score, cls_pw, fl_gamma) - _bce_focal(cls_logit, 0.0, cls_pw, fl_gamma)
    loss_cls = (background + correction.sum()) / target_scores_sum
    if trace is not None:
        trace.record(
            "loss.cls", "Class loss",
            (T("BCE-with-logits of every anchor's class logits against the target scores (0 except the "
               "positive's own class, which gets its normalised score), summed and divided by the sum of "
               "target scores. hyp label_smoothing is read but unused upstream; VarifocalLoss is defined "
               "but not called; focal loss gamma {gamma}, alpha 0.25", gamma=fl_gamma) if fl_gamma > 0 else
             "BCE-with-logits of every anchor's class logits against the target scores (0 except the "
             "positive's own class, which gets its normalised score), summed and divided by the sum of "
             "target scores. hyp label_smoothing is read but unused upstream; VarifocalLoss is defined "
             "but not called"),
            code=f"{LOSS_CODE} (cls loss, BCEcls)",
            tensors={"cls_logit": (cls_logit, "P"), "target_score": (fg_score, "P")},
            values={"background_sum": background.item(), "positive_correction": correction.sum().item(),
                    "target_scores_sum": target_scores_sum.item(), "cls_pw": cls_pw, "fl_gamma": fl_gamma})

    # box and DFL losses on the positives
    weight = fg_score.unsqueeze(-1)  # (P, 1)
    box_logits = channels[:, :4 * R].reshape(-1, 4, R)  # (P, 4, R)
    probs, distances, pred_box_grid = _decode(box_logits, anchor_points[fg_anchor])
    target_box_grid = fg_box_px.to(dtype) / stride_tensor[fg_anchor]
    ciou = bbox_iou(pred_box_grid, target_box_grid, xywh=False, CIoU=True, variant="yolov9")  # (P, 1)
    target_ltrb = bbox2dist(anchor_points[fg_anchor], target_box_grid, R - 1)  # (P, 4)
    dfl_per_positive = df_loss(box_logits.reshape(-1, R), target_ltrb)  # (P, 1)
    zero = torch.zeros((), dtype=dtype, device=device)
    if fg_anchor.numel():
        loss_box = ((1.0 - ciou) * weight).sum() / target_scores_sum
        loss_dfl = (dfl_per_positive * weight).sum() / target_scores_sum if use_dfl else zero
    else:
        loss_box = loss_dfl = zero
    if trace is not None:
        bin_left = target_ltrb.long()
        trace.record(
            "loss.dfl", "Distribution focal loss",
            T("per positive and side: softmax over {R} bins, expected distance, and the target distance "
              "d (clamped to [0, {last} - 0.01]) split over bins floor(d) and floor(d)+1 with weights "
              "floor(d)+1-d and d-floor(d) (3.3 -> bins 3, 4 with 0.7, 0.3); loss = weighted "
              "cross-entropy at both bins, mean over sides, times the target score", R=R, last=R - 1),
            code="utils/loss_tal.py BboxLoss._df_loss",
            tensors={"probs": (probs, "P 4 R"), "expected": (distances, "P 4"),
                     "target_ltrb": (target_ltrb, "P 4"), "bin_left": (bin_left, "P 4"),
                     "bin_right": (bin_left + 1, "P 4"),
                     "weight_left": ((bin_left + 1).to(dtype) - target_ltrb, "P 4"),
                     "dfl": (dfl_per_positive, "P 1"), "loss_dfl": loss_dfl})
        trace.record(
            "loss.box", "CIoU box loss",
            "1 - CIoU(predicted, target) per positive (grid units, yolov9 bbox_iou: h = y2 - y1 + eps), "
            "times its target score, summed and divided by the sum of target scores",
            code="utils/loss_tal.py BboxLoss.forward",
            tensors={"pred_box": (pred_box_grid, "P 4"), "target_box": (target_box_grid, "P 4"),
                     "ciou": (ciou, "P 1"), "weight": (weight, "P 1"), "loss_box": loss_box})

    items = torch.stack((loss_box * BOX_GAIN, loss_cls * CLS_GAIN, loss_dfl * DFL_GAIN))
    total = items.sum() * B
    if trace is not None:
        trace.record(
            "loss.total", "Gains and total",
            "loss = [7.5 * box, 0.5 * cls, 1.5 * dfl] (gains hard-coded upstream; hyp box/cls/dfl unread), "
            "total = their sum times the batch size",
            code=f"{LOSS_CODE} (gains)",
            tensors={"items": (items, "3"), "total": total},
            values={"box_gain": BOX_GAIN, "cls_gain": CLS_GAIN, "dfl_gain": DFL_GAIN, "batch_size": B})
    return LossBreakdown(total, items.detach(), loss_box, loss_cls, loss_dfl, target_scores_sum, result,
                         anchor_points, stride_tensor, gt, pred_box_grid, target_box_grid, ciou.squeeze(-1),
                         probs, distances, target_ltrb, dfl_per_positive.squeeze(-1),
                         cls_logit)


class ComputeLoss:
    """``ComputeLoss(nc=80, hyp=...)(p, targets) -> (total, items)`` configured without a model.

    ``hyp`` reads ``cls_pw``, ``label_smoothing`` (unused, as upstream) and ``fl_gamma``.
    """

    def __init__(self, nc: int = 80, strides: Sequence[int] = (8, 16, 32), reg_max: int = 16,
                 hyp: dict[str, float] | None = None, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 use_dfl: bool = True) -> None:
        hyp = dict(hyp or {})
        self.nc, self.strides, self.reg_max, self.use_dfl = nc, tuple(strides), reg_max, use_dfl
        self.cls_pw = float(hyp.get("cls_pw", 1.0))
        self.label_smoothing = float(hyp.get("label_smoothing", 0.0))
        self.fl_gamma = float(hyp.get("fl_gamma", 0.0))
        self.topk, self.alpha, self.beta = topk, alpha, beta

    def breakdown(self, p: Sequence[Tensor] | tuple, targets: Tensor, trace: Trace | None = None) -> LossBreakdown:
        feats = p[1] if isinstance(p, tuple) else p
        return compute_loss(feats, targets, nc=self.nc, strides=self.strides, reg_max=self.reg_max,
                            cls_pw=self.cls_pw, label_smoothing=self.label_smoothing, fl_gamma=self.fl_gamma,
                            topk=self.topk, alpha=self.alpha, beta=self.beta, use_dfl=self.use_dfl, trace=trace)

    def __call__(self, p: Sequence[Tensor] | tuple, targets: Tensor, trace: Trace | None = None) -> tuple[Tensor, Tensor]:
        out = self.breakdown(p, targets, trace)
        return out.total, out.items
