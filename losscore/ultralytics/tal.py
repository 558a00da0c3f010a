"""Task-aligned assignment as the ``ultralytics`` package (release 8.4.190, ``utils/tal.py``) runs
it, computed over candidate pairs instead of dense ``(B, M, A)`` tensors.

Upstream's ``TaskAlignedAssigner`` is the YOLOv9 assigner (:mod:`losscore.yolov9.tal`) with these
differences, each kept here:

1. **Small-object enlargement.** Before the inside-the-box test every real target side shorter
   than ``stride_val`` (``stride[1]``, 16 px for strides 8/16/32) is raised to ``stride_val`` about
   the box centre. A 4x4 px box on an 8 px grid then has 4 candidate anchors instead of 0 or 1.
   The enlarged box serves the candidate test only; overlaps use the real box.
2. **Metrics only for candidate pairs.** ``s``, ``u`` and ``t`` are zero outside the (enlarged)
   box: YOLOv9 scores every pair densely.
3. **Conflicts** go to the largest ``u`` among the *candidate* pairs of the anchor (zero for every
   other target), lowest target index on ties; when all are zero the anchor goes to target 0.
4. **``topk2``** (YOLO26 / YOLOv10 one-to-one branch): after the conflicts each target keeps only
   its ``topk2`` best positives by ``t``.
5. CIoU takes ``alpha = v / (1 - iou + v + eps)`` (:mod:`losscore.ultralytics.metrics`).
6. Labels are clamped at 0 before the one-hot (``target_labels.clamp_(0)``).

How it stays exact while sparse: the inside test of an anchor depends on its x and its y only, so
it is evaluated once per (target, distinct x) and once per (target, row of anchors), and the
candidate pairs are enumerated in upstream's ``nonzero`` order, ``(image, target, anchor)``; the
CIoU and the powers run over that same ``(Q,)`` list, so vectorised and scalar code paths see the
same elements as upstream's and give the same bits. ``torch.topk`` leaves the order of equal
values to its implementation: a target whose top-k set could depend on it (fewer than ``topk``
candidates with ``t > 0`` while some candidate has ``t == 0``, or a tie at the k-th place) is
ranked by ``torch.topk`` on its own dense row, exactly the row upstream ranks; every other target
is ranked by one sort of its candidates. The same holds for ``topk2``.

Reference: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..text import T
from ..trace import Trace
from ..yolov9.tal import RULE_NAMES, DensePredictions, PredictionLookup, dist2bbox
from ..yolov9.tal import bbox2dist as _bbox2dist_clamped
from ..yolov9.tal import make_anchors as _make_anchors
from .metrics import bbox_iou

__all__ = [
    "make_anchors",
    "dist2bbox",
    "bbox2dist",
    "xyxy2xywh",
    "xywh2xyxy",
    "enlarge_small_boxes",
    "select_candidates_in_gts",
    "candidate_pairs",
    "TaskAlignedAssigner",
    "Assignment",
    "CandidatePairs",
    "DenseAssignment",
    "DensePredictions",
    "PredictionLookup",
    "assign",
    "densify",
    "RULE_NAMES",
    "TAL_CODE",
]

TAL_CODE = "ultralytics/utils/tal.py TaskAlignedAssigner"
_CHUNK_ELEMENTS = 1 << 20  # dense rows built at once for tie-exact top-k (1M elements, 4 MB float32)


# -- anchors and box codecs ---------------------------------------------------------------------
def make_anchors(feats: Sequence[Tensor] | Tensor | Sequence[Sequence[int]], strides: Sequence[float] | Tensor,
                 grid_cell_offset: float = 0.5) -> tuple[Tensor, Tensor]:
    """Cell-centre anchor points, level by level, row-major (YOLOv9's :func:`make_anchors`).

    Args:
        feats: the level maps ``Tensor[B, no, H, W]`` (only shapes are read), their ``(H, W)``
            sizes, or (as upstream also accepts) a ``Tensor[L, 2]`` of ``(H, W)`` per level.
        strides: pixels per cell of each level.

    Returns:
        anchor_points (Tensor[A, 2]): ``(x, y)`` = ``(col + offset, row + offset)`` in grid units.
        stride_tensor (Tensor[A, 1]): the stride of each anchor's level.
    """
    strides = [float(s) for s in strides]
    if isinstance(feats, Tensor):  # upstream's (L, 2) size tensor
        sizes = [(int(h), int(w)) for h, w in feats.tolist()]
        return _make_anchors(sizes, strides, grid_cell_offset, dtype=feats.dtype, device=feats.device)
    return _make_anchors(feats, strides, grid_cell_offset)


def bbox2dist(anchor_points: Tensor, bbox: Tensor, reg_max: float | None = None) -> Tensor:
    """xyxy boxes to side distances ``(l, t, r, b)`` = ``(ax - x1, ay - y1, x2 - ax, y2 - ay)``.

    ``reg_max`` given: clamped to ``[0, reg_max - 0.01]`` (YOLOv9's :func:`bbox2dist`; the loss
    passes ``bins - 1 = 15``). ``None`` (the ``reg_max = 1`` L1 path): not clamped, so an anchor
    outside its box gives a negative distance.
    """
    if reg_max is not None:
        return _bbox2dist_clamped(anchor_points, bbox, reg_max)
    top_left, bottom_right = bbox.chunk(2, -1)
    return torch.cat((anchor_points - top_left, bottom_right - anchor_points), -1)


def xyxy2xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners to centre/size, ``((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def xywh2xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre/size to corners, ``centre -/+ size / 2``."""
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((centre - half, centre + half), -1)


def stride_value(stride: Sequence[float] | Tensor | None) -> float:
    """Upstream's ``stride_val``: ``stride[1]`` (``stride[0]`` for one level); ``[8, 16, 32]`` when None."""
    stride = [8, 16, 32] if stride is None else [float(s) for s in stride]
    return stride[1] if len(stride) > 1 else stride[0]


def enlarge_small_boxes(gt_bboxes: Tensor, mask_gt: Tensor, stride_val: float) -> tuple[Tensor, Tensor]:
    """Raise every side of a real box shorter than ``stride_val`` to ``stride_val`` about its centre.

    Args:
        gt_bboxes (Tensor[B, M, 4]): xyxy. mask_gt (Tensor[B, M, 1]): non-zero for real boxes.

    Returns:
        boxes (Tensor[B, M, 4]): xyxy after the round trip through centre/size (as upstream; exact on
        lattice inputs). enlarged (Tensor[B, M, 2]) bool: whether the width / height was raised.
        A side of exactly ``stride_val`` is kept (strict ``<``).
    """
    xywh = xyxy2xywh(gt_bboxes)
    enlarged = (xywh[..., 2:] < stride_val) & (mask_gt != 0)  # (B, M, 2)
    floor = torch.tensor(stride_val, dtype=xywh.dtype, device=xywh.device)
    xywh = torch.cat((xywh[..., :2], torch.where(enlarged, floor, xywh[..., 2:])), -1)
    return xywh2xyxy(xywh), enlarged


def select_candidates_in_gts(anc_points: Tensor, gt_bboxes: Tensor, mask_gt: Tensor | None = None,
                             stride_val: float | None = None, eps: float = 1e-9) -> Tensor:
    """Dense ``Tensor[B, M, A]`` bool: anchor strictly inside the (enlarged) box, every side > eps.

    The reference form of upstream's ``select_candidates_in_gts`` (tests and small scenes);
    :func:`candidate_pairs` gives the same pairs without the dense mask. ``stride_val`` None: no
    enlargement (YOLOv9's test).
    """
    if stride_val is not None:
        gt_bboxes, _ = enlarge_small_boxes(gt_bboxes, torch.ones_like(gt_bboxes[..., :1]) if mask_gt is None
                                           else mask_gt, stride_val)
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in gt_bboxes.unbind(-1))  # (B, M, 1) each
    inside = (anc_points[:, 0] - x1) > eps
    inside &= (anc_points[:, 1] - y1) > eps
    inside &= (x2 - anc_points[:, 0]) > eps
    inside &= (y2 - anc_points[:, 1]) > eps
    return inside


