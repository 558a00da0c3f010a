"""DETR's Hungarian matching (``models/matcher.py`` ``HungarianMatcher``).

For each image, every ground-truth box gets exactly one query, chosen to minimise the summed cost
``C = w_bbox * L1 + w_class * (-p[label]) + w_giou * (-GIoU)`` over a one-to-one assignment solved
by SciPy's ``linear_sum_assignment`` (the solver upstream calls). Queries left over are
"no object".

Upstream computes the costs of every query of the batch against every target of the batch (a
``(B*Q, N)`` matrix) and then keeps each image's own ``(Q, T_b)`` block. Here the cost is
computed per image directly, as one batched ``(B, Q, M)`` tensor (``M`` = the most targets any
image has; the columns ``>= T_b`` of image ``b`` are padding and never read). Each entry is the
same float expression of the same inputs, so every cost and every matching equals upstream's bit
for bit while the work and memory shrink by a factor ``B``.

Reference: Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020, sec. 3.1.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..text import T
from ..trace import Trace
from .box_ops import _giou_terms, box_cxcywh_to_xyxy, check_boxes

__all__ = ["HungarianMatcher", "Match", "MatchCost", "ImageCost", "Matching", "matching_cost",
           "hungarian_match"]

MATCHER_CODE = "models/matcher.py HungarianMatcher.forward"

Target = Mapping[str, Tensor]  # {"labels": int64 (T_b,), "boxes": float (T_b, 4) cxcywh}


class Match(NamedTuple):
    """One image's matching: ``target_idx[k]`` is the target given to query ``query_idx[k]``.

    Both int64 ``(min(Q, T_b),)``; ``query_idx`` ascending (the solver's row order), as upstream's
    ``(index_i, index_j)`` pair.
    """

    query_idx: Tensor
    target_idx: Tensor


class ImageCost(NamedTuple):
    """One image's cost block, each ``(Q, T_b)``: rows are queries, columns its targets in order."""

    C: Tensor  # the weighted sum that is minimised
    cost_class: Tensor  # -softmax(logits)[label] (no-object column inside the softmax)
    cost_bbox: Tensor  # L1 distance of (cx, cy, w, h), summed over the 4 coordinates
    cost_giou: Tensor  # -GIoU of the xyxy boxes


class MatchCost(NamedTuple):
    """The cost tensors of a batch, each ``(B, Q, M)`` with ``M = max(sizes)``.

    Column ``t`` of image ``b`` is its target ``t`` for ``t < sizes[b]``; later columns are
    padding (never read). :meth:`block` gives one image's ``(Q, T_b)`` blocks.
    """

    C: Tensor
    cost_class: Tensor
    cost_bbox: Tensor
    cost_giou: Tensor
    sizes: tuple[int, ...]  # T_b per image

    def block(self, b: int) -> ImageCost:
        t = self.sizes[b]
        return ImageCost(self.C[b, :, :t], self.cost_class[b, :, :t], self.cost_bbox[b, :, :t],
                         self.cost_giou[b, :, :t])


class Matching(NamedTuple):
    """:func:`hungarian_match`'s result: one :class:`Match` per image, and the costs."""

    indices: list[Match]
    cost: MatchCost


def _padded_targets(targets: Sequence[Target], device: torch.device, dtype: torch.dtype,
                    sizes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Labels ``(B, M)`` and cxcywh boxes ``(B, M, 4)``; padding is label 0, box 0 (never read)."""
    if len(targets) == 1:
        return targets[0]["labels"][None].long(), targets[0]["boxes"][None]
    B, M = len(targets), max(sizes)
    labels = torch.zeros((B, M), dtype=torch.int64, device=device)
    boxes = torch.zeros((B, M, 4), dtype=dtype, device=device)
    for b, (target, size) in enumerate(zip(targets, sizes)):
        if size:
            labels[b, :size] = target["labels"]
            boxes[b, :size] = target["boxes"]
    return labels, boxes


def _side_by_side(cost: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """(B, Q, M) padded blocks -> (Q, N): image b's block in the columns of its own targets."""
    return torch.cat([cost[b, :, :t] for b, t in enumerate(sizes)], dim=1)


@torch.no_grad()
def matching_cost(pred_logits: Tensor, pred_boxes: Tensor, targets: Sequence[Target], *,
                  cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                  trace: Trace | None = None, phase: str = "match") -> MatchCost:
    """The matching costs of every query against each target of its own image.

    Args:
        pred_logits (Tensor[B, Q, C + 1]): class logits; the last column is "no object".
        pred_boxes (Tensor[B, Q, 4]): ``(cx, cy, w, h)`` after the head's sigmoid (used as given).
        targets: ``B`` dicts ``{"labels": int64 (T_b,), "boxes": (T_b, 4) cxcywh}``.
        cost_class, cost_bbox, cost_giou: the weights (``main.py`` trains with 1, 5, 2; the class's
            own defaults are 1, 1, 1). A weight of 0 multiplies its term by 0 (NaN stays NaN).
        trace: records ``<phase>.cost_class``, ``.cost_bbox``, ``.cost_giou``, ``.cost_total``.

    Returns:
        :class:`MatchCost`: ``C = cost_bbox * L1 + cost_class * (-p) + cost_giou * (-GIoU)``,
        evaluated in that order in the input dtype, and the three unweighted parts.

    Raises:
        AssertionError: a predicted box (of any image, even one without targets) or a target box
            has ``x2 < x1`` or ``y2 < y1`` after conversion, or a NaN coordinate (upstream's
            ``generalized_box_iou`` check).
    """
    B, Q, _ = pred_logits.shape
    sizes = tuple(len(t["boxes"]) for t in targets)
    labels, boxes = _padded_targets(targets, pred_boxes.device, pred_boxes.dtype, sizes)  # (B, M), (B, M, 4)
    M = labels.shape[1]

    prob = pred_logits.softmax(-1)  # (B, Q, C + 1), over every column including no-object
    neg_prob = -prob.gather(2, labels[:, None, :].expand(B, Q, M))  # (B, Q, M)
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "cost_class", "Class cost",
                "cost_class[q, t] = -softmax(logits_q)[label_t]: the softmax runs over all C + 1 "
                "columns, no-object included, and the cost is minus the probability (not 1 - p, not "
                "a log; upstream's comment says 1 - p, and the constant 1 does not change the matching)",
                code=f"{MATCHER_CODE} (cost_class)",
                tensors={"cost_class": (_side_by_side(neg_prob, sizes), "Q N"),
                         "target_image": (torch.repeat_interleave(torch.arange(B), torch.tensor(sizes)), "N"),
                         "target_label": (torch.cat([t["labels"] for t in targets]), "N"),
                         "no_object_prob": (prob[..., -1], "B Q")},
                values={"weight": cost_class, "num_columns": pred_logits.shape[-1], "sizes": list(sizes)})
    del prob

    l1 = torch.cdist(pred_boxes, boxes, p=1)  # (B, Q, M), the op upstream calls
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "cost_bbox", "L1 box cost",
                "cost_bbox[q, t] = |cx_q - cx_t| + |cy_q - cy_t| + |w_q - w_t| + |h_q - h_t| on the "
                "normalised (cx, cy, w, h) boxes: summed over the 4 coordinates, not averaged",
                code=f"{MATCHER_CODE} (torch.cdist p=1)",
                tensors={"cost_bbox": (_side_by_side(l1, sizes), "Q N")},
                values={"weight": cost_bbox})

    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes)  # (B, Q, 4)
    target_xyxy = box_cxcywh_to_xyxy(boxes)  # (B, M, 4)
    check_boxes(pred_xyxy)  # every query of the batch, as upstream's batch-wide call
    check_boxes(target_xyxy)  # padding (0, 0, 0, 0) passes
    terms = _giou_terms(pred_xyxy[:, :, None, :], target_xyxy[:, None, :, :], keep_terms=trace is not None)
    neg_giou = -terms.giou  # (B, Q, M)
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "cost_giou", "GIoU box cost",
                "cost_giou[q, t] = -GIoU(xyxy_q, xyxy_t) with giou = iou - (enclose - union) / enclose; "
                "no epsilon, so a NaN (two degenerate boxes) would make the solver reject the matrix",
                code=f"{MATCHER_CODE} (cost_giou), util/box_ops.py generalized_box_iou",
                tensors={"cost_giou": (_side_by_side(neg_giou, sizes), "Q N"),
                         "iou": (_side_by_side(terms.iou, sizes), "Q N")},
                values={"weight": cost_giou})
    del terms, pred_xyxy, target_xyxy

    C = cost_bbox * l1
    C += cost_class * neg_prob
    C += cost_giou * neg_giou
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "cost_total", "Weighted cost",
                T("C = {cost_bbox} * cost_bbox + {cost_class} * cost_class + {cost_giou} * cost_giou, "
                  "per image over its own targets (upstream computes every query against every target "
                  "of the batch and keeps the diagonal blocks; the other entries never matter)",
                  cost_bbox=cost_bbox, cost_class=cost_class, cost_giou=cost_giou),
                code=f"{MATCHER_CODE} (C)",
                tensors={"C": (_side_by_side(C, sizes), "Q N")},
                values={"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou})
    return MatchCost(C, neg_prob, l1, neg_giou, sizes)


def _solve(cost: MatchCost, device: torch.device) -> list[Match]:
    """``linear_sum_assignment`` on each image's block; one device->host copy for the batch."""
    C = cost.C if cost.C.device.type == "cpu" else cost.C.cpu()
    C = C.numpy()
    solved = [linear_sum_assignment(C[b, :, :t]) for b, t in enumerate(cost.sizes)]
    if device.type == "cpu":
        return [Match(torch.from_numpy(rows), torch.from_numpy(cols)) for rows, cols in solved]
    counts = [len(rows) for rows, _ in solved]
    flat = torch.from_numpy(np.concatenate([np.concatenate([rows, cols]) for rows, cols in solved])
                            .astype(np.int64, copy=False)).to(device)  # one host->device copy
    out, start = [], 0
    for n in counts:
        out.append(Match(flat[start:start + n], flat[start + n:start + 2 * n]))
        start += 2 * n
    return out


def hungarian_match(pred_logits: Tensor, pred_boxes: Tensor, targets: Sequence[Target], *,
                    cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                    trace: Trace | None = None, phase: str = "match") -> Matching:
    """One-to-one matching of queries to each image's targets (Hungarian algorithm).

    Args:
        pred_logits (Tensor[B, Q, C + 1]), pred_boxes (Tensor[B, Q, 4]), targets: as
            :func:`matching_cost`.
        cost_class, cost_bbox, cost_giou: the cost weights.
        trace: records the cost stages (see :func:`matching_cost`) and ``<phase>.assignment``.
        phase: the stage names' phase (``SetCriterion`` uses ``match_aux<i>`` for aux layer ``i``).

    Returns:
        :class:`Matching`: per image a :class:`Match` of ``min(Q, T_b)`` pairs (an image without
        targets gives two empty int64 tensors; a batch without targets is not an error), on the
        inputs' device, and the :class:`MatchCost`.

    Raises:
        AssertionError: a degenerate box (see :func:`matching_cost`).
        ValueError: from ``linear_sum_assignment`` when an image's block holds NaN (or is
            infeasible), as upstream.
    """
    cost = matching_cost(pred_logits, pred_boxes, targets, cost_class=cost_class, cost_bbox=cost_bbox,
                         cost_giou=cost_giou, trace=trace, phase=phase)
    indices = _solve(cost, pred_logits.device)
    if trace is not None:
        _record_assignment(trace, phase, cost, indices, pred_boxes, targets)
    return Matching(indices, cost)


def _record_assignment(trace: Trace, phase: str, cost: MatchCost, indices: list[Match], pred_boxes: Tensor,
                       targets: Sequence[Target]) -> None:
    image = torch.cat([torch.full_like(m.query_idx, b) for b, m in enumerate(indices)])
    query = torch.cat([m.query_idx for m in indices])
    target = torch.cat([m.target_idx for m in indices])
    pair = (image, query, target)
    target_boxes = torch.cat([t["boxes"][m.target_idx] for t, m in zip(targets, indices)])
    l1_parts = (pred_boxes[image, query] - target_boxes).abs()  # cost_bbox's four summands
    totals = [float(cost.C[b, m.query_idx, m.target_idx].double().sum()) for b, m in enumerate(indices)]
    with trace.scope(phase):
        trace.record(
            "assignment", "Hungarian assignment",
            "per image, scipy's linear_sum_assignment picks the one-to-one pairing of queries and "
            "targets with the least total C; every target gets one query, the other queries are "
            "'no object'. Queries come out ascending (the solver's row order)",
            code=f"{MATCHER_CODE} (linear_sum_assignment)",
            tensors={"image": (image, "P"), "query": (query, "P"), "target": (target, "P"),
                     "C": (cost.C[pair], "P"), "cost_class": (cost.cost_class[pair], "P"),
                     "cost_bbox": (cost.cost_bbox[pair], "P"), "cost_giou": (cost.cost_giou[pair], "P"),
                     "l1_parts": (l1_parts, "P 4")},
            values={"total_cost": totals, "sizes": list(cost.sizes), "num_queries": cost.C.shape[1]})


class HungarianMatcher:
    """``HungarianMatcher(cost_class=1, cost_bbox=1, cost_giou=1)(outputs, targets)``.

    ``outputs`` is ``{"pred_logits": (B, Q, C + 1), "pred_boxes": (B, Q, 4)}`` (other keys, such
    as ``aux_outputs``, are ignored), ``targets`` a list of ``B`` dicts with ``labels`` and
    ``boxes``. Calling it returns upstream's list of ``(query_idx, target_idx)`` pairs (as
    :class:`Match`); :meth:`match` also returns the costs.

    Raises:
        AssertionError: at construction, when all three weights are 0 (upstream's message).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1) -> None:
        if not (cost_class != 0 or cost_bbox != 0 or cost_giou != 0):
            raise AssertionError("all costs cant be 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def __repr__(self) -> str:
        return (f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
                f"cost_giou={self.cost_giou})")

    def match(self, outputs: Mapping[str, Any], targets: Sequence[Target], *, trace: Trace | None = None,
              phase: str = "match") -> Matching:
        return hungarian_match(outputs["pred_logits"], outputs["pred_boxes"], targets,
                               cost_class=self.cost_class, cost_bbox=self.cost_bbox, cost_giou=self.cost_giou,
                               trace=trace, phase=phase)

    def __call__(self, outputs: Mapping[str, Any], targets: Sequence[Target], *, trace: Trace | None = None,
                 phase: str = "match") -> list[Match]:
        return self.match(outputs, targets, trace=trace, phase=phase).indices
