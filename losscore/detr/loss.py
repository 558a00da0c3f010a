"""DETR's set-prediction loss (``models/detr.py`` ``SetCriterion``).

Per decoder layer: match queries to targets (:mod:`losscore.detr.matcher`), then

* ``loss_ce``: cross-entropy over **all** ``B*Q`` queries, matched ones against their target's
  label, the rest against "no object" (column ``num_classes``), each term weighted by
  ``w[class]`` (1, or ``eos_coef`` for no-object) and divided by the sum of those weights
  (``#matched + eos_coef * #unmatched``), not by the number of boxes;
* ``class_error`` (final layer only, logging): 100 minus the top-1 accuracy (in %) of the matched
  queries over all ``C + 1`` columns; exactly 100 for a batch without targets;
* ``loss_bbox``: L1 of the matched ``(cx, cy, w, h)`` pairs summed over pairs and coordinates,
  divided by ``num_boxes`` (the batch's target count, at least 1, the same for every layer);
* ``loss_giou``: ``sum(1 - GIoU) / num_boxes`` over the matched pairs;
* ``cardinality_error`` (logging, no gradient): mean over images of
  ``|#queries whose argmax is not no-object - T_b|``.

Auxiliary decoder layers (``outputs["aux_outputs"]``) are matched again, independently, and give
``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i``, ``cardinality_error_i``. The number training
back-propagates is :func:`weighted_total` (``engine.py``: ``sum(loss[k] * weight_dict[k])`` over the
keys present in ``weight_dict``).

Differences from upstream that keep the bits: the matched pairs' GIoU is computed pair by pair
instead of as the ``(P, P)`` matrix whose diagonal upstream keeps; ``num_boxes`` is counted on
the host (no device sync). Single process: ``num_boxes`` is not all-reduced. One difference in
gradients only, in a degenerate case: upstream's off-diagonal GIoU entries get a zero gradient,
which turns into NaN (``0 / 0``) when an off-diagonal pair has zero union or zero enclosing area
(a zero-area predicted box and another pair's zero-area target); here those gradients stay finite.
Forward values are always upstream's bits, and so are the gradients otherwise.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..text import T
from ..trace import Trace
from .box_ops import _giou_terms, box_cxcywh_to_xyxy, check_boxes
from .matcher import HungarianMatcher, Match, Target

__all__ = ["SetCriterion", "SetLoss", "LabelLoss", "BoxLoss", "loss_labels", "loss_boxes",
           "loss_cardinality", "weighted_total", "set_criterion", "count_boxes", "build_weight_dict",
           "LOSS_NAMES"]

CRITERION_CODE = "models/detr.py SetCriterion"
LOSS_NAMES = ("labels", "boxes", "cardinality")


class LabelLoss(NamedTuple):
    loss_ce: Tensor  # 0-dim
    class_error: Tensor | None  # 0-dim percent; None when not logged (aux layers)


class BoxLoss(NamedTuple):
    loss_bbox: Tensor  # 0-dim
    loss_giou: Tensor  # 0-dim


class SetLoss(NamedTuple):
    """:func:`set_criterion`'s result: upstream's loss dict and what was matched."""

    losses: dict[str, Tensor]  # upstream's keys, in upstream's order
    indices: list[Match]  # final layer
    aux_indices: list[list[Match]]  # per aux layer
    num_boxes: float


class _Pairs(NamedTuple):
    """The matched pairs of a layer, flattened over the batch in upstream's order (image, query)."""

    image: Tensor  # (P,)
    query: Tensor  # (P,)
    target: Tensor  # (P,) index within its image
    labels: Tensor  # (P,) the target's label
    boxes: Tensor  # (P, 4) the target's cxcywh box


def _pairs(indices: Sequence[Match | tuple[Tensor, Tensor]], targets: Sequence[Target]) -> _Pairs:
    """``indices``: per image a :class:`Match` or upstream's plain ``(query_idx, target_idx)``."""
    image = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
    query = torch.cat([query for query, _ in indices])
    target = torch.cat([target for _, target in indices])
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    return _Pairs(image, query, target, labels, boxes)