class _AnchorRuns(NamedTuple):
    """Anchors cut into runs of consecutive indices that share one y and have increasing x."""

    start: Tensor  # (R,) first anchor of each run
    y: Tensor  # (R,) the run's y
    x_values: Tensor  # (U,) the distinct x values, ascending
    below: Tensor  # (R, U + 1) anchors of the run whose x is below x_values[u]


def _anchor_runs(anc_points: Tensor) -> _AnchorRuns:
    """Rows of a ``make_anchors`` grid become runs (one per row of every level); any other layout
    still works, with shorter runs."""
    x, y = anc_points[:, 0], anc_points[:, 1]
    A = x.shape[0]
    new_run = torch.ones(A, dtype=torch.bool, device=x.device)
    new_run[1:] = (y[1:] != y[:-1]) | (x[1:] <= x[:-1])
    run = new_run.cumsum(0) - 1  # (A,)
    start = new_run.nonzero().squeeze(1)  # (R,)
    x_values, x_index = torch.unique(x, sorted=True, return_inverse=True)  # (U,), (A,)
    below = torch.zeros((start.numel(), x_values.numel() + 1), dtype=torch.long, device=x.device)
    below.index_put_((run, x_index + 1), torch.ones_like(run), accumulate=True)
    return _AnchorRuns(start, y[start], x_values, below.cumsum(1))


