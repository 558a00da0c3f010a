"""The "atss" and "rtmdet" schemes: a learner's scene through MMDetection 3.3.0's real assigners.

* ``atss``: :func:`~losscore.mmdet_assigners.atss.atss_assign` on the standard ATSS anchor priors
  (P3-P7, strides 8-128, ONE square anchor of side ``8·s`` per location, centred on the location
  ``(i·s, j·s)``: the top-left corner of cell ``(i, j)``), then the ATSS head's loss
  (``ATSSHead.loss_by_feat``: focal class loss, GIoU box loss weighted by the centerness target,
  centerness BCE).
* ``rtmdet``: :func:`~losscore.mmdet_assigners.dsl.dsl_assign` on RTMDet's point priors (strides
  8/16/32, one point per location at the cell's top-left corner), on the predictions of the scene's
  head, then RTMDet's head loss (``RTMDetHead.loss_by_feat``: quality focal loss on the IoU soft
  label, GIoU box loss weighted by that IoU).

Predictions for the single image come from :func:`losscore.predictions.blended_heads`, as in the other
schemes: ``(1 - progress)·noise + progress·perfect`` with the noise drawn from ``scene.seed``.

* ATSS head per level ``(1, 4 + 1 + C, H, W)``: box deltas ``(dx, dy, dw, dh)`` (normalised by the
  coder's stds 0.1, 0.1, 0.2, 0.2), a centerness logit, C class logits. ATSS's assignment reads
  no prediction, so it runs first; the perfect head writes, at every positive, the deltas of its
  target box, the logit of its centerness target and +8 for its class (-8 for every class
  elsewhere, deltas 0: the anchor itself, centerness logit 0).
* RTMDet head per level ``(1, 4 + C, H, W)``: distance logits ``r`` with ``distance = exp(r)·stride``
  (``RTMDetHead.forward``; rtmdet_l's ``exp_on_reg=True``) for left, top, right, bottom, and C
  class logits. The assignment reads the predictions, so the perfect head is geometric, as YOLOv9's:
  every point strictly inside a box (the smallest such box) predicts that box exactly; +8 for its
  class only at the box's ``min(topk, n)`` points nearest its centre (in strides), -8 elsewhere;
  every other point predicts a box of one stride per side and -8 for every class.

The head losses follow mmdet 3.3.0's ``ATSSHead.loss_by_feat`` / ``RTMDetHead.loss_by_feat`` and
the losses they call (``FocalLoss`` through :mod:`losscore.mmdet.loss`, ``GIoULoss`` on
:func:`~losscore.mmdet_assigners.overlaps.bbox_overlaps`, ``CrossEntropyLoss(use_sigmoid=True)``,
``QualityFocalLoss``); there are no reference vectors for these head losses (the family's vectors
cover the assigners), so they are written here, operation by operation as upstream, and tested
against hand computations.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..mmdet.loss import FocalLoss
from ..predictions import BlendedHeads, blended_heads
from ..scene import (Check, ColumnSpec, FocalSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec,
                     LossTerm, LossTermSpec, MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec,
                     StageCell, resolve_device)
from ..target_spec import TargetColumn as Col, TargetFact, TargetHistogram, TargetMap, TargetSpec, TargetTable
from ..text import T, join
from ..trace import Trace
from .atss import ATSSAssignResult, atss_assign
from .dsl import DSLAssignResult, dsl_assign
from .overlaps import bbox_overlaps
from .priors import anchor_priors, featmap_sizes, point_priors

__all__ = ["ATSS_SPEC", "RTMDET_SPEC", "explain_atss", "explain_rtmdet", "atss_inputs", "rtmdet_inputs",
           "atss_head_loss", "rtmdet_head_loss", "delta2bbox", "bbox2delta", "centerness_target"]

UPSTREAM = "open-mmlab/mmdetection 3.3.0"
ATSS_STRIDES = (8, 16, 32, 64, 128)
ATSS_LEVELS = ("P3", "P4", "P5", "P6", "P7")
ATSS_OCTAVE_BASE_SCALE = 8  # configs/atss/atss_r50_fpn_1x_coco.py: one square anchor of side 8·stride
RTMDET_STRIDES = (8, 16, 32)
RTMDET_LEVELS = ("P3", "P4", "P5")
CLASS_ON, CLASS_OFF = 8.0, -8.0  # the perfect head's class logits
ATSS_STDS = (0.1, 0.1, 0.2, 0.2)  # DeltaXYWHBBoxCoder(target_stds) of the ATSS config
WH_RATIO_CLIP = 16 / 1000
MAX_RATIO = np.abs(np.log(WH_RATIO_CLIP))  # delta2bbox clamps dw, dh into [-4.135, 4.135]
EPS32 = float(torch.finfo(torch.float32).eps)  # weight_reduce_loss: sum / (avg_factor + eps)
GIOU_EPS = 1e-6  # GIoULoss(eps=1e-6)
PROB_EPS = 1e-6
MIN_SIDE_PX = 0.01  # an RTMDet pin side below this (point outside the box) is clamped here
XYXY = ("x1", "y1", "x2", "y2")
LTRB = ("l", "t", "r", "b")
CODE_ATSS_HEAD = "mmdet 3.3.0 mmdet/models/dense_heads/atss_head.py ATSSHead.loss_by_feat"
CODE_RTM_HEAD = "mmdet 3.3.0 mmdet/models/dense_heads/rtmdet_head.py RTMDetHead.loss_by_feat"


# -- grids -----------------------------------------------------------------------------------
class Grid(NamedTuple):
    """The levels of a scene: names, strides, ``(H, W)`` per level, priors per level and offsets."""

    names: tuple[str, ...]
    strides: tuple[int, ...]
    sizes: list[tuple[int, int]]
    counts: list[int]
    starts: list[int]

    def levels(self, anchors: Sequence[Sequence[float]] | None, device: torch.device) -> list[LevelInfo]:
        return [LevelInfo(name, stride, size, None if anchors is None else torch.tensor(anchors[i], device=device))
                for i, (name, stride, size) in enumerate(zip(self.names, self.strides, self.sizes))]

    def locate(self, prior: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat prior indices ``(P,)`` -> level, gi (column), gj (row), each ``(P,)`` int64."""
        starts = torch.tensor(self.starts, device=prior.device)
        widths = torch.tensor([w for _, w in self.sizes], device=prior.device)
        level = torch.bucketize(prior, starts, right=True) - 1
        cell = prior - starts[level]
        return level, cell % widths[level], cell // widths[level]

    def cell(self, prior: int) -> tuple[int, int, int]:
        level = max(i for i, start in enumerate(self.starts) if prior >= start)
        cell = prior - self.starts[level]
        width = self.sizes[level][1]
        return level, cell % width, cell // width

    def split(self, flat: Tensor) -> list[Tensor]:
        """A per-prior ``(N,)`` tensor as one ``(1, H, W)`` map per level."""
        return [chunk.reshape(1, *size) for chunk, size in zip(flat.split(self.counts), self.sizes)]


def _grid(scene: Scene, strides: tuple[int, ...], names: tuple[str, ...]) -> Grid:
    sizes = [tuple(s) for s in featmap_sizes((scene.height, scene.width), strides)]
    counts = [h * w for h, w in sizes]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return Grid(names, strides, sizes, counts, starts)


class Targets(NamedTuple):
    """The scene's boxes as the assigner reads them: targets, and (ATSS) ignore regions."""

    box_index: list[int]  # target t -> index of the scene's box
    bboxes: Tensor  # (M, 4) xyxy px
    labels: Tensor  # (M,) int64
    ignore_index: list[int]  # scene boxes used as ignore regions
    ignore: Tensor  # (I, 4)

    def rows(self) -> Tensor:
        """``(M, 6)`` = (image 0, class, x1, y1, x2, y2): the target rows the assigner consumed."""
        zeros = torch.zeros_like(self.labels, dtype=self.bboxes.dtype)[:, None]
        return torch.cat((zeros, self.labels[:, None].to(self.bboxes.dtype), self.bboxes), 1)


def _targets(scene: Scene, device: torch.device, ignore_class: int = -1) -> Targets:
    keep = [i for i, b in enumerate(scene.boxes) if b.cls != ignore_class]
    ignore = [i for i, b in enumerate(scene.boxes) if b.cls == ignore_class]

    def xyxy(index: list[int]) -> Tensor:
        rows = [[scene.boxes[i].x1, scene.boxes[i].y1, scene.boxes[i].x2, scene.boxes[i].y2] for i in index]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4).to(device)

    labels = torch.tensor([scene.boxes[i].cls for i in keep], dtype=torch.long).to(device)
    return Targets(keep, xyxy(keep), labels, ignore, xyxy(ignore))


# labels without numbers, shared by every cell and check that shows them
_INSIDE = T("inside")
_TAKEN = T("taken")
_KEPT = T("kept")
_LOST = T("lost")
_POSITIVE = T("positive")
_GE_THR = T("≥ thr")
_LT_THR = T("< thr")
_CENTRE_IN = T("centre in")
_CENTRE_OUT = T("centre out")
_THR_NAN = T("thr NaN")
_ZERO_POS = T("0 positives")
_WON = T("won ◆")
_OUTSIDE = T("outside")

_BIAS_NOTE = T("The untrained part of this head is noise around 0 (class probability about 0.5 for every class), "
               "while upstream initialises the class bias at -4.595 (bias_init_with_prob(0.01), the focal-loss paper's "
               "prior): at low progress the class loss here is far larger than a real first step's.")


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(p) - torch.log1p(-p)


# -- the ATSS head's box coder and centerness (mmdet 3.3.0) ---------------------------------------
def bbox2delta(proposals: Tensor, gt: Tensor, stds: Sequence[float] = ATSS_STDS) -> Tensor:
    """``DeltaXYWHBBoxCoder.encode`` (means 0): the deltas ``(dx, dy, dw, dh) / stds`` of ``gt`` from
    ``proposals``, both ``(P, 4)`` xyxy px."""
    px = (proposals[..., 0] + proposals[..., 2]) * 0.5
    py = (proposals[..., 1] + proposals[..., 3]) * 0.5
    pw = proposals[..., 2] - proposals[..., 0]
    ph = proposals[..., 3] - proposals[..., 1]
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas.sub_(deltas.new_zeros(4)[None]).div_(deltas.new_tensor(stds)[None])


def delta2bbox(rois: Tensor, deltas: Tensor, stds: Sequence[float] = ATSS_STDS) -> Tensor:
    """``delta2bbox`` (``DeltaXYWHBBoxCoder.decode`` without ``max_shape``, as the ATSS loss calls it):
    ``(P, 4)`` anchors xyxy and raw deltas -> ``(P, 4)`` boxes xyxy px; ``dw, dh`` (after the stds)
    clamped into ``[-ln(1000/16), ln(1000/16)]``."""
    if deltas.size(0) == 0:
        return deltas
    means = deltas.new_tensor((0.0, 0.0, 0.0, 0.0)).view(1, -1)
    denorm = deltas * deltas.new_tensor(stds).view(1, -1) + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    dwh = dwh.clamp(min=-MAX_RATIO, max=MAX_RATIO)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - (gwh * 0.5), gxy + (gwh * 0.5)], dim=-1)


def centerness_target(anchors: Tensor, gts: Tensor) -> Tensor:
    """``ATSSHead.centerness_target``: ``sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b))`` of the
    anchor centre inside its target, both ``(P, 4)`` xyxy px."""
    anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2
    anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2
    l_ = anchors_cx - gts[:, 0]
    t_ = anchors_cy - gts[:, 1]
    r_ = gts[:, 2] - anchors_cx
    b_ = gts[:, 3] - anchors_cy
    left_right = torch.stack([l_, r_], dim=1)
    top_bottom = torch.stack([t_, b_], dim=1)
    return torch.sqrt((left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                      * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))


def _giou_loss(pred: Tensor, target: Tensor, weight: Tensor, loss_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """``GIoULoss(loss_weight)(pred, target, weight=weight, avg_factor=1.0)``: the loss, the GIoU and
    the weighted per-box terms ``(1 - GIoU)·weight`` it sums."""
    gious = bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=GIOU_EPS)  # (P,)
    if not torch.any(weight > 0):  # upstream's early exit: (pred * weight).sum()
        return (pred * weight.unsqueeze(1)).sum(), gious, torch.zeros_like(weight)
    terms = (1 - gious) * weight
    return loss_weight * (terms.sum() / (1.0 + EPS32)), gious, terms


