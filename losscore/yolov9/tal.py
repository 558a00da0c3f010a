"""Task-aligned assignment (TAL) as WongKinYiu/yolov9 runs it, without the dense pair tensors.

Upstream (``utils/tal/assigner.py`` and ``utils/tal/anchor_generator.py`` at 5b1ea9a8) scores every
(target, anchor) pair: a ``(B, M, N)`` CIoU, a ``(B, M, K, N)`` one-hot of the top-k and a
``(B, N, C)`` one-hot of the labels. Only anchors whose centre lies inside a box can ever become
positive, so here the class score ``s`` and the overlap ``u`` are computed for those candidate
pairs only, the top-k runs on the same ``(B, M, N)`` metric rows upstream ranks (so
``torch.topk`` breaks ties among zero-metric anchors exactly as upstream does), and conflicts
are re-scored against every target only for the few anchors that several targets claim.

Steps (names follow upstream):

1. ``select_candidates_in_gts``: anchor centre strictly inside the box (every side > eps).
2. ``get_box_metrics``: ``s`` = predicted probability of the target's class, ``u`` = CIoU of the
   target box against the predicted box, clamped at 0, ``t = s**alpha * u**beta``.
3. ``select_topk_candidates``: the ``topk`` largest ``t`` per target among all anchors (those
   outside the box count as 0), kept only when inside the box and the target is real.
4. ``select_highest_overlaps``: an anchor claimed by several targets goes to the target with the
   largest ``u`` over *all* targets of its image (upstream's ``overlaps.argmax(1)``).
5. normalise: ``score = t * max(u) / (max(t) + eps)``, maxima over the target's positives.

Background anchors point at target 0 (``mask_pos.argmax`` of an all-zero column), which is
what upstream's dense ``target_labels`` / ``target_bboxes`` hold for them.

Reference: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
from torch import Tensor

from ..boxes import bbox_iou
from ..text import T
from ..trace import Trace

__all__ = [
    "make_anchors",
    "dist2bbox",
    "bbox2dist",
    "select_candidates_in_gts",
    "TaskAlignedAssigner",
    "Assignment",
    "DenseAssignment",
    "PredictionLookup",
    "DensePredictions",
    "assign",
    "RULE_NAMES",
]

ASSIGNER_CODE = "utils/tal/assigner.py TaskAlignedAssigner"
RULE_NAMES = ["top-k", "top-k (conflict won)", "conflict won (outside own top-k)"]


def make_anchors(feats: Sequence[Tensor] | Sequence[Sequence[int]], strides: Sequence[int],
                 grid_cell_offset: float = 0.5, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Cell-centre anchor points of every level, level by level, row-major.

    Args:
        feats: the level maps ``[B, no, H, W]`` (only shapes are read) or their shapes.
        strides: pixels per cell of each level.

    Returns:
        anchor_points (Tensor[N, 2]): ``(x, y)`` in grid units of their own level.
        stride_tensor (Tensor[N, 1]): the stride of each anchor's level.
    """
    if isinstance(feats[0], Tensor):
        dtype = feats[0].dtype if dtype is None else dtype
        device = feats[0].device if device is None else device
        shapes = [tuple(f.shape) for f in feats]
    else:
        shapes = [tuple(s) for s in feats]
    dtype = torch.float32 if dtype is None else dtype
    points, stride_cols = [], []
    for shape, stride in zip(shapes, strides):
        H, W = shape[-2], shape[-1]
        xs = torch.arange(W, device=device, dtype=dtype) + grid_cell_offset  # (W,)
        ys = torch.arange(H, device=device, dtype=dtype) + grid_cell_offset  # (H,)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        points.append(torch.stack((grid_x, grid_y), -1).view(-1, 2))  # (H*W, 2)
        stride_cols.append(torch.full((H * W, 1), stride, dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_cols)


def dist2bbox(distance: Tensor, anchor_points: Tensor, xywh: bool = True, dim: int = -1) -> Tensor:
    """Side distances ``(l, t, r, b)`` from anchor points to boxes (xywh or xyxy) along ``dim``."""
    left_top, right_bottom = distance.split(2, dim)
    top_left_corner = anchor_points - left_top
    bottom_right_corner = anchor_points + right_bottom
    if xywh:
        centre = (top_left_corner + bottom_right_corner) / 2
        size = bottom_right_corner - top_left_corner
        return torch.cat((centre, size), dim)
    return torch.cat((top_left_corner, bottom_right_corner), dim)


def bbox2dist(anchor_points: Tensor, bbox: Tensor, reg_max: float) -> Tensor:
    """xyxy boxes to side distances ``(l, t, r, b)`` clamped to ``[0, reg_max - 0.01]``.

    ``ComputeLoss`` passes ``reg_max = 16 - 1 = 15``, so a target distance lands between bins
    ``floor(d)`` and ``floor(d) + 1`` of the 16 bins 0..15 (Ultralytics YOLOv8/11 use the same 16; 17 bins 0..16 is
    MMDetection GFL's ``reg_max=16``).
    """
    top_left_corner, bottom_right_corner = bbox.split(2, -1)
    return torch.cat((anchor_points - top_left_corner, bottom_right_corner - anchor_points), -1).clamp(
        0, reg_max - 0.01)


def select_candidates_in_gts(anchor_points: Tensor, gt_bboxes: Tensor, eps: float = 1e-9) -> Tensor:
    """Anchors whose centre lies strictly inside each box: ``Tensor[B, M, N]`` bool.

    Args:
        anchor_points (Tensor[N, 2]): centres, same units as the boxes.
        gt_bboxes (Tensor[B, M, 4]): xyxy.
    """
    anchor_x, anchor_y = anchor_points[:, 0], anchor_points[:, 1]  # (N,)
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in gt_bboxes.unbind(-1))  # (B, M, 1) each
    # upstream: min of the four side distances > eps, i.e. every side > eps
    inside = (anchor_x - x1) > eps
    inside &= (anchor_y - y1) > eps
    inside &= (x2 - anchor_x) > eps
    inside &= (y2 - anchor_y) > eps
    return inside  # (B, M, N)


