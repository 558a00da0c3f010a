"""The "yolov9" scheme: a learner's scene through the real YOLOv9 ``ComputeLoss``.

Predictions for the single image come from :func:`losscore.scene.blended_heads`. The perfect head
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

from .scene import (BlendedHeads, LevelInfo, ParamSpec, Pin, Scene, SceneResult, SchemeSpec, blended_heads,
                    boxes_to_targets, register_scheme, resolve_device)
from .tal import RULE_NAMES
from .trace import Trace
from .yolov9 import BOX_GAIN, CLS_GAIN, DFL_GAIN, _bce_focal, compute_loss

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
    ("align_metric", "alignment t = s^alpha * u^beta of each anchor, the largest over the targets whose box holds it"),
    ("target_score", "normalised class target of each positive (0 elsewhere)"),
    ("cls_bce", "class loss of each anchor, summed over the classes"),
    ("candidates", "how many target boxes hold the anchor's centre"),
    ("fg", "1 where the anchor is a positive"),
)

COLUMN_DOCS = {
    "s": "predicted probability of the target's class at this anchor",
    "u": "CIoU of the target against the predicted box, clamped at 0",
    "align_metric": "t = s^alpha * u^beta",
    "topk_rank": "rank in its target's top-k (0 = best); -1 when it came through a conflict only",
    "target_score": "t * max(u) / (max(t) + eps) over its target's positives: the class target and loss weight",
    "ltrb_target": "target distances l, t, r, b in cells, clamped to [0, 14.99]",
    "dfl_expected": "expected distance per side under the softmax over 16 bins",
    "bin_left": "lower target bin floor(d) per side",
    "bin_right": "upper target bin floor(d) + 1 per side",
    "weight_left": "weight of the lower bin, floor(d) + 1 - d",
    "weight_right": "weight of the upper bin, d - floor(d)",
    "pred_box_px": "decoded predicted box, xyxy pixels",
    "target_box_px": "target box, xyxy pixels",
    "ciou": "CIoU of predicted vs target box (yolov9 bbox_iou)",
    "box_term": "(1 - CIoU) * target_score / target_scores_sum: this positive's share of the raw box loss",
    "dfl_term": "DFL * target_score / target_scores_sum: this positive's share of the raw DFL",
    "cls_bce": "class BCE at this positive's own class against its target score",
}


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


def _apply_pin(preds: BlendedHeads, pin: Pin, notes: list[str]) -> None:
    if not 0 <= pin.level < len(STRIDES):
        raise ValueError(f"predictions.pins: level {pin.level} is not one of 0..{len(STRIDES) - 1}")
    if pin.anchor != 0:
        raise ValueError("predictions.pins: yolov9 is anchor-free, anchor must be 0")
    stride = STRIDES[pin.level]
    H, W = preds[pin.level].shape[-2:]
    if not (0 <= pin.gi < W and 0 <= pin.gj < H):
        raise ValueError(f"predictions.pins: cell ({pin.gi}, {pin.gj}) is outside the {W}x{H} grid of P{pin.level + 3}")
    ax, ay = (pin.gi + 0.5) * stride, (pin.gj + 0.5) * stride
    sides = [(ax - (pin.cx - pin.w / 2)) / stride, (ay - (pin.cy - pin.h / 2)) / stride,
             (pin.cx + pin.w / 2 - ax) / stride, (pin.cy + pin.h / 2 - ay) / stride]
    where = f"pin P{pin.level + 3} ({pin.gi}, {pin.gj})"
    if min(sides) < 0:
        notes.append(f"{where}: unreachable, the anchor centre lies outside the pinned box (distances are >= 0); "
                     "the negative sides are clamped to 0")
    if max(sides) > REG_MAX - 1:
        notes.append(f"{where}: unreachable, a side is {max(sides):.2f} cells but the 16 bins reach at most "
                     f"{REG_MAX - 1} cells ({(REG_MAX - 1) * stride} px at stride {stride}); clamped")
    feat = preds[pin.level]
    distances = torch.tensor(sides, dtype=feat.dtype, device=feat.device)
    bin_index = torch.arange(4 * REG_MAX, device=feat.device) * (H * W) + pin.gj * W + pin.gi
    preds.write(pin.level, bin_index, two_bin_logits(distances).reshape(-1))  # feat[0, :4R, gj, gi]


def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run YOLOv9's ``ComputeLoss`` on one drawn image (B = 1)."""
    device = resolve_device(scene.device)
    notes: list[str] = []
    targets = boxes_to_targets(scene, device)  # (N, 6)
    generator = torch.Generator().manual_seed(scene.seed)
    background, writes = perfect_writes(scene, scene.nc, device)
    # The heads are cached buffers patched for this block and restored after it: everything that
    # reads them runs inside (blended_heads; same bits as blend_logits of the dense perfect head).
    with blended_heads(level_shapes(scene, scene.nc), background, writes, scene.progress, generator) as heads:
        for pin in scene.pins:
            _apply_pin(heads, pin, notes)
        return _explain_heads(scene, heads.heads, targets, notes, trace, device)


