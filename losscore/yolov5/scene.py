"""The ``yolov5`` scheme: a learner's scene through YOLOv5's real ``build_targets`` and ``ComputeLoss``.

Predictions for the single image are built with :func:`losscore.predictions.blended_heads`: the perfect
head decodes exactly to each positive's target (``2σ - 0.5`` and ``(2σ)²·anchor`` inverted), has a
high objectness logit at positive slots, low elsewhere, and a high logit for the right class.
Every number of the :class:`~losscore.scene.SceneResult` is read back from the trace of the real
computation.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import ciou_alpha_paper
from ..predictions import BlendedHeads, blended_heads
from ..scene import (Check, ColumnSpec, FocalSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm,
                     LossTermSpec, MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec, StageCell,
                     boxes_to_targets, resolve_device, scene_levels)
from ..text import T, Text, TextError, join
from ..trace import Trace
from .loss import NEIGHBOUR_REASONS, UPSTREAM, ComputeLoss, default_balance, last_write_mask

__all__ = ["SPEC", "explain_scene", "DEFAULT_ANCHORS_PX", "perfect_logits", "invert_decode"]

DEFAULT_ANCHORS_PX = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),  # P3/8
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),  # P4/16
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),  # P5/32
)
STRIDES = (8, 16, 32)
CONFIDENT_LOGIT = 6.0  # the perfect head's objectness/class logit: σ(6) ≈ 0.9975
PROB_EPS = 1e-6  # decode targets are clamped into [eps, 1 - eps] before the logit

PARAMS = (
    ParamSpec("anchor_t", 4.0, 1.0, 10.0, 0.05, doc="keep an anchor when max(w/aw, aw/w, h/ah, ah/h) < anchor_t",
              upstream="hyp['anchor_t']"),
    ParamSpec("g", 0.5, 0.0, 1.0, 0.05, doc="neighbour bias: add the neighbour cell when the centre's fraction < g",
              upstream="ComputeLoss.build_targets g"),
    ParamSpec("gr", 1.0, 0.0, 1.0, 0.05, doc="objectness target = (1 - gr) + gr·clamp(CIoU, 0)",
              upstream="ComputeLoss.gr"),
    ParamSpec("box", 0.05, 0.0, 10.0, 0.01, doc="gain of the box (1 - CIoU) loss", upstream="hyp['box']"),
    ParamSpec("obj", 1.0, 0.0, 10.0, 0.05, doc="gain of the objectness loss", upstream="hyp['obj']"),
    ParamSpec("cls", 0.5, 0.0, 10.0, 0.05, doc="gain of the class loss", upstream="hyp['cls']"),
    ParamSpec("cls_pw", 1.0, 0.1, 10.0, 0.1, doc="BCE positive weight of the class loss", upstream="hyp['cls_pw']"),
    ParamSpec("obj_pw", 1.0, 0.1, 10.0, 0.1, doc="BCE positive weight of the objectness loss",
              upstream="hyp['obj_pw']"),
    ParamSpec("fl_gamma", 0.0, 0.0, 5.0, 0.1, doc="focal gamma; > 0 wraps both class and objectness BCE in FocalLoss",
              upstream="hyp['fl_gamma']"),
    ParamSpec("fl_alpha", 0.25, 0.0, 1.0, 0.05, doc="focal alpha (weight of positives) when fl_gamma > 0",
              upstream="FocalLoss alpha"),
    ParamSpec("label_smoothing", 0.0, 0.0, 1.0, 0.01, doc="class targets become 1 - eps/2 and eps/2",
              upstream="hyp['label_smoothing'] (smooth_BCE)"),
    ParamSpec("sort_obj_iou", False, kind="bool", doc="write objectness targets in ascending IoU (the highest wins)",
              upstream="ComputeLoss.sort_obj_iou",
              inert_hint="no two positive rows write the same slot here, so the write order does not matter; try "
                         "the 'fight' preset (two boxes sharing a cell)"),
    ParamSpec("autobalance", False, kind="bool",
              doc="adapt the level balance after each call (no effect on this call's loss)",
              upstream="ComputeLoss(autobalance=)",
              inert_hint="autobalance changes the balance the next training step uses, never this call's loss"),
)
MAPS = (
    MapSpec("tobj", "objectness target per slot: clamp(CIoU, 0) mixed by gr at positives (last write wins), 0 elsewhere",
            unit="prob", range=(0.0, 1.0)),
    MapSpec("obj_bce", "per-slot objectness BCE (focal-weighted when fl_gamma > 0), before averaging", unit="loss"),
    MapSpec("obj_prob", "σ(objectness logit) of the prediction", unit="prob", range=(0.0, 1.0)),
    MapSpec("focal_weight", "alpha_factor·(1 - p_t)^gamma per slot when fl_gamma > 0, else 1 (plain BCE)",
            unit="weight"),
    MapSpec("positives", "number of positive rows that hit the slot (duplicates > 1)", unit="count", scale="count",
            reduce="sum"),
)
RULES = (
    RuleSpec("centre", "●", "the cell that holds the box centre"),
    RuleSpec("left", "←", "left neighbour: frac(x) < g and x > 1 cell from the left border"),
    RuleSpec("up", "↑", "upper neighbour: frac(y) < g and y > 1 cell from the top border"),
    RuleSpec("right", "→", "right neighbour: frac(W - x) < g and W - x > 1"),
    RuleSpec("down", "↓", "lower neighbour: frac(H - y) < g and H - y > 1"),
)
LOSSES = LossSpec(
    terms=(
        LossTermSpec("box", "mean of 1 - CIoU over each level's positives, summed over levels", gain="hyp['box']"),
        LossTermSpec("obj", "objectness BCE averaged over every slot of a level, × balance[level], summed",
                     part_factor="balance[level]", gain="hyp['obj']"),
        LossTermSpec("cls", "class BCE averaged over each level's positives × C, summed over levels (0 when nc = 1)",
                     gain="hyp['cls']"),
    ),
    formula="(box + obj + cls) × batch size",
    multiplier="batch size",
)
PHASES = (
    PhaseSpec("build_targets", "Assign targets", "which (level, anchor, cell) slots each box trains"),
    PhaseSpec("loss", "Loss", "decode, CIoU, objectness targets and BCE per level, then gains"),
)
FOCAL = FocalSpec(gamma="fl_gamma", alpha="fl_alpha", off_at_zero=True,
                  applies_to="both the class and the objectness BCE")

XYXY = ("x1", "y1", "x2", "y2")
COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "anchor index within the level", "index", group="assignment"),
    ColumnSpec("gi", "cell column (x), clamped into the grid", "index", group="assignment"),
    ColumnSpec("gj", "cell row (y), clamped into the grid", "index", group="assignment"),
    ColumnSpec("rule", "why the cell is positive: centre, or the left/up/right/down neighbour rule", "index", group="assignment"),
    ColumnSpec("r_max", "max(w/aw, aw/w, h/ah, ah/h) of the box against this anchor (kept when < anchor_t)", "ratio", group="assignment"),
    ColumnSpec("offset", "target centre minus the assigned cell, grid units (= tbox xy; in (-0.5, 1.5))", "grid",
               ("x", "y"), group="decode", formula="offset = box centre − cell ({gi}, {gj}) = {offset} cells (target xy, in (−0.5, 1.5))"),
    ColumnSpec("tbox", "target (x offset, y offset, w, h) in grid units of the level", "grid", ("x", "y", "w", "h"), group="decode"),
    ColumnSpec("anch", "anchor (w, h) in grid units of the level", "grid", ("w", "h"), group="decode"),
    ColumnSpec("pxy", "decoded prediction offset 2σ(t) - 0.5, grid units", "grid", ("x", "y"), group="decode", formula="decoded xy = 2σ(t_xy) − 0.5 = {pxy} vs target {offset}"),
    ColumnSpec("pwh", "decoded prediction size (2σ(t))²·anchor, grid units", "grid", ("w", "h"), group="decode", formula="decoded wh = (2σ(t_wh))²·anchor {anch} = {pwh} cells vs target {tbox}"),
    ColumnSpec("pred_box_px", "decoded predicted box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("iou", "IoU of predicted and target box", "iou", group="iou"),
    ColumnSpec("rho2", "squared distance between the centres (grid units²)", "grid", group="iou"),
    ColumnSpec("c2", "squared diagonal of the smallest enclosing box (grid units²)", "grid", group="iou"),
    ColumnSpec("v", "aspect-ratio term (4/π²)(atan(w/h) - atan(w'/h'))²", "ratio", group="iou"),
    ColumnSpec("alpha", "CIoU trade-off v / (v - IoU + 1), no gradient, no iou > 0.5 gate (YOLOv5)", "weight", group="iou"),
    ColumnSpec("ciou", "CIoU = IoU - rho²/c² - alpha·v; the box loss is the mean of 1 - CIoU", "iou", group="iou", formula="CIoU = IoU − ρ²/c² − α·v = {iou} − {rho2}/{c2} − {alpha}·{v} = {ciou}; box loss term 1 − CIoU"),
    ColumnSpec("tobj", "objectness target this row writes: (1 - gr) + gr·clamp(CIoU, 0)", "prob", group="objectness", formula="tobj = (1 − gr) + gr·clamp(CIoU, 0) = {tobj} (write kept: {tobj_written})"),
    ColumnSpec("tobj_written", "True when this row's write survived (the last write to a slot wins)", "bool", group="objectness"),
    ColumnSpec("obj_bce", "objectness BCE at this row's slot, against the slot's final target", "loss", group="objectness"),
    ColumnSpec("obj_bce_floor", "BCE(t, t) for the slot's final target t: the entropy floor a soft target leaves "
                                "even when σ(obj) = t exactly (0 only for t = 0 or 1; at obj_pw = 1)", "loss", group="objectness", formula="BCE(t, t) = {obj_bce_floor}: the least objectness loss this soft target allows"),
    ColumnSpec("cls_bce", "class BCE of this row averaged over the C classes (0 when nc == 1: no class loss)", "loss", group="class"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
DIRECTIONS = ("left", "up", "right", "down")  # the neighbour rules, in the trace's order
DIRECTION_TEXT = tuple(T(direction) for direction in DIRECTIONS)
RULE_TEXT = tuple(T(rule.name) for rule in RULES)  # a rule's name in the reader's language


def _logit(prob: Tensor) -> Tensor:
    prob = prob.clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(prob) - torch.log1p(-prob)


def invert_decode(offset_xy: Tensor, size_wh: Tensor, anchor_wh: Tensor) -> Tensor:
    """Logits ``(tx, ty, tw, th)`` whose decode ``2σ - 0.5``, ``(2σ)²·anchor`` gives the box.

    ``offset_xy`` (..., 2) from the cell, ``size_wh`` and ``anchor_wh`` (..., 2), grid units.
    Values outside (-0.5, 1.5) and (0, 4) anchors are clamped to the nearest reachable logit.
    """
    xy_prob = (offset_xy + 0.5) / 2
    wh_prob = torch.sqrt((size_wh / anchor_wh).clamp(min=0)) / 2
    return torch.cat((_logit(xy_prob), _logit(wh_prob)), -1)


def perfect_background(nc: int, device: torch.device) -> Tensor:
    """(5 + C,) what the perfect head holds away from positives: box logits 0, obj and classes low."""
    background = torch.zeros(5 + nc, device=device)
    background[4:] = -CONFIDENT_LOGIT
    return background


class PerfectWrites(NamedTuple):
    """Where a perfect head differs from :func:`perfect_background`: flat indices and values."""

    index: Tensor  # (K,) row-major positions in the (1, A, H, W, 5 + C) head, unique
    values: Tensor  # (K,)


def perfect_writes(shapes: list[tuple[int, ...]], assigned, device: torch.device) -> list[PerfectWrites]:
    """Per level, the logits a perfect head writes at positive slots: the exact box, high objectness
    and a high logit for the target's class (the last row to reach a slot wins, as in ``tobj``)."""
    writes = []
    for level, shape in enumerate(shapes):
        _, num_anchors, grid_h, grid_w, channels = shape
        image, anchor, gj, gi = assigned.indices[level]
        if not image.numel():
            empty = torch.zeros(0, dtype=torch.long, device=device)
            writes.append(PerfectWrites(empty, torch.zeros(0, device=device)))
            continue
        slot = ((image * num_anchors + anchor) * grid_h + gj) * grid_w + gi  # (n,)
        last = last_write_mask(slot)  # the same rows that win the objectness write
        slot, tbox, anch = slot[last], assigned.tbox[level][last], assigned.anch[level][last]
        box_logits = invert_decode(tbox[:, :2], tbox[:, 2:], anch)  # (P, 4)
        confident = torch.full_like(box_logits[:, :1], CONFIDENT_LOGIT)
        values = torch.cat((box_logits, confident, confident), 1)  # (P, 6): x y w h obj class
        channel = torch.arange(5, device=device).expand(len(slot), 5)
        channel = torch.cat((channel, 5 + assigned.tcls[level][last, None]), 1)  # (P, 6)
        writes.append(PerfectWrites((slot[:, None] * channels + channel).reshape(-1), values.reshape(-1)))
    return writes