# -- ATSS head loss -----------------------------------------------------------------------------
class LevelLoss(NamedTuple):
    """One level's loss parts: raw sums (before a divisor) and the values the code returns."""

    cls_raw: Tensor  # Σ element loss · label weight
    cls: Tensor  # the level's loss_cls as returned
    bbox: Tensor  # the level's loss_bbox as returned (before the cross-level divisor)
    third_raw: Tensor  # ATSS: Σ centerness BCE of the positives; RTMDet: unused (0)
    third: Tensor  # ATSS: loss_centerness; RTMDet: unused (0)
    cls_avg: Tensor  # RTMDet: assign_metrics.sum() of the level (ATSS: 0)
    bbox_avg: Tensor  # ATSS: centerness targets' sum; RTMDet: positive IoUs' sum


class HeadLoss(NamedTuple):
    """A head's loss and the per-prior / per-positive quantities it computed."""

    levels: list[LevelLoss]
    loss_cls: list[Tensor]  # per level, after every divisor (upstream's list)
    loss_bbox: list[Tensor]
    loss_third: list[Tensor]  # ATSS loss_centerness; RTMDet empty
    cls_avg_factor: float
    bbox_avg_factor: float
    total: Tensor
    cls_per_prior: Tensor  # (N,) Σ over C of the element loss · label weight
    pos_prior: Tensor  # (P,) prior indices of the positives, ascending
    pred_box: Tensor  # (P, 4) decoded predicted box
    giou: Tensor  # (P,)
    bbox_terms: Tensor  # (P,) (1 - GIoU) · weight, before loss_weight and divisors
    bbox_weight: Tensor  # (P,) ATSS centerness target, RTMDet IoU
    cls_pos: Tensor  # (P,) the element loss of the target class
    prob_pos: Tensor  # (P,) sigmoid of the target-class logit
    third_pos: Tensor  # (P,) ATSS: centerness BCE; RTMDet: unused
    third_prob: Tensor  # (P,) ATSS: sigmoid of the centerness logit


def atss_head_loss(cls_scores: list[Tensor], bbox_preds: list[Tensor], centernesses: list[Tensor], grid: Grid,
                   anchors: Tensor, assign: ATSSAssignResult, gt_bboxes: Tensor, gt_labels: Tensor, num_classes: int,
                   *, gamma: float = 2.0, alpha: float = 0.25, cls_weight: float = 1.0, bbox_weight: float = 2.0,
                   centerness_weight: float = 1.0, trace: Trace | None = None) -> HeadLoss:
    """``ATSSHead.loss_by_feat`` for one image (mmdet 3.3.0, ``PseudoSampler``).

    Args:
        cls_scores (list of Tensor[n_l, C]), bbox_preds (list of Tensor[n_l, 4] raw deltas),
            centernesses (list of Tensor[n_l]): per level, rows in prior order.
        anchors (Tensor[N, 4]): the priors; assign: :func:`atss_assign`'s result.
        gamma, alpha, cls_weight: ``FocalLoss``; bbox_weight: ``GIoULoss``; centerness_weight:
            ``CrossEntropyLoss(use_sigmoid=True)``.

    Per level: focal class loss of every prior (label weight 1 for positives and negatives, 0 for
    ignored priors) divided by ``avg_factor`` = the number of positives (NOT clamped at 1 in 3.3.0:
    with no positive it divides by float32 eps); GIoU loss of the decoded positives weighted by their
    centerness targets (``avg_factor=1.0``); centerness BCE over the positives divided by the number
    of positives. Then every level's box loss is divided by the sum of all centerness targets,
    clamped at 1. Total = Σ loss_cls + Σ loss_bbox + Σ loss_centerness.
    """
    device = anchors.device
    gt_inds = assign.gt_inds
    labels = torch.full_like(gt_inds, num_classes)
    positive = gt_inds > 0
    labels[positive] = gt_labels[gt_inds[positive] - 1]
    label_weights = (gt_inds >= 0).to(anchors.dtype)  # positives and negatives 1, ignored 0
    bbox_targets = torch.zeros_like(anchors)
    bbox_targets[positive] = gt_bboxes[gt_inds[positive] - 1]
    avg_factor = float(torch.tensor(int(positive.sum()), dtype=torch.float).item())
    focal = FocalLoss(gamma=gamma, alpha=alpha, loss_weight=cls_weight)
    levels, cls_rows = [], []
    pos_parts: dict[str, list[Tensor]] = {k: [] for k in ("prior", "box", "giou", "terms", "weight", "cls",
                                                          "prob", "ctr_bce", "ctr_prob")}
    for level, (start, count) in enumerate(zip(grid.starts, grid.counts)):
        sl = slice(start, start + count)
        cls_score, bbox_pred, centerness = cls_scores[level], bbox_preds[level], centernesses[level]
        lab, lw = labels[sl], label_weights[sl]
        evaluated = focal.evaluate(cls_score, lab, lw, avg_factor=avg_factor)
        per_prior = evaluated.terms.loss.sum(1) * lw  # (n_l,); label weights are 0 or 1
        cls_rows.append(per_prior)
        pos_inds = ((lab >= 0) & (lab < num_classes)).nonzero().squeeze(1)
        if len(pos_inds) > 0:
            pos_anchors = anchors[sl][pos_inds]
            pos_targets = bbox_targets[sl][pos_inds]
            ctr_targets = centerness_target(pos_anchors, pos_targets)
            decoded = delta2bbox(pos_anchors, bbox_pred[pos_inds])
            loss_bbox, gious, terms = _giou_loss(decoded, pos_targets, ctr_targets, bbox_weight)
            ctr_bce = F.binary_cross_entropy_with_logits(centerness[pos_inds], ctr_targets, reduction="none")
            valid = torch.ones_like(ctr_targets)  # binary_cross_entropy's valid_mask (labels >= 0)
            ctr_raw = (ctr_bce * valid).sum()
            loss_ctr = centerness_weight * (ctr_raw / (avg_factor + EPS32))
            cls_pos = evaluated.terms.loss[pos_inds, lab[pos_inds]] * lw[pos_inds]
            pos_parts["prior"].append(pos_inds + start)
            pos_parts["box"].append(decoded)
            pos_parts["giou"].append(gious)
            pos_parts["terms"].append(terms)
            pos_parts["weight"].append(ctr_targets)
            pos_parts["cls"].append(cls_pos)
            pos_parts["prob"].append(evaluated.terms.prob[pos_inds, lab[pos_inds]])
            pos_parts["ctr_bce"].append(ctr_bce)
            pos_parts["ctr_prob"].append(centerness[pos_inds].sigmoid())
            ctr_sum = ctr_targets.sum()
        else:
            loss_bbox = bbox_pred.sum() * 0
            loss_ctr = centerness.sum() * 0
            ctr_raw = loss_ctr
            ctr_sum = bbox_targets.new_tensor(0.0)
        levels.append(LevelLoss(per_prior.sum(), evaluated.loss, loss_bbox, ctr_raw, loss_ctr,
                                bbox_targets.new_tensor(0.0), ctr_sum))
        if trace is not None:
            with trace.scope("loss"), trace.scope(grid.names[level]):
                trace.record(
                    "level", "Level losses",
                    "focal class loss of every prior (ignored priors weigh 0) / (number of positives + eps); GIoU "
                    "loss of the decoded positives weighted by their centerness target (avg_factor 1.0); "
                    "centerness BCE of the positives / (number of positives + eps)",
                    code=f"{CODE_ATSS_HEAD} (loss_by_feat_single)",
                    tensors={"prior": (pos_inds + start, "P"), "centerness_target": (pos_parts["weight"][-1] if
                             len(pos_inds) else bbox_targets.new_zeros(0), "P"),
                             "loss_cls": evaluated.loss, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr},
                    values={"avg_factor": avg_factor, "num_pos": int(len(pos_inds)), "gamma": gamma, "alpha": alpha})
    bbox_avg = sum(level.bbox_avg for level in levels)
    bbox_avg_factor = float(torch.as_tensor(bbox_avg).clamp_(min=1).item())
    loss_cls = [level.cls for level in levels]
    loss_bbox = [level.bbox / bbox_avg_factor for level in levels]
    loss_ctr = [level.third for level in levels]
    total = sum(loss_cls) + sum(loss_bbox) + sum(loss_ctr)  # mmengine parse_losses: Σ over keys with "loss"
    if trace is not None:
        trace.record("loss.total", "Head loss",
                     "every level's box loss is divided by the sum of all centerness targets (clamped at 1); the "
                     "total is Σ loss_cls + Σ loss_bbox + Σ loss_centerness over the levels",
                     code=CODE_ATSS_HEAD,
                     tensors={"loss_cls": torch.stack(loss_cls), "loss_bbox": torch.stack(loss_bbox),
                              "loss_centerness": torch.stack(loss_ctr), "total": total},
                     values={"avg_factor": avg_factor, "bbox_avg_factor": bbox_avg_factor})
    cat = _cat_parts(pos_parts, device, anchors.dtype)
    return HeadLoss(levels, loss_cls, loss_bbox, loss_ctr, avg_factor, bbox_avg_factor, total, torch.cat(cls_rows),
                    cat["prior"], cat["box"], cat["giou"], cat["terms"], cat["weight"], cat["cls"], cat["prob"],
                    cat["ctr_bce"], cat["ctr_prob"])


