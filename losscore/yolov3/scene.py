"""The ``yolov3`` scheme: a learner's scene through the legacy PyTorch-YOLOv3 ``YOLOLayer`` loss.

Three levels P3/8, P4/16, P5/32 with the ``yolov3.cfg`` anchors (the port's model lists them
stride-32 first; the scene shows P3 first). Each level runs :func:`~losscore.yolov3.yolo_layer_loss`
on one image (B = 1); the model's loss is the sum of the three level losses, as the legacy
``Darknet.forward`` adds them.

Which anchor becomes positive (param ``assign``):

* ``port`` — PyTorch-YOLOv3's ``build_targets`` runs per level: every target is positive on
  *every* level, at the anchor of that level with the highest wh-IoU (3 positives per target).
* ``darknet`` — darknet's ``yolo_layer.c`` takes the best wh-IoU over all 9 anchors (``l.total``)
  and the target is positive only on the level whose ``mask`` holds that anchor (1 positive).

The ignore rule is the port's in both modes: an anchor of the target's cell whose wh-IoU exceeds
``ignore_thresh`` leaves the no-object loss. Darknet itself ignores any prediction whose *decoded
box* has IoU > ``ignore_thresh`` with some truth; the ``pred_iou_max`` map shows that quantity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import bbox_iou, xywh2xyxy
from ..predictions import blended_heads
from ..scene import (Check, ColumnSpec, InspectorSpec, LevelInfo, StageCell, scene_levels, LossComposition, LossPart, LossSpec, LossTerm, LossTermSpec,
                     MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec, boxes_to_targets,
                     resolve_device)
from ..text import T, Text
from ..trace import Trace
from .loss import YOLOV3_ANCHORS_PX, YOLOV3_STRIDES, bbox_wh_iou, legacy_build_targets, yolo_layer_loss

__all__ = ["explain_yolov3", "SPEC"]

PERFECT_LOGIT = 8.0  # a perfect head: σ(8) = 0.99966 where the answer is 1, σ(-8) where it is 0
_FRACTION_EPS = 1e-4  # a cell fraction of exactly 0 or 1 has no finite logit; clamp into (0, 1)
RULES = (
    RuleSpec("best anchor of this level (port)", "★", "the anchor of this level with the highest wh-IoU "
             "(PyTorch-YOLOv3 runs build_targets on every level)"),
    RuleSpec("best of all 9 anchors (darknet)", "✦", "the best wh-IoU over all 9 anchors: only its level gets "
             "a positive (darknet yolo_layer.c)"),
)
_LEVEL_NAMES = ("P3", "P4", "P5")
_TERMS = ("x", "y", "w", "h", "conf_obj", "conf_noobj", "conf", "cls")
XYXY = ("x1", "y1", "x2", "y2")

COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "anchor index within the level", "index", group="assignment"),
    ColumnSpec("gi", "cell column (x)", "index", group="assignment"),
    ColumnSpec("gj", "cell row (y)", "index", group="assignment"),
    ColumnSpec("rule", "why the slot is positive: the best anchor of this level, or of all 9", "index", group="assignment"),
    ColumnSpec("wh_iou", "width-height IoU of the target with each anchor of this level (centres aligned)", "iou",
               ("a0", "a1", "a2"), group="assignment"),
    ColumnSpec("best_iou", "the highest of those (darknet mode: over all 9 anchors)", "iou", group="assignment", formula="wh-IoU with the anchors of this level {wh_iou}: the best, {best_iou}, takes the target"),
    ColumnSpec("tx", "target x: fraction of the centre inside its cell, in the slot (last write wins on shared "
                     "slots)", "grid", group="decode"),
    ColumnSpec("ty", "target y: fraction of the centre inside its cell", "grid", group="decode"),
    ColumnSpec("tw", "target w: log(w / anchor_w) + 1e-16 inside the log", "logit", group="decode"),
    ColumnSpec("th", "target h: log(h / anchor_h)", "logit", group="decode"),
    ColumnSpec("pred_box_px", "decoded prediction: centre (σ(tx)+gi)·s, (σ(ty)+gj)·s, size exp(tw)·anchor", "px",
               XYXY, box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "the target box as the loss sees it", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("iou", "iou_scores: IoU of prediction and target with upstream's +1 pixel convention (lower than "
                      "a true IoU)", "iou", group="iou"),
    ColumnSpec("coord_scale", "scale on the coordinate MSE: darknet's 2 - w·h when lambda_scale, else 1", "weight", group="loss", formula="coordinate scale = 2 − w·h = {two_minus_wh} (applied: {coord_scale})"),
    ColumnSpec("two_minus_wh", "2 - w·h with w, h as image fractions (darknet), whether applied or not", "weight", group="loss"),
    ColumnSpec("sq_x", "coord_scale·(σ(tx) - tx)² (the loss x term is the mean of these over positives)", "loss", group="loss"),
    ColumnSpec("sq_y", "coord_scale·(σ(ty) - ty)²", "loss", group="loss"),
    ColumnSpec("sq_w", "coord_scale·(tw_pred - tw)² on the raw output", "loss", group="loss"),
    ColumnSpec("sq_h", "coord_scale·(th_pred - th)²", "loss", group="loss"),
    ColumnSpec("bce_obj", "BCE(σ(obj), 1) at this slot (mean of these × obj_scale is conf_obj)", "loss", group="objectness"),
    ColumnSpec("bce_cls", "sum over classes of BCE(σ(cls), tcls) at this slot", "loss", group="class"),
    ColumnSpec("grad_x", "darknet gradient p - y for x: coord_scale·(σ(tx) - tx) (delta = -gradient)", "grad", group="gradient"),
    ColumnSpec("grad_y", "coord_scale·(σ(ty) - ty)", "grad", group="gradient"),
    ColumnSpec("grad_w", "coord_scale·(tw_pred - tw)", "grad", group="gradient"),
    ColumnSpec("grad_h", "coord_scale·(th_pred - th)", "grad", group="gradient"),
    ColumnSpec("grad_obj", "σ(obj) - 1", "grad", group="gradient"),
    ColumnSpec("grad_cls_target", "σ(cls) - 1 on the target class", "grad", group="gradient"),
    ColumnSpec("grad_cls_max_other", "largest σ(cls) - 0 over the other classes", "grad", group="gradient"),
)

MAPS = (
    MapSpec("noobj_mask", "1 where the no-object BCE counts; ignored anchors (wh-IoU > ignore_thresh) and positives "
                          "are 0", "bool", range=(0.0, 1.0)),
    MapSpec("obj_mask", "1 at positive slots (image, anchor, gj, gi)", "bool", range=(0.0, 1.0)),
    MapSpec("ignored", "1 where an anchor is neither positive nor negative (above ignore_thresh)", "bool",
            range=(0.0, 1.0)),
    MapSpec("max_wh_iou", "largest wh-IoU of a target in this cell with this anchor (compare with ignore_thresh)",
            "iou", range=(0.0, 1.0)),
    MapSpec("pred_iou_max", "largest IoU of the decoded prediction with any target (darknet's ignore criterion)",
            "iou", range=(0.0, 1.0)),
    MapSpec("obj_bce", "objectness BCE per slot where it counts (positives and non-ignored negatives, unscaled)",
            "loss"),
    MapSpec("grad_obj", "darknet gradient σ(obj) - tconf per slot (0 where ignored)", "grad"),
)
LOSSES = LossSpec(
    terms=(
        LossTermSpec("x", "MSE of σ(tx) against the cell fraction, mean over positives, summed over levels"),
        LossTermSpec("y", "MSE of σ(ty), mean over positives, summed over levels"),
        LossTermSpec("w", "MSE of the raw tw against log(w / anchor_w), summed over levels"),
        LossTermSpec("h", "MSE of the raw th, summed over levels"),
        LossTermSpec("conf_obj", "BCE(σ(obj), 1) mean over positives, summed over levels", gain="obj_scale"),
        LossTermSpec("conf_noobj", "BCE(σ(obj), 0) mean over counted negatives, summed over levels",
                     gain="noobj_scale"),
        LossTermSpec("cls", "class BCE mean over positives × C, summed over levels"),
    ),
    formula="x + y + w + h + obj_scale·conf_obj + noobj_scale·conf_noobj + cls (per level, then summed)",
)
PHASES = (
    PhaseSpec("build_targets", "Assign targets", "the best anchor per target, the ignore rule, the offsets"),
    PhaseSpec("assign", "Darknet's best of 9", "which level owns the target (assign = darknet)"),
    PhaseSpec("yolo_layer", "Layer loss", "decode, MSE and BCE terms, darknet's gradients"),
)


def _perfect_background(nc: int, device: torch.device) -> Tensor:
    """``(5 + nc,)``: the perfect head's value of every channel away from the positive slots
    (box channels 0, objectness and every class ``-PERFECT_LOGIT``)."""
    return torch.tensor([0.0] * 4 + [-PERFECT_LOGIT] * (1 + nc), dtype=torch.float32, device=device)


def _level_writes(targets_rows: Tensor, anchors: Tensor, H: int, W: int, nc: int,
                  positive_rows: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The perfect head of one level ``(1, A, H, W, 5 + nc)`` (it decodes exactly to the targets) as
    :func:`_perfect_background` plus writes: ``(flat index, value)`` of the elements that differ."""
    A = anchors.size(0)
    D = 5 + nc
    dummy_boxes = torch.zeros((1, A, H, W, 4), device=device)
    dummy_cls = torch.zeros((1, 1, 1, 1, nc), device=device).expand(1, A, H, W, nc)  # only read at slots
    built = legacy_build_targets(dummy_boxes, dummy_cls, targets_rows, anchors, positive_rows=positive_rows)
    mask = built.obj_mask
    slots = mask.flatten().nonzero().flatten()  # (P,) flat (1, A, H, W) slot indices
    box = torch.stack((torch.logit(built.tx[mask].clamp(_FRACTION_EPS, 1 - _FRACTION_EPS)),
                       torch.logit(built.ty[mask].clamp(_FRACTION_EPS, 1 - _FRACTION_EPS)),
                       built.tw[mask], built.th[mask],
                       torch.full_like(built.tw[mask], PERFECT_LOGIT)), 1)  # (P, 5): x, y, w, h, objectness
    box_index = slots.view(-1, 1) * D + torch.arange(5, device=device).view(1, 5)
    slot_of, cls = (built.tcls[mask] > 0).nonzero(as_tuple=True)  # the classes written +PERFECT_LOGIT
    cls_index = slots[slot_of] * D + 5 + cls
    index = torch.cat((box_index.flatten(), cls_index))
    values = torch.cat((box.flatten(), torch.full((cls_index.numel(),), PERFECT_LOGIT, device=device)))
    return index, values