def perfect_logits(shapes: list[tuple[int, ...]], assigned, device: torch.device) -> list[Tensor]:
    """The perfect head per level (1, A, H, W, 5 + C), dense: the background plus the writes."""
    heads = []
    for shape, (index, values) in zip(shapes, perfect_writes(shapes, assigned, device)):
        head = perfect_background(shape[-1] - 5, device).expand(shape).clone()
        head.view(-1)[index] = values
        heads.append(head)
    return heads


def _apply_pins(scene: Scene, preds: BlendedHeads, anchors_grid: Tensor, strides, notes: list) -> None:
    """Overwrite the box logits of each pinned slot (validated by ``validate_scene``)."""
    for index, pin in enumerate(scene.pins):
        stride = strides[pin.level]
        offset = torch.tensor([pin.cx / stride - pin.gi, pin.cy / stride - pin.gj], device=preds[0].device)
        size = torch.tensor([pin.w / stride, pin.h / stride], device=preds[0].device)
        anchor = anchors_grid[pin.level, pin.anchor].to(preds[0].device)
        clamped: list[Text] = []
        for axis, value in zip("xy", offset.tolist()):
            if not -0.5 < value < 1.5:
                clamped.append(T("{axis} offset {value:.3g} cells (reachable: -0.5..1.5)", axis=axis, value=value))
        for axis, value in zip("wh", (size / anchor).tolist()):
            if not 0 < value < 4:
                clamped.append(T("{axis} {value:.3g} anchors (reachable: 0..4)", axis=axis, value=value))
        if clamped:
            notes.append(T("Pin {index} (P{level}, anchor {anchor}, cell {gi},{gj}) is unreachable by YOLOv5's "
                           "decode: {clamped}; clamped to the nearest reachable box.", index=index,
                           level=3 + pin.level, anchor=pin.anchor, gi=pin.gi, gj=pin.gj, clamped=join(clamped)))
        _, num_anchors, grid_h, grid_w, channels = preds[pin.level].shape
        slot = ((0 * num_anchors + pin.anchor) * grid_h + pin.gj) * grid_w + pin.gi  # image 0
        box_channels = slot * channels + torch.arange(4, device=offset.device)
        preds.write(pin.level, box_channels, invert_decode(offset, size, anchor))  # head[0, a, gj, gi, :4]