def count_boxes(targets: Sequence[Target]) -> float:
    """``num_boxes``: the batch's number of target labels as a float, at least 1."""
    return float(max(sum(len(t["labels"]) for t in targets), 1))


def build_weight_dict(bbox_loss_coef: float = 5, giou_loss_coef: float = 2, aux_layers: int = 0) -> dict[str, float]:
    """``weight_dict`` as DETR's ``build()`` makes it: ``loss_ce`` 1, ``loss_bbox``, ``loss_giou``,
    and a copy with suffix ``_i`` for each auxiliary layer ``i`` (``dec_layers - 1`` of them)."""
    weights: dict[str, float] = {"loss_ce": 1, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    for i in range(aux_layers):
        weights.update({f"{k}_{i}": v for k, v in list(weights.items())[:3]})
    return weights


# -- the three losses ---------------------------------------------------------------------------
def _loss_labels(pred_logits: Tensor, pairs: _Pairs, num_classes: int, eos_coef: float, log: bool,
                 trace: Trace | None, phase: str) -> LabelLoss:
    B, Q, _ = pred_logits.shape
    device = pred_logits.device
    target_classes = torch.full((B, Q), num_classes, dtype=torch.int64, device=device)  # no-object
    target_classes[pairs.image, pairs.query] = pairs.labels
    class_weight = torch.ones(num_classes + 1, dtype=pred_logits.dtype, device=device)
    class_weight[-1] = eos_coef  # upstream's empty_weight buffer
    loss_ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, class_weight)
    if trace is not None:
        with torch.no_grad():
            nll = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, reduction="none")  # (B, Q)
            weight = class_weight[target_classes]  # (B, Q)
        with trace.scope(phase):
            trace.record(
                "labels", "Classification loss",
                T("every query gets a class target: its matched target's label, else no-object "
                  "({num_classes}); loss_ce = sum(w * -log softmax[target]) / sum(w), with w = 1 for "
                  "classes and eos_coef = {eos_coef} for no-object: the denominator is #matched + "
                  "eos_coef * #unmatched, not num_boxes", num_classes=num_classes, eos_coef=eos_coef),
                code=f"{CRITERION_CODE}.loss_labels",
                tensors={"target_class": (target_classes, "B Q"), "weight": (weight, "B Q"),
                         "nll": (nll, "B Q"), "pair_image": (pairs.image, "P"), "pair_query": (pairs.query, "P"),
                         "pair_label": (pairs.labels, "P"), "pair_nll": (nll[pairs.image, pairs.query], "P"),
                         "loss_ce": loss_ce},
                values={"eos_coef": eos_coef, "num_classes": num_classes, "weight_sum": float(weight.sum()),
                        "matched": int(pairs.image.numel()), "unmatched": B * Q - int(pairs.image.numel())})
    if not log:
        return LabelLoss(loss_ce, None)
    with torch.no_grad():  # util/misc.py accuracy(output, target, topk=(1,))
        P = pairs.labels.numel()
        if P == 0:  # accuracy() returns 0 without targets, so class_error is 100
            top1 = torch.zeros((1, 0), dtype=torch.int64, device=device)
            correct = torch.zeros((1, 0), dtype=torch.bool, device=device)
            accuracy = torch.zeros([], device=device)
        else:
            top1 = pred_logits[pairs.image, pairs.query].topk(1, 1, True, True).indices.t()  # (1, P)
            correct = top1.eq(pairs.labels.view(1, -1))  # (1, P)
            accuracy = correct.view(-1).float().sum(0) * (100.0 / P)
        class_error = 100 - accuracy
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "class_error", "Class error (logging)",
                "100 - top-1 accuracy in % of the matched queries, the argmax taken over all C + 1 "
                "columns (a matched query whose no-object logit is highest counts as wrong); with no "
                "targets in the batch the accuracy is 0 and class_error is 100",
                code="util/misc.py accuracy, " + f"{CRITERION_CODE}.loss_labels",
                tensors={"top1": (top1[0], "P"), "correct": (correct[0], "P"), "class_error": class_error},
                values={"matched": P})
    return LabelLoss(loss_ce, class_error)