def _explain_heads(scene: Scene, preds: list[Tensor], targets: Tensor, notes: list[str], trace: Trace | None,
                   device: torch.device) -> SceneResult:
    nc = scene.nc
    levels = [LevelInfo(f"P{i + 3}", s, (scene.height // s, scene.width // s), None) for i, s in enumerate(STRIDES)]
    sizes = [lv.grid[0] * lv.grid[1] for lv in levels]
    N = sum(sizes)
    topk = int(scene.param("topk"))
    if topk > N:
        raise ValueError(f"params.topk: {topk} is more than the {N} anchors of this image")
    fl_gamma, cls_pw = float(scene.param("fl_gamma")), float(scene.param("cls_pw"))
    out = compute_loss(preds, targets, nc=nc, strides=STRIDES, reg_max=REG_MAX, cls_pw=cls_pw,
                       label_smoothing=float(scene.param("label_smoothing")), fl_gamma=fl_gamma, topk=topk,
                       alpha=float(scene.param("alpha")), beta=float(scene.param("beta")), trace=trace)

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
        ltrb_target=out.target_ltrb, dfl_expected=out.dfl_expected, bin_left=bin_left, bin_right=bin_left + 1,
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
        "DFL has 16 bins 0..15 per side (reg_max 16, target clamped to 14.99); YOLOv8 uses 17 bins (clamp 15.99).",
        f"Gains are hard-coded: box {BOX_GAIN}, cls {CLS_GAIN}, dfl {DFL_GAIN}; total = their sum times the batch size (1).",
        "VarifocalLoss is defined in loss_tal.py but ComputeLoss does not call it; label_smoothing is read and unused.",
        "Only anchors whose centre lies inside a box can be positive; a high-overlap anchor can still lose the top-k "
        "when its class score s is low, since t = s^alpha * u^beta.",
        "The perfect head (progress 1) predicts the class at every anchor inside a box, but only the top-k become "
        "positives: the other in-box anchors pay class BCE against a target of 0, so cls stays large.",
    ]
    if result is not None and bool((result.rule > 0).any()):
        won = int((result.rule > 0).sum())
        notes.append(f"{won} anchor(s) were claimed by several targets and went to the target with the highest CIoU.")
    return SceneResult(
        scheme="yolov9", levels=levels, positives=positives, rule_names=list(RULE_NAMES), maps=maps,
        losses=losses, trace=trace, device=str(device), column_docs=dict(COLUMN_DOCS), map_docs=dict(MAPS),
        notes=notes, targets=targets,
    )


SPEC = register_scheme(SchemeSpec(
    name="yolov9", title="YOLOv9 (TAL + DFL)", family="yolov9", strides=STRIDES, params=PARAMS,
    explain=explain_scene, upstream=UPSTREAM,
    doc="anchor-free: task-aligned top-k of anchors inside each box, BCE class loss on normalised scores, "
        "CIoU + DFL box loss",
    maps=MAPS, rule_names=tuple(RULE_NAMES), anchors_px=None,
))