def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run YOLOv5's ``build_targets`` and ``ComputeLoss`` on a (validated) scene."""
    device = resolve_device(scene.device)
    recorder = trace if trace is not None else Trace()  # the result is read back from the trace
    targets = boxes_to_targets(scene, device)  # (N, 6)
    hyp = {name: float(scene.param(name)) for name in
           ("box", "obj", "cls", "cls_pw", "obj_pw", "fl_gamma", "fl_alpha", "label_smoothing", "anchor_t")}
    strides, anchors_px = scene_levels(scene, SPEC)  # the scene's own levels, or the model's
    try:
        compute = ComputeLoss(scene.nc, anchors_px=torch.tensor(anchors_px), strides=strides, hyp=hyp,
                              gr=float(scene.param("gr")), sort_obj_iou=bool(scene.param("sort_obj_iou")),
                              autobalance=bool(scene.param("autobalance")), g=float(scene.param("g")))
    except ValueError as exc:  # e.g. autobalance without a stride-16 level, balance for > 5 levels
        field = "params.autobalance" if "autobalance" in str(exc) else "levels"
        reason = exc.as_text() if isinstance(exc, TextError) else str(exc)
        raise TextError(field, T("upstream's ComputeLoss refuses these levels: {reason}", reason=reason)) from None
    grids = [(scene.height // s, scene.width // s) for s in strides]
    num_anchors = compute.na
    shapes = [(1, num_anchors, h, w, 5 + scene.nc) for h, w in grids]
    notes: list[Text | str] = []
    with torch.no_grad():
        assigned = compute.build_targets(shapes, targets, trace=recorder)  # recorded once, used twice
        generator = torch.Generator().manual_seed(scene.seed)
        background = perfect_background(scene.nc, device)
        writes = perfect_writes(shapes, assigned, device)
        # the heads live only inside this block (cached buffers, patched and restored)
        with blended_heads(shapes, background, writes, scene.progress, generator) as preds:
            _apply_pins(scene, preds, compute.anchors, strides, notes)
            try:
                loss, items = compute(preds.heads, targets, trace=recorder, assigned=assigned)
            except ZeroDivisionError:  # upstream's autobalance line divides by a level's objectness loss
                raise TextError("params.autobalance", T(
                    "upstream YOLOv5 itself fails on this scene: autobalance updates "
                    "balance[i] with 0.0001 / obji, and with fl_gamma > 0 and fl_alpha = 1 a level without "
                    "positives has an objectness loss of exactly 0 (alpha_factor = 1 - alpha = 0 at every "
                    "negative), so the division raises ZeroDivisionError in upstream's ComputeLoss too. "
                    "Turn autobalance off, or use fl_alpha < 1.")) from None
            obj_prob = [torch.sigmoid(head[0, ..., 4]) for head in preds.heads]  # (A, H, W) per level
    levels = [LevelInfo(name, stride, grid, torch.tensor(anchors, device=device))
              for name, stride, grid, anchors in zip(compute.level_names, strides, grids, anchors_px)]
    positives = _positives_table(recorder, compute, device)
    maps = _maps(recorder, compute, obj_prob, grids)
    losses = {"total": loss.reshape(()), "box": items[0], "obj": items[1], "cls": items[2]}
    for level, name in enumerate(compute.level_names):
        stage = recorder.get(f"loss.{name}.level_losses")
        losses[f"box.{name}"] = stage["box"]
        losses[f"obj.{name}"] = stage["obj_balanced"]
        losses[f"obj_raw.{name}"] = stage["obj"]
        losses[f"cls.{name}"] = stage["cls"]
    notes += _notes(scene, compute, recorder, positives, items, losses)
    box_cells = _box_cells(scene, recorder, levels)
    return SceneResult(
        scheme="yolov5", levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=_composition(recorder, compute, losses), box_cells=box_cells,
        checks=lambda: _checks(scene, recorder, compute, levels, box_cells), notes=notes, targets=targets,
        stage_cells=lambda: _stage_cells(recorder, compute, levels, box_cells, positives),
    )


def _composition(trace: Trace, compute: ComputeLoss, losses: dict[str, Tensor]) -> LossComposition:
    """(box + obj + cls) × batch size, each term the sum over levels (obj × balance) × its gain."""
    total_stage = trace.get("loss.total")
    before_gains, after_gains = total_stage["before_gains"], total_stage["loss_items"]
    gains = [compute.hyp["box"], compute.hyp["obj"], compute.hyp["cls"]]
    terms = []
    for index, term in enumerate(("box", "obj", "cls")):
        parts = []
        for level, name in enumerate(compute.level_names):
            if term == "obj":
                balance = float(trace.get(f"loss.{name}.level_losses").values["balance"])
                parts.append(LossPart(name, losses[f"obj_raw.{name}"], balance, losses[f"obj.{name}"]))
            else:
                parts.append(LossPart(name, losses[f"{term}.{name}"]))
        terms.append(LossTerm(term, tuple(parts), before_gains[index], after_gains[index], gain=gains[index]))
    batch = int(total_stage.values["batch"])
    return LossComposition(tuple(terms), after_gains.sum(), losses["total"], multiplier=float(batch))


def _box_cells(scene: Scene, trace: Trace, levels: list[LevelInfo]) -> Tensor:
    """(N, L, 2) each box's centre cell (gi, gj) per level: ``gxy.long()`` clamped into the grid, the
    cell the centre rule writes."""
    cells = torch.zeros((len(scene.boxes), len(levels), 2), dtype=torch.long)
    for level, info in enumerate(levels):
        grid_h, grid_w = info.grid
        xywh = trace.get(f"build_targets.{info.name}.scale")["xywh_grid"].cpu()  # (N, 4) grid units
        centre_cell = xywh[:, :2].long()
        centre_cell[:, 0].clamp_(0, grid_w - 1)
        centre_cell[:, 1].clamp_(0, grid_h - 1)
        cells[:, level] = centre_cell
    return cells


def _stage_cells(trace: Trace, compute: ComputeLoss, levels: list[LevelInfo], cells: Tensor,
                 positives: dict[str, Tensor]) -> dict[str, list[StageCell]]:
    """For the stepper: the cells each stage is about, with what it did there."""
    out: dict[str, list[StageCell]] = {}
    gt_all, lv_all = positives["gt"].tolist(), positives["level"].tolist()
    an_all, gi_all, gj_all = positives["anchor"].tolist(), positives["gi"].tolist(), positives["gj"].tolist()
    for level, info in enumerate(levels):
        name = info.name
        rows = [k for k, lv in enumerate(lv_all) if lv == level]
        centre_label = T("centre cell")
        centre = [StageCell(n, level, -1, int(c[0]), int(c[1]), centre_label)
                  for n, c in enumerate(cells[:, level].tolist())]
        out[f"build_targets.{name}.scale"] = centre
        try:
            ratio = trace.get(f"build_targets.{name}.anchor_filter")
        except KeyError:
            ratio = None
        if ratio is not None:
            r_max, keep = ratio["r_max"].cpu().tolist(), ratio["keep"].cpu().tolist()
            out[f"build_targets.{name}.anchor_filter"] = [
                StageCell(n, level, a, c.gi, c.gj, T("a{anchor} r {r:.3g} {mark}", anchor=a, r=r_max[a][n],
                                                   mark="✓" if keep[a][n] else "✗"))
                for n, c in enumerate(centre) for a in range(len(r_max))]
            stage = trace.get(f"build_targets.{name}.neighbours")
            target, anchor = stage["target"].cpu().tolist(), stage["anchor"].cpu().tolist()
            fired = stage["fired"].cpu().tolist()
            steps = ((-1, 0), (0, -1), (1, 0), (0, 1))
            cells_here = []
            for k, (n, a) in enumerate(zip(target, anchor)):
                for d, direction in enumerate(DIRECTION_TEXT):
                    gi, gj = centre[n].gi + steps[d][0], centre[n].gj + steps[d][1]
                    cells_here.append(StageCell(n, level, a, gi, gj, T("{direction} {mark}", direction=direction,
                                                                       mark="✓" if fired[k][d] else "✗")))
            out[f"build_targets.{name}.neighbours"] = cells_here
        positive_cells = [StageCell(gt_all[k], level, an_all[k], gi_all[k], gj_all[k],
                                    RULE_TEXT[int(positives['rule'][k])]) for k in rows]
        out[f"build_targets.{name}.rows"] = positive_cells
        for step, column, fmt in (("decode", "pxy", "xy"), ("bbox_iou", "ciou", "CIoU"), ("box_loss", "ciou", "1-CIoU"),
                                  ("objectness_target", "tobj", "tobj"), ("class", "cls_bce", "BCE"),
                                  ("objectness", "obj_bce", "BCE"), ("level_losses", "obj_bce", "BCE")):
            values = positives[column]
            out[f"loss.{name}.{step}"] = [
                StageCell(c.gt, c.level, c.anchor, c.gi, c.gj, T("{symbol} {value}", symbol=fmt, value=_short(values[k])))
                for c, k in zip(positive_cells, rows)]
    return out


def _short(value: Tensor) -> str:
    flat = value.reshape(-1).tolist()
    return ", ".join(f"{v:.3g}" for v in flat)


_RATIO_KEPT = ("{level} anchor {anchor} ({aw:g}×{ah:g} px): r_max = max(w/aw, aw/w, h/ah, ah/h) = "
               "max({w:.4g}/{aw:g}, {aw:g}/{w:.4g}, {h:.4g}/{ah:g}, {ah:g}/{h:.4g}) = {r:.4g} < anchor_t {anchor_t:g}: "
               "kept")
_RATIO_REJECTED = ("{level} anchor {anchor} ({aw:g}×{ah:g} px): r_max = max(w/aw, aw/w, h/ah, ah/h) = "
                   "max({w:.4g}/{aw:g}, {aw:g}/{w:.4g}, {h:.4g}/{ah:g}, {ah:g}/{h:.4g}) = {r:.4g} ≥ anchor_t "
                   "{anchor_t:g}: rejected (strict <: a ratio of exactly anchor_t is rejected too)")


def _checks(scene: Scene, trace: Trace, compute: ComputeLoss, levels: list[LevelInfo], cells: Tensor
            ) -> list[Check]:
    """The tests build_targets ran for each box: the anchor-ratio test per anchor (at the centre
    cell), and for every kept pair the four neighbour rules with their fractions."""
    checks: list[Check] = []
    anchor_t, g = compute.hyp["anchor_t"], compute.g
    if not scene.boxes:
        return checks
    for level, info in enumerate(levels):
        name = info.name
        centre_cell = cells[:, level]
        ratio = trace.get(f"build_targets.{name}.anchor_filter")
        r_max, keep = ratio["r_max"].cpu(), ratio["keep"].cpu()  # (A, N)
        anchors_px = info.anchors_px.cpu().tolist()
        for gt, box in enumerate(scene.boxes):
            gi, gj = centre_cell[gt].tolist()
            w, h = box.x2 - box.x1, box.y2 - box.y1
            for anchor, (aw, ah) in enumerate(anchors_px):
                r, kept = float(r_max[anchor, gt]), bool(keep[anchor, gt])
                text = T(_RATIO_KEPT if kept else _RATIO_REJECTED, level=name, anchor=anchor, aw=aw, ah=ah, w=w, h=h,
                         r=r, anchor_t=anchor_t)
                checks.append(Check(gt, level, anchor, gi, gj, "anchor_ratio", kept, text,
                                    {"w": w, "h": h, "aw": aw, "ah": ah, "r_max": r, "anchor_t": anchor_t},
                                    label=T("r {r:.3g} < {anchor_t:g} ✓" if kept else "r {r:.3g} ≥ {anchor_t:g} ✗",
                                            r=r, anchor_t=anchor_t)))
        try:
            stage = trace.get(f"build_targets.{name}.neighbours")
        except KeyError:
            continue
        target, anchor_of = stage["target"].cpu().tolist(), stage["anchor"].cpu().tolist()
        gxy, mirrored = stage["gxy"].cpu(), stage["gxy_mirrored"].cpu()
        fraction, fraction_m = stage["fraction"].cpu(), stage["fraction_mirrored"].cpu()
        fired, reason = stage["fired"].cpu(), stage["reason"].cpu()
        steps = ((-1, 0), (0, -1), (1, 0), (0, 1))  # left, up, right, down: the cell next to the centre cell
        for k, (gt, anchor) in enumerate(zip(target, anchor_of)):
            gi, gj = centre_cell[gt].tolist()
            for d, direction in enumerate(DIRECTIONS):
                words = DIRECTION_TEXT[d]
                axis = d % 2
                coord = float(gxy[k, axis]) if d < 2 else float(mirrored[k, axis])
                frac = float(fraction[k, axis]) if d < 2 else float(fraction_m[k, axis])
                ok = bool(fired[k, d])
                symbol = ("x", "y")[axis] if d < 2 else ("W - x", "H - y")[axis]
                why = int(reason[k, d])
                if ok:
                    text = T("{direction} neighbour: frac({symbol}) = {frac:.4g} < g = {g:g} and {symbol} = "
                             "{coord:.4g} > 1: added", direction=words, symbol=symbol, frac=frac, g=g, coord=coord)
                    label = T("{direction} ✓\n{frac:.2f} < g", direction=words, frac=frac)
                else:
                    parts = []
                    if NEIGHBOUR_REASONS[why] in ("fraction >= g", "both"):
                        parts.append(T("frac({symbol}) = {frac:.4g} ≥ g = {g:g}", symbol=symbol, frac=frac, g=g))
                    if NEIGHBOUR_REASONS[why] in ("centre within 1 cell of the border", "both"):
                        parts.append(T("{symbol} = {coord:.4g} ≤ 1 (centre within one cell of the border)",
                                       symbol=symbol, coord=coord))
                    text = T("{direction} neighbour: {reasons}: not added", direction=words,
                             reasons=join(parts, "{a} and {b}"))
                    label = (T("{direction} ✗\n{frac:.2f} ≥ g", direction=words, frac=frac)
                             if NEIGHBOUR_REASONS[why] != "centre within 1 cell of the border"
                             else T("{direction} ✗\nborder", direction=words))
                di, dj = steps[d]
                checks.append(Check(gt, level, anchor, gi + di, gj + dj, f"neighbour.{direction}", ok, text,
                                    {"fraction": frac, "g": g, "coordinate": coord, "centre": [gi, gj]}, label=label))
    return checks


def _positives_table(trace: Trace, compute: ComputeLoss, device) -> dict[str, Tensor]:
    columns: dict[str, list[Tensor]] = {name: [] for name in COLUMN_NAMES}
    for level, name in enumerate(compute.level_names):
        rows = trace.get(f"build_targets.{name}.rows")
        count = rows["gi"].shape[0]
        if count == 0:
            continue
        stride = compute.strides[level]
        r_max = trace.get(f"build_targets.{name}.anchor_filter")["r_max"]  # (A, N)
        decode = trace.get(f"loss.{name}.decode")
        terms = trace.get(f"loss.{name}.bbox_iou")
        written = trace.get(f"loss.{name}.objectness_target")
        order = written["row"]  # write order -> original row
        tobj_value = torch.empty_like(written["tobj_value"])
        tobj_value[order] = written["tobj_value"]
        tobj_written = torch.empty_like(written["written"])
        tobj_written[order] = written["written"]
        if compute.nc > 1:
            cls_bce = trace.get(f"loss.{name}.class")["cls_bce"].mean(1)
        else:
            cls_bce = torch.zeros(count, device=device)
        gi, gj, tbox, pxy, pwh = rows["gi"], rows["gj"], rows["tbox"], decode["pxy"], decode["pwh"]
        cell = torch.stack((gi, gj), 1).to(tbox.dtype)
        columns["gt"].append(rows["target"])
        columns["level"].append(torch.full_like(rows["target"], level))
        columns["anchor"].append(rows["anchor"])
        columns["gi"].append(gi)
        columns["gj"].append(gj)
        columns["rule"].append(rows["rule"])
        columns["r_max"].append(r_max[rows["anchor"], rows["target"]])
        columns["offset"].append(tbox[:, :2])
        columns["tbox"].append(tbox)
        columns["anch"].append(rows["anch"])
        columns["pxy"].append(pxy)
        columns["pwh"].append(pwh)
        columns["pred_box_px"].append(_xyxy_px(cell + pxy, pwh, stride))
        columns["target_box_px"].append(_xyxy_px(cell + tbox[:, :2], tbox[:, 2:], stride))
        for key in ("iou", "rho2", "c2", "v", "alpha", "ciou"):
            columns[key].append(terms[key].reshape(-1))
        columns["tobj"].append(tobj_value)
        columns["tobj_written"].append(tobj_written)
        objectness = trace.get(f"loss.{name}.objectness")
        at_slot = (rows["image"], rows["anchor"], gj, gi)
        final_target = objectness["tobj"][at_slot]  # (P,) what the slot holds after every write
        columns["obj_bce"].append(objectness["obj_bce"][at_slot])
        columns["obj_bce_floor"].append(_entropy_floor(final_target))
        columns["cls_bce"].append(cls_bce)
    empty_shapes = {"offset": (0, 2), "tbox": (0, 4), "anch": (0, 2), "pxy": (0, 2), "pwh": (0, 2),
                    "pred_box_px": (0, 4), "target_box_px": (0, 4)}
    table = {}
    for key, parts in columns.items():
        if parts:
            table[key] = torch.cat(parts)
        elif key in ("gt", "level", "anchor", "gi", "gj", "rule"):
            table[key] = torch.zeros(0, dtype=torch.long, device=device)
        elif key == "tobj_written":
            table[key] = torch.zeros(0, dtype=torch.bool, device=device)
        else:
            table[key] = torch.zeros(empty_shapes.get(key, (0,)), device=device)
    return table


def _entropy_floor(target: Tensor) -> Tensor:
    """BCE(t, t) per element; NaN where t is NaN (at progress 1 upstream's CIoU alpha can be 0/0),
    which ``F.binary_cross_entropy`` would refuse with an error instead of propagating."""
    valid = (target >= 0) & (target <= 1)  # False for NaN
    safe = torch.where(valid, target, torch.zeros_like(target))
    floor = F.binary_cross_entropy(safe, safe, reduction="none")
    return torch.where(valid, floor, torch.full_like(floor, float("nan")))


def _xyxy_px(centre: Tensor, size: Tensor, stride: int) -> Tensor:
    half = size / 2
    return torch.cat((centre - half, centre + half), 1) * stride  # (P, 4)


def _maps(trace: Trace, compute: ComputeLoss, obj_prob: list[Tensor], grids) -> dict[str, list[Tensor]]:
    maps: dict[str, list[Tensor]] = {m.name: [] for m in MAPS}
    for level, name in enumerate(compute.level_names):
        stage = trace.get(f"loss.{name}.objectness")
        maps["tobj"].append(stage["tobj"][0])
        maps["obj_bce"].append(stage["obj_bce"][0])
        maps["obj_prob"].append(obj_prob[level])
        if "alpha_factor" in stage.tensors:
            maps["focal_weight"].append((stage["alpha_factor"] * stage["modulating_factor"])[0])
        else:
            maps["focal_weight"].append(torch.ones_like(stage["tobj"][0]))
        rows = trace.get(f"build_targets.{name}.rows")
        grid_h, grid_w = grids[level]
        slot = (rows["anchor"] * grid_h + rows["gj"]) * grid_w + rows["gi"]
        counts = torch.bincount(slot, minlength=compute.na * grid_h * grid_w)
        maps["positives"].append(counts.view(compute.na, grid_h, grid_w).to(stage["tobj"].dtype))
    return maps


def _notes(scene: Scene, compute: ComputeLoss, trace: Trace, positives: dict[str, Tensor],
           items: Tensor, losses: dict[str, Tensor]) -> list[Text | str]:
    notes = []
    count = positives["gt"].shape[0]
    per_level = [int((positives["level"] == level).sum()) for level in range(compute.nl)]
    notes.append(T("{count} positive rows from {boxes} boxes ({per_level}): each box can claim up to 3 cells × "
                   "3 anchors on every level.", count=count, boxes=len(scene.boxes),
                   per_level=", ".join(f"{name} {n}" for name, n in zip(compute.level_names, per_level))))
    overwritten = int((~positives["tobj_written"]).sum())
    if overwritten:
        notes.append(T("{count} positive rows share a slot with a later row: their objectness target "
                       "was overwritten (last write wins; tobj_written is False).", count=overwritten))
    broken = ~(torch.isfinite(positives["ciou"]) & torch.isfinite(positives["tobj"])) if count else None
    if count and bool(broken.any()):
        notes.append(T("{bad} positive row(s) have a NaN CIoU, so their objectness target, the box loss and the "
                       "total are NaN: the prediction reproduces the target box exactly, and upstream's CIoU alpha = "
                       "v / (v - IoU + (1 + eps)) is then 0 / 0 (v = 0 and IoU rounds to 1 + eps). This is upstream's "
                       "own number on these logits; any progress below 1 avoids it.", bad=int(broken.sum())))
    elif not bool(torch.isfinite(losses["total"])):
        notes.append(T("The total is not finite ({total}): a loss term overflowed on these logits, as upstream's "
                       "would.", total=float(losses["total"])))
    if count:
        gated = []
        for name in compute.level_names:
            try:
                terms = trace.get(f"loss.{name}.bbox_iou")
            except KeyError:
                continue
            alpha_gated = ciou_alpha_paper(terms["iou"], terms["v"])
            ciou_gated = terms["iou"] - (terms["rho2"] / terms["c2"] + terms["v"] * alpha_gated)
            gated.append((1.0 - ciou_gated.reshape(-1)).mean())
        box_gated = float(sum(gated)) * compute.hyp["box"]
        notes.append(T("CIoU alpha follows YOLOv5 (alpha = v/(v - IoU + 1) for every IoU, no gate): box loss "
                       "{box:.6g}. With the paper's (IoU > 0.5) gate (mmdet PR #5835) it would be {gated:.6g}.",
                       box=float(items[0]), gated=box_gated))
    balance = ", ".join(f"{b:g}" for b in default_balance_of(compute))
    notes.append(T("Loss keys: box/obj/cls are after the hyp gains; box.P3, cls.P3 and obj_raw.P3 are per-level "
                   "means before gains, obj.P3 is the objectness mean × balance[level] ({balance}).", balance=balance))
    notes.append("anchor_t is a shape-ratio test (strict <), not an IoU threshold; hyp['iou_t'] is dead code "
                 "upstream (ComputeLoss never reads it).")
    if count:
        notes.append(_objectness_target_note(compute, positives))
    if scene.nc == 1:
        notes.append("nc = 1: upstream skips the class loss (cls = 0).")
    if compute.hyp["fl_gamma"] > 0:
        notes.append("fl_gamma > 0: YOLOv5 wraps both the class and the objectness BCE in FocalLoss.")
    if compute.autobalance:
        notes.append("autobalance only changes the balance used by the next call; this loss used the initial one.")
    return notes


def default_balance_of(compute: ComputeLoss) -> list[float]:
    """The upstream balance table for this many levels (not the autobalanced state)."""
    return default_balance(compute.nl)


def _objectness_target_note(compute: ComputeLoss, positives: dict[str, Tensor]) -> Text | str:
    """Why the objectness loss does not reach 0 at positives, in the words that fit this scene."""
    tobj, floor = positives["tobj"], positives["obj_bce_floor"]
    if compute.gr == 0:
        return ("gr = 0: every positive's objectness target is 1 (a hard label, as in YOLOv3), so BCE falls "
                "towards 0 as σ(obj) → 1.")
    soft = (tobj > 0) & (tobj < 1) & torch.isfinite(floor)
    if not bool(soft.any()):
        return ("Every positive's objectness target here is exactly 0 or 1, where BCE(t, t) = 0; a soft target "
                "0 < t < 1 (the usual case: t = clamp(CIoU, 0) mixed by gr) leaves an entropy floor BCE(t, t) > 0.")
    best = int(torch.where(soft, floor, torch.full_like(floor, -1.0)).argmax())
    target, value = float(tobj[best]), float(floor[best])
    return T("The objectness target is the (clamped) CIoU mixed by gr, a soft label, not 1: BCE(p, t) is smallest "
             "at p = t and even there equals the entropy of t (e.g. t = {target:.4g} leaves {value:.4g}; column "
             "obj_bce_floor), so the objectness loss at a positive stays above 0 unless t is exactly 0 or 1.",
             target=target, value=value)


SPEC = SchemeSpec(
    custom_levels=True,
    name="yolov5", title="YOLOv5", family="yolov5", strides=STRIDES, params=PARAMS, explain=explain_scene,
    upstream=f"{UPSTREAM} utils/loss.py",
    doc="Anchor-ratio filter, up to two neighbour cells per level, CIoU box loss, IoU objectness targets.",
    maps=MAPS, rules=RULES, columns=COLUMNS, losses=LOSSES, focal=FOCAL, phases=PHASES,
    anchors_px=DEFAULT_ANCHORS_PX, level_names=("P3", "P4", "P5"), pred_box="pred_box_px", target_box="target_box_px",
    inspector=InspectorSpec(groups=(("assignment", "Assignment"), ("decode", "Decode"), ("iou", "IoU terms"), ("objectness", "Objectness"), ("class", "Class")),
                            target_columns=("tbox", "tobj"), loss_columns=("ciou", "obj_bce", "cls_bce"),
                            target_map="tobj", loss_map="obj_bce"),
)
