"""The Ultralytics schemes: a learner's scene through the real 8.4.190 losses.

* ``yolov8`` — YOLOv8 / YOLO11 ``v8DetectionLoss`` (``reg_max`` 16: DFL), one task-aligned branch,
  with the small-object enlargement as a switch.
* ``yolov10`` — ``E2ELoss`` with a ``reg_max`` 16 head: a one-to-many branch (top-k 10) and a
  one-to-one branch (top-k 7, then ``topk2`` 1), weighted ``o2m`` / ``o2o`` by the epoch.
* ``yolo26`` — the same ``E2ELoss`` with a ``reg_max`` 1 head: no DFL, an L1 term on the side
  distances under the ``dfl`` gain.

Predictions come from :func:`losscore.predictions.blended_heads` (seed and progress, as every
scheme). The perfect head (progress 1) writes, at every anchor whose centre lies inside a box (the
box as the assigner tests it: enlarged to ``stride_val`` when the switch is on; the smallest such
box wins), the box channels that decode to that box and a class logit of +8 for its class (-8 for
the others). ``reg_max`` 16: two-bin logits whose softmax expectation is each side distance
(distances are >= 0, so an anchor outside the real box cannot reach it exactly); ``reg_max`` 1: the
raw side distances (negative outside the box, so every anchor can). Elsewhere the box channels are
uniform bins (7.5 cells per side) or 1 cell per side, and every class logit is -8. The end-to-end
schemes give both branches the same head (upstream's one-to-one head is a copy of the head with its
own weights), so the two branches' positives can be compared on identical predictions.

Every number of the :class:`~losscore.scene.SceneResult` is read from the loss's return value or
from its trace.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..finite import non_finite_places
from ..predictions import BlendedHeads, blended_heads, smallest_owner
from ..scene import (Check, ColumnSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm,
                     LossTermSpec, MapSpec, ParamSpec, PhaseSpec, Pin, RuleSpec, Scene, SceneResult, SchemeSpec,
                     SplitSpec, StageCell, boxes_to_targets, resolve_device)
from ..target_spec import TargetColumn as Col, TargetFact, TargetMap, TargetSpec, TargetTable
from ..text import T, Text, TextError, join
from ..trace import Trace
from .loss import DEFAULT_HYP, DetectionLoss, E2ELoss, detection_loss
from .tal import enlarge_small_boxes, stride_value

__all__ = ["SPEC_YOLOV8", "SPEC_YOLOV10", "SPEC_YOLO26", "SPECS", "explain_scene", "build_heads", "level_shapes",
           "two_bin_logits", "perfect_writes"]

STRIDES = (8, 16, 32)
LEVEL_NAMES = ("P3", "P4", "P5")
CLASS_ON, CLASS_OFF, BIN_OFF = 8.0, -8.0, -20.0
RAW_DISTANCE_OFF = 1.0  # reg_max 1 background: 1 cell per side
UPSTREAM = "ultralytics 8.4.190 ultralytics/utils/tal.py, ultralytics/utils/loss.py, ultralytics/utils/metrics.py"
BRANCHES = ("o2m", "o2o")
BRANCH_WORDS = {"o2m": T("one-to-many"), "o2o": T("one-to-one")}


class Variant(NamedTuple):
    name: str
    reg_max: int
    e2e: bool


VARIANTS = {"yolov8": Variant("yolov8", 16, False), "yolov10": Variant("yolov10", 16, True),
            "yolo26": Variant("yolo26", 1, True)}


# -- declarations --------------------------------------------------------------------------------
def _gain_params(reg_max: int) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("box", DEFAULT_HYP["box"], 0.0, 20.0, 0.1, doc="gain of the CIoU box term", upstream="args.box"),
        ParamSpec("cls", DEFAULT_HYP["cls"], 0.0, 10.0, 0.05, doc="gain of the class BCE term", upstream="args.cls"),
        ParamSpec("dfl", DEFAULT_HYP["dfl"], 0.0, 10.0, 0.1,
                  doc="gain of the DFL term" if reg_max > 1 else
                  "gain of the L1 side-distance term (reg_max 1 has no DFL; upstream still reads args.dfl)",
                  upstream="args.dfl"),
    )


ENLARGE_PARAM = ParamSpec(
    "small_object_enlargement", True, kind="bool",
    doc="raise every box side shorter than stride_val (the middle stride, 16 px) to 16 px for the candidate "
        "test; off: the assigner gets stride_val 0 and no box is raised",
    upstream="TaskAlignedAssigner(stride=model.stride): stride_val = stride[1]")

PARAMS_V8 = (
    ENLARGE_PARAM,
    ParamSpec("topk", 10, 1, 50, 1, kind="int",
              doc="positives kept per target: its top-k anchors by t = s^alpha·u^beta",
              upstream="v8DetectionLoss(tal_topk=10)"),
    ParamSpec("alpha", 0.5, 0.0, 4.0, 0.05, doc="exponent of the class score s in the alignment t (every loss passes "
                                                "0.5; the assigner class's own defaults, topk 13 and alpha 1.0, are "
                                                "not what training uses)",
              upstream="TaskAlignedAssigner(alpha=0.5) in v8DetectionLoss"),
    ParamSpec("beta", 6.0, 0.0, 12.0, 0.5, doc="exponent of the overlap u (CIoU, clamped at 0) in the alignment t",
              upstream="TaskAlignedAssigner(beta=6.0) in v8DetectionLoss"),
) + _gain_params(16)


def _e2e_params(reg_max: int) -> tuple[ParamSpec, ...]:
    return (
        ENLARGE_PARAM,
        ParamSpec("epoch", 0, 0, 1000, 1, kind="int",
                  doc="finished epochs (calls of E2ELoss.update()): the one-to-many weight falls from 0.8 to 0.1",
                  upstream="E2ELoss.update() / E2ELoss.updates"),
        ParamSpec("epochs", 100, 1, 1000, 1, kind="int", doc="epochs of the schedule (the weights reach 0.1 / 0.9 "
                  "at the last one)", upstream="args.epochs (cfg/default.yaml 100)"),
        ParamSpec("o2m_topk", 10, 1, 50, 1, kind="int", doc="top-k of the one-to-many branch",
                  upstream="E2ELoss.one2many = v8DetectionLoss(tal_topk=10)"),
        ParamSpec("o2o_topk", 7, 1, 50, 1, kind="int", doc="top-k of the one-to-one branch (before topk2)",
                  upstream="E2ELoss.one2one = v8DetectionLoss(tal_topk=7)"),
        ParamSpec("o2o_topk2", 1, 1, 50, 1, kind="int",
                  doc="after the conflicts each target keeps only its topk2 best positives by t (one-to-one: 1)",
                  upstream="E2ELoss.one2one = v8DetectionLoss(tal_topk2=1)"),
    ) + _gain_params(reg_max)


XYXY = ("x1", "y1", "x2", "y2")
LTRB = ("l", "t", "r", "b")
TAL_RULE_DOCS = (
    T("in its target's top-k by t = s^α·u^β, inside the real box, claimed by no other target"),
    T("in the top-k of several targets; this target has the largest overlap u there"),
    T("in another target's top-k, but this target has the largest overlap u there over all targets "
      "(select_highest_overlaps)"),
    T("in its target's top-k, but outside the real box: only the small-object enlargement made it a candidate"),
)
# a rule's name is a key (positives, counts) and its label's catalogue entry: each written out
RULES_V8 = tuple(RuleSpec(name, glyph, doc) for name, glyph, doc in zip(
    ("top-k", "top-k (conflict won)", "conflict won (outside own top-k)", "top-k (enlarged box)"), "K▲◆□",
    TAL_RULE_DOCS))
RULES_E2E = tuple(
    RuleSpec(name, glyph, T("{branch} branch: {doc}", branch=BRANCH_WORDS[branch], doc=doc))
    for branch, names, glyphs in (
        ("o2m", ("one-to-many top-k", "one-to-many top-k (conflict won)",
                 "one-to-many conflict won (outside own top-k)", "one-to-many top-k (enlarged box)"), "▲△▷◁"),
        ("o2o", ("one-to-one top-k", "one-to-one top-k (conflict won)", "one-to-one conflict won (outside own top-k)",
                 "one-to-one top-k (enlarged box)"), "●○◆◎"))
    for name, glyph, doc in zip(names, glyphs, TAL_RULE_DOCS))


def _columns(reg_max: int, e2e: bool) -> tuple[ColumnSpec, ...]:
    rule_doc = T("why the anchor is positive: top-k, top-k outside the real box (enlargement), or a conflict won; "
                 "one set of rules per branch" if e2e else
                 "why the anchor is positive: top-k, top-k outside the real box (enlargement), or a conflict won")
    columns = [
        ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
        ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
        ColumnSpec("anchor", "0: anchor-free, one anchor point per cell", "index", group="assignment"),
        ColumnSpec("gi", "cell column (x)", "index", group="assignment"),
        ColumnSpec("gj", "cell row (y)", "index", group="assignment"),
        ColumnSpec("rule", rule_doc, "index", group="assignment"),
    ]
    if e2e:
        columns.append(ColumnSpec("branch", "0: one-to-many branch, 1: one-to-one branch (both read the same "
                                            "predictions here)", "index", group="assignment"))
    columns += [
        ColumnSpec("in_box", "True: the anchor centre lies inside the real box; False: only inside the box enlarged "
                             "to stride_val", "bool", group="assignment"),
        ColumnSpec("s", "predicted probability of the target's class at this anchor", "prob", group="assignment"),
        ColumnSpec("u", "CIoU of the target against the predicted box, clamped at 0", "iou", group="assignment"),
        ColumnSpec("align_metric", "t = s^alpha · u^beta", "weight", group="assignment",
                   formula="t = s^α · u^β = {s}^α · {u}^β = {align_metric}; rank {topk_rank} in its box's top-k"),
        ColumnSpec("topk_rank", "rank in its target's top-k (0 = best); -1 when it came through a conflict only",
                   "index", group="assignment"),
    ]
    if e2e:
        columns.append(ColumnSpec("topk2_rank", "one-to-one rows: rank by t among its target's positives after the "
                                                "conflicts (kept when < topk2); -1 on one-to-many rows", "index",
                                  group="assignment"))
    columns.append(ColumnSpec("target_score", "t · max(u) / (max(t) + eps) over its target's positives: the class "
                                              "target and the box-loss weight", "prob", group="class",
                              formula="target score = t · max(u) / max(t) = {target_score}"))
    if reg_max > 1:
        columns += [
            ColumnSpec("ltrb_target", "target distances l, t, r, b in cells, clamped to [0, 14.99]", "bins", LTRB,
                       group="dfl"),
            ColumnSpec("dfl_expected", "expected distance per side under the softmax over 16 bins", "bins", LTRB,
                       group="dfl", formula="expected distance per side Σ bin·softmax = {dfl_expected} vs target "
                                            "{ltrb_target}"),
            ColumnSpec("dfl_probs", "softmax over the 16 bins per side (l, t, r, b)", "prob",
                       tuple(f"{side}{b}" for side in LTRB for b in range(16)), default=False, group="dfl"),
            ColumnSpec("bin_left", "lower target bin floor(d) per side", "index", LTRB, group="dfl"),
            ColumnSpec("bin_right", "upper target bin floor(d) + 1 per side", "index", LTRB, group="dfl"),
            ColumnSpec("weight_left", "weight of the lower bin, floor(d) + 1 - d", "weight", LTRB, group="dfl",
                       formula="target bins {bin_left} / {bin_right} with weights {weight_left} / {weight_right}"),
            ColumnSpec("weight_right", "weight of the upper bin, d - floor(d)", "weight", LTRB, group="dfl"),
            ColumnSpec("dfl", "DFL of this positive: weighted cross-entropy at the two bins, mean over the sides",
                       "loss", group="dfl"),
        ]
    else:
        columns += [
            ColumnSpec("ltrb_target", "target side distances l, t, r, b as fractions of the image width (l, r) or "
                                      "height (t, b); not clamped: negative when the anchor is outside its box",
                       "ratio", LTRB, group="l1"),
            ColumnSpec("pred_ltrb", "predicted side distances (raw head outputs × stride / image side)", "ratio", LTRB,
                       group="l1", formula="predicted {pred_ltrb} vs target {ltrb_target}; L1 = mean |difference| = "
                                           "{l1}"),
            ColumnSpec("l1", "L1 of this positive: mean over the sides of |predicted - target| distance", "loss",
                       group="l1"),
        ]
    columns += [
        ColumnSpec("pred_box_px", "decoded predicted box", "px", XYXY, box="xyxy", group="decode"),
        ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
        ColumnSpec("ciou", "CIoU of predicted vs target box (ultralytics bbox_iou)", "iou", group="iou"),
        ColumnSpec("box_term", "(1 - CIoU) · target_score / target_scores_sum: this positive's share of the raw box "
                               "loss", "loss", group="loss",
                   formula="(1 − {ciou}) · {target_score} / target_scores_sum = {box_term}"),
        ColumnSpec("dfl_term" if reg_max > 1 else "l1_term",
                   "DFL · target_score / target_scores_sum: this positive's share of the raw DFL" if reg_max > 1 else
                   "L1 · target_score / target_scores_sum: this positive's share of the raw L1 term", "loss",
                   group="loss"),
        ColumnSpec("cls_bce", "class BCE at this positive's own class against its target score", "loss",
                   group="class"),
    ]
    return tuple(columns)


def _maps(e2e: bool) -> tuple[MapSpec, ...]:
    maps = [
        MapSpec("align_metric", "alignment t = s^alpha · u^beta of each anchor, the largest over the targets it is a "
                                "candidate of (the same in both branches: same predictions)" if e2e else
                "alignment t = s^alpha · u^beta of each anchor, the largest over the targets it is a candidate of",
                "weight"),
        MapSpec("target_score", "normalised class target of each positive (0 elsewhere), one-to-many branch" if e2e
                else "normalised class target of each positive (0 elsewhere)", "prob", range=(0.0, 1.0)),
        MapSpec("cls_bce", "class loss of each anchor, summed over the classes, one-to-many branch" if e2e
                else "class loss of each anchor, summed over the classes", "loss"),
        MapSpec("fg", "1 where the anchor is a positive of the one-to-many branch" if e2e
                else "1 where the anchor is a positive", "bool", range=(0.0, 1.0)),
    ]
    if e2e:
        maps += [
            MapSpec("target_score_o2o", "normalised class target of each one-to-one positive (0 elsewhere)", "prob",
                    range=(0.0, 1.0)),
            MapSpec("cls_bce_o2o", "class loss of each anchor in the one-to-one branch, summed over the classes",
                    "loss"),
            MapSpec("fg_o2o", "1 where the anchor is a one-to-one positive", "bool", range=(0.0, 1.0)),
        ]
    maps += [
        MapSpec("candidates", "how many target boxes (enlarged when the switch is on) hold the anchor's centre",
                "count", scale="count", reduce="sum"),
        MapSpec("enlarged_only", "how many targets hold the anchor only through the small-object enlargement",
                "count", scale="count", reduce="sum"),
    ]
    return tuple(maps)


def _losses(reg_max: int, e2e: bool) -> LossSpec:
    third = "dfl" if reg_max > 1 else "l1"
    docs = {"box": T("Σ over positives of (1 - CIoU)·target_score"),
            "cls": T("class BCE summed over every anchor and class"),
            third: T("Σ over positives of DFL·target_score") if reg_max > 1 else
            T("Σ over positives of L1(side distances)·target_score (reg_max 1: no DFL)")}
    gains = {"box": "args.box", "cls": "args.cls", third: "args.dfl"}
    if not e2e:
        terms = tuple(LossTermSpec(name, docs[name], divisor="target_scores_sum", gain=gains[name])
                      for name in ("box", "cls", third))
        return LossSpec(terms, formula=T("(box·args.box + cls·args.cls + {third}·args.dfl) × batch size", third=third),
                        multiplier="batch size")
    terms = tuple(
        LossTermSpec(f"{name}_{branch}", T("{branch} branch: {doc}", branch=BRANCH_WORDS[branch], doc=docs[name]),
                     divisor=T("target_scores_sum ({branch})", branch=BRANCH_WORDS[branch]),
                     gain=T("{gain} × {branch} weight", gain=gains[name], branch=branch))
        for branch in BRANCHES for name in ("box", "cls", third))
    return LossSpec(terms, formula=T("o2m·(box + cls + {third})one-to-many + o2o·(box + cls + {third})one-to-one, "
                                     "each term times its gain, × batch size", third=third), multiplier="batch size")


def _phases(reg_max: int, e2e: bool) -> tuple[PhaseSpec, ...]:
    base = (
        ("inputs", T("Inputs"), T("anchor points, targets padded per image")),
        ("assigner", T("Task-aligned assigner"), T("candidates (small-object enlargement), s/u/t, top-k, conflicts, "
                                                   "topk2, normalised scores")),
        ("loss", T("Loss"), T("class BCE, CIoU box loss, DFL, gains") if reg_max > 1 else
         T("class BCE, CIoU box loss, L1 on the side distances, gains")),
    )
    if not e2e:
        return tuple(PhaseSpec(n, t, d) for n, t, d in base)
    phases = tuple(PhaseSpec(f"{branch}_{n}", T("{title} ({branch})", title=t, branch=BRANCH_WORDS[branch]), d)
                   for branch in BRANCHES for n, t, d in base)
    return phases + (PhaseSpec("e2e", "Branch weights", "loss = o2m · one-to-many + o2o · one-to-one"),)


def _inspector(reg_max: int, e2e: bool) -> InspectorSpec:
    return InspectorSpec(
        groups=(("assignment", "Task alignment"), ("class", "Class target"), ("decode", "Decode"), ("iou", "IoU"),
                ("dfl", "DFL") if reg_max > 1 else ("l1", "L1 side distances"), ("loss", "Loss shares")),
        target_columns=("target_score", "ltrb_target"),
        loss_columns=("box_term", "dfl_term" if reg_max > 1 else "l1_term", "cls_bce"),
        target_map="target_score", loss_map="cls_bce")


# -- predictions --------------------------------------------------------------------------------
def two_bin_logits(distance: Tensor, reg_max: int = 16) -> Tensor:
    """Bin logits ``(..., R)`` whose softmax expectation is ``distance`` (clamped to [0, R - 1.01]):
    the two bins around ``d`` get ``log`` of their interpolation weights, every other bin -20."""
    d = distance.clamp(0, reg_max - 1 - 0.01)
    left = d.floor()
    weight_right = d - left
    logits = torch.full((*d.shape, reg_max), BIN_OFF, dtype=d.dtype, device=d.device)
    logits.scatter_(-1, left.long().unsqueeze(-1), (1 - weight_right).clamp_min(1e-9).log().unsqueeze(-1))
    logits.scatter_(-1, (left.long() + 1).unsqueeze(-1), weight_right.clamp_min(1e-9).log().unsqueeze(-1))
    return logits


def level_shapes(scene: Scene, reg_max: int) -> list[tuple[int, int, int, int]]:
    """Per level the head shape ``(1, 4R + C, H, W)``."""
    return [(1, 4 * reg_max + scene.nc, scene.height // s, scene.width // s) for s in STRIDES]


def _box_channels(distances: Tensor, reg_max: int) -> Tensor:
    """(K, 4) side distances in cells -> (K, 4R) box channels (side-major)."""
    if reg_max == 1:
        return distances
    return two_bin_logits(distances, reg_max).reshape(distances.shape[0], 4 * reg_max)


def _box_writes(distances: Tensor, reg_max: int) -> tuple[Tensor, Tensor]:
    """The box channels a covered cell needs over the background, ``(K, W)`` channel indices and values.

    ``reg_max`` 1: the four raw distances. ``reg_max`` 16: only the two bins around each side's
    distance (``log`` of their weights); the other bins keep the background's -20, so the softmax is
    that of :func:`two_bin_logits` with 8 writes per cell instead of 64.
    """
    K = distances.shape[0]
    if reg_max == 1:
        return torch.arange(4, device=distances.device).expand(K, 4), distances
    d = distances.clamp(0, reg_max - 1 - 0.01)
    left = d.floor()
    weight_right = d - left
    side = torch.arange(4, device=d.device) * reg_max  # (4,) first channel of each side
    channel = torch.stack((side + left.long(), side + left.long() + 1), -1).reshape(K, 8)
    values = torch.stack(((1 - weight_right).clamp_min(1e-9).log(), weight_right.clamp_min(1e-9).log()), -1)
    return channel, values.reshape(K, 8)


def perfect_writes(scene: Scene, reg_max: int, enlarge: bool, device: torch.device
                   ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The head that predicts every box, as a background ``(1, 4R + C, 1, 1)`` and per level
    ``(index, values)`` (flat row-major positions in the level's ``(1, 4R + C, H, W)`` head).

    Background: every bin logit -20 (uniform bins: 7.5 cells per side) or 1 cell per side for
    ``reg_max`` 1, every class logit -8. Each anchor inside a box as the assigner tests it (the
    enlarged box when the switch is on; the smallest box wins) gets the box channels of its side
    distances and +8 for the box's class.
    """
    nc, R = scene.nc, reg_max
    background = torch.full((4 * R + nc,), BIN_OFF, device=device)
    if R == 1:
        background[:4] = RAW_DISTANCE_OFF
    background[4 * R:] = CLASS_OFF
    background = background.view(1, -1, 1, 1)
    shapes = level_shapes(scene, R)
    empty = [(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)) for _ in shapes]
    if not scene.boxes:
        return background, empty
    boxes = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32, device=device)
    classes = torch.tensor([b.cls for b in scene.boxes], dtype=torch.long, device=device)
    N = len(scene.boxes)
    region = boxes  # the box the candidate test uses: enlarged when the switch is on (the assigner's own function)
    if enlarge:
        region = enlarge_small_boxes(boxes[None], torch.ones(1, N, 1, device=device), stride_value(STRIDES))[0][0]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    order = sorted(range(N), key=lambda i: (area[i], i))  # smallest box first, lowest index on ties
    rank_of_box = torch.empty(N, dtype=torch.long, device=device)
    rank_of_box[torch.tensor(order, device=device)] = torch.arange(N, device=device)
    by_rank = torch.tensor(order, device=device)
    eps = 1e-9  # select_candidates_in_gts: every side > eps
    writes = []
    for stride, (_, _, H, W) in zip(STRIDES, shapes):
        ax = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) * stride  # (W,) px
        ay = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) * stride  # (H,)
        in_x = ((ax - region[:, :1]) > eps) & ((region[:, 2:3] - ax) > eps)  # (N, W)
        in_y = ((ay - region[:, 1:2]) > eps) & ((region[:, 3:4] - ay) > eps)  # (N, H)
        inside = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
        best = smallest_owner(inside, rank_of_box)  # (H, W)
        gy, gx = (best < N).nonzero(as_tuple=True)  # (K,) covered cells
        owner = by_rank[best[gy, gx]]  # (K,) the smallest box holding the cell
        box, cx, cy = boxes[owner], ax[gx], ay[gy]
        distances = torch.stack((cx - box[:, 0], cy - box[:, 1], box[:, 2] - cx, box[:, 3] - cy), -1) / stride
        channel, values = _box_writes(distances, R)  # (K, W)
        channel = torch.cat((channel, (4 * R + classes[owner]).unsqueeze(1)), 1)  # (K, W + 1)
        values = torch.cat((values, torch.full_like(values[:, :1], CLASS_ON)), 1)
        cell = gy * W + gx
        writes.append(((channel * (H * W) + cell[:, None]).reshape(-1), values.reshape(-1)))
    return background, writes


