"""YOLOv5 losses and target assignment, as ``ultralytics/yolov5`` ``utils/loss.py`` computes them.

Upstream: ultralytics/yolov5@b4bfb5a9 ``utils/loss.py`` (``smooth_BCE``, ``BCEBlurWithLogitsLoss``,
``FocalLoss``, ``QFocalLoss``, ``ComputeLoss``) and ``utils/metrics.py`` (``bbox_iou``, in
:mod:`losscore.boxes`). Every number follows upstream operation by operation; the differences are
in the interface only:

* :class:`ComputeLoss` is configured without a model object (``nc``, anchors, strides, ``hyp``).
* :func:`build_targets` also returns, per row, the target it came from and the offset rule that
  made the cell positive (``centre``, ``left``, ``up``, ``right``, ``down``); the bias ``g`` is a
  parameter (upstream hard-codes 0.5).
* The objectness target is written "last write wins" on every device (upstream's CPU behaviour;
  on CUDA upstream's duplicate writes are unordered).
* ``device`` and dtype follow the predictions (a float64 ``p`` gives a float64 loss).

Shapes: ``B`` images, ``L`` levels, ``A`` anchors per level, ``H W`` grid, ``N`` targets, ``P``
rows (positives) of one level, ``C`` classes.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..boxes import bbox_iou
from ..text import T, TextError
from ..trace import Trace

__all__ = [
    "smooth_BCE",
    "BCEBlurWithLogitsLoss",
    "FocalLoss",
    "QFocalLoss",
    "CellIndex",
    "AssignedTargets",
    "build_targets",
    "ComputeLoss",
    "LossOutput",
    "HYP_DEFAULTS",
    "RULE_NAMES",
    "default_balance",
    "last_write_mask",
]

UPSTREAM = "ultralytics/yolov5@b4bfb5a9"
RULE_NAMES = ("centre", "left", "up", "right", "down")
# Unit offsets of the five rules, multiplied by g: a positive x offset moves the cell to the left.
_UNIT_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))
HYP_DEFAULTS: dict[str, float] = {
    "box": 0.05,
    "obj": 1.0,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj_pw": 1.0,
    "fl_gamma": 0.0,
    "fl_alpha": 0.25,  # not a hyp upstream: FocalLoss's alpha default, exposed here
    "label_smoothing": 0.0,
    "anchor_t": 4.0,
}
# Why a neighbour rule did not fire (per kept pair and direction), see build_targets' trace.
NEIGHBOUR_REASONS = ("fired", "fraction >= g", "centre within 1 cell of the border", "both")


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothed BCE targets ``(positive, negative) = (1 - eps/2, eps/2)``.

    Reference: https://github.com/ultralytics/yolov3/issues/238#issuecomment-598028441
    """
    return 1.0 - 0.5 * eps, 0.5 * eps


