"""YOLOv3 losses: the PyTorch-YOLOv3 port (legacy and HEAD) and darknet's ``2 - w*h`` rule.

Three upstream behaviours live here, each exact:

* **Legacy port** (eriklindernoren/PyTorch-YOLOv3 @7dd01ec, ``utils/utils.py build_targets`` and
  ``models.py YOLOLayer``): one positive per target per level, at the target's cell and the
  anchor of this level with the highest *width-height* IoU. Every anchor of that cell whose
  wh-IoU exceeds ``ignore_thres`` is removed from the no-object loss. Coordinates are MSE on
  ``sigmoid(tx)`` vs the cell fraction and on the raw ``tw`` vs ``log(w / anchor)``; objectness
  and classes are BCE on probabilities. Every term is a *mean* over its selection, so a level
  with no target gives ``nan`` (as upstream).
* **Darknet** (``src/yolo_layer.c``): the coordinate error is scaled by ``2 - w*h`` (w, h as
  fractions of the image), so small boxes weigh up to twice as much; the gradient written to
  ``l.delta`` is ``-(p - y)`` per output. ``legacy_build_targets(..., lambda_scale=True)`` and
  ``yolo_layer_loss(..., lambda_scale=True)`` follow the seed's modified port; with the scale off
  every number equals the port bit for bit.
* **HEAD port** (``pytorchyolo/utils/loss.py @1d621c8``): the ultralytics-style loss. A target
  matches every anchor whose shape ratio ``max(r, 1/r) < 4`` (fixed), at its own cell only (no
  neighbour cells), with CIoU box loss, IoU objectness targets and BCE-with-logits; the loss is
  *not* multiplied by the batch size.

Shapes: ``B`` images, ``A`` anchors per level, ``H W`` grid, ``N`` targets, ``C`` classes,
``P`` positives. Target rows are ``(image, class, cx, cy, w, h)`` normalised to [0, 1].
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..trace import Trace

__all__ = [
    "YOLOV3_STRIDES",
    "YOLOV3_ANCHORS_PX",
    "bbox_wh_iou",
    "legacy_bbox_iou",
    "LegacyTargets",
    "legacy_build_targets",
    "LayerLoss",
    "SigmoidOnIndex",
    "decode_layer",
    "yolo_layer_loss",
    "HeadTargets",
    "build_targets",
    "compute_loss",
]

YOLOV3_STRIDES = (8, 16, 32)
# yolov3.cfg anchors, grouped by the level that owns them (P3/8, P4/16, P5/32), pixels (w, h).
YOLOV3_ANCHORS_PX = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)

_CODE_LEGACY = "PyTorch-YOLOv3@7dd01ec utils/utils.py build_targets"
_CODE_LAYER = "PyTorch-YOLOv3@7dd01ec models.py YOLOLayer.forward"
_CODE_DARKNET = "darknet src/yolo_layer.c forward_yolo_layer / delta_yolo_box"
_CODE_HEAD = "PyTorch-YOLOv3@1d621c8 pytorchyolo/utils/loss.py"


# -- overlaps ---------------------------------------------------------------------------------
def _level_name(stride: float, level: int) -> str:
    """``P3`` for stride 8 (P = log2 stride), else ``P{3 + level}``."""
    exponent = math.log2(float(stride)) if float(stride) > 0 else 0.5
    return f"P{int(exponent)}" if exponent.is_integer() else f"P{3 + level}"


def bbox_wh_iou(anchors_wh: Tensor, targets_wh: Tensor) -> Tensor:
    """IoU of boxes that share a centre, from sizes only (upstream ``bbox_wh_iou``).

    Args:
        anchors_wh (Tensor[A, 2]), targets_wh (Tensor[N, 2]): widths and heights, same units.

    Returns:
        Tensor[A, N]: ``min(w)·min(h) / (aw·ah + 1e-16 + w·h - min(w)·min(h))``.
    """
    anchor_w, anchor_h = anchors_wh[:, 0:1], anchors_wh[:, 1:2]  # (A, 1)
    target_w, target_h = targets_wh[:, 0], targets_wh[:, 1]  # (N,)
    inter = torch.min(anchor_w, target_w) * torch.min(anchor_h, target_h)  # (A, N)
    union = (anchor_w * anchor_h + 1e-16) + target_w * target_h - inter
    return inter / union


def legacy_bbox_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """The legacy port's IoU of ``(cx, cy, w, h)`` boxes, pairwise along the first axis.

    Upstream keeps the *pixel* convention of adding 1 to every side length, even though the
    boxes here are in grid units; we keep it (it makes ``iou_scores`` and recall lower than a
    true IoU, markedly for small boxes).

    Args:
        boxes1 (Tensor[P, 4]), boxes2 (Tensor[P, 4]): centre-size boxes.

    Returns:
        Tensor[P]
    """
    b1_x1, b1_x2 = boxes1[:, 0] - boxes1[:, 2] / 2, boxes1[:, 0] + boxes1[:, 2] / 2
    b1_y1, b1_y2 = boxes1[:, 1] - boxes1[:, 3] / 2, boxes1[:, 1] + boxes1[:, 3] / 2
    b2_x1, b2_x2 = boxes2[:, 0] - boxes2[:, 2] / 2, boxes2[:, 0] + boxes2[:, 2] / 2
    b2_y1, b2_y2 = boxes2[:, 1] - boxes2[:, 3] / 2, boxes2[:, 1] + boxes2[:, 3] / 2
    inter_w = torch.clamp(torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1) + 1, min=0)
    inter_h = torch.clamp(torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1) + 1, min=0)
    inter = inter_w * inter_h
    area1 = (b1_x2 - b1_x1 + 1) * (b1_y2 - b1_y1 + 1)
    area2 = (b2_x2 - b2_x1 + 1) * (b2_y2 - b2_y1 + 1)
    return inter / (area1 + area2 - inter + 1e-16)


# -- legacy build_targets ---------------------------------------------------------------------
class LegacyTargets(NamedTuple):
    """What the legacy ``build_targets`` returns, each ``(B, A, H, W)`` (``tcls`` adds ``C``).

    ``coord_scale`` is darknet's ``2 - w*h`` at positives and 1 elsewhere when ``lambda_scale``,
    all ones otherwise. ``wh_iou`` ``(A, N)``, ``best_anchor`` ``(N,)``, ``gi``/``gj`` ``(N,)`` and
    ``positive_rows`` ``(N,)`` describe the assignment per target row.
    """

    iou_scores: Tensor
    class_mask: Tensor
    obj_mask: Tensor
    noobj_mask: Tensor
    tx: Tensor
    ty: Tensor
    tw: Tensor
    th: Tensor
    tcls: Tensor
    tconf: Tensor
    coord_scale: Tensor
    wh_iou: Tensor
    best_anchor: Tensor
    gi: Tensor
    gj: Tensor
    positive_rows: Tensor


def legacy_build_targets(
    pred_boxes: Tensor,
    pred_cls: Tensor | SigmoidOnIndex,
    target: Tensor,
    anchors: Tensor,
    ignore_thres: float = 0.5,
    *,
    lambda_scale: bool = False,
    positive_rows: Tensor | None = None,
    trace: Trace | None = None,
) -> LegacyTargets:
    """Targets of one YOLO level as the legacy PyTorch-YOLOv3 port builds them.

    Args:
        pred_boxes (Tensor[B, A, H, W, 4]): decoded predictions ``(cx, cy, w, h)`` in grid units.
        pred_cls (Tensor[B, A, H, W, C]): class probabilities (only read at the positive slots;
            a :class:`SigmoidOnIndex` of the logits does as well).
        target (Tensor[N, 6]): ``(image, class, cx, cy, w, h)`` normalised rows.
        anchors (Tensor[A, 2]): anchors in grid units (pixels / stride).
        ignore_thres: an anchor of the target's cell whose wh-IoU with the target is above this
            leaves the no-object loss (darknet's ``ignore_thresh``; not a positive).
        lambda_scale: darknet's ``2 - w*h`` coordinate scale (the seed's modified port).
        positive_rows (Tensor[N] bool): rows that become positives here (default all). The
            ignore rule still uses every row. The scene's darknet assignment uses it.
        trace: records the stages of the assignment.

    Upstream assumes a square grid; here the x values scale by ``W`` and y by ``H`` (identical
    when ``H == W``). Duplicate (image, anchor, cell) slots follow upstream's indexed writes:
    the last row wins for tx..th, ``iou_scores`` and ``class_mask``, while ``tcls`` becomes
    multi-hot.
    """
    B, A, H, W, _ = pred_boxes.shape
    C = pred_cls.size(-1)
    device, dtype = pred_boxes.device, pred_boxes.dtype
    obj_mask = torch.zeros((B, A, H, W), dtype=torch.bool, device=device)
    noobj_mask = torch.ones((B, A, H, W), dtype=torch.bool, device=device)
    class_mask = torch.zeros((B, A, H, W), dtype=dtype, device=device)
    iou_scores = torch.zeros((B, A, H, W), dtype=dtype, device=device)
    tx = torch.zeros((B, A, H, W), dtype=dtype, device=device)
    ty, tw, th = torch.zeros_like(tx), torch.zeros_like(tx), torch.zeros_like(tx)
    coord_scale = torch.ones_like(tx)
    tcls = torch.zeros((B, A, H, W, C), dtype=dtype, device=device)

    grid_gain = torch.tensor([W, H, W, H], dtype=target.dtype, device=device)
    target_boxes = target[:, 2:6] * grid_gain  # (N, 4) grid units
    centre_xy, size_wh = target_boxes[:, :2], target_boxes[:, 2:]
    wh_iou = bbox_wh_iou(anchors, size_wh)  # (A, N)
    best_iou, best_anchor = wh_iou.max(0)  # (N,)
    image, label = target[:, :2].long().t()  # (N,) each
    gx, gy = centre_xy.t()
    gw, gh = size_wh.t()
    cell = centre_xy.long()  # (N, 2) floor for centres >= 0
    # A centre exactly on the right/bottom image edge would index past the grid (upstream raises).
    gi = cell[:, 0].clamp(0, W - 1)
    gj = cell[:, 1].clamp(0, H - 1)
    if trace is not None:
        trace.record(
            "build_targets.scale_to_grid", "Targets scaled to the grid",
            "multiply the normalised (cx, cy, w, h) by the grid size; the cell is the integer part "
            "of the centre (gi column, gj row)",
            code=_CODE_LEGACY, tensors={"target_boxes": (target_boxes, "N 4"), "gi": (gi, "N"),
                                        "gj": (gj, "N")}, values={"grid": [H, W]})
        trace.record(
            "build_targets.wh_iou", "Width-height IoU with each anchor",
            "IoU of the target and each anchor of this level placed on the same centre (sizes only); "
            "the best one becomes the positive anchor",
            code=_CODE_LEGACY + " / bbox_wh_iou",
            tensors={"wh_iou": (wh_iou, "A N"), "best_iou": (best_iou, "N"),
                     "best_anchor": (best_anchor, "N"), "anchors": (anchors, "A 2")})

    if positive_rows is None:
        positive_rows = torch.ones_like(best_anchor, dtype=torch.bool)
        pos_image, pos_anchor, pos_gj, pos_gi, pos_label = image, best_anchor, gj, gi, label
        pos_gx, pos_gy, pos_gw, pos_gh, pos_boxes = gx, gy, gw, gh, target_boxes
    else:
        pos_image, pos_anchor = image[positive_rows], best_anchor[positive_rows]
        pos_gj, pos_gi, pos_label = gj[positive_rows], gi[positive_rows], label[positive_rows]
        pos_gx, pos_gy, pos_gw, pos_gh = (v[positive_rows] for v in (gx, gy, gw, gh))
        pos_boxes = target_boxes[positive_rows]
    slot = (pos_image, pos_anchor, pos_gj, pos_gi)
    obj_mask[slot] = True
    noobj_mask[slot] = False
    above_ignore = wh_iou.t() > ignore_thres  # (N, A)
    for row in range(above_ignore.size(0)):
        noobj_mask[image[row], above_ignore[row], gj[row], gi[row]] = False

    tx[slot] = pos_gx - pos_gx.floor()
    ty[slot] = pos_gy - pos_gy.floor()
    tw[slot] = torch.log(pos_gw / anchors[pos_anchor][:, 0] + 1e-16)
    th[slot] = torch.log(pos_gh / anchors[pos_anchor][:, 1] + 1e-16)
    if lambda_scale:
        coord_scale[slot] = 2 - pos_gw / W * (pos_gh / H)
    tcls[(*slot, pos_label)] = 1
    class_mask[slot] = (pred_cls[slot].argmax(-1) == pos_label).to(dtype)
    iou_scores[slot] = legacy_bbox_iou(pred_boxes[slot], pos_boxes)
    tconf = obj_mask.to(dtype)

    if trace is not None:
        ignored = (~obj_mask) & (~noobj_mask)
        trace.record(
            "build_targets.ignore", "Ignore mask (ignore_thresh)",
            "anchors of a target's cell with wh-IoU above ignore_thres are neither positive nor "
            "negative: they leave the no-object loss (darknet ignore_thresh; truth_thresh = 1 "
            "never makes an extra positive)",
            code=_CODE_LEGACY,
            tensors={"above_ignore": (above_ignore, "N A"), "obj_mask": (obj_mask, "B A H W"),
                     "noobj_mask": (noobj_mask, "B A H W"), "ignored": (ignored, "B A H W")},
            values={"ignore_thres": float(ignore_thres), "n_positive_slots": int(obj_mask.sum()),
                    "n_ignored": int(ignored.sum())})
        trace.record(
            "build_targets.offsets", "Coordinate targets tx, ty, tw, th",
            "tx, ty = fraction of the centre inside its cell; tw, th = log(size / anchor) "
            "(+1e-16 inside the log)",
            code=_CODE_LEGACY,
            tensors={"tx": (tx[slot], "P"), "ty": (ty[slot], "P"), "tw": (tw[slot], "P"),
                     "th": (th[slot], "P"), "positive_rows": (positive_rows, "N")})
        trace.record(
            "build_targets.coord_scale", "Darknet's 2 - w·h scale",
            ("darknet multiplies the coordinate error by 2 - w·h (w, h as image fractions): a tiny "
             "box counts up to twice, a full-image box once" if lambda_scale else
             "darknet multiplies the coordinate error by 2 - w·h (w, h as image fractions): a tiny "
             "box counts up to twice, a full-image box once; off here, so every scale is 1"),
            code=_CODE_DARKNET,
            tensors={"coord_scale": (coord_scale[slot], "P"),
                     "two_minus_wh": (2 - pos_gw / W * (pos_gh / H), "P")},
            values={"lambda_scale": bool(lambda_scale)})
        trace.record(
            "build_targets.classes", "Class targets and matched-prediction IoU",
            "one-hot tcls at each positive (multi-hot when two targets share a slot); class_mask "
            "= argmax of the predicted classes is right; iou_scores = IoU of the predicted box "
            "with the target (upstream's +1 pixel convention)",
            code=_CODE_LEGACY,
            tensors={"tcls": (tcls[slot], "P C"), "class_mask": (class_mask[slot], "P"),
                     "iou_scores": (iou_scores[slot], "P")})
    return LegacyTargets(iou_scores, class_mask, obj_mask, noobj_mask, tx, ty, tw, th, tcls, tconf,
                         coord_scale, wh_iou, best_anchor, gi, gj, positive_rows)


# -- legacy YOLOLayer loss --------------------------------------------------------------------
class SigmoidOnIndex:
    """``sigmoid(logits)`` computed only for the elements that are indexed.

    The legacy loss reads class probabilities at positive slots only; ``sigmoid`` is elementwise,
    so ``SigmoidOnIndex(z)[idx]`` has the bits of ``torch.sigmoid(z)[idx]`` without touching the
    other ``B·A·H·W·C`` elements (upstream computes them all for its detection output).
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits

    def __getitem__(self, index) -> Tensor:
        return torch.sigmoid(self.logits[index])

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def size(self, dim: int | None = None):
        return self.logits.shape if dim is None else self.logits.size(dim)

    def dense(self) -> Tensor:
        return torch.sigmoid(self.logits)