def candidate_pairs(anc_points: Tensor, boxes: Tensor, valid: Tensor, eps: float = 1e-9,
                    runs: _AnchorRuns | None = None) -> tuple[Tensor, Tensor]:
    """Every ``(box, anchor)`` with the anchor strictly inside the box, in ``(box, anchor)`` order.

    Args:
        anc_points (Tensor[A, 2]). boxes (Tensor[G, 4]) xyxy, same units. valid (Tensor[G]) bool.

    Returns:
        box (Tensor[Q]), anchor (Tensor[Q]): int64, sorted by box then anchor; the same pairs as
        ``select_candidates_in_gts(...).nonzero()`` on the same boxes, with the same comparisons.
    """
    runs = _anchor_runs(anc_points) if runs is None else runs
    G, R = boxes.shape[0], runs.start.numel()
    device = anc_points.device
    if R == 0 or G == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    x1, y1, x2, y2 = (c.unsqueeze(1) for c in boxes.unbind(-1))  # (G, 1) each
    # x test per distinct x: a contiguous range [x_lo, x_hi) of x_values (both tests are monotone in x)
    x_ok = ((runs.x_values - x1) > eps) & ((x2 - runs.x_values) > eps)  # (G, U)
    x_count = x_ok.sum(1)  # (G,)
    x_lo = torch.where(x_count > 0, x_ok.int().argmax(1), 0)  # first inside
    x_hi = x_lo + x_count
    box_parts, anchor_parts = [], []
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(R, 1))
    for first in range(0, G, rows_per_chunk):
        part = slice(first, first + rows_per_chunk)
        y_ok = ((runs.y - y1[part]) > eps) & ((y2[part] - runs.y) > eps) & valid[part].unsqueeze(1)  # (g, R)
        lo = runs.below[:, x_lo[part]].T  # (g, R): first run position inside
        hi = runs.below[:, x_hi[part]].T
        count = torch.where(y_ok, hi - lo, 0)  # (g, R)
        seg_box, seg_run = count.nonzero(as_tuple=True)  # (S,), box-major then run
        seg_len = count[seg_box, seg_run]
        seg_first = runs.start[seg_run] + lo[seg_box, seg_run]
        total = int(seg_len.sum())
        seg_of_pair = torch.repeat_interleave(torch.arange(seg_len.numel(), device=device), seg_len, output_size=total)
        offset = torch.arange(total, device=device) - (seg_len.cumsum(0) - seg_len)[seg_of_pair]
        box_parts.append(seg_box[seg_of_pair] + first)
        anchor_parts.append(seg_first[seg_of_pair] + offset)
    return torch.cat(box_parts), torch.cat(anchor_parts)


# -- the assignment ------------------------------------------------------------------------------
class CandidatePairs(NamedTuple):
    """Every (image, target, anchor) with the anchor inside a real target's enlarged box (Q rows,
    upstream's ``nonzero`` order)."""

    batch: Tensor  # (Q,)
    gt: Tensor  # (Q,)
    anchor: Tensor  # (Q,)
    in_box: Tensor  # (Q,) bool: also strictly inside the real box (False: the enlargement let it in)
    class_score: Tensor  # (Q,) s
    overlap: Tensor  # (Q,) u = CIoU(target, predicted box) clamped at 0
    align_metric: Tensor  # (Q,) t = s**alpha * u**beta
    topk_rank: Tensor  # (Q,) rank in its target's top-k (0 = best), -1 when not selected


class Assignment(NamedTuple):
    """The positives of a task-aligned assignment, one row per positive (P rows, ``(b, anchor)`` order).

    ``fg_mask`` and ``gt_index`` (0 for background, as upstream) are ``(B, A)`` because every anchor
    needs them; the per-target maxima are ``(B, M)``; everything else is per positive.
    """

    batch: Tensor  # (P,)
    anchor: Tensor  # (P,)
    gt: Tensor  # (P,) target index in 0..M-1
    label: Tensor  # (P,) int64 class (clamped at 0, as upstream)
    box: Tensor  # (P, 4) target box, xyxy, units of gt_bboxes
    score: Tensor  # (P,) normalised target score t * max(u) / (max(t) + eps)
    align_metric: Tensor  # (P,) t of (gt, anchor); 0 when the pair is not a candidate
    overlap: Tensor  # (P,) u of (gt, anchor); 0 when the pair is not a candidate
    topk_rank: Tensor  # (P,) rank of the anchor in its target's top-k, -1 if it won it otherwise
    rule: Tensor  # (P,) index into RULE_NAMES
    fg_mask: Tensor  # (B, A) bool
    gt_index: Tensor  # (B, A) int64
    pos_align_max: Tensor  # (B, M) max t over the target's positives (0 without positives)
    pos_overlap_max: Tensor  # (B, M) max u over the target's positives
    enlarged: Tensor  # (B, M, 2) bool: width / height raised to stride_val
    topk_tie: Tensor  # (B, M) bool: the top-k set was decided by torch.topk's order of equal values
    topk2_tie: Tensor  # (B, M) bool: likewise for topk2
    candidates: CandidatePairs
    n_conflict_anchors: int  # anchors in the top-k of more than one target
    stride_val: float


