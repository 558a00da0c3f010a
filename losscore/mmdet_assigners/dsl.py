"""RTMDet's dynamic soft label assignment, as MMDetection 3.3.0 ``DynamicSoftLabelAssigner`` runs it.

For one image (``mmdet/models/task_modules/assigners/dynamic_soft_label_assigner.py``):

1. valid priors: the prior POINT lies strictly inside at least one target (``V`` of the ``N``);
2. a cost for every (valid prior, target) pair, three terms added::

       soft_center_prior = 10 ** (distance / stride - soft_center_radius)
       iou_cost          = -ln(IoU(pred box, target) + 1e-7) * iou_weight
       soft_cls_cost     = sum over all C classes of BCEWithLogits(s_c, t_c) * |t_c - sigmoid(s_c)|**2

   where ``t_c`` is the IoU for the target's class and 0 for every other class (the soft label);
3. dynamic k per target: ``int(sum of the min(topk, V) largest IoUs)``, at least 1;
4. each target takes its ``k`` valid priors of lowest cost (any valid prior, also one outside
   this target); a prior taken by several targets keeps the target of lowest cost among ALL
   targets, which need not be one that took it.

The class term is where upstream spends its time and memory: it builds ``(V, M, C)`` tensors
(the logits repeated per target, the one-hot soft labels, their sigmoid, BCE...) and sums over
``C``. For the ``C - 1`` classes that are not the target's, the term depends on the prior only, so
here it is computed once per prior (``(V, C)``); a pair whose IoU is exactly 0 has exactly that
row, and only pairs with a non-zero IoU get their own row (the prior's row with the target's
class entry replaced) before the sum over ``C``. The rows are the same numbers in the same order
as upstream's, summed by the same reduction, so the costs have upstream's bits.

One detail of PyTorch decides a few of those bits: on CPU, ``torch.sigmoid`` (like ``torch.pow``
and ``torch.log``) computes the bulk of a tensor with SIMD instructions and the last
``numel mod (2 x SIMD width)`` elements of each loop with scalar code, and the two can differ in
the last bit. Upstream's ``(V, M, C)`` sigmoid runs its final few elements (the last target of
the last valid prior) through the scalar path. :func:`_soft_class_cost` puts every element on the
SIMD path and recomputes those final elements the way upstream does; the ``(V, M)`` terms (the
centre prior's ``pow``, the IoU cost's ``log``) run on upstream's own ``(V, M)`` layout. So the
costs are upstream's, bit for bit, on one thread (the setting of the reference vectors). With
several threads every thread's share of a loop ends in such a tail: upstream's costs (and ours,
through the ``(V, M)`` terms) can then change in the last bit with the thread count, and
upstream's ``(V, M, C)`` sigmoid gets scalar elements at the thread boundaries that ours does not
reproduce (on the benchmark scenes at 1 and 3 threads the costs still agreed bit for bit).

Things a learner should know (upstream behaviour, kept):

* the prior point is the cell's top-left corner (RTMDet's ``offset=0``), and "inside" is strict,
  so points on a target's edge are not valid; with no valid prior the early return gives
  ``max_overlaps`` 0.0, not -1e8;
* the centre prior grows tenfold per stride of distance, from ``10**-3`` at the centre with the
  default radius 3; in float32 it overflows to ``inf`` about 41.5 strides away;
* the distance is divided by ``stride_w`` only (``priors[:, 2]``);
* dynamic k is a truncation (``.int()``), so a sum of 5.99 gives 5;
* a prior can be matched to a target that does not contain it, and a target can end with no
  positive after conflicts, even though its dynamic k is at least 1;
* ``max_overlaps`` is float32 whatever the input dtype; with masks upstream uses their centre of
  mass as the target centre (not implemented here: boxes only).

Shapes: ``N`` priors (upstream's ``num_bboxes``), ``M`` targets, ``C`` classes, ``V`` valid
priors (``valid_mask.sum()``), ``K`` the dynamic-k candidates (``min(topk, V)``), ``P``
positives, ``Q`` priors taken by several targets.

Reference: Lyu et al., "RTMDet: An Empirical Study of Designing Real-Time Object Detectors", 2022.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..text import T
from ..trace import Trace
from .overlaps import bbox_overlaps, check_iou_calculator
from .result import INF, AssignResult

__all__ = ["DynamicSoftLabelAssigner", "DSLAssignResult", "DSLDetails", "dsl_assign", "DSL_CODE", "EPS"]

DSL_CODE = "mmdet 3.3.0 mmdet/models/task_modules/assigners/dynamic_soft_label_assigner.py DynamicSoftLabelAssigner"
EPS = 1.0e-7
# A 1-D CPU elementwise op on fewer than at::internal::GRAIN_SIZE (32768) elements runs as one
# serial loop; a multiple of 64 elements has no scalar tail for any SIMD width PyTorch uses.
_SIMD_CHUNK = 32768 - 64
_ROW_CHUNK_ELEMENTS = 1 << 20  # (pairs x C) elements per block of explicit class-cost rows


class DSLDetails(NamedTuple):
    """The intermediate quantities; ``(V, M)`` rows follow ``valid_indices``."""

    valid_indices: Tensor  # (V,) int64 priors whose point is strictly inside some target
    inside: Tensor  # (V, M) bool, point strictly inside that target
    distance: Tensor  # (V, M) centre distance in strides (divided by stride_w)
    soft_center_prior: Tensor  # (V, M) 10 ** (distance - soft_center_radius)
    pairwise_ious: Tensor  # (V, M) IoU of the predicted box with the target
    iou_cost: Tensor  # (V, M) -ln(IoU + 1e-7) * iou_weight
    gt_class_prob: Tensor  # (V, M) sigmoid of the target class's logit
    soft_cls_cost: Tensor  # (V, M) the class term summed over C
    cost_matrix: Tensor  # (V, M) the three terms added
    topk_ious: Tensor  # (K, M) the min(topk, V) largest IoUs of each target, descending
    topk_iou_sum: Tensor  # (M,)
    dynamic_ks: Tensor  # (M,) int32 (upstream's .int()), at least 1
    matching_before_conflict: Tensor  # (V, M) bool, each target's dynamic_k lowest costs
    matched_gt: Tensor  # (V,) int64 0-based target after conflicts, -1 for unmatched rows


class DSLAssignResult(NamedTuple):
    """:class:`~losscore.mmdet_assigners.result.AssignResult` fields plus the details.

    ``details`` is ``None`` on the no-target / no-prior early return; with targets but no valid
    prior it holds empty ``(0, M)`` tensors.
    """

    num_gts: int
    gt_inds: Tensor  # (N,) int64
    max_overlaps: Tensor  # (N,) float32
    labels: Tensor  # (N,) int64
    details: DSLDetails | None

    def assign_result(self) -> AssignResult:
        return AssignResult(self.num_gts, self.gt_inds, self.max_overlaps, self.labels)


def _sigmoid_simd(x: Tensor) -> Tensor:
    """``x.sigmoid()`` with every element on the SIMD path of PyTorch's CPU kernel."""
    if x.device.type != "cpu":
        return x.sigmoid()
    flat = x.reshape(-1)
    n = flat.numel()
    pad = (-n) % 64
    buf = torch.cat([flat, flat.new_zeros(pad)]) if pad else flat.contiguous()
    out = torch.empty_like(buf)
    for start in range(0, buf.numel(), _SIMD_CHUNK):
        torch.sigmoid(buf[start:start + _SIMD_CHUNK], out=out[start:start + _SIMD_CHUNK])
    return out[:n].view(x.shape)