class DecodedLayer(NamedTuple):
    """Activations of one level: ``x``..``conf`` ``(B, A, H, W)``, ``cls`` ``(B, A, H, W, C)``
    probabilities evaluated on indexing (:class:`SigmoidOnIndex`), ``pred_boxes`` ``(B, A, H, W, 4)``
    in grid units (detached, as upstream's ``.data``)."""

    x: Tensor
    y: Tensor
    w: Tensor
    h: Tensor
    conf: Tensor
    cls: SigmoidOnIndex
    pred_boxes: Tensor


def decode_layer(prediction: Tensor, anchors: Tensor) -> DecodedLayer:
    """Decode raw outputs ``(B, A, H, W, 5 + C)``: ``σ(tx) + gi``, ``exp(tw)·anchor``, σ(obj), σ(cls).

    ``anchors`` (Tensor[A, 2]) in grid units.
    """
    B, A, H, W, _ = prediction.shape
    x = torch.sigmoid(prediction[..., 0])
    y = torch.sigmoid(prediction[..., 1])
    w = prediction[..., 2]
    h = prediction[..., 3]
    conf = torch.sigmoid(prediction[..., 4])
    cls = SigmoidOnIndex(prediction[..., 5:])
    grid_x = torch.arange(W, device=prediction.device, dtype=prediction.dtype).view(1, 1, 1, W)
    grid_y = torch.arange(H, device=prediction.device, dtype=prediction.dtype).view(1, 1, H, 1)
    anchor_w = anchors[:, 0].view(1, A, 1, 1)
    anchor_h = anchors[:, 1].view(1, A, 1, 1)
    pred_boxes = torch.stack(
        (x.detach() + grid_x, y.detach() + grid_y,
         torch.exp(w.detach()) * anchor_w, torch.exp(h.detach()) * anchor_h), dim=-1)  # (B, A, H, W, 4)
    return DecodedLayer(x, y, w, h, conf, cls, pred_boxes)