def _loss_boxes(pred_boxes: Tensor, pairs: _Pairs, num_boxes: float, trace: Trace | None, phase: str) -> BoxLoss:
    src_boxes = pred_boxes[pairs.image, pairs.query]  # (P, 4)
    l1 = F.l1_loss(src_boxes, pairs.boxes, reduction="none")  # (P, 4)
    loss_bbox = l1.sum() / num_boxes
    src_xyxy, target_xyxy = box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(pairs.boxes)
    check_boxes(src_xyxy)
    check_boxes(target_xyxy)
    terms = _giou_terms(src_xyxy, target_xyxy, keep_terms=trace is not None)  # pair by pair: (P,)
    loss_giou = (1 - terms.giou).sum() / num_boxes
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "boxes", "Box losses",
                "per matched pair: L1 of (cx, cy, w, h) summed over the 4 coordinates, and 1 - GIoU of "
                "the xyxy boxes; each summed over the pairs and divided by num_boxes (0 without pairs)",
                code=f"{CRITERION_CODE}.loss_boxes",
                tensors={"pred_box": (src_boxes, "P 4"), "target_box": (pairs.boxes, "P 4"), "l1": (l1, "P 4"),
                         "iou": (terms.iou, "P"), "union": (terms.union, "P"), "enclose": (terms.enclose, "P"),
                         "giou": (terms.giou, "P"), "loss_bbox": loss_bbox, "loss_giou": loss_giou},
                values={"num_boxes": num_boxes})
    return BoxLoss(loss_bbox, loss_giou)


@torch.no_grad()
def loss_cardinality(pred_logits: Tensor, targets: Sequence[Target], *, trace: Trace | None = None,
                     phase: str = "loss") -> Tensor:
    """Cardinality error (logging only, no gradient): ``mean_b |#objects predicted - T_b|``.

    Args:
        pred_logits (Tensor[B, Q, C + 1]): a query predicts an object when its argmax is not the last
            column; argmax takes the first maximum, so a tie with no-object counts as an object.
        targets: ``B`` dicts; ``T_b = len(labels)``.

    Returns:
        0-dim float32 tensor (upstream casts to ``float``), in boxes: not divided by ``num_boxes``.
    """
    device = pred_logits.device
    target_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=device)  # (B,)
    predicted = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)  # (B,)
    card_err = F.l1_loss(predicted.float(), target_lengths.float())
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "cardinality", "Cardinality error (logging)",
                "per image, count the queries whose argmax over all columns is not no-object (the "
                "first maximum wins, so a tie with no-object counts as an object); the error is the "
                "mean over images of |count - number of targets|, in boxes",
                code=f"{CRITERION_CODE}.loss_cardinality",
                tensors={"predicted": (predicted, "B"), "targets": (target_lengths, "B"),
                         "cardinality_error": card_err})
    return card_err


def loss_labels(pred_logits: Tensor, targets: Sequence[Target], indices: Sequence[Match], *, num_classes: int,
                eos_coef: float, log: bool = True, trace: Trace | None = None, phase: str = "loss") -> LabelLoss:
    """Weighted cross-entropy over every query, and (``log=True``) the class error.

    Args:
        pred_logits (Tensor[B, Q, num_classes + 1]): class logits, no-object last.
        targets: ``B`` dicts with ``labels`` int64 ``(T_b,)``.
        indices: the matching, per image a :class:`Match` or a plain ``(query_idx, target_idx)``.
        num_classes: the no-object class index (COCO: 91 = largest id + 1).
        eos_coef: the class weight of no-object (DETR: 0.1).

    Returns:
        :class:`LabelLoss`: ``loss_ce = sum_i w_i * nll_i / sum_i w_i`` over all ``B*Q`` queries, and
        ``class_error = 100 - top1_accuracy%`` of the matched queries (100 when there are none).
    """
    return _loss_labels(pred_logits, _pairs(indices, targets), num_classes, eos_coef, log, trace, phase)