def _class_term(logits: Tensor, soft_label: Tensor, prob: Tensor) -> Tensor:
    """Upstream's element: ``BCEWithLogits(s, t) * |t - sigmoid(s)|**2`` (no reduction)."""
    return F.binary_cross_entropy_with_logits(logits, soft_label, reduction="none") * (soft_label - prob).abs().pow(2.0)


def _soft_class_cost(scores: Tensor, labels: Tensor, ious: Tensor) -> tuple[Tensor, Tensor]:
    """``soft_cls_cost (V, M)`` with upstream's bits, and the target-class probabilities (V, M).

    Args:
        scores (Tensor[V, C]): logits of the valid priors. labels (Tensor[M]): int64 classes.
        ious (Tensor[V, M]): IoU of each valid prior's predicted box with each target.
    """
    V, C = scores.shape
    M = labels.numel()
    labels = labels.long()
    prob = _sigmoid_simd(scores)  # (V, C)
    zero = torch.zeros((V, C), dtype=torch.promote_types(torch.float32, ious.dtype), device=scores.device)
    background = _class_term(scores, zero, prob)  # (V, C): every class with soft label 0
    cost = background.sum(-1)[:, None].expand(V, M).clone()  # (V, M): exact for IoU == 0 pairs
    gt_prob = prob[:, labels]  # (V, M)
    gt_term = _class_term(scores[:, labels], ious, gt_prob)  # (V, M): the target class's entry

    # pairs with a non-zero IoU: the prior's row with the target's class entry replaced
    pair_v, pair_g = (ious != 0).nonzero(as_tuple=True)
    block = max(1, _ROW_CHUNK_ELEMENTS // max(C, 1))
    for start in range(0, pair_v.numel(), block):
        v, g = pair_v[start:start + block], pair_g[start:start + block]
        rows = background[v]  # (p, C)
        rows.scatter_(1, labels[g][:, None], gt_term[v, g][:, None].to(rows.dtype))
        cost[v, g] = rows.sum(-1)

    # upstream's last elements (flat order of its (V, M, C) tensor) took the scalar path
    total = V * M * C
    tail = min(total, 64 + total % 64)
    first_pair = (total - tail) // C
    pair = torch.arange(first_pair, V * M, device=scores.device)
    v, g = pair // M, pair % M
    offset = total - tail - first_pair * C
    row_prob = prob[v].clone()  # (T, C)
    row_prob.view(-1)[offset:] = scores[v].reshape(-1)[offset:].sigmoid()  # one serial loop, like upstream's end
    soft_label = F.one_hot(labels[g], C).to(ious.dtype) * ious[v, g][:, None]
    cost[v, g] = _class_term(scores[v], soft_label, row_prob).sum(-1)
    return cost, gt_prob


@torch.no_grad()
def dsl_assign(priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, *,
               soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0,
               trace: Trace | None = None) -> DSLAssignResult:
    """RTMDet's assignment of one image's priors to its targets (see the module docstring).

    Args:
        priors (Tensor[N, 4]): points ``(x, y, stride_w, stride_h)`` in pixels.
        pred_bboxes (Tensor[N, 4]): decoded predicted boxes, xyxy pixels.
        pred_scores (Tensor[N, C]): class LOGITS (the sigmoid is applied here, as upstream).
        gt_bboxes (Tensor[M, 4]): targets, xyxy pixels. gt_labels (Tensor[M]): int64 classes.
        soft_center_radius, topk, iou_weight: upstream's defaults 3.0, 13, 3.0.
        trace: records the stages listed in the package docstring.

    Returns:
        :class:`DSLAssignResult`.
    """
    M, N = gt_bboxes.size(0), pred_bboxes.size(0)
    device = pred_bboxes.device
    gt_inds = torch.zeros(N, dtype=torch.long, device=device)
    labels = torch.full((N,), -1, dtype=torch.long, device=device)
    if M == 0 or N == 0:
        if trace is not None:
            trace.record("dsl.empty", "Nothing to assign",
                         "no target or no prior: every prior is background (gt_inds 0, labels -1) and "
                         "max_overlaps is 0.0, not the -1e8 of a later negative",
                         code=f"{DSL_CODE}.assign", values={"num_priors": N, "num_gts": M})
        return DSLAssignResult(M, gt_inds, pred_bboxes.new_zeros(N), labels, None)

    # 1. valid priors: the point strictly inside at least one target (min of the 4 sides > 0)
    px, py = priors[:, 0:1], priors[:, 1:2]  # (N, 1)
    inside = (px - gt_bboxes[:, 0]) > 0  # (N, M)
    inside &= (py - gt_bboxes[:, 1]) > 0
    inside &= (gt_bboxes[:, 2] - px) > 0
    inside &= (gt_bboxes[:, 3] - py) > 0
    valid_indices = inside.any(1).nonzero().squeeze(1)  # (V,)
    inside = inside[valid_indices]  # (V, M)
    V = valid_indices.numel()
    if trace is not None:
        trace.record("dsl.valid", "Valid priors",
                     "a prior is a candidate when its point (the top-left corner of its cell) lies "
                     "strictly inside at least one target; every later step looks at these priors only, "
                     "and a valid prior may still be matched to a target that does not contain it",
                     code=f"{DSL_CODE}.assign (valid_mask)",
                     tensors={"prior": (valid_indices, "V"), "inside": (inside, "V M"),
                              "valid_per_gt": (inside.sum(0), "M")},
                     values={"num_priors": N, "num_valid": V, "topk": topk, "iou_weight": iou_weight,
                             "soft_center_radius": soft_center_radius})
    if V == 0:
        if trace is not None:
            trace.record("dsl.empty", "No valid prior",
                         "no prior point lies strictly inside any target: upstream returns early, every "
                         "prior background with max_overlaps 0.0 (not -1e8)",
                         code=f"{DSL_CODE}.assign", values={"num_priors": N, "num_gts": M})
        empty = gt_bboxes.new_zeros((0, M))
        details = DSLDetails(valid_indices, inside, empty, empty, empty, empty, empty, empty, empty,
                             empty, gt_bboxes.new_zeros(M), torch.zeros(M, dtype=torch.int32, device=device),
                             inside, torch.zeros(0, dtype=torch.long, device=device))
        return DSLAssignResult(M, gt_inds, pred_bboxes.new_zeros(N), labels, details)

    # 2a. soft centre prior: 10 ** (distance in strides - radius)
    gt_center = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2.0  # (M, 2)
    valid_prior = priors[valid_indices]  # (V, 4)
    dx = valid_prior[:, 0:1] - gt_center[:, 0]  # (V, M)
    dy = valid_prior[:, 1:2] - gt_center[:, 1]
    # upstream: (p - c).pow(2).sum(-1).sqrt(); a two-term sum is the one rounding of dx² + dy²
    distance = (dx * dx + dy * dy).sqrt() / valid_prior[:, 2:3]  # (V, M)
    soft_center_prior = torch.pow(10, distance - soft_center_radius)  # (V, M) same layout as upstream
    if trace is not None:
        trace.record("dsl.centre_prior", "Soft centre prior",
                     T("cost 10^(d - {soft_center_radius:g}) with d the distance from the prior point to the "
                       "target centre in strides (divided by stride_w): 0.001 at the centre with radius 3, "
                       "x10 per stride; it overflows to inf in float32 about 41.5 strides away",
                       soft_center_radius=soft_center_radius),
                     code=f"{DSL_CODE}.assign (soft_center_prior)",
                     tensors={"distance": (distance, "V M"), "soft_center_prior": (soft_center_prior, "V M")},
                     values={"soft_center_radius": soft_center_radius,
                             "num_inf": int(soft_center_prior.isinf().sum())})

    # 2b. IoU cost of the predicted boxes
    pairwise_ious = bbox_overlaps(pred_bboxes[valid_indices], gt_bboxes)  # (V, M)
    iou_cost = -torch.log(pairwise_ious + EPS) * iou_weight
    if trace is not None:
        trace.record("dsl.iou_cost", "IoU cost",
                     T("-ln(IoU + 1e-7) * {iou_weight:g} of each valid prior's predicted box with each target: "
                       "0 for a perfect box, {no_overlap:.2f} for no overlap", iou_weight=iou_weight,
                       no_overlap=-math.log(EPS) * iou_weight),
                     code=f"{DSL_CODE}.assign (iou_cost)",
                     tensors={"iou": (pairwise_ious, "V M"), "iou_cost": (iou_cost, "V M")},
                     values={"iou_weight": iou_weight, "eps": EPS})

    # 2c. soft-label class cost, summed over all C classes
    soft_cls_cost, gt_prob = _soft_class_cost(pred_scores[valid_indices], gt_labels, pairwise_ious)
    cost_matrix = soft_cls_cost + iou_cost + soft_center_prior  # (V, M)
    if trace is not None:
        trace.record("dsl.class_cost", "Soft-label class cost",
                     "sum over all classes of BCE(logit, soft label) * |soft label - p|^2, the soft label "
                     "being the IoU for the target's class and 0 for the others (a quality focal term): "
                     "confident wrong classes and a probability far from the IoU both cost",
                     code=f"{DSL_CODE}.assign (soft_cls_cost)",
                     tensors={"gt_class_prob": (gt_prob, "V M"), "soft_cls_cost": (soft_cls_cost, "V M")},
                     values={"num_classes": pred_scores.shape[-1]})
        trace.record("dsl.cost", "Total cost", "cost = class cost + IoU cost + soft centre prior",
                     code=f"{DSL_CODE}.assign (cost_matrix)", tensors={"cost": (cost_matrix, "V M")})

    # 3. dynamic k from the top IoUs of each target
    candidate_topk = min(topk, V)
    topk_ious, _ = torch.topk(pairwise_ious, candidate_topk, dim=0)  # (K, M)
    topk_iou_sum = topk_ious.sum(0)  # (M,)
    dynamic_ks = torch.clamp(topk_iou_sum.int(), min=1)  # (M,) int32
    if trace is not None:
        trace.record("dsl.dynamic_k", "Dynamic k",
                     T("k = int(sum of the {candidate_topk} largest IoUs of the target over ALL valid priors), "
                       "truncated, at least 1: well-predicted targets get more positives", candidate_topk=candidate_topk),
                     code=f"{DSL_CODE}.dynamic_k_matching",
                     tensors={"topk_ious": (topk_ious, "K M"), "topk_iou_sum": (topk_iou_sum, "M"),
                              "dynamic_k": (dynamic_ks, "M")},
                     values={"topk": topk, "candidate_topk": candidate_topk})

    # 4. each target takes its dynamic_k lowest costs
    matching_before_conflict = _lowest_costs(cost_matrix, dynamic_ks)  # (V, M) bool
    selected = matching_before_conflict.clone()
    if trace is not None:
        trace.record("dsl.matching", "Lowest-cost priors per target",
                     "each target takes the dynamic_k valid priors of lowest cost, among all valid priors",
                     code=f"{DSL_CODE}.dynamic_k_matching (topk of cost)",
                     tensors={"selected": (selected, "V M"), "selected_per_gt": (selected.sum(0), "M")})

    # 5. a prior taken by several targets keeps the lowest cost over ALL targets
    shared = selected.sum(1) > 1  # (V,)
    shared_rows = shared.nonzero().squeeze(1)  # (Q,)
    if shared_rows.numel():
        _, cost_argmin = torch.min(cost_matrix[shared, :], dim=1)  # (Q,)
        selected[shared, :] = False
        selected[shared_rows, cost_argmin] = True
        if trace is not None:
            trace.record("dsl.conflicts", "Priors taken by several targets",
                         "such a prior keeps the target of lowest cost among ALL targets (first index on "
                         "a tie); that target need not be one that took it",
                         code=f"{DSL_CODE}.dynamic_k_matching (prior_match_gt_mask)",
                         tensors={"row": (shared_rows, "Q"), "prior": (valid_indices[shared_rows], "Q"),
                                  "taken_by": (matching_before_conflict[shared_rows], "Q M"),
                                  "winner": (cost_argmin, "Q"),
                                  "winner_cost": (cost_matrix[shared_rows, cost_argmin], "Q"),
                                  "winner_took_it": (matching_before_conflict[shared_rows, cost_argmin], "Q")})
    elif trace is not None:
        trace.record("dsl.conflicts", "Priors taken by several targets",
                     "no prior is taken by more than one target, nothing to resolve",
                     code=f"{DSL_CODE}.dynamic_k_matching (prior_match_gt_mask)")

    matched = selected.any(1)  # (V,)
    rows = matched.nonzero().squeeze(1)  # (P,)
    matched_gt_of_row = selected[rows].to(torch.uint8).argmax(1)  # (P,)
    matched_gt = torch.full((V,), -1, dtype=torch.long, device=device)
    matched_gt[rows] = matched_gt_of_row
    pos = valid_indices[rows]
    gt_inds[pos] = matched_gt_of_row + 1
    labels[pos] = gt_labels[matched_gt_of_row].long()
    max_overlaps = torch.full((N,), -INF, dtype=torch.float32, device=device)
    max_overlaps[pos] = pairwise_ious[rows, matched_gt_of_row].to(torch.float32)
    if trace is not None:
        per_gt = torch.bincount(matched_gt_of_row, minlength=M)
        trace.record("dsl.result", "Assignment",
                     "gt_inds = 1-based target of each matched prior, 0 elsewhere; max_overlaps = the IoU "
                     "of its predicted box with that target, -1e8 elsewhere; labels = the target's class",
                     code=f"{DSL_CODE}.assign",
                     tensors={"prior": (pos, "P"), "gt": (matched_gt_of_row, "P"),
                              "iou": (max_overlaps[pos], "P"), "label": (labels[pos], "P"),
                              "inside_own_gt": (inside[rows, matched_gt_of_row], "P"),
                              "positives_per_gt": (per_gt, "M")},
                     values={"num_pos": int(pos.numel()), "gts_without_positives": (per_gt == 0).nonzero()
                             .squeeze(1).tolist()})
    details = DSLDetails(valid_indices, inside, distance, soft_center_prior, pairwise_ious, iou_cost, gt_prob,
                         soft_cls_cost, cost_matrix, topk_ious, topk_iou_sum, dynamic_ks,
                         matching_before_conflict, matched_gt)
    return DSLAssignResult(M, gt_inds, max_overlaps, labels, details)


def _lowest_costs(cost: Tensor, ks: Tensor) -> Tensor:
    """``(V, M)`` bool: for each column ``g``, the rows of its ``ks[g]`` lowest costs.

    Upstream calls ``torch.topk(cost[:, g], ks[g], largest=False)`` once per target. One batched
    top-k gives the same set wherever the ``k``-th lowest cost is strictly below the ``k+1``-th;
    a column with a tie (or NaN) at that boundary gets upstream's own per-column call, so which
    of the tied rows is taken is decided exactly as upstream decides it.
    """
    V, M = cost.shape
    k = ks.long()  # (M,)
    kk = min(int(k.max()) + 1, V)
    values, rows = cost.topk(kk, dim=0, largest=False)  # (kk, M), ascending
    kth = values.gather(0, (k - 1)[None])[0]  # (M,)
    after = values.gather(0, k.clamp(max=kk - 1)[None])[0]
    clean = (k == V) | (kth < after)
    rank_ok = torch.arange(kk, device=cost.device)[:, None] < k[None, :]  # (kk, M)
    selected = torch.zeros((V, M), dtype=torch.bool, device=cost.device)
    selected.scatter_(0, rows, rank_ok & clean[None, :])
    for g in (~clean).nonzero().squeeze(1).tolist():
        _, pos_idx = torch.topk(cost[:, g], k=int(k[g]), largest=False)
        selected[pos_idx, g] = True
    return selected


class DynamicSoftLabelAssigner:
    """``DynamicSoftLabelAssigner(soft_center_radius=3.0, topk=13, iou_weight=3.0)``.

    ``assign`` takes the tensors upstream reads from its ``InstanceData`` arguments (``priors``,
    ``bboxes``, ``scores``; the targets' ``bboxes`` and ``labels``) and returns an
    :class:`~losscore.mmdet_assigners.result.AssignResult`; :func:`dsl_assign` also gives the
    cost terms.
    """

    def __init__(self, soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0,
                 iou_calculator: dict | None = None) -> None:
        check_iou_calculator(iou_calculator)
        self.soft_center_radius, self.topk, self.iou_weight = soft_center_radius, topk, iou_weight

    def assign(self, priors: Tensor, pred_bboxes: Tensor, pred_scores: Tensor, gt_bboxes: Tensor,
               gt_labels: Tensor, *, trace: Trace | None = None) -> AssignResult:
        return dsl_assign(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels,
                          soft_center_radius=self.soft_center_radius, topk=self.topk,
                          iou_weight=self.iou_weight, trace=trace).assign_result()