class LayerLoss(NamedTuple):
    """One level's loss: ``total`` (0-dim), ``terms`` (x, y, w, h, conf_obj, conf_noobj, conf,
    cls: 0-dim each), ``metrics`` (upstream's dict of Python numbers), the targets, the decoded
    activations and the darknet gradients ``p - y`` (each ``(B, A, H, W)``; ``cls`` is ``(P, C)`` in
    ``obj_mask`` order)."""

    total: Tensor
    terms: dict[str, Tensor]
    metrics: dict[str, float]
    targets: LegacyTargets
    decoded: DecodedLayer
    gradients: dict[str, Tensor]


def yolo_layer_loss(
    prediction: Tensor,
    target: Tensor,
    anchors: Tensor,
    *,
    ignore_thres: float = 0.5,
    obj_scale: float = 1.0,
    noobj_scale: float = 100.0,
    lambda_scale: bool = False,
    positive_rows: Tensor | None = None,
    trace: Trace | None = None,
) -> LayerLoss:
    """The legacy ``YOLOLayer`` loss of one level (and darknet's scaled variant).

    Args:
        prediction (Tensor[B, A, H, W, 5 + C]): raw outputs ``tx, ty, tw, th, obj, cls...``.
        target (Tensor[N, 6]): normalised target rows.
        anchors (Tensor[A, 2]): anchors in grid units.
        ignore_thres, obj_scale, noobj_scale: upstream's attributes (defaults of the pinned
            legacy commit: 0.5, 1, 100; master later used noobj_scale 0.5).
        lambda_scale: darknet's ``2 - w*h`` on the coordinate MSE (seed's modified forward).

    Returns:
        :class:`LayerLoss`. ``total = x + y + w + h + obj_scale·bce_obj + noobj_scale·bce_noobj
        + cls``; each term is a mean over its selection (``nan`` when it is empty).
    """
    decoded = decode_layer(prediction, anchors)
    targets = legacy_build_targets(decoded.pred_boxes, decoded.cls, target, anchors, ignore_thres,
                                   lambda_scale=lambda_scale, positive_rows=positive_rows, trace=trace)
    obj_mask, noobj_mask = targets.obj_mask, targets.noobj_mask
    coord_pairs = {"x": (decoded.x, targets.tx), "y": (decoded.y, targets.ty),
                   "w": (decoded.w, targets.tw), "h": (decoded.h, targets.th)}
    terms: dict[str, Tensor] = {}
    for name, (pred, goal) in coord_pairs.items():
        if lambda_scale:
            squared = F.mse_loss(pred[obj_mask], goal[obj_mask], reduction="none")
            terms[name] = (squared * targets.coord_scale[obj_mask]).mean()
        else:
            terms[name] = F.mse_loss(pred[obj_mask], goal[obj_mask])
    terms["conf_obj"] = F.binary_cross_entropy(decoded.conf[obj_mask], targets.tconf[obj_mask])
    terms["conf_noobj"] = F.binary_cross_entropy(decoded.conf[noobj_mask], targets.tconf[noobj_mask])
    terms["conf"] = obj_scale * terms["conf_obj"] + noobj_scale * terms["conf_noobj"]
    terms["cls"] = F.binary_cross_entropy(decoded.cls[obj_mask], targets.tcls[obj_mask])
    total = terms["x"] + terms["y"] + terms["w"] + terms["h"] + terms["conf"] + terms["cls"]

    with torch.no_grad():
        cls_acc = 100 * targets.class_mask[obj_mask].mean()
        conf_obj = decoded.conf[obj_mask].mean()
        conf_noobj = decoded.conf[noobj_mask].mean()
        conf50 = (decoded.conf > 0.5).float()
        iou50 = (targets.iou_scores > 0.5).float()
        iou75 = (targets.iou_scores > 0.75).float()
        detected = conf50 * targets.class_mask * targets.tconf
        precision = torch.sum(iou50 * detected) / (conf50.sum() + 1e-16)
        recall50 = torch.sum(iou50 * detected) / (obj_mask.sum() + 1e-16)
        recall75 = torch.sum(iou75 * detected) / (obj_mask.sum() + 1e-16)
        metrics = {
            "loss": total.item(), "x": terms["x"].item(), "y": terms["y"].item(),
            "w": terms["w"].item(), "h": terms["h"].item(), "conf": terms["conf"].item(),
            "cls": terms["cls"].item(), "cls_acc": cls_acc.item(), "recall50": recall50.item(),
            "recall75": recall75.item(), "precision": precision.item(),
            "conf_obj": conf_obj.item(), "conf_noobj": conf_noobj.item(),
            "grid_size": prediction.size(3) if prediction.size(2) == prediction.size(3)
            else [prediction.size(2), prediction.size(3)],
        }
        # Darknet's delta is -(p - y): BCE on a sigmoid and MSE both give p - y per output.
        scale = targets.coord_scale
        grad_obj = torch.where(obj_mask | noobj_mask, decoded.conf - targets.tconf,
                               torch.zeros_like(decoded.conf))
        grad_cls = decoded.cls[obj_mask] - targets.tcls[obj_mask]  # (P, C), positives only
        gradients = {
            "x": scale * (decoded.x - targets.tx) * obj_mask, "y": scale * (decoded.y - targets.ty) * obj_mask,
            "w": scale * (decoded.w - targets.tw) * obj_mask, "h": scale * (decoded.h - targets.th) * obj_mask,
            "obj": grad_obj, "cls": grad_cls,
        }
    if trace is not None:
        trace.record(
            "yolo_layer.decode", "Decoded predictions at the positives",
            "x = σ(tx) + gi, y = σ(ty) + gj, w = exp(tw)·anchor_w, h = exp(th)·anchor_h (grid units); "
            "σ(obj), σ(cls) are probabilities",
            code=_CODE_LAYER,
            tensors={"pred_boxes": (decoded.pred_boxes[obj_mask], "P 4"),
                     "sigmoid_x": (decoded.x[obj_mask], "P"), "sigmoid_y": (decoded.y[obj_mask], "P"),
                     "conf": (decoded.conf, "B A H W")})
        trace.record(
            "yolo_layer.terms", "Loss terms",
            ("MSE on σ(x), σ(y) and raw w, h over positives (× 2 - w·h); BCE objectness over positives "
             "(× obj_scale) and over non-ignored negatives (× noobj_scale); BCE classes over positives; each a mean"
             if lambda_scale else
             "MSE on σ(x), σ(y) and raw w, h over positives; BCE objectness over positives (× obj_scale) and over "
             "non-ignored negatives (× noobj_scale); BCE classes over positives; each a mean"),
            code=_CODE_LAYER,
            tensors={k: (v.detach(), "") for k, v in terms.items()} | {"total": (total.detach(), "")},
            values={"obj_scale": float(obj_scale), "noobj_scale": float(noobj_scale),
                    "n_obj": int(obj_mask.sum()), "n_noobj": int(noobj_mask.sum())})
        trace.record(
            "yolo_layer.gradients", "Darknet gradients p - y",
            "darknet writes delta = -(p - y) per output: σ(obj) - tconf on positives and "
            "non-ignored negatives (0 on ignored anchors), σ(cls) - tcls and scale·(p - t) "
            "for the coordinates (σ(x) vs tx, raw w vs tw) on positives",
            code=_CODE_DARKNET,
            tensors={"grad_obj": (gradients["obj"], "B A H W"), "grad_x": (gradients["x"][obj_mask], "P"),
                     "grad_y": (gradients["y"][obj_mask], "P"), "grad_w": (gradients["w"][obj_mask], "P"),
                     "grad_h": (gradients["h"][obj_mask], "P"),
                     "grad_cls": (gradients["cls"], "P C")})
        trace.record("yolo_layer.metrics", "Layer metrics",
                     "upstream's metrics dict: recall50/75 count positives whose matched prediction "
                     "has IoU above .5/.75, σ(obj) > .5 and the right class",
                     code=_CODE_LAYER, values=metrics)
    return LayerLoss(total, terms, metrics, targets, decoded, gradients)


