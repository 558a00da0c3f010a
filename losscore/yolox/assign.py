"""SimOTA label assignment as YOLOX's ``YOLOXHead`` runs it, in two upstream versions.

Upstream: Megvii-BaseDetection/YOLOX ``yolox/models/yolo_head.py`` and ``yolox/utils/boxes.py``,

* ``version="0.3.0"``: the PyPI release (git tag ``0.3.0``): ``get_in_boxes_info`` +
  ``dynamic_k_matching``;
* ``version="main"``: GitHub ``main`` at 6ddff482: ``get_geometry_constraint`` +
  ``simota_matching`` (PR #1589).

The two differ only in the candidate rule and the cost penalty (:data:`VERSIONS`):

=================  ===============================================  ==============================
                   0.3.0                                            main
=================  ===============================================  ==============================
centre radius      2.5 strides                                      1.5 strides
candidate anchors  centre in *any* box **or** any centre region      in any centre region
no penalty when    in *this* target's box **and** its centre region  in this target's centre region
penalty            ``+ 100000.0``                                   ``+ 1e6``
=================  ===============================================  ==============================

Steps, per image (names follow upstream):

1. geometry: anchor centres ``((x + 0.5) * s, (y + 0.5) * s)`` against the boxes and the squares
   of half-side ``radius * s`` around the box centres; every test is strict (``> 0``).
2. cost on the candidates: ``BCE(sqrt(sigmoid(cls) * sigmoid(obj)), one_hot(class))`` summed
   over the classes, ``+ 3 * -log(IoU + 1e-8)``, ``+ penalty`` where the pair is not in the
   geometry relation.
3. dynamic k: ``max(1, int(sum of the 10 largest IoUs of the target))``.
4. each target takes its k cheapest candidates; an anchor taken by several targets goes to the
   argmin of its cost column over *all* targets (possibly one that did not take it).

Upstream builds a ``[N, Ac, C]`` tensor (targets x candidates x classes) for the class cost.
Here the class cost is built per *distinct class* of the image, in chunks: the rows of two targets
of the same class are the same numbers, and every row is still the ``.sum(-1)`` of the same
``binary_cross_entropy`` elements, so the cost matrix carries upstream's bits while the memory no
longer grows with ``N * C``. The matching then runs upstream's own ``torch.topk`` / ``torch.min``
calls on the same rows and columns, so even exact ties resolve as upstream resolves them on CPU.

Shapes: ``A`` anchors of all levels (upstream ``total_num_anchors``), ``N`` targets of the image
(upstream ``num_gt``), ``Ac`` candidate anchors (upstream ``num_in_boxes_anchor``), ``C``
classes, ``K`` the top-k of the dynamic k (10), ``P`` positives (upstream ``num_fg``), ``Q``
recorded (target, anchor) pairs. Boxes are ``(cx, cy, w, h)`` in input pixels.

Reference: Ge et al., "YOLOX: Exceeding YOLO Series in 2021", arXiv:2107.08430 (SimOTA);
Ge et al., "OTA: Optimal Transport Assignment for Object Detection", CVPR 2021.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..text import T, Text
from ..trace import Trace

__all__ = [
    "VERSIONS",
    "SimOTAVersion",
    "RULE_NAMES",
    "bboxes_iou",
    "Geometry",
    "geometry_constraint",
    "class_cost",
    "Matching",
    "simota_matching",
    "Assignment",
    "get_assignments",
]

HEAD_CODE = "yolox/models/yolo_head.py YOLOXHead"
RULE_NAMES = ("selected", "selected, won a conflict", "won a conflict it did not select")
# elements of one [classes-chunk, Ac, C] block of the class cost (32 MiB of float32)
_CLASS_COST_CHUNK = 1 << 23


class SimOTAVersion(NamedTuple):
    """The hard-coded numbers and names of one upstream version."""

    name: str
    center_radius: float
    box_test: bool  # 0.3.0: candidates also by box; the relation needs box AND centre
    penalty: float
    geometry_code: str
    matching_code: str


VERSIONS: dict[str, SimOTAVersion] = {
    "0.3.0": SimOTAVersion("0.3.0", 2.5, True, 100000.0, f"{HEAD_CODE}.get_in_boxes_info",
                           f"{HEAD_CODE}.dynamic_k_matching"),
    "main": SimOTAVersion("main", 1.5, False, 1e6, f"{HEAD_CODE}.get_geometry_constraint",
                          f"{HEAD_CODE}.simota_matching"),
}


def _version(version: str) -> SimOTAVersion:
    if version not in VERSIONS:
        raise ValueError(f"version: expected one of {sorted(VERSIONS)}, got {version!r}")
    return VERSIONS[version]


# -- IoU --------------------------------------------------------------------------------------
def _pairwise_terms(bboxes_a: Tensor, bboxes_b: Tensor, xyxy: bool):
    if bboxes_a.shape[1] != 4 or bboxes_b.shape[1] != 4:
        raise IndexError(f"bboxes_iou: boxes need 4 columns, got {tuple(bboxes_a.shape)} and "
                         f"{tuple(bboxes_b.shape)} (upstream raises IndexError)")
    if xyxy:
        top_left = torch.max(bboxes_a[:, None, :2], bboxes_b[:, :2])  # (n, m, 2)
        bottom_right = torch.min(bboxes_a[:, None, 2:], bboxes_b[:, 2:])
        size_a = bboxes_a[:, 2:] - bboxes_a[:, :2]  # (n, 2)
        size_b = bboxes_b[:, 2:] - bboxes_b[:, :2]
    else:
        top_left = torch.max(bboxes_a[:, None, :2] - bboxes_a[:, None, 2:] / 2,
                             bboxes_b[:, :2] - bboxes_b[:, 2:] / 2)
        bottom_right = torch.min(bboxes_a[:, None, :2] + bboxes_a[:, None, 2:] / 2,
                                 bboxes_b[:, :2] + bboxes_b[:, 2:] / 2)
        size_a, size_b = bboxes_a[:, 2:], bboxes_b[:, 2:]
    area_a = size_a[:, 0] * size_a[:, 1]  # (n,)
    area_b = size_b[:, 0] * size_b[:, 1]  # (m,)
    overlap = top_left < bottom_right  # (n, m, 2): strict, so touching boxes do not overlap
    overlaps = overlap[..., 0].to(top_left.dtype) * overlap[..., 1].to(top_left.dtype)  # (n, m)
    inter_wh = bottom_right - top_left
    area_i = inter_wh[..., 0] * inter_wh[..., 1] * overlaps  # (n, m); a negative product * 0 is -0.0
    union = area_a[:, None] + area_b - area_i
    return top_left, bottom_right, area_i, union


def bboxes_iou(bboxes_a: Tensor, bboxes_b: Tensor, xyxy: bool = True, *,
               trace: Trace | None = None) -> Tensor:
    """IoU of every box of ``bboxes_a`` against every box of ``bboxes_b`` (``yolox.utils.bboxes_iou``).

    Args:
        bboxes_a (Tensor[n, 4]), bboxes_b (Tensor[m, 4]): ``(x1, y1, x2, y2)`` when ``xyxy`` else
            ``(cx, cy, w, h)``. SimOTA calls it with ``xyxy=False``.
        trace: records ``iou.pairwise`` (intersection, union, IoU).

    Returns:
        Tensor[n, m]. The overlap counts only where ``top_left < bottom_right`` in both axes
        (touching boxes give 0, possibly ``-0.0``); the union has no eps, so two zero-area boxes
        give NaN. Raises ``IndexError`` unless both inputs have 4 columns, as upstream.
    """
    top_left, bottom_right, area_i, union = _pairwise_terms(bboxes_a, bboxes_b, xyxy)
    iou = area_i / union
    if trace is not None:
        trace.record(
            "iou.pairwise", "Pairwise IoU",
            "intersection counted only where top-left < bottom-right holds strictly in both axes; "
            "IoU = intersection / (area_a + area_b - intersection), with no eps (0/0 gives NaN)",
            code="yolox/utils/boxes.py bboxes_iou",
            tensors={"area_i": (area_i, "n m"), "union": (union, "n m"), "iou": (iou, "n m")},
            values={"xyxy": bool(xyxy)})
    return iou


# -- step 1: geometry ---------------------------------------------------------------------------
class Geometry(NamedTuple):
    """Which anchors are candidates, and which (target, candidate) pairs escape the penalty.

    0.3.0 calls these ``is_in_boxes_anchor`` and ``is_in_boxes_and_center``; main calls them
    ``anchor_filter`` and ``geometry_relation``.
    """

    anchor_filter: Tensor  # (A,) bool
    relation: Tensor  # (N, Ac) bool, columns in anchor order


class _GeometryParts(NamedTuple):
    anchor_filter: Tensor  # (A,) bool
    relation: Tensor  # (N, Ac) bool
    in_centre: Tensor  # (N, A) bool
    in_box: Tensor | None  # (N, A) bool (0.3.0 only)


def _anchor_centres(x_shifts: Tensor, y_shifts: Tensor, strides: Tensor, spec: SimOTAVersion):
    if spec.name == "0.3.0":  # x * s + 0.5 * s
        return x_shifts * strides + 0.5 * strides, y_shifts * strides + 0.5 * strides
    return (x_shifts + 0.5) * strides, (y_shifts + 0.5) * strides  # main: (x + 0.5) * s


def _geometry(gt_bboxes: Tensor, x_shifts: Tensor, y_shifts: Tensor, strides: Tensor,
              spec: SimOTAVersion, center_radius: float) -> _GeometryParts:
    x_centre, y_centre = _anchor_centres(x_shifts, y_shifts, strides, spec)  # (A,) each
    gt_cx, gt_cy = gt_bboxes[:, 0:1], gt_bboxes[:, 1:2]  # (N, 1)
    # centre region: the square of half-side radius * stride around the box centre
    half = center_radius * strides  # (A,)
    in_centre = (x_centre - (gt_cx - half)) > 0.0  # (N, A)
    in_centre &= (y_centre - (gt_cy - half)) > 0.0
    in_centre &= ((gt_cx + half) - x_centre) > 0.0
    in_centre &= ((gt_cy + half) - y_centre) > 0.0
    in_box = None
    if spec.box_test:
        half_w, half_h = 0.5 * gt_bboxes[:, 2:3], 0.5 * gt_bboxes[:, 3:4]
        in_box = (x_centre - (gt_cx - half_w)) > 0.0  # (N, A)
        in_box &= (y_centre - (gt_cy - half_h)) > 0.0
        in_box &= ((gt_cx + half_w) - x_centre) > 0.0
        in_box &= ((gt_cy + half_h) - y_centre) > 0.0
        anchor_filter = in_box.any(0) | in_centre.any(0)  # (A,)
        relation = (in_box & in_centre)[:, anchor_filter]  # (N, Ac)
    else:
        anchor_filter = in_centre.any(0)
        relation = in_centre[:, anchor_filter]
    return _GeometryParts(anchor_filter, relation, in_centre, in_box)


def _geometry_stage(parts: _GeometryParts, spec: SimOTAVersion, center_radius: float) -> dict[str, Any]:
    """The compact record of step 1: candidates, and the pairs inside each centre region."""
    candidate_anchor = parts.anchor_filter.nonzero().squeeze(1)  # (Ac,)
    pair_gt, pair_anchor = parts.in_centre.nonzero(as_tuple=True)  # (Q,): every free pair is here
    column = parts.anchor_filter.cumsum(0) - 1  # (A,) candidate column of each anchor
    tensors: dict[str, tuple[Tensor, str]] = {"candidate_anchor": (candidate_anchor, "Ac")}
    if parts.in_box is not None:
        tensors["candidate_in_any_box"] = (parts.in_box.any(0)[candidate_anchor], "Ac")
        tensors["candidate_in_any_centre"] = (parts.in_centre.any(0)[candidate_anchor], "Ac")
    tensors["pair_gt"] = (pair_gt, "Q")
    tensors["pair_anchor"] = (pair_anchor, "Q")
    if parts.in_box is not None:
        tensors["pair_in_box"] = (parts.in_box[pair_gt, pair_anchor], "Q")
    tensors["pair_free"] = (parts.relation[pair_gt, column[pair_anchor]], "Q")
    if parts.in_box is not None:
        tensors["gt_in_box_count"] = (parts.in_box.sum(1), "N")
    tensors["gt_in_centre_count"] = (parts.in_centre.sum(1), "N")
    tensors["gt_free_count"] = (parts.relation.sum(1), "N")
    if spec.box_test:
        explain = T("an anchor is a candidate when its cell centre lies strictly inside ANY target box "
                    "OR strictly within {center_radius} strides (x and y) of ANY target centre; a "
                    "(target, anchor) pair escapes the penalty only when the centre is inside THIS "
                    "target's box AND its centre square. Pairs listed: each target's centre square",
                    center_radius=center_radius)
    else:
        explain = T("an anchor is a candidate when its cell centre lies strictly within "
                    "{center_radius} strides (x and y) of ANY target centre (no box test); a pair "
                    "escapes the penalty when the anchor is in THIS target's centre square", center_radius=center_radius)
    return {"title": T("Candidate anchors"), "tensors": tensors, "explain": explain, "code": spec.geometry_code,
            "values": {"version": spec.name, "center_radius": center_radius,
                       "num_candidates": int(candidate_anchor.numel())}}


def geometry_constraint(gt_bboxes: Tensor, x_shifts: Tensor, y_shifts: Tensor, expanded_strides: Tensor,
                        *, version: str = "0.3.0", center_radius: float | None = None,
                        trace: Trace | None = None) -> Geometry:
    """SimOTA's candidate anchors and penalty-free pairs (step 1).

    Args:
        gt_bboxes (Tensor[N, 4]): ``(cx, cy, w, h)`` px.
        x_shifts, y_shifts (Tensor[A] or Tensor[1, A]): each anchor's grid column and row (float).
        expanded_strides (Tensor[A] or Tensor[1, A]): each anchor's stride.
        version: ``"0.3.0"`` or ``"main"`` (module docstring).
        center_radius: half-side of the centre square in strides; ``None`` = the version's
            (2.5 for 0.3.0, 1.5 for main).
        trace: records ``simota.geometry``.

    Returns:
        :class:`Geometry`: ``anchor_filter (Tensor[A] bool)``, ``relation (Tensor[N, Ac] bool)``.
        A target whose relation row is all ``False`` can still be matched; it only pays the penalty.
    """
    spec = _version(version)
    radius = spec.center_radius if center_radius is None else center_radius
    x_shifts, y_shifts, expanded_strides = x_shifts.reshape(-1), y_shifts.reshape(-1), expanded_strides.reshape(-1)
    parts = _geometry(gt_bboxes, x_shifts, y_shifts, expanded_strides, spec, radius)
    if trace is not None:
        stage = _geometry_stage(parts, spec, radius)
        _record(trace, "geometry", stage)
    return Geometry(parts.anchor_filter, parts.relation)


# -- step 2: cost -------------------------------------------------------------------------------
def class_cost(cls_preds: Tensor, obj_preds: Tensor, gt_classes: Tensor, num_classes: int | None = None,
               *, trace: Trace | None = None) -> Tensor:
    """SimOTA's class cost of every (target, candidate) pair.

    ``BCE(sqrt(sigmoid(cls) * sigmoid(obj)), one_hot(class))`` summed over the ``C`` classes
    (``binary_cross_entropy`` clamps each log at -100), computed in float32 as upstream.

    Args:
        cls_preds (Tensor[Ac, C]), obj_preds (Tensor[Ac, 1]): raw logits of the candidates.
        gt_classes (Tensor[N]): classes (float or int; cast with ``.to(int64)``).
        num_classes: ``C`` of the one-hot; ``None`` = ``cls_preds.shape[-1]``.
        trace: records ``simota.class_cost`` (the cost row of each distinct class).

    Returns:
        Tensor[N, Ac] float32. A class outside ``[0, num_classes)`` raises ``RuntimeError`` as
        upstream's ``F.one_hot`` does.
    """
    C = cls_preds.shape[-1] if num_classes is None else num_classes
    classes = gt_classes.to(torch.int64)
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= C):
        raise RuntimeError(f"gt_classes: class values must lie in [0, {C}) (F.one_hot), got "
                           f"{classes.min().item()}..{classes.max().item()}")
    if cls_preds.shape[-1] != C:
        raise ValueError(f"cls_preds: {cls_preds.shape[-1]} classes, num_classes is {C} "
                         "(binary_cross_entropy needs equal sizes)")
    score = (cls_preds.float().sigmoid() * obj_preds.float().sigmoid()).sqrt()  # (Ac, C)
    as_negative = F.binary_cross_entropy(score, torch.zeros_like(score), reduction="none")  # (Ac, C)
    as_positive = F.binary_cross_entropy(score, torch.ones_like(score), reduction="none")
    distinct, row_of_gt = torch.unique(classes, return_inverse=True)  # (U,), (N,)
    Ac = score.shape[0]
    per_class = score.new_empty((distinct.numel(), Ac))  # (U, Ac)
    every_anchor = torch.arange(Ac, device=score.device)
    step = max(1, _CLASS_COST_CHUNK // max(1, Ac * C))
    for start in range(0, distinct.numel(), step):
        chunk = distinct[start:start + step]  # (u,)
        u = chunk.numel()
        # upstream's BCE elements for u classes: the negative row, with the class column positive
        rows = as_negative.expand(u, Ac, C).clone()  # (u, Ac, C)
        rows[torch.arange(u, device=score.device)[:, None], every_anchor, chunk[:, None]] = as_positive[:, chunk].T
        per_class[start:start + step] = rows.sum(-1)
    cost = per_class[row_of_gt]  # (N, Ac)
    if trace is not None:
        trace.record(
            "simota.class_cost", "Class cost",
            "p = sqrt(sigmoid(cls) * sigmoid(obj)) per candidate and class; the cost of a target is "
            "the BCE of the whole row p against the one-hot of its class, summed over the classes "
            "(each log clamped at -100); targets of one class share their row",
            code=f"{HEAD_CODE}.get_assignments (pair_wise_cls_loss)",
            tensors={"classes": (distinct, "U"), "cost": (per_class, "U Ac")})
    return cost


# -- steps 3 and 4: dynamic k and matching ------------------------------------------------------
class Matching(NamedTuple):
    """The positives of one image, in anchor order (upstream's return values)."""

    num_fg: int  # P
    gt_matched_classes: Tensor  # (P,) the matched target's class, dtype of gt_classes
    pred_ious_this_matching: Tensor  # (P,) IoU of each (anchor, matched target)
    matched_gt_inds: Tensor  # (P,) int64 target row
    fg_mask: Tensor  # (A,) bool: the positives (upstream updates its input mask in place)


class _MatchDetails(NamedTuple):
    tensors: dict[str, tuple[Tensor, str]]
    values: dict[str, Any]


def _match(cost: Tensor, ious: Tensor, gt_classes: Tensor, fg_mask: Tensor, candidate_topk: int,
           want_details: bool) -> tuple[Matching, _MatchDetails | None]:
    N, Ac = cost.shape
    if N == 0:
        raise UnboundLocalError("simota_matching: no targets; upstream's `del ..., pos_idx` after its "
                                "empty per-target loop raises UnboundLocalError")
    if Ac == 0:
        raise RuntimeError("simota_matching: no candidate anchor; upstream's torch.topk(k=1) on an "
                           "empty cost row raises 'selected index k out of range'")
    device = cost.device
    # step 3: dynamic k = max(1, int(sum of the top-10 IoUs)), int() truncates
    n_candidate_k = min(candidate_topk, Ac)
    topk_ious, topk_cols = torch.topk(ious, n_candidate_k, dim=1)  # (N, K)
    iou_sum = topk_ious.sum(1)  # (N,)
    dynamic_ks = torch.clamp(iou_sum.int(), min=1)  # (N,) int32
    ks = dynamic_ks.tolist()
    # step 4a: each target takes its k cheapest candidates. Rows with the same k share one call:
    # torch.topk treats the rows of a batch independently, exactly as upstream's row-by-row calls.
    sel_gt, sel_col, sel_rank, next_cost = [], [], [], []
    for k in sorted(set(ks)):
        rows = (dynamic_ks == k).nonzero().squeeze(1)  # (r,)
        _, cols = torch.topk(cost[rows], k, dim=1, largest=False)  # (r, k)
        sel_gt.append(rows.repeat_interleave(k))
        sel_col.append(cols.reshape(-1))
        sel_rank.append(torch.arange(k, device=device).repeat(rows.numel()))
        if want_details:  # the cheapest candidate a target did NOT take (trace only)
            if k < Ac:
                after = torch.topk(cost[rows], k + 1, dim=1, largest=False).values[:, k]
            else:
                after = cost.new_full((rows.numel(),), float("inf"))
            next_cost.append((rows, after))
    sel_gt_t, sel_col_t, sel_rank_t = torch.cat(sel_gt), torch.cat(sel_col), torch.cat(sel_rank)  # (S,)
    claims = torch.bincount(sel_col_t, minlength=Ac)  # (Ac,) targets that took each candidate
    owner = torch.full((Ac,), -1, dtype=torch.int64, device=device)
    owner[sel_col_t] = sel_gt_t  # one writer per uncontested column
    # step 4b: a contested anchor goes to the argmin of its cost column over ALL targets
    contested = claims > 1  # (Ac,)
    contested_cols = contested.nonzero().squeeze(1)  # (X,)
    if contested_cols.numel():
        winner_cost, winner = torch.min(cost[:, contested], dim=0)  # (X,) upstream's call
        owner[contested] = winner
    chosen = claims > 0  # (Ac,) upstream's fg_mask_inboxes
    num_fg = int(chosen.sum().item())
    matched_gt_inds = owner[chosen]  # (P,)
    gt_matched_classes = gt_classes[matched_gt_inds]
    # upstream: (matching_matrix * pair_wise_ious).sum(0) over the positives' columns
    one_hot = torch.zeros((N, num_fg), dtype=torch.uint8, device=device)
    one_hot[matched_gt_inds, torch.arange(num_fg, device=device)] = 1
    pred_ious_this_matching = (one_hot * ious[:, chosen]).sum(0)  # (P,)
    new_mask = fg_mask.clone()
    new_mask[fg_mask] = chosen
    matching = Matching(num_fg, gt_matched_classes, pred_ious_this_matching, matched_gt_inds, new_mask)
    if not want_details:
        return matching, None

    candidate_anchor = fg_mask.nonzero().squeeze(1)  # (Ac,) column -> anchor
    K = candidate_topk
    pad = K - n_candidate_k
    topk_anchor = candidate_anchor[topk_cols]
    if pad > 0:  # fewer than K candidates: pad to K columns
        topk_ious = torch.cat([topk_ious, topk_ious.new_full((N, pad), float("nan"))], 1)
        topk_anchor = torch.cat([topk_anchor, topk_anchor.new_full((N, pad), -1)], 1)
    after_cost = cost.new_empty(N)
    for rows, after in next_cost:
        after_cost[rows] = after
    order = (sel_gt_t * Ac + sel_rank_t).argsort()  # selections by target, cheapest first
    sel_gt_t, sel_col_t, sel_rank_t = sel_gt_t[order], sel_col_t[order], sel_rank_t[order]
    sel_key = sel_gt_t * Ac + sel_col_t
    tensors: dict[str, tuple[Tensor, str]] = {
        "gt_topk_iou": (topk_ious, "N K"), "gt_topk_anchor": (topk_anchor, "N K"),
        "gt_iou_sum": (iou_sum, "N"), "gt_dynamic_k": (dynamic_ks.long(), "N"),
        "sel_gt": (sel_gt_t, "S"), "sel_anchor": (candidate_anchor[sel_col_t], "S"),
        "sel_rank": (sel_rank_t, "S"), "sel_cost": (cost[sel_gt_t, sel_col_t], "S"),
        "sel_iou": (ious[sel_gt_t, sel_col_t], "S"), "gt_next_cost": (after_cost, "N"),
    }
    # conflicts: every claimant and the winner; the winner need not be a claimant
    if contested_cols.numel():
        claim = contested[sel_col_t]
        claim_gt, claim_col = sel_gt_t[claim], sel_col_t[claim]
        claim_order = (claim_col * N + claim_gt).argsort()
        claim_gt, claim_col = claim_gt[claim_order], claim_col[claim_order]
        winner_key = winner * Ac + contested_cols
        winner_selected = torch.isin(winner_key, sel_key)
        claim_won = owner[claim_col] == claim_gt
    else:
        claim_gt = claim_col = winner = contested_cols
        winner_cost = cost.new_empty(0)
        winner_selected = claim_won = torch.zeros(0, dtype=torch.bool, device=device)
    tensors.update({
        "conflict_anchor": (candidate_anchor[contested_cols], "X"), "conflict_claims": (claims[contested_cols], "X"),
        "conflict_winner": (winner, "X"), "conflict_winner_cost": (winner_cost, "X"),
        "conflict_winner_selected": (winner_selected, "X"),
        "claim_anchor": (candidate_anchor[claim_col], "Y"), "claim_gt": (claim_gt, "Y"),
        "claim_cost": (cost[claim_gt, claim_col], "Y"), "claim_won": (claim_won, "Y"),
    })
    # result: the positives, with the rule that made each one
    chosen_cols = chosen.nonzero().squeeze(1)
    rule = torch.zeros(num_fg, dtype=torch.int64, device=device)
    if contested_cols.numel():
        won = contested[chosen_cols]
        was_selected = torch.isin(matched_gt_inds * Ac + chosen_cols, sel_key)
        rule[won & was_selected] = 1
        rule[won & ~was_selected] = 2
    anchors_per_gt = torch.bincount(matched_gt_inds, minlength=N)
    tensors.update({
        "fg_anchor": (candidate_anchor[chosen_cols], "P"), "fg_gt": (matched_gt_inds, "P"),
        "fg_iou": (pred_ious_this_matching, "P"), "fg_class": (gt_matched_classes, "P"),
        "fg_rule": (rule, "P"), "gt_anchor_count": (anchors_per_gt, "N"),
    })
    values = {"num_fg": num_fg, "candidate_topk": candidate_topk, "num_conflicts": int(contested_cols.numel()),
              "conflicts_won_by_nonselecting_gt": int((~winner_selected).sum().item()),
              "gts_without_anchor": (anchors_per_gt == 0).nonzero().squeeze(1).tolist()}
    return matching, _MatchDetails(tensors, values)


_MATCH_STAGES = {  # step -> (tensors, title, explain: a template filled in with K, the candidate_topk)
    "dynamic_k": (("gt_topk_iou", "gt_topk_anchor", "gt_iou_sum", "gt_dynamic_k"), T("Dynamic k per target"),
                  T("k = max(1, int(sum of the target's {K} largest IoUs over the candidates)): int() "
                    "truncates (2.99 -> 2), only the {K} largest count, and every target gets at least 1")),
    "select": (("sel_gt", "sel_anchor", "sel_rank", "sel_cost", "sel_iou", "gt_next_cost"),
               T("Each target takes its k cheapest anchors"),
               T("torch.topk(cost row, k, largest=False) per target; gt_next_cost is the cheapest "
                 "candidate it did not take")),
    "conflicts": (("conflict_anchor", "conflict_claims", "conflict_winner", "conflict_winner_cost",
                   "conflict_winner_selected", "claim_anchor", "claim_gt", "claim_cost", "claim_won"),
                  T("Conflicts: lowest cost over all targets"),
                  T("an anchor taken by several targets goes to torch.min of its cost column over ALL "
                    "targets, so the winner may be a target that did not take it "
                    "(conflict_winner_selected = False); the other claimants lose it")),
    "result": (("fg_anchor", "fg_gt", "fg_iou", "fg_class", "fg_rule", "gt_anchor_count"),
               T("Positives"), T("the anchors taken by some target, in anchor order, with their target, its "
                                 "class and the IoU (the soft class target); a target with gt_anchor_count 0 lost "
                                 "every anchor it took and gets no positive at all")),
}


def _match_stages(details: _MatchDetails, matching_code: str) -> list[tuple[str, dict[str, Any]]]:
    stages = []
    K = details.values["candidate_topk"]
    for step, (keys, title, explain) in _MATCH_STAGES.items():
        values: dict[str, Any] = {}
        if step == "dynamic_k":
            values = {"candidate_topk": K}
        elif step == "conflicts":
            values = {k: details.values[k] for k in ("num_conflicts", "conflicts_won_by_nonselecting_gt")}
        elif step == "result":
            values = {"num_fg": details.values["num_fg"], "gts_without_anchor": details.values["gts_without_anchor"],
                      "rules": list(RULE_NAMES)}
        stages.append((step, {"tensors": {k: details.tensors[k] for k in keys}, "title": title,
                              "explain": Text(explain.template, {"K": K} if "{K}" in explain.template else None),
                              "code": matching_code, "values": values}))
    return stages


def _record(trace: Trace, step: str, stage: dict[str, Any]) -> None:
    with trace.scope("simota"):
        trace.record(step, stage["title"], stage["explain"],
                     code=stage["code"], tensors=stage["tensors"], values=stage.get("values", {}))


@torch.no_grad()
def simota_matching(cost: Tensor, pair_wise_ious: Tensor, gt_classes: Tensor, fg_mask: Tensor, *,
                    candidate_topk: int = 10, trace: Trace | None = None) -> Matching:
    """Dynamic-k matching on a given cost matrix (0.3.0 ``dynamic_k_matching`` = main
    ``simota_matching``; the algorithm is the same in both versions).

    Args:
        cost (Tensor[N, Ac]), pair_wise_ious (Tensor[N, Ac]): over the candidates.
        gt_classes (Tensor[N]): classes, returned for the positives as they are.
        fg_mask (Tensor[A] bool): the candidates, exactly ``Ac`` entries ``True``. Not modified
            (upstream writes its result into it in place).
        candidate_topk: how many of the largest IoUs the dynamic k sums (upstream's 10).
        trace: records ``simota.dynamic_k``, ``simota.select``, ``simota.conflicts``,
            ``simota.result``.

    Returns:
        :class:`Matching`. No candidate raises ``RuntimeError`` and no target raises
        ``UnboundLocalError``, as upstream.
    """
    matching, details = _match(cost, pair_wise_ious, gt_classes, fg_mask, candidate_topk, trace is not None)
    if trace is not None:
        for step, stage in _match_stages(details, VERSIONS["main"].matching_code):
            _record(trace, step, stage)
    return matching


# -- one image ----------------------------------------------------------------------------------
class Assignment(NamedTuple):
    """``get_assignments``' return values (upstream's order), plus the number of candidates."""

    gt_matched_classes: Tensor  # (P,)
    fg_mask: Tensor  # (A,) bool
    pred_ious_this_matching: Tensor  # (P,)
    matched_gt_inds: Tensor  # (P,) int64
    num_fg: int
    num_candidates: int  # Ac


class _AssignmentDetails(NamedTuple):
    stages: list[tuple[str, dict[str, Any]]]  # (step, stage) in the order the code runs them
    cost: Tensor  # (N, Ac)
    pair_wise_ious: Tensor  # (N, Ac)


def _assign(gt_bboxes: Tensor, gt_classes: Tensor, bboxes_preds: Tensor, cls_preds: Tensor, obj_preds: Tensor,
            x_shifts: Tensor, y_shifts: Tensor, expanded_strides: Tensor, *, num_classes: int | None,
            spec: SimOTAVersion, center_radius: float, penalty: float, iou_weight: float, candidate_topk: int,
            want_details: bool) -> tuple[Assignment, _AssignmentDetails | None]:
    parts = _geometry(gt_bboxes, x_shifts, y_shifts, expanded_strides, spec, center_radius)
    fg_mask, relation = parts.anchor_filter, parts.relation
    preds = bboxes_preds[fg_mask]  # (Ac, 4)
    pair_wise_ious = bboxes_iou(gt_bboxes, preds, False)  # (N, Ac)
    iou_cost = -torch.log(pair_wise_ious + 1e-8)
    cls_cost = class_cost(cls_preds[fg_mask], obj_preds.reshape(-1, 1)[fg_mask], gt_classes, num_classes)
    cost = cls_cost + iou_weight * iou_cost + penalty * (~relation)  # (N, Ac)
    matching, match_details = _match(cost, pair_wise_ious, gt_classes, fg_mask, candidate_topk, want_details)
    assignment = Assignment(matching.gt_matched_classes, matching.fg_mask, matching.pred_ious_this_matching,
                            matching.matched_gt_inds, matching.num_fg, int(preds.shape[0]))
    if not want_details:
        return assignment, None

    geometry = _geometry_stage(parts, spec, center_radius)
    pair_gt, pair_anchor = geometry["tensors"]["pair_gt"][0], geometry["tensors"]["pair_anchor"][0]
    column = (fg_mask.cumsum(0) - 1)[pair_anchor]
    free = relation[pair_gt, column]
    cost_stage = {
        "title": T("Cost of every (target, anchor) pair"),
        "tensors": {"pair_gt": (pair_gt, "Q"), "pair_anchor": (pair_anchor, "Q"),
                    "pair_iou": (pair_wise_ious[pair_gt, column], "Q"),
                    "pair_cls_cost": (cls_cost[pair_gt, column], "Q"),
                    "pair_iou_cost": (iou_cost[pair_gt, column], "Q"),
                    "pair_penalty": (penalty * (~free), "Q"), "pair_cost": (cost[pair_gt, column], "Q")},
        "explain": T("cost = class cost + {iou_weight} * (-log(IoU + 1e-8)) + {penalty:g} where the pair is not "
                     "penalty-free; IoU of the target box with the anchor's decoded prediction. Recorded for "
                     "the pairs of each target's centre square (every penalty-free pair is one of them); every "
                     "other candidate carries the penalty for that target", iou_weight=iou_weight, penalty=penalty),
        "code": f"{HEAD_CODE}.get_assignments (cost)",
        "values": {"iou_weight": iou_weight, "penalty": penalty, "iou_eps": 1e-8},
    }
    stages = [("geometry", geometry), ("cost", cost_stage)]
    for step, stage in _match_stages(match_details, spec.matching_code):
        if step == "select":  # the breakdown of each taken pair's cost
            sel_gt = stage["tensors"]["sel_gt"][0]
            sel_col = (fg_mask.cumsum(0) - 1)[stage["tensors"]["sel_anchor"][0]]
            stage["tensors"]["sel_cls_cost"] = (cls_cost[sel_gt, sel_col], "S")
            stage["tensors"]["sel_iou_cost"] = (iou_cost[sel_gt, sel_col], "S")
            stage["tensors"]["sel_penalty"] = (penalty * (~relation[sel_gt, sel_col]), "S")
        elif step == "conflicts":  # the breakdown of each winner's cost (it may not have taken the anchor)
            win_gt = stage["tensors"]["conflict_winner"][0]
            win_col = (fg_mask.cumsum(0) - 1)[stage["tensors"]["conflict_anchor"][0]]
            stage["tensors"]["conflict_winner_cls_cost"] = (cls_cost[win_gt, win_col], "X")
            stage["tensors"]["conflict_winner_iou_cost"] = (iou_cost[win_gt, win_col], "X")
            stage["tensors"]["conflict_winner_penalty"] = (penalty * (~relation[win_gt, win_col]), "X")
        stages.append((step, stage))
    return assignment, _AssignmentDetails(stages, cost, pair_wise_ious)


@torch.no_grad()
def get_assignments(gt_bboxes: Tensor, gt_classes: Tensor, bboxes_preds: Tensor, cls_preds: Tensor,
                    obj_preds: Tensor, x_shifts: Tensor, y_shifts: Tensor, expanded_strides: Tensor, *,
                    num_classes: int | None = None, version: str = "0.3.0", center_radius: float | None = None,
                    penalty: float | None = None, iou_weight: float = 3.0, candidate_topk: int = 10,
                    trace: Trace | None = None) -> Assignment:
    """SimOTA for one image (``YOLOXHead.get_assignments``).

    Args:
        gt_bboxes (Tensor[N, 4]): target boxes ``(cx, cy, w, h)`` px.
        gt_classes (Tensor[N]): classes (float, cast with ``.to(int64)``).
        bboxes_preds (Tensor[A, 4]): decoded predicted boxes ``(cx, cy, w, h)`` px.
        cls_preds (Tensor[A, C]), obj_preds (Tensor[A, 1] or Tensor[A]): raw logits.
        x_shifts, y_shifts, expanded_strides (Tensor[A]): see :func:`geometry_constraint`.
        num_classes: ``None`` = ``C``.
        version: ``"0.3.0"`` or ``"main"``; ``center_radius`` and ``penalty`` default to the
            version's (2.5 / 100000.0 and 1.5 / 1e6).
        iou_weight: the IoU-cost weight (3.0). ``candidate_topk``: the dynamic-k top-k (10).
        trace: records ``simota.geometry``, ``simota.cost``, ``simota.dynamic_k``, ``simota.select``,
            ``simota.conflicts``, ``simota.result``.

    Returns:
        :class:`Assignment`. No candidate anchor, or a class outside ``[0, num_classes)``, raises
        ``RuntimeError``; no target raises ``UnboundLocalError`` (upstream's behaviour).
    """
    spec = _version(version)
    radius = spec.center_radius if center_radius is None else center_radius
    x_shifts, y_shifts, expanded_strides = x_shifts.reshape(-1), y_shifts.reshape(-1), expanded_strides.reshape(-1)
    assignment, details = _assign(
        gt_bboxes, gt_classes, bboxes_preds, cls_preds, obj_preds, x_shifts, y_shifts, expanded_strides,
        num_classes=num_classes, spec=spec, center_radius=radius, penalty=spec.penalty if penalty is None else penalty,
        iou_weight=iou_weight, candidate_topk=candidate_topk, want_details=trace is not None)
    if trace is not None:
        for step, stage in details.stages:
            _record(trace, step, stage)
    return assignment
