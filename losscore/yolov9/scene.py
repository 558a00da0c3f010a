"""The "yolov9" scheme: a learner's scene through the real YOLOv9 ``ComputeLoss``.

Predictions for the single image come from :func:`losscore.predictions.blended_heads`. The perfect head
(progress 1) has, at every anchor whose centre lies inside a box (the smallest such box), box-bin
logits whose softmax puts the two-bin weights of the true distances on their bins (``log`` of
the weights, all other bins -20), so the expected distance equals the distance to the box, and a
class logit of +8 for the box's class, -8 for the others. Elsewhere the bin logits are 0 (uniform
bins, 7.5 cells per side) and every class logit is -8. Pins then overwrite the bin logits of one
anchor so that it decodes to the pinned box.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..predictions import BlendedHeads, blended_heads
from ..scene import (Check, ColumnSpec, FocalSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm,
                     LossTermSpec, MapSpec, ParamSpec, PhaseSpec, Pin, RuleSpec, Scene, SceneResult, SchemeSpec,
                     StageCell, boxes_to_targets, resolve_device)
from ..text import T, Text, TextError
from ..trace import Trace
from .loss import BOX_GAIN, CLS_GAIN, DFL_GAIN, _bce_focal, compute_loss

__all__ = ["explain_scene", "perfect_writes", "two_bin_logits", "SPEC"]

STRIDES = (8, 16, 32)
REG_MAX = 16
CLASS_ON, CLASS_OFF, BIN_OFF = 8.0, -8.0, -20.0
UPSTREAM = "WongKinYiu/yolov9@5b1ea9a8 utils/loss_tal.py, utils/tal/assigner.py"

PARAMS = (
    ParamSpec("topk", 10, 1, 50, 1, kind="int", doc="positives kept per target: its top-k anchors by t = s^alpha * u^beta",
              upstream="TaskAlignedAssigner(topk=int(os.getenv('YOLOM', 10)))"),
    ParamSpec("alpha", 0.5, 0.0, 4.0, 0.05, doc="exponent of the class score s in the alignment t",
              upstream="TaskAlignedAssigner(alpha=float(os.getenv('YOLOA', 0.5)))"),
    ParamSpec("beta", 6.0, 0.0, 12.0, 0.5, doc="exponent of the overlap u (CIoU, clamped at 0) in the alignment t",
              upstream="TaskAlignedAssigner(beta=float(os.getenv('YOLOB', 6.0)))"),
    ParamSpec("cls_pw", 1.0, 0.1, 10.0, 0.1, doc="BCE positive weight of the class loss", upstream="hyp['cls_pw']"),
    ParamSpec("label_smoothing", 0.0, 0.0, 1.0, 0.01,
              doc="read by ComputeLoss (self.cp, self.cn) but never used: changes nothing",
              upstream="hyp['label_smoothing']"),
    ParamSpec("fl_gamma", 0.0, 0.0, 5.0, 0.1, doc="focal gamma; > 0 wraps the class BCE in FocalLoss(alpha=0.25)",
              upstream="hyp['fl_gamma']"),
)

MAPS = (
    MapSpec("align_metric", "alignment t = s^alpha * u^beta of each anchor, the largest over the targets whose box "
                            "holds it", "weight"),
    MapSpec("target_score", "normalised class target of each positive (0 elsewhere)", "prob", range=(0.0, 1.0)),
    MapSpec("cls_bce", "class loss of each anchor, summed over the classes", "loss"),
    MapSpec("candidates", "how many target boxes hold the anchor's centre", "count", scale="count", reduce="sum"),
    MapSpec("fg", "1 where the anchor is a positive", "bool", range=(0.0, 1.0)),
)
RULES = (
    RuleSpec("top-k", "K", "in its target's top-k by t = s^alpha·u^beta, claimed by no other target"),
    RuleSpec("top-k (conflict won)", "▲", "in the top-k of several targets; this target has the highest overlap u"),
    RuleSpec("conflict won (outside own top-k)", "◆", "in another target's top-k, but this target has the highest "
                                                      "overlap u over all targets (select_highest_overlaps)"),
)
XYXY = ("x1", "y1", "x2", "y2")
LTRB = ("l", "t", "r", "b")
COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="assignment"),
    ColumnSpec("level", "detection level (0 = P3/8)", "index", group="assignment"),
    ColumnSpec("anchor", "0: anchor-free, one anchor point per cell", "index", group="assignment"),
    ColumnSpec("gi", "cell column (x)", "index", group="assignment"),
    ColumnSpec("gj", "cell row (y)", "index", group="assignment"),
    ColumnSpec("rule", "why the anchor is positive: top-k, or a conflict won", "index", group="assignment"),
    ColumnSpec("s", "predicted probability of the target's class at this anchor", "prob", group="assignment"),
    ColumnSpec("u", "CIoU of the target against the predicted box, clamped at 0", "iou", group="assignment"),
    ColumnSpec("align_metric", "t = s^alpha * u^beta", "weight", group="assignment", formula="t = s^α · u^β = {s}^α · {u}^β = {align_metric}; rank {topk_rank} in its box's top-k"),
    ColumnSpec("topk_rank", "rank in its target's top-k (0 = best); -1 when it came through a conflict only", "index", group="assignment"),
    ColumnSpec("target_score", "t * max(u) / (max(t) + eps) over its target's positives: the class target and loss "
                               "weight", "prob", group="class", formula="target score = t · max(u) / max(t) = {target_score}"),
    ColumnSpec("ltrb_target", "target distances l, t, r, b in cells, clamped to [0, 14.99]", "bins", LTRB, group="dfl"),
    ColumnSpec("dfl_expected", "expected distance per side under the softmax over 16 bins", "bins", LTRB, group="dfl", formula="expected distance per side Σ bin·softmax = {dfl_expected} vs target {ltrb_target}"),
    ColumnSpec("dfl_probs", "softmax over the 16 bins per side (l, t, r, b)", "prob",
               tuple(f"{side}{b}" for side in LTRB for b in range(16)), default=False, group="dfl"),
    ColumnSpec("bin_left", "lower target bin floor(d) per side", "index", LTRB, group="dfl"),
    ColumnSpec("bin_right", "upper target bin floor(d) + 1 per side", "index", LTRB, group="dfl"),
    ColumnSpec("weight_left", "weight of the lower bin, floor(d) + 1 - d", "weight", LTRB, group="dfl", formula="target bins {bin_left} / {bin_right} with weights {weight_left} / {weight_right}"),
    ColumnSpec("weight_right", "weight of the upper bin, d - floor(d)", "weight", LTRB, group="dfl"),
    ColumnSpec("pred_box_px", "decoded predicted box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("target_box_px", "target box", "px", XYXY, box="xyxy", group="decode"),
    ColumnSpec("ciou", "CIoU of predicted vs target box (yolov9 bbox_iou)", "iou", group="iou"),
    ColumnSpec("box_term", "(1 - CIoU) * target_score / target_scores_sum: this positive's share of the raw box loss",
               "loss", group="loss"),
    ColumnSpec("dfl_term", "DFL * target_score / target_scores_sum: this positive's share of the raw DFL", "loss", group="loss"),
    ColumnSpec("cls_bce", "class BCE at this positive's own class against its target score", "loss", group="class"),
)
LOSSES = LossSpec(
    terms=(
        LossTermSpec("box", "Σ over positives of (1 - CIoU)·target_score", divisor="target_scores_sum",
                     gain="box gain (hard-coded 7.5)"),
        LossTermSpec("cls", "class BCE summed over every anchor and class", divisor="target_scores_sum",
                     gain="cls gain (hard-coded 0.5)"),
        LossTermSpec("dfl", "Σ over positives of DFL·target_score", divisor="target_scores_sum",
                     gain="dfl gain (hard-coded 1.5)"),
    ),
    formula="(7.5·box + 0.5·cls + 1.5·dfl) × batch size",
    multiplier="batch size",
)
PHASES = (
    PhaseSpec("inputs", "Inputs", "split the head, anchor points, targets, decode the box bins"),
    PhaseSpec("assigner", "Task-aligned assigner", "candidates inside boxes, top-k by t, conflicts, normalised scores"),
    PhaseSpec("loss", "Loss", "class BCE, DFL, CIoU box loss, gains"),
)
FOCAL = FocalSpec(gamma="fl_gamma", alpha_value=0.25, off_at_zero=True, applies_to="the class BCE")


def two_bin_logits(distance: Tensor, reg_max: int = REG_MAX) -> Tensor:
    """Bin logits ``(..., R)`` whose softmax expectation is ``distance`` (clamped to [0, R-1-0.01]).

    The two bins around ``d`` get ``log`` of their interpolation weights, every other bin -20.
    """
    d = distance.clamp(0, reg_max - 1 - 0.01)
    left = d.floor()
    weight_right = d - left
    logits = torch.full((*d.shape, reg_max), BIN_OFF, dtype=d.dtype, device=d.device)
    logits.scatter_(-1, left.long().unsqueeze(-1), (1 - weight_right).clamp_min(1e-9).log().unsqueeze(-1))
    logits.scatter_(-1, (left.long() + 1).unsqueeze(-1), weight_right.clamp_min(1e-9).log().unsqueeze(-1))
    return logits


def level_shapes(scene: Scene, nc: int) -> list[tuple[int, int, int, int]]:
    """Per level the head shape ``(1, 4R + C, H, W)``."""
    return [(1, 4 * REG_MAX + nc, scene.height // s, scene.width // s) for s in STRIDES]


def perfect_writes(scene: Scene, nc: int, device: torch.device) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The head that predicts every box exactly, as a background and per-level writes.

    Returns ``background`` (1, 4R + C, 1, 1) (box bins 0, class logits off) and per level
    ``(index, values)``: flat row-major positions in the level's ``(1, 4R + C, H, W)`` head, unique,
    and their logits. Each cell whose centre lies inside a box gets the two-bin logits of the
    distances to the smallest such box and a high logit for that box's class.
    """
    background = torch.zeros(4 * REG_MAX + nc, device=device)
    background[4 * REG_MAX:] = CLASS_OFF
    background = background.view(1, -1, 1, 1)
    boxes = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32,
                         device=device).view(-1, 4)  # (N, 4)
    classes = torch.tensor([b.cls for b in scene.boxes], dtype=torch.long, device=device)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    bin_channel = torch.arange(4 * REG_MAX, device=device)  # (4R,)
    writes = []
    for stride, (_, _, H, W) in zip(STRIDES, level_shapes(scene, nc)):
        if not len(scene.boxes):
            writes.append((torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)))
            continue
        ys = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
        inside = ((cx[None] > boxes[:, 0, None, None]) & (cx[None] < boxes[:, 2, None, None])
                  & (cy[None] > boxes[:, 1, None, None]) & (cy[None] < boxes[:, 3, None, None]))  # (N, H, W)
        ranked = torch.where(inside, area[:, None, None], math.inf)
        owner = ranked.argmin(0)  # (H, W) smallest box holding the centre
        gy, gx = inside.any(0).nonzero(as_tuple=True)  # (K,) covered cells
        box = boxes[owner[gy, gx]]  # (K, 4)
        ax, ay = cx[gy, gx], cy[gy, gx]
        distances = torch.stack((ax - box[:, 0], ay - box[:, 1], box[:, 2] - ax, box[:, 3] - ay), -1) / stride
        cell = gy * W + gx  # (K,)
        bins = two_bin_logits(distances).reshape(-1, 4 * REG_MAX)  # (K, 4R)
        bin_index = bin_channel[None, :] * (H * W) + cell[:, None]  # (K, 4R)
        class_index = (4 * REG_MAX + classes[owner[gy, gx]]) * (H * W) + cell  # (K,)
        writes.append((torch.cat((bin_index.reshape(-1), class_index)),
                       torch.cat((bins.reshape(-1), torch.full_like(ax, CLASS_ON)))))
    return background, writes