def legacy_scaled_anchors(anchors_px: Sequence[Sequence[float]], img_dim: float, grid_size: int,
                          device: torch.device | None = None) -> Tensor:
    """``(A, 2)`` anchors in grid units as the legacy layer computes them (Python floats, then
    float32): ``a / (img_dim / grid_size)``."""
    stride = img_dim / grid_size
    return torch.tensor([(aw / stride, ah / stride) for aw, ah in anchors_px],
                        dtype=torch.float32, device=device)


# -- HEAD port --------------------------------------------------------------------------------
class HeadTargets(NamedTuple):
    """Per level lists: ``tcls`` (P,), ``tbox`` (P, 4) (xy offset in cell, wh grid units),
    ``indices`` (image, anchor, gj, gi) each (P,), ``anch`` (P, 2) grid units."""

    tcls: list[Tensor]
    tbox: list[Tensor]
    indices: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    anch: list[Tensor]


def build_targets(p_shapes: Sequence[Sequence[int]], targets: Tensor, anchors_px: Sequence[Tensor],
                  strides: Sequence[float], *, anchor_t: float = 4.0,
                  trace: Trace | None = None) -> HeadTargets:
    """HEAD ``build_targets(p, targets, model)``: shape-ratio matching, own cell only.

    Args:
        p_shapes: each level's prediction shape ``(B, A, H, W[, 5 + C])`` (only H, W are read).
        targets (Tensor[N, 6]): normalised target rows.
        anchors_px: per level ``(A, 2)`` anchors in pixels; ``strides`` per level.
        anchor_t: upstream's fixed ratio 4 (``max(r, 1/r) < 4`` on both sides).
    """
    device = targets.device
    num_anchors, num_targets = 3, targets.shape[0]
    out = HeadTargets([], [], [], [])
    gain = torch.ones(7, device=device)
    anchor_index = torch.arange(num_anchors, device=device).float().view(num_anchors, 1).repeat(1, num_targets)
    rows = torch.cat((targets.repeat(num_anchors, 1, 1), anchor_index[:, :, None]), 2)  # (A, N, 7)
    for level, (shape, anchors_level, stride) in enumerate(zip(p_shapes, anchors_px, strides)):
        anchors = anchors_level.to(device) / stride  # (A, 2) grid units
        H, W = int(shape[2]), int(shape[3])
        gain[2:6] = torch.tensor([W, H, W, H], device=device)
        scaled = rows * gain  # (A, N, 7)
        if num_targets:
            ratio = scaled[:, :, 4:6] / anchors[:, None]  # (A, N, 2)
            ratio_max = torch.max(ratio, 1.0 / ratio).max(2)[0]  # (A, N)
            keep = ratio_max < anchor_t
            matched = scaled[keep]  # (P, 7)
        else:
            ratio_max = torch.zeros((num_anchors, 0), device=device)
            keep = ratio_max.bool()
            matched = rows[0]
        image, cls = matched[:, :2].long().T
        centre_xy, size_wh = matched[:, 2:4], matched[:, 4:6]
        # Upstream clamps gj, gi *in place* (views of the cell tensor) before it computes tbox, so a
        # centre on the right/bottom edge (x == W) gets cell W-1 and an offset of exactly 1.0.
        cell = torch.stack((centre_xy[:, 0].long().clamp(0, W - 1),
                            centre_xy[:, 1].long().clamp(0, H - 1)), 1)  # (P, 2) gi, gj
        gi, gj = cell.T
        anchor = matched[:, 6].long()
        out.indices.append((image, anchor, gj, gi))
        out.tbox.append(torch.cat((centre_xy - cell, size_wh), 1))
        out.anch.append(anchors[anchor])
        out.tcls.append(cls)
        if trace is not None:
            with trace.level(_level_name(strides[level], level)):
                trace.record("build_targets.anchor_filter", "Anchor-ratio filter",
                             "keep target/anchor pairs with max(w/aw, aw/w, h/ah, ah/h) < 4 (fixed in "
                             "the port); each kept pair is positive at the target's own cell only",
                             code=_CODE_HEAD + " build_targets",
                             tensors={"r_max": (ratio_max, "A N"), "keep": (keep, "A N"),
                                      "tbox": (out.tbox[-1], "P 4")},
                             values={"anchor_t": anchor_t, "grid": [H, W]})
    return out


