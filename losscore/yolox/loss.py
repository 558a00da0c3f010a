"""The YOLOX head loss (``YOLOXHead.get_losses``), as YOLOX release 0.3.0 and ``main`` compute it.

Upstream: Megvii-BaseDetection/YOLOX ``yolox/models/yolo_head.py`` (``get_output_and_grid``,
``get_l1_target``, ``get_losses``) and ``yolox/models/losses.py`` (``IOUloss``), identical in
0.3.0 and main except for the SimOTA assignment they call (:mod:`losscore.yolox.assign`; the
``version`` argument picks it).

Per image with targets, SimOTA picks the positive anchors; then over the batch

* ``iou_loss  = 5.0 * sum(IOUloss(decoded box, target box)) / num_fg`` (``"iou"``: ``1 - IoU**2``),
* ``conf_loss = sum(BCEWithLogits(obj, 1 at positives else 0)) / num_fg`` over EVERY anchor,
* ``cls_loss  = sum(BCEWithLogits(cls, one_hot(class) * IoU)) / num_fg`` over the positives (the
  class target is the IoU of the positive's prediction with its target: IoU-aware soft labels),
* ``l1_loss   = sum(|raw (tx, ty, tw, th) - l1 target|) / num_fg`` when ``use_l1`` (the last 15
  epochs of YOLOX training), else the Python float ``0.0``,

with ``num_fg = max(number of positives in the batch, 1)``, and the returned "num_fg" is the ratio
``num_fg / max(number of targets, 1)`` (1.0 for a batch without targets).

Shapes: ``B`` images, ``L`` levels, ``H W`` grid, ``A`` anchors of all levels (one per cell),
``M`` label rows per image, ``N`` targets of one image, ``T`` targets of the batch, ``C``
classes, ``P`` positives of the batch. Boxes are ``(cx, cy, w, h)`` in input pixels.

Reference: Ge et al., "YOLOX: Exceeding YOLO Series in 2021", arXiv:2107.08430.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..text import T
from ..trace import Trace
from .assign import Assignment, _assign, _record, _version

__all__ = [
    "iou_loss",
    "IOUloss",
    "Decoded",
    "get_output_and_grid",
    "AnchorGrid",
    "make_grid",
    "get_l1_target",
    "LossBreakdown",
    "get_losses",
    "yolox_loss",
    "REG_WEIGHT",
]

HEAD_CODE = "yolox/models/yolo_head.py YOLOXHead"
REG_WEIGHT = 5.0  # hard-coded in get_losses


# -- IoU loss -----------------------------------------------------------------------------------
def _corner_terms(pred: Tensor, target: Tensor):
    half_p, half_t = pred[:, 2:] / 2, target[:, 2:] / 2
    top_left = torch.max(pred[:, :2] - half_p, target[:, :2] - half_t)  # (n, 2)
    bottom_right = torch.min(pred[:, :2] + half_p, target[:, :2] + half_t)
    area_p = pred[:, 2] * pred[:, 3]
    area_g = target[:, 2] * target[:, 3]
    overlap = top_left < bottom_right  # strict in both axes
    overlaps = overlap[:, 0].to(top_left.dtype) * overlap[:, 1].to(top_left.dtype)
    inter_wh = bottom_right - top_left
    area_i = inter_wh[:, 0] * inter_wh[:, 1] * overlaps
    area_u = area_p + area_g - area_i
    return area_i, area_u, half_p, half_t


def iou_loss(pred: Tensor, target: Tensor, *, loss_type: str = "iou", reduction: str = "none",
             trace: Trace | None = None) -> Tensor:
    """YOLOX's ``IOUloss``: ``1 - IoU**2`` (``"iou"``) or ``1 - clamp(GIoU, -1, 1)`` (``"giou"``).

    Args:
        pred (Tensor[..., 4]), target (Tensor[..., 4]): ``(cx, cy, w, h)``, flattened to ``(n, 4)``.
        loss_type: ``"iou"`` (note the square: upstream's "IoU loss" is ``1 - IoU**2``) or ``"giou"``.
        reduction: ``"mean"``, ``"sum"``; any other string returns the unreduced loss.
        trace: records ``iou_loss.terms``.

    ``IoU = inter / (area_p + area_g - inter + 1e-16)``, the intersection counted only where the
    boxes overlap strictly in both axes. ``GIoU = IoU - (area_c - union) / clamp(area_c, 1e-16)``
    with ``area_c`` the enclosing box and ``union`` without the 1e-16.

    Shape:
        Output: ``(n,)`` unreduced, ``()`` for ``"mean"``/``"sum"``. Any other ``loss_type``
        raises ``UnboundLocalError`` (upstream's ``loss`` is never assigned).
    """
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"pred/target: {pred.shape[0]} != {target.shape[0]} boxes")
    pred, target = pred.reshape(-1, 4), target.reshape(-1, 4)
    area_i, area_u, half_p, half_t = _corner_terms(pred, target)
    iou = area_i / (area_u + 1e-16)
    giou = None
    if loss_type == "iou":
        loss = 1 - iou**2
    elif loss_type == "giou":
        enclose_tl = torch.min(pred[:, :2] - half_p, target[:, :2] - half_t)
        enclose_br = torch.max(pred[:, :2] + half_p, target[:, :2] + half_t)
        enclose_wh = enclose_br - enclose_tl
        area_c = enclose_wh[:, 0] * enclose_wh[:, 1]
        giou = iou - (area_c - area_u) / area_c.clamp(1e-16)
        loss = 1 - giou.clamp(min=-1.0, max=1.0)
    else:
        raise UnboundLocalError(f"loss_type: {loss_type!r} is neither 'iou' nor 'giou'; upstream leaves "
                                "`loss` unassigned and raises UnboundLocalError")
    if trace is not None:
        tensors = {"iou": (iou, "n"), "loss": (loss, "n")}
        if giou is not None:
            tensors["giou"] = (giou, "n")
        trace.record(
            "iou_loss.terms", "IoU loss",
            "1 - IoU**2 (YOLOX squares the IoU)" if loss_type == "iou" else "1 - clamp(GIoU, -1, 1)",
            code="yolox/models/losses.py IOUloss.forward", tensors=tensors,
            values={"loss_type": loss_type, "reduction": reduction})
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class IOUloss(nn.Module):
    """``IOUloss(reduction="none", loss_type="iou")``: module form of :func:`iou_loss`."""

    def __init__(self, reduction: str = "none", loss_type: str = "iou") -> None:
        super().__init__()
        self.reduction = reduction
        self.loss_type = loss_type

    def forward(self, pred: Tensor, target: Tensor, trace: Trace | None = None) -> Tensor:
        return iou_loss(pred, target, loss_type=self.loss_type, reduction=self.reduction, trace=trace)


# -- decode -------------------------------------------------------------------------------------
class Decoded(NamedTuple):
    output: Tensor  # (B, H*W, 5+C): (cx, cy, w, h) px, then the raw obj and class logits
    grid: Tensor  # (1, H*W, 2): (x, y) cell indices, row-major


def _level_name(stride: float, k: int) -> str:
    power = math.log2(stride) if stride > 0 else 0.5
    return f"P{int(power)}" if power == int(power) else f"L{k}"


def get_output_and_grid(output: Tensor, stride: float, *, level: str | None = None,
                        trace: Trace | None = None) -> Decoded:
    """Decode one level's raw head map (``YOLOXHead.get_output_and_grid``).

    Args:
        output (Tensor[B, 5+C, H, W]): raw 1x1-conv outputs ``(tx, ty, tw, th, obj, cls...)``.
        stride: pixels per cell.
        level: a name such as ``"P3"`` for the trace stage (``decode.P3.grid``).
        trace: records ``decode.grid`` (or ``decode.<level>.grid``).

    Returns:
        :class:`Decoded`: ``cx, cy = (t + grid) * stride`` from the cell CORNER, ``w, h =
        exp(t) * stride``; the logits unchanged. The input is not modified (upstream writes into
        its reshaped copy in place).
    """
    B, channels, H, W = output.shape
    rows, cols = torch.meshgrid(torch.arange(H, device=output.device), torch.arange(W, device=output.device),
                                indexing="ij")
    grid = torch.stack((cols, rows), 2).view(1, H * W, 2).to(output.dtype)  # (1, H*W, 2) (x, y)
    flat = output.permute(0, 2, 3, 1).reshape(B, H * W, channels)  # (B, H*W, 5+C)
    centre = (flat[..., :2] + grid) * stride
    size = torch.exp(flat[..., 2:4]) * stride
    decoded = torch.cat([centre, size, flat[..., 4:]], -1)
    if trace is not None:
        with trace.scope("decode"):
            with trace.scope(level) if level else nullcontext():
                trace.record(
                    "grid", "Decode the level",
                    T("cells of stride {stride}: cx = (tx + x) * {stride}, cy = (ty + y) * {stride} from the cell "
                      "CORNER (SimOTA tests the cell centre, (x + 0.5) * {stride}); w = exp(tw) * {stride}",
                      stride=stride),
                    code=f"{HEAD_CODE}.get_output_and_grid",
                    values={"stride": stride, "H": H, "W": W, "anchors": H * W})
    return Decoded(decoded, grid)


class AnchorGrid(NamedTuple):
    """Every anchor (one per cell), level by level, row-major: upstream's concatenated shifts."""

    x_shifts: Tensor  # (A,) column
    y_shifts: Tensor  # (A,) row
    expanded_strides: Tensor  # (A,)
    level_sizes: tuple[int, ...]  # H*W of each level


def make_grid(img_hw: Sequence[int], strides: Sequence[float] = (8, 16, 32), *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> AnchorGrid:
    """The anchors of an ``img_hw = (H, W)`` input: a level of stride ``s`` has ``(H/s) x (W/s)`` cells."""
    xs, ys, ss, sizes = [], [], [], []
    for stride in strides:
        H, W = int(img_hw[0] // stride), int(img_hw[1] // stride)
        rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
        xs.append(cols.reshape(-1).to(dtype))
        ys.append(rows.reshape(-1).to(dtype))
        ss.append(torch.full((H * W,), stride, dtype=dtype, device=device))
        sizes.append(H * W)
    return AnchorGrid(torch.cat(xs), torch.cat(ys), torch.cat(ss), tuple(sizes))


def get_l1_target(gt: Tensor, stride: Tensor, x_shifts: Tensor, y_shifts: Tensor, eps: float = 1e-8, *,
                  trace: Trace | None = None) -> Tensor:
    """The L1 target of each positive (``YOLOXHead.get_l1_target``): the raw ``(tx, ty, tw, th)``
    that would decode exactly to the target box.

    Args:
        gt (Tensor[P, 4]): target boxes ``(cx, cy, w, h)`` px.
        stride, x_shifts, y_shifts (Tensor[P]): of each positive's anchor.
        trace: records ``targets.l1``.

    Returns:
        Tensor[P, 4]: ``(cx/s - x, cy/s - y, log(w/s + eps), log(h/s + eps))``, offsets from the
        cell corner; ``w = 0`` gives ``log(1e-8) = -18.42``.
    """
    target = torch.stack([gt[:, 0] / stride - x_shifts, gt[:, 1] / stride - y_shifts,
                          torch.log(gt[:, 2] / stride + eps), torch.log(gt[:, 3] / stride + eps)], 1)
    if trace is not None:
        trace.record("targets.l1", "L1 targets", "the raw outputs that decode to the target box: offset from "
                     "the cell corner in cells, log of the size in cells", code=f"{HEAD_CODE}.get_l1_target",
                     tensors={"l1_target": (target, "P 4")}, values={"eps": eps})
    return target


# -- the loss -----------------------------------------------------------------------------------
class LossBreakdown(NamedTuple):
    """``get_losses``' 6-tuple (the trainer's names), then what it was computed from."""

    total_loss: Tensor
    iou_loss: Tensor  # already times reg_weight (5.0)
    conf_loss: Tensor
    cls_loss: Tensor
    l1_loss: Tensor | float  # the Python float 0.0 without use_l1
    num_fg: float  # max(positives, 1) / max(targets, 1): a ratio, despite its name
    fg_count: int  # positives in the batch
    num_gts: int  # targets in the batch (padding rule)
    fg_mask: Tensor  # (B, A) bool
    per_image: tuple[Assignment | None, ...]  # None for an image without targets


_PER_IMAGE_VALUES = ("num_candidates", "num_fg", "num_conflicts", "conflicts_won_by_nonselecting_gt",
                     "gts_without_anchor")


def _batch_stages(per_image: list[tuple[int, list[tuple[str, dict[str, Any]]]]]) -> list[tuple[str, dict[str, Any]]]:
    """Concatenate the SimOTA stages of several images; every row group ``<prefix>_*`` gets a
    ``<prefix>_image`` column."""
    merged = []
    for position, (step, first) in enumerate(per_image[0][1]):
        images = [image for image, _ in per_image]
        same_step = [image_stages[position][1] for _, image_stages in per_image]
        tensors: dict[str, tuple[Tensor, str]] = {}
        for key, (tensor, dims) in first["tensors"].items():
            prefix, rows = key.split("_")[0], dims.split(" ")[0]
            if f"{prefix}_image" not in tensors:  # the image of every row of this group
                tensors[f"{prefix}_image"] = (torch.cat([
                    torch.full((stage["tensors"][key][0].shape[0],), image, dtype=torch.int64, device=tensor.device)
                    for image, stage in zip(images, same_step)]), rows)
            tensors[key] = (torch.cat([stage["tensors"][key][0] for stage in same_step]), dims)
        values: dict[str, Any] = {"images": images}
        for key, value in first.get("values", {}).items():
            values[key] = [stage["values"][key] for stage in same_step] if key in _PER_IMAGE_VALUES else value
        merged.append((step, {**first, "tensors": tensors, "values": values}))
    return merged


def get_losses(outputs: Tensor, labels: Tensor, x_shifts: Tensor, y_shifts: Tensor, expanded_strides: Tensor,
               origin_preds: Tensor | None = None, *, use_l1: bool = False, iou_loss_type: str = "iou",
               version: str = "0.3.0", reg_weight: float = REG_WEIGHT, center_radius: float | None = None,
               penalty: float | None = None, trace: Trace | None = None) -> LossBreakdown:
    """The YOLOX loss of a batch from decoded outputs (``YOLOXHead.get_losses``).

    Args:
        outputs (Tensor[B, A, 5+C]): decoded boxes, then raw obj and class logits (all levels,
            as :func:`get_output_and_grid` gives them, concatenated).
        labels (Tensor[B, M, 5]): ``(class, cx, cy, w, h)`` px rows, zero-padded. An image has
            as many targets as rows whose five numbers sum to ``> 0``, and uses its FIRST that many.
        x_shifts, y_shifts, expanded_strides (Tensor[A] or Tensor[1, A]): the anchors.
        origin_preds (Tensor[B, A, 4]): raw ``(tx, ty, tw, th)``; needed only with ``use_l1``.
        iou_loss_type: ``"iou"`` (``1 - IoU**2``) or ``"giou"``.
        version: the SimOTA version, ``"0.3.0"`` or ``"main"``.
        trace: records ``targets.count``, the ``simota.*`` stages of every image with targets
            (concatenated, each row group with an ``*_image`` column), ``loss.targets``,
            ``loss.iou``, ``loss.obj``, ``loss.cls``, ``loss.l1``, ``loss.total``.

    Returns:
        :class:`LossBreakdown`. An image with targets but no candidate anchor, or a class outside
        ``[0, C)``, raises ``RuntimeError`` (upstream re-raises every non-OOM RuntimeError).
    """
    spec = _version(version)
    radius = spec.center_radius if center_radius is None else center_radius
    penalty = spec.penalty if penalty is None else penalty
    B, A, channels = outputs.shape
    C = channels - 5
    x_shifts, y_shifts, expanded_strides = x_shifts.reshape(-1), y_shifts.reshape(-1), expanded_strides.reshape(-1)
    bbox_preds = outputs[:, :, :4]  # (B, A, 4)
    obj_preds = outputs[:, :, 4:5]  # (B, A, 1)
    cls_preds = outputs[:, :, 5:]  # (B, A, C)
    nlabel = (labels.sum(dim=2) > 0).sum(dim=1)  # (B,) the padding rule
    counts = nlabel.tolist()
    if trace is not None:
        rows = [(b, i) for b, n in enumerate(counts) for i in range(n)]
        image = torch.tensor([b for b, _ in rows], dtype=torch.int64, device=labels.device)
        index = torch.tensor([i for _, i in rows], dtype=torch.int64, device=labels.device)
        trace.record(
            "targets.count", "Targets per image",
            "an image has as many targets as label rows whose five numbers sum to > 0, and it uses its "
            "FIRST that many rows (a real row summing to <= 0 counts as padding)",
            code=f"{HEAD_CODE}.get_losses (nlabel)",
            tensors={"gt_image": (image, "T"), "gt_index": (index, "T"),
                     "gt_class": (labels[image, index, 0], "T"), "gt_box": (labels[image, index, 1:5], "T 4")},
            values={"num_gt": counts})

    fg_masks = torch.zeros((B, A), dtype=torch.bool, device=outputs.device)
    cls_targets, reg_targets, l1_targets, per_image = [], [], [], []
    fg_meta = []  # (image, anchor, gt, class) of the positives, trace only
    stages = []
    num_fg, num_gts = 0.0, 0.0
    for b in range(B):
        num_gt = int(counts[b])
        num_gts += num_gt
        if num_gt == 0:
            per_image.append(None)
            continue
        gt_bboxes = labels[b, :num_gt, 1:5]
        gt_classes = labels[b, :num_gt, 0]
        with torch.no_grad():
            assignment, details = _assign(
                gt_bboxes, gt_classes, bbox_preds[b], cls_preds[b], obj_preds[b], x_shifts, y_shifts,
                expanded_strides, num_classes=C, spec=spec, center_radius=radius, penalty=penalty,
                iou_weight=3.0, candidate_topk=10, want_details=trace is not None)
        per_image.append(assignment)
        if details is not None:
            stages.append((b, details.stages))
        num_fg += assignment.num_fg
        fg_mask = assignment.fg_mask
        fg_masks[b] = fg_mask
        cls_targets.append(F.one_hot(assignment.gt_matched_classes.to(torch.int64), C)
                           * assignment.pred_ious_this_matching.unsqueeze(-1))
        reg_targets.append(gt_bboxes[assignment.matched_gt_inds])
        if use_l1:
            l1_targets.append(get_l1_target(gt_bboxes[assignment.matched_gt_inds], expanded_strides[fg_mask],
                                            x_shifts[fg_mask], y_shifts[fg_mask]).to(outputs.dtype))
        if trace is not None:
            fg_meta.append((b, fg_mask.nonzero().squeeze(1), assignment.matched_gt_inds,
                            assignment.gt_matched_classes))
    if trace is not None:
        if stages:
            for step, stage in _batch_stages(stages):
                _record(trace, step, stage)
        else:
            trace.record("simota.result", "Positives", "no image has a target: SimOTA does not run and no "
                         "anchor is positive", code=spec.matching_code, values={"num_fg": 0})

    dtype = outputs.dtype
    empty = outputs.new_zeros((0, C))
    cls_targets_t = torch.cat(cls_targets, 0) if cls_targets else empty
    reg_targets_t = torch.cat(reg_targets, 0) if reg_targets else outputs.new_zeros((0, 4))
    obj_targets = fg_masks.reshape(-1, 1).to(dtype)  # (B*A, 1)
    fg_flat = fg_masks.reshape(-1)  # (B*A,) images in order, anchors ascending
    fg_count = int(num_fg)
    num_fg = max(num_fg, 1)

    pred_boxes = bbox_preds.reshape(-1, 4)[fg_flat]  # (P, 4)
    iou_terms = iou_loss(pred_boxes, reg_targets_t, loss_type=iou_loss_type)  # (P,)
    loss_iou = iou_terms.sum() / num_fg
    obj_terms = F.binary_cross_entropy_with_logits(obj_preds.reshape(-1, 1), obj_targets, reduction="none")
    loss_obj = obj_terms.sum() / num_fg
    cls_terms = F.binary_cross_entropy_with_logits(cls_preds.reshape(-1, C)[fg_flat], cls_targets_t,
                                                   reduction="none")  # (P, C)
    loss_cls = cls_terms.sum() / num_fg
    if use_l1:
        if origin_preds is None:
            raise ValueError("origin_preds: needed with use_l1=True")
        l1_targets_t = torch.cat(l1_targets, 0) if l1_targets else outputs.new_zeros((0, 4))
        origin_fg = origin_preds.reshape(-1, 4)[fg_flat]
        l1_terms = F.l1_loss(origin_fg, l1_targets_t, reduction="none")  # (P, 4)
        loss_l1: Tensor | float = l1_terms.sum() / num_fg
    else:
        loss_l1 = 0.0
    loss = reg_weight * loss_iou + loss_obj + loss_cls + loss_l1
    ratio = num_fg / max(num_gts, 1)

    if trace is not None:
        _record_loss(trace, fg_meta, outputs, pred_boxes, reg_targets_t, cls_targets_t, iou_terms, obj_terms,
                     fg_flat, cls_terms, use_l1, l1_targets_t if use_l1 else None,
                     origin_fg if use_l1 else None, l1_terms if use_l1 else None, iou_loss_type, reg_weight,
                     num_fg, fg_count, num_gts, loss, loss_iou, loss_obj, loss_cls, loss_l1, ratio)
    return LossBreakdown(loss, reg_weight * loss_iou, loss_obj, loss_cls, loss_l1, ratio, fg_count,
                         int(num_gts), fg_masks, tuple(per_image))


def _record_loss(trace: Trace, fg_meta, outputs, pred_boxes, reg_targets, cls_targets, iou_terms, obj_terms, fg_flat,
                 cls_terms, use_l1, l1_targets, origin_fg, l1_terms, iou_loss_type, reg_weight, num_fg, fg_count,
                 num_gts, loss, loss_iou, loss_obj, loss_cls, loss_l1, ratio) -> None:
    device = outputs.device
    if fg_meta:
        fg_image = torch.cat([torch.full_like(anchor, b) for b, anchor, _, _ in fg_meta])
        fg_anchor = torch.cat([anchor for _, anchor, _, _ in fg_meta])
        fg_gt = torch.cat([gt for _, _, gt, _ in fg_meta])
        fg_class = torch.cat([cls for _, _, _, cls in fg_meta]).to(torch.int64)
    else:
        fg_image = fg_anchor = fg_gt = fg_class = torch.zeros(0, dtype=torch.int64, device=device)
    soft = cls_targets.gather(1, fg_class.unsqueeze(1)).squeeze(1) if fg_class.numel() else cls_targets.new_zeros(0)
    tensors = {"fg_image": (fg_image, "P"), "fg_anchor": (fg_anchor, "P"), "fg_gt": (fg_gt, "P"),
               "fg_class": (fg_class, "P"), "fg_cls_target": (soft, "P"), "fg_pred_box": (pred_boxes, "P 4"),
               "fg_reg_target": (reg_targets, "P 4")}
    if use_l1:
        tensors.update({"fg_origin_pred": (origin_fg, "P 4"), "fg_l1_target": (l1_targets, "P 4")})
    with trace.scope("loss"):
        trace.record(
            "targets", "Targets of the positives",
            T("objectness target 1 at every positive and 0 at every other anchor; class target one_hot(class) "
              "* IoU(prediction, target) (IoU-aware soft label); box target the matched target box; L1 target the "
              "raw (tx, ty, tw, th) that decodes to it" if use_l1 else
              "objectness target 1 at every positive and 0 at every other anchor; class target one_hot(class) "
              "* IoU(prediction, target) (IoU-aware soft label); box target the matched target box"),
            code=f"{HEAD_CODE}.get_losses (targets)", tensors=tensors)
        trace.record(
            "iou", "IoU loss",
            T("{reg_weight} * sum over the positives of (1 - IoU**2) / num_fg, num_fg = max(positives, 1) = {num_fg:g}"
              if iou_loss_type == "iou" else
              "{reg_weight} * sum over the positives of (1 - clamp(GIoU, -1, 1)) / num_fg, num_fg = max(positives, 1) "
              "= {num_fg:g}", reg_weight=reg_weight, num_fg=num_fg),
            code=f"{HEAD_CODE}.get_losses (loss_iou), yolox/models/losses.py IOUloss",
            tensors={"fg_loss": (iou_terms, "P"), "iou_loss": reg_weight * loss_iou},
            values={"loss_type": iou_loss_type, "reg_weight": reg_weight, "num_fg": num_fg})
        obj_flat = obj_terms.reshape(-1)
        trace.record(
            "obj", "Objectness loss",
            "BCE-with-logits of EVERY anchor's objectness (all images) against 1 at positives and 0 elsewhere, "
            "summed and divided by num_fg: the background term counts too",
            code=f"{HEAD_CODE}.get_losses (loss_obj)",
            tensors={"fg_loss": (obj_flat[fg_flat], "P"), "obj_bce": (obj_terms.view(outputs.shape[:2]), "B A"),
                     "conf_loss": loss_obj},
            values={"positive_sum": obj_flat[fg_flat].sum().item(),
                    "background_sum": obj_flat[~fg_flat].sum().item(), "anchors": int(obj_flat.numel()),
                    "num_fg": num_fg})
        trace.record(
            "cls", "Class loss",
            "BCE-with-logits of the positives' class logits against one_hot(class) * IoU, summed over classes "
            "and positives, divided by num_fg (no class loss at other anchors)",
            code=f"{HEAD_CODE}.get_losses (loss_cls)",
            tensors={"fg_loss": (cls_terms.sum(1), "P"), "cls_loss": loss_cls}, values={"num_fg": num_fg})
        if use_l1:
            trace.record(
                "l1", "L1 loss", "sum of |raw (tx, ty, tw, th) - L1 target| over the positives, divided by num_fg",
                code=f"{HEAD_CODE}.get_losses (loss_l1)",
                tensors={"fg_loss": (l1_terms.sum(1), "P"), "l1_loss": loss_l1}, values={"use_l1": True})
        else:
            trace.record("l1", "L1 loss (off)", "use_l1 is False (YOLOX turns it on for the last 15 epochs): "
                         "l1_loss is the Python float 0.0", code=f"{HEAD_CODE}.get_losses (loss_l1)",
                         values={"use_l1": False})
        trace.record(
            "total", "Total",
            T("total = {reg_weight} * iou + obj + cls + l1; the returned num_fg is max(positives, 1) / "
              "max(targets, 1) = {num_fg:g} / {targets:g}", reg_weight=reg_weight, num_fg=num_fg,
              targets=max(num_gts, 1)),
            code=f"{HEAD_CODE}.get_losses (return)",
            tensors={"total_loss": loss},
            values={"iou_loss": (reg_weight * loss_iou).item(), "conf_loss": loss_obj.item(),
                    "cls_loss": loss_cls.item(),
                    "l1_loss": loss_l1.item() if isinstance(loss_l1, Tensor) else loss_l1, "num_fg_ratio": ratio,
                    "positives": fg_count, "targets": int(num_gts)})


def yolox_loss(raw_outputs: Sequence[Tensor], labels: Tensor, *, strides: Sequence[float] = (8, 16, 32),
               use_l1: bool = False, iou_loss_type: str = "iou", version: str = "0.3.0",
               reg_weight: float = REG_WEIGHT, center_radius: float | None = None, penalty: float | None = None,
               trace: Trace | None = None) -> LossBreakdown:
    """The YOLOX loss from the raw head maps, as ``YOLOXHead.forward`` in training mode computes it.

    Args:
        raw_outputs: one ``Tensor[B, 5+C, H, W]`` per level (stride order as ``strides``), the
            1x1-conv outputs ``(tx, ty, tw, th, obj, cls...)`` before any activation.
        labels (Tensor[B, M, 5]): ``(class, cx, cy, w, h)`` px, zero-padded.
        Other arguments as :func:`get_losses`.
        trace: records ``decode.<level>.grid`` per level, then :func:`get_losses`' stages.

    Returns:
        :class:`LossBreakdown`.
    """
    if len(raw_outputs) != len(strides):
        raise ValueError(f"raw_outputs: {len(raw_outputs)} levels but {len(strides)} strides")
    outputs, xs, ys, ss, origin = [], [], [], [], []
    for k, (raw, stride) in enumerate(zip(raw_outputs, strides)):
        decoded = get_output_and_grid(raw, stride, level=_level_name(stride, k), trace=trace)
        outputs.append(decoded.output)
        xs.append(decoded.grid[0, :, 0])
        ys.append(decoded.grid[0, :, 1])
        ss.append(torch.full((decoded.grid.shape[1],), stride, dtype=raw.dtype, device=raw.device))
        if use_l1:
            B, _, H, W = raw.shape
            origin.append(raw[:, :4].permute(0, 2, 3, 1).reshape(B, H * W, 4))
    return get_losses(torch.cat(outputs, 1), labels, torch.cat(xs), torch.cat(ys), torch.cat(ss),
                      torch.cat(origin, 1) if use_l1 else None, use_l1=use_l1, iou_loss_type=iou_loss_type,
                      version=version, reg_weight=reg_weight, center_radius=center_radius, penalty=penalty,
                      trace=trace)