def _cat_parts(parts: dict[str, list[Tensor]], device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    out = {}
    for key, chunks in parts.items():
        if chunks:
            out[key] = torch.cat(chunks)
        elif key == "prior":
            out[key] = torch.zeros(0, dtype=torch.long, device=device)
        elif key == "box":
            out[key] = torch.zeros((0, 4), dtype=dtype, device=device)
        else:
            out[key] = torch.zeros(0, dtype=dtype, device=device)
    return out


# -- RTMDet head loss ---------------------------------------------------------------------------
def quality_focal_loss(pred: Tensor, label: Tensor, score: Tensor, beta: float = 2.0) -> Tensor:
    """``quality_focal_loss`` (mmdet 3.3.0 ``gfocal_loss.py``), unreduced ``(n,)``: every class with
    soft label 0 costs ``BCE(s, 0)·σ(s)^beta``; a positive's own class ``BCE(s, q)·|q - σ(s)|^beta``
    with ``q`` its IoU; summed over the C classes."""
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none") * scale_factor.abs().pow(beta)
    return loss


def rtmdet_head_loss(cls_scores: list[Tensor], bbox_preds: list[Tensor], grid: Grid, assign: DSLAssignResult,
                     gt_bboxes: Tensor, gt_labels: Tensor, num_classes: int, *, beta: float = 2.0,
                     cls_weight: float = 1.0, bbox_weight: float = 2.0, trace: Trace | None = None) -> HeadLoss:
    """``RTMDetHead.loss_by_feat`` for one image (mmdet 3.3.0, ``PseudoSampler``).

    Args:
        cls_scores (list of Tensor[n_l, C]): class logits; bbox_preds (list of Tensor[n_l, 4]): the
            decoded predicted boxes xyxy px, per level in prior order; assign: :func:`dsl_assign`'s result.
        beta, cls_weight: ``QualityFocalLoss``; bbox_weight: ``GIoULoss``.

    Per level: QFL of every prior against its soft label (the positive's IoU with its target for its
    class, 0 elsewhere), summed (``avg_factor=1.0``); GIoU loss of the positives weighted by that IoU
    (``avg_factor=1.0``). Both are then divided by the sum of the positives' IoUs over all levels,
    clamped at 1. Total = Σ loss_cls + Σ loss_bbox.
    """
    device = gt_bboxes.device
    gt_inds = assign.gt_inds
    positive = gt_inds > 0
    labels = torch.full_like(gt_inds, num_classes)
    labels[positive] = gt_labels[gt_inds[positive] - 1]
    bbox_targets = torch.zeros((gt_inds.numel(), 4), dtype=torch.float32, device=device)
    bbox_targets[positive] = gt_bboxes[gt_inds[positive] - 1].to(torch.float32)
    assign_metrics = torch.zeros(gt_inds.numel(), dtype=torch.float32, device=device)
    assign_metrics[positive] = assign.max_overlaps[positive]
    label_weights = torch.ones(gt_inds.numel(), dtype=torch.float32, device=device)  # every prior pos or neg
    levels, cls_rows = [], []
    pos_parts: dict[str, list[Tensor]] = {k: [] for k in ("prior", "box", "giou", "terms", "weight", "cls", "prob")}
    for level, (start, count) in enumerate(zip(grid.starts, grid.counts)):
        sl = slice(start, start + count)
        cls_score, bbox_pred = cls_scores[level], bbox_preds[level]
        lab, metrics, lw = labels[sl], assign_metrics[sl], label_weights[sl]
        element = quality_focal_loss(cls_score, lab, metrics, beta)  # (n_l, C)
        per_prior = element.sum(dim=1, keepdim=False)
        weighted = per_prior * lw
        raw = weighted.sum()
        loss_cls = cls_weight * (raw / (1.0 + EPS32))
        cls_rows.append(weighted)
        pos_inds = ((lab >= 0) & (lab < num_classes)).nonzero().squeeze(1)
        if len(pos_inds) > 0:
            pos_weight = metrics[pos_inds]
            loss_bbox, gious, terms = _giou_loss(bbox_pred[pos_inds], bbox_targets[sl][pos_inds], pos_weight,
                                                 bbox_weight)
            pos_parts["prior"].append(pos_inds + start)
            pos_parts["box"].append(bbox_pred[pos_inds])
            pos_parts["giou"].append(gious)
            pos_parts["terms"].append(terms)
            pos_parts["weight"].append(pos_weight)
            pos_parts["cls"].append(element[pos_inds, lab[pos_inds]])
            pos_parts["prob"].append(cls_score[pos_inds, lab[pos_inds]].sigmoid())
        else:
            loss_bbox = bbox_pred.sum() * 0
            pos_weight = bbox_targets.new_tensor(0.0)
        zero = bbox_targets.new_tensor(0.0)
        levels.append(LevelLoss(raw, loss_cls, loss_bbox, zero, zero, metrics.sum(), pos_weight.sum()))
        if trace is not None:
            with trace.scope("loss"), trace.scope(grid.names[level]):
                trace.record(
                    "level", "Level losses",
                    "quality focal loss of every prior against its soft label (the IoU for a positive's class, 0 "
                    "elsewhere), summed; GIoU loss of the positives weighted by their IoU; both with avg_factor 1.0",
                    code=f"{CODE_RTM_HEAD} (loss_by_feat_single)",
                    tensors={"prior": (pos_inds + start, "P"), "assign_metric": (metrics[pos_inds], "P"),
                             "loss_cls": loss_cls, "loss_bbox": loss_bbox},
                    values={"num_pos": int(len(pos_inds)), "beta": beta})
    cls_avg_factor = float(torch.as_tensor(sum(level.cls_avg for level in levels)).clamp_(min=1).item())
    bbox_avg_factor = float(torch.as_tensor(sum(level.bbox_avg for level in levels)).clamp_(min=1).item())
    loss_cls = [level.cls / cls_avg_factor for level in levels]
    loss_bbox = [level.bbox / bbox_avg_factor for level in levels]
    total = sum(loss_cls) + sum(loss_bbox)
    if trace is not None:
        trace.record("loss.total", "Head loss",
                     "every level's class loss is divided by the sum of the positives' IoUs (the assign metrics, "
                     "clamped at 1), and so is every box loss; the total is Σ loss_cls + Σ loss_bbox",
                     code=CODE_RTM_HEAD,
                     tensors={"loss_cls": torch.stack(loss_cls), "loss_bbox": torch.stack(loss_bbox), "total": total},
                     values={"cls_avg_factor": cls_avg_factor, "bbox_avg_factor": bbox_avg_factor})
    cat = _cat_parts(pos_parts, device, torch.float32)
    empty = torch.zeros_like(cat["cls"])
    return HeadLoss(levels, loss_cls, loss_bbox, [], cls_avg_factor, bbox_avg_factor, total, torch.cat(cls_rows),
                    cat["prior"], cat["box"], cat["giou"], cat["terms"], cat["weight"], cat["cls"], cat["prob"],
                    empty, empty)


# -- ATSS scheme --------------------------------------------------------------------------------
ATSS_PARAMS = (
    ParamSpec("topk", 9, 1, 50, 1, kind="int", doc="candidates per level: each box's k nearest anchor centres",
              upstream="ATSSAssigner(topk=9)"),
    ParamSpec("ignore_iof_thr", -1.0, -1.0, 1.0, 0.05,
              doc="an anchor whose IoF with an ignore box exceeds this is ignored; <= 0 turns ignoring off",
              upstream="ATSSAssigner(ignore_iof_thr=-1)"),
    ParamSpec("ignore_class", -1, -1, 999, 1, kind="int",
              doc="boxes of this class become ignore regions (COCO's crowd boxes), not targets; -1: none",
              upstream="gt_instances_ignore (iscrowd boxes)"),
    ParamSpec("gamma", 2.0, 0.0, 5.0, 0.1, doc="focal gamma of the class loss", upstream="FocalLoss(gamma=2.0)"),
    ParamSpec("alpha", 0.25, 0.0, 1.0, 0.05, doc="focal alpha (weight of positives)", upstream="FocalLoss(alpha=0.25)"),
    ParamSpec("loss_cls_weight", 1.0, 0.0, 10.0, 0.1, doc="loss_weight of the focal class loss",
              upstream="FocalLoss(loss_weight=1.0)"),
    ParamSpec("loss_bbox_weight", 2.0, 0.0, 10.0, 0.1, doc="loss_weight of the GIoU box loss",
              upstream="GIoULoss(loss_weight=2.0)"),
    ParamSpec("loss_centerness_weight", 1.0, 0.0, 10.0, 0.1, doc="loss_weight of the centerness BCE",
              upstream="CrossEntropyLoss(use_sigmoid=True, loss_weight=1.0)"),
)
ATSS_RULES = (
    RuleSpec("iou ≥ mean + std, centre inside", "●",
             "a candidate (k nearest per level) whose IoU reaches its box's mean + std and whose centre lies inside"),
    RuleSpec("shared, largest IoU", "▲", "positive for several boxes; this box has the largest IoU (lower index on a tie)"),
)
ATSS_MAPS = (
    MapSpec("candidate_iou", "IoU of the anchor with the box that has it among its candidates (the largest if several; "
                             "0 for anchors no box picked)", "iou", range=(0.0, 1.0)),
    MapSpec("candidates", "how many boxes have the anchor among their k nearest", "count", scale="count", reduce="sum"),
    MapSpec("fg", "1 where the anchor is positive", "bool", range=(0.0, 1.0)),
    MapSpec("centerness_target", "centerness target of each positive (0 elsewhere): the GIoU weight and the "
                                 "centerness branch's label", "prob", range=(0.0, 1.0)),
    MapSpec("cls_focal", "focal class loss of the anchor summed over the C classes, before the division by the "
                         "number of positives (ignored anchors weigh 0)", "loss"),
)
ATSS_COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8 ... 4 = P7/128)", "index", group="assignment"),
    ColumnSpec("anchor", "0: one square anchor per location", "index", group="assignment"),
    ColumnSpec("gi", "column of the anchor's location; its centre is at x = gi·stride (the cell's left edge)",
               "index", group="assignment"),
    ColumnSpec("gj", "row of the anchor's location; its centre is at y = gj·stride (the cell's top edge)", "index",
               group="assignment"),
    ColumnSpec("rule", "why the anchor is positive", "index", group="assignment"),
    ColumnSpec("iou", "IoU of the anchor with its box (max_overlaps)", "iou", group="assignment",
               formula="IoU {iou} ≥ threshold {threshold} = mean {iou_mean} + std {iou_std}"),
    ColumnSpec("threshold", "the box's threshold: mean + std of its candidates' IoUs", "iou", group="assignment"),
    ColumnSpec("iou_mean", "mean IoU of the box's candidates", "iou", group="assignment"),
    ColumnSpec("iou_std", "standard deviation (divisor K - 1) of the candidates' IoUs", "iou", group="assignment"),
    ColumnSpec("distance", "distance from the anchor centre to the box centre", "px", group="assignment",
               formula="candidate #{rank} of its level, {distance} px from the box centre"),
    ColumnSpec("rank", "rank by distance among the box's candidates on this level (0 = nearest)", "index",
               group="assignment"),
    ColumnSpec("centre_margin", "min(cx - x1, cy - y1, x2 - cx, y2 - cy) of the anchor centre: inside when > 0.01 px",
               "px", group="assignment"),
    ColumnSpec("anchor_box_px", "the anchor", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("pred_box_px", "decoded predicted box (delta2bbox of the anchor and the head's deltas)", "px", XYXY,
               box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("giou", "GIoU of the predicted and target box", "iou", group="iou"),
    ColumnSpec("centerness_target", "sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b)) of the anchor centre in the box",
               "prob", group="centerness",
               formula="centerness target {centerness_target} vs predicted σ = {centerness_prob}"),
    ColumnSpec("centerness_prob", "sigmoid of the predicted centerness logit", "prob", group="centerness"),
    ColumnSpec("centerness_bce", "BCE of the centerness logit against its target", "loss", group="centerness"),
    ColumnSpec("cls_prob", "sigmoid of the target class's logit (p_t of that element)", "prob", group="focal"),
    ColumnSpec("cls_focal", "focal loss of the target-class element", "loss", group="focal",
               formula="focal = α·(1 − p)^γ·(−ln p) at p = {cls_prob}: {cls_focal}"),
    ColumnSpec("bbox_term", "(1 - GIoU)·centerness target: this positive's part of the box loss before the "
                            "loss weight and the divisor", "loss", group="loss",
               formula="(1 − GIoU {giou})·centerness {centerness_target} = {bbox_term}"),
)
ATSS_LOSSES = LossSpec(
    terms=(
        LossTermSpec("loss_cls", "focal loss of every anchor and class (ignored anchors weigh 0), per level",
                     divisor="number of positives + eps (not clamped at 1)", gain="FocalLoss loss_weight"),
        LossTermSpec("loss_bbox", "Σ over positives of (1 - GIoU)·centerness target, per level, × loss_weight",
                     divisor="Σ centerness targets (at least 1)", gain="GIoULoss loss_weight (inside each level)"),
        LossTermSpec("loss_centerness", "centerness BCE of the positives, per level",
                     divisor="number of positives + eps", gain="CrossEntropyLoss loss_weight"),
    ),
    formula="Σ loss_cls + Σ loss_bbox + Σ loss_centerness over P3-P7",
)
ATSS_PHASES = (
    PhaseSpec("inputs", "Inputs", "anchors of every level, targets, ignore regions"),
    PhaseSpec("atss", "ATSS assignment", "k nearest per level, IoU threshold mean + std, centre inside, shared anchors"),
    PhaseSpec("loss", "Head loss", "focal class loss, GIoU box loss weighted by centerness, centerness BCE"),
)
ATSS_ANCHORS = tuple(((float(ATSS_OCTAVE_BASE_SCALE * s), float(ATSS_OCTAVE_BASE_SCALE * s)),) for s in ATSS_STRIDES)


@functools.lru_cache(maxsize=16)
def _cached_priors(kind: str, sizes: tuple[tuple[int, int], ...], strides: tuple[int, ...], device: str) -> Tensor:
    """The priors of one grid (a drag re-runs the same image size many times a second). Built outside
    inference mode, as normal tensors, and never modified by the assigners."""
    with torch.inference_mode(False):
        if kind == "anchor":
            return anchor_priors(sizes, strides, octave_base_scale=ATSS_OCTAVE_BASE_SCALE, scales_per_octave=1,
                                 device=device).priors
        return point_priors(sizes, strides, device=device).priors


def atss_inputs(scene: Scene, device: torch.device | None = None):
    """The grid, anchors, targets and assignment of a validated ``atss`` scene (what :func:`explain_atss`
    runs first); for tests and for rebuilding the head."""
    device = resolve_device(scene.device) if device is None else device
    grid = _grid(scene, ATSS_STRIDES, ATSS_LEVELS)
    anchors = _cached_priors("anchor", tuple(grid.sizes), ATSS_STRIDES, str(device))
    return grid, anchors, _targets(scene, device, int(scene.param("ignore_class")))


def _atss_shapes(grid: Grid, nc: int) -> list[tuple[int, int, int, int]]:
    return [(1, 5 + nc, h, w) for h, w in grid.sizes]


def atss_perfect_writes(grid: Grid, anchors: Tensor, assign: ATSSAssignResult, targets: Targets, nc: int
                        ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The ATSS head that predicts every positive's box exactly: background (deltas 0, centerness 0,
    classes -8) and per level ``(index, values)`` at the positives (deltas of the target, the logit of
    the centerness target, +8 for the class)."""
    device = anchors.device
    background = torch.zeros(5 + nc, device=device)
    background[5:] = CLASS_OFF
    pos = (assign.gt_inds > 0).nonzero().squeeze(1)
    t = assign.gt_inds[pos] - 1
    boxes = targets.bboxes[t]
    deltas = bbox2delta(anchors[pos], boxes)  # (P, 4)
    ctr_logit = _logit(centerness_target(anchors[pos], boxes))
    values = torch.cat((deltas, ctr_logit[:, None], torch.full_like(ctr_logit[:, None], CLASS_ON)), 1)  # (P, 6)
    channel = torch.cat((torch.arange(5, device=device).expand(len(pos), 5), 5 + targets.labels[t][:, None]), 1)
    writes = []
    for start, count in zip(grid.starts, grid.counts):
        here = (pos >= start) & (pos < start + count)
        cell = (pos[here] - start)[:, None]
        writes.append(((channel[here] * count + cell).reshape(-1), values[here].reshape(-1)))
    return background.view(1, -1, 1, 1), writes


def _atss_pins(scene: Scene, heads: BlendedHeads, grid: Grid, anchors: Tensor, assign: ATSSAssignResult,
               notes: list) -> None:
    for index, pin in enumerate(scene.pins):
        height, width = grid.sizes[pin.level]
        cell = pin.gj * width + pin.gi
        prior = grid.starts[pin.level] + cell
        anchor = anchors[prior:prior + 1]
        box = anchor.new_tensor([[pin.cx - pin.w / 2, pin.cy - pin.h / 2, pin.cx + pin.w / 2, pin.cy + pin.h / 2]])
        deltas = bbox2delta(anchor, box)[0]
        name = grid.names[pin.level]
        ratio = (deltas[2:] * deltas.new_tensor(ATSS_STDS[2:])).abs().max()
        if float(ratio) > MAX_RATIO:
            notes.append(T("Pin {index} ({level} ({gi}, {gj})) is unreachable: delta2bbox clamps the size change to "
                           "exp(±{limit:.4g}) (between 16/1000 and 1000/16 of the anchor side); the box is clamped.",
                           index=index, level=name, gi=pin.gi, gj=pin.gj, limit=float(MAX_RATIO)))
        if int(assign.gt_inds[prior]) <= 0:
            notes.append(T("Pin {index} sits on {level} ({gi}, {gj}), which is not a positive: ATSS's assignment "
                           "reads no prediction and the box loss only reads positives, so this pin changes nothing.",
                           index=index, level=name, gi=pin.gi, gj=pin.gj))
        heads.write(pin.level, torch.arange(4, device=anchors.device) * (height * width) + cell, deltas)


def _level_rows(head: Tensor, first: int, count: int | None = None) -> Tensor:
    """Channels ``[first, first + count)`` of a ``(1, ch, H, W)`` head as ``(H·W, count)`` rows, a new
    contiguous tensor (upstream's ``permute(0, 2, 3, 1).reshape(-1, count)``)."""
    part = head[:, first:] if count is None else head[:, first:first + count]
    rows = part.permute(0, 2, 3, 1).reshape(-1, part.shape[1])
    if rows.untyped_storage().data_ptr() == head.untyped_storage().data_ptr():  # a view (H = W = 1): copy it
        rows = rows.clone()
    return rows.contiguous()


def explain_atss(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run ATSS's assignment and the ATSS head loss on one drawn image."""
    device = resolve_device(scene.device)
    nc = scene.nc
    grid, anchors, targets = atss_inputs(scene, device)
    notes: list = []
    ignore_thr = float(scene.param("ignore_iof_thr"))
    if trace is not None:
        trace.record("inputs.priors", "Anchors and targets",
                     "one square anchor of side 8·stride at every location (i·s, j·s) of P3-P7; the targets are the "
                     "drawn boxes (boxes of ignore_class become ignore regions)",
                     code="mmdet 3.3.0 AnchorGenerator.grid_priors",
                     tensors={"targets": (targets.bboxes, "M 4"), "ignore": (targets.ignore, "I 4")},
                     values={"num_level_priors": grid.counts, "strides": list(ATSS_STRIDES),
                             "anchor_sides": [ATSS_OCTAVE_BASE_SCALE * s for s in ATSS_STRIDES]})
    with torch.no_grad():
        assign = atss_assign(anchors, grid.counts, targets.bboxes, targets.labels,
                             gt_bboxes_ignore=targets.ignore if targets.ignore_index else None,
                             topk=int(scene.param("topk")), ignore_iof_thr=ignore_thr, level_names=ATSS_LEVELS,
                             trace=trace)
        background, writes = atss_perfect_writes(grid, anchors, assign, targets, nc)
        generator = torch.Generator().manual_seed(scene.seed)
        with blended_heads(_atss_shapes(grid, nc), background, writes, scene.progress, generator) as heads:
            _atss_pins(scene, heads, grid, anchors, assign, notes)
            cls_scores = [_level_rows(h, 5) for h in heads.heads]
            bbox_preds = [_level_rows(h, 0, 4) for h in heads.heads]
            centernesses = [_level_rows(h, 4, 1).reshape(-1) for h in heads.heads]
        loss = atss_head_loss(cls_scores, bbox_preds, centernesses, grid, anchors, assign, targets.bboxes,
                              targets.labels, nc, gamma=float(scene.param("gamma")), alpha=float(scene.param("alpha")),
                              cls_weight=float(scene.param("loss_cls_weight")),
                              bbox_weight=float(scene.param("loss_bbox_weight")),
                              centerness_weight=float(scene.param("loss_centerness_weight")), trace=trace)
    return _atss_result(scene, grid, anchors, targets, assign, loss, notes, trace, device)


def _atss_result(scene: Scene, grid: Grid, anchors: Tensor, targets: Targets, assign: ATSSAssignResult,
                 loss: HeadLoss, notes: list, trace: Trace | None, device: torch.device) -> SceneResult:
    N = anchors.shape[0]
    box_of = torch.tensor(targets.box_index + [-1], dtype=torch.long, device=device)  # target -> scene box
    cand = assign.candidates
    pos = loss.pos_prior  # (P,) ascending
    t = assign.gt_inds[pos] - 1
    level, gi, gj = grid.locate(pos)
    P = pos.numel()
    fdt = anchors.dtype
    if cand is not None and P:
        # the candidate row of each positive in its target's column
        rows = (cand.candidate_idxs[:, t] == pos[None, :]).to(torch.uint8).argmax(0)  # (P,)
        level_first = torch.tensor([sum(cand.num_candidates_per_level[:i]) for i in
                                    range(len(cand.num_candidates_per_level))], device=device)
        claims = torch.bincount(cand.candidate_idxs[cand.is_pos], minlength=N)
        rule = (claims[pos] > 1).long()
        columns = {"threshold": cand.iou_thr[t], "iou_mean": cand.iou_mean[t], "iou_std": cand.iou_std[t],
                   "distance": cand.candidate_distances[rows, t], "rank": rows - level_first[level],
                   "centre_margin": cand.centre_margin[rows, t]}
    else:
        empty = anchors.new_zeros(0)
        rule = torch.zeros(0, dtype=torch.long, device=device)
        columns = {"threshold": empty, "iou_mean": empty, "iou_std": empty, "distance": empty,
                   "rank": rule, "centre_margin": empty}
    positives = {"gt": box_of[t], "level": level, "anchor": torch.zeros_like(pos), "gi": gi, "gj": gj, "rule": rule,
                 "iou": assign.max_overlaps[pos], **columns, "anchor_box_px": anchors[pos],
                 "pred_box_px": loss.pred_box, "target_box_px": targets.bboxes[t], "giou": loss.giou,
                 "centerness_target": loss.bbox_weight, "centerness_prob": loss.third_prob,
                 "centerness_bce": loss.third_pos, "cls_prob": loss.prob_pos, "cls_focal": loss.cls_pos,
                 "bbox_term": loss.bbox_terms}
    positives = {k: v.detach() for k, v in positives.items()}

    candidate_iou = anchors.new_zeros(N)
    candidates = anchors.new_zeros(N)
    if cand is not None:
        flat_idx = cand.candidate_idxs.reshape(-1)
        candidate_iou = candidate_iou.scatter_reduce(0, flat_idx, cand.candidate_overlaps.reshape(-1).to(fdt), "amax")
        candidates = candidates.index_add(0, flat_idx, torch.ones_like(flat_idx, dtype=fdt))
    fg = (assign.gt_inds > 0).to(fdt)
    ctr_map = anchors.new_zeros(N)
    ctr_map[pos] = loss.bbox_weight
    maps = {"candidate_iou": grid.split(candidate_iou), "candidates": grid.split(candidates), "fg": grid.split(fg),
            "centerness_target": grid.split(ctr_map), "cls_focal": grid.split(loss.cls_per_prior.detach())}

    losses = {"total": loss.total.detach(), "loss_cls": sum(loss.loss_cls), "loss_bbox": sum(loss.loss_bbox),
              "loss_centerness": sum(loss.loss_third)}
    for name, values in (("loss_cls", loss.loss_cls), ("loss_bbox", loss.loss_bbox),
                         ("loss_centerness", loss.loss_third)):
        for level_name, value in zip(grid.names, values):
            losses[f"{name}.{level_name}"] = value.detach()
    losses["avg_factor"] = torch.tensor(loss.cls_avg_factor, device=device)
    losses["bbox_avg_factor"] = torch.tensor(loss.bbox_avg_factor, device=device)
    losses = {k: torch.as_tensor(v, device=device).detach().reshape(()) for k, v in losses.items()}

    gains = (float(scene.param("loss_cls_weight")), float(scene.param("loss_bbox_weight")),
             float(scene.param("loss_centerness_weight")))
    avg = loss.cls_avg_factor + EPS32
    cls_sum = sum(lv.cls_raw for lv in loss.levels)
    ctr_sum = sum(lv.third_raw for lv in loss.levels)
    terms = (
        LossTerm("loss_cls", tuple(LossPart(n, lv.cls_raw) for n, lv in zip(grid.names, loss.levels)),
                 cls_sum, losses["loss_cls"], gain=gains[0], divisor=avg, normalised=cls_sum / avg),
        LossTerm("loss_bbox", tuple(LossPart(n, lv.bbox) for n, lv in zip(grid.names, loss.levels)),
                 sum(lv.bbox for lv in loss.levels), losses["loss_bbox"], divisor=loss.bbox_avg_factor,
                 normalised=losses["loss_bbox"]),
        LossTerm("loss_centerness", tuple(LossPart(n, lv.third_raw) for n, lv in zip(grid.names, loss.levels)),
                 ctr_sum, losses["loss_centerness"], gain=gains[2], divisor=avg, normalised=ctr_sum / avg),
    )
    composition = LossComposition(terms, losses["total"], losses["total"])
    notes += _atss_notes(scene, grid, targets, assign, loss, positives)
    box_cells = _atss_box_cells(scene, grid, targets, assign)
    return SceneResult(
        scheme="atss", levels=grid.levels(ATSS_ANCHORS, device), positives=positives, maps=maps, losses=losses,
        trace=trace, device=str(device), composition=composition, box_cells=box_cells, notes=notes,
        targets=targets.rows(), checks=_atss_checks(grid, anchors, targets, assign),
        stage_cells=_atss_stage_cells(grid, targets, assign, pos, box_of[t]))


def _atss_box_cells(scene: Scene, grid: Grid, targets: Targets, assign: ATSSAssignResult) -> Tensor:
    """(boxes, L, 2): each box's nearest anchor per level (its first candidate; for an ignore box the
    location nearest its centre)."""
    cells = []
    for b in scene.boxes:
        cx, cy = (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2
        cells.append([[min(max(round(cx / s), 0), w - 1), min(max(round(cy / s), 0), h - 1)]
                      for s, (h, w) in zip(grid.strides, grid.sizes)])
    cand = assign.candidates
    if cand is not None:
        first = [sum(cand.num_candidates_per_level[:i]) for i in range(len(grid.names))]
        nearest = cand.candidate_idxs[first].cpu().tolist()  # (L, M)
        for t, box in enumerate(targets.box_index):
            for level in range(len(grid.names)):
                _, gi, gj = grid.cell(nearest[level][t])
                cells[box][level] = [gi, gj]
    return torch.tensor(cells, dtype=torch.long).reshape(len(scene.boxes), len(grid.names), 2)


def _fmt_cell(grid: Grid, prior: int) -> tuple[str, int, int, int]:
    level, gi, gj = grid.cell(prior)
    return grid.names[level], level, gi, gj


def _cell_table(grid: Grid):
    """``prior -> (level name, level, gi, gj)`` for every prior, looked up from lists built once."""
    level, gi, gj = (t.tolist() for t in grid.locate(torch.arange(sum(grid.counts))))
    names = grid.names
    return lambda prior: (names[level[prior]], level[prior], gi[prior], gj[prior])


def _atss_checks(grid: Grid, anchors: Tensor, targets: Targets, assign: ATSSAssignResult):
    cand = assign.candidates
    if cand is None:
        return None

    def build() -> list[Check]:
        idx = cand.candidate_idxs.cpu()
        ious = cand.candidate_overlaps.cpu()
        dist = cand.candidate_distances.cpu()
        margin = cand.centre_margin.cpu()
        iou_ge, inside, is_pos = cand.iou_ge_thr.cpu(), cand.center_in_gt.cpu(), cand.is_pos.cpu()
        mean, std, thr = cand.iou_mean.cpu().tolist(), cand.iou_std.cpu().tolist(), cand.iou_thr.cpu().tolist()
        gt_inds = assign.gt_inds.cpu()
        centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).cpu()
        reasons = cand.zero_positive_reason.cpu().tolist()
        level_of_row = [lv for lv, k in enumerate(cand.num_candidates_per_level) for _ in range(k)]
        first_row = [sum(cand.num_candidates_per_level[:i]) for i in range(len(cand.num_candidates_per_level))]
        claims = torch.bincount(idx[is_pos], minlength=anchors.shape[0]).tolist()
        locate = _cell_table(grid)
        out: list[Check] = []
        K, M = idx.shape
        for t in range(M):
            box = targets.box_index[t]
            th, mu, sd = thr[t], mean[t], std[t]
            for k in range(K):
                prior = int(idx[k, t])
                name, level, gi, gj = locate(prior)
                iou = float(ious[k, t])
                rank = k - first_row[level_of_row[k]]
                values = {"iou": iou, "mean": mu, "std": sd, "threshold": th, "distance": float(dist[k, t]),
                          "rank": rank, "K": K, "margin": float(margin[k, t]), "prior": prior}
                if math.isnan(th):
                    text = T("{level} ({gi}, {gj}): IoU {iou:.3g}, but the threshold is NaN (one candidate: the std "
                             "of one value is NaN): not positive", level=name, gi=gi, gj=gj, iou=iou)
                    label = _THR_NAN
                elif bool(iou_ge[k, t]):
                    text = T("{level} ({gi}, {gj}): candidate #{rank}, IoU {iou:.3g} ≥ threshold {thr:.3g} (mean "
                             "{mean:.3g} + std {std:.3g}): passes", level=name, gi=gi, gj=gj, rank=rank, iou=iou,
                             thr=th, mean=mu, std=sd)
                    label = T("{iou:.2f} ≥ {thr:.2f}", iou=iou, thr=th)
                else:
                    text = T("{level} ({gi}, {gj}): candidate #{rank}, IoU {iou:.3g} < threshold {thr:.3g} (mean "
                             "{mean:.3g} + std {std:.3g}): not positive", level=name, gi=gi, gj=gj, rank=rank, iou=iou,
                             thr=th, mean=mu, std=sd)
                    label = T("{iou:.2f} < {thr:.2f}", iou=iou, thr=th)
                out.append(Check(box, level, 0, gi, gj, "iou_threshold", bool(iou_ge[k, t]), text, values, label))
                cx, cy = centres[prior].tolist()
                m = float(margin[k, t])
                if bool(inside[k, t]):
                    text = T("{level} ({gi}, {gj}): anchor centre ({cx:.4g}, {cy:.4g}) lies inside the box by "
                             "{margin:.3g} px (> 0.01): passes", level=name, gi=gi, gj=gj, cx=cx, cy=cy, margin=m)
                    label = _CENTRE_IN
                else:
                    text = T("{level} ({gi}, {gj}): anchor centre ({cx:.4g}, {cy:.4g}) is not inside the box "
                             "(margin {margin:.3g} px, needs > 0.01): not positive", level=name, gi=gi, gj=gj, cx=cx,
                             cy=cy, margin=m)
                    label = _CENTRE_OUT
                out.append(Check(box, level, 0, gi, gj, "centre_inside", bool(inside[k, t]), text,
                                 {**values, "cx": cx, "cy": cy}, label))
                if bool(is_pos[k, t]):
                    owner = int(gt_inds[prior]) - 1
                    if owner != t:
                        other_iou = float(ious[:, owner][idx[:, owner] == prior][0])
                        out.append(Check(box, level, 0, gi, gj, "shared", False,
                                         T("{level} ({gi}, {gj}): also positive for box {other}, whose IoU {other_iou:.3g} "
                                           "is larger (or equal, with a lower index) than {iou:.3g}: goes to box {other}",
                                           level=name, gi=gi, gj=gj, other=targets.box_index[owner], other_iou=other_iou,
                                           iou=iou),
                                         {**values, "winner": targets.box_index[owner], "winner_iou": other_iou},
                                         T("→ #{other}", other=targets.box_index[owner])))
                    elif claims[prior] > 1:
                        out.append(Check(box, level, 0, gi, gj, "shared", True,
                                         T("{level} ({gi}, {gj}): positive for {n} boxes; this box has the largest IoU "
                                           "{iou:.3g} and keeps it", level=name, gi=gi, gj=gj, n=claims[prior], iou=iou),
                                         values, _KEPT))
            if reasons[t]:
                best = int(ious[:, t].argmax())
                name, level, gi, gj = _fmt_cell(grid, int(idx[best, t]))
                out.append(Check(box, level, 0, gi, gj, "zero_positives", False,
                                 _zero_positive_text(reasons[t], box, th, mu, sd, float(ious[best, t]), name, gi, gj,
                                                     int(iou_ge[:, t].sum())),
                                 {"reason": reasons[t], "threshold": th, "mean": mu, "std": sd,
                                  "best": float(ious[best, t])}, _ZERO_POS))
        return out

    return build


def _zero_positive_text(reason: int, box: int, thr: float, mean: float, std: float, best: float, level: str,
                        gi: int, gj: int, passing: int):
    if reason == 1:
        return T("Box {box} gets no positive: it has a single candidate, the unbiased std of one value is NaN, so "
                 "the threshold is NaN and IoU ≥ NaN is false.", box=box)
    if reason == 2:
        return T("Box {box} gets no positive: its threshold {thr:.3g} (mean {mean:.3g} + std {std:.3g}) is above "
                 "every candidate's IoU; the best is {best:.3g} at {level} ({gi}, {gj}) (sfzhang15/ATSS#90).",
                 box=box, thr=thr, mean=mean, std=std, best=best, level=level, gi=gi, gj=gj)
    if reason == 3:
        return T("Box {box} gets no positive: {n} candidate(s) reach the threshold {thr:.3g}, but none has its anchor "
                 "centre inside the box by more than 0.01 px.", box=box, n=passing, thr=thr)
    return T("Box {box} gets no positive: every anchor that passed both tests went to another box with a larger IoU.",
             box=box)


def _atss_notes(scene: Scene, grid: Grid, targets: Targets, assign: ATSSAssignResult, loss: HeadLoss,
                positives: dict[str, Tensor]) -> list:
    notes: list = []
    cand = assign.candidates
    P = positives["gt"].numel()
    per_level = [int((positives["level"] == i).sum()) for i in range(len(grid.names))]
    notes.append(T("{count} positive anchors from {boxes} boxes ({levels}).", count=P, boxes=len(targets.box_index),
                   levels=", ".join(f"{n} {c}" for n, c in zip(grid.names, per_level))))
    notes.append(T("Each anchor is a square of side 8·stride centred on its location (gi·stride, gj·stride): the top-left "
                   "corner of cell (gi, gj), not its centre (AnchorGenerator, center_offset 0)."))
    if cand is not None:
        K = sum(cand.num_candidates_per_level)
        notes.append(T("Each box takes its {k} nearest anchor centres on each of the {levels} levels: {K} candidates; "
                       "the threshold is mean + std of their IoUs (std with divisor K - 1), a candidate passes at "
                       "IoU ≥ threshold (inclusive) and with its centre inside the box by more than 0.01 px.",
                       k=int(scene.param("topk")), levels=len(grid.names), K=K))
        ious = cand.candidate_overlaps
        for t, reason in enumerate(cand.zero_positive_reason.tolist()):
            if reason:
                best = int(ious[:, t].argmax())
                name, _, gi, gj = _fmt_cell(grid, int(cand.candidate_idxs[best, t]))
                notes.append(_zero_positive_text(reason, targets.box_index[t], float(cand.iou_thr[t]),
                                                 float(cand.iou_mean[t]), float(cand.iou_std[t]),
                                                 float(ious[best, t]), name, gi, gj, int(cand.iou_ge_thr[:, t].sum())))
        shared = int((positives["rule"] == 1).sum())
        if shared:
            notes.append(T("{n} anchor(s) passed both tests for several boxes and went to the box with the largest IoU "
                           "(the lower index on an exact tie).", n=shared))
        if bool(cand.iou_thr.isnan().any()):
            notes.append(T("A threshold is NaN: with a single candidate (topk 1 on one level) the unbiased std of one "
                           "value is NaN; such a box gets no positive."))
    if targets.ignore_index:
        thr = float(scene.param("ignore_iof_thr"))
        ignored = int((assign.gt_inds == -1).sum())
        if thr <= 0:
            notes.append(T("Boxes {boxes} are ignore regions, but ignore_iof_thr is {thr:g} (<= 0): upstream then "
                           "ignores nothing.", boxes=targets.ignore_index, thr=thr))
        elif cand is None:
            notes.append(T("Boxes {boxes} are ignore regions, but there is no target: upstream returns early and marks "
                           "no anchor as ignored.", boxes=targets.ignore_index))
        else:
            notes.append(T("{n} anchor(s) lie in an ignore region (IoF over the anchor's area > {thr:g}): gt_inds -1, "
                           "class loss weight 0, and distance 1e8 so they are candidates only on a level with at most "
                           "topk anchors; one that still passes both tests becomes positive.", n=ignored, thr=thr))
    num_pos = loss.cls_avg_factor
    if num_pos == 0:
        notes.append(T("No positive: mmdet 3.3.0 divides the class loss by avg_factor = number of positives = 0 plus "
                       "float32 eps (1.19e-7), not by max(.., 1) as mmdet 2.x did, so loss_cls = {value:.4g} is huge; "
                       "training never meets this in practice because avg_factor is summed over a batch.",
                       value=float(sum(loss.loss_cls))))
    if scene.progress < 1:
        notes.append(_BIAS_NOTE)
    notes.append(T("Losses follow mmdet 3.3.0's ATSSHead.loss_by_feat (FocalLoss, GIoULoss weight 2 on the decoded "
                   "positives weighted by their centerness target, centerness BCE); this head loss is computed here, "
                   "not covered by the family's reference vectors (they cover the assigner)."))
    if scene.progress == 1.0 and P:
        notes.append(T("At progress 1 the centerness logit is the logit of its target, yet the centerness BCE stays "
                       "above 0: BCE(t, t) is the entropy of the soft target t."))
    for name, value in (("total", loss.total),):
        if not bool(torch.isfinite(value)):
            notes.append(T("The {name} loss is not finite: a decoded box or the centerness BCE overflowed.", name=name))
    return notes


def _atss_stage_cells(grid: Grid, targets: Targets, assign: ATSSAssignResult, pos: Tensor, pos_box: Tensor):
    cand = assign.candidates

    def build() -> dict[str, list[StageCell]]:
        cells: dict[str, list[StageCell]] = {}
        if cand is not None:
            idx, ious = cand.candidate_idxs.cpu(), cand.candidate_overlaps.cpu()
            dist = cand.candidate_distances.cpu()
            iou_ge, inside, is_pos = cand.iou_ge_thr.cpu(), cand.center_in_gt.cpu(), cand.is_pos.cpu()
            level_of_row = [lv for lv, k in enumerate(cand.num_candidates_per_level) for _ in range(k)]
            first_row = [sum(cand.num_candidates_per_level[:i]) for i in range(len(cand.num_candidates_per_level))]
            gt_inds = assign.gt_inds.cpu()
            claims = torch.bincount(idx[is_pos], minlength=int(gt_inds.numel())).tolist()
            locate = _cell_table(grid)
            K, M = idx.shape
            for t in range(M):
                box = targets.box_index[t]
                for k in range(K):
                    prior = int(idx[k, t])
                    name, level, gi, gj = locate(prior)
                    rank = k - first_row[level_of_row[k]]
                    cells.setdefault(f"atss.{name}.candidates", []).append(
                        StageCell(box, level, 0, gi, gj, T("#{rank} {d:.3g} px", rank=rank, d=float(dist[k, t]))))
                    cells.setdefault("atss.overlaps", []).append(
                        StageCell(box, level, 0, gi, gj, T("IoU {iou:.2f}", iou=float(ious[k, t]))))
                    cells.setdefault("atss.threshold", []).append(
                        StageCell(box, level, 0, gi, gj, _GE_THR if bool(iou_ge[k, t]) else _LT_THR))
                    if bool(iou_ge[k, t]):
                        cells.setdefault("atss.centre_test", []).append(
                            StageCell(box, level, 0, gi, gj, _CENTRE_IN if bool(inside[k, t]) else _CENTRE_OUT))
                    if bool(is_pos[k, t]) and claims[prior] > 1:
                        won = int(gt_inds[prior]) - 1 == t
                        cells.setdefault("atss.conflicts", []).append(
                            StageCell(box, level, 0, gi, gj, _KEPT if won else _LOST))
        level, gi, gj = grid.locate(pos)
        for b, lv, i, j in zip(pos_box.tolist(), level.tolist(), gi.tolist(), gj.tolist()):
            cells.setdefault("atss.result", []).append(StageCell(b, lv, 0, i, j, T("box {box}", box=b)))
            cells.setdefault(f"loss.{grid.names[lv]}.level", []).append(StageCell(b, lv, 0, i, j, _POSITIVE))
        return cells

    return build


ATSS_TARGET = TargetSpec(
    facts=(TargetFact("candidates (k nearest per level)", "iou_threshold", "K", "count"),
           TargetFact("mean IoU of the candidates", "iou_threshold", "mean", "iou"),
           TargetFact("std of their IoUs (K − 1)", "iou_threshold", "std", "iou"),
           TargetFact("IoU threshold = mean + std", "iou_threshold", "threshold", "iou")),
    tables=(
        TargetTable("iou_threshold", "Its candidates, by IoU", "positive needs IoU ≥ threshold and the centre inside",
                    (Col("iou", "IoU", "iou"), Col("distance", "distance", "px"), Col("rank", "rank on level", "index")),
                    sort="iou", descending=True),
        TargetTable("centre_inside", "Anchor centre inside the box?", "by more than 0.01 px",
                    (Col("margin", "margin", "px"), Col("iou", "IoU", "iou")), sort="iou", descending=True),
        TargetTable("shared", "Anchors positive for several boxes", "the box with the largest IoU keeps it",
                    (Col("iou", "IoU", "iou"),)),
    ),
    histogram=TargetHistogram("iou_threshold", "iou", "IoU of its candidates", (("mean", "mean"), ("threshold", "threshold")),
                              passed="IoU ≥ threshold", failed="below"),
    maps=(TargetMap("box.iou", "iou_threshold", "iou", "IoU of each of this box's candidates with it", "iou"),),
    verdicts=("zero_positives",),
)


ATSS_SPEC = SchemeSpec(
    name="atss", title="ATSS (mmdet 3.3.0)", family="mmdet_assigners", strides=ATSS_STRIDES, params=ATSS_PARAMS,
    explain=explain_atss, upstream=f"{UPSTREAM} mmdet/models/task_modules/assigners/atss_assigner.py, "
                                   "mmdet/models/dense_heads/atss_head.py",
    doc="adaptive training sample selection: k nearest anchors per level, IoU threshold mean + std, centre inside; "
        "focal + GIoU·centerness + centerness BCE",
    maps=ATSS_MAPS, rules=ATSS_RULES, columns=ATSS_COLUMNS, losses=ATSS_LOSSES,
    focal=FocalSpec(gamma="gamma", alpha="alpha", applies_to="the class loss", points=("cls_prob", "cls_focal")),
    phases=ATSS_PHASES, anchors_px=ATSS_ANCHORS, level_names=ATSS_LEVELS, pred_box="pred_box_px",
    target_box="target_box_px",
    target=ATSS_TARGET,
    inspector=InspectorSpec(groups=(("assignment", "ATSS selection"), ("decode", "Decode"), ("iou", "IoU"),
                                    ("centerness", "Centerness"), ("focal", "Class (focal)"), ("loss", "Loss shares")),
                            target_columns=("iou", "centerness_target"), loss_columns=("cls_focal", "bbox_term",
                                                                                      "centerness_bce"),
                            target_map="centerness_target", loss_map="cls_focal"),
)


# -- RTMDet scheme ------------------------------------------------------------------------------
RTMDET_PARAMS = (
    ParamSpec("topk", 13, 1, 50, 1, kind="int", doc="dynamic k = int(sum of each box's topk largest IoUs), at least 1",
              upstream="DynamicSoftLabelAssigner(topk=13)"),
    ParamSpec("iou_weight", 3.0, 0.0, 10.0, 0.1, doc="weight of the IoU cost -ln(IoU + 1e-7)",
              upstream="DynamicSoftLabelAssigner(iou_weight=3.0)"),
    ParamSpec("soft_center_radius", 3.0, 0.0, 10.0, 0.1,
              doc="centre cost 10^(distance in strides - radius): 1 at this many strides from the box centre",
              upstream="DynamicSoftLabelAssigner(soft_center_radius=3.0)"),
    ParamSpec("qfl_beta", 2.0, 0.0, 5.0, 0.1, doc="beta of the quality focal loss |q - σ|^beta",
              upstream="QualityFocalLoss(beta=2.0)"),
    ParamSpec("loss_cls_weight", 1.0, 0.0, 10.0, 0.1, doc="loss_weight of the quality focal loss",
              upstream="QualityFocalLoss(loss_weight=1.0)"),
    ParamSpec("loss_bbox_weight", 2.0, 0.0, 10.0, 0.1, doc="loss_weight of the GIoU box loss",
              upstream="GIoULoss(loss_weight=2.0)"),
)
RTMDET_RULES = (
    RuleSpec("lowest cost", "●", "among its box's dynamic-k lowest costs, taken by no other box"),
    RuleSpec("shared, lowest cost", "▲", "taken by several boxes; this box has the lowest cost over all boxes"),
    RuleSpec("won without taking it", "◆", "taken by other boxes, but this box, which did not take it, has the lowest "
                                           "cost over all boxes (upstream's argmin over every box)"),
)
RTMDET_MAPS = (
    MapSpec("cost", "total cost of the point against its box: the assigned box where it is positive, else its lowest-cost "
                    "box; 0 at points inside no box (not candidates)", "loss", scale="log"),
    MapSpec("cost_class", "soft-label class cost against that same box", "loss", scale="log"),
    MapSpec("cost_iou", "IoU cost -ln(IoU + 1e-7)·iou_weight against that same box", "loss", scale="log"),
    MapSpec("cost_centre", "centre cost 10^(distance/stride - radius) against that same box", "loss", scale="log"),
    MapSpec("iou", "IoU of the point's predicted box with that same box", "iou", range=(0.0, 1.0)),
    MapSpec("fg", "1 where the point is positive", "bool", range=(0.0, 1.0)),
    MapSpec("assign_metric", "the class target (soft label) of each positive: its IoU; 0 elsewhere", "prob",
            range=(0.0, 1.0)),
    MapSpec("qfl", "quality focal loss of the point summed over the C classes, before the division", "loss"),
)
RTMDET_COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "0: one point per location", "index", group="assignment"),
    ColumnSpec("gi", "column; the point is at x = gi·stride (the cell's left edge)", "index", group="assignment"),
    ColumnSpec("gj", "row; the point is at y = gj·stride (the cell's top edge)", "index", group="assignment"),
    ColumnSpec("rule", "why the point is positive", "index", group="assignment"),
    ColumnSpec("cost", "total cost of the point against its box", "loss", group="cost",
               formula="cost = class {cost_class} + IoU {cost_iou} + centre {cost_centre} = {cost}; rank {cost_rank} "
                       "of dynamic k {dynamic_k}"),
    ColumnSpec("cost_class", "Σ over all classes of BCE(s, t)·|t - σ(s)|², t = IoU for the box's class, 0 else", "loss",
               group="cost"),
    ColumnSpec("cost_iou", "-ln(IoU + 1e-7)·iou_weight", "loss", group="cost",
               formula="IoU cost = −ln({iou} + 1e−7)·iou_weight = {cost_iou}"),
    ColumnSpec("cost_centre", "10^(distance - soft_center_radius), distance in strides", "loss", group="cost",
               formula="centre cost = 10^({distance} − radius) = {cost_centre}"),
    ColumnSpec("distance", "distance from the point to the box centre, in strides (divided by stride_w)", "grid",
               group="cost"),
    ColumnSpec("cost_rank", "rank of this cost in its box's column of all valid points (0 = lowest)", "index",
               group="assignment"),
    ColumnSpec("dynamic_k", "int(sum of the box's topk largest IoUs), at least 1", "count", group="assignment",
               formula="dynamic k = int({topk_iou_sum}) = {dynamic_k}"),
    ColumnSpec("topk_iou_sum", "sum of the box's topk largest IoUs over all valid points", "ratio", group="assignment"),
    ColumnSpec("inside_own_gt", "the point lies strictly inside its own box (a positive may lie outside it)", "bool",
               group="assignment"),
    ColumnSpec("iou", "IoU of the predicted box with the target: the soft label and the box-loss weight", "iou",
               group="iou"),
    ColumnSpec("pred_box_px", "decoded predicted box (point ± exp(r)·stride)", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("giou", "GIoU of the predicted and target box", "iou", group="iou"),
    ColumnSpec("cls_prob", "sigmoid of the target class's logit", "prob", group="class"),
    ColumnSpec("qfl", "quality focal loss of the target-class element: BCE(s, IoU)·|IoU - σ(s)|^beta", "loss",
               group="class", formula="QFL = BCE(s, {iou})·|{iou} − {cls_prob}|^β = {qfl}"),
    ColumnSpec("bbox_term", "(1 - GIoU)·IoU: this positive's part of the box loss before the loss weight and the "
                            "divisor", "loss", group="loss", formula="(1 − GIoU {giou})·IoU {iou} = {bbox_term}"),
)
RTMDET_LOSSES = LossSpec(
    terms=(
        LossTermSpec("loss_cls", "quality focal loss of every point and class, per level (avg_factor 1.0)",
                     divisor="Σ positives' IoU (at least 1)", gain="QualityFocalLoss loss_weight (inside each level)"),
        LossTermSpec("loss_bbox", "Σ over positives of (1 - GIoU)·IoU, per level, × loss_weight",
                     divisor="Σ positives' IoU (at least 1)", gain="GIoULoss loss_weight (inside each level)"),
    ),
    formula="Σ loss_cls + Σ loss_bbox over P3-P5",
)
RTMDET_PHASES = (
    PhaseSpec("inputs", "Inputs", "points of every level and the head's decoded predictions"),
    PhaseSpec("dsl", "Dynamic soft label assignment", "valid points, three costs, dynamic k, lowest costs, conflicts"),
    PhaseSpec("loss", "Head loss", "quality focal loss and GIoU box loss, divided by the positives' IoU sum"),
)


def _rtmdet_shapes(grid: Grid, nc: int) -> list[tuple[int, int, int, int]]:
    return [(1, 4 + nc, h, w) for h, w in grid.sizes]


def rtmdet_inputs(scene: Scene, device: torch.device | None = None):
    """The grid, points ``(N, 4)`` and targets of a validated ``rtmdet`` scene."""
    device = resolve_device(scene.device) if device is None else device
    grid = _grid(scene, RTMDET_STRIDES, RTMDET_LEVELS)
    points = _cached_priors("point", tuple(grid.sizes), RTMDET_STRIDES, str(device))
    return grid, points, _targets(scene, device)


@functools.lru_cache(maxsize=8)
def _cached_rtmdet_writes(boxes: tuple, sizes: tuple, nc: int, topk: int, device: str):
    """:func:`rtmdet_perfect_writes` of one scene's boxes, kept while a learner moves a slider or a pin (the
    perfect head depends on the boxes only); normal tensors, never modified by the blending."""
    with torch.inference_mode(False):
        grid = Grid(RTMDET_LEVELS, RTMDET_STRIDES, list(sizes), [h * w for h, w in sizes],
                    [sum(h * w for h, w in sizes[:i]) for i in range(len(sizes))])
        points = _cached_priors("point", sizes, RTMDET_STRIDES, device)
        labels = torch.tensor([b[0] for b in boxes], dtype=torch.long).to(device)
        xyxy = torch.tensor([b[1:] for b in boxes], dtype=torch.float32).reshape(-1, 4).to(device)
        targets = Targets(list(range(len(boxes))), xyxy, labels, [], xyxy.new_zeros((0, 4)))
        return rtmdet_perfect_writes(grid, points, targets, nc, topk=topk)


def rtmdet_perfect_writes(grid: Grid, points: Tensor, targets: Targets, nc: int, *, topk: int = 13
                          ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The perfect RTMDet head: background (distance logits 0: one stride per side; classes -8) and per
    level the writes at every point strictly inside a box (the smallest one): ``log(distance / stride)``
    of that box, so it predicts the box exactly. The class logit is +8 only at each box's
    ``min(topk, n)`` points nearest its centre (in strides, as DSL's centre cost measures it) among the
    ``n`` points that predict it: close to what :func:`dsl_assign` picks on these exact boxes (IoU 1,
    so dynamic k is about min(topk, n), and with equal class costs the centre cost ranks them; it is
    not run here, it would cost as much as the assignment itself). So at progress 1 the in-box points
    that do not become positive pay almost no class loss."""
    device = points.device
    background = torch.zeros(4 + nc, device=device)
    background[4:] = CLASS_OFF
    boxes = targets.bboxes
    if not len(targets.box_index):
        empty = (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device))
        return background.view(1, -1, 1, 1), [empty for _ in grid.counts]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    px, py = points[:, 0:1], points[:, 1:2]  # (N, 1)
    inside = (px > boxes[:, 0]) & (py > boxes[:, 1]) & (px < boxes[:, 2]) & (py < boxes[:, 3])  # (N, M)
    owner = torch.where(inside, area[None], math.inf).argmin(1)  # (N,) smallest box holding the point
    covered = inside.any(1)
    box = boxes[owner]
    x, y = px[:, 0], py[:, 0]
    sides = torch.stack((x - box[:, 0], y - box[:, 1], box[:, 2] - x, box[:, 3] - y), 1)  # (N, 4), > 0 where covered
    # per box, rank its points by distance to its centre in strides
    held = covered.nonzero().squeeze(1)  # (K,)
    centre = (boxes[owner[held], :2] + boxes[owner[held], 2:]) / 2
    distance = (points[held, :2] - centre).pow(2).sum(1).sqrt() / points[held, 2]
    order = distance.argsort(stable=True)
    order = order[owner[held][order].argsort(stable=True)]  # grouped by box, nearest first
    grouped = owner[held][order]
    first = torch.searchsorted(grouped, grouped, right=False)
    rank = torch.arange(len(order), device=device) - first
    counts = torch.bincount(grouped, minlength=boxes.shape[0])
    chosen = held[order[rank < counts[grouped].clamp(max=topk)]]
    class_on = torch.zeros_like(covered)
    class_on[chosen] = True
    writes = []
    for start, count, stride in zip(grid.starts, grid.counts, grid.strides):
        sl = slice(start, start + count)
        cell = covered[sl].nonzero().squeeze(1)  # (K,)
        logits = torch.log(sides[sl][cell] / stride)  # (K, 4)
        index = [(torch.arange(4, device=device)[None] * count + cell[:, None]).reshape(-1)]
        values = [logits.reshape(-1)]
        on = class_on[sl].nonzero().squeeze(1)  # points given a class
        index.append((4 + targets.labels[owner[sl][on]]) * count + on)
        values.append(torch.full((len(on),), CLASS_ON, device=device))
        writes.append((torch.cat(index), torch.cat(values)))
    return background.view(1, -1, 1, 1), writes


def _rtmdet_pins(scene: Scene, heads: BlendedHeads, grid: Grid, points: Tensor, notes: list) -> None:
    for index, pin in enumerate(scene.pins):
        height, width = grid.sizes[pin.level]
        stride = grid.strides[pin.level]
        cell = pin.gj * width + pin.gi
        x, y = float(points[grid.starts[pin.level] + cell, 0]), float(points[grid.starts[pin.level] + cell, 1])
        sides = [x - (pin.cx - pin.w / 2), y - (pin.cy - pin.h / 2), pin.cx + pin.w / 2 - x, pin.cy + pin.h / 2 - y]
        if min(sides) < MIN_SIDE_PX:
            notes.append(T("Pin {index} ({level} ({gi}, {gj})) is unreachable: the point ({x:g}, {y:g}) lies outside "
                           "the pinned box, but RTMDet predicts exp(r)·stride > 0 per side; the negative sides are "
                           "clamped to {side:g} px.", index=index, level=grid.names[pin.level], gi=pin.gi, gj=pin.gj,
                           x=x, y=y, side=MIN_SIDE_PX))
        distances = points.new_tensor([max(s, MIN_SIDE_PX) for s in sides])
        heads.write(pin.level, torch.arange(4, device=points.device) * (height * width) + cell,
                    torch.log(distances / stride))


def explain_rtmdet(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run RTMDet's dynamic soft label assignment and head loss on one drawn image."""
    device = resolve_device(scene.device)
    nc = scene.nc
    grid, points, targets = rtmdet_inputs(scene, device)
    notes: list = []
    background, writes = _cached_rtmdet_writes(tuple((b.cls, b.x1, b.y1, b.x2, b.y2) for b in scene.boxes),
                                               tuple(grid.sizes), nc, int(scene.param("topk")), str(device))
    generator = torch.Generator().manual_seed(scene.seed)
    with torch.no_grad():
        with blended_heads(_rtmdet_shapes(grid, nc), background, writes, scene.progress, generator) as heads:
            _rtmdet_pins(scene, heads, grid, points, notes)
            cls_scores = [_level_rows(h, 4) for h in heads.heads]
            distances = [_level_rows(h, 0, 4).exp() * s for h, s in zip(heads.heads, grid.strides)]
        bbox_preds = [_distance2bbox(points[start:start + count], d)
                      for start, count, d in zip(grid.starts, grid.counts, distances)]
        pred_scores, pred_bboxes = torch.cat(cls_scores), torch.cat(bbox_preds)
        if trace is not None:
            trace.record("inputs.predictions", "Points and predictions",
                         "one point per location (i·s, j·s), the top-left corner of its cell; each predicts "
                         "distances exp(r)·stride to the left, top, right and bottom and C class logits",
                         code="mmdet 3.3.0 MlvlPointGenerator(offset=0), RTMDetHead.forward, distance2bbox",
                         tensors={"pred_bboxes": (pred_bboxes, "N 4"), "targets": (targets.bboxes, "M 4")},
                         values={"num_level_priors": grid.counts, "strides": list(RTMDET_STRIDES),
                                 "seed": scene.seed, "progress": scene.progress})
        assign = dsl_assign(points, pred_bboxes, pred_scores, targets.bboxes, targets.labels,
                            soft_center_radius=float(scene.param("soft_center_radius")), topk=int(scene.param("topk")),
                            iou_weight=float(scene.param("iou_weight")), trace=trace)
        loss = rtmdet_head_loss(cls_scores, bbox_preds, grid, assign, targets.bboxes, targets.labels, nc,
                                beta=float(scene.param("qfl_beta")), cls_weight=float(scene.param("loss_cls_weight")),
                                bbox_weight=float(scene.param("loss_bbox_weight")), trace=trace)
    return _rtmdet_result(scene, grid, points, targets, assign, loss, pred_bboxes, notes, trace, device)


def _distance2bbox(points: Tensor, distance: Tensor) -> Tensor:
    """``distance2bbox`` (no ``max_shape``): ``(x - l, y - t, x + r, y + b)``."""
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    return torch.stack([x1, y1, x2, y2], -1)


def _rtmdet_result(scene: Scene, grid: Grid, points: Tensor, targets: Targets, assign: DSLAssignResult,
                   loss: HeadLoss, pred_bboxes: Tensor, notes: list, trace: Trace | None,
                   device: torch.device) -> SceneResult:
    N = points.shape[0]
    fdt = torch.float32
    d = assign.details
    pos = loss.pos_prior
    t = assign.gt_inds[pos] - 1
    level, gi, gj = grid.locate(pos)
    long0 = torch.zeros(0, dtype=torch.long, device=device)
    maps_flat = {name: torch.zeros(N, dtype=fdt, device=device) for name in
                 ("cost", "cost_class", "cost_iou", "cost_centre", "iou")}
    if d is not None and d.valid_indices.numel():
        row_of_prior = torch.full((N,), -1, dtype=torch.long, device=device)
        row_of_prior[d.valid_indices] = torch.arange(d.valid_indices.numel(), device=device)
        rows = row_of_prior[pos]  # (P,)
        cost = d.cost_matrix
        ranks = _cost_ranks(cost, rows, t, d.dynamic_ks) if pos.numel() else long0
        shared = d.matching_before_conflict.sum(1) > 1
        took = d.matching_before_conflict[rows, t]
        rule = torch.where(shared[rows], torch.where(took, 1, 2), 0).long()
        extra = {"cost": cost[rows, t], "cost_class": d.soft_cls_cost[rows, t], "cost_iou": d.iou_cost[rows, t],
                 "cost_centre": d.soft_center_prior[rows, t], "distance": d.distance[rows, t], "cost_rank": ranks,
                 "dynamic_k": d.dynamic_ks.long()[t], "topk_iou_sum": d.topk_iou_sum[t],
                 "inside_own_gt": d.inside[rows, t], "iou": d.pairwise_ious[rows, t]}
        chosen = torch.where(d.matched_gt >= 0, d.matched_gt, cost.argmin(1))  # (V,)
        v = torch.arange(d.valid_indices.numel(), device=device)
        for name, matrix in (("cost", cost), ("cost_class", d.soft_cls_cost), ("cost_iou", d.iou_cost),
                             ("cost_centre", d.soft_center_prior), ("iou", d.pairwise_ious)):
            maps_flat[name][d.valid_indices] = matrix[v, chosen].to(fdt)
    else:
        empty = torch.zeros(0, dtype=fdt, device=device)
        rule = long0
        extra = {"cost": empty, "cost_class": empty, "cost_iou": empty, "cost_centre": empty, "distance": empty,
                 "cost_rank": long0, "dynamic_k": long0, "topk_iou_sum": empty,
                 "inside_own_gt": torch.zeros(0, dtype=torch.bool, device=device), "iou": empty}
    positives = {"gt": t, "level": level, "anchor": torch.zeros_like(pos), "gi": gi, "gj": gj, "rule": rule,
                 **extra, "pred_box_px": pred_bboxes[pos], "target_box_px": targets.bboxes[t], "giou": loss.giou,
                 "cls_prob": loss.prob_pos, "qfl": loss.cls_pos, "bbox_term": loss.bbox_terms}
    positives = {k: v.detach() for k, v in positives.items()}
    fg = (assign.gt_inds > 0).to(fdt)
    metric = torch.zeros(N, dtype=fdt, device=device)
    metric[pos] = loss.bbox_weight
    maps = {name: grid.split(maps_flat[name]) for name in ("cost", "cost_class", "cost_iou", "cost_centre", "iou")}
    maps.update(fg=grid.split(fg), assign_metric=grid.split(metric), qfl=grid.split(loss.cls_per_prior.detach()))
    maps = {m.name: maps[m.name] for m in RTMDET_MAPS}

    losses = {"total": loss.total, "loss_cls": sum(loss.loss_cls), "loss_bbox": sum(loss.loss_bbox)}
    for name, values in (("loss_cls", loss.loss_cls), ("loss_bbox", loss.loss_bbox)):
        for level_name, value in zip(grid.names, values):
            losses[f"{name}.{level_name}"] = value
    losses["cls_avg_factor"] = loss.cls_avg_factor
    losses["bbox_avg_factor"] = loss.bbox_avg_factor
    losses = {k: torch.as_tensor(v, device=device).detach().reshape(()) for k, v in losses.items()}
    terms = (
        LossTerm("loss_cls", tuple(LossPart(n, lv.cls) for n, lv in zip(grid.names, loss.levels)),
                 sum(lv.cls for lv in loss.levels), losses["loss_cls"], divisor=loss.cls_avg_factor,
                 normalised=losses["loss_cls"]),
        LossTerm("loss_bbox", tuple(LossPart(n, lv.bbox) for n, lv in zip(grid.names, loss.levels)),
                 sum(lv.bbox for lv in loss.levels), losses["loss_bbox"], divisor=loss.bbox_avg_factor,
                 normalised=losses["loss_bbox"]),
    )
    composition = LossComposition(terms, losses["total"], losses["total"])
    notes += _rtmdet_notes(scene, grid, targets, assign, loss, positives)
    return SceneResult(
        scheme="rtmdet", levels=grid.levels(None, device), positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, box_cells=None, notes=notes, targets=targets.rows(),
        checks=_rtmdet_checks(grid, targets, assign), stage_cells=_rtmdet_stage_cells(grid, targets, assign, pos, t))


def _cost_ranks(cost: Tensor, rows: Tensor, t: Tensor, ks: Tensor) -> Tensor:
    """``(P,)`` how many valid points cost strictly less than ``cost[rows, t]`` in column ``t``: counted
    among each column's ``max(k) + 1`` lowest costs when the cost is within them, else in the whole column."""
    kk = min(int(ks.max()) + 1, cost.shape[0])
    lowest = cost.topk(kk, dim=0, largest=False).values  # (kk, M) ascending
    c = cost[rows, t]
    ranks = (lowest[:, t] < c[None]).sum(0)
    beyond = ~(c <= lowest[-1, t])  # (and NaN): count over the whole column
    if bool(beyond.any()):
        ranks[beyond] = (cost[:, t[beyond]] < c[beyond][None]).sum(0)
    return ranks


def _rtmdet_notes(scene: Scene, grid: Grid, targets: Targets, assign: DSLAssignResult, loss: HeadLoss,
                  positives: dict[str, Tensor]) -> list:
    notes: list = []
    d = assign.details
    P = positives["gt"].numel()
    per_level = [int((positives["level"] == i).sum()) for i in range(len(grid.names))]
    notes.append(T("{count} positive points from {boxes} boxes ({levels}).", count=P, boxes=len(targets.box_index),
                   levels=", ".join(f"{n} {c}" for n, c in zip(grid.names, per_level))))
    notes.append(T("Each point sits at (gi·stride, gj·stride), the top-left corner of cell (gi, gj) (MlvlPointGenerator "
                   "offset 0); only points strictly inside some box are candidates (a point on an edge is not)."))
    notes.append(T("Defaults: the assigner's own defaults (soft_center_radius 3.0, topk 13, iou_weight 3.0) are what "
                   "RTMDet's configs use (they set only topk=13); the losses follow rtmdet_l (QualityFocalLoss beta 2, "
                   "GIoULoss weight 2, distances exp(r)·stride as exp_on_reg=True)."))
    if d is None:
        if not targets.box_index:
            notes.append(T("No box: upstream returns early, every point is background with max_overlaps 0.0."))
    elif d.valid_indices.numel() == 0:
        notes.append(T("No point lies strictly inside any box: upstream returns early, every point is background with "
                       "max_overlaps 0.0 (not -1e8), and no box gets a positive."))
    else:
        ks = d.dynamic_ks.tolist()
        notes.append(T("Dynamic k per box (int of the sum of its {topk} largest IoUs, truncated, at least 1): {ks}.",
                       topk=min(int(scene.param("topk")), d.valid_indices.numel()),
                       ks=join([T("box {b}: {k}", b=b, k=k) for b, k in zip(targets.box_index, ks)])))
        outside = int((~positives["inside_own_gt"]).sum())
        if outside:
            notes.append(T("{n} positive(s) lie outside their own box: every box ranks ALL valid points (inside any "
                           "box) by cost, so a point inside another box can be matched.", n=outside))
        won = int((positives["rule"] == 2).sum())
        if won:
            notes.append(T("{n} positive(s) went to a box that did not take them: a point taken by several boxes "
                           "keeps the lowest cost over ALL boxes.", n=won))
        per_gt = torch.bincount(positives["gt"], minlength=len(targets.box_index)).tolist()
        for b, count in zip(targets.box_index, per_gt):
            if not count:
                inside = int(d.inside[:, b].sum())
                if inside == 0:
                    notes.append(T("Box {box} gets no positive: no point lies strictly inside it, and every point it "
                                   "took went to another box with a lower cost.", box=b))
                else:
                    notes.append(T("Box {box} gets no positive: each point among its dynamic k lowest costs went to "
                                   "another box with a lower cost there.", box=b))
        infinite = int(d.soft_center_prior.isinf().sum())
        if infinite:
            notes.append(T("{n} centre cost(s) are inf: 10^(distance - radius) overflows float32 for a point about 41.5 "
                           "strides or more from a box centre (a point of another box far away, or of a huge box); such "
                           "a pair costs inf and is taken only when a box has no finite cost left.", n=infinite))
    if scene.progress < 1:
        notes.append(_BIAS_NOTE)
    notes.append(T("The distance of the centre cost is divided by the point's stride_w only (priors[:, 2]); dynamic k "
                   "truncates (a sum of 5.99 gives 5)."))
    notes.append(T("Both head losses are divided by the sum of the positives' IoUs ({value:.4g}, clamped at 1), not "
                   "by the number of positives; this head loss is computed here (mmdet 3.3.0 RTMDetHead.loss_by_feat), "
                   "not covered by the family's reference vectors.", value=loss.cls_avg_factor))
    if not bool(torch.isfinite(loss.total)):
        notes.append(T("The total loss is not finite: a predicted distance exp(r)·stride overflowed."))
    return notes


def _rtmdet_checks(grid: Grid, targets: Targets, assign: DSLAssignResult):
    d = assign.details
    if d is None or d.valid_indices.numel() == 0:
        return None

    def build() -> list[Check]:
        valid = d.valid_indices.cpu().tolist()
        cost, cls, iouc, cen = (d.cost_matrix.cpu(), d.soft_cls_cost.cpu(), d.iou_cost.cpu(),
                                d.soft_center_prior.cpu())
        ious, dist, inside = d.pairwise_ious.cpu(), d.distance.cpu(), d.inside.cpu()
        took, matched = d.matching_before_conflict.cpu(), d.matched_gt.cpu().tolist()
        ks = d.dynamic_ks.cpu().tolist()
        locate = _cell_table(grid)
        order = cost.argsort(dim=0, stable=True)  # (V, M)
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(cost.shape[0])[:, None].expand_as(order))
        out: list[Check] = []
        for t in range(cost.shape[1]):
            box = targets.box_index[t]
            for r in (inside[:, t] | took[:, t] | (torch.tensor(matched) == t)).nonzero().squeeze(1).tolist():
                name, level, gi, gj = locate(valid[r])
                c = float(cost[r, t])
                values = {"cost": c, "cost_class": float(cls[r, t]), "cost_iou": float(iouc[r, t]),
                          "cost_centre": float(cen[r, t]), "iou": float(ious[r, t]), "distance": float(dist[r, t]),
                          "rank": int(rank[r, t]), "dynamic_k": ks[t], "inside": bool(inside[r, t])}
                head = dict(level=name, gi=gi, gj=gj, cost=c, cls=values["cost_class"], iouc=values["cost_iou"],
                            iou=values["iou"], cen=values["cost_centre"], d=values["distance"], rank=values["rank"],
                            k=ks[t])
                taken = bool(took[r, t])
                if taken:
                    text = T("{level} ({gi}, {gj}): cost {cost:.4g} = class {cls:.3g} + IoU {iouc:.3g} (IoU {iou:.3g}) + "
                             "centre {cen:.3g} ({d:.3g} strides): rank {rank} < dynamic k {k}: taken", **head)
                    label = T("#{rank} < {k}", rank=values["rank"], k=ks[t])
                else:
                    text = T("{level} ({gi}, {gj}): cost {cost:.4g} = class {cls:.3g} + IoU {iouc:.3g} (IoU {iou:.3g}) + "
                             "centre {cen:.3g} ({d:.3g} strides): rank {rank} ≥ dynamic k {k}: not taken", **head)
                    label = T("#{rank} ≥ {k}", rank=values["rank"], k=ks[t])
                out.append(Check(box, level, 0, gi, gj, "dynamic_k", taken, text, values, label))
                owner = matched[r]
                if taken and owner != t and owner >= 0:
                    out.append(Check(box, level, 0, gi, gj, "conflict", False,
                                     T("{level} ({gi}, {gj}): also taken by another box; box {other} costs less here "
                                       "({other_cost:.4g} < {cost:.4g}) and gets it", level=name, gi=gi, gj=gj,
                                       other=targets.box_index[owner], other_cost=float(cost[r, owner]), cost=c),
                                     {**values, "winner": targets.box_index[owner]},
                                     T("→ #{other}", other=targets.box_index[owner])))
                elif not taken and owner == t:
                    out.append(Check(box, level, 0, gi, gj, "conflict", True,
                                     T("{level} ({gi}, {gj}): not among this box's lowest costs, but other boxes took it "
                                       "and this box has the lowest cost over all boxes: it goes to this box",
                                       level=name, gi=gi, gj=gj), values, _WON))
                elif taken and owner == t and int(took[r].sum()) > 1:
                    out.append(Check(box, level, 0, gi, gj, "conflict", True,
                                     T("{level} ({gi}, {gj}): taken by {n} boxes; this box has the lowest cost and keeps "
                                       "it", level=name, gi=gi, gj=gj, n=int(took[r].sum())), values, _KEPT))
                if taken and owner == t and not values["inside"]:
                    out.append(Check(box, level, 0, gi, gj, "outside", True,
                                     T("{level} ({gi}, {gj}): positive for this box although the point lies outside it "
                                       "(it is inside another box, so it is a valid candidate)", level=name, gi=gi,
                                       gj=gj), values, _OUTSIDE))
        return out

    return build


def _rtmdet_stage_cells(grid: Grid, targets: Targets, assign: DSLAssignResult, pos: Tensor, t: Tensor):
    d = assign.details

    def build() -> dict[str, list[StageCell]]:
        cells: dict[str, list[StageCell]] = {}
        if d is not None and d.valid_indices.numel():
            locate = _cell_table(grid)
            valid = d.valid_indices.cpu().tolist()
            inside, took = d.inside.cpu(), d.matching_before_conflict.cpu()
            cost, ious = d.cost_matrix.cpu(), d.pairwise_ious.cpu()
            for r, c in inside.nonzero().tolist():
                _, level, gi, gj = locate(valid[r])
                cells.setdefault("dsl.valid", []).append(StageCell(targets.box_index[c], level, 0, gi, gj, _INSIDE))
            K = d.topk_ious.shape[0]
            cheapest = cost.topk(min(2 * K, cost.shape[0]), dim=0, largest=False).indices  # (2K, M)
            top_rows = ious.topk(K, dim=0).indices  # (K, M)
            for c in range(ious.shape[1]):
                box = targets.box_index[c]
                for r in cheapest[:, c].tolist():
                    _, level, gi, gj = locate(valid[r])
                    cells.setdefault("dsl.cost", []).append(
                        StageCell(box, level, 0, gi, gj, T("cost {cost:.3g}", cost=float(cost[r, c]))))
                for r in top_rows[:, c].tolist():
                    _, level, gi, gj = locate(valid[r])
                    cells.setdefault("dsl.dynamic_k", []).append(
                        StageCell(box, level, 0, gi, gj, T("IoU {iou:.2f}", iou=float(ious[r, c]))))
            for r, c in took.nonzero().tolist():
                _, level, gi, gj = locate(valid[r])
                cells.setdefault("dsl.matching", []).append(
                    StageCell(targets.box_index[c], level, 0, gi, gj, _TAKEN))
                if int(took[r].sum()) > 1:
                    winner = int(d.matched_gt[r])
                    cells.setdefault("dsl.conflicts", []).append(
                        StageCell(targets.box_index[c], level, 0, gi, gj,
                                  _KEPT if winner == c else T("→ #{other}", other=targets.box_index[winner])))
        level, gi, gj = grid.locate(pos)
        for b, lv, i, j in zip(t.tolist(), level.tolist(), gi.tolist(), gj.tolist()):
            cells.setdefault("dsl.result", []).append(StageCell(b, lv, 0, i, j, T("box {box}", box=b)))
            cells.setdefault(f"loss.{grid.names[lv]}.level", []).append(StageCell(b, lv, 0, i, j, _POSITIVE))
        return cells

    return build


RTMDET_TARGET = TargetSpec(
    facts=(TargetFact("dynamic k = int(sum of its 13 largest IoUs)", "dynamic_k", "dynamic_k", "count"),),
    tables=(
        TargetTable("dynamic_k", "Its points, cheapest first", "cost = class + IoU + centre; the dynamic-k cheapest are "
                    "taken (✓), unless a cheaper box takes the point", (
                        Col("cost", "cost", "loss"), Col("cost_class", "class", "loss"), Col("cost_iou", "IoU cost", "loss"),
                        Col("cost_centre", "centre", "loss"), Col("iou", "IoU", "iou"), Col("distance", "strides", "ratio")),
                    sort="rank", limit=30),
        TargetTable("conflict", "Points several boxes took", "the lowest cost keeps it",
                    (Col("cost", "cost", "loss"), Col("iou", "IoU", "iou"))),
        TargetTable("outside", "Positive outside the box", "a valid point (inside some box) can be taken by another box",
                    (Col("cost", "cost", "loss"), Col("iou", "IoU", "iou"))),
    ),
    maps=(TargetMap("box.cost", "dynamic_k", "cost", "this box's total cost at each valid point", "loss", "log"),
          TargetMap("box.cost_class", "dynamic_k", "cost_class", "this box's soft-label class cost at each valid point", "loss"),
          TargetMap("box.cost_iou", "dynamic_k", "cost_iou", "this box's IoU cost −ln(IoU) · 3 at each valid point", "loss"),
          TargetMap("box.cost_centre", "dynamic_k", "cost_centre", "this box's soft centre prior 10^(d − 3) at each valid "
                    "point", "loss", "log"),
          TargetMap("box.iou", "dynamic_k", "iou", "IoU of each point's predicted box with this box", "iou")),
)


RTMDET_SPEC = SchemeSpec(
    name="rtmdet", title="RTMDet (dynamic soft labels, mmdet 3.3.0)", family="mmdet_assigners",
    strides=RTMDET_STRIDES, params=RTMDET_PARAMS, explain=explain_rtmdet,
    upstream=f"{UPSTREAM} mmdet/models/task_modules/assigners/dynamic_soft_label_assigner.py, "
             "mmdet/models/dense_heads/rtmdet_head.py",
    doc="points inside a box are candidates; cost = soft-label class cost + IoU cost + centre cost; each box takes its "
        "dynamic-k cheapest points; quality focal loss + IoU-weighted GIoU",
    maps=RTMDET_MAPS, rules=RTMDET_RULES, columns=RTMDET_COLUMNS, losses=RTMDET_LOSSES, focal=None,
    phases=RTMDET_PHASES, anchors_px=None, level_names=RTMDET_LEVELS, pred_box="pred_box_px",
    target_box="target_box_px",
    target=RTMDET_TARGET,
    inspector=InspectorSpec(groups=(("assignment", "Dynamic k"), ("cost", "Cost terms"), ("decode", "Decode"),
                                    ("iou", "IoU"), ("class", "Class (QFL)"), ("loss", "Loss shares")),
                            target_columns=("iou",), loss_columns=("qfl", "bbox_term"),
                            target_map="assign_metric", loss_map="qfl"),
)