def _head_ciou(pred_box: Tensor, target_box: Tensor, eps: float = 1e-9) -> Tensor:
    """CIoU of ``(P, 4)`` xywh boxes as ``pytorchyolo/utils/loss.py bbox_iou`` computes it
    (``h = y2 - y1 + eps`` from the corners, eps 1e-9). Returns ``(P,)``."""
    b1_x1, b1_x2 = pred_box[:, 0] - pred_box[:, 2] / 2, pred_box[:, 0] + pred_box[:, 2] / 2
    b1_y1, b1_y2 = pred_box[:, 1] - pred_box[:, 3] / 2, pred_box[:, 1] + pred_box[:, 3] / 2
    b2_x1, b2_x2 = target_box[:, 0] - target_box[:, 2] / 2, target_box[:, 0] + target_box[:, 2] / 2
    b2_y1, b2_y2 = target_box[:, 1] - target_box[:, 3] / 2, target_box[:, 1] + target_box[:, 3] / 2
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / ((1 + eps) - iou + v)
    return iou - (rho2 / c2 + v * alpha)


class HeadLoss(NamedTuple):
    loss: Tensor  # (1,) lbox + lobj + lcls, not multiplied by the batch size
    loss_items: Tensor  # (4,) lbox, lobj, lcls, loss (detached)
    targets: HeadTargets