def _apply_pin(preds: BlendedHeads, pin: Pin, reg_max: int, notes: list) -> None:
    """Overwrite the box channels of one anchor so that it decodes to the pinned box."""
    stride = STRIDES[pin.level]
    feat = preds[pin.level]
    H, W = feat.shape[-2:]
    ax, ay = (pin.gi + 0.5) * stride, (pin.gj + 0.5) * stride
    sides = [(ax - (pin.cx - pin.w / 2)) / stride, (ay - (pin.cy - pin.h / 2)) / stride,
             (pin.cx + pin.w / 2 - ax) / stride, (pin.cy + pin.h / 2 - ay) / stride]
    if reg_max > 1:
        if min(sides) < 0:
            notes.append(T("Pin at {level} ({gi}, {gj}) is unreachable: the anchor centre lies outside the pinned box "
                           "and DFL distances are >= 0; the negative sides are clamped to 0.",
                           level=LEVEL_NAMES[pin.level], gi=pin.gi, gj=pin.gj))
        if max(sides) > reg_max - 1 - 0.01:
            notes.append(T("Pin at {level} ({gi}, {gj}) is unreachable: a side is {side:.2f} cells but 16 bins reach "
                           "at most 14.99 cells ({px:.0f} px at stride {stride}); clamped.",
                           level=LEVEL_NAMES[pin.level], gi=pin.gi, gj=pin.gj, side=max(sides),
                           px=(reg_max - 1 - 0.01) * stride, stride=stride))
    distances = torch.tensor([sides], dtype=feat.dtype, device=feat.device)
    index = torch.arange(4 * reg_max, device=feat.device) * (H * W) + pin.gj * W + pin.gi
    preds.write(pin.level, index, _box_channels(distances, reg_max).reshape(-1))  # feat[0, :4R, gj, gi]