def _apply_pin(preds: BlendedHeads, pin: Pin, notes: list) -> None:
    """Overwrite the bin logits of one anchor (validated by ``validate_scene``)."""
    stride = STRIDES[pin.level]
    H, W = preds[pin.level].shape[-2:]
    ax, ay = (pin.gi + 0.5) * stride, (pin.gj + 0.5) * stride
    sides = [(ax - (pin.cx - pin.w / 2)) / stride, (ay - (pin.cy - pin.h / 2)) / stride,
             (pin.cx + pin.w / 2 - ax) / stride, (pin.cy + pin.h / 2 - ay) / stride]
    where = {"level": pin.level + 3, "gi": pin.gi, "gj": pin.gj}
    if min(sides) < 0:
        notes.append(T("pin P{level} ({gi}, {gj}): unreachable, the anchor centre lies outside the pinned box "
                       "(distances are >= 0); the negative sides are clamped to 0", **where))
    if max(sides) > REG_MAX - 1:
        notes.append(T("pin P{level} ({gi}, {gj}): unreachable, a side is {side:.2f} cells but the 16 bins reach at "
                       "most {bins} cells ({px} px at stride {stride}); clamped", **where, side=max(sides),
                       bins=REG_MAX - 1, px=(REG_MAX - 1) * stride, stride=stride))
    feat = preds[pin.level]
    distances = torch.tensor(sides, dtype=feat.dtype, device=feat.device)
    bin_index = torch.arange(4 * REG_MAX, device=feat.device) * (H * W) + pin.gj * W + pin.gi
    preds.write(pin.level, bin_index, two_bin_logits(distances).reshape(-1))  # feat[0, :4R, gj, gi]