class BCEBlurWithLogitsLoss(nn.Module):
    """BCE with logits, down-weighting missing labels: ``loss * (1 - exp((σ(x) - y - 1)/(alpha + 1e-4)))``.

    Shape: ``pred`` and ``true`` (*), output a 0-dim mean.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.loss_fcn = nn.BCEWithLogitsLoss(reduction="none")
        self.alpha = alpha

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        loss = self.loss_fcn(pred, true)
        difference = torch.sigmoid(pred) - true  # 1 where a label is missing but predicted
        alpha_factor = 1 - torch.exp((difference - 1) / (self.alpha + 1e-4))
        loss *= alpha_factor
        return loss.mean()


class FocalFactors(NamedTuple):
    """Per-element factors of a focal loss, each shaped like the prediction."""

    p_t: Tensor | None  # probability given to the true label; None for QFocalLoss
    alpha_factor: Tensor  # alpha for positives, 1 - alpha for negatives
    modulating_factor: Tensor  # (1 - p_t)^gamma, or |y - σ(x)|^gamma for QFocal


class FocalLoss(nn.Module):
    """Wraps a ``BCEWithLogitsLoss``: ``loss_fcn(x, y) * alpha_factor * (1 - p_t)^gamma``.

    ``p_t = y σ(x) + (1 - y)(1 - σ(x))``, ``alpha_factor = y alpha + (1 - y)(1 - alpha)``. The
    wrapped loss's reduction is taken over and applied after weighting (``mean`` | ``sum`` |
    ``none``). Shape: ``pred``, ``true`` (*); output 0-dim, or (*) for ``none``.

    Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # weighting is per element

    def factors(self, pred: Tensor, true: Tensor) -> FocalFactors:
        pred_prob = torch.sigmoid(pred)
        p_t = true * pred_prob + (1 - true) * (1 - pred_prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        modulating_factor = (1.0 - p_t) ** self.gamma
        return FocalFactors(p_t, alpha_factor, modulating_factor)

    def forward(self, pred: Tensor, true: Tensor) -> Tensor:
        loss = self.loss_fcn(pred, true)
        _, alpha_factor, modulating_factor = self.factors(pred, true)
        loss *= alpha_factor * modulating_factor
        return _reduce(loss, self.reduction)


class QFocalLoss(FocalLoss):
    """Quality focal loss: like :class:`FocalLoss` with ``|y - σ(x)|^gamma`` as modulating factor.

    Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020.
    """

    def factors(self, pred: Tensor, true: Tensor) -> FocalFactors:
        pred_prob = torch.sigmoid(pred)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        modulating_factor = torch.abs(true - pred_prob) ** self.gamma
        return FocalFactors(None, alpha_factor, modulating_factor)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------------------------
# build_targets
# ---------------------------------------------------------------------------------------------
class CellIndex(NamedTuple):
    """Where each row of one level writes: ``(image, anchor, gj, gi)``, each (P,) int64.

    Same order as upstream's ``indices[i] = (b, a, gj, gi)``; ``gj`` is the row (y), ``gi`` the
    column (x), both clamped into the grid.
    """

    image: Tensor
    anchor: Tensor
    gj: Tensor
    gi: Tensor


class AssignedTargets(NamedTuple):
    """What :func:`build_targets` returns, one list entry per level.

    The first four fields are upstream's ``tcls, tbox, indices, anch``; ``target`` and ``rule``
    say, per row, which target row (index into ``targets``) and which offset rule (index into
    :data:`RULE_NAMES`) produced it.
    """

    tcls: list[Tensor]  # (P,) int64 class
    tbox: list[Tensor]  # (P, 4) x, y offset from the cell, w, h, grid units
    indices: list[CellIndex]
    anch: list[Tensor]  # (P, 2) anchor w, h in grid units
    target: list[Tensor]  # (P,) int64
    rule: list[Tensor]  # (P,) int64


def _grid_shape(pred: Any) -> tuple[int, int]:
    shape = tuple(pred.shape) if hasattr(pred, "shape") else tuple(pred)
    return int(shape[2]), int(shape[3])  # (H, W) of (B, A, H, W, 5 + C)


def default_level_names(num_levels: int, strides: Sequence[float] | None = None) -> list[str]:
    """``P3, P4, ...`` from the strides (P = log2 stride), else counting from P3."""
    if strides is not None and all(float(s) > 0 and math.log2(float(s)).is_integer() for s in strides):
        return [f"P{int(math.log2(float(s)))}" for s in strides]
    return [f"P{3 + i}" for i in range(num_levels)]


def _neighbour_reasons(fraction: Tensor, distance: Tensor, g: float) -> Tensor:
    """0 fired, 1 fraction >= g, 2 within one cell of the border (distance <= 1), 3 both."""
    return (fraction >= g).long() + 2 * (distance <= 1).long()


def build_targets(
    p: Sequence[Any],
    targets: Tensor,
    anchors: Tensor,
    *,
    anchor_t: float = 4.0,
    g: float = 0.5,
    level_names: Sequence[str] | None = None,
    trace: Trace | None = None,
) -> AssignedTargets:
    """Assign target rows to (level, anchor, cell) slots as YOLOv5's ``ComputeLoss.build_targets``.

    For every level: scale the normalised targets to the grid, keep the (anchor, target) pairs
    whose shape ratio ``r_max = max(w/aw, aw/w, h/ah, ah/h)`` is strictly below ``anchor_t``, then
    add the left/up neighbour cell when the centre's fraction is below ``g`` and the centre lies
    more than one cell from the left/top border, and the right/down neighbour by the same test on
    the mirrored coordinate ``grid - centre``.

    Args:
        p: per level a prediction (B, A, H, W, 5 + C) or just its shape; only H and W are read.
        targets (Tensor[N, 6]): ``(image, class, x, y, w, h)``, x and w normalised by the image
            width, y and h by its height.
        anchors (Tensor[L, A, 2]): anchor w, h in grid units of each level (px / stride).
        anchor_t: shape-ratio threshold (``hyp['anchor_t']``), compared with strict ``<``.
        g: neighbour bias (upstream's fixed ``g = 0.5``).
        level_names: names used in the trace (default ``P3, P4, ...``).
        trace: records the scaling, the ratio filter, the neighbour tests and the rows per level.

    Returns:
        :class:`AssignedTargets`. Rows are ordered by rule (centre, left, up, right, down), then
        by anchor, then by target row, exactly as upstream.
    """
    num_anchors, num_targets = anchors.shape[1], targets.shape[0]
    device, dtype = targets.device, targets.dtype
    names = list(level_names) if level_names is not None else default_level_names(len(p))
    out = AssignedTargets([], [], [], [], [], [])
    gain = torch.ones(8, device=device, dtype=dtype)  # upstream's 7 columns + our target index
    anchor_column = torch.arange(num_anchors, device=device).to(dtype).view(num_anchors, 1).repeat(1, num_targets)
    target_column = torch.arange(num_targets, device=device).to(dtype).view(1, num_targets).repeat(num_anchors, 1)
    # (A, N, 8): image, class, x, y, w, h, anchor, target
    pairs = torch.cat((targets.repeat(num_anchors, 1, 1), anchor_column[..., None], target_column[..., None]), 2)
    rule_offsets = torch.tensor(_UNIT_OFFSETS, device=device).to(dtype) * g  # (5, 2)
    if trace is not None:
        trace.record(
            "build_targets.inputs", "Targets and anchors",
            "each target row is paired with every anchor of a level (A copies, the last column "
            "is the anchor index); offsets are the five cell rules scaled by g",
            code="utils/loss.py ComputeLoss.build_targets",
            tensors={"targets": (targets, "N 6"), "anchors": (anchors, "L A 2"),
                     "rule_offsets": (rule_offsets, "5 2")},
            values={"anchor_t": anchor_t, "g": g, "rules": list(RULE_NAMES), "levels": names},
        )
    for level, pred in enumerate(p):
        level_anchors = anchors[level].to(device)  # (A, 2)
        grid_h, grid_w = _grid_shape(pred)
        gain[2:6] = torch.tensor((grid_w, grid_h, grid_w, grid_h), device=device, dtype=dtype)
        scaled = pairs * gain  # (A, N, 8) x, y, w, h now in grid units
        if num_targets:
            wh_ratio = scaled[..., 4:6] / level_anchors[:, None]  # (A, N, 2)
            r_max = torch.max(wh_ratio, 1 / wh_ratio).max(2)[0]  # (A, N)
            keep = r_max < anchor_t  # (A, N)
            kept = scaled[keep]  # (K, 8), anchor-major
            centre = kept[:, 2:4]  # (K, 2) x, y from the left/top border
            mirrored = gain[[2, 3]] - centre  # (K, 2) distance to the right/bottom border
            left_up = ((centre % 1 < g) & (centre > 1)).T  # (2, K)
            right_down = ((mirrored % 1 < g) & (mirrored > 1)).T  # (2, K)
            rule_mask = torch.stack((torch.ones_like(left_up[0]), left_up[0], left_up[1],
                                     right_down[0], right_down[1]))  # (5, K)
            rows = kept.repeat((5, 1, 1))[rule_mask]  # (P, 8), rule-major
            offsets = (torch.zeros_like(centre)[None] + rule_offsets[:, None])[rule_mask]  # (P, 2)
            rule = torch.arange(5, device=device)[:, None].expand(5, kept.shape[0])[rule_mask]  # (P,)
            if trace is not None:
                filter_state = {"wh_ratio": wh_ratio, "r_max": r_max, "keep": keep, "kept": kept,
                                "centre": centre, "mirrored": mirrored, "left_up": left_up, "right_down": right_down}
        else:
            filter_state = None
            rows = pairs[0]  # (0, 8)
            offsets = torch.zeros((0, 2), device=device, dtype=dtype)
            rule = torch.zeros(0, dtype=torch.long, device=device)
        image_class, centre_xy, size_wh = rows[:, 0:2], rows[:, 2:4], rows[:, 4:6]
        anchor = rows[:, 6].long()
        target = rows[:, 7].long()
        image, cls = image_class.long().T
        gxy_minus_offset = centre_xy - offsets  # (P, 2) a point inside the chosen cell
        cell = gxy_minus_offset.long()  # (P, 2) truncation toward zero, as upstream
        gi, gj = cell.T  # views of ``cell``: clamping them clamps ``cell`` too (upstream's clamp_)
        gj.clamp_(0, grid_h - 1)
        gi.clamp_(0, grid_w - 1)
        tbox = torch.cat((centre_xy - cell, size_wh), 1)  # (P, 4) offset from the clamped cell
        out.indices.append(CellIndex(image, anchor, gj, gi))
        out.tbox.append(tbox)
        out.anch.append(level_anchors[anchor])
        out.tcls.append(cls)
        out.target.append(target)
        out.rule.append(rule)
        if trace is not None:
            with trace.scope("build_targets"), trace.scope(names[level]):
                _trace_level_assignment(trace, level, scaled, level_anchors, (grid_h, grid_w), anchor_t, g,
                                        filter_state, out, offsets, gxy_minus_offset)
    return out


def _trace_level_assignment(trace: Trace, level: int, scaled: Tensor, level_anchors: Tensor,
                            grid: tuple[int, int], anchor_t: float, g: float, state: dict | None,
                            out: AssignedTargets, offsets: Tensor, gxy_minus_offset: Tensor) -> None:
    grid_h, grid_w = grid
    trace.record(
        "scale", "Targets × gain",
        T("gain = (1, 1, W, H, W, H) = (1, 1, {w}, {h}, {w}, {h}) turns normalised x, y, w, h into grid units of "
          "this level", w=grid_w, h=grid_h),
        code="ComputeLoss.build_targets: t = targets * gain",
        tensors={"xywh_grid": (scaled[0, :, 2:6], "N 4"), "anchors": (level_anchors, "A 2")},
        values={"level": level, "grid_hw": [grid_h, grid_w]},
    )
    if state is not None:
        trace.record(
            "anchor_filter", "Anchor-ratio filter",
            T("r_max = max(w/aw, aw/w, h/ah, ah/h); a pair is kept when r_max < anchor_t = {anchor_t:g} "
              "(strict: a ratio of exactly anchor_t is rejected). A shape test, not an IoU test", anchor_t=anchor_t),
            code="ComputeLoss.build_targets: j = torch.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']",
            tensors={"wh_ratio": (state["wh_ratio"], "A N 2"), "r_max": (state["r_max"], "A N"),
                     "keep": (state["keep"], "A N")},
            values={"anchor_t": anchor_t},
        )
        kept, centre, mirrored = state["kept"], state["centre"], state["mirrored"]
        fraction, mirrored_fraction = centre % 1, mirrored % 1
        # directions left, up, right, down: (K, 4) fraction and distance to that border
        direction_fraction = torch.cat((fraction, mirrored_fraction), 1)
        direction_distance = torch.cat((centre, mirrored), 1)
        fired = torch.cat((state["left_up"].T, state["right_down"].T), 1)  # (K, 4)
        reasons = _neighbour_reasons(direction_fraction, direction_distance, g).masked_fill(fired, 0)  # (K, 4)
        trace.record(
            "neighbours", "Neighbour-cell tests",
            T("per kept pair: left fires when frac(x) < g = {g:g} and x > 1, up when frac(y) < g and "
              "y > 1; right and down apply the same test to the mirrored coordinate (W - x, H - y). "
              "A rule does not fire when the fraction is >= g or the centre is within 1 cell of that border", g=g),
            code="ComputeLoss.build_targets: j, k = ((gxy % 1 < g) & (gxy > 1)).T; l, m = ((gxi % 1 < g) & (gxi > 1)).T",
            tensors={"target": (kept[:, 7].long(), "K"), "anchor": (kept[:, 6].long(), "K"),
                     "gxy": (centre, "K 2"), "fraction": (fraction, "K 2"), "gxy_mirrored": (mirrored, "K 2"),
                     "fraction_mirrored": (mirrored_fraction, "K 2"),
                     "fired": (fired, "K 4"), "reason": (reasons, "K 4")},
            values={"directions": ["left", "up", "right", "down"], "reasons": list(NEIGHBOUR_REASONS), "g": g},
        )
    index = out.indices[-1]
    trace.record(
        "rows", "Positive rows",
        "rows ordered by rule (centre, left, up, right, down), then anchor, then target; cell = "
        "(gxy - offset).long() clamped into the grid; tbox xy = gxy - cell (in (-0.5, 1.5) for "
        "in-image centres), wh in grid units",
        code="ComputeLoss.build_targets: gij = (gxy - offsets).long(); tbox = cat((gxy - gij, gwh))",
        tensors={"target": (out.target[-1], "P"), "image": (index.image, "P"), "anchor": (index.anchor, "P"),
                 "rule": (out.rule[-1], "P"), "rule_offset": (offsets, "P 2"),
                 "gxy_minus_offset": (gxy_minus_offset, "P 2"),
                 "gi": (index.gi, "P"), "gj": (index.gj, "P"), "tbox": (out.tbox[-1], "P 4"),
                 "anch": (out.anch[-1], "P 2"), "tcls": (out.tcls[-1], "P")},
        values={"level": level, "rules": list(RULE_NAMES), "positives": int(index.gi.shape[0])},
    )


# ---------------------------------------------------------------------------------------------
# ComputeLoss
# ---------------------------------------------------------------------------------------------
def default_balance(num_levels: int) -> list[float]:
    """Upstream's objectness weights per level: ``[4.0, 1.0, 0.4]`` for 3 levels, else the prefix of
    ``[4.0, 1.0, 0.25, 0.06, 0.02]`` (more than 5 levels: pass ``balance`` explicitly)."""
    weights = {3: [4.0, 1.0, 0.4]}.get(num_levels, [4.0, 1.0, 0.25, 0.06, 0.02])
    if num_levels > len(weights):
        raise TextError("balance", T("upstream defines objectness weights for at most 5 levels, got {levels}; pass "
                                     "balance=[...] explicitly", levels=num_levels))
    return weights[:num_levels]


def last_write_mask(slot: Tensor) -> Tensor:
    """(P,) bool: True where a row's write to ``slot`` is the last one (so it survives).

    ``tobj[b, a, gj, gi] = iou`` with repeated slots keeps the last row's value on the CPU; this
    mask makes that rule explicit and deterministic on every device.
    """
    count = slot.shape[0]
    if count == 0:
        return torch.zeros(0, dtype=torch.bool, device=slot.device)
    sorted_slot, order = torch.sort(slot, stable=True)  # equal slots keep row order
    is_last = torch.ones(count, dtype=torch.bool, device=slot.device)
    is_last[:-1] = sorted_slot[1:] != sorted_slot[:-1]
    survives = torch.empty_like(is_last)
    survives[order] = is_last
    return survives


class LossOutput(NamedTuple):
    loss: Tensor  # (1,) (lbox + lobj + lcls) * B, differentiable
    loss_items: Tensor  # (3,) lbox, lobj, lcls after gains, detached


class ComputeLoss:
    """YOLOv5's training loss (box CIoU + objectness BCE + class BCE), configured without a model.

    Args:
        nc: number of classes (the class loss is skipped when ``nc == 1``, as upstream).
        anchors_grid (Tensor[L, A, 2]): anchors in grid units (upstream's ``Detect.anchors``), or
        anchors_px (Tensor[L, A, 2]): anchors in pixels, divided by ``strides`` here.
        strides: per level; needed with ``anchors_px`` and ``autobalance`` (index of stride 16).
        hyp: ``box, obj, cls`` gains, ``cls_pw, obj_pw`` BCE positive weights, ``fl_gamma`` (> 0
            wraps both BCEs in :class:`FocalLoss`), ``fl_alpha`` (FocalLoss alpha, 0.25),
            ``label_smoothing``, ``anchor_t``. Missing keys take :data:`HYP_DEFAULTS`.
        gr: objectness target mix ``(1 - gr) + gr * clamp(iou, 0)`` (upstream ``self.gr = 1.0``).
        sort_obj_iou: write objectness targets in ascending IoU order (the highest survives).
        autobalance: adapt ``balance`` after every call, as upstream (this object keeps state).
        balance: objectness weight per level (default :func:`default_balance`).
        g: neighbour bias of :func:`build_targets`.
    """

    def __init__(self, nc: int, *, anchors_grid: Tensor | Sequence | None = None,
                 anchors_px: Tensor | Sequence | None = None, strides: Sequence[float] | None = None,
                 hyp: dict[str, float] | None = None, gr: float = 1.0, sort_obj_iou: bool = False,
                 autobalance: bool = False, balance: Sequence[float] | None = None, g: float = 0.5,
                 level_names: Sequence[str] | None = None) -> None:
        if (anchors_grid is None) == (anchors_px is None):
            raise ValueError("anchors: give exactly one of anchors_grid and anchors_px")
        if anchors_px is not None:
            if strides is None:
                raise ValueError("strides: required with anchors_px")
            px = torch.as_tensor(anchors_px, dtype=torch.float32)
            anchors = px.view(len(strides), -1, 2) / torch.as_tensor(strides, dtype=torch.float32, device=px.device).view(-1, 1, 1)
        else:
            anchors = torch.as_tensor(anchors_grid, dtype=torch.float32)
        self.anchors = anchors.reshape(anchors.shape[0], -1, 2)  # (L, A, 2) grid units
        self.nl, self.na, self.nc = self.anchors.shape[0], self.anchors.shape[1], int(nc)
        if strides is not None and len(strides) != self.nl:
            raise ValueError(f"strides: {len(strides)} strides for {self.nl} anchor levels")
        self.strides = None if strides is None else [float(s) for s in strides]
        self.hyp = {**HYP_DEFAULTS, **(hyp or {})}
        self.cp, self.cn = smooth_BCE(eps=self.hyp.get("label_smoothing", 0.0))
        self.gr = gr
        self.sort_obj_iou = sort_obj_iou
        self.autobalance = autobalance
        self.balance = list(balance) if balance is not None else default_balance(self.nl)
        if len(self.balance) != self.nl:
            raise TextError("balance", T("{weights} weights for {levels} levels", weights=len(self.balance),
                                         levels=self.nl))
        if autobalance and (self.strides is None or 16.0 not in self.strides):
            raise TextError("autobalance", T("needs strides that include 16 (upstream's reference level)"))
        self.ssi = self.strides.index(16.0) if autobalance else 0
        self.g = g
        self._criteria_key: tuple | None = None
        self._criteria: tuple[nn.Module, nn.Module] | None = None
        self.level_names = list(level_names) if level_names is not None else default_level_names(self.nl, self.strides)

    def criteria(self, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """``(BCEcls, BCEobj)`` as upstream builds them, on the predictions' device and dtype.

        Built once per (dtype, device, hyp values) and reused: the modules hold no per-call state.
        """
        key = (dtype, str(device), self.hyp["cls_pw"], self.hyp["obj_pw"], self.hyp["fl_gamma"],
               self.hyp.get("fl_alpha", 0.25))
        if self._criteria_key != key:
            self._criteria = self._build_criteria(dtype, device)
            self._criteria_key = key
        return self._criteria

    def _build_criteria(self, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, nn.Module]:
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp["cls_pw"]], dtype=dtype, device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp["obj_pw"]], dtype=dtype, device=device))
        gamma = self.hyp["fl_gamma"]
        if gamma > 0:
            alpha = self.hyp.get("fl_alpha", 0.25)
            bce_cls, bce_obj = FocalLoss(bce_cls, gamma, alpha), FocalLoss(bce_obj, gamma, alpha)
        return bce_cls, bce_obj

    def build_targets(self, p: Sequence[Any], targets: Tensor, trace: Trace | None = None) -> AssignedTargets:
        return build_targets(p, targets, self.anchors.to(targets.device), anchor_t=self.hyp["anchor_t"],
                             g=self.g, level_names=self.level_names, trace=trace)

    def __call__(self, p: Sequence[Tensor], targets: Tensor, trace: Trace | None = None,
                 assigned: AssignedTargets | None = None) -> LossOutput:
        """Loss of predictions ``p`` (per level (B, A, H, W, 5 + C) logits) for ``targets`` (N, 6).

        ``assigned``: the result of :meth:`build_targets` for the same ``targets`` and grid shapes,
        when the caller already has it (the scene path builds the perfect head from it); upstream
        always recomputes it, with the same result.

        Returns :class:`LossOutput` ``(loss * B, [lbox, lobj, lcls])`` like upstream's tuple.
        """
        if len(p) != self.nl:
            raise ValueError(f"p: {len(p)} levels, the anchors have {self.nl}")
        device, dtype = p[0].device, p[0].dtype
        lcls = torch.zeros(1, device=device, dtype=dtype)
        lbox = torch.zeros(1, device=device, dtype=dtype)
        lobj = torch.zeros(1, device=device, dtype=dtype)
        bce_cls, bce_obj = self.criteria(dtype, device)
        anchors = self.anchors.to(device)
        if assigned is None:
            assigned = build_targets(p, targets.to(device), anchors, anchor_t=self.hyp["anchor_t"], g=self.g,
                                     level_names=self.level_names, trace=trace)
        for level, pred in enumerate(p):
            image, anchor, gj, gi = assigned.indices[level]
            batch, num_anchors, grid_h, grid_w = pred.shape[:4]
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)  # (B, A, H, W)
            count = image.shape[0]
            level_box = level_cls = None
            if count:
                pxy, pwh, _, pcls = pred[image, anchor, gj, gi].split((2, 2, 1, self.nc), 1)  # (P, .)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * assigned.anch[level]
                pbox = torch.cat((pxy, pwh), 1)  # (P, 4) grid units, relative to the cell
                if trace is not None:
                    with trace.scope("loss"), trace.scope(self.level_names[level]):
                        trace.record(
                            "decode", "Decode the predictions at positive slots",
                            "pxy = 2σ(tx,ty) - 0.5 lies in (-0.5, 1.5) cells; pwh = (2σ(tw,th))²·anchor "
                            "lies in (0, 4) anchors, so a target is reachable from a neighbour cell",
                            code="ComputeLoss.__call__: pxy = pxy.sigmoid() * 2 - 0.5; pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]",
                            tensors={"pxy": (pxy, "P 2"), "pwh": (pwh, "P 2"), "tbox": (assigned.tbox[level], "P 4"),
                                     "anch": (assigned.anch[level], "P 2")})
                        iou = bbox_iou(pbox, assigned.tbox[level], CIoU=True, trace=trace).squeeze(-1)  # (P,)
                else:
                    iou = bbox_iou(pbox, assigned.tbox[level], CIoU=True).squeeze(-1)  # (P,)
                level_box = (1.0 - iou).mean()
                lbox += level_box
                iou = iou.detach().clamp(0).type(tobj.dtype)
                row = None  # write order: the rows as assigned, or by ascending IoU
                if self.sort_obj_iou:
                    row = iou.argsort()
                    image, anchor, gj, gi, iou = image[row], anchor[row], gj[row], gi[row], iou[row]
                elif trace is not None:
                    row = torch.arange(count, device=device)
                clamped_iou = iou
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                slot = ((image * num_anchors + anchor) * grid_h + gj) * grid_w + gi  # (P,) flat index
                survives = last_write_mask(slot)
                tobj.view(-1)[slot[survives]] = iou[survives]  # the same write as tobj[b, a, gj, gi] = iou
                cls_target = cls_elementwise = None
                if self.nc > 1:
                    cls_target = torch.full_like(pcls, self.cn)  # (P, C)
                    cls_target[torch.arange(count, device=device), assigned.tcls[level]] = self.cp
                    level_cls, cls_elementwise = _criterion(bce_cls, pcls, cls_target, keep_elementwise=trace is not None)
                    lcls += level_cls
                if trace is not None:
                    with trace.scope("loss"), trace.scope(self.level_names[level]):
                        self._trace_positives(trace, level, level_box, clamped_iou, iou, row, slot, survives, tobj,
                                              pcls, cls_target, cls_elementwise, assigned, bce_cls, level_cls)
            obj_logit = pred[..., 4]  # (B, A, H, W)
            level_obj, obj_elementwise = _criterion(bce_obj, obj_logit, tobj, keep_elementwise=trace is not None)
            lobj += level_obj * self.balance[level]
            if trace is not None:
                with trace.scope("loss"), trace.scope(self.level_names[level]):
                    self._trace_objectness(trace, level, obj_logit, tobj, obj_elementwise, bce_obj, level_obj,
                                           level_box, level_cls)
            if self.autobalance:
                self.balance[level] = self.balance[level] * 0.9999 + 0.0001 / level_obj.detach().item()
        if self.autobalance:
            self.balance = [weight / self.balance[self.ssi] for weight in self.balance]
        raw = (lbox.detach().clone(), lobj.detach().clone(), lcls.detach().clone()) if trace is not None else None
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        batch = tobj.shape[0]
        loss = (lbox + lobj + lcls) * batch
        items = torch.cat((lbox, lobj, lcls)).detach()
        if trace is not None:
            trace.record(
                "loss.total", "Gains and total",
                T("lbox × box ({box:g}) + lobj × obj ({obj:g}) + lcls × cls ({cls:g}), times the batch size "
                  "{batch}; lobj already holds each level × balance", box=self.hyp["box"], obj=self.hyp["obj"],
                  cls=self.hyp["cls"], batch=batch),
                code="ComputeLoss.__call__: return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()",
                tensors={"before_gains": (torch.cat(raw), "3"), "loss_items": (items, "3"), "loss": (loss, "1")},
                values={"gains": [self.hyp["box"], self.hyp["obj"], self.hyp["cls"]], "batch": batch,
                        "balance": list(self.balance)},
            )
        return LossOutput(loss, items)

    # -- trace helpers (only called with a recorder) ------------------------------------------
    def _trace_positives(self, trace, level, level_box, clamped_iou, tobj_value, row, slot, survives, tobj,
                         pcls, cls_target, cls_elementwise, assigned, bce_cls, level_cls) -> None:
        trace.record(
            "box_loss", "Box loss",
            "mean over this level's positives of 1 - CIoU (YOLOv5 takes CIoU's alpha without the "
            "paper's iou > 0.5 gate)",
            code="ComputeLoss.__call__: lbox += (1.0 - iou).mean()",
            tensors={"lbox": (level_box, "")},
        )
        trace.record(
            "objectness_target", "Objectness targets",
            T("tobj = (1 - gr) + gr·clamp(CIoU, 0) with gr = {gr:g}, detached; several rows may "
              "hit one slot: the last write wins (rows listed in write order)", gr=self.gr),
            code="ComputeLoss.__call__: iou = iou.detach().clamp(0); tobj[b, a, gj, gi] = iou",
            tensors={"row": (row, "P"), "iou_clamped": (clamped_iou, "P"), "tobj_value": (tobj_value, "P"),
                     "slot": (slot, "P"), "written": (survives, "P"), "tobj": (tobj, "B A H W")},
            values={"gr": self.gr, "sort_obj_iou": self.sort_obj_iou},
        )
        if self.nc > 1:
            tensors = {"cls_target": (cls_target, "P C"), "tcls": (assigned.tcls[level], "P"),
                       "cls_bce": (cls_elementwise, "P C"), "lcls": (level_cls, "")}
            if isinstance(bce_cls, FocalLoss):
                factors = bce_cls.factors(pcls, cls_target)
                tensors["alpha_factor"] = (factors.alpha_factor, "P C")
                tensors["modulating_factor"] = (factors.modulating_factor, "P C")
            trace.record(
                "class", "Class targets and BCE",
                T("cp = {cp:g} for the target's class, cn = {cn:g} elsewhere (label smoothing); "
                  "BCE with logits averaged over P×C elements", cp=self.cp, cn=self.cn),
                code="ComputeLoss.__call__: t = torch.full_like(pcls, self.cn); t[range(n), tcls[i]] = self.cp",
                tensors=tensors, values={"cp": self.cp, "cn": self.cn, "cls_pw": self.hyp["cls_pw"]},
            )
        else:
            trace.record("class", "Class loss skipped", "nc == 1: upstream computes no class loss",
                         code="ComputeLoss.__call__: if self.nc > 1", values={"nc": self.nc})

    def _trace_objectness(self, trace, level, obj_logit, tobj, obj_elementwise, bce_obj, level_obj, level_box,
                          level_cls) -> None:
        tensors = {"tobj": (tobj, "B A H W"), "obj_bce": (obj_elementwise, "B A H W"), "lobj": (level_obj, "")}
        if isinstance(bce_obj, FocalLoss):
            factors = bce_obj.factors(obj_logit, tobj)
            if factors.p_t is not None:  # QFocalLoss has no p_t
                tensors["p_t"] = (factors.p_t, "B A H W")
            tensors["alpha_factor"] = (factors.alpha_factor, "B A H W")
            tensors["modulating_factor"] = (factors.modulating_factor, "B A H W")
        trace.record(
            "objectness", "Objectness BCE over every slot",
            ("BCE with logits between σ(obj) and tobj at every (image, anchor, cell), averaged; a soft "
             "target t leaves an entropy floor (BCE > 0 even when σ(obj) = t); focal: × alpha_factor × (1 - p_t)^gamma"
             if isinstance(bce_obj, FocalLoss) else
             "BCE with logits between σ(obj) and tobj at every (image, anchor, cell), averaged; a soft "
             "target t leaves an entropy floor (BCE > 0 even when σ(obj) = t)"),
            code="ComputeLoss.__call__: obji = self.BCEobj(pi[..., 4], tobj)",
            tensors=tensors, values={"obj_pw": self.hyp["obj_pw"], "fl_gamma": self.hyp["fl_gamma"]},
        )
        zero = torch.zeros((), dtype=level_obj.dtype, device=level_obj.device)
        trace.record(
            "level_losses", "Level losses × balance",
            T("this level's objectness loss is weighted by balance[{level}] = {balance:g} "
              "before summing levels; box and class losses are summed unweighted", level=level,
              balance=self.balance[level]),
            code="ComputeLoss.__call__: lobj += obji * self.balance[i]",
            tensors={"box": ((level_box if level_box is not None else zero).detach(), ""),
                     "obj": (level_obj.detach(), ""), "obj_balanced": ((level_obj * self.balance[level]).detach(), ""),
                     "cls": ((level_cls if level_cls is not None else zero).detach(), "")},
            values={"balance": self.balance[level]},
        )


