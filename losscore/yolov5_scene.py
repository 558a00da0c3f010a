"""The ``yolov5`` scheme: a learner's scene through YOLOv5's real ``build_targets`` and ``ComputeLoss``.

Predictions for the single image are built with :func:`losscore.scene.blended_heads`: the perfect
head decodes exactly to each positive's target (``2σ - 0.5`` and ``(2σ)²·anchor`` inverted), has a
high objectness logit at positive slots, low elsewhere, and a high logit for the right class.
Every number of the :class:`~losscore.scene.SceneResult` is read back from the trace of the real
computation.
"""
from __future__ import annotations

from typing import NamedTuple


import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import ciou_alpha_paper
from .scene import (BlendedHeads, LevelInfo, ParamSpec, Scene, SceneResult, SchemeSpec, blended_heads,
                    boxes_to_targets, register_scheme, resolve_device)
from .trace import Trace
from .yolov5 import RULE_NAMES, UPSTREAM, ComputeLoss, last_write_mask

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
              upstream="ComputeLoss.sort_obj_iou"),
    ParamSpec("autobalance", False, kind="bool",
              doc="adapt the level balance after each call (no effect on this call's loss)",
              upstream="ComputeLoss(autobalance=)"),
)
MAPS = (
    ("tobj", "objectness target per slot: clamp(CIoU, 0) mixed by gr at positives (last write wins), 0 elsewhere"),
    ("obj_bce", "per-slot objectness BCE (focal-weighted when fl_gamma > 0), before averaging"),
    ("obj_prob", "σ(objectness logit) of the prediction"),
    ("focal_weight", "alpha_factor·(1 - p_t)^gamma per slot when fl_gamma > 0, else 1 (plain BCE)"),
    ("positives", "number of positive rows that hit the slot (duplicates > 1)"),
)
COLUMN_DOCS = {
    "gt": "index of the ground-truth box",
    "level": "detection level (0 = P3/8)",
    "anchor": "anchor index within the level",
    "gi": "cell column (x), clamped into the grid",
    "gj": "cell row (y), clamped into the grid",
    "rule": "why the cell is positive: centre, or the left/up/right/down neighbour rule",
    "r_max": "max(w/aw, aw/w, h/ah, ah/h) of the box against this anchor (kept when < anchor_t)",
    "offset": "target centre minus the assigned cell, grid units (= tbox xy; in (-0.5, 1.5))",
    "tbox": "target (x offset, y offset, w, h) in grid units of the level",
    "anch": "anchor (w, h) in grid units of the level",
    "pxy": "decoded prediction offset 2σ(t) - 0.5, grid units",
    "pwh": "decoded prediction size (2σ(t))²·anchor, grid units",
    "pred_box_px": "decoded predicted box (x1, y1, x2, y2) in pixels",
    "target_box_px": "target box (x1, y1, x2, y2) in pixels",
    "iou": "IoU of predicted and target box",
    "rho2": "squared distance between the centres (grid units²)",
    "c2": "squared diagonal of the smallest enclosing box (grid units²)",
    "v": "aspect-ratio term (4/π²)(atan(w/h) - atan(w'/h'))²",
    "alpha": "CIoU trade-off v / (v - IoU + 1), no gradient, no iou > 0.5 gate (YOLOv5)",
    "ciou": "CIoU = IoU - rho²/c² - alpha·v; the box loss is the mean of 1 - CIoU",
    "tobj": "objectness target this row writes: (1 - gr) + gr·clamp(CIoU, 0)",
    "tobj_written": "True when this row's write survived (the last write to a slot wins)",
    "obj_bce": "objectness BCE at this row's slot, against the slot's final target",
    "obj_bce_floor": "BCE(t, t) for the slot's final target t: the entropy floor a soft target leaves "
                     "even when σ(obj) = t exactly (0 only for t = 0 or 1; at obj_pw = 1)",
    "cls_bce": "class BCE of this row averaged over the C classes (0 when nc == 1: no class loss)",
}


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