class PredictionLookup(Protocol):
    """What the assigner reads from the predictions, for any (image, anchor) list.

    ``scores(batch, anchor, cls)`` gives probabilities ``(Q,)``; ``boxes(batch, anchor)`` gives
    xyxy pixel boxes ``(Q, 4)``. Both are detached (the assignment carries no gradient).
    """

    def scores(self, batch: Tensor, anchor: Tensor, cls: Tensor) -> Tensor: ...

    def boxes(self, batch: Tensor, anchor: Tensor) -> Tensor: ...


class DensePredictions:
    """:class:`PredictionLookup` over dense ``pd_scores (B, N, C)`` and ``pd_bboxes (B, N, 4)``."""

    def __init__(self, pd_scores: Tensor, pd_bboxes: Tensor) -> None:
        self.pd_scores = pd_scores
        self.pd_bboxes = pd_bboxes

    def scores(self, batch: Tensor, anchor: Tensor, cls: Tensor) -> Tensor:
        return self.pd_scores[batch, anchor, cls]

    def boxes(self, batch: Tensor, anchor: Tensor) -> Tensor:
        return self.pd_bboxes[batch, anchor]


class Assignment(NamedTuple):
    """The positives of a task-aligned assignment, one row per positive (P rows, (b, n) order).

    ``fg_mask`` (B, N) bool and ``gt_index`` (B, N) int64 (0 for background, as upstream) are
    dense because every anchor needs them; everything else is per positive.
    """

    batch: Tensor  # (P,) image
    anchor: Tensor  # (P,) anchor index in 0..N-1
    gt: Tensor  # (P,) target index in 0..M-1
    label: Tensor  # (P,) int64 class
    box: Tensor  # (P, 4) target box, xyxy, units of gt_bboxes
    score: Tensor  # (P,) normalised target score t * max(u) / (max(t) + eps)
    align_metric: Tensor  # (P,) t = s**alpha * u**beta
    class_score: Tensor  # (P,) s
    overlap: Tensor  # (P,) u = CIoU clamped at 0
    topk_rank: Tensor  # (P,) rank of this anchor in its target's top-k (0 = best), -1 if none
    rule: Tensor  # (P,) index into RULE_NAMES
    fg_mask: Tensor  # (B, N) bool
    gt_index: Tensor  # (B, N) int64
    candidates: "CandidatePairs"


class CandidatePairs(NamedTuple):
    """Every (image, target, anchor) with the anchor centre inside a real target (Q rows)."""

    batch: Tensor  # (Q,)
    gt: Tensor  # (Q,)
    anchor: Tensor  # (Q,)
    class_score: Tensor  # (Q,) s
    overlap: Tensor  # (Q,) u
    align_metric: Tensor  # (Q,) t