def _apply_pins(logits: Tensor, scene: Scene, level: int, stride: int, anchors_px: Tensor,
                notes: list, write=None) -> None:
    """Write each pin of ``level`` into its slot's raw x, y, w, h; ``write(index, values)`` (flat
    indices into ``logits``, e.g. :meth:`BlendedHeads.write`) instead of setting them in place."""
    _, A, H, W, D = logits.shape
    for pin in scene.pins:
        if pin.level != level:
            continue
        frac_x, frac_y = pin.cx / stride - pin.gi, pin.cy / stride - pin.gj  # validated by validate_scene
        if not (0 < frac_x < 1 and 0 < frac_y < 1):
            notes.append(T("pin at level {level} anchor {anchor} cell ({gi}, {gj}): the centre must lie strictly "
                           "inside the cell (σ reaches (0, 1) only); clamped to the cell.", level=level,
                           anchor=pin.anchor, gi=pin.gi, gj=pin.gj))
        frac_x = min(max(frac_x, _FRACTION_EPS), 1 - _FRACTION_EPS)
        frac_y = min(max(frac_y, _FRACTION_EPS), 1 - _FRACTION_EPS)
        anchor_w, anchor_h = float(anchors_px[pin.anchor, 0]), float(anchors_px[pin.anchor, 1])
        if write is not None:
            first = ((pin.anchor * H + pin.gj) * W + pin.gi) * D
            raw = (math.log(frac_x / (1 - frac_x)), math.log(frac_y / (1 - frac_y)), math.log(pin.w / anchor_w),
                   math.log(pin.h / anchor_h))
            write(torch.arange(first, first + 4, device=logits.device),
                  torch.tensor(raw, dtype=logits.dtype, device=logits.device))
            continue
        logits[0, pin.anchor, pin.gj, pin.gi, 0] = math.log(frac_x / (1 - frac_x))
        logits[0, pin.anchor, pin.gj, pin.gi, 1] = math.log(frac_y / (1 - frac_y))
        logits[0, pin.anchor, pin.gj, pin.gi, 2] = math.log(pin.w / anchor_w)
        logits[0, pin.anchor, pin.gj, pin.gi, 3] = math.log(pin.h / anchor_h)