def _apply_pins(scene: Scene, preds: BlendedHeads, anchors_grid: Tensor, grids, notes: list[str]) -> None:
    for index, pin in enumerate(scene.pins):
        where = f"predictions.pins[{index}]"
        if not 0 <= pin.level < len(preds):
            raise ValueError(f"{where}.level: expected 0..{len(preds) - 1}, got {pin.level}")
        grid_h, grid_w = grids[pin.level]
        num_anchors = anchors_grid.shape[1]
        if not 0 <= pin.anchor < num_anchors:
            raise ValueError(f"{where}.anchor: expected 0..{num_anchors - 1}, got {pin.anchor}")
        if not (0 <= pin.gi < grid_w and 0 <= pin.gj < grid_h):
            raise ValueError(f"{where}: cell (gi {pin.gi}, gj {pin.gj}) is outside the {grid_w}x{grid_h} grid")
        if not (pin.w > 0 and pin.h > 0):
            raise ValueError(f"{where}: w and h must be positive")
        stride = STRIDES[pin.level]
        offset = torch.tensor([pin.cx / stride - pin.gi, pin.cy / stride - pin.gj], device=preds[0].device)
        size = torch.tensor([pin.w / stride, pin.h / stride], device=preds[0].device)
        anchor = anchors_grid[pin.level, pin.anchor].to(preds[0].device)
        clamped = []
        for axis, value in zip("xy", offset.tolist()):
            if not -0.5 < value < 1.5:
                clamped.append(f"{axis} offset {value:.3g} cells (reachable: -0.5..1.5)")
        for axis, value in zip("wh", (size / anchor).tolist()):
            if not 0 < value < 4:
                clamped.append(f"{axis} {value:.3g} anchors (reachable: 0..4)")
        if clamped:
            notes.append(f"Pin {index} (P{3 + pin.level}, anchor {pin.anchor}, cell {pin.gi},{pin.gj}) is "
                         f"unreachable by YOLOv5's decode: {', '.join(clamped)}; clamped to the nearest reachable box.")
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
    compute = ComputeLoss(scene.nc, anchors_px=torch.tensor(DEFAULT_ANCHORS_PX), strides=STRIDES, hyp=hyp,
                          gr=float(scene.param("gr")), sort_obj_iou=bool(scene.param("sort_obj_iou")),
                          autobalance=bool(scene.param("autobalance")), g=float(scene.param("g")))
    grids = [(scene.height // s, scene.width // s) for s in STRIDES]
    num_anchors = compute.na
    shapes = [(1, num_anchors, h, w, 5 + scene.nc) for h, w in grids]
    notes: list[str] = []
    with torch.no_grad():
        assigned = compute.build_targets(shapes, targets, trace=recorder)  # recorded once, used twice
        generator = torch.Generator().manual_seed(scene.seed)
        background = perfect_background(scene.nc, device)
        writes = perfect_writes(shapes, assigned, device)
        # the heads live only inside this block (cached buffers, patched and restored)
        with blended_heads(shapes, background, writes, scene.progress, generator) as preds:
            _apply_pins(scene, preds, compute.anchors, grids, notes)
            loss, items = compute(preds.heads, targets, trace=recorder, assigned=assigned)
            obj_prob = [torch.sigmoid(head[0, ..., 4]) for head in preds.heads]  # (A, H, W) per level
    levels = [LevelInfo(name, stride, grid, torch.tensor(anchors, device=device))
              for name, stride, grid, anchors in zip(compute.level_names, STRIDES, grids, DEFAULT_ANCHORS_PX)]
    positives = _positives_table(recorder, compute, device)
    maps = _maps(recorder, compute, obj_prob, grids)
    losses = {"total": loss.reshape(()), "box": items[0], "obj": items[1], "cls": items[2]}
    for level, name in enumerate(compute.level_names):
        stage = recorder.get(f"loss.{name}.level_losses")
        losses[f"box.{name}"] = stage["box"]
        losses[f"obj.{name}"] = stage["obj_balanced"]
        losses[f"obj_raw.{name}"] = stage["obj"]
        losses[f"cls.{name}"] = stage["cls"]
    notes += _notes(scene, compute, recorder, positives, items)
    return SceneResult(
        scheme="yolov5", levels=levels, positives=positives, rule_names=list(RULE_NAMES), maps=maps,
        losses=losses, trace=trace, device=str(device), column_docs=dict(COLUMN_DOCS), map_docs=dict(MAPS),
        notes=notes, targets=targets,
    )


def _positives_table(trace: Trace, compute: ComputeLoss, device) -> dict[str, Tensor]:
    columns: dict[str, list[Tensor]] = {name: [] for name in COLUMN_DOCS}
    for level, name in enumerate(compute.level_names):
        rows = trace.get(f"build_targets.{name}.rows")
        count = rows["gi"].shape[0]
        if count == 0:
            continue
        stride = STRIDES[level]
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
        columns["obj_bce_floor"].append(F.binary_cross_entropy(final_target, final_target, reduction="none"))
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


def _xyxy_px(centre: Tensor, size: Tensor, stride: int) -> Tensor:
    half = size / 2
    return torch.cat((centre - half, centre + half), 1) * stride  # (P, 4)


def _maps(trace: Trace, compute: ComputeLoss, obj_prob: list[Tensor], grids) -> dict[str, list[Tensor]]:
    maps: dict[str, list[Tensor]] = {name: [] for name, _ in MAPS}
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
           items: Tensor) -> list[str]:
    notes = []
    count = positives["gt"].shape[0]
    per_level = [int((positives["level"] == level).sum()) for level in range(compute.nl)]
    notes.append(f"{count} positive rows from {len(scene.boxes)} boxes ("
                 + ", ".join(f"{name} {n}" for name, n in zip(compute.level_names, per_level))
                 + "): each box can claim up to 3 cells × 3 anchors on every level.")
    overwritten = int((~positives["tobj_written"]).sum())
    if overwritten:
        notes.append(f"{overwritten} positive rows share a slot with a later row: their objectness target "
                     "was overwritten (last write wins; tobj_written is False).")
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
        notes.append(f"CIoU alpha follows YOLOv5 (alpha = v/(v - IoU + 1) for every IoU, no gate): box loss "
                     f"{float(items[0]):.6g}. With the paper's (IoU > 0.5) gate (mmdet PR #5835) it would be "
                     f"{box_gated:.6g}.")
    notes.append("Loss keys: box/obj/cls are after the hyp gains; box.P3, cls.P3 and obj_raw.P3 are per-level "
                 "means before gains, obj.P3 is the objectness mean × balance[level] (3 levels: 4.0, 1.0, 0.4).")
    notes.append("anchor_t is a shape-ratio test (strict <), not an IoU threshold; hyp['iou_t'] is dead code "
                 "upstream (ComputeLoss never reads it).")
    if count:
        best = int(positives["tobj"].argmax())
        target, floor = float(positives["tobj"][best]), float(positives["obj_bce_floor"][best])
        notes.append(f"The objectness target is the (clamped) CIoU, a soft label, not 1: BCE(p, t) is smallest at "
                     f"p = t and even there equals the entropy of t (e.g. t = {target:.4g} leaves {floor:.4g}; column "
                     "obj_bce_floor), so the objectness loss never reaches 0 at positives unless the IoU is 1.")
    if scene.nc == 1:
        notes.append("nc = 1: upstream skips the class loss (cls = 0).")
    if compute.hyp["fl_gamma"] > 0:
        notes.append("fl_gamma > 0: YOLOv5 wraps both the class and the objectness BCE in FocalLoss.")
    if compute.autobalance:
        notes.append("autobalance only changes the balance used by the next call; this loss used the initial one.")
    return notes


SPEC = register_scheme(SchemeSpec(
    name="yolov5", title="YOLOv5", family="yolov5", strides=STRIDES, params=PARAMS, explain=explain_scene,
    upstream=f"{UPSTREAM} utils/loss.py",
    doc="Anchor-ratio filter, up to two neighbour cells per level, CIoU box loss, IoU objectness targets.",
    maps=MAPS, rule_names=RULE_NAMES, anchors_px=DEFAULT_ANCHORS_PX,
))