class DenseAssignment(NamedTuple):
    """Upstream's return value: ``target_labels (B, N)``, ``target_bboxes (B, N, 4)``,
    ``target_scores (B, N, C)``, ``fg_mask (B, N)`` and ``target_gt_idx (B, N)``."""

    target_labels: Tensor
    target_bboxes: Tensor
    target_scores: Tensor
    fg_mask: Tensor
    target_gt_idx: Tensor


class _Positives(NamedTuple):
    batch: Tensor
    anchor: Tensor
    gt: Tensor
    rank: Tensor
    rule: Tensor
    s: Tensor
    u: Tensor
    t: Tensor


def _overlaps(gt_boxes: Tensor, pred_boxes: Tensor) -> Tensor:
    """CIoU of target (box1) against prediction (box2), clamped at 0, as ``get_box_metrics``."""
    return bbox_iou(gt_boxes, pred_boxes, xywh=False, CIoU=True, variant="yolov9").squeeze(-1).clamp(0)


@torch.no_grad()
def assign(predictions: PredictionLookup, anc_points: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
           mask_gt: Tensor, *, num_anchors: int | None = None, topk: int = 10, alpha: float = 1.0,
           beta: float = 6.0, eps: float = 1e-9, in_box: Tensor | None = None,
           trace: Trace | None = None) -> Assignment:
    """Task-aligned assignment, sparse over candidate pairs (see the module docstring).

    Args:
        predictions: where ``s`` and predicted pixel boxes come from (:class:`PredictionLookup`).
        anc_points (Tensor[N, 2]): anchor centres in pixels.
        gt_labels (Tensor[B, M, 1]): classes (float, as upstream).
        gt_bboxes (Tensor[B, M, 4]): xyxy pixels; padding rows are zeros.
        mask_gt (Tensor[B, M, 1]): 1 for real targets.
        topk, alpha, beta, eps: upstream's hyperparameters (``ComputeLoss`` uses 10, 0.5, 6.0).
        in_box (Tensor[B, M, N], optional): :func:`select_candidates_in_gts`, when already computed.
    """
    B, M, _ = gt_bboxes.shape
    N = anc_points.shape[0] if num_anchors is None else num_anchors
    device = gt_bboxes.device
    labels = gt_labels[..., 0].long()  # (B, M)
    is_real = mask_gt[..., 0] > 0  # (B, M)

    # 1. candidates: anchor centre inside a real box
    if in_box is None:
        in_box = select_candidates_in_gts(anc_points, gt_bboxes, eps)  # (B, M, N)
    pair_batch, pair_gt, pair_anchor = (in_box & is_real.unsqueeze(-1)).nonzero(as_tuple=True)  # (Q,)

    # 2. metrics for the candidate pairs only
    class_score = predictions.scores(pair_batch, pair_anchor, labels[pair_batch, pair_gt])  # (Q,)
    pred_boxes = predictions.boxes(pair_batch, pair_anchor)  # (Q, 4)
    overlap = _overlaps(gt_bboxes[pair_batch, pair_gt], pred_boxes.to(gt_bboxes.dtype))  # (Q,)
    align_metric = class_score.pow(alpha) * overlap.pow(beta)  # (Q,)
    candidates = CandidatePairs(pair_batch, pair_gt, pair_anchor, class_score, overlap, align_metric)
    if trace is not None:
        trace.record(
            "assigner.candidates", "Candidate anchors inside each box",
            "only anchors whose centre lies inside a target (every side > eps) can be positive; for "
            "those pairs s = predicted probability of the target's class, u = CIoU(target, "
            "predicted box) clamped at 0, and the alignment t = s^alpha * u^beta",
            code=f"{ASSIGNER_CODE}.get_box_metrics, select_candidates_in_gts",
            tensors={"batch": (pair_batch, "Q"), "gt": (pair_gt, "Q"), "anchor": (pair_anchor, "Q"),
                     "s": (class_score, "Q"), "u": (overlap, "Q"), "t": (align_metric, "Q"),
                     "pred_box_px": (pred_boxes, "Q 4"), "candidates_per_gt": (in_box.sum(-1), "B M")},
            values={"alpha": alpha, "beta": beta, "eps": eps},
        )

    # 3. top-k on the same rows upstream ranks (0 outside the box), so ties break identically
    metric_rows = torch.zeros((B, M, N), dtype=align_metric.dtype, device=device)
    metric_rows[pair_batch, pair_gt, pair_anchor] = align_metric
    overlap_rows = torch.zeros_like(metric_rows)
    overlap_rows[pair_batch, pair_gt, pair_anchor] = overlap
    topk_metric, topk_anchor = metric_rows.topk(topk, dim=-1)  # (B, M, K)
    chosen = in_box.gather(-1, topk_anchor) & is_real.unsqueeze(-1)  # (B, M, K)
    pos_batch, pos_gt, pos_rank = chosen.nonzero(as_tuple=True)  # (P0,)
    pos_anchor = topk_anchor[pos_batch, pos_gt, pos_rank]
    if trace is not None:
        trace.record(
            "assigner.topk", "Top-k alignment per target",
            T("each target keeps the {topk} anchors with the largest t (anchors outside the box count "
              "as 0 and are then dropped); a high-overlap anchor with a low class score can lose here", topk=topk),
            code=f"{ASSIGNER_CODE}.select_topk_candidates",
            tensors={"topk_anchor": (topk_anchor, "B M K"), "topk_t": (topk_metric, "B M K"),
                     "kept": (chosen, "B M K")},
            values={"topk": topk},
        )

    # 4. anchors claimed by several targets go to the largest overlap over all targets
    claims = torch.zeros((B, N), dtype=torch.int64, device=device)
    claims.index_put_((pos_batch, pos_anchor), torch.ones_like(pos_anchor), accumulate=True)
    single = claims[pos_batch, pos_anchor] == 1
    kept_batch, kept_anchor, kept_gt = pos_batch[single], pos_anchor[single], pos_gt[single]
    parts = [_Positives(kept_batch, kept_anchor, kept_gt, pos_rank[single], torch.zeros_like(kept_gt),
                        predictions.scores(kept_batch, kept_anchor, labels[kept_batch, kept_gt]),
                        overlap_rows[kept_batch, kept_gt, kept_anchor],
                        metric_rows[kept_batch, kept_gt, kept_anchor])]
    conflict_batch, conflict_anchor = (claims > 1).nonzero(as_tuple=True)  # (Cf,)
    if conflict_anchor.numel():
        conflict_boxes = predictions.boxes(conflict_batch, conflict_anchor).to(gt_bboxes.dtype)  # (Cf, 4)
        every_overlap = _overlaps(gt_bboxes[conflict_batch], conflict_boxes.unsqueeze(1))  # (Cf, M)
        winner = every_overlap.argmax(1)  # (Cf,)
        winner_s = predictions.scores(conflict_batch, conflict_anchor, labels[conflict_batch, winner])
        winner_u = every_overlap.gather(1, winner.unsqueeze(1)).squeeze(1)
        winner_t = winner_s.pow(alpha) * winner_u.pow(beta)
        # did the winner's own top-k hold this anchor?
        in_own_topk = (topk_anchor[conflict_batch, winner] == conflict_anchor.unsqueeze(1)) \
            & chosen[conflict_batch, winner]  # (Cf, K)
        own_rank = torch.where(in_own_topk.any(1), in_own_topk.int().argmax(1), -1)
        parts.append(_Positives(conflict_batch, conflict_anchor, winner, own_rank,
                                torch.where(own_rank >= 0, 1, 2), winner_s, winner_u, winner_t))
        if trace is not None:
            trace.record(
                "assigner.conflicts", "Anchors claimed by several targets",
                "an anchor in the top-k of more than one target keeps only the target with the "
                "highest overlap u, taken over every target of the image (argmax of the dense "
                "overlaps, so the winner need not have picked the anchor itself)",
                code="utils/tal/assigner.py select_highest_overlaps",
                tensors={"batch": (conflict_batch, "Cf"), "anchor": (conflict_anchor, "Cf"),
                         "claims": (claims[conflict_batch, conflict_anchor], "Cf"),
                         "u_all_targets": (every_overlap, "Cf M"), "winner": (winner, "Cf")},
            )
    elif trace is not None:
        trace.record("assigner.conflicts", "Anchors claimed by several targets",
                     "no anchor is in the top-k of more than one target, so nothing to resolve",
                     code="utils/tal/assigner.py select_highest_overlaps")
    merged = _Positives(*(torch.cat(column) for column in zip(*parts)))
    order = (merged.batch * N + merged.anchor).argsort()  # upstream's (b, n) row-major order
    fg_batch, fg_anchor, fg_gt, fg_rank, fg_rule, fg_s, fg_u, fg_t = (column[order] for column in merged)

    # 5. normalise per target: t * max(u) / (max(t) + eps), maxima over the target's positives
    flat_gt = fg_batch * M + fg_gt
    max_t = metric_rows.new_zeros(B * M).scatter_reduce(0, flat_gt, fg_t, "amax")  # (B*M,)
    max_u = metric_rows.new_zeros(B * M).scatter_reduce(0, flat_gt, fg_u, "amax")
    fg_score = fg_t * max_u[flat_gt] / (max_t[flat_gt] + eps)
    if trace is not None:
        trace.record(
            "assigner.normalise", "Normalised target scores",
            "each positive's class target is t * max(u) / (max(t) + eps), maxima over its target's "
            "positives: the best-aligned anchor of a target gets that target's best overlap",
            code=f"{ASSIGNER_CODE}.forward (normalize)",
            tensors={"max_t": (max_t.view(B, M), "B M"), "max_u": (max_u.view(B, M), "B M"),
                     "batch": (fg_batch, "P"), "anchor": (fg_anchor, "P"), "gt": (fg_gt, "P"),
                     "t": (fg_t, "P"), "u": (fg_u, "P"), "score": (fg_score, "P")},
        )

    fg_mask = torch.zeros((B, N), dtype=torch.bool, device=device)
    fg_mask[fg_batch, fg_anchor] = True
    gt_index = torch.zeros((B, N), dtype=torch.int64, device=device)
    gt_index[fg_batch, fg_anchor] = fg_gt
    return Assignment(fg_batch, fg_anchor, fg_gt, labels[fg_batch, fg_gt], gt_bboxes[fg_batch, fg_gt],
                      fg_score, fg_t, fg_s, fg_u, fg_rank, fg_rule, fg_mask, gt_index, candidates)