def compute_loss(predictions: Sequence[Tensor], targets: Tensor, anchors_px: Sequence[Tensor],
                 strides: Sequence[float], *, box_gain: float = 0.05, obj_gain: float = 1.0,
                 cls_gain: float = 0.5, trace: Trace | None = None) -> HeadLoss:
    """HEAD ``compute_loss(p, targets, model)``.

    Args:
        predictions: per level ``(B, A, H, W, 5 + C)`` logits (model order: stride 32 first).
        targets (Tensor[N, 6]): normalised rows. ``anchors_px``/``strides`` per level.

    Box: ``σ(txy)`` and ``exp(twh)·anchor`` against ``tbox`` with CIoU, loss ``mean(1 - CIoU)``;
    objectness target ``clamp(CIoU, 0)`` (last write wins), BCE-with-logits mean over all cells;
    classes BCE-with-logits over positives only when ``C > 1``. Gains 0.05 / 1.0 / 0.5.
    """
    device = targets.device
    lcls = torch.zeros(1, device=device)
    lbox = torch.zeros(1, device=device)
    lobj = torch.zeros(1, device=device)
    built = build_targets([p.shape for p in predictions], targets, anchors_px, strides, trace=trace)
    for level, layer_pred in enumerate(predictions):
        image, anchor, gj, gi = built.indices[level]
        tobj = torch.zeros_like(layer_pred[..., 0])  # (B, A, H, W)
        num_pos = image.shape[0]
        if num_pos:
            matched = layer_pred[image, anchor, gj, gi]  # (P, 5 + C)
            pred_xy = matched[:, :2].sigmoid()
            pred_wh = torch.exp(matched[:, 2:4]) * built.anch[level]
            ciou = _head_ciou(torch.cat((pred_xy, pred_wh), 1), built.tbox[level])
            lbox = lbox + (1.0 - ciou).mean()
            tobj[image, anchor, gj, gi] = ciou.detach().clamp(0).type(tobj.dtype)
            if matched.size(1) - 5 > 1:
                cls_target = torch.zeros_like(matched[:, 5:])
                cls_target[range(num_pos), built.tcls[level]] = 1
                lcls = lcls + F.binary_cross_entropy_with_logits(matched[:, 5:], cls_target)
            if trace is not None:
                with trace.level(_level_name(strides[level], level)):
                    trace.record("compute_loss.ciou", "CIoU of matched predictions",
                                 "pred xy = σ(txy) (no 2σ-0.5 here), wh = exp(twh)·anchor; box loss "
                                 "mean(1 - CIoU); objectness target clamp(CIoU, 0)",
                                 code=_CODE_HEAD + " compute_loss",
                                 tensors={"ciou": (ciou, "P"), "pred_xy": (pred_xy, "P 2"),
                                          "pred_wh": (pred_wh, "P 2")})
        lobj = lobj + F.binary_cross_entropy_with_logits(layer_pred[..., 4], tobj)
    lbox = lbox * box_gain
    lobj = lobj * obj_gain
    lcls = lcls * cls_gain
    loss = lbox + lobj + lcls
    items = torch.cat((lbox, lobj, lcls, loss)).detach()
    if trace is not None:
        trace.record("compute_loss.total", "HEAD loss", "lbox·0.05 + lobj·1.0 + lcls·0.5, not × batch size",
                     code=_CODE_HEAD + " compute_loss", tensors={"loss_items": (items, "4")})
    return HeadLoss(loss, items, built)