def loss_boxes(pred_boxes: Tensor, targets: Sequence[Target], indices: Sequence[Match], num_boxes: float, *,
               trace: Trace | None = None, phase: str = "loss") -> BoxLoss:
    """L1 and GIoU losses of the matched pairs, each summed and divided by ``num_boxes``.

    Args:
        pred_boxes (Tensor[B, Q, 4]): cxcywh; targets: ``B`` dicts with ``boxes`` ``(T_b, 4)`` cxcywh.
        indices: the matching; num_boxes: the normaliser (:func:`count_boxes`).

    Raises:
        AssertionError: a matched box is degenerate after conversion (upstream's GIoU check).
    """
    return _loss_boxes(pred_boxes, _pairs(indices, targets), num_boxes, trace, phase)


def weighted_total(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float], *,
                   trace: Trace | None = None, phase: str = "loss") -> Tensor:
    """``sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)``, in ``losses`` order.

    This is ``engine.train_one_epoch``'s back-propagated number. ``class_error`` and
    ``cardinality_error*`` are not in DETR's ``weight_dict``, so they never enter it. Like Python's
    ``sum`` it starts from the integer 0.
    """
    used = [k for k in losses if k in weight_dict]
    total = sum(losses[k] * weight_dict[k] for k in used)
    if trace is not None:
        with trace.scope(phase):
            trace.record(
                "total", "Weighted total",
                "sum of loss * weight over the keys of weight_dict (loss_ce 1, loss_bbox 5, loss_giou 2 "
                "by default, the same for every aux layer); logging keys are left out",
                code="engine.py train_one_epoch (losses = sum(...))",
                tensors={"total": total if isinstance(total, Tensor) else torch.tensor(float(total))},
                values={"terms": {k: float(losses[k].detach()) for k in used},
                        "weights": {k: weight_dict[k] for k in used},
                        "left_out": [k for k in losses if k not in weight_dict]})
    return total


# -- the criterion ------------------------------------------------------------------------------
def _layer_losses(outputs: Mapping[str, Any], targets: Sequence[Target], indices: list[Match], num_boxes: float,
                  num_classes: int, eos_coef: float, losses: Sequence[str], suffix: str, log: bool,
                  trace: Trace | None, phase: str) -> dict[str, Tensor]:
    pairs = _pairs(indices, targets)
    out: dict[str, Tensor] = {}
    for name in losses:
        if name == "labels":
            ce = _loss_labels(outputs["pred_logits"], pairs, num_classes, eos_coef, log, trace, phase)
            out["loss_ce" + suffix] = ce.loss_ce
            if ce.class_error is not None:
                out["class_error" + suffix] = ce.class_error
        elif name == "boxes":
            box = _loss_boxes(outputs["pred_boxes"], pairs, num_boxes, trace, phase)
            out["loss_bbox" + suffix] = box.loss_bbox
            out["loss_giou" + suffix] = box.loss_giou
        elif name == "cardinality":
            out["cardinality_error" + suffix] = loss_cardinality(outputs["pred_logits"], targets, trace=trace,
                                                                 phase=phase)
    return out


def _check_losses(losses: Sequence[str]) -> None:
    for name in losses:
        if name == "masks":
            raise NotImplementedError("losses: 'masks' (DETR segmentation) is not implemented here")
        if name not in LOSS_NAMES:
            raise AssertionError(f"do you really want to compute {name} loss?")  # upstream's get_loss