class TaskAlignedAssigner:
    """``TaskAlignedAssigner(topk, num_classes, alpha, beta, eps)(pd_scores, pd_bboxes, ...)``.

    Returns upstream's dense tensors (:class:`DenseAssignment`); :func:`assign` gives the
    per-positive form that ``ComputeLoss`` uses.

    Args (call):
        pd_scores (Tensor[B, N, C]): probabilities. pd_bboxes (Tensor[B, N, 4]): xyxy pixels.
        anc_points (Tensor[N, 2]): pixels. gt_labels (Tensor[B, M, 1]), gt_bboxes (Tensor[B, M, 4])
        xyxy pixels, mask_gt (Tensor[B, M, 1]).
    """

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        self.topk, self.num_classes, self.alpha, self.beta, self.eps = topk, num_classes, alpha, beta, eps

    def __call__(self, pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                 gt_bboxes: Tensor, mask_gt: Tensor, trace: Trace | None = None) -> DenseAssignment:
        B, N, C = pd_scores.shape
        if gt_bboxes.shape[1] == 0:  # upstream's early return: labels and fg_mask come back as floats
            background = torch.full_like(pd_scores[..., 0], self.num_classes)
            return DenseAssignment(background, torch.zeros_like(pd_bboxes), torch.zeros_like(pd_scores),
                                   torch.zeros_like(pd_scores[..., 0]),
                                   torch.zeros_like(pd_scores[..., 0]))
        result = assign(DensePredictions(pd_scores, pd_bboxes), anc_points, gt_labels, gt_bboxes, mask_gt,
                        topk=self.topk, alpha=self.alpha, beta=self.beta, eps=self.eps, trace=trace)
        return densify(result, gt_labels, gt_bboxes, self.num_classes, pd_scores.dtype)


def densify(result: Assignment, gt_labels: Tensor, gt_bboxes: Tensor, num_classes: int,
            dtype: torch.dtype) -> DenseAssignment:
    """Upstream's dense targets from an :class:`Assignment` (background rows point at target 0)."""
    B, N = result.fg_mask.shape
    batch_index = torch.arange(B, device=gt_bboxes.device).unsqueeze(1)  # (B, 1)
    target_labels = gt_labels[..., 0].long()[batch_index, result.gt_index]  # (B, N)
    target_bboxes = gt_bboxes[batch_index, result.gt_index]  # (B, N, 4)
    target_scores = torch.zeros((B, N, num_classes), dtype=dtype, device=gt_bboxes.device)
    target_scores[result.batch, result.anchor, result.label] = result.score.to(dtype)
    return DenseAssignment(target_labels, target_bboxes, target_scores, result.fg_mask, result.gt_index)