def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run YOLOv9's ``ComputeLoss`` on one drawn image (B = 1)."""
    device = resolve_device(scene.device)
    notes: list[Text | str] = []
    targets = boxes_to_targets(scene, device)  # (N, 6)
    generator = torch.Generator().manual_seed(scene.seed)
    background, writes = perfect_writes(scene, scene.nc, device)
    # The heads are cached buffers patched for this block and restored after it: everything that
    # reads them runs inside (blended_heads; same bits as blend_logits of the dense perfect head).
    with blended_heads(level_shapes(scene, scene.nc), background, writes, scene.progress, generator) as heads:
        for pin in scene.pins:
            _apply_pin(heads, pin, notes)
        return _explain_heads(scene, heads.heads, targets, notes, trace, device)


def _explain_heads(scene: Scene, preds: list[Tensor], targets: Tensor, notes: list, trace: Trace | None,
                   device: torch.device) -> SceneResult:
    nc = scene.nc
    levels = [LevelInfo(f"P{i + 3}", s, (scene.height // s, scene.width // s), None) for i, s in enumerate(STRIDES)]
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    N = sum(sizes)
    topk = int(scene.param("topk"))
    if topk > N:
        raise TextError("params.topk", T("{topk} is more than the {anchors} anchors of this image", topk=topk,
                                         anchors=N))
    fl_gamma, cls_pw = float(scene.param("fl_gamma")), float(scene.param("cls_pw"))
    recorder = trace if trace is not None else Trace()  # the checks are read back from the trace
    out = compute_loss(preds, targets, nc=nc, strides=STRIDES, reg_max=REG_MAX, cls_pw=cls_pw,
                       label_smoothing=float(scene.param("label_smoothing")), fl_gamma=fl_gamma, topk=topk,
                       alpha=float(scene.param("alpha")), beta=float(scene.param("beta")), trace=recorder)

    # positives table
    result = out.assignment
    P = 0 if result is None else result.anchor.numel()
    long0 = torch.zeros(0, dtype=torch.long, device=device)
    anchor = long0 if result is None else result.anchor
    level_start = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=device)
    level = (torch.bucketize(anchor, level_start, right=True) - 1) if P else long0
    widths = torch.tensor([lv.grid[1] for lv in levels], device=device)
    cell = anchor - level_start[level] if P else long0
    stride = out.stride_tensor[anchor]  # (P, 1)
    tss = out.target_scores_sum
    score = out.dfl_per_positive.new_zeros(0) if result is None else result.score
    bin_left = out.target_ltrb.long()
    positives: dict[str, Tensor] = {
        "gt": long0 if result is None else result.gt,
        "level": level,
        "anchor": torch.zeros_like(anchor),
        "gi": cell % widths[level] if P else long0,
        "gj": cell // widths[level] if P else long0,
        "rule": long0 if result is None else result.rule,
    }
    if result is not None:
        positives.update(s=result.class_score, u=result.overlap, align_metric=result.align_metric,
                         topk_rank=result.topk_rank, target_score=result.score)
    else:
        empty = score.new_zeros(0)
        positives.update(s=empty, u=empty, align_metric=empty, topk_rank=long0, target_score=empty)
    positives.update(
        ltrb_target=out.target_ltrb, dfl_expected=out.dfl_expected,
        dfl_probs=out.dfl_probs.reshape(out.dfl_probs.shape[0], 4 * REG_MAX), bin_left=bin_left, bin_right=bin_left + 1,
        weight_left=(bin_left + 1).to(out.target_ltrb.dtype) - out.target_ltrb,
        weight_right=1 - ((bin_left + 1).to(out.target_ltrb.dtype) - out.target_ltrb),
        pred_box_px=out.pred_box_grid * stride, target_box_px=out.target_box_grid * stride, ciou=out.ciou,
        box_term=(1.0 - out.ciou) * score / tss, dfl_term=out.dfl_per_positive * score / tss,
        cls_bce=_bce_focal(out.cls_logit, score, cls_pw, fl_gamma),
    )
    positives = {k: v.detach() for k, v in positives.items()}

    # maps, (1, H, W) per level
    fg = torch.zeros(N, device=device)
    target_score = torch.zeros(N, device=device)
    align = torch.zeros(N, device=device)
    candidates = torch.zeros(N, device=device)
    class_target = torch.zeros((nc, N), device=device)  # (C, N): the layout of the head's class channels
    if result is not None:
        fg[result.anchor] = 1.0
        target_score[result.anchor] = result.score
        class_target[result.label, result.anchor] = result.score
        pairs = result.candidates
        align = align.scatter_reduce(0, pairs.anchor, pairs.align_metric, "amax")
        candidates = candidates.index_add(0, pairs.anchor, torch.ones_like(pairs.align_metric))
    # (C, N) contiguous: BCE over a transposed view takes ~5x longer (measured 7.5 vs 1.5 ms at 8400 x 80)
    class_logits = torch.cat([p[0, 4 * REG_MAX:].reshape(nc, -1) for p in preds], 1)  # (C, N)
    cls_bce = _bce_focal(class_logits, class_target, cls_pw, fl_gamma).sum(0)  # (N,)
    maps = {}
    for name, flat in (("align_metric", align), ("target_score", target_score), ("cls_bce", cls_bce),
                       ("candidates", candidates), ("fg", fg)):
        maps[name] = [chunk.view(1, *lv.grid).detach() for chunk, lv in zip(flat.split(sizes), levels)]

    losses = {
        "total": out.total.detach(),
        "box": out.items[0], "cls": out.items[1], "dfl": out.items[2],
        "box_raw": out.box.detach(), "cls_raw": out.cls.detach(), "dfl_raw": out.dfl.detach(),
        "target_scores_sum": tss.detach(),
    }
    notes += [
        "Box loss uses yolov9's bbox_iou: in xyxy mode h = y2 - y1 + eps (YOLOv5/YOLOv8 use clamp(eps)).",
        "DFL has 16 bins 0..15 per side (reg_max 16, target clamped to 14.99), as in YOLOv8/11; MMDetection's GFL, whose reg_max 16 counts intervals, has 17 bins 0..16.",
        T("Gains are hard-coded: box {box}, cls {cls}, dfl {dfl}; total = their sum times the batch size (1).",
          box=BOX_GAIN, cls=CLS_GAIN, dfl=DFL_GAIN),
        "VarifocalLoss is defined in loss_tal.py but ComputeLoss does not call it; label_smoothing is read and unused.",
        "Only anchors whose centre lies inside a box can be positive; a high-overlap anchor can still lose the top-k "
        "when its class score s is low, since t = s^alpha * u^beta.",
        "The perfect head (progress 1) predicts the class at every anchor inside a box, but only the top-k become "
        "positives: the other in-box anchors pay class BCE against a target of 0, so cls stays large.",
    ]
    if result is not None and bool((result.rule > 0).any()):
        won = int((result.rule > 0).sum())
        notes.append(T("{won} anchor(s) were claimed by several targets and went to the target with the highest CIoU.",
                       won=won))
    if not bool(torch.isfinite(out.total)):
        notes.append(T("The total is not finite: {reason}", reason=_non_finite_reason(out)))
    elif float(out.total) > 1000:
        notes.append(T("The total is large ({total:.4g}) because cls is the class BCE summed over every anchor and "
                       "class ({anchors} × {nc}) and divided by target_scores_sum = {tss:.4g}: with untrained "
                       "predictions the alignment t = s^alpha·u^beta of the positives is tiny, so their target "
                       "scores, and the divisor, are small. Upstream trains with this number; as the head learns, "
                       "target_scores_sum grows and cls falls.", total=float(out.total), anchors=N, nc=nc,
                       tss=float(tss)))
    composition = LossComposition(
        tuple(LossTerm(name, (LossPart(T("all levels"), raw * tss),), raw * tss, item, gain=gain, divisor=float(tss),
                       normalised=raw)
              for name, raw, item, gain in (("box", out.box, out.items[0], BOX_GAIN), ("cls", out.cls, out.items[1], CLS_GAIN),
                                            ("dfl", out.dfl, out.items[2], DFL_GAIN))),
        out.items.sum(), out.total.detach(), multiplier=float(preds[0].shape[0]))
    return SceneResult(
        scheme="yolov9", levels=levels, positives=positives, maps=maps, losses=losses, trace=trace,
        device=str(device), composition=composition, notes=notes, targets=targets,
        checks=_checks_builder(recorder, levels, sizes, topk),
        stage_cells=lambda: _stage_cells(recorder, levels, sizes, positives),
    )


def _anchor_cells(anchors: list[int], levels: list[LevelInfo], sizes: list[int]) -> list[tuple[int, int, int]]:
    """Flat anchor indices (level by level, row by row) -> (level, gi, gj)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out = []
    for a in anchors:
        level = max(i for i, start in enumerate(starts) if a >= start)
        cell = a - starts[level]
        width = levels[level].grid[1]
        out.append((level, cell % width, cell // width))
    return out


def _stage_cells(trace: Trace, levels: list[LevelInfo], sizes: list[int], positives: dict[str, Tensor]
                 ) -> dict[str, list[StageCell]]:
    """For the stepper: the anchors each stage is about, as cells, with what it did there."""
    out: dict[str, list[StageCell]] = {}
    try:
        candidates, ranked, normalised = (trace.get("assigner.candidates"), trace.get("assigner.topk"),
                                          trace.get("assigner.normalise"))
    except KeyError:
        return out
    gt, anchor, t = candidates["gt"].tolist(), candidates["anchor"].tolist(), candidates["t"].tolist()
    out["assigner.candidates"] = [StageCell(m, L, 0, gi, gj, T("t {t:.2g}", t=tq))
                                  for m, tq, (L, gi, gj) in zip(gt, t, _anchor_cells(anchor, levels, sizes))]
    kept, topk_anchor = ranked["kept"][0].tolist(), ranked["topk_anchor"][0].tolist()
    picks = [(m, rank, a) for m, row in enumerate(topk_anchor) for rank, a in enumerate(row) if kept[m][rank]]
    out["assigner.topk"] = [StageCell(m, L, 0, gi, gj, T("rank {rank}", rank=rank))
                            for (m, rank, _), (L, gi, gj) in zip(picks, _anchor_cells([p[2] for p in picks], levels, sizes))]
    try:
        conflicts = trace.get("assigner.conflicts")
        c_anchor, c_winner = conflicts["anchor"].tolist(), conflicts["winner"].tolist()
        out["assigner.conflicts"] = [StageCell(w, L, 0, gi, gj, T("won by #{box}", box=w))
                                     for w, (L, gi, gj) in zip(c_winner, _anchor_cells(c_anchor, levels, sizes))]
    except KeyError:
        pass
    score = normalised["score"].tolist()
    fg = _anchor_cells(normalised["anchor"].tolist(), levels, sizes)
    out["assigner.normalise"] = [StageCell(m, L, 0, gi, gj, T("score {score:.2g}", score=sc))
                                 for m, sc, (L, gi, gj) in zip(normalised["gt"].tolist(), score, fg)]
    rows = list(zip(positives["gt"].tolist(), positives["level"].tolist(), positives["gi"].tolist(), positives["gj"].tolist()))
    for step, column, label in (("cls", "cls_bce", "BCE"), ("dfl", "dfl_term", "DFL"), ("box", "ciou", "CIoU")):
        values = positives[column].tolist()
        out[f"loss.{step}"] = [StageCell(m, L, 0, gi, gj, T("{symbol} {value:.3g}", symbol=label, value=v))
                               for (m, L, gi, gj), v in zip(rows, values)]
    return out


def _non_finite_reason(out) -> Text:
    return T("a prediction decodes to a degenerate box (zero width or height), where the CIoU's atan(w/h) and the "
            "IoU are 0/0; upstream gives the same NaN on these logits.")


def _checks_builder(trace: Trace, levels: list[LevelInfo], sizes: list[int], topk: int):
    """Per candidate (box, anchor inside it): won a top-k place or not, and by how much."""
    try:
        candidates, ranked, normalised = (trace.get("assigner.candidates"), trace.get("assigner.topk"),
                                          trace.get("assigner.normalise"))
    except KeyError:  # no targets: the assigner did not run
        return None
    gt, anchor, t = candidates["gt"].cpu(), candidates["anchor"].cpu(), candidates["t"].cpu()
    s, u = candidates["s"].cpu(), candidates["u"].cpu()
    kth = ranked["topk_t"][0, :, -1].cpu()  # (M,) the k-th largest t of each target (0 beyond its candidates)
    pos_anchor, pos_gt = normalised["anchor"].cpu(), normalised["gt"].cpu()
    kept = ranked["kept"][0].cpu()  # (M, K)
    topk_anchor = ranked["topk_anchor"][0].cpu()  # (M, K)
    widths = [lv.grid[1] for lv in levels]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def build() -> list[Check]:
        owner = dict(zip(pos_anchor.tolist(), pos_gt.tolist()))  # anchor -> the target it went to
        in_topk = {(int(m), int(a)) for m, row in enumerate(topk_anchor) for a, k in zip(row.tolist(), kept[m].tolist()) if k}
        out = []
        for q, (m, a) in enumerate(zip(gt.tolist(), anchor.tolist())):
            level = max(i for i, start in enumerate(starts) if a >= start)
            cell = a - starts[level]
            gi, gj = cell % widths[level], cell // widths[level]
            name = levels[level].name
            values = {"s": float(s[q]), "u": float(u[q]), "t": float(t[q]), "kth_t": float(kth[m]), "topk": topk}
            head = {"level": name, "gi": gi, "gj": gj, "s": values["s"], "u": values["u"], "t": values["t"],
                    "topk": topk}
            if (m, a) in in_topk:
                winner = owner.get(a)
                if winner == m:
                    out.append(Check(m, level, 0, gi, gj, "top_k", True,
                                     T("{level} ({gi}, {gj}): s = {s:.4g}, u = {u:.4g}, t = s^α·u^β = {t:.4g}: in its "
                                       "top-{topk}, positive", **head),
                                     values, label=T("t {t:.2g} ✓", t=values["t"])))
                else:
                    out.append(Check(m, level, 0, gi, gj, "conflict", False,
                                     T("{level} ({gi}, {gj}): s = {s:.4g}, u = {u:.4g}, t = s^α·u^β = {t:.4g}: in its "
                                       "top-{topk}, but box {winner} has the higher overlap u here and takes the anchor",
                                       **head, winner=winner), {**values, "winner": winner},
                                     label=T("lost to #{winner}", winner=winner)))
            else:
                out.append(Check(m, level, 0, gi, gj, "top_k", False,
                                 T("{level} ({gi}, {gj}): s = {s:.4g}, u = {u:.4g}, t = s^α·u^β = {t:.4g} below the "
                                   "{topk}-th best t of this box ({kth_t:.4g}): not in its top-{topk}", **head,
                                   kth_t=values["kth_t"]),
                                 values, label=T("t {t:.2g} < {kth_t:.2g}", t=values["t"], kth_t=values["kth_t"])))
        return out

    return build


SPEC = SchemeSpec(
    name="yolov9", title="YOLOv9 (TAL + DFL)", family="yolov9", strides=STRIDES, params=PARAMS,
    explain=explain_scene, upstream=UPSTREAM,
    doc="anchor-free: task-aligned top-k of anchors inside each box, BCE class loss on normalised scores, "
        "CIoU + DFL box loss",
    maps=MAPS, rules=RULES, columns=COLUMNS, losses=LOSSES, focal=FOCAL, phases=PHASES, anchors_px=None,
    level_names=("P3", "P4", "P5"), pred_box="pred_box_px", target_box="target_box_px",
    inspector=InspectorSpec(groups=(("assignment", "Task alignment"), ("class", "Class target"), ("decode", "Decode"), ("iou", "IoU"), ("dfl", "DFL"), ("loss", "Loss shares")),
                            target_columns=("target_score", "ltrb_target"), loss_columns=("box_term", "dfl_term",
                                                                                         "cls_bce"),
                            target_map="target_score", loss_map="cls_bce"),
)