def build_heads(scene: Scene, reg_max: int, enlarge: bool, device: torch.device):
    """The ``blended_heads`` context of a scene (background, writes) before the pins."""
    background, writes = perfect_writes(scene, reg_max, enlarge, device)
    generator = torch.Generator().manual_seed(scene.seed)
    return blended_heads(level_shapes(scene, reg_max), background, writes, scene.progress, generator)


# -- explain -------------------------------------------------------------------------------------
class _Branch(NamedTuple):
    """One branch's loss, where its stages live and its labels."""

    key: str  # "" (single branch), "o2m" or "o2o"
    out: DetectionLoss
    prefix: str  # stage-name prefix: "" or "o2m_"
    topk: int
    topk2: int


def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run the scheme's Ultralytics loss on a validated scene (one image)."""
    variant = VARIANTS[scene.scheme]
    device = resolve_device(scene.device)
    notes: list = []
    targets = boxes_to_targets(scene, device)  # (N, 6)
    R = variant.reg_max
    enlarge = bool(scene.param("small_object_enlargement"))
    hyp = {name: float(scene.param(name)) for name in ("box", "cls", "dfl")}
    levels = [LevelInfo(name, s, (scene.height // s, scene.width // s), None)
              for name, s in zip(LEVEL_NAMES, STRIDES)]
    A = sum(lv.grid[0] * lv.grid[1] for lv in levels)
    topk_names = ("o2m_topk", "o2o_topk", "o2o_topk2") if variant.e2e else ("topk",)
    for name in topk_names:
        if int(scene.param(name)) > A:
            raise TextError(f"params.{name}", T("{value} is more than the {A} anchors of this image",
                                                value=scene.param(name), A=A))
    assigner_stride = None if enlarge else (0.0,)
    recorder = trace if trace is not None else Trace()  # the result is read back from the trace
    with build_heads(scene, R, enlarge, device) as heads:
        for pin in scene.pins:
            _apply_pin(heads, pin, R, notes)
        feats = heads.heads
        if variant.e2e:
            e2e = E2ELoss(scene.nc, R, STRIDES, hyp={**hyp, "epochs": int(scene.param("epochs"))},
                          assigner_stride=assigner_stride)
            e2e.one2many.topk = int(scene.param("o2m_topk"))
            e2e.one2one.topk, e2e.one2one.topk2 = int(scene.param("o2o_topk")), int(scene.param("o2o_topk2"))
            for _ in range(int(scene.param("epoch"))):
                e2e.update()
            breakdown = e2e.breakdown((feats, feats), targets, recorder)
            branches = [_Branch("o2m", breakdown.one2many, "o2m_", e2e.one2many.topk, e2e.one2many.topk),
                        _Branch("o2o", breakdown.one2one, "o2o_", e2e.one2one.topk,
                                e2e.one2one.topk2 or e2e.one2one.topk)]
        else:
            topk = int(scene.param("topk"))
            out = detection_loss(feats, targets, nc=scene.nc, reg_max=R, strides=STRIDES, hyp=hyp, topk=topk,
                                 alpha=float(scene.param("alpha")), beta=float(scene.param("beta")),
                                 assigner_stride=assigner_stride, trace=recorder)
            breakdown = None
            branches = [_Branch("", out, "", topk, topk)]
        tables = [_positives(b, recorder, feats, levels, R) for b in branches]
    positives = tables[0] if len(tables) == 1 else {k: torch.cat([t[k] for t in tables]) for k in tables[0]}
    maps = _maps_of(branches, recorder, levels)
    losses, composition = _losses_of(branches, breakdown, hyp, R, recorder)
    notes += _notes(scene, variant, branches, breakdown, positives, losses, recorder, enlarge)
    notes += _non_finite_notes(positives, losses, maps, recorder)
    return SceneResult(
        scheme=scene.scheme, levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, notes=notes, targets=targets,
        checks=lambda: _checks(branches, recorder, levels, variant.e2e),
        stage_cells=lambda: _stage_cells(branches, recorder, levels, R),
    )


def _cells(anchor: Tensor, levels: list[LevelInfo]) -> tuple[Tensor, Tensor, Tensor]:
    """(level, gi, gj) of flat anchor indices."""
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=anchor.device)
    widths = torch.tensor([lv.grid[1] for lv in levels], device=anchor.device)
    level = torch.bucketize(anchor, starts, right=True) - 1
    cell = anchor - starts[level]
    return level, cell % widths[level], cell // widths[level]


def _pair_lookup(candidates, gt: Tensor, anchor: Tensor, A: int) -> tuple[Tensor, Tensor]:
    """Index of each (gt, anchor) among the candidate pairs (sorted by gt then anchor), and whether found."""
    keys = candidates.gt * A + candidates.anchor  # (Q,) ascending (image 0)
    wanted = gt * A + anchor
    if keys.numel() == 0:
        return torch.zeros_like(wanted), torch.zeros_like(wanted, dtype=torch.bool)
    index = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
    return index, keys[index] == wanted


def _positives(branch: _Branch, trace: Trace, feats: list[Tensor], levels: list[LevelInfo], R: int
               ) -> dict[str, Tensor]:
    out, prefix = branch.out, branch.prefix
    result, terms = out.assignment, out.box_terms
    A = out.anchor_points.shape[0]
    anchor = result.anchor
    P = anchor.numel()
    level, gi, gj = _cells(anchor, levels)
    cands = result.candidates
    index, found = _pair_lookup(cands, result.gt, anchor, A)
    in_box = torch.where(found, cands.in_box[index], False) if P else torch.zeros(0, dtype=torch.bool,
                                                                                  device=anchor.device)
    s = torch.where(found, cands.class_score[index], 0.0) if P else result.score.new_zeros(0)
    rule = result.rule.clone()
    rule[(rule == 0) & ~in_box] = 3  # top-k, but only through the enlargement
    stride = out.stride_tensor[anchor]  # (P, 1)
    tss = out.target_scores_sum
    weight = terms.weight.reshape(-1)
    ciou = terms.ciou.reshape(-1)
    cls_stage = trace.get(f"{prefix}loss.cls")
    table: dict[str, Tensor] = {
        "gt": result.gt, "level": level, "anchor": torch.zeros_like(anchor), "gi": gi, "gj": gj,
        "rule": rule + (4 if branch.key == "o2o" else 0),
    }
    if branch.key:
        table["branch"] = torch.full_like(anchor, 0 if branch.key == "o2m" else 1)
    table.update(in_box=in_box, s=s, u=result.overlap, align_metric=result.align_metric, topk_rank=result.topk_rank)
    if branch.key:
        table["topk2_rank"] = _topk2_rank(branch, trace, result)
    table["target_score"] = result.score
    per_positive = terms.per_positive.reshape(-1)
    if R > 1:
        dfl_stage = trace.get(f"{prefix}loss.dfl")
        left = dfl_stage["bin_left"]
        probs = _dfl_probs(feats, level, gi, gj, R) if P else weight.new_zeros((0, 4 * R))
        table.update(ltrb_target=dfl_stage["target_ltrb"], dfl_expected=dfl_stage["pred_ltrb"], dfl_probs=probs,
                     bin_left=left, bin_right=dfl_stage["bin_right"], weight_left=dfl_stage["weight_left"],
                     weight_right=dfl_stage["weight_right"], dfl=per_positive)
    else:
        table.update(ltrb_target=terms.target_ltrb, pred_ltrb=terms.pred_ltrb, l1=per_positive)
    table.update(pred_box_px=out.pred_box * stride, target_box_px=result.box, ciou=ciou,
                 box_term=(1.0 - ciou) * weight / tss)
    table["dfl_term" if R > 1 else "l1_term"] = per_positive * weight / tss
    table["cls_bce"] = cls_stage["bce_positive"]
    return {k: v.detach() for k, v in table.items()}


def _topk2_rank(branch: _Branch, trace: Trace, result) -> Tensor:
    """One-to-one rows: the rank the topk2 filter gave each final positive (-1 for one-to-many rows, or when
    topk2 equals topk and no filter ran)."""
    rank = torch.full_like(result.anchor, -1)
    if branch.key != "o2o":
        return rank
    try:
        stage = trace.get(f"{branch.prefix}assigner.topk2")
    except KeyError:
        return rank
    A = branch.out.anchor_points.shape[0]
    keys = stage["gt"] * A + stage["anchor"]
    order = keys.argsort()
    wanted = result.gt * A + result.anchor
    if keys.numel() and wanted.numel():
        position = order[torch.searchsorted(keys[order], wanted).clamp(max=keys.numel() - 1)]
        rank = torch.where(keys[position] == wanted, stage["rank"][position], -1)
    return rank


def _dfl_probs(feats: list[Tensor], level: Tensor, gi: Tensor, gj: Tensor, R: int) -> Tensor:
    """(P, 4R) softmax over the bins of each positive's four sides, read from the head."""
    rows = []
    order = []
    for index, feat in enumerate(feats):
        here = (level == index).nonzero().squeeze(1)
        if here.numel():
            W = feat.shape[-1]
            cells = feat[0, :4 * R].reshape(4 * R, -1).index_select(1, gj[here] * W + gi[here])  # (4R, k)
            rows.append(cells.T)
            order.append(here)
    probs = torch.cat(rows).view(-1, 4, R).softmax(-1).reshape(-1, 4 * R)
    out = torch.empty_like(probs)
    out[torch.cat(order)] = probs
    return out


def _maps_of(branches: list[_Branch], trace: Trace, levels: list[LevelInfo]) -> dict[str, list[Tensor]]:
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    first = branches[0].out
    N = sum(sizes)
    device = first.anchor_points.device
    cands = first.assignment.candidates
    align = torch.zeros(N, device=device).scatter_reduce(0, cands.anchor, cands.align_metric, "amax")
    ones = torch.ones_like(cands.align_metric)
    candidates = torch.zeros(N, device=device).index_add(0, cands.anchor, ones)
    enlarged_only = torch.zeros(N, device=device).index_add(0, cands.anchor, (~cands.in_box).to(ones.dtype))
    flat = {"align_metric": align}
    for branch in branches:
        suffix = "_o2o" if branch.key == "o2o" else ""
        result = branch.out.assignment
        fg, score = torch.zeros(N, device=device), torch.zeros(N, device=device)
        fg[result.anchor] = 1.0
        score[result.anchor] = result.score
        flat[f"target_score{suffix}"] = score
        flat[f"cls_bce{suffix}"] = trace.get(f"{branch.prefix}loss.cls")["bce_per_anchor"][0]
        flat[f"fg{suffix}"] = fg
    flat.update(candidates=candidates, enlarged_only=enlarged_only)
    return {name: [chunk.view(1, *lv.grid).detach() for chunk, lv in zip(values.split(sizes), levels)]
            for name, values in flat.items()}



def _losses_of(branches: list[_Branch], breakdown, hyp: dict[str, float], R: int, trace: Trace
               ) -> tuple[dict[str, Tensor], LossComposition]:
    """The loss values and how the total is built, each number as the code computed it."""
    names = ("box", "cls", "dfl" if R > 1 else "l1")
    gains = (hyp["box"], hyp["cls"], hyp["dfl"])
    labels = (T("positives"), T("every anchor × class"), T("positives"))
    losses: dict[str, Tensor] = {}
    terms = []
    for branch in branches:
        out = branch.out
        suffix = f"_{branch.key}" if branch.key else ""
        raw = (out.box, out.cls, out.dfl)
        weight = 1.0 if breakdown is None else (breakdown.o2m if branch.key == "o2m" else breakdown.o2o)
        values = out.items if breakdown is None else (out.loss * weight).detach()  # (3,), as the code multiplies
        tss = out.target_scores_sum.detach()
        for index, (name, gain, label, total) in enumerate(zip(names, gains, labels, _term_sums(branch, trace))):
            losses[f"{name}{suffix}"] = out.items[index]
            losses[f"{name}_raw{suffix}"] = raw[index].detach()
            terms.append(LossTerm(f"{name}{suffix}", (LossPart(label, total.detach()),), total.detach(),
                                  values[index], gain=gain * weight, divisor=float(tss),
                                  normalised=raw[index].detach()))
        losses[f"target_scores_sum{suffix}"] = tss
    if breakdown is None:
        out = branches[0].out
        losses["total"] = out.loss.sum().detach()
        composition = LossComposition(tuple(terms), out.items.sum(), losses["total"],
                                      multiplier=float(out.gt.shape[0]))
    else:
        losses["total"] = breakdown.loss.sum().detach()
        device = losses["total"].device
        losses["o2m_weight"] = torch.tensor(breakdown.o2m, dtype=torch.float64, device=device)
        losses["o2o_weight"] = torch.tensor(breakdown.o2o, dtype=torch.float64, device=device)
        for key, value in breakdown.items.items():  # what upstream logs: the one-to-one items only
            losses[f"logged_{key}"] = value.detach()
        composition = LossComposition(tuple(terms), breakdown.loss.sum().detach(), losses["total"],
                                      multiplier=float(branches[0].out.gt.shape[0]))
    return losses, composition


def _term_sums(branch: _Branch, trace: Trace) -> tuple[Tensor, Tensor, Tensor]:
    """Each term's sum before the division by target_scores_sum, with the code's own operations."""
    terms = branch.out.box_terms
    box = ((1.0 - terms.ciou) * terms.weight).sum()
    cls_sum = trace.get(f"{branch.prefix}loss.cls").values["bce_sum"]
    cls = torch.tensor(cls_sum, dtype=box.dtype, device=box.device)
    third = (terms.per_positive * terms.weight).sum()
    return box, cls, third


# -- notes -------------------------------------------------------------------------------------
def _listing(indices: list[int], limit: int = 8) -> str | Text:
    shown = ", ".join(str(i) for i in indices[:limit])
    return T("{shown} and {more} more", shown=shown, more=len(indices) - limit) if len(indices) > limit else shown


def _notes(scene: Scene, variant: Variant, branches: list[_Branch], breakdown, positives: dict[str, Tensor],
           losses: dict[str, Tensor], trace: Trace, enlarge: bool) -> list:
    notes: list = []
    first = branches[0]
    N = len(scene.boxes)
    sv = stride_value(STRIDES)
    if N:
        stage = trace.get(f"{first.prefix}assigner.candidates")
        enlarged = stage["enlarged"][0].any(-1).cpu()  # (N,)
        count, in_box = stage["candidate_count"][0].cpu(), stage["in_box_count"][0].cpu()
        if enlarge and bool(enlarged.any()):
            boxes = enlarged.nonzero().squeeze(1).tolist()
            extra = int((count - in_box)[enlarged].sum())
            gained = int(((positives["rule"] % 4) == 3).sum())  # both branches' rows in an E2E scheme
            notes.append(T("Small-object enlargement: box(es) {boxes} have a side shorter than stride_val = {sv:g} px. "
                           "stride_val is always the middle stride (stride[1]), on every level, so for the candidate "
                           "test each short side is raised to {sv:g} px about the box centre: {extra} candidate "
                           "anchor(s) come only from that, and {gained} positive row(s) are such anchors (rule 'top-k "
                           "(enlarged box)'). The enlarged box serves the candidate test only; u and the box loss use "
                           "the real box.", boxes=_listing(boxes), sv=sv, extra=extra, gained=gained))
        elif not enlarge:
            notes.append(T("Small-object enlargement is off: the assigner gets stride_val 0 (8.4.190 passes the model "
                           "strides, so stride_val = {sv:g} px and short sides are raised to it); a box must hold an "
                           "anchor centre itself to get a candidate.", sv=sv))
        empty = (count == 0).nonzero().squeeze(1).tolist()
        if empty:
            notes.append(T("Box(es) {boxes} hold no anchor centre (even enlarged): no candidate, so no positive and no "
                           "box loss.", boxes=_listing(empty)) if enlarge else
                         T("Box(es) {boxes} hold no anchor centre: no candidate, so no positive and no box loss (the "
                           "small-object enlargement would give them candidates).", boxes=_listing(empty)))
        for branch in branches:
            per_box = torch.bincount(branch.out.assignment.gt, minlength=N).cpu()
            lost = ((per_box == 0) & (count > 0)).nonzero().squeeze(1).tolist()
            if lost:
                notes.append(_text(branch.key, T("Box(es) {boxes} end with no positive although they have "
                                                 "candidates: every anchor they selected went to a target with a "
                                                 "larger overlap u.", boxes=_listing(lost))))
            conflicts = trace.get(f"{branch.prefix}assigner.conflicts")
            n = int(conflicts.values["n_conflict_anchors"])
            if n:
                outside = int((~conflicts["winner_selected"]).sum())
                notes.append(_text(branch.key, T("{n} anchor(s) were in the top-k of several targets; each went to "
                                                 "the target with the largest u among the targets it is a candidate "
                                                 "of (lowest index on ties), {outside} of them to a target that had "
                                                 "not selected it.", n=n, outside=outside)))
            ties = branch.out.assignment.topk_tie[0].nonzero().squeeze(1).tolist()
            if ties:
                notes.append(_text(branch.key, T("Box(es) {boxes}: fewer than k candidates have t > 0 (or t ties at "
                                                 "the k-th place), so which of the equal candidates became positives "
                                                 "follows torch.topk's order of equal values, as upstream; positives "
                                                 "with t = 0 get target score 0 and weigh nothing.",
                                                 boxes=_listing(ties))))
    else:
        notes.append(T("No boxes: the assigner returns at once (every anchor is background), the box terms are 0 and "
                       "the class loss is the BCE of every logit against 0, divided by max(0, 1) = 1."))
    if N:
        raw_sum = trace.get(f"{first.prefix}loss.cls").values["target_scores_sum_raw"]
        if raw_sum < 1:
            notes.append(T("Σ target scores = {raw:.4g} < 1: every term is divided by max(Σ, 1) = 1.", raw=raw_sum))
    if variant.reg_max > 1:
        notes.append(T("DFL: 16 bins per side (reg_max 16), target distances clamped to [0, 14.99] cells (upstream "
                       "clamps the target tensor in place). An anchor outside the real box (added by the enlargement) "
                       "has a negative side, clamped to 0, so its predicted box can never match the box exactly."))
    else:
        notes.append(T("reg_max 1 (YOLO26): the head predicts the four side distances directly, so there is no DFL. "
                       "The third term is an L1 loss on the side distances as fractions of the image width (l, r) or "
                       "height (t, b), not clamped (negative when the anchor is outside its box), multiplied by the "
                       "dfl gain ({gain:g}); upstream logs it as l1_loss.", gain=float(scene.param("dfl"))))
    if breakdown is not None:
        o2m_k, o2o = branches[0].topk, branches[1]
        items = ", ".join(f"{k} {float(v):.4g}" for k, v in breakdown.items.items())
        notes.append(T("E2ELoss: loss = o2m · one-to-many + o2o · one-to-one with o2m = {o2m:.4g}, o2o = {o2o:.4g} "
                       "after {epoch} of {epochs} epochs (fresh: 0.8 / 0.2; the one-to-many weight falls linearly "
                       "to 0.1 at the last epoch). Upstream logs only the one-to-one branch's items, unweighted: "
                       "{items}.", o2m=breakdown.o2m, o2o=breakdown.o2o, epoch=int(scene.param("epoch")),
                       epochs=int(scene.param("epochs")), items=items))
        notes.append(T("Both branches read the same predictions here (upstream's one-to-one head is a copy of the "
                       "head with its own weights), so their candidates and s, u, t are the same; only the selection "
                       "differs: one-to-many top-{k1}, one-to-one top-{k2} then topk2 {k3} (at most {k3} anchor(s) "
                       "per target).", k1=o2m_k, k2=o2o.topk, k3=o2o.topk2))
        if variant.name == "yolov10":
            notes.append(T("8.4.190 trains YOLOv10 with E2ELoss too; checkpoints pickled by old releases carry "
                           "E2EDetectLoss instead: one-to-one top-k 1, no topk2, both branches weighted 1."))
    notes.append(T("The class loss is BCE-with-logits on every anchor and class, divided by max(Σ target scores, 1): "
                   "no focal loss, no label smoothing. Anchors that are not positives pay BCE against 0, and a "
                   "positive's target is t·max(u)/max(t) of its box, not 1."))
    notes.append(T("CIoU follows ultralytics' metrics.py: alpha = v / (1 - IoU + v + eps) (yolov9 writes "
                   "v / (v - IoU + (1 + eps)), the same number up to the last bit); u is clamped at 0 and only "
                   "candidates get an s, u and t (0 elsewhere)."))
    if scene.progress >= 1 and N:
        notes.append(T("At progress 1 the perfect head predicts the class at every anchor inside a box, but only the "
                       "top-k become positives: the other in-box anchors pay class BCE against a target of 0."))
    return notes


def _non_finite_notes(positives: dict[str, Tensor], losses: dict[str, Tensor], maps: dict[str, list[Tensor]],
                      trace: Trace) -> list:
    bad = non_finite_places(positives, losses, maps, trace)
    if not bad:
        return []
    return [T("Non-finite numbers in {where}: a predicted box is degenerate (zero width or height, or inverted by "
              "negative raw distances), where CIoU's atan(w/h) or the IoU's union is 0/0; upstream gives the same "
              "number on these logits.", where=join(bad))]


# -- checks and stage cells ------------------------------------------------------------------
def _kth_values(cands, k: int, M: int) -> Tensor:
    """(M,) the k-th largest t of each target's dense row (0 when fewer than k candidates are selected)."""
    kth = torch.zeros(M, dtype=cands.align_metric.dtype)
    rank, gt, t = cands.topk_rank.cpu(), cands.gt.cpu(), cands.align_metric.cpu()
    at_k = rank == k - 1
    kth[gt[at_k]] = t[at_k]
    return kth


def _checks(branches: list[_Branch], trace: Trace, levels: list[LevelInfo], e2e: bool) -> list[Check]:
    out: list[Check] = []
    for branch in branches:
        out += _branch_checks(branch, trace, levels, e2e)
    return out


def _text(branch: str, text: Text) -> Text:
    """``text``, prefixed with ``[o2m]`` / ``[o2o]`` in an end-to-end scheme."""
    return T("[{branch}] {text}", branch=branch, text=text) if branch else text


# A top-k check's sentence is where the anchor is (WHERE), then what the test found (TOP_K_TEXT):
# templates filled in per check with the same values (T literals, so that the catalogue has them).
WHERE = {True: T("{level} ({gi}, {gj}) inside the box"),
         False: T("{level} ({gi}, {gj}) outside the box, inside it enlarged to {sv:g} px")}
TOP_K_TEXT = {
    "selected": T(": s = {s:.4g}, u = {u:.4g}, t = s^α·u^β = {t:.4g}: rank {rank} of its top-{topk}, selected"),
    "below": T(": s = {s:.4g}, u = {u:.4g}, t = s^α·u^β = {t:.4g} is below this box's top-{topk} cut-off t = "
               "{kth_t:.4g} by {gap:.3g}: not in its top-{topk}"),
    "tie": T(": s = {s:.4g}, u = {u:.4g}, t = {t:.4g} equals this box's top-{topk} cut-off t = {kth_t:.4g}; "
             "torch.topk's order of equal values left it out"),
}
TOP_K_LABEL = {("selected", True): T("#{rank} t {t:.2g}"), ("selected", False): T("+#{rank} t {t:.2g}"),
               ("below", True): T("t {t:.2g} < {kth_t:.3g}"), ("below", False): T("t {t:.2g} < {kth_t:.3g}"),
               ("tie", True): T("tie t {t:.2g}"), ("tie", False): T("tie t {t:.2g}")}


def _branch_checks(branch: _Branch, trace: Trace, levels: list[LevelInfo], e2e: bool) -> list[Check]:
    """Per candidate pair of this branch: its top-k test (thousands in a crowded scene: the loop builds
    each check's texts straight from two dicts)."""
    result = branch.out.assignment
    cands = result.candidates
    M = branch.out.gt.shape[1]
    if cands.gt.numel() == 0:
        return []
    test = (lambda name: f"{branch.key}.{name}") if e2e else (lambda name: name)
    where_templates = {inside: text.template for inside, text in WHERE.items()}
    text_templates = {kind: text.template for kind, text in TOP_K_TEXT.items()}
    label_templates = {key: text.template for key, text in TOP_K_LABEL.items()}
    top_k = test("top_k")
    k = branch.topk
    level, gi, gj = (c.tolist() for c in _cells(cands.anchor, levels))
    names = [levels[lv].name for lv in level]
    gt, anchor = cands.gt.tolist(), cands.anchor.tolist()
    s, u, t = cands.class_score.tolist(), cands.overlap.tolist(), cands.align_metric.tolist()
    rank, in_box = cands.topk_rank.tolist(), cands.in_box.tolist()
    kth = _kth_values(cands, k, M).tolist()
    sv = result.stride_val
    where_of = {(m, a): q for q, (m, a) in enumerate(zip(gt, anchor))}  # (gt, anchor) -> index
    checks: list[Check] = []
    for q, m in enumerate(gt):
        kind = "selected" if rank[q] >= 0 else "below" if t[q] < kth[m] else "tie"
        inside = bool(in_box[q])
        values = {"s": s[q], "u": u[q], "t": t[q], "rank": rank[q], "kth_t": kth[m], "topk": k, "in_box": inside}
        words = {**values, "branch": branch.key, "level": names[q], "gi": gi[q], "gj": gj[q], "sv": sv,
                 "gap": kth[m] - t[q]}
        text = T("{where}{test}", where=Text(where_templates[inside], words), test=Text(text_templates[kind], words))
        checks.append(Check(m, level[q], 0, gi[q], gj[q], top_k, kind == "selected", _text(branch.key, text), values,
                            label=Text(label_templates[kind, inside], values)))
    checks += _conflict_checks(branch, trace, levels, test, where_of, u)
    if e2e and branch.key == "o2o":
        checks += _topk2_checks(branch, trace, levels, test)
    return checks


CONFLICT_TEXT = {  # templates, filled in per claimant
    "kept": T("{level} ({gi}, {gj}) is in the top-k of boxes {who}; this box has the largest u here ({wu:.4g}): "
              "it keeps the anchor"),
    "lost": T("{level} ({gi}, {gj}) is in the top-k of boxes {who}; box {w} has the largest u here ({wu:.4g}): "
              "box {w} takes it"),
    "lost_outside": T("{level} ({gi}, {gj}) is in the top-k of boxes {who}; box {w}, which did not select it, has "
                      "the largest u here ({wu:.4g}): box {w} takes it"),
    "zero": T("{level} ({gi}, {gj}) is in the top-k of boxes {who}; no target has u > 0 here, so the anchor goes to "
              "box 0 (argmax of an all-zero column)"),
}


def _conflict_checks(branch: _Branch, trace: Trace, levels: list[LevelInfo], test, where_of, u) -> list[Check]:
    stage = trace.get(f"{branch.prefix}assigner.conflicts")
    if not stage.values["n_conflict_anchors"]:
        return []
    anchors = stage["anchor"].cpu()
    level, gi, gj = (c.tolist() for c in _cells(anchors, levels))
    anchors = anchors.tolist()
    winner, winner_u = stage["winner"].tolist(), stage["winner_u"].tolist()
    selected = stage["winner_selected"].tolist()
    claim_conflict, claim_gt, claim_u = (stage[k].tolist() for k in ("claim_conflict", "claim_gt", "claim_u"))
    claimants: dict[int, list[tuple[int, float]]] = {}
    for f, m, cu in zip(claim_conflict, claim_gt, claim_u):
        claimants.setdefault(f, []).append((m, cu))
    checks = []
    for f, a in enumerate(anchors):
        rivals = claimants.get(f, [])
        who = ", ".join(f"#{m} (u {cu:.3g})" for m, cu in rivals)
        w, wu = winner[f], winner_u[f]
        cell = dict(level=levels[level[f]].name, gi=gi[f], gj=gj[f], who=who, w=w, wu=wu)
        for m, cu in rivals:
            won = m == w
            key = ("zero" if not (wu > 0 or wu != wu) else "kept" if won else
                   "lost" if selected[f] else "lost_outside")
            checks.append(Check(m, level[f], 0, gi[f], gj[f], test("conflict"), won,
                                _text(branch.key, Text(CONFLICT_TEXT[key].template, cell)),
                                {"u": cu, "winner": w, "winner_u": wu, "winner_selected": selected[f]},
                                label=T("won u {u:.2f}", u=cu) if won else T("lost to #{w}", w=w)))
        if not selected[f]:
            q = where_of.get((w, a))
            wu_pair = u[q] if q is not None else wu
            checks.append(Check(w, level[f], 0, gi[f], gj[f], test("conflict"), True, _text(
                branch.key, T("{level} ({gi}, {gj}) is not in this box's top-k, but it is claimed by boxes {who} and "
                              "this box has the largest u here ({wu:.4g}) among the targets it is a candidate of: it "
                              "takes the anchor (select_highest_overlaps)", **{**cell, "wu": wu_pair})),
                {"u": wu_pair, "winner": w, "winner_selected": False}, label=T("took it, u {u:.2f}", u=wu_pair)))
    return checks


def _topk2_checks(branch: _Branch, trace: Trace, levels: list[LevelInfo], test) -> list[Check]:
    try:
        stage = trace.get(f"{branch.prefix}assigner.topk2")
    except KeyError:
        return []
    k2 = int(stage.values["topk2"])
    anchors = stage["anchor"].cpu()
    level, gi, gj = (c.tolist() for c in _cells(anchors, levels))
    gt, t, rank, kept = (stage[k].tolist() for k in ("gt", "t", "rank", "kept"))
    counts: dict[int, int] = {}
    for m in gt:
        counts[m] = counts.get(m, 0) + 1
    checks = []
    for i, m in enumerate(gt):
        cell = dict(level=levels[level[i]].name, gi=gi[i], gj=gj[i], m=m, n=counts[m], t=t[i], k2=k2)
        if kept[i]:
            text = _text(branch.key, T("{level} ({gi}, {gj}): after the conflicts box {m} has {n} positive(s); this "
                                       "one is #{rank} by t ({t:.4g}): kept (topk2 = {k2})", rank=rank[i], **cell))
            label = T("kept #{rank}", rank=rank[i])
        else:
            text = _text(branch.key, T("{level} ({gi}, {gj}): after the conflicts box {m} has {n} positive(s); t = "
                                       "{t:.4g} is not among its best {k2}: dropped by topk2", **cell))
            label = T("topk2 ✗")
        checks.append(Check(m, level[i], 0, gi[i], gj[i], test("topk2"), bool(kept[i]), text,
                            {"t": t[i], "rank": rank[i], "topk2": k2}, label=label))
    return checks


def _stage_cells(branches: list[_Branch], trace: Trace, levels: list[LevelInfo], R: int
                 ) -> dict[str, list[StageCell]]:
    cells: dict[str, list[StageCell]] = {}

    def add(name: str, gt: Tensor, anchor: Tensor, labels: list) -> None:
        level, gi, gj = (c.tolist() for c in _cells(anchor.cpu(), levels))
        cells[name] = [StageCell(m, lv, 0, i, j, label) for m, lv, i, j, label
                       in zip(gt.tolist(), level, gi, gj, labels)]

    for branch in branches:
        p = branch.prefix
        result = branch.out.assignment
        cands = result.candidates
        if cands.gt.numel():
            # every candidate (thousands in a crowded scene): plain labels; both branches share the list
            shared = cells.get(f"{branches[0].prefix}assigner.candidates")
            if shared is not None and branch is not branches[0]:
                cells[f"{p}assigner.candidates"] = shared
            else:
                labels = (T("enlarged"), T("in box"))
                add(f"{p}assigner.candidates", cands.gt, cands.anchor, [labels[i] for i in cands.in_box.tolist()])
            chosen = cands.topk_rank >= 0
            add(f"{p}assigner.topk", cands.gt[chosen], cands.anchor[chosen],
                [T("#{r} t {t:.2g}", r=r, t=t) for r, t in zip(cands.topk_rank[chosen].tolist(),
                                                                cands.align_metric[chosen].tolist())])
            stage = trace.get(f"{p}assigner.conflicts")
            if stage.values["n_conflict_anchors"]:
                conflict = stage["claim_conflict"]
                winner = stage["winner"][conflict]
                add(f"{p}assigner.conflicts", stage["claim_gt"], stage["anchor"][conflict],
                    [T("won") if m == w else T("lost → #{w}", w=w)
                     for m, w in zip(stage["claim_gt"].tolist(), winner.tolist())])
            try:
                topk2 = trace.get(f"{p}assigner.topk2")
                add(f"{p}assigner.topk2", topk2["gt"], topk2["anchor"],
                    [T("kept") if k else T("dropped") for k in topk2["kept"].tolist()])
            except KeyError:
                pass
        if result.anchor.numel():
            add(f"{p}assigner.normalise", result.gt, result.anchor,
                [T("score {v:.2f}", v=v) for v in result.score.tolist()])
            add(f"{p}loss.box", result.gt, result.anchor,
                [T("CIoU {v:.2f}", v=v) for v in branch.out.box_terms.ciou.reshape(-1).tolist()])
            per = branch.out.box_terms.per_positive.reshape(-1).tolist()
            if R > 1:
                add(f"{p}loss.dfl", result.gt, result.anchor, [T("DFL {v:.2f}", v=v) for v in per])
            else:
                add(f"{p}loss.l1", result.gt, result.anchor, [T("L1 {v:.3f}", v=v) for v in per])
    return cells


def _target(e2e: bool) -> TargetSpec:
    branches = (("o2m.", BRANCH_WORDS["o2m"]), ("o2o.", BRANCH_WORDS["o2o"])) if e2e else (("", None),)
    tables = []
    for prefix, word in branches:
        def title(text: Text, word: Text | None = word) -> Text:
            return text if word is None else T("{branch}: {title}", branch=word, title=text)

        tables.append(TargetTable(f"{prefix}top_k", title(T("its anchors inside the box, by t")),
                                  "t = s^α · u^β; the top-k are taken (✓)",
                                  (Col("t", "t", "ratio"), Col("s", "s (class)", "prob"), Col("u", "u (IoU)", "iou"),
                                   Col("rank", "rank", "index"), Col("in_box", "inside", "bool")), sort="t", descending=True,
                                  limit=25))
        tables.append(TargetTable(f"{prefix}conflict", title(T("anchors several boxes took")), "the largest u keeps it",
                                  (Col("u", "its u", "iou"), Col("winner", "winner", "index"), Col("winner_u", "winner's u", "iou"))))
        if prefix == "o2o.":
            tables.append(TargetTable("o2o.topk2", title(T("after the conflicts, only the best topk2 stay")),
                                      "YOLOv10 / YOLO26: one positive per box", (Col("t", "t", "ratio"), Col("rank", "rank", "index")),
                                      sort="t", descending=True))
    first = branches[0][0]
    return TargetSpec(
        facts=(TargetFact("top-k", f"{first}top_k", "topk", "count"),
               TargetFact("its k-th best t (the cut-off)", f"{first}top_k", "kth_t", "ratio")),
        tables=tuple(tables),
        maps=(TargetMap("box.t", f"{first}top_k", "t", "alignment t = s^α·u^β of each anchor inside this box", "ratio"),
              TargetMap("box.s", f"{first}top_k", "s", "class score s of this box's class at each anchor inside it", "prob"),
              TargetMap("box.u", f"{first}top_k", "u", "IoU u of each anchor's predicted box with this box", "iou")),
    )


# -- the schemes -------------------------------------------------------------------------------
def _spec(name: str, title: str, doc: str, params: tuple[ParamSpec, ...]) -> SchemeSpec:
    variant = VARIANTS[name]
    R, e2e = variant.reg_max, variant.e2e
    return SchemeSpec(
        name=name, title=title, family="ultralytics", strides=STRIDES, params=params, explain=explain_scene,
        upstream=UPSTREAM, doc=doc, maps=_maps(e2e), rules=RULES_E2E if e2e else RULES_V8, columns=_columns(R, e2e),
        losses=_losses(R, e2e), focal=None, phases=_phases(R, e2e), anchors_px=None, level_names=LEVEL_NAMES,
        pred_box="pred_box_px", target_box="target_box_px", inspector=_inspector(R, e2e), target=_target(e2e),
        split=SplitSpec("branch", ((0, "one-to-many"), (1, "one-to-one")),
                        (("target_score", "target_score_o2o"), ("cls_bce", "cls_bce_o2o"), ("fg", "fg_o2o"))) if e2e else None)


SPEC_YOLOV8 = _spec(
    "yolov8", "YOLOv8 / YOLO11 (TAL + DFL, ultralytics 8.4.190)",
    "anchor-free: task-aligned top-k of the anchors inside each box (tiny boxes enlarged to the middle stride), "
    "BCE class loss on normalised scores, CIoU + DFL box loss", PARAMS_V8)
SPEC_YOLOV10 = _spec(
    "yolov10", "YOLOv10 (one-to-many + one-to-one, ultralytics 8.4.190)",
    "two task-aligned branches on the same boxes: one-to-many top-10 and one-to-one top-7 then one per target "
    "(topk2), DFL box loss, weighted by the epoch (E2ELoss)", _e2e_params(16))
SPEC_YOLO26 = _spec(
    "yolo26", "YOLO26 (one-to-one, reg_max 1, ultralytics 8.4.190)",
    "two task-aligned branches (one-to-many top-10, one-to-one top-7 then topk2 1), raw side distances with an "
    "L1 term instead of DFL, weights decaying towards the one-to-one branch (E2ELoss)", _e2e_params(1))
SPECS = (SPEC_YOLOV8, SPEC_YOLOV10, SPEC_YOLO26)