def _scatter_max(values: Tensor, flat_index: Tensor, size: int) -> Tensor:
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, flat_index, values, reduce="amax", include_self=True)


def explain_yolov3(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run the legacy YOLOv3 loss on ``scene`` (already validated); see the module docstring."""
    device = resolve_device(scene.device)
    targets = boxes_to_targets(scene, device)  # (N, 6)
    N, nc = targets.size(0), scene.nc
    ignore_thresh = float(scene.param("ignore_thresh"))
    obj_scale = float(scene.param("obj_scale"))
    noobj_scale = float(scene.param("noobj_scale"))
    lambda_scale = bool(scene.param("lambda_scale"))
    assign = scene.param("assign")
    generator = torch.Generator().manual_seed(scene.seed)
    notes: list[Text | str] = []
    strides, anchors_levels = scene_levels(scene, SPEC)  # the scene's own levels, or yolov3.cfg's
    level_names = _names(strides)
    anchors_all_px = torch.tensor(anchors_levels, dtype=torch.float32, device=device)  # (L, A, 2)
    L, A = anchors_all_px.shape[:2]
    image_wh = torch.tensor([scene.width, scene.height], dtype=torch.float32, device=device)

    if trace is not None:
        trace.record("build_targets.inputs", "Targets from the drawn boxes",
                     "rows (image, class, cx, cy, w, h): cx and w divided by the image width, cy and h by "
                     "the height (the data loader's normalisation)",
                     code="utils/datasets.py ListDataset (labels)", tensors={"targets": (targets, "N 6")},
                     values={"assign": assign, "lambda_scale": lambda_scale})
    owner_level = None
    if assign == "darknet":
        targets_wh_px = targets[:, 4:6] * image_wh  # (N, 2)
        wh_iou_all = bbox_wh_iou(anchors_all_px.view(L * A, 2), targets_wh_px)  # (L*A, N)
        best_iou_all, best_all = wh_iou_all.max(0)  # (N,)
        owner_level = torch.div(best_all, A, rounding_mode="floor")  # (N,)
        if trace is not None:
            trace.record("assign.best_of_9", "Best of all 9 anchors (darknet)",
                         "darknet compares the target with every anchor of the model; only the level "
                         "whose mask holds the best anchor gets a positive",
                         code="darknet src/yolo_layer.c forward_yolo_layer (best_n over l.total)",
                         tensors={"wh_iou": (wh_iou_all, "9 N"), "best_anchor": (best_all, "N"),
                                  "best_iou": (best_iou_all, "N"), "level": (owner_level, "N")})
        notes.append("assign = darknet: each target is positive only on the level that owns the best "
                     "of all 9 anchors (yolo_layer.c); the PyTorch-YOLOv3 port instead makes it "
                     "positive on every level (assign = port).")
    else:
        notes.append("assign = port: PyTorch-YOLOv3 runs build_targets per level, so each target is "
                     "positive on all three levels at that level's best anchor; darknet would keep "
                     "only the best of all 9 anchors (assign = darknet).")
    notes.append("ignore rule: anchors of the target's cell with wh-IoU > ignore_thresh leave the "
                 "no-object loss (the port's rule). Darknet ignores by the IoU of the decoded "
                 "prediction with any truth instead (map pred_iou_max); truth_thresh = 1 never adds a "
                 "positive.")
    if lambda_scale:
        notes.append("lambda_scale on: coordinate MSE × (2 - w·h) as darknet; the PyTorch-YOLOv3 "
                     "port has no such scale (turn it off to get the port's numbers exactly).")
    if N == 0:
        notes.append("no targets: upstream takes means over empty selections, so the coordinate, "
                     "objectness-positive and class terms are nan (as upstream).")

    levels: list[LevelInfo] = []
    box_cells = torch.zeros((N, len(strides), 2), dtype=torch.long)
    check_parts: list[tuple] = []  # per level what _level_checks reads, copied to the CPU
    columns: dict[str, list[Tensor]] = {}
    maps: dict[str, list[Tensor]] = {m.name: [] for m in MAPS}
    losses: dict[str, Tensor] = {}
    shapes, writes = [], []
    for level, stride in enumerate(strides):  # the perfect head of every level, as writes over its background
        H, W = scene.height // stride, scene.width // stride
        positive_rows = None if owner_level is None else owner_level == level
        shapes.append((1, A, H, W, 5 + nc))
        writes.append(_level_writes(targets, anchors_all_px[level] / stride, H, W, nc, positive_rows, device))
    # the heads are reused buffers, valid inside this block only: everything that reads them runs here
    # (blended_heads: the bits of blend_logits of the dense perfect head)
    with blended_heads(shapes, _perfect_background(nc, device), writes, scene.progress, generator) as heads:
        for level, stride in enumerate(strides):
            name = level_names[level]
            H, W = scene.height // stride, scene.width // stride
            anchors_px = anchors_all_px[level]  # (A, 2)
            anchors = anchors_px / stride  # (A, 2) grid units
            levels.append(LevelInfo(name, stride, (H, W), anchors_px))
            positive_rows = None if owner_level is None else owner_level == level
            logits = heads[level]
            _apply_pins(logits, scene, level, stride, anchors_px, notes,
                        write=lambda index, values, level=level: heads.write(level, index, values))
            if trace is not None:
                with trace.level(name):
                    result = yolo_layer_loss(logits, targets, anchors, ignore_thres=ignore_thresh,
                                             obj_scale=obj_scale, noobj_scale=noobj_scale,
                                             lambda_scale=lambda_scale, positive_rows=positive_rows, trace=trace)
            else:
                result = yolo_layer_loss(logits, targets, anchors, ignore_thres=ignore_thresh, obj_scale=obj_scale,
                                         noobj_scale=noobj_scale, lambda_scale=lambda_scale,
                                         positive_rows=positive_rows)
            built, decoded = result.targets, result.decoded
            for term in _TERMS:
                losses[f"{term}.{name}"] = result.terms[term].detach()
            losses[f"total.{name}"] = result.total.detach()
            if owner_level is None and N and bool(torch.isnan(result.total)):
                notes.append(T("{level}: a loss term is nan (an empty mean), as upstream.", level=name))
            elif owner_level is not None and N and not bool(positive_rows.any()):
                # Darknet sums its deltas, so a level that owns no target adds nothing to the
                # positive terms; the port's means over an empty selection would be nan.
                for term in _TERMS:
                    losses[f"{term}.{name}"] = torch.nan_to_num(losses[f"{term}.{name}"], nan=0.0)
                conf = obj_scale * losses[f"conf_obj.{name}"] + noobj_scale * losses[f"conf_noobj.{name}"]
                losses[f"conf.{name}"] = conf
                losses[f"total.{name}"] = sum(losses[f"{term}.{name}"] for term in ("x", "y", "w", "h", "cls")) + conf
                notes.append(T("{level}: no target's best anchor is on this level; darknet sums its deltas, so the "
                               "positive terms add 0 here (the port's means over no positives would be nan).", level=name))

            if N:
                box_cells[:, level, 0], box_cells[:, level, 1] = built.gi.cpu(), built.gj.cpu()
                check_parts.append((level, name, anchors_px.cpu(), built.wh_iou.cpu(), built.best_anchor.cpu(),
                                    built.gi.cpu(), built.gj.cpu()))

            # -- per-positive rows (one per target row positive here) --------------------------------
            rows = torch.arange(N, device=device) if positive_rows is None else positive_rows.nonzero().flatten()
            anchor_idx, gj, gi = built.best_anchor[rows], built.gj[rows], built.gi[rows]
            slot = (torch.zeros_like(rows), anchor_idx, gj, gi)
            labels = targets[rows, 1].long()
            P = rows.numel()
            grid_gain = torch.tensor([W, H, W, H], dtype=torch.float32, device=device)
            target_boxes = targets[rows, 2:6] * grid_gain  # (P, 4) grid units
            with torch.no_grad():
                prob_cls = decoded.cls[slot]  # (P, C)
                tcls = built.tcls[slot]
                bce_cls = F.binary_cross_entropy(prob_cls, tcls, reduction="none").sum(-1)
                other = prob_cls.clone()
                other[torch.arange(P, device=device), labels] = -1.0
                col = {
                    "gt": rows, "level": torch.full_like(rows, level), "anchor": anchor_idx, "gi": gi, "gj": gj,
                    "rule": torch.full_like(rows, 0 if owner_level is None else 1),
                    "wh_iou": built.wh_iou[:, rows].t(),
                    "best_iou": (built.wh_iou[:, rows].max(0).values if owner_level is None
                                 else best_iou_all[rows]),
                    "tx": built.tx[slot], "ty": built.ty[slot], "tw": built.tw[slot], "th": built.th[slot],
                    "pred_box_px": xywh2xyxy(decoded.pred_boxes[slot] * stride),
                    "target_box_px": xywh2xyxy(target_boxes * stride),
                    "iou": built.iou_scores[slot],
                    "coord_scale": built.coord_scale[slot],
                    "two_minus_wh": 2 - targets[rows, 4] * targets[rows, 5],
                    "sq_x": built.coord_scale[slot] * (decoded.x[slot] - built.tx[slot]) ** 2,
                    "sq_y": built.coord_scale[slot] * (decoded.y[slot] - built.ty[slot]) ** 2,
                    "sq_w": built.coord_scale[slot] * (decoded.w[slot] - built.tw[slot]) ** 2,
                    "sq_h": built.coord_scale[slot] * (decoded.h[slot] - built.th[slot]) ** 2,
                    "bce_obj": F.binary_cross_entropy(decoded.conf[slot], torch.ones_like(decoded.conf[slot]),
                                                      reduction="none"),
                    "bce_cls": bce_cls,
                    "grad_x": result.gradients["x"][slot], "grad_y": result.gradients["y"][slot],
                    "grad_w": result.gradients["w"][slot], "grad_h": result.gradients["h"][slot],
                    "grad_obj": result.gradients["obj"][slot],
                    "grad_cls_target": prob_cls[torch.arange(P, device=device), labels] - 1,
                    "grad_cls_max_other": (other.max(-1).values.clamp_min(0) if nc > 1
                                           else torch.zeros(P, device=device)),
                }
            for key, value in col.items():
                columns.setdefault(key, []).append(value.detach())

            # -- maps (A, H, W) -----------------------------------------------------------------------
            with torch.no_grad():
                obj_mask, noobj_mask = built.obj_mask[0], built.noobj_mask[0]
                maps["obj_mask"].append(obj_mask.float())
                maps["noobj_mask"].append(noobj_mask.float())
                maps["ignored"].append(((~obj_mask) & (~noobj_mask)).float())
                flat = (torch.arange(A, device=device).view(A, 1) * (H * W)
                        + (built.gj * W + built.gi).view(1, N)).flatten()  # (A*N,)
                maps["max_wh_iou"].append(_scatter_max(built.wh_iou.flatten(), flat, A * H * W).view(A, H, W)
                                          if N else torch.zeros((A, H, W), device=device))
                if N:
                    pred = decoded.pred_boxes[0].reshape(A * H * W, 1, 4)
                    truth = (targets[:, 2:6] * grid_gain).view(1, N, 4)
                    pred_iou = bbox_iou(pred, truth).squeeze(-1).amax(-1).view(A, H, W)
                else:
                    pred_iou = torch.zeros((A, H, W), device=device)
                maps["pred_iou_max"].append(pred_iou)
                counted = obj_mask | noobj_mask
                obj_bce = F.binary_cross_entropy(decoded.conf[0], built.tconf[0], reduction="none")
                maps["obj_bce"].append(torch.where(counted, obj_bce, torch.zeros_like(obj_bce)))
                maps["grad_obj"].append(result.gradients["obj"][0])

    positives = {key: torch.cat(parts) for key, parts in columns.items()}
    for term in _TERMS + ("total",):
        losses[term] = sum((losses[f"{term}.{name}"] for name in level_names), torch.zeros((), device=device))
    composition = _composition(losses, obj_scale, noobj_scale, level_names)

    def stage_cells() -> dict[str, list[StageCell]]:
        out: dict[str, list[StageCell]] = {}
        rows = list(zip(positives["gt"].tolist(), positives["level"].tolist(), positives["anchor"].tolist(),
                        positives["gi"].tolist(), positives["gj"].tolist(), positives["best_iou"].tolist()))
        for level, name in enumerate(level_names):
            here = [r for r in rows if r[1] == level]
            centre = T("centre cell")
            cells = [StageCell(n, level, -1, int(box_cells[n, level, 0]), int(box_cells[n, level, 1]), centre)
                     for n in range(N)]
            for step in ("scale_to_grid", "wh_iou", "ignore", "offsets", "coord_scale", "classes"):
                out[f"build_targets.{name}.{step}"] = cells
            positive = [StageCell(n, L, a, gi, gj, T("wh-IoU {iou:.2f}", iou=iou)) for n, L, a, gi, gj, iou in here]
            for step in ("decode", "terms", "gradients", "metrics"):
                out[f"yolo_layer.{name}.{step}"] = positive
        return out

    return SceneResult(
        scheme="yolov3", levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, box_cells=box_cells, notes=notes, stage_cells=stage_cells,
        checks=lambda: [check for part in check_parts for check in _level_checks(
            *part, ignore_thresh, None if owner_level is None else owner_level.cpu(),
            None if owner_level is None else best_all.cpu())],
        targets=targets)


def _names(strides) -> tuple[str, ...]:
    """``P3`` for stride 8 (P = log2 stride) when every stride is a power of two, else P3, P4, ..."""
    if all(float(s).is_integer() and math.log2(s).is_integer() for s in strides):
        return tuple(f"P{int(math.log2(s))}" for s in strides)
    return tuple(f"P{3 + i}" for i in range(len(strides)))


def _composition(losses: dict[str, Tensor], obj_scale: float, noobj_scale: float, level_names) -> LossComposition:
    """x + y + w + h + obj_scale·conf_obj + noobj_scale·conf_noobj + cls, each summed over the levels."""
    gains = {"conf_obj": obj_scale, "conf_noobj": noobj_scale}
    terms = []
    for term in ("x", "y", "w", "h", "conf_obj", "conf_noobj", "cls"):
        parts = tuple(LossPart(name, losses[f"{term}.{name}"]) for name in level_names)
        gain = gains.get(term, 1.0)
        value = losses[term] * gain if term in gains else losses[term]
        terms.append(LossTerm(term, parts, losses[term], value, gain=gain))
    return LossComposition(tuple(terms), sum((t.value for t in terms), torch.zeros_like(losses["total"])),
                           losses["total"])


_BEST_OF_LEVEL = "{level} anchor {anchor} ({aw:g}×{ah:g} px): wh-IoU {iou:.4g}, the best of this level: positive"
_BEST_OF_9 = "{level} anchor {anchor} ({aw:g}×{ah:g} px): wh-IoU {iou:.4g}, the best of all 9 anchors: positive"


def _level_checks(level: int, name: str, anchors_px: Tensor, wh_iou: Tensor, best_anchor: Tensor, gi: Tensor,
                  gj: Tensor, ignore_thresh: float, owner_level: Tensor | None, best_all: Tensor | None
                  ) -> list[Check]:
    """Per target on this level: each anchor's wh-IoU (A, N), which one is the positive, which are
    ignored."""
    out = []
    num_anchors = wh_iou.shape[0]
    best = best_anchor.tolist()
    gi, gj = gi.tolist(), gj.tolist()
    owners = None if owner_level is None else owner_level.cpu().tolist()
    best9 = None if best_all is None else best_all.cpu().tolist()
    for gt in range(wh_iou.shape[1]):
        here = owners is None or owners[gt] == level
        for anchor in range(num_anchors):
            aw, ah = anchors_px[anchor].tolist()
            iou = float(wh_iou[anchor, gt])
            head = {"level": name, "anchor": anchor, "aw": aw, "ah": ah, "iou": iou}
            if anchor == best[gt] and here:
                text = T(_BEST_OF_LEVEL if owners is None else _BEST_OF_9, **head)
                out.append(Check(gt, level, anchor, gi[gt], gj[gt], "best_anchor", True,
                                 text, {"wh_iou": iou}, label=T("★ best {iou:.2f}", iou=iou)))
                continue
            if anchor == best[gt]:
                owner_anchor = best9[gt] % num_anchors
                out.append(Check(gt, level, anchor, gi[gt], gj[gt], "best_anchor", False,
                                 T("{level} anchor {anchor} ({aw:g}×{ah:g} px): wh-IoU {iou:.4g}, best of this level, "
                                   "but the best of all 9 anchors is on P{owner} (anchor {owner_anchor}): not positive "
                                   "here (darknet)", **head, owner=3 + owners[gt], owner_anchor=owner_anchor),
                                 {"wh_iou": iou}, label=T("best here {iou:.2f}, not of 9", iou=iou)))
            ignored = iou > ignore_thresh
            text = (T("{level} anchor {anchor} ({aw:g}×{ah:g} px): wh-IoU {iou:.4g} > ignore_thresh {ignore_thresh:g}: "
                      "ignored (left out of the no-object loss)", **head, ignore_thresh=ignore_thresh)
                    if ignored else
                    T("{level} anchor {anchor} ({aw:g}×{ah:g} px): wh-IoU {iou:.4g} ≤ ignore_thresh {ignore_thresh:g}: "
                      "a negative (in the no-object loss)", **head, ignore_thresh=ignore_thresh))
            out.append(Check(gt, level, anchor, gi[gt], gj[gt], "ignore", not ignored, text,
                             {"wh_iou": iou, "ignore_thresh": ignore_thresh},
                             label=(T("∅ ignored {iou:.2f}", iou=iou) if ignored
                                    else T("negative {iou:.2f}", iou=iou))))
    return out


SPEC = SchemeSpec(
    custom_levels=True,
    name="yolov3",
    title="YOLOv3 (PyTorch-YOLOv3 legacy / darknet)",
    family="yolov3",
    strides=YOLOV3_STRIDES,
    params=(
        ParamSpec("ignore_thresh", 0.5, 0.0, 1.0, 0.01, doc="an anchor of the target's cell with wh-IoU above "
                  "this is removed from the no-object loss", upstream="YOLOLayer.ignore_thres / [yolo] ignore_thresh",
                  inert_hint="no anchor of a box's cell has its wh-IoU on the other side of the old and the new "
                             "ignore_thresh here; try a box close to an anchor's shape (the 'ratio' preset) and "
                             "watch the ignored anchors"),
        ParamSpec("obj_scale", 1.0, 0.0, 100.0, 0.1, doc="weight of the positive objectness BCE",
                  upstream="YOLOLayer.obj_scale"),
        ParamSpec("noobj_scale", 100.0, 0.0, 1000.0, 0.5, doc="weight of the no-object BCE (100 at the "
                  "pinned legacy commit, 0.5 on later master)", upstream="YOLOLayer.noobj_scale"),
        ParamSpec("lambda_scale", True, kind="bool", doc="darknet's 2 - w·h scale on the coordinate loss "
                  "(off = the port exactly)", upstream="yolo_layer.c delta_yolo_box scale"),
        ParamSpec("assign", "port", kind="choice", choices=("port", "darknet"),
                  doc="port: best anchor on every level; darknet: best of all 9 anchors, one level",
                  upstream="utils/utils.py build_targets vs yolo_layer.c best_n"),
    ),
    explain=explain_yolov3,
    upstream="eriklindernoren/PyTorch-YOLOv3@7dd01ec utils/utils.py + models.py; darknet src/yolo_layer.c",
    doc=("three levels P3/8, P4/16, P5/32 with yolov3.cfg's anchors; each target takes the anchor of best "
         "width-height IoU (per level as the PyTorch port, or of all 9 as darknet), anchors above "
         "ignore_thresh leave the no-object loss, coordinates are MSE (× 2 - w·h in darknet), "
         "objectness and classes BCE; every delta is p - y."),
    maps=MAPS, rules=RULES, columns=COLUMNS, losses=LOSSES, phases=PHASES, anchors_px=YOLOV3_ANCHORS_PX,
    level_names=_LEVEL_NAMES, pred_box="pred_box_px", target_box="target_box_px",
    inspector=InspectorSpec(groups=(("assignment", "Assignment"), ("decode", "Targets"), ("iou", "IoU"), ("loss", "Loss terms"), ("objectness", "Objectness"), ("class", "Class"), ("gradient", "Darknet gradients")),
                            target_columns=("tx", "ty", "tw", "th"), loss_columns=("sq_x", "sq_y", "sq_w", "sq_h",
                                                                                  "bce_obj", "bce_cls"),
                            target_map="obj_mask", loss_map="obj_bce"),
)
