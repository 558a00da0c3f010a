"""The ``yolox`` scheme: a learner's scene through YOLOX's real SimOTA and ``YOLOXHead.get_losses``.

The release (0.3.0) and GitHub main (6ddff482, PR #1589) assign differently on the same
predictions; ``version`` picks one, so a learner can flip it and watch the positives move.

Predictions come from :func:`losscore.predictions.blended_heads` (seed and progress, as every
scheme): raw maps ``(1, 5 + C, H, W)`` per level with channels ``(tx, ty, tw, th, obj, cls...)``.
The perfect head (progress 1) writes, at every anchor whose cell centre lies inside a box or within
1.5 strides of its centre (the smallest such box wins), the raw box that decodes exactly to that
box (``tx = cx / s - x`` from the cell corner, ``tw = log(w / s)``), an objectness logit of +8 and
+8 for the box's class. Elsewhere the box is one cell on the cell centre and every score logit is
-8. A pin writes the raw box of one anchor (every box is reachable: ``exp`` covers every size).

Every number of the :class:`~losscore.scene.SceneResult` is read from the loss's return value or
its trace.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..finite import non_finite_places
from ..predictions import BlendedHeads, blended_heads, smallest_owner
from ..scene import (Check, ColumnSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm,
                     LossTermSpec, MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec,
                     StageCell, resolve_device)
from ..target_spec import TargetColumn as Col, TargetFact, TargetMap, TargetSpec, TargetTable
from ..text import T, Text, TextError, join
from ..trace import Trace
from .assign import RULE_NAMES, VERSIONS
from .loss import REG_WEIGHT, LossBreakdown, get_l1_target, make_grid, yolox_loss

__all__ = ["SPEC", "explain_scene", "build_heads", "level_shapes", "perfect_writes", "scene_labels"]

STRIDES = (8, 16, 32)
LEVEL_NAMES = ("P3", "P4", "P5")
SCORE_ON, SCORE_OFF = 8.0, -8.0
PERFECT_RADIUS = 1.5  # strides around the box centre where the perfect head also predicts the box
UPSTREAM = ("Megvii-BaseDetection/YOLOX 0.3.0 yolox/models/yolo_head.py, yolox/models/losses.py, "
            "yolox/utils/boxes.py")

PARAMS = (
    ParamSpec("version", "0.3.0", kind="choice", choices=("0.3.0", "main"),
              doc="SimOTA of the PyPI release 0.3.0 (box or 2.5-stride centre square, penalty 100000) or of GitHub "
                  "main 6ddff482 (1.5-stride centre square only, penalty 1e6)",
              upstream="YOLOXHead.get_in_boxes_info (0.3.0) / get_geometry_constraint (main)"),
    ParamSpec("use_l1", False, kind="bool", doc="add the L1 loss on the raw box outputs (YOLOX turns it on for the "
                                                "last 15 epochs, with the mosaic augmentation off)",
              upstream="YOLOXHead.use_l1"),
    ParamSpec("iou_loss_type", "iou", kind="choice", choices=("iou", "giou"),
              doc="box loss: 'iou' is 1 - IoU² (squared), 'giou' is 1 - clamp(GIoU, -1, 1)",
              upstream="YOLOXHead.iou_loss = IOUloss(reduction='none', loss_type='iou')"),
)
RULES = (
    RuleSpec(RULE_NAMES[0], "●", "among its target's k cheapest anchors (k = dynamic_k), taken by no other target"),
    RuleSpec(RULE_NAMES[1], "▲", "taken by several targets; this one has the lowest cost in the anchor's column"),
    RuleSpec(RULE_NAMES[2], "◆", "taken by other targets, but this target has the lowest cost in the anchor's "
                                 "column over ALL targets, so it wins an anchor it never selected"),
)
XYXY = ("x1", "y1", "x2", "y2")
RAW = ("tx", "ty", "tw", "th")
COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "0: one anchor point per cell", "index", group="assignment"),
    ColumnSpec("gi", "cell column (x)", "index", group="assignment"),
    ColumnSpec("gj", "cell row (y)", "index", group="assignment"),
    ColumnSpec("rule", "why the anchor is positive: selected by its target, or a conflict won", "index",
               group="assignment"),
    ColumnSpec("cost", "SimOTA cost of the (target, anchor) pair the matching used", "loss", group="cost",
               formula="cost = cls {cls_cost} + 3 × {iou_cost} (−ln IoU) + penalty {penalty} = {cost}"),
    ColumnSpec("cls_cost", "BCE of sqrt(σ(cls)·σ(obj)) against the one-hot of the target's class, summed over the "
                           "classes", "loss", group="cost"),
    ColumnSpec("iou_cost", "−ln(IoU + 1e-8) of the predicted box against the target (weighted 3.0 in the cost)",
               "loss", group="cost"),
    ColumnSpec("penalty", "100000 (0.3.0) or 1e6 (main) when the pair is not in the geometry relation, else 0",
               "loss", group="cost"),
    ColumnSpec("sel_rank", "rank of the anchor in its target's cost row (0 = cheapest); -1 when the target won it "
                           "without selecting it", "index", group="assignment"),
    ColumnSpec("dynamic_k", "its target's k = max(1, int(sum of its 10 largest IoUs))", "count", group="assignment",
               formula="k = max(1, int(Σ top-10 IoU)) = {dynamic_k}; this anchor is #{sel_rank} of its cost row"),
    ColumnSpec("iou", "IoU of the predicted box with its target: also the class target (one_hot × IoU)", "iou",
               group="iou"),
    ColumnSpec("pred_box_px", "decoded predicted box: centre (t + cell corner)·stride, size exp(t)·stride", "px",
               XYXY, box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("raw_pred", "raw box outputs (tx, ty, tw, th) of the anchor", "", RAW, group="decode"),
    ColumnSpec("l1_target", "raw outputs that decode exactly to the target: offset from the cell corner, log size "
                            "(get_l1_target)", "", RAW, group="decode",
               formula="L1 target (cx/s − x, cy/s − y, ln(w/s), ln(h/s)) = {l1_target} vs raw {raw_pred}"),
    ColumnSpec("iou_loss", "box loss of this positive before × 5.0 / num_fg: 1 - IoU² ('iou') or 1 - GIoU", "loss",
               group="loss", formula="1 − IoU² = 1 − {iou}² = {iou_loss}"),
    ColumnSpec("obj_prob", "σ(objectness logit)", "prob", group="objectness"),
    ColumnSpec("obj_bce", "objectness BCE of this anchor against 1", "loss", group="objectness"),
    ColumnSpec("cls_prob", "σ(class logit) of the target's class", "prob", group="class"),
    ColumnSpec("cls_bce", "class BCE summed over the classes against one_hot(class) × IoU", "loss", group="class"),
    ColumnSpec("l1", "L1 of the raw outputs against the L1 target, summed over the 4 values (0 when use_l1 is off)",
               "loss", group="loss"),
)
MAPS = (
    MapSpec("cost", "lowest SimOTA cost at the anchor over the targets whose centre square holds it (0 where none "
                    "does; every other pair carries the penalty)", "loss", scale="log", reduce="max"),
    MapSpec("iou", "largest IoU of the anchor's predicted box with a target whose centre square holds it", "iou",
            range=(0.0, 1.0)),
    MapSpec("candidates", "1 where the anchor is a SimOTA candidate (the columns of the cost matrix)", "bool",
            range=(0.0, 1.0)),
    MapSpec("fg", "1 where the anchor is a positive: the objectness target", "bool", range=(0.0, 1.0)),
    MapSpec("obj_bce", "objectness BCE of every anchor (target 1 at positives, 0 elsewhere)", "loss"),
    MapSpec("obj_prob", "σ(objectness logit)", "prob", range=(0.0, 1.0)),
    MapSpec("cls_bce", "class BCE summed over the classes: only positives have a class loss (0 elsewhere)", "loss"),
)
LOSSES = LossSpec(
    terms=(
        LossTermSpec("iou", "Σ over positives of 1 - IoU² ('iou') or 1 - GIoU", divisor="num_fg = max(positives, 1)",
                     gain="reg_weight (hard-coded 5.0)"),
        LossTermSpec("obj", "objectness BCE summed over EVERY anchor", divisor="num_fg = max(positives, 1)"),
        LossTermSpec("cls", "class BCE summed over the positives and classes", divisor="num_fg = max(positives, 1)"),
        LossTermSpec("l1", "Σ |raw box outputs - L1 target| over the positives (0.0 when use_l1 is off)",
                     divisor="num_fg = max(positives, 1)"),
    ),
    formula="5.0·iou + obj + cls + l1 (no batch-size factor)",
)
PHASES = (
    PhaseSpec("decode", "Decode", "raw outputs to boxes, from the cell corner"),
    PhaseSpec("targets", "Targets", "label rows per image (padding rule)"),
    PhaseSpec("simota", "SimOTA", "candidates, cost, dynamic k, selection, conflicts, positives"),
    PhaseSpec("loss", "Loss", "targets of the positives, IoU, objectness, class and L1 losses"),
)
INSPECTOR = InspectorSpec(
    groups=(("assignment", "SimOTA"), ("cost", "Cost"), ("iou", "IoU"), ("decode", "Decode"),
            ("objectness", "Objectness"), ("class", "Class"), ("loss", "Loss")),
    target_columns=("iou", "l1_target"), loss_columns=("iou_loss", "obj_bce", "cls_bce", "l1"),
    target_map="fg", loss_map="obj_bce")


# -- predictions --------------------------------------------------------------------------------
def level_shapes(scene: Scene) -> list[tuple[int, int, int, int]]:
    return [(1, 5 + scene.nc, scene.height // s, scene.width // s) for s in STRIDES]


def scene_labels(scene: Scene, device: torch.device) -> Tensor:
    """(1, N, 5) label rows ``(class, cx, cy, w, h)`` in pixels, float32, as YOLOX's loader gives them."""
    rows = [[float(b.cls), (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2, b.x2 - b.x1, b.y2 - b.y1] for b in scene.boxes]
    return torch.tensor(rows, dtype=torch.float32, device=device).view(1, -1, 5)


def perfect_writes(scene: Scene, device: torch.device) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The head that predicts every box, as a background ``(1, 5 + C, 1, 1)`` and per level
    ``(index, values)`` (flat row-major positions in the level's ``(1, 5 + C, H, W)`` head)."""
    background = torch.full((5 + scene.nc,), SCORE_OFF, device=device)
    background[:4] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    background = background.view(1, -1, 1, 1)
    shapes = level_shapes(scene)
    if not scene.boxes:
        return background, [(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device))
                            for _ in shapes]
    labels = scene_labels(scene, device)[0]  # (N, 5)
    cls, centre, size = labels[:, 0].long(), labels[:, 1:3], labels[:, 3:5]
    N = len(scene.boxes)
    area = (size[:, 0] * size[:, 1]).tolist()
    order = sorted(range(N), key=lambda i: (area[i], i))  # smallest box first, lowest index on ties
    rank_of_box = torch.empty(N, dtype=torch.long, device=device)
    rank_of_box[torch.tensor(order, device=device)] = torch.arange(N, device=device)
    by_rank = torch.tensor(order, device=device)
    lo, hi = centre - size / 2, centre + size / 2  # (N, 2)
    writes = []
    for stride, (_, _, H, W) in zip(STRIDES, shapes):
        half = PERFECT_RADIUS * stride
        cx = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) * stride  # (W,)
        cy = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) * stride  # (H,)
        box_x = (cx > lo[:, :1]) & (cx < hi[:, :1])  # (N, W)
        box_y = (cy > lo[:, 1:]) & (cy < hi[:, 1:])  # (N, H)
        square_x = (cx > centre[:, :1] - half) & (cx < centre[:, :1] + half)
        square_y = (cy > centre[:, 1:] - half) & (cy < centre[:, 1:] + half)
        inside = (box_y[:, :, None] & box_x[:, None, :]) | (square_y[:, :, None] & square_x[:, None, :])  # (N, H, W)
        best = smallest_owner(inside, rank_of_box)  # (H, W)
        gy, gx = (best < N).nonzero(as_tuple=True)
        box = by_rank[best[gy, gx]]  # (K,) the smallest box holding the cell
        raw = torch.stack((centre[box, 0] / stride - gx, centre[box, 1] / stride - gy,
                           torch.log(size[box, 0] / stride), torch.log(size[box, 1] / stride)), 1)  # (K, 4)
        values = torch.cat((raw, torch.full_like(raw[:, :2], SCORE_ON)), 1)  # (K, 6): box, obj, class
        channel = torch.cat((torch.arange(5, device=device).expand(len(box), 5), (5 + cls[box])[:, None]), 1)
        cell = gy * W + gx
        writes.append(((channel * (H * W) + cell[:, None]).reshape(-1), values.reshape(-1)))
    return background, writes


