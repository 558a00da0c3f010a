"""ATSS: adaptive training sample selection, as MMDetection 3.3.0 ``ATSSAssigner.assign`` runs it.

For one image (``mmdet/models/task_modules/assigners/atss_assigner.py``):

1. on every level ``l``, each target takes the ``k_l = min(topk, n_l)`` priors whose centres are
   nearest its centre (Euclidean, in pixels): ``K = sum_l k_l`` candidates per target;
2. the candidates' IoUs with the target give a threshold ``mean + std`` (unbiased std, divisor
   ``K - 1``); a candidate passes when ``IoU >= threshold``;
3. it must also have its centre inside the target, by more than 0.01 px on every side;
4. a prior that passes for several targets goes to the one with the largest IoU (the lower target
   index on an exact tie).

Only candidates can become positive, so the IoU is computed for the ``K x M`` candidate pairs
only; upstream computes the dense ``N x M`` matrix (and an ``N x M x 2`` distance tensor) first.
The centre distances are computed level by level (``n_l x M``), which is what the top-k ranks.
Every kept quantity has upstream's bits: the same operations on the same values, the top-k on
the same ``(n_l, M)`` rows (so ties break the way upstream's do), the mean and std reduced over
the same ``(K, M)`` layout.

DDOD mode (``alpha`` given): the "overlap" is the cost
``sigmoid(score[:, label])**(1 - alpha) * IoU(pred_box, target)**alpha``; candidates and the
centre test still use the anchors. That cost is computed dense, as upstream does, since
``torch.sigmoid`` and ``**`` on CPU can differ in the last bit depending on where an element
sits in the tensor (SIMD body or scalar tail).

Things a learner should know (upstream behaviour, kept):

* a target can end with NO positive: when ``mean + std`` exceeds every candidate's IoU
  (sfzhang15/ATSS issue #90), when no passing candidate has its centre inside (tiny targets),
  when ``K = 1`` (one level with ``topk`` 1: the unbiased std of one value is NaN, so the
  threshold is NaN and ``IoU >= NaN`` is false), or when it loses every shared prior;
* the centre test uses a strict 0.01 px margin: a centre 1/128 px inside an edge is outside;
* ignored priors (``ignore_iof_thr > 0``, IoF over the PRIOR's area ``> thr``) get ``gt_inds -1``
  and distance ``1e8``, yet stay candidates when a level has ``<= topk`` priors, and an ignored
  prior that passes both tests becomes positive; with no targets the early return leaves them 0.

Shapes: ``N`` priors over all levels (upstream's ``num_priors``), ``M`` targets of the image
(``num_gt``), ``L`` levels, ``K`` candidates per target, ``P`` positives, ``Q`` (prior, target)
pairs of priors positive for several targets.

Reference: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..text import T
from ..trace import Trace
from .overlaps import bbox_overlaps, check_iou_calculator
from .result import INF, AssignResult

__all__ = ["ATSSAssigner", "ATSSAssignResult", "ATSSCandidates", "atss_assign", "ZERO_POSITIVE_REASONS",
           "ATSS_CODE"]

ATSS_CODE = "mmdet 3.3.0 mmdet/models/task_modules/assigners/atss_assigner.py ATSSAssigner.assign"
_ALPHA_MESSAGE = ("Invalid alpha parameter because cls_scores or bbox_preds are None. If you want to use the "
                  "cost-based ATSSAssigner,  please set cls_scores, bbox_preds and self.alpha at the same time. ")
# why a target ended without positives (index = code in ``zero_positive_reason``)
ZERO_POSITIVE_REASONS = (
    "has positives",
    "threshold is NaN (one candidate: unbiased std of one value)",
    "threshold above every candidate's overlap",
    "no candidate passing the threshold has its centre inside",
    "every positive went to another target with a larger overlap",
)


class ATSSCandidates(NamedTuple):
    """The per-target candidates and tests (``K = sum(num_candidates_per_level)`` rows).

    Rows are grouped by level, in upstream's ``torch.topk`` order within a level (increasing
    distance; equal distances in an unspecified order).
    """

    num_candidates_per_level: list[int]  # k_l = min(topk, n_l)
    candidate_idxs: Tensor  # (K, M) int64 prior indices
    candidate_distances: Tensor  # (K, M) centre distance in px (1e8 for ignored priors)
    candidate_overlaps: Tensor  # (K, M) IoU (DDOD: the cost)
    iou_mean: Tensor  # (M,)
    iou_std: Tensor  # (M,) unbiased; NaN when K == 1
    iou_thr: Tensor  # (M,) mean + std
    iou_ge_thr: Tensor  # (K, M) bool, overlap >= threshold
    centre_margin: Tensor  # (K, M) min(cx - x1, cy - y1, x2 - cx, y2 - cy) of the prior centre
    center_in_gt: Tensor  # (K, M) bool, centre_margin > 0.01
    is_pos: Tensor  # (K, M) bool, both tests (before resolving priors shared by targets)
    ignored: Tensor | None  # (N,) bool, priors ignored through ignore boxes (None: no ignoring)
    zero_positive_reason: Tensor  # (M,) int64 index into ZERO_POSITIVE_REASONS


class ATSSAssignResult(NamedTuple):
    """:class:`~losscore.mmdet_assigners.result.AssignResult` fields plus the candidates.

    ``candidates`` is ``None`` on upstream's early return (no target or no prior).
    """

    num_gts: int
    gt_inds: Tensor  # (N,) int64
    max_overlaps: Tensor  # (N,)
    labels: Tensor  # (N,) int64
    candidates: ATSSCandidates | None

    def assign_result(self) -> AssignResult:
        return AssignResult(self.num_gts, self.gt_inds, self.max_overlaps, self.labels)


def _level_names(count: int, level_names: Sequence[str] | None) -> list[str]:
    if level_names is None:
        return [f"P{i + 3}" for i in range(count)]  # mmdet's FPN heads start at P3 (stride 8)
    if len(level_names) != count:
        raise ValueError(f"level_names: expected {count} names, got {len(level_names)}")
    return list(level_names)


@torch.no_grad()
def atss_assign(priors: Tensor, num_level_priors: Sequence[int], gt_bboxes: Tensor, gt_labels: Tensor, *,
                gt_bboxes_ignore: Tensor | None = None, pred_scores: Tensor | None = None,
                pred_bboxes: Tensor | None = None, topk: int = 9, alpha: float | None = None,
                ignore_iof_thr: float = -1, level_names: Sequence[str] | None = None,
                trace: Trace | None = None) -> ATSSAssignResult:
    """ATSS assignment of one image's priors to its targets (see the module docstring).

    Args:
        priors (Tensor[N, 4]): anchors, xyxy pixels, level by level (extra columns are dropped).
        num_level_priors: priors per level, in order (``n_l``).
        gt_bboxes (Tensor[M, 4]): targets, xyxy pixels. gt_labels (Tensor[M]): int64 classes.
        gt_bboxes_ignore (Tensor[I, 4], optional): ignore regions, used when ``ignore_iof_thr > 0``.
        pred_scores (Tensor[N, C]), pred_bboxes (Tensor[N, 4]): DDOD mode only: class logits and
            decoded xyxy boxes. With ``alpha=None`` they are unused (upstream warns).
        topk: candidates per level (upstream configs: 9). alpha: DDOD cost exponent, or ``None``.
        ignore_iof_thr: IoF threshold for ignoring priors; ``<= 0`` turns ignoring off.
        level_names: names for the per-level trace stages (default ``P3``, ``P4``, ...).
        trace: records the stages listed in the package docstring.

    Returns:
        :class:`ATSSAssignResult`.

    Raises:
        AssertionError: ``alpha`` without ``pred_scores`` and ``pred_bboxes`` (upstream asserts).
    """
    N, M = priors.size(0), gt_bboxes.size(0)
    priors = priors[:, :4]
    device = priors.device

    # DDOD's cost is dense (N, M), as upstream computes it (see the module docstring)
    overlaps = None
    if alpha is None:
        if pred_scores is not None or pred_bboxes is not None:
            warnings.warn(_ALPHA_MESSAGE)
        overlap_dtype = priors.dtype
    else:
        if pred_scores is None or pred_bboxes is None:
            raise AssertionError(_ALPHA_MESSAGE)
        cls_cost = torch.sigmoid(pred_scores[:, gt_labels])  # (N, M)
        pred_iou = bbox_overlaps(pred_bboxes, gt_bboxes)  # (N, M)
        if cls_cost.shape != pred_iou.shape:
            raise AssertionError(f"cls_cost {tuple(cls_cost.shape)} vs overlaps {tuple(pred_iou.shape)}")
        overlaps = cls_cost ** (1 - alpha) * pred_iou ** alpha
        overlap_dtype = overlaps.dtype

    gt_inds = torch.zeros(N, dtype=torch.long, device=device)
    if M == 0 or N == 0:
        if trace is not None:
            trace.record("atss.empty", "Nothing to assign",
                         "no target or no prior: every prior is background (gt_inds 0, labels -1) and "
                         "max_overlaps is 0.0, not the -1e8 of a later negative; ignore boxes are not "
                         "looked at, so no prior is marked ignored",
                         code=ATSS_CODE, values={"num_priors": N, "num_gts": M})
        return ATSSAssignResult(M, gt_inds, torch.zeros(N, dtype=overlap_dtype, device=device),
                                torch.full((N,), -1, dtype=torch.long, device=device), None)

    # centres of priors and targets, (x1 + x2) / 2 as upstream
    prior_cx = (priors[:, 0] + priors[:, 2]) / 2.0  # (N,)
    prior_cy = (priors[:, 1] + priors[:, 3]) / 2.0
    gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0  # (M,)
    gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0

    ignored = None
    if (ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0
            and priors.numel() > 0):
        ignore_iof = bbox_overlaps(priors, gt_bboxes_ignore, mode="iof")  # (N, I)
        ignore_max, _ = ignore_iof.max(dim=1)  # (N,)
        ignored = ignore_max > ignore_iof_thr
        gt_inds[ignored] = -1
        if trace is not None:
            idx = ignored.nonzero().squeeze(1)
            trace.record("atss.ignore", "Priors inside ignore regions",
                         T("a prior whose largest IoF (intersection over the PRIOR's area) with an ignore "
                           "box exceeds {ignore_iof_thr} is ignored: gt_inds -1 and centre distance 1e8 "
                           "to every target, so it is only a candidate on a level with <= topk priors",
                           ignore_iof_thr=ignore_iof_thr),
                         code=ATSS_CODE, tensors={"prior": (idx, "I"), "iof": (ignore_max[idx], "I")},
                         values={"ignore_iof_thr": ignore_iof_thr, "num_ignored": int(idx.numel())})

    # 1. per level, the k nearest prior centres of each target
    names = _level_names(len(num_level_priors), level_names)
    candidate_idxs, candidate_distances, per_level = [], [], []
    start = 0
    for name, count in zip(names, num_level_priors):
        end = start + count
        # (M, n_l): each target's distances contiguous, which is where the top-k reads them
        # (torch.topk gives the same values, indices and tie order along either layout)
        dx = prior_cx[None, start:end] - gt_cx[:, None]  # (M, n_l)
        dy = prior_cy[None, start:end] - gt_cy[:, None]
        # upstream: (p - g).pow(2).sum(-1).sqrt(); a two-term sum is the one rounding of dx² + dy²
        distances = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_()  # (M, n_l)
        if ignored is not None:
            distances[:, ignored[start:end]] = INF
        k = min(topk, count)
        top_dist, top_idx = distances.topk(k, dim=1, largest=False)  # (M, k_l)
        top_dist, top_idx = top_dist.t(), top_idx.t() + start  # (k_l, M)
        candidate_idxs.append(top_idx)
        candidate_distances.append(top_dist)
        per_level.append(k)
        if trace is not None:
            with trace.scope("atss"), trace.scope(name):
                trace.record("candidates", T("{k} nearest priors per target", k=k),
                             T("on this level ({count} priors) each target takes the {k} priors whose "
                               "centres are nearest its centre (Euclidean distance in pixels)", count=count, k=k),
                             code=f"{ATSS_CODE} (candidate_idxs)",
                             tensors={"prior": (top_idx, "K M"), "distance": (top_dist, "K M")},
                             values={"topk": topk, "k": k, "num_priors": count, "first_prior": start})
        start = end
    candidate_idxs = torch.cat(candidate_idxs)  # (K, M)
    candidate_distances = torch.cat(candidate_distances)
    K = candidate_idxs.size(0)
    gt_cols = torch.arange(M, device=device)

    # 2. overlaps of the candidates
    if overlaps is None:
        cand_boxes = priors[candidate_idxs]  # (K, M, 4)
        candidate_overlaps = bbox_overlaps(cand_boxes, gt_bboxes.expand(K, M, 4), is_aligned=True)  # (K, M)
    else:
        candidate_overlaps = overlaps[candidate_idxs, gt_cols]  # (K, M)
    candidate_overlaps = candidate_overlaps.contiguous()
    if trace is not None:
        tensors = {"prior": (candidate_idxs, "K M"), "overlap": (candidate_overlaps, "K M")}
        if overlaps is not None:
            tensors["cls_cost"] = (cls_cost[candidate_idxs, gt_cols], "K M")
            tensors["pred_iou"] = (pred_iou[candidate_idxs, gt_cols], "K M")
        trace.record("atss.overlaps", "Overlaps of the candidates",
                     "IoU of each candidate anchor with its target (inter / max(union, 1e-6))" if alpha is None
                     else T("DDOD cost sigmoid(score of the target class)^{beta:g} * "
                            "IoU(predicted box, target)^{alpha:g} of each candidate", beta=1 - alpha, alpha=alpha),
                     code=f"{ATSS_CODE} (candidate_overlaps)", tensors=tensors,
                     values={"num_candidates_per_level": per_level, "K": K, "alpha": alpha})

    # 3. adaptive threshold: mean + unbiased std over the K candidates, per target
    iou_mean = candidate_overlaps.mean(0)  # (M,)
    iou_std = candidate_overlaps.std(0)
    iou_thr = iou_mean + iou_std
    iou_ge_thr = candidate_overlaps >= iou_thr[None, :]  # (K, M)
    if trace is not None:
        best = candidate_overlaps.max(0).values
        trace.record("atss.threshold", "Adaptive IoU threshold",
                     T("threshold = mean + std of the K = {K} candidate overlaps (std with divisor K - 1: "
                       "NaN for K = 1); a candidate passes when overlap >= threshold. When the threshold "
                       "is above the best candidate, no candidate passes and the target gets no positive", K=K),
                     code=f"{ATSS_CODE} (overlaps_thr_per_gt)",
                     tensors={"mean": (iou_mean, "M"), "std": (iou_std, "M"), "threshold": (iou_thr, "M"),
                              "best_candidate": (best, "M"), "threshold_above_all": (~iou_ge_thr.any(0), "M"),
                              "iou_ge_thr": (iou_ge_thr, "K M")},
                     values={"K": K})

    # 4. the candidate's (anchor) centre must lie inside the target by more than 0.01 px
    cand_cx = prior_cx[candidate_idxs]  # (K, M)
    cand_cy = prior_cy[candidate_idxs]
    centre_margin = torch.minimum(
        torch.minimum(cand_cx - gt_bboxes[:, 0], cand_cy - gt_bboxes[:, 1]),
        torch.minimum(gt_bboxes[:, 2] - cand_cx, gt_bboxes[:, 3] - cand_cy))  # (K, M)
    center_in_gt = centre_margin > 0.01
    is_pos = iou_ge_thr & center_in_gt
    if trace is not None:
        trace.record("atss.centre_test", "Candidate centre inside the target",
                     "the anchor centre must be inside the target by more than 0.01 px on every side "
                     "(margin = min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01); positives pass both tests",
                     code=f"{ATSS_CODE} (is_in_gts)",
                     tensors={"margin": (centre_margin, "K M"), "center_in_gt": (center_in_gt, "K M"),
                              "is_pos": (is_pos, "K M"), "positives_per_gt": (is_pos.sum(0), "M")})

    # 5. a prior positive for several targets keeps the largest overlap (lower index on a tie)
    pos_row, pos_gt = is_pos.nonzero(as_tuple=True)  # (P0,)
    pos_prior = candidate_idxs[pos_row, pos_gt]
    pos_overlap = candidate_overlaps[pos_row, pos_gt]
    max_overlaps = torch.full((N,), -INF, dtype=candidate_overlaps.dtype, device=device)
    max_overlaps.scatter_reduce_(0, pos_prior, pos_overlap, "amax")
    best_pair = pos_overlap == max_overlaps[pos_prior]
    winner = torch.full((N,), M, dtype=torch.long, device=device)
    winner.scatter_reduce_(0, pos_prior[best_pair], pos_gt[best_pair], "amin")
    assigned = max_overlaps != -INF
    gt_inds[assigned] = winner[assigned] + 1
    if trace is not None:
        claims = torch.bincount(pos_prior, minlength=N)
        shared = claims[pos_prior] > 1
        order = pos_prior[shared].argsort(stable=True)
        trace.record("atss.conflicts", "Priors positive for several targets",
                     "such a prior goes to the target with the largest overlap; on an exact tie to the "
                     "lower target index (torch.max returns the first maximum)",
                     code=f"{ATSS_CODE} (overlaps_inf.max)",
                     tensors={"prior": (pos_prior[shared][order], "Q"), "gt": (pos_gt[shared][order], "Q"),
                              "overlap": (pos_overlap[shared][order], "Q"),
                              "won": ((winner[pos_prior] == pos_gt)[shared][order], "Q")},
                     values={"num_shared_priors": int((claims > 1).sum())})

    labels = torch.full((N,), -1, dtype=torch.long, device=device)
    positive = gt_inds > 0
    labels[positive] = gt_labels[gt_inds[positive] - 1]

    won_per_gt = torch.bincount(winner[assigned], minlength=M)  # (M,)
    reason = torch.zeros(M, dtype=torch.long, device=device)
    reason[won_per_gt == 0] = 4
    reason[~is_pos.any(0)] = 3
    reason[~iou_ge_thr.any(0)] = 2
    reason[iou_thr.isnan()] = 1
    candidates = ATSSCandidates(per_level, candidate_idxs, candidate_distances, candidate_overlaps, iou_mean,
                                iou_std, iou_thr, iou_ge_thr, centre_margin, center_in_gt, is_pos, ignored, reason)
    if trace is not None:
        pos = assigned.nonzero().squeeze(1)
        trace.record("atss.result", "Assignment",
                     "gt_inds = 1-based target of each positive, 0 background, -1 ignored; max_overlaps "
                     "= the positive's overlap, -1e8 elsewhere; labels = the target's class, -1 elsewhere",
                     code=ATSS_CODE,
                     tensors={"prior": (pos, "P"), "gt": (winner[pos], "P"), "overlap": (max_overlaps[pos], "P"),
                              "label": (labels[pos], "P"), "positives_per_gt": (won_per_gt, "M"),
                              "zero_positive_reason": (reason, "M")},
                     values={"num_pos": int(pos.numel()), "reasons": list(ZERO_POSITIVE_REASONS),
                             "num_ignored": int((gt_inds == -1).sum())})
    return ATSSAssignResult(M, gt_inds, max_overlaps, labels, candidates)


class ATSSAssigner:
    """``ATSSAssigner(topk, alpha=None, iou_calculator=dict(type='BboxOverlaps2D'), ignore_iof_thr=-1)``.

    ``assign`` takes the tensors upstream reads from its ``InstanceData`` arguments and returns an
    :class:`~losscore.mmdet_assigners.result.AssignResult`; :func:`atss_assign` also gives the
    candidates and tests.
    """

    def __init__(self, topk: int, alpha: float | None = None, iou_calculator: dict | None = None,
                 ignore_iof_thr: float = -1) -> None:
        check_iou_calculator(iou_calculator)
        self.topk, self.alpha, self.ignore_iof_thr = topk, alpha, ignore_iof_thr

    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_bboxes: Tensor, gt_labels: Tensor,
               gt_bboxes_ignore: Tensor | None = None, *, pred_scores: Tensor | None = None,
               pred_bboxes: Tensor | None = None, trace: Trace | None = None) -> AssignResult:
        return atss_assign(priors, num_level_priors, gt_bboxes, gt_labels, gt_bboxes_ignore=gt_bboxes_ignore,
                           pred_scores=pred_scores, pred_bboxes=pred_bboxes, topk=self.topk, alpha=self.alpha,
                           ignore_iof_thr=self.ignore_iof_thr, trace=trace).assign_result()

