"""The "focal" scheme: a focal-loss playground on MMDetection's real ``FocalLoss``."""
from __future__ import annotations

import torch
from torch import Tensor

from ..predictions import blended_heads
from ..scene import (ColumnSpec, FocalSpec, InspectorSpec, LevelInfo, StageCell, LossComposition, LossPart, LossSpec, LossTerm, LossTermSpec,
                     MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec, boxes_to_targets,
                     resolve_device)
from ..text import T, Text
from ..trace import Trace
from .loss import FocalLoss

__all__ = ["SPEC", "explain_focal", "centre_in_box_labels"]

FOCAL_STRIDES = (8, 16, 32)
_FOCAL_LEVELS = ("P3", "P4", "P5")
_FOCAL_LOGIT = 8.0  # a perfect head: +8 for the right class, -8 for every other one
FOCAL_RULES = (RuleSpec("centre in box", "●", "the cell centre lies strictly inside a box of this class "
                                               "(the smallest box wins)"),)
FOCAL_COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "0: one cell per location", "index", group="assignment"),
    ColumnSpec("gi", "cell column (x)", "index", group="assignment"),
    ColumnSpec("gj", "cell row (y)", "index", group="assignment"),
    ColumnSpec("rule", "centre in box", "index", group="assignment"),
    ColumnSpec("p", "σ(logit) of the cell's target class", "prob", group="focal"),
    ColumnSpec("p_t", "p_t of the target-class element (= p, the target is 1 there)", "prob", group="focal"),
    ColumnSpec("alpha_factor", "alpha (the element is positive)", "weight", group="focal"),
    ColumnSpec("modulating", "(1 - p_t)^gamma of the target-class element", "weight", group="focal"),
    ColumnSpec("focal_weight", "alpha_factor · modulating of the target-class element", "weight", group="focal"),
    ColumnSpec("bce", "BCE-with-logits of the target-class element", "loss", group="focal"),
    ColumnSpec("focal", "bce · focal_weight of the target-class element (unreduced)", "loss", group="focal", formula="focal = α_t·(1 − p_t)^γ·BCE = {alpha_factor}·{modulating}·{bce} = {focal}"),
    ColumnSpec("focal_row", "focal loss of the cell summed over all C classes (its negatives included)", "loss", group="loss"),
)
FOCAL_MAPS = (
    MapSpec("loss", "focal loss per cell, summed over the C classes, before the reduction", "loss"),
    MapSpec("p_t", "p_t of one column per cell: the target class at positives, the most probable class at "
                   "background cells", "prob", range=(0.0, 1.0)),
    MapSpec("focal_weight", "alpha_factor · (1 - p_t)^gamma of that same column", "weight"),
    MapSpec("alpha_factor", "alpha (positive column) or 1 - alpha (background column) of that column", "weight",
            range=(0.0, 1.0)),
    MapSpec("modulating", "(1 - p_t)^gamma of that column", "weight", range=(0.0, 1.0)),
    MapSpec("positive", "1 where the cell centre lies inside a box (the cell is positive for its class)", "bool",
            range=(0.0, 1.0)),
)
FOCAL_LOSSES = LossSpec(
    terms=(LossTermSpec("focal", "focal loss summed over every cell and class: positive cells, then background",
                        divisor="avg_factor (positive cells) or S·C elements", gain="loss_weight"),),
    formula="loss_weight × Σ focal / avg_factor",
)
FOCAL_PHASES = (
    PhaseSpec("assign", "Label cells", "a cell is positive for the class of the smallest box that holds its centre"),
    PhaseSpec("focal", "Focal loss", "p_t, alpha factor, (1 - p_t)^gamma, weighted BCE, reduction"),
)


def centre_in_box_labels(centres: Tensor, boxes_xyxy: Tensor, box_classes: Tensor, num_classes: int
                         ) -> tuple[Tensor, Tensor]:
    """Label each point by the smallest box whose interior holds it.

    Args:
        centres (Tensor[S, 2]): points (x, y) in pixels. boxes_xyxy (Tensor[N, 4]) pixels.
        box_classes (Tensor[N]) int64. num_classes: C, the background label.

    Returns:
        (labels (Tensor[S]) int64 in [0, C], gt (Tensor[S]) int64 box index or -1).
        Strictly inside: a centre on a box edge is background (as FCOS's min(l, t, r, b) > 0).
    """
    S, N = centres.size(0), boxes_xyxy.size(0)
    if N == 0:
        return (torch.full((S,), num_classes, dtype=torch.long, device=centres.device),
                torch.full((S,), -1, dtype=torch.long, device=centres.device))
    x, y = centres[:, 0:1], centres[:, 1:2]  # (S, 1)
    inside = ((x > boxes_xyxy[:, 0]) & (x < boxes_xyxy[:, 2])
              & (y > boxes_xyxy[:, 1]) & (y < boxes_xyxy[:, 3]))  # (S, N)
    area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])  # (N,)
    area_if_inside = torch.where(inside, area.expand(S, N), torch.full_like(inside, float("inf"), dtype=area.dtype))
    smallest_area, gt = area_if_inside.min(1)  # ties: the lower box index
    positive = torch.isfinite(smallest_area)
    labels = torch.where(positive, box_classes[gt], torch.full_like(gt, num_classes))
    return labels, torch.where(positive, gt, torch.full_like(gt, -1))