def build_heads(scene: Scene, device: torch.device):
    """The ``blended_heads`` context of a scene (before the pins)."""
    background, writes = perfect_writes(scene, device)
    generator = torch.Generator().manual_seed(scene.seed)
    return blended_heads(level_shapes(scene), background, writes, scene.progress, generator)


def _apply_pins(scene: Scene, heads: BlendedHeads) -> None:
    for pin in scene.pins:
        stride = STRIDES[pin.level]
        feat = heads[pin.level]
        H, W = feat.shape[-2:]
        raw = torch.tensor([pin.cx / stride - pin.gi, pin.cy / stride - pin.gj, math.log(pin.w / stride),
                            math.log(pin.h / stride)], dtype=feat.dtype, device=feat.device)
        index = torch.arange(4, device=feat.device) * (H * W) + pin.gj * W + pin.gi
        heads.write(pin.level, index, raw)  # feat[0, :4, gj, gi]


# -- explain -------------------------------------------------------------------------------------
def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run YOLOX's ``get_losses`` (SimOTA of the chosen version) on a validated scene (one image)."""
    device = resolve_device(scene.device)
    version, use_l1 = str(scene.param("version")), bool(scene.param("use_l1"))
    iou_type = str(scene.param("iou_loss_type"))
    labels = scene_labels(scene, device)  # (1, N, 5)
    levels = [LevelInfo(name, s, (scene.height // s, scene.width // s), None) for name, s in zip(LEVEL_NAMES, STRIDES)]
    recorder = trace if trace is not None else Trace()  # the result is read back from the trace
    with build_heads(scene, device) as heads:
        _apply_pins(scene, heads)
        try:
            out = yolox_loss(heads.heads, labels, strides=STRIDES, use_l1=use_l1, iou_loss_type=iou_type,
                             version=version, trace=recorder)
        except RuntimeError as exc:  # upstream raises too: a box with no candidate anchor at all
            raise TextError("boxes", T("YOLOX's SimOTA finds no candidate anchor for this scene ({error}); upstream "
                                       "raises RuntimeError here too", error=str(exc))) from None
        probs = _head_probs(heads.heads, scene.nc)  # (A,) obj, (A, C) class probabilities
        raws = torch.cat([h[0, :4].reshape(4, -1) for h in heads.heads], 1).T  # (A, 4)
    grid = make_grid((scene.height, scene.width), STRIDES, device=device)
    positives = _positives(out, recorder, levels, grid, probs, raws, use_l1)
    maps = _maps(out, recorder, levels, probs)
    losses, composition = _losses(out, recorder)
    notes = _notes(scene, out, recorder, positives, losses, version, use_l1, iou_type)
    notes += _non_finite_notes(positives, losses, maps, recorder)
    return SceneResult(
        scheme="yolox", levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, notes=notes, targets=labels[0],
        checks=lambda: _checks(out, recorder, levels, version),
        stage_cells=lambda: _stage_cells(out, recorder, levels),
    )


def _head_probs(heads: list[Tensor], nc: int) -> tuple[Tensor, Tensor]:
    obj = torch.cat([h[0, 4].reshape(-1) for h in heads]).sigmoid()  # (A,)
    cls = torch.cat([h[0, 5:].reshape(nc, -1) for h in heads], 1)  # (C, A)
    return obj, cls


def _cells(anchor: Tensor, levels: list[LevelInfo]) -> tuple[Tensor, Tensor, Tensor]:
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=anchor.device)
    widths = torch.tensor([lv.grid[1] for lv in levels], device=anchor.device)
    level = torch.bucketize(anchor, starts, right=True) - 1
    cell = anchor - starts[level]
    return level, cell % widths[level], cell // widths[level]


def _stage(trace: Trace, name: str):
    try:
        return trace.get(name)
    except KeyError:
        return None


def _cxcywh_to_xyxy(box: Tensor) -> Tensor:
    half = box[:, 2:] / 2
    return torch.cat((box[:, :2] - half, box[:, :2] + half), 1)


def _positives(out: LossBreakdown, trace: Trace, levels: list[LevelInfo], grid, probs, raws: Tensor,
               use_l1: bool) -> dict[str, Tensor]:
    device = out.fg_mask.device
    targets = trace.get("loss.targets")
    anchor, gt = targets["fg_anchor"], targets["fg_gt"]
    P = anchor.numel()
    level, gi, gj = _cells(anchor, levels)
    result = _stage(trace, "simota.result")
    rule = result["fg_rule"] if result is not None and "fg_rule" in result.tensors else torch.zeros_like(anchor)
    cost = torch.zeros(P, device=device)
    cls_cost, iou_cost, penalty = torch.zeros_like(cost), torch.zeros_like(cost), torch.zeros_like(cost)
    sel_rank = torch.full_like(anchor, -1)
    dynamic_k = torch.zeros_like(anchor)
    if P:
        A = out.fg_mask.shape[1]
        select, conflicts = trace.get("simota.select"), trace.get("simota.conflicts")
        dynamic_k = trace.get("simota.dynamic_k")["gt_dynamic_k"][gt]
        sel_key = select["sel_gt"] * A + select["sel_anchor"]
        order = sel_key.argsort()
        key = gt * A + anchor
        position = order[torch.searchsorted(sel_key[order], key).clamp(max=sel_key.numel() - 1)]
        selected = sel_key[position] == key
        sel_rank = torch.where(selected, select["sel_rank"][position], -1)
        cost = torch.where(selected, select["sel_cost"][position], cost)
        cls_cost = torch.where(selected, select["sel_cls_cost"][position], cls_cost)
        iou_cost = torch.where(selected, select["sel_iou_cost"][position], iou_cost)
        penalty = torch.where(selected, select["sel_penalty"][position].to(cost.dtype), penalty)
        if not bool(selected.all()):  # won without selecting it: the winner's numbers in the conflicts stage
            won = (~selected).nonzero().squeeze(1)
            col = conflicts["conflict_anchor"]
            at = (col[None, :] == anchor[won, None]).int().argmax(1)
            cost[won] = conflicts["conflict_winner_cost"][at]
            cls_cost[won] = conflicts["conflict_winner_cls_cost"][at]
            iou_cost[won] = conflicts["conflict_winner_iou_cost"][at]
            penalty[won] = conflicts["conflict_winner_penalty"][at].to(cost.dtype)
    stride = grid.expanded_strides[anchor]
    reg_target = targets["fg_reg_target"]
    if use_l1:
        l1_target = targets["fg_l1_target"]
        l1 = trace.get("loss.l1")["fg_loss"]
    else:  # what L1 would compare (get_l1_target, upstream's own function); no L1 loss
        l1_target = get_l1_target(reg_target, stride, grid.x_shifts[anchor], grid.y_shifts[anchor])
        l1 = torch.zeros(P, device=device)
    obj_prob, cls_logits = probs
    classes = targets["fg_class"]
    table = {
        "gt": gt, "level": level, "anchor": torch.zeros_like(anchor), "gi": gi, "gj": gj, "rule": rule,
        "cost": cost, "cls_cost": cls_cost, "iou_cost": iou_cost, "penalty": penalty, "sel_rank": sel_rank,
        "dynamic_k": dynamic_k, "iou": targets["fg_cls_target"],
        "pred_box_px": _cxcywh_to_xyxy(targets["fg_pred_box"]), "target_box_px": _cxcywh_to_xyxy(reg_target),
        "raw_pred": raws[anchor], "l1_target": l1_target, "iou_loss": trace.get("loss.iou")["fg_loss"]
        if "fg_loss" in trace.get("loss.iou").tensors else torch.zeros(P, device=device),
        "obj_prob": obj_prob[anchor], "obj_bce": trace.get("loss.obj")["fg_loss"],
        "cls_prob": cls_logits[classes, anchor].sigmoid(), "cls_bce": trace.get("loss.cls")["fg_loss"], "l1": l1,
    }
    return {k: v.detach() for k, v in table.items()}


def _maps(out: LossBreakdown, trace: Trace, levels: list[LevelInfo], probs) -> dict[str, list[Tensor]]:
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    A = sum(sizes)
    device = out.fg_mask.device
    cost, iou = torch.zeros(A, device=device), torch.zeros(A, device=device)
    candidates = torch.zeros(A, device=device)
    cls_bce = torch.zeros(A, device=device)
    cost_stage, geometry = _stage(trace, "simota.cost"), _stage(trace, "simota.geometry")
    if cost_stage is not None:
        pair_anchor = cost_stage["pair_anchor"]
        cost = torch.full((A,), math.inf, device=device).scatter_reduce(0, pair_anchor, cost_stage["pair_cost"], "amin")
        cost = torch.where(torch.isinf(cost), 0.0, cost)
        iou = iou.scatter_reduce(0, pair_anchor, cost_stage["pair_iou"], "amax")
        candidates[geometry["candidate_anchor"]] = 1.0
        targets = trace.get("loss.targets")
        cls_bce[targets["fg_anchor"]] = trace.get("loss.cls")["fg_loss"]
    flat = {"cost": cost, "iou": iou, "candidates": candidates, "fg": out.fg_mask[0].to(cost.dtype),
            "obj_bce": trace.get("loss.obj")["obj_bce"][0], "obj_prob": probs[0], "cls_bce": cls_bce}
    return {name: [chunk.view(1, *lv.grid).detach() for chunk, lv in zip(values.split(sizes), levels)]
            for name, values in flat.items()}


def _losses(out: LossBreakdown, trace: Trace) -> tuple[dict[str, Tensor], LossComposition]:
    total = out.total_loss.detach()
    device, dtype = total.device, total.dtype
    num_fg = float(max(out.fg_count, 1))
    l1 = out.l1_loss.detach() if isinstance(out.l1_loss, Tensor) else torch.tensor(out.l1_loss, dtype=dtype,
                                                                                    device=device)
    losses = {"total": total, "iou": out.iou_loss.detach(), "obj": out.conf_loss.detach(), "cls": out.cls_loss.detach(),
              "l1": l1, "num_fg": torch.tensor(num_fg, dtype=dtype, device=device),
              "num_fg_ratio": torch.tensor(out.num_fg, dtype=torch.float64, device=device)}
    iou_stage, obj_stage, cls_stage = trace.get("loss.iou"), trace.get("loss.obj"), trace.get("loss.cls")
    l1_stage = trace.get("loss.l1")

    def fg_sum(stage) -> Tensor:
        return stage["fg_loss"].sum() if "fg_loss" in stage.tensors else torch.zeros((), dtype=dtype, device=device)

    iou_sum, cls_sum, l1_sum = fg_sum(iou_stage), fg_sum(cls_stage), fg_sum(l1_stage)
    obj_sum = obj_stage["obj_bce"].sum()
    positive = torch.tensor(obj_stage.values["positive_sum"], dtype=dtype, device=device)
    background = torch.tensor(obj_stage.values["background_sum"], dtype=dtype, device=device)
    terms = (
        LossTerm("iou", (LossPart("positives", iou_sum),), iou_sum, losses["iou"], gain=REG_WEIGHT, divisor=num_fg,
                 normalised=iou_sum / num_fg),
        LossTerm("obj", (LossPart("positives", positive), LossPart("background", background)), obj_sum, losses["obj"],
                 divisor=num_fg, normalised=losses["obj"]),
        LossTerm("cls", (LossPart("positives", cls_sum),), cls_sum, losses["cls"], divisor=num_fg,
                 normalised=losses["cls"]),
        LossTerm("l1", (LossPart("positives" if "fg_loss" in l1_stage.tensors else "off (use_l1 False)", l1_sum),),
                 l1_sum, l1, divisor=num_fg, normalised=l1),
    )
    return losses, LossComposition(terms, total, total, multiplier=1.0)


# -- notes -------------------------------------------------------------------------------------
def _listing(items: list, limit: int = 8) -> str | Text:
    shown = ", ".join(str(i) for i in items[:limit])
    return T("{shown} and {more} more", shown=shown, more=len(items) - limit) if len(items) > limit else shown


def _notes(scene: Scene, out: LossBreakdown, trace: Trace, positives: dict[str, Tensor], losses: dict[str, Tensor],
           version: str, use_l1: bool, iou_type: str) -> list:
    spec = VERSIONS[version]
    notes: list = []
    N = len(scene.boxes)
    if spec.box_test:
        notes.append(T("SimOTA 0.3.0: an anchor is a candidate when its cell centre lies inside ANY box or within "
                       "2.5 strides of ANY box centre; a pair escapes the +100000 penalty only when the centre is "
                       "inside THIS box AND its centre square. Every test is strict: a centre exactly on an edge is "
                       "out. Switch version to main (1.5 strides, no box test, penalty 1e6) to see the two disagree "
                       "on the same predictions."))
    else:
        notes.append(T("SimOTA main (6ddff482): an anchor is a candidate when its cell centre lies within 1.5 strides "
                       "of ANY box centre (no box test); a pair escapes the +1e6 penalty when the centre is inside "
                       "THIS box's centre square. Every test is strict: a centre exactly on the square's border is "
                       "out. Switch version to 0.3.0 (2.5 strides and the box test, penalty 100000) to see the two "
                       "disagree on the same predictions."))
    if iou_type == "iou":
        notes.append(T("YOLOX's 'iou' box loss is 1 - IoU² (the IoU squared, not 1 - IoU), times reg_weight 5.0 and "
                       "divided by num_fg."))
    else:
        notes.append(T("iou_loss_type giou: the box loss is 1 - clamp(GIoU, -1, 1), times reg_weight 5.0 and divided "
                       "by num_fg."))
    if N:
        k_stage, result, geometry = (trace.get("simota.dynamic_k"), trace.get("simota.result"),
                                     trace.get("simota.geometry"))
        sums, ks = k_stage["gt_iou_sum"].tolist(), k_stage["gt_dynamic_k"].tolist()
        shown = join([T("box {g}: {s:.3g} → {k}", g=g, s=s, k=k) for g, (s, k) in enumerate(zip(sums, ks)) if g < 6])
        notes.append(T("dynamic_k = max(1, int(sum of the 10 largest IoUs of the box over all {ac} candidates)): "
                       "int() truncates and every box takes at least 1 anchor. Here {shown}{more}.",
                       ac=int(geometry.values["num_candidates"][0]), shown=shown, more=", …" if N > 6 else ""))
        conflicts = trace.get("simota.conflicts")
        n = int(conflicts.values["num_conflicts"][0])
        if n:
            outside = int((~conflicts["conflict_winner_selected"]).sum())
            notes.append(T("{n} anchor(s) were taken by several boxes; each goes to the lowest cost in its column over "
                           "ALL boxes (torch.min), {outside} of them to a box that never took it (rule 'won a "
                           "conflict it did not select').", n=n, outside=outside))
        lost = result.values["gts_without_anchor"][0]
        if lost:
            notes.append(T("Box(es) {boxes} end with no anchor: every anchor they took went to a cheaper box in a "
                           "conflict. They get no box, class or L1 loss, yet they still count in the num_fg ratio.",
                           boxes=_listing(lost)))
        penalised = (geometry["gt_free_count"] == 0).nonzero().squeeze(1).tolist()
        if penalised:
            notes.append(T("Box(es) {boxes} have no penalty-free anchor (no cell centre {where}): every cost in their "
                           "row carries the +{penalty:g} penalty, yet each still takes k >= 1 anchors.",
                           boxes=_listing(penalised), penalty=spec.penalty,
                           where=T("inside both the box and its 2.5-stride centre square") if spec.box_test
                           else T("within 1.5 strides of the box centre")))
    notes.append(T("Decoded box centres are measured from the cell corner, cx = (tx + x)·stride; the candidate test "
                   "uses the cell centre, (x + 0.5)·stride; the L1 target is the offset from the corner."))
    notes.append(T("The objectness BCE runs over every anchor (target 1 at positives, 0 elsewhere); the class BCE only "
                   "at positives, against one_hot(class) × IoU (an IoU-aware soft label, not 1). Each term is divided "
                   "by num_fg = max(positives, 1) = {n:g}; the cost of an IoU of 0 is 3·(−ln 1e-8) = 55.3.",
                   n=float(max(out.fg_count, 1))))
    if N:
        notes.append(T("The 'num_fg' YOLOX logs is max(positives, 1) / max(targets, 1) = {a} / {b} = {ratio:.4g}: a "
                       "ratio, despite its name.", a=max(out.fg_count, 1), b=max(out.num_gts, 1), ratio=out.num_fg))
    else:
        notes.append(T("No boxes: SimOTA does not run, every anchor's objectness target is 0 and num_fg = 1; the "
                       "logged 'num_fg' ratio max(0, 1) / max(0, 1) is 1.0."))
    if use_l1:
        notes.append(T("use_l1: the L1 loss compares the raw outputs (tx, ty, tw, th) with the values that decode "
                       "exactly to the target; YOLOX adds it for the last 15 epochs."))
    else:
        notes.append(T("use_l1 is off (YOLOX turns it on for the last 15 epochs): l1_loss is the Python float 0.0; "
                       "the columns raw_pred and l1_target show what it would compare."))
    if scene.progress >= 1 and N:
        notes.append(T("At progress 1 the perfect head predicts each box exactly at every anchor inside it or within "
                       "1.5 strides of its centre, with high objectness; only the dynamic-k cheapest become positives, "
                       "so the objectness BCE of the others (target 0) stays large."))
    return notes


def _non_finite_notes(positives: dict[str, Tensor], losses: dict[str, Tensor], maps: dict[str, list[Tensor]],
                      trace: Trace) -> list:
    """A note for every NaN or infinity in the result or the trace, with where it comes from."""
    bad = non_finite_places(positives, losses, maps, trace)
    if not bad:
        return []
    notes = []
    if "stage simota.dynamic_k: gt_topk_iou" in bad:
        bad.remove("stage simota.dynamic_k: gt_topk_iou")
        notes.append(T("The image has fewer than 10 candidate anchors: in the dynamic_k stage each box's list of its "
                       "10 largest IoUs is padded with NaN (only the real ones are summed)."))
    if "stage simota.select: gt_next_cost" in bad:
        bad.remove("stage simota.select: gt_next_cost")
        notes.append(T("In the select stage gt_next_cost (the cheapest candidate a box did not take) is inf for a box "
                       "that took every candidate."))
    if bad:
        notes.append(T("Non-finite numbers in {where}: a predicted box of zero area meets a zero-area target, where "
                       "YOLOX's IoU has no eps in the union (0/0); upstream gives the same number on these logits.",
                       where=join(bad)))
    return notes


# -- checks and stage cells ------------------------------------------------------------------
CONFLICT_TEXT = {  # templates, filled in per claimant
    "kept": T("{level} ({gi}, {gj}) was taken by boxes {who}; torch.min over ALL boxes' costs in this column picks "
              "this box ({wc:.4g}): it keeps the anchor"),
    "lost": T("{level} ({gi}, {gj}) was taken by boxes {who}; torch.min over ALL boxes' costs in this column picks box "
              "{w} ({wc:.4g}): box {w} gets it"),
    "lost_outside": T("{level} ({gi}, {gj}) was taken by boxes {who}; torch.min over ALL boxes' costs in this column "
                      "picks box {w} ({wc:.4g}), which never took it: box {w} gets it"),
}


def _checks(out: LossBreakdown, trace: Trace, levels: list[LevelInfo], version: str) -> list[Check]:
    cost_stage = _stage(trace, "simota.cost")
    if cost_stage is None:
        return []
    select, k_stage = trace.get("simota.select"), trace.get("simota.dynamic_k")
    conflicts, result = trace.get("simota.conflicts"), trace.get("simota.result")
    ks = k_stage["gt_dynamic_k"].tolist()
    sums = k_stage["gt_iou_sum"].tolist()

    def cell(anchors: Tensor) -> list[tuple[int, int, int, str]]:
        level, gi, gj = (c.tolist() for c in _cells(anchors.cpu(), levels))
        return [(lv, i, j, levels[lv].name) for lv, i, j in zip(level, gi, gj)]

    # selections: (gt, anchor) -> (rank, cost); each box's k-th cheapest taken cost
    sel_gt, sel_anchor, sel_rank = (select[k].tolist() for k in ("sel_gt", "sel_anchor", "sel_rank"))
    sel_cost, sel_cls, sel_iou_cost, sel_pen, sel_iou = (select[k].tolist() for k in (
        "sel_cost", "sel_cls_cost", "sel_iou_cost", "sel_penalty", "sel_iou"))
    taken = {(g, a): i for i, (g, a) in enumerate(zip(sel_gt, sel_anchor))}
    kth: dict[int, float] = {}
    for g, c in zip(sel_gt, sel_cost):
        kth[g] = max(kth.get(g, -math.inf), c)
    checks: list[Check] = []

    def select_check(g, a, where, iou, cls_c, iou_c, pen, cost) -> Check:
        lv, i, j, name = where
        values = {"iou": iou, "cls_cost": cls_c, "iou_cost": iou_c, "penalty": pen, "cost": cost, "k": ks[g],
                  "kth_cost": kth[g]}
        parts = dict(level=name, gi=i, gj=j, iou=iou, c=cls_c, ic=iou_c, p=pen, cost=cost, g=g, k=ks[g])
        if (g, a) in taken:
            rank = sel_rank[taken[(g, a)]]
            return Check(g, lv, 0, i, j, "select", True, T(
                "{level} ({gi}, {gj}): IoU {iou:.3g}; cost = cls {c:.4g} + 3 × {ic:.4g} (−ln IoU) + penalty {p:g} = "
                "{cost:.4g}: rank {rank} of box {g}'s cost row, within its k = {k}: taken", rank=rank, **parts),
                {**values, "rank": rank}, label=T("c {cost:.3g} ✓", cost=cost))
        text = T("{level} ({gi}, {gj}): IoU {iou:.3g}; cost = cls {c:.4g} + 3 × {ic:.4g} (−ln IoU) + penalty "
                 "{p:g} = {cost:.4g}, above {kth:.4g}, the most expensive of box {g}'s k = {k} cheapest: not taken"
                 if cost > kth[g] else
                 "{level} ({gi}, {gj}): IoU {iou:.3g}; cost = cls {c:.4g} + 3 × {ic:.4g} (−ln IoU) + penalty "
                 "{p:g} = {cost:.4g}, equal to {kth:.4g}, the most expensive of box {g}'s k = {k} cheapest; "
                 "torch.topk's order of equal values left it out", kth=kth[g], **parts)
        return Check(g, lv, 0, i, j, "select", False, text, values,
                     label=T("c {cost:.3g} ✗", cost=cost))

    pair_gt, pair_anchor = cost_stage["pair_gt"].tolist(), cost_stage["pair_anchor"].tolist()
    columns = [cost_stage[k].tolist() for k in ("pair_iou", "pair_cls_cost", "pair_iou_cost", "pair_penalty",
                                                "pair_cost")]
    seen = set()
    for q, where in enumerate(cell(cost_stage["pair_anchor"])):
        g, a = pair_gt[q], pair_anchor[q]
        seen.add((g, a))
        checks.append(select_check(g, a, where, *(c[q] for c in columns)))
    for s, where in enumerate(cell(select["sel_anchor"])):  # taken outside its centre square (penalised)
        g, a = sel_gt[s], sel_anchor[s]
        if (g, a) not in seen:
            checks.append(select_check(g, a, where, sel_iou[s], sel_cls[s], sel_iou_cost[s], sel_pen[s], sel_cost[s]))
    # each box's 10 largest IoUs and the dynamic k they give
    topk_iou, topk_anchor = k_stage["gt_topk_iou"], k_stage["gt_topk_anchor"]
    valid = topk_anchor >= 0
    rows, places = valid.nonzero(as_tuple=True)
    for (g, place), where in zip(zip(rows.tolist(), places.tolist()), cell(topk_anchor[valid])):
        lv, i, j, name = where
        iou = float(topk_iou[g, place])
        checks.append(Check(g, lv, 0, i, j, "top10_iou", True, T(
            "{level} ({gi}, {gj}): IoU {iou:.3g} is #{place} of box {g}'s 10 largest IoUs over all candidates; their "
            "sum {total:.4g} gives dynamic_k = max(1, int({total:.4g})) = {k}", level=name, gi=i, gj=j, iou=iou,
            place=place + 1, g=g, total=sums[g], k=ks[g]), {"iou": iou, "place": place, "iou_sum": sums[g], "k": ks[g]},
            label=T("IoU {iou:.2f}", iou=iou)))
    # conflicts: every claimant, and a winner that never took the anchor
    if int(conflicts.values["num_conflicts"][0]):
        claim_anchor, claim_gt, claim_cost, claim_won = (conflicts[k].tolist() for k in (
            "claim_anchor", "claim_gt", "claim_cost", "claim_won"))
        c_anchor = conflicts["conflict_anchor"].tolist()
        winner, w_cost, w_sel = (conflicts[k].tolist() for k in ("conflict_winner", "conflict_winner_cost",
                                                                   "conflict_winner_selected"))
        w_parts = [conflicts[k].tolist() for k in ("conflict_winner_cls_cost", "conflict_winner_iou_cost",
                                                    "conflict_winner_penalty")]
        claimants: dict[int, list[tuple[int, float]]] = {}
        for a, g, c in zip(claim_anchor, claim_gt, claim_cost):
            claimants.setdefault(a, []).append((g, c))
        index_of = {a: f for f, a in enumerate(c_anchor)}
        for (a, g, c, won), where in zip(zip(claim_anchor, claim_gt, claim_cost, claim_won),
                                         cell(conflicts["claim_anchor"])):
            lv, i, j, name = where
            f = index_of[a]
            who = ", ".join(f"#{m} ({mc:.4g})" for m, mc in claimants[a])
            key = "kept" if won else "lost" if w_sel[f] else "lost_outside"
            checks.append(Check(g, lv, 0, i, j, "conflict", bool(won), Text(
                CONFLICT_TEXT[key].template, dict(level=name, gi=i, gj=j, who=who, w=winner[f], wc=w_cost[f])),
                {"cost": c, "winner": winner[f], "winner_cost": w_cost[f], "winner_selected": bool(w_sel[f])},
                label=T("won c {c:.3g}", c=c) if won else T("lost to #{w}", w=winner[f])))
        for f, where in enumerate(cell(conflicts["conflict_anchor"])):
            if w_sel[f]:
                continue
            lv, i, j, name = where
            a = c_anchor[f]
            who = ", ".join(f"#{m} ({mc:.4g})" for m, mc in claimants[a])
            checks.append(Check(winner[f], lv, 0, i, j, "conflict", True, T(
                "{level} ({gi}, {gj}): box {w} never took this anchor (it is not among its k = {k} cheapest), but its "
                "cost here, cls {c:.4g} + 3 × {ic:.4g} (−ln IoU) + penalty {p:g} = {wc:.4g}, is the lowest of the "
                "column, below the boxes that took it ({who}): it wins the anchor", level=name, gi=i, gj=j, w=winner[f],
                k=ks[winner[f]], c=w_parts[0][f], ic=w_parts[1][f], p=w_parts[2][f], wc=w_cost[f], who=who),
                {"cost": w_cost[f], "winner_selected": False}, label=T("won, not taken")))
    # boxes that end with no anchor
    lost = set(result.values["gts_without_anchor"][0])
    if lost:
        for s, where in enumerate(cell(select["sel_anchor"])):
            g = sel_gt[s]
            if g not in lost:
                continue
            lv, i, j, name = where
            n = sum(1 for m in sel_gt if m == g)
            checks.append(Check(g, lv, 0, i, j, "no_anchor", False, T(
                "{level} ({gi}, {gj}): box {g} took {n} anchor(s) (k = {k}) and lost every one in conflicts: it ends "
                "with no positive, no box, class or L1 loss, yet it still counts in the num_fg ratio", level=name,
                gi=i, gj=j, g=g, n=n, k=ks[g]), {"k": ks[g]}, label=T("no anchor")))
    return checks


def _stage_cells(out: LossBreakdown, trace: Trace, levels: list[LevelInfo]) -> dict[str, list[StageCell]]:
    cells: dict[str, list[StageCell]] = {}

    def add(name: str, gt: Tensor, anchor: Tensor, labels: list) -> None:
        level, gi, gj = (c.tolist() for c in _cells(anchor.cpu(), levels))
        cells[name] = [StageCell(m, lv, 0, i, j, label) for m, lv, i, j, label
                       in zip(gt.tolist(), level, gi, gj, labels)]

    geometry = _stage(trace, "simota.geometry")
    if geometry is None:
        return cells
    words = (T("penalty"), T("free"))
    add("simota.geometry", geometry["pair_gt"], geometry["pair_anchor"],
        [words[f] for f in geometry["pair_free"].tolist()])
    cost = trace.get("simota.cost")
    add("simota.cost", cost["pair_gt"], cost["pair_anchor"], [T("c {c:.3g}", c=c) for c in cost["pair_cost"].tolist()])
    k_stage = trace.get("simota.dynamic_k")
    valid = k_stage["gt_topk_anchor"] >= 0
    rows = valid.nonzero(as_tuple=True)[0]
    add("simota.dynamic_k", rows, k_stage["gt_topk_anchor"][valid],
        [T("IoU {iou:.2f}", iou=v) for v in k_stage["gt_topk_iou"][valid].tolist()])
    select = trace.get("simota.select")
    add("simota.select", select["sel_gt"], select["sel_anchor"],
        [T("#{r} c {c:.3g}", r=r, c=c) for r, c in zip(select["sel_rank"].tolist(), select["sel_cost"].tolist())])
    conflicts = trace.get("simota.conflicts")
    if int(conflicts.values["num_conflicts"][0]):
        winner_of = dict(zip(conflicts["conflict_anchor"].tolist(), conflicts["conflict_winner"].tolist()))
        labels = [T("won") if won else T("lost → #{w}", w=winner_of[a]) for a, won in
                  zip(conflicts["claim_anchor"].tolist(), conflicts["claim_won"].tolist())]
        outsiders = ~conflicts["conflict_winner_selected"]
        gts = torch.cat((conflicts["claim_gt"], conflicts["conflict_winner"][outsiders]))
        anchors = torch.cat((conflicts["claim_anchor"], conflicts["conflict_anchor"][outsiders]))
        add("simota.conflicts", gts, anchors, labels + [T("won, not taken")] * int(outsiders.sum()))
    result = trace.get("simota.result")
    if "fg_anchor" in result.tensors:
        add("simota.result", result["fg_gt"], result["fg_anchor"],
            [T("IoU {iou:.2f}", iou=v) for v in result["fg_iou"].tolist()])
        iou = trace.get("loss.iou")
        targets = trace.get("loss.targets")
        add("loss.iou", targets["fg_gt"], targets["fg_anchor"],
            [T("loss {v:.2f}", v=v) for v in iou["fg_loss"].tolist()])
    return cells


TARGET = TargetSpec(
    facts=(TargetFact("sum of the 10 largest IoUs", "top10_iou", "iou_sum", "iou"),
           TargetFact("dynamic_k = max(1, int(sum))", "top10_iou", "k", "count")),
    tables=(
        TargetTable("top10_iou", "Its 10 largest IoUs (over all its candidates)",
                    "their sum, truncated, is how many anchors the box takes (dynamic_k)",
                    (Col("iou", "IoU", "iou"), Col("place", "place", "index")), sort="place"),
        TargetTable("select", "Its cost row, cheapest first",
                    "cost = class cost + 3 × IoU cost + penalty; the dynamic_k cheapest are taken (✓)",
                    (Col("cost", "cost", "loss"), Col("cls_cost", "class", "loss"), Col("iou_cost", "−ln IoU", "loss"),
                     Col("penalty", "penalty", "loss"), Col("iou", "IoU", "iou")), sort="cost", limit=30),
        TargetTable("conflict", "Conflicts: anchors several boxes took",
                    "the anchor goes to the box with the lowest cost in its column, even one that never took it",
                    (Col("cost", "its cost", "loss"), Col("winner", "winner", "index"), Col("winner_cost", "winner's cost", "loss"),
                     Col("winner_selected", "winner took it", "bool"))),
    ),
    maps=(TargetMap("box.cost", "select", "cost", "this box's SimOTA cost at each of its candidates", "loss", "log"),
          TargetMap("box.cls_cost", "select", "cls_cost", "this box's class cost at each of its candidates", "loss"),
          TargetMap("box.iou", "select", "iou", "IoU of each candidate's predicted box with this box", "iou")),
    verdicts=("no_anchor",),
)


SPEC = SchemeSpec(
    name="yolox", title="YOLOX (SimOTA, 0.3.0 or main)", family="yolox", strides=STRIDES, params=PARAMS,
    explain=explain_scene, upstream=UPSTREAM,
    doc="anchor-free, decoupled head: SimOTA assigns each box its dynamic-k cheapest anchors (class cost + 3·IoU "
        "cost + a geometry penalty); 1 - IoU² box loss, objectness BCE over every anchor, IoU-aware class BCE at "
        "positives. The release 0.3.0 and GitHub main (6ddff482) differ in the candidate rule and penalty.",
    maps=MAPS, rules=RULES, columns=COLUMNS, losses=LOSSES, focal=None, phases=PHASES, anchors_px=None,
    level_names=LEVEL_NAMES, pred_box="pred_box_px", target_box="target_box_px", inspector=INSPECTOR,
    target=TARGET,
)