def set_criterion(outputs: Mapping[str, Any], targets: Sequence[Target], *, num_classes: int,
                  matcher: HungarianMatcher, eos_coef: float = 0.1, losses: Sequence[str] = LOSS_NAMES,
                  trace: Trace | None = None) -> SetLoss:
    """DETR's loss dict for the final decoder layer and every auxiliary layer.

    Args:
        outputs: ``{"pred_logits": (B, Q, num_classes + 1), "pred_boxes": (B, Q, 4) cxcywh}`` for the
            final layer, optionally ``"aux_outputs"``: a list of such dicts, earlier layers first.
        targets: ``B`` dicts ``{"labels": int64 (T_b,), "boxes": (T_b, 4) cxcywh}``.
        num_classes: the no-object index; matcher: the :class:`HungarianMatcher` (every layer is
            matched again with it); eos_coef: no-object class weight; losses: which of
            ``labels``, ``boxes``, ``cardinality``, in the order the dict is filled.
        trace: the final layer's stages ``match.*`` and ``loss.*`` (``loss.num_boxes`` after its
            matching), then per aux layer ``i`` ``match_aux<i>.*`` and ``loss_aux<i>.*`` (the phase
            carries the layer, as the loss keys carry the suffix ``_i``), in upstream's order.

    Returns:
        :class:`SetLoss`. Keys ``loss_ce, class_error, loss_bbox, loss_giou, cardinality_error``, then
        ``loss_ce_i, loss_bbox_i, loss_giou_i, cardinality_error_i`` per aux layer (no
        ``class_error_i``).
    """
    _check_losses(losses)
    aux = list(outputs.get("aux_outputs", ()))
    indices = matcher(outputs, targets, trace=trace, phase="match")
    num_boxes = count_boxes(targets)
    if trace is not None:
        trace.record(
            "loss.num_boxes", "Box-loss normaliser",
            "num_boxes = number of targets in the batch (at least 1), the same for every decoder layer; "
            "single process, so no all-reduce",
            code=f"{CRITERION_CODE}.forward (num_boxes)",
            values={"num_boxes": num_boxes, "per_image": [len(t["labels"]) for t in targets],
                    "decoder_layers": len(aux) + 1})
    result = _layer_losses(outputs, targets, indices, num_boxes, num_classes, eos_coef, losses, "", True, trace,
                           "loss")
    aux_indices = []
    for i, layer in enumerate(aux):
        layer_indices = matcher(layer, targets, trace=trace, phase=f"match_aux{i}")
        aux_indices.append(layer_indices)
        result.update(_layer_losses(layer, targets, layer_indices, num_boxes, num_classes, eos_coef, losses,
                                    f"_{i}", False, trace, f"loss_aux{i}"))
    return SetLoss(result, indices, aux_indices, num_boxes)


class SetCriterion:
    """``SetCriterion(num_classes, matcher, weight_dict, eos_coef, losses)(outputs, targets) -> dict``.

    Holds the configuration only; every call is :func:`set_criterion`. ``weight_dict`` is not used by
    the criterion itself, only by :meth:`weighted_total` (as in DETR's training loop). The no-object
    class weight is built on the logits' device and dtype at each call (upstream keeps a float32
    ``empty_weight`` buffer).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: Mapping[str, float],
                 eos_coef: float = 0.1, losses: Sequence[str] = LOSS_NAMES) -> None:
        _check_losses(losses)
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)

    def __repr__(self) -> str:
        return (f"SetCriterion(num_classes={self.num_classes}, matcher={self.matcher!r}, "
                f"eos_coef={self.eos_coef}, losses={list(self.losses)})")

    def compute(self, outputs: Mapping[str, Any], targets: Sequence[Target], *,
                trace: Trace | None = None) -> SetLoss:
        return set_criterion(outputs, targets, num_classes=self.num_classes, matcher=self.matcher,
                             eos_coef=self.eos_coef, losses=self.losses, trace=trace)

    def __call__(self, outputs: Mapping[str, Any], targets: Sequence[Target], *,
                 trace: Trace | None = None) -> dict[str, Tensor]:
        return self.compute(outputs, targets, trace=trace).losses

    def weighted_total(self, losses: Mapping[str, Tensor], *, trace: Trace | None = None) -> Tensor:
        return weighted_total(losses, self.weight_dict, trace=trace)