class DenseAssignment(NamedTuple):
    """Upstream's return value: ``target_labels (B, A)``, ``target_bboxes (B, A, 4)``,
    ``target_scores (B, A, C)``, ``fg_mask (B, A)``, ``target_gt_idx (B, A)``."""

    target_labels: Tensor
    target_bboxes: Tensor
    target_scores: Tensor
    fg_mask: Tensor
    target_gt_idx: Tensor


def _group_ranks(group: Tensor, value: Tensor, n_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rank of each row inside its group by descending ``value`` (rows grouped or not).

    Returns ``(rank (Q,), sorted_value (Q,), group_start (n_groups,))``; ``sorted_value`` lists
    the values group by group, largest first. Ties are ranked in an arbitrary order: callers
    only use ranks where no tie can matter.
    """
    # one stable sort on (group, -value): non-negative float bits order like the floats
    if value.dtype == torch.float32:
        bits = torch.where(value > 0, value, 0.0).view(torch.int32).long()  # NaN and -0.0 -> 0
        order = torch.sort(group * (1 << 31) + ((1 << 31) - 1 - bits)).indices
    else:
        by_value = torch.sort(torch.where(value > 0, value, 0), descending=True, stable=True).indices
        order = by_value[torch.sort(group[by_value], stable=True).indices]
    counts = torch.bincount(group, minlength=n_groups)
    start = counts.cumsum(0) - counts
    sorted_group = group[order]
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - start[sorted_group]
    return rank, value[order], start


def _topk_per_group(group: Tensor, anchor: Tensor, value: Tensor, n_groups: int, num_anchors: int,
                    k: int) -> tuple[Tensor, Tensor]:
    """Which rows upstream's ``torch.topk(row, k)`` selects, where ``row`` is the dense ``(A,)``
    row of a group: ``value`` at its rows' anchors, 0 elsewhere. Returns ``(rank (Q,) with -1 for
    rows not selected, tie_exact (n_groups,) bool: groups ranked by torch.topk itself)``.

    A group's set is unambiguous when its k-th value beats the next one (the next being 0 beyond
    its rows), or when it has at most k rows and all are > 0 (the zeros topk adds are not rows).
    """
    device = group.device
    if group.numel() == 0:
        return torch.full_like(group, -1), torch.zeros(n_groups, dtype=torch.bool, device=device)
    rank, sorted_value, start = _group_ranks(group, value, n_groups)
    counts = torch.bincount(group, minlength=n_groups)
    positive = torch.bincount(group, weights=(value > 0).to(torch.float64), minlength=n_groups).long()
    has_nan = torch.bincount(group, weights=value.isnan().to(torch.float64), minlength=n_groups) > 0
    many = counts > k
    kth = sorted_value[(start + k - 1).clamp(max=max(group.numel() - 1, 0))]
    after = sorted_value[(start + k).clamp(max=max(group.numel() - 1, 0))]
    clear = torch.where(many, kth > after, positive == counts) & ~has_nan
    if num_anchors <= k:  # topk takes the whole row
        clear = torch.ones_like(clear)
    rank = torch.where(rank < k, rank, -1)
    tied = (~clear & (counts > 0)).nonzero().squeeze(1)
    if tied.numel():
        row_of_group = torch.full((n_groups,), -1, dtype=torch.long, device=device)
        row_of_group[tied] = torch.arange(tied.numel(), device=device)
        on_tied = (row_of_group[group] >= 0).nonzero().squeeze(1)  # rows of tied groups
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // num_anchors)
        for first in range(0, tied.numel(), rows_per_chunk):
            n_rows = min(rows_per_chunk, tied.numel() - first)
            sel = on_tied[(row_of_group[group[on_tied]] >= first) & (row_of_group[group[on_tied]] < first + n_rows)]
            row = row_of_group[group[sel]] - first
            dense = torch.zeros((n_rows, num_anchors), dtype=value.dtype, device=device)
            dense[row, anchor[sel]] = value[sel]
            picked = dense.topk(k, dim=-1).indices  # (n_rows, K): upstream's own tie order
            del dense
            hit = picked[row] == anchor[sel].unsqueeze(1)  # (q, K)
            rank[sel] = torch.where(hit.any(1), hit.int().argmax(1), -1)
    tie_exact = torch.zeros(n_groups, dtype=torch.bool, device=device)
    tie_exact[tied] = True
    return rank, tie_exact


@torch.no_grad()
def assign(predictions: PredictionLookup, anc_points: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
           mask_gt: Tensor, *, num_anchors: int | None = None, topk: int = 13, alpha: float = 1.0,
           beta: float = 6.0, stride: Sequence[float] | Tensor | None = None, eps: float = 1e-9,
           topk2: int | None = None, trace: Trace | None = None) -> Assignment:
    """Task-aligned assignment of ultralytics 8.4.190, sparse over candidate pairs.

    Args:
        predictions: where ``s`` (probabilities) and predicted xyxy pixel boxes come from
            (:class:`~losscore.yolov9.tal.PredictionLookup`; :class:`DensePredictions` wraps tensors).
        anc_points (Tensor[A, 2]): anchor centres in pixels.
        gt_labels (Tensor[B, M, 1]): classes (float, as upstream). gt_bboxes (Tensor[B, M, 4]): xyxy
            pixels, padding rows zero. mask_gt (Tensor[B, M, 1]): non-zero for real targets.
        topk, alpha, beta, eps: upstream's hyper-parameters (the class defaults 13, 1.0, 6.0, 1e-9;
            every loss uses topk 10 (7 one-to-one), alpha 0.5, beta 6.0).
        stride: the model strides; sets ``stride_val`` (None: ``[8, 16, 32]``).
        topk2: second per-target cap after the conflicts (None or equal to ``topk``: none).

    Returns:
        :class:`Assignment`. Raises ``RuntimeError`` when ``topk`` (or ``topk2``) exceeds the
        number of anchors, as ``torch.topk`` does upstream.
    """
    B, M = gt_bboxes.shape[:2]
    A = anc_points.shape[0] if num_anchors is None else num_anchors
    device = gt_bboxes.device
    topk2 = topk2 or topk
    stride_val = stride_value(stride)
    if M == 0:  # upstream returns before assigning anything: every anchor is background
        if trace is not None:
            trace.record("assigner.no_targets", "No targets",
                         "the batch has no target rows: every anchor is background", code=f"{TAL_CODE}.forward")
        return _empty_assignment(B, A, gt_bboxes, stride_val)
    for k in {topk, topk2}:
        if k > A:
            raise RuntimeError(f"selected index k out of range: topk {k} > {A} anchors")
    labels = gt_labels[..., 0].long()  # (B, M)
    is_real = (mask_gt[..., 0] != 0)  # (B, M)

    # 1. candidates: anchor inside the box after the small-object enlargement
    boxes_e, enlarged = enlarge_small_boxes(gt_bboxes, mask_gt, stride_val)
    runs = _anchor_runs(anc_points)
    # upstream calls select_candidates_in_gts with its default eps 1e-9, whatever the assigner's eps
    pair_gt_flat, pair_anchor = candidate_pairs(anc_points, boxes_e.reshape(-1, 4), is_real.reshape(-1), 1e-9, runs)
    pair_batch, pair_gt = pair_gt_flat // M, pair_gt_flat % M  # (Q,)
    pair_box = gt_bboxes[pair_batch, pair_gt]  # (Q, 4) the real boxes, xyxy
    # which candidates the enlargement added: the same four tests against the real box
    pair_x, pair_y = anc_points[pair_anchor, 0], anc_points[pair_anchor, 1]
    in_box = ((pair_x - pair_box[:, 0]) > 1e-9) & ((pair_y - pair_box[:, 1]) > 1e-9) \
        & ((pair_box[:, 2] - pair_x) > 1e-9) & ((pair_box[:, 3] - pair_y) > 1e-9)
    if trace is not None:
        count_in_box = torch.bincount(pair_gt_flat[in_box], minlength=B * M).view(B, M)
        trace.record(
            "assigner.candidates", "Candidate anchors",
            T("only anchors whose centre lies strictly inside a target (every side > eps) can be positive; "
              "first every real target side shorter than stride_val = {stride_val:g} px is raised to "
              "{stride_val:g} px about the box centre, so tiny boxes still get candidates (in_box False: "
              "added by that enlargement)" if stride_val > 0 else
              "only anchors whose centre lies strictly inside a target (every side > eps) can be positive; "
              "stride_val = {stride_val:g}: no side is shorter than that, so no box is enlarged",
              stride_val=stride_val),
            code=f"{TAL_CODE}.select_candidates_in_gts",
            tensors={"gt_box": (gt_bboxes, "B M 4"), "enlarged_box": (boxes_e, "B M 4"),
                     "enlarged": (enlarged, "B M 2"), "in_box_count": (count_in_box, "B M"),
                     "candidate_count": (torch.bincount(pair_gt_flat, minlength=B * M).view(B, M), "B M"),
                     "batch": (pair_batch, "Q"), "gt": (pair_gt, "Q"), "anchor": (pair_anchor, "Q"),
                     "in_box": (in_box, "Q")},
            values={"stride_val": stride_val, "eps": 1e-9})

    # 2. s, u and t for the candidate pairs (upstream's get_box_metrics, same order and shapes)
    pair_label = labels[pair_batch, pair_gt]
    class_score = predictions.scores(pair_batch, pair_anchor, pair_label)  # (Q,)
    pred_boxes = predictions.boxes(pair_batch, pair_anchor)  # (Q, 4)
    overlap = bbox_iou(pair_box, pred_boxes, xywh=False, CIoU=True).squeeze(-1).clamp_(0)
    align_metric = class_score.pow(alpha) * overlap.pow(beta)  # (Q,)
    if trace is not None:
        trace.record(
            "assigner.metrics", "Alignment of each candidate",
            "s = predicted probability of the target's class, u = CIoU(target box, predicted box) "
            "clamped at 0, and the alignment t = s^alpha * u^beta (zero for every non-candidate pair)",
            code=f"{TAL_CODE}.get_box_metrics",
            tensors={"s": (class_score, "Q"), "u": (overlap, "Q"), "t": (align_metric, "Q"),
                     "pred_box": (pred_boxes, "Q 4")},
            values={"alpha": alpha, "beta": beta})

    # 3. top-k per target over its whole (A,) row; non-candidates are 0 and never kept
    rank, tie_exact = _topk_per_group(pair_gt_flat, pair_anchor, align_metric, B * M, A, topk)
    chosen = (rank >= 0).nonzero().squeeze(1)  # (P0,) (b, gt, anchor) order
    candidates = CandidatePairs(pair_batch, pair_gt, pair_anchor, in_box, class_score, overlap, align_metric, rank)
    if trace is not None:
        trace.record(
            "assigner.topk", "Top-k alignment per target",
            T("each real target keeps the {topk} anchors with the largest t among all anchors (non-candidates "
              "count as 0 and are dropped); a high-overlap anchor with a low class score can lose here", topk=topk),
            code=f"{TAL_CODE}.select_topk_candidates",
            tensors={"batch": (pair_batch[chosen], "P"), "gt": (pair_gt[chosen], "P"),
                     "anchor": (pair_anchor[chosen], "P"), "rank": (rank[chosen], "P"),
                     "t": (align_metric[chosen], "P"), "u": (overlap[chosen], "P"),
                     "selected_count": (torch.bincount(pair_gt_flat[chosen], minlength=B * M).view(B, M), "B M"),
                     "tie_exact": (tie_exact.view(B, M), "B M")},
            values={"topk": topk})

    # 4. an anchor in several top-k lists goes to the largest u among its candidate pairs
    cell = pair_batch * A + pair_anchor  # (Q,) flat (image, anchor)
    claims = torch.zeros(B * A, dtype=torch.long, device=device)
    claims.index_add_(0, cell[chosen], torch.ones_like(chosen))
    single = chosen[claims[cell[chosen]] == 1]
    conflict_cell = (claims > 1).nonzero().squeeze(1)  # (F,)
    n_conflict = conflict_cell.numel()
    conflict_of_cell = torch.full((B * A,), -1, dtype=torch.long, device=device)
    conflict_of_cell[conflict_cell] = torch.arange(n_conflict, device=device)
    at_conflict = (conflict_of_cell[cell] >= 0).nonzero().squeeze(1)  # candidate pairs at those anchors
    conflict = conflict_of_cell[cell[at_conflict]]
    rival_u, rival_gt = overlap[at_conflict], pair_gt[at_conflict]
    best_u = overlap.new_zeros(n_conflict).scatter_reduce(0, conflict, rival_u, "amax", include_self=True)
    is_nan = rival_u.isnan()
    nan_here = torch.zeros(n_conflict, dtype=torch.bool, device=device)
    nan_here[conflict[is_nan]] = True
    best = torch.where(nan_here[conflict], is_nan, rival_u == best_u[conflict])
    first_best = torch.full((n_conflict,), M, dtype=torch.long, device=device)
    first_best.scatter_reduce_(0, conflict[best], rival_gt[best], "amin")
    # no positive overlap: upstream's argmax of an all-zero column is target 0
    winner = torch.where(nan_here | (best_u > 0), first_best, 0)
    winner_u = torch.where(nan_here, overlap.new_tensor(float("nan")), best_u)
    won_pair = rival_gt == winner[conflict]
    winner_t = align_metric.new_zeros(n_conflict)
    winner_t[conflict[won_pair]] = align_metric[at_conflict[won_pair]]
    winner_rank = torch.full((n_conflict,), -1, dtype=torch.long, device=device)
    winner_rank[conflict[won_pair]] = rank[at_conflict[won_pair]]
    conflict_batch, conflict_anchor = conflict_cell // A, conflict_cell % A
    if trace is not None:
        claimed = at_conflict[rank[at_conflict] >= 0]
        trace.record(
            "assigner.conflicts", "Anchors claimed by several targets",
            "an anchor in the top-k of more than one target keeps one: the target with the largest u among "
            "the candidate pairs of that anchor (every other target counts 0), lowest index on ties; it need "
            "not have selected the anchor itself, and with all u = 0 the anchor goes to target 0",
            code=f"{TAL_CODE}.select_highest_overlaps",
            tensors={"batch": (conflict_batch, "F"), "anchor": (conflict_anchor, "F"),
                     "claims": (claims[conflict_cell], "F"), "winner": (winner, "F"), "winner_u": (winner_u, "F"),
                     "winner_t": (winner_t, "F"), "winner_selected": (winner_rank >= 0, "F"),
                     "claim_conflict": (conflict_of_cell[cell[claimed]], "C"), "claim_gt": (pair_gt[claimed], "C"),
                     "claim_u": (overlap[claimed], "C"),
                     "rival_conflict": (conflict, "R"), "rival_gt": (rival_gt, "R"), "rival_u": (rival_u, "R")},
            values={"n_conflict_anchors": n_conflict})

    pos_batch = torch.cat((pair_batch[single], conflict_batch))
    pos_anchor = torch.cat((pair_anchor[single], conflict_anchor))
    pos_gt = torch.cat((pair_gt[single], winner))
    pos_t = torch.cat((align_metric[single], winner_t))
    pos_u = torch.cat((overlap[single], winner_u))
    pos_rank = torch.cat((rank[single], winner_rank))
    pos_rule = torch.cat((torch.zeros_like(single), torch.where(winner_rank >= 0, 1, 2)))

    # 5. topk2: each target keeps its topk2 best positives by t (one-to-one branch)
    tie_exact2 = torch.zeros_like(tie_exact)
    if topk2 != topk:
        flat_gt = pos_batch * M + pos_gt
        rank2, tie_exact2 = _topk_per_group(flat_gt, pos_anchor, pos_t, B * M, A, topk2)
        keep = rank2 >= 0
        if trace is not None:
            trace.record(
                "assigner.topk2", "Second cap per target",
                T("after the conflicts each target keeps only its {topk2} positives with the largest t "
                  "(the one-to-one branch: at most one anchor per target)", topk2=topk2),
                code=f"{TAL_CODE}.select_highest_overlaps (topk2)",
                tensors={"batch": (pos_batch, "P"), "anchor": (pos_anchor, "P"), "gt": (pos_gt, "P"),
                         "t": (pos_t, "P"), "rank": (rank2, "P"), "kept": (keep, "P"),
                         "tie_exact": (tie_exact2.view(B, M), "B M")},
                values={"topk2": topk2})
        pos_batch, pos_anchor, pos_gt, pos_t, pos_u, pos_rank, pos_rule = (
            c[keep] for c in (pos_batch, pos_anchor, pos_gt, pos_t, pos_u, pos_rank, pos_rule))

    order = (pos_batch * A + pos_anchor).argsort()  # upstream's (b, anchor) order
    fg_batch, fg_anchor, fg_gt, fg_t, fg_u, fg_rank, fg_rule = (
        c[order] for c in (pos_batch, pos_anchor, pos_gt, pos_t, pos_u, pos_rank, pos_rule))

    # 6. normalise per target: t * max(u) / (max(t) + eps), maxima over the target's positives
    flat_gt = fg_batch * M + fg_gt
    max_t = align_metric.new_zeros(B * M).scatter_reduce(0, flat_gt, fg_t, "amax")
    max_u = overlap.new_zeros(B * M).scatter_reduce(0, flat_gt, fg_u, "amax")
    fg_score = fg_t * max_u[flat_gt] / (max_t[flat_gt] + eps)
    fg_label = labels[fg_batch, fg_gt].clamp(0)
    if trace is not None:
        trace.record(
            "assigner.normalise", "Normalised target scores",
            "each positive's class target is t * max(u) / (max(t) + eps), maxima over its target's "
            "positives: the best-aligned anchor of a target gets that target's best overlap",
            code=f"{TAL_CODE}._forward (normalize)",
            tensors={"max_t": (max_t.view(B, M), "B M"), "max_u": (max_u.view(B, M), "B M"),
                     "batch": (fg_batch, "P"), "anchor": (fg_anchor, "P"), "gt": (fg_gt, "P"),
                     "label": (fg_label, "P"), "t": (fg_t, "P"), "u": (fg_u, "P"), "score": (fg_score, "P"),
                     "rank": (fg_rank, "P"), "rule": (fg_rule, "P")},
            values={"rules": list(RULE_NAMES), "fg_count": int(fg_anchor.numel()), "eps": eps})

    fg_mask = torch.zeros((B, A), dtype=torch.bool, device=device)
    fg_mask[fg_batch, fg_anchor] = True
    gt_index = torch.zeros((B, A), dtype=torch.long, device=device)
    gt_index[fg_batch, fg_anchor] = fg_gt
    return Assignment(fg_batch, fg_anchor, fg_gt, fg_label, gt_bboxes[fg_batch, fg_gt], fg_score, fg_t, fg_u,
                      fg_rank, fg_rule, fg_mask, gt_index, max_t.view(B, M), max_u.view(B, M), enlarged,
                      tie_exact.view(B, M), tie_exact2.view(B, M), candidates, n_conflict, stride_val)


def _empty_assignment(B: int, A: int, gt_bboxes: Tensor, stride_val: float) -> Assignment:
    device, dtype = gt_bboxes.device, gt_bboxes.dtype
    index = torch.zeros(0, dtype=torch.long, device=device)
    value = torch.zeros(0, dtype=dtype, device=device)
    per_gt = torch.zeros(gt_bboxes.shape[:2], dtype=dtype, device=device)
    pairs = CandidatePairs(index, index, index, index.bool(), value, value, value, index)
    return Assignment(index, index, index, index, gt_bboxes.new_zeros((0, 4)), value, value, value, index, index,
                      torch.zeros((B, A), dtype=torch.bool, device=device),
                      torch.zeros((B, A), dtype=torch.long, device=device), per_gt, per_gt.clone(),
                      torch.zeros((*gt_bboxes.shape[:2], 2), dtype=torch.bool, device=device),
                      per_gt.bool(), per_gt.bool(), pairs, 0, stride_val)


def densify(result: Assignment, gt_labels: Tensor, gt_bboxes: Tensor, num_classes: int,
            dtype: torch.dtype) -> DenseAssignment:
    """Upstream's dense targets from an :class:`Assignment`: background anchors carry target 0 of
    their image (label clamped at 0, its box), with zero scores."""
    B, A = result.fg_mask.shape
    M = gt_bboxes.shape[1]
    flat_index = result.gt_index + torch.arange(B, device=gt_bboxes.device).unsqueeze(1) * M  # (B, A)
    target_labels = gt_labels.long().flatten()[flat_index].clamp_(0)  # (B, A)
    if target_labels.numel() and int(target_labels.max()) >= num_classes:  # upstream's one-hot scatter_
        raise RuntimeError(f"index {int(target_labels.max())} is out of bounds for dimension 2 with size {num_classes}")
    target_bboxes = gt_bboxes.reshape(-1, gt_bboxes.shape[-1])[flat_index]  # (B, A, 4)
    target_scores = torch.zeros((B, A, num_classes), dtype=dtype, device=gt_bboxes.device)
    target_scores[result.batch, result.anchor, result.label] = result.score.to(dtype)
    return DenseAssignment(target_labels, target_bboxes, target_scores, result.fg_mask, result.gt_index)


class TaskAlignedAssigner:
    """``TaskAlignedAssigner(topk, num_classes, alpha, beta, stride, eps, topk2)(pd_scores, pd_bboxes,
    anc_points, gt_labels, gt_bboxes, mask_gt)`` -> :class:`DenseAssignment`, as upstream.

    Args (call):
        pd_scores (Tensor[B, A, C]): probabilities. pd_bboxes (Tensor[B, A, 4]): xyxy pixels.
        anc_points (Tensor[A, 2]): pixels. gt_labels (Tensor[B, M, 1]), gt_bboxes (Tensor[B, M, 4])
        xyxy pixels, mask_gt (Tensor[B, M, 1]).

    With no target rows at all (``M == 0``) it returns upstream's early-return values: labels
    filled with ``num_classes`` and ``target_gt_idx`` as float zeros. :meth:`assign` gives the
    per-positive :class:`Assignment`.
    """

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 stride: Sequence[float] | None = None, eps: float = 1e-9, topk2: int | None = None) -> None:
        self.topk, self.num_classes, self.alpha, self.beta, self.eps = topk, num_classes, alpha, beta, eps
        self.topk2 = topk2 or topk
        self.stride = [8, 16, 32] if stride is None else list(stride)
        self.stride_val = stride_value(self.stride)

    def assign(self, predictions: PredictionLookup, anc_points: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
               mask_gt: Tensor, *, num_anchors: int | None = None, trace: Trace | None = None) -> Assignment:
        return assign(predictions, anc_points, gt_labels, gt_bboxes, mask_gt, num_anchors=num_anchors,
                      topk=self.topk, alpha=self.alpha, beta=self.beta, stride=self.stride, eps=self.eps,
                      topk2=self.topk2, trace=trace)

    def __call__(self, pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                 gt_bboxes: Tensor, mask_gt: Tensor, trace: Trace | None = None) -> DenseAssignment:
        if gt_bboxes.shape[1] == 0:  # upstream's early return
            if trace is not None:
                trace.record("assigner.no_targets", "No targets",
                             "the batch has no target rows: every anchor is background, labels are num_classes",
                             code=f"{TAL_CODE}.forward")
            background = pd_scores[..., 0]
            return DenseAssignment(torch.full_like(background, self.num_classes), torch.zeros_like(pd_bboxes),
                                   torch.zeros_like(pd_scores), torch.zeros_like(background, dtype=torch.bool),
                                   torch.zeros_like(background))
        result = self.assign(DensePredictions(pd_scores, pd_bboxes), anc_points, gt_labels, gt_bboxes, mask_gt,
                             num_anchors=pd_scores.shape[1], trace=trace)
        return densify(result, gt_labels, gt_bboxes, self.num_classes, result.score.dtype)