def explain_focal(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Focal-loss playground: anchor-free cells labelled by centre-in-box, one FocalLoss call over
    all levels (RetinaNet sums its levels with one shared avg_factor, which is the same thing)."""
    device = resolve_device(scene.device)
    nc = scene.nc
    gamma, alpha = float(scene.param("gamma")), float(scene.param("alpha"))
    loss_weight = float(scene.param("loss_weight"))
    reduction = scene.param("reduction")
    use_avg_factor = bool(scene.param("use_avg_factor"))
    generator = torch.Generator().manual_seed(scene.seed)
    notes: list[Text | str] = []
    targets = boxes_to_targets(scene, device)
    boxes_xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32,
                              device=device).view(-1, 4)
    box_classes = torch.tensor([b.cls for b in scene.boxes], dtype=torch.long, device=device)

    levels, labels_parts, gt_parts, shapes, writes, cells = [], [], [], [], [], []
    for stride, name in zip(FOCAL_STRIDES, _FOCAL_LEVELS):
        H, W = scene.height // stride, scene.width // stride
        levels.append(LevelInfo(name, stride, (H, W), None))
        gj, gi = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
        centres = torch.stack(((gi.flatten() + 0.5) * stride, (gj.flatten() + 0.5) * stride), 1).float()  # (H*W, 2)
        labels, gt = centre_in_box_labels(centres, boxes_xyxy, box_classes, nc)
        # the perfect head (H*W, C): -_FOCAL_LOGIT everywhere, +_FOCAL_LOGIT at each positive's class
        rows = (labels < nc).nonzero().flatten()
        shapes.append((H * W, nc))
        writes.append((rows * nc + labels[rows], torch.full((rows.numel(),), _FOCAL_LOGIT, device=device)))
        labels_parts.append(labels)
        gt_parts.append(gt)
        cells.append((gi.flatten(), gj.flatten(), H, W))
    background = torch.full((nc,), -_FOCAL_LOGIT, device=device)
    with blended_heads(shapes, background, writes, scene.progress, generator) as heads:  # blend_logits' bits
        logits = torch.cat(heads.heads)  # (S, C), S = sum of H*W over the levels: a copy, outliving the block
    labels = torch.cat(labels_parts)  # (S,)
    num_pos = int((labels < nc).sum())
    if scene.pins:
        notes.append("the focal scheme has no box regression, so pins are ignored.")

    avg_factor = None
    if use_avg_factor and reduction == "mean":
        avg_factor = float(max(num_pos, 1))
        notes.append(T("avg_factor = number of positive cells = {num_pos} (0 clamped to 1, as FCOS does): the summed "
                       "loss is divided by it (RetinaNet), not by all S·C elements.", num_pos=num_pos) if num_pos == 0
                     else T("avg_factor = number of positive cells = {num_pos}: the summed loss is divided by it "
                            "(RetinaNet), not by all S·C elements.", num_pos=num_pos))
    elif use_avg_factor:
        notes.append("use_avg_factor is ignored with reduction 'sum': upstream raises ValueError for "
                     "avg_factor with 'sum'.")
    if trace is not None:
        trace.record("assign.centre_in_box", "Cells labelled by centre-in-box",
                     "a cell is positive for class c when its centre lies strictly inside a box of class c "
                     "(the smallest box wins); every other cell is background (label C)",
                     code="losscore.mmdet.scene.centre_in_box_labels (FCOS-style)",
                     tensors={"labels": (labels, "S"), "gt": (torch.cat(gt_parts), "S")},
                     values={"num_pos": num_pos, "num_cells": int(labels.numel()), "num_classes": nc})
    module = FocalLoss(use_sigmoid=True, gamma=gamma, alpha=alpha, reduction=reduction, loss_weight=loss_weight)
    total, terms = module.evaluate(logits, labels, avg_factor=avg_factor, trace=trace)

    with torch.no_grad():
        positive = labels < nc
        column = torch.where(positive, labels.clamp(max=nc - 1), terms.prob.argmax(1))  # (S,)
        picked = lambda t: t.gather(1, column.view(-1, 1)).squeeze(1)  # noqa: E731
        loss_row = terms.loss.sum(1)  # (S,)
        element_sum = terms.loss.sum()
        # The parts of the reported total that come from positive and background cells.
        scale = total / element_sum if float(element_sum) > 0 else torch.zeros((), device=device)
        losses = {"total": total.detach(), "pos": (loss_row[positive].sum() * scale).detach(),
                  "neg": (loss_row[~positive].sum() * scale).detach()}
        maps: dict[str, list[Tensor]] = {m.name: [] for m in FOCAL_MAPS}
        columns: dict[str, list[Tensor]] = {}
        start = 0
        for level, (gi, gj, H, W) in enumerate(cells):
            span = slice(start, start + H * W)
            start += H * W
            losses[f"total.{_FOCAL_LEVELS[level]}"] = (loss_row[span].sum() * scale).detach()
            for name, value in (("loss", loss_row), ("p_t", picked(terms.p_t)),
                                ("focal_weight", picked(terms.focal_weight)),
                                ("alpha_factor", picked(terms.alpha_factor)),
                                ("modulating", picked(terms.modulating)), ("positive", positive.float())):
                maps[name].append(value[span].view(1, H, W))
            pos_index = positive[span].nonzero().flatten()
            sample = pos_index + span.start
            target_class = labels[sample]
            col = {
                "gt": gt_parts[level][pos_index], "level": torch.full_like(pos_index, level),
                "anchor": torch.zeros_like(pos_index), "gi": gi[pos_index], "gj": gj[pos_index],
                "rule": torch.zeros_like(pos_index),
            }
            for key, source in (("p", terms.prob), ("p_t", terms.p_t), ("alpha_factor", terms.alpha_factor),
                                ("modulating", terms.modulating), ("focal_weight", terms.focal_weight),
                                ("bce", terms.bce), ("focal", terms.loss)):
                col[key] = source[sample, target_class]
            col["focal_row"] = loss_row[sample]
            for key, value in col.items():
                columns.setdefault(key, []).append(value)
    positives = {key: torch.cat(parts) for key, parts in columns.items()}
    notes.append("losses pos / neg: the parts of the total from positive cells (all C columns of those "
                 "cells) and from background cells; they add up to the total.")
    notes.append("maps p_t / focal_weight / alpha_factor / modulating show one column per cell: the "
                 "target class at positive cells, the most probable class at background cells.")
    divisor = avg_factor if avg_factor is not None else (float(terms.loss.numel()) if reduction == "mean" else 1.0)
    parts = (LossPart(T("positive cells"), loss_row[positive].sum()),
             LossPart(T("background cells"), loss_row[~positive].sum()))
    composition = LossComposition(
        (LossTerm("focal", parts, element_sum, total.detach(), gain=loss_weight, divisor=divisor,
                  normalised=None if divisor == 1.0 else element_sum / divisor),),
        total.detach(), total.detach())
    def stage_cells() -> dict[str, list[StageCell]]:
        cells = [StageCell(gt, L, 0, gi, gj, T("p_t {p:.2g}", p=p)) for gt, L, gi, gj, p in zip(
            positives["gt"].tolist(), positives["level"].tolist(), positives["gi"].tolist(), positives["gj"].tolist(),
            positives["p_t"].tolist())]
        names = ("assign.centre_in_box", "focal.p_t", "focal.alpha_factor", "focal.modulating", "focal.focal_weight",
                 "focal.loss")
        return {name: cells for name in names}

    return SceneResult(
        scheme="focal", levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, notes=notes, targets=targets, stage_cells=stage_cells)


SPEC = SchemeSpec(
    name="focal",
    title="Focal loss (MMDetection FocalLoss)",
    family="mmdet",
    strides=FOCAL_STRIDES,
    params=(
        ParamSpec("gamma", 2.0, 0.0, 5.0, 0.1, doc="focusing: (1 - p_t)^gamma fades easy elements",
                  upstream="FocalLoss.gamma"),
        ParamSpec("alpha", 0.25, 0.0, 1.0, 0.01, doc="weight of positive elements (negatives get 1 - alpha)",
                  upstream="FocalLoss.alpha"),
        ParamSpec("loss_weight", 1.0, 0.0, 10.0, 0.1, doc="multiplies the reduced loss",
                  upstream="FocalLoss.loss_weight"),
        ParamSpec("reduction", "mean", kind="choice", choices=("mean", "sum"), doc="mean or sum",
                  upstream="FocalLoss.reduction"),
        ParamSpec("use_avg_factor", True, kind="bool", doc="divide the sum by the number of positive "
                  "cells (RetinaNet) instead of taking the mean of all elements",
                  upstream="loss_cls(..., avg_factor=num_total_pos)"),
    ),
    explain=explain_focal,
    upstream="mmdetection 3.3.0 mmdet/models/losses/focal_loss.py, utils.py",
    doc=("Anchor-free cells (A = 1) on strides 8/16/32; a cell is positive for class c when its centre "
         "lies inside a box of class c (smallest box wins). Classification only: FocalLoss(use_sigmoid) "
         "over every cell and class, avg_factor = number of positive cells as RetinaNet."),
    maps=FOCAL_MAPS, rules=FOCAL_RULES, columns=FOCAL_COLUMNS, losses=FOCAL_LOSSES,
    focal=FocalSpec(gamma="gamma", alpha="alpha", off_at_zero=False, applies_to="the class loss of every cell",
                    points=("p_t", "focal")),
    phases=FOCAL_PHASES, anchors_px=None, level_names=_FOCAL_LEVELS,
    inspector=InspectorSpec(groups=(("assignment", "Assignment"), ("focal", "Focal terms"), ("loss", "Loss")),
                            target_columns=(), loss_columns=("focal", "focal_row"), target_map="positive",
                            loss_map="loss"),
)