def _criterion(criterion: nn.Module, pred: Tensor, true: Tensor, keep_elementwise: bool) -> tuple[Tensor, Tensor | None]:
    """``criterion(pred, true)`` (a mean), and with ``keep_elementwise`` also the per-element loss it
    averaged. Both BCE-with-logits and the focal wrappers compute the per-element loss first and
    then take ``.mean()``, so without autograd the mean of :func:`_elementwise` has the same bits
    as the criterion and a trace reuses it instead of a second pass over every slot. With autograd
    the fused kernel's backward rounds differently from ``mean``'s, so the criterion runs as is and
    the per-element loss is computed beside it."""
    if not keep_elementwise:
        return criterion(pred, true), None
    if torch.is_grad_enabled() and pred.requires_grad:
        loss = criterion(pred, true)
        with torch.no_grad():
            return loss, _elementwise(criterion, pred, true)
    if criterion.reduction != "mean":
        raise ValueError(f"ComputeLoss criteria reduce by 'mean', got {criterion.reduction!r}")
    elementwise = _elementwise(criterion, pred, true)
    return elementwise.mean(), elementwise


def _elementwise(criterion: nn.Module, pred: Tensor, true: Tensor) -> Tensor:
    """The unreduced per-element loss of ``criterion`` (BCE or focal-weighted BCE)."""
    if isinstance(criterion, FocalLoss):
        bce = criterion.loss_fcn
        loss = F.binary_cross_entropy_with_logits(pred, true, pos_weight=bce.pos_weight, reduction="none")
        factors = criterion.factors(pred, true)
        return loss * (factors.alpha_factor * factors.modulating_factor)
    return F.binary_cross_entropy_with_logits(pred, true, pos_weight=criterion.pos_weight, reduction="none")
