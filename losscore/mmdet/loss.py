"""MMDetection's sigmoid focal loss (mmdet 3.3.0 ``mmdet/models/losses/focal_loss.py``), exact.

Focal loss scales the binary cross-entropy of every (sample, class) element by a focal weight::

    p_t      = p if y = 1 else 1 - p          (the probability given to the right answer)
    alpha_t  = alpha if y = 1 else 1 - alpha  (alpha balances positives against negatives)
    FL       = alpha_t · (1 - p_t)^gamma · BCE(p, y)

so well-classified elements (p_t near 1) fade out and the rare hard ones dominate. Upstream names
the quantity ``1 - p_t`` "pt" (its comment says so); here ``p_t`` always means the paper's p_t.

Reductions follow ``mmdet/models/losses/utils.py weight_reduce_loss``: an element weight
(``(N,)`` per row, ``(N, C)``, or flattened ``(N*C,)``) multiplies first; then ``mean``/``sum``/
``none``; with ``avg_factor`` a mean is ``sum / (avg_factor + finfo(float32).eps)`` (RetinaNet divides
by the number of positive anchors) and ``sum`` raises ``ValueError``.

Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.

Shapes: ``N`` samples (anchors / cells), ``C`` classes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..text import T
from ..trace import Trace

__all__ = [
    "focal_curve",
    "FocalTerms",
    "focal_terms",
    "reduce_loss",
    "weight_reduce_loss",
    "py_sigmoid_focal_loss",
    "py_focal_loss_with_prob",
    "FocalLoss",
    "FocalEvaluation",
    "labels_to_one_hot",
    "centre_in_box_labels",
    "explain_focal",
    "FOCAL_SCHEME",
]

_CODE = "mmdet 3.3.0 mmdet/models/losses/focal_loss.py"
_CODE_UTILS = "mmdet 3.3.0 mmdet/models/losses/utils.py weight_reduce_loss"


class FocalTerms(NamedTuple):
    """Every factor of the focal loss per element, each ``(N, C)``.

    ``one_minus_p_t`` is upstream's ``pt``; ``focal_weight = alpha_factor · modulating``;
    ``loss = bce · focal_weight`` (before the element weight and the reduction).
    """

    prob: Tensor
    p_t: Tensor
    one_minus_p_t: Tensor
    alpha_factor: Tensor
    modulating: Tensor
    focal_weight: Tensor
    bce: Tensor
    loss: Tensor


def labels_to_one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype | None = None) -> Tensor:
    """Integer labels ``(N,)`` in ``[0, C]`` to one-hot ``(N, C)`` int64; label ``C`` (background)
    becomes an all-zero row (``F.one_hot(labels, C + 1)[:, :C]``).

    ``dtype``: build the one-hot directly in this dtype, the values of ``F.one_hot(...)[:, :C].to(dtype)``
    without the int64 ``(N, C + 1)`` tensor and its copy (what :meth:`FocalLoss.evaluate` does with
    integer labels; the same checks and errors as ``F.one_hot``)."""
    if dtype is None:
        return F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes]
    if labels.dtype != torch.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    out = torch.zeros((*labels.shape, num_classes), dtype=dtype, device=labels.device)
    if labels.numel():
        if bool(labels.min() < 0):
            raise RuntimeError("Class values must be non-negative.")
        if bool(labels.max() > num_classes):
            raise RuntimeError("Class values must be smaller than num_classes.")
        flat = labels.reshape(-1)
        rows = (flat < num_classes).nonzero().squeeze(1)
        out.view(-1, num_classes)[rows, flat[rows]] = 1
    return out


def focal_terms(pred: Tensor, target: Tensor, *, gamma: float = 2.0, alpha: float = 0.25,
                activated: bool = False) -> FocalTerms:
    """The unreduced focal loss and its factors, operation by operation as upstream.

    Args:
        pred (Tensor[N, C]): logits, or probabilities when ``activated``.
        target (Tensor[N, C]): one-hot or soft targets (any dtype; cast to ``pred``'s).
        gamma, alpha: the paper's defaults 2 and 0.25.
        activated: BCE on probabilities (``py_focal_loss_with_prob``: log clamped at -100)
            instead of BCE-with-logits.
    """
    target = target.type_as(pred)
    prob = pred if activated else pred.sigmoid()
    background = 1 - target  # upstream writes (1 - target) twice: the same values, computed once
    one_minus_p_t = (1 - prob) * target + prob * background
    alpha_factor = alpha * target + (1 - alpha) * background
    modulating = one_minus_p_t.pow(gamma)
    focal_weight = alpha_factor * modulating
    if activated:
        bce = F.binary_cross_entropy(pred, target, reduction="none")
    else:
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    loss = bce * focal_weight
    return FocalTerms(prob, 1 - one_minus_p_t, one_minus_p_t, alpha_factor, modulating, focal_weight,
                      bce, loss)


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """``none`` | ``mean`` | ``sum`` (``torch.nn.functional`` reduction names)."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction: expected 'none', 'mean' or 'sum', got {reduction!r}")


def weight_reduce_loss(loss: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                       avg_factor: float | Tensor | None = None) -> Tensor:
    """Element weight, then reduction; ``mean`` with ``avg_factor`` is ``sum / (avg_factor + eps)``.

    Raises:
        ValueError: ``avg_factor`` with ``reduction='sum'`` (as upstream).
    """
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    if reduction == "mean":
        eps = torch.finfo(torch.float32).eps
        return loss.sum() / (avg_factor + eps)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def _shape_weight(weight: Tensor, loss: Tensor) -> Tensor:
    """``(N,)`` -> ``(N, 1)``; flattened ``(N*C,)`` -> ``(N, C)``; ``(N, C)`` as is."""
    if weight.shape != loss.shape:
        if weight.size(0) == loss.size(0):
            weight = weight.view(-1, 1)  # one weight per sample, shared by its classes
        else:
            if weight.numel() != loss.numel():
                raise ValueError(f"weight: {tuple(weight.shape)} matches neither (N,)={loss.size(0)} "
                                 f"nor N*C={loss.numel()} elements")
            weight = weight.view(loss.size(0), -1)  # per sample per class, flattened (FSAF)
    if weight.ndim != loss.ndim:
        raise ValueError(f"weight: {weight.ndim} dims after reshaping, loss has {loss.ndim}")
    return weight


def _focal(pred: Tensor, target: Tensor, weight: Tensor | None, gamma: float, alpha: float,
           reduction: str, avg_factor: float | None, activated: bool, trace: Trace | None) -> Tensor:
    if activated and pred.dim() != target.dim():
        target = labels_to_one_hot(target, pred.size(1))
    terms = focal_terms(pred, target, gamma=gamma, alpha=alpha, activated=activated)
    shaped_weight = None if weight is None else _shape_weight(weight, terms.loss)
    out = weight_reduce_loss(terms.loss, shaped_weight, reduction, avg_factor)
    if trace is not None:
        record_focal_terms(trace, terms, target.type_as(pred), shaped_weight, out, gamma=gamma, alpha=alpha,
                           reduction=reduction, avg_factor=avg_factor, activated=activated)
    return out


def record_focal_terms(trace: Trace, terms: FocalTerms, target: Tensor, weight: Tensor | None,
                       out: Tensor, *, gamma: float, alpha: float, reduction: str,
                       avg_factor: float | None, activated: bool, loss_weight: float = 1.0) -> None:
    """Record the stages of one focal-loss evaluation (``focal.*``)."""
    fn = "py_focal_loss_with_prob" if activated else "py_sigmoid_focal_loss"
    trace.record("focal.p_t", "p_t: probability of the right answer",
                 "p = σ(logit) (or the given probability); p_t = p where the target is 1, 1 - p "
                 "where it is 0 (upstream's variable pt holds 1 - p_t)",
                 code=f"{_CODE} {fn}",
                 tensors={"prob": (terms.prob, "N C"), "target": (target, "N C"), "p_t": (terms.p_t, "N C")})
    trace.record("focal.alpha_factor", "Alpha factor",
                 "alpha on positive elements, 1 - alpha on negative ones (soft targets interpolate)",
                 code=f"{_CODE} {fn}", tensors={"alpha_factor": (terms.alpha_factor, "N C")},
                 values={"alpha": alpha})
    trace.record("focal.modulating", "Modulating factor (1 - p_t)^gamma",
                 "easy elements (p_t near 1) are scaled towards 0; at gamma 2 an element with p_t = "
                 "0.9 keeps 1/100 of its cross-entropy",
                 code=f"{_CODE} {fn}", tensors={"modulating": (terms.modulating, "N C")},
                 values={"gamma": gamma})
    trace.record("focal.focal_weight", "Focal weight",
                 "focal_weight = alpha_factor · (1 - p_t)^gamma, computed without any detach",
                 code=f"{_CODE} {fn}", tensors={"focal_weight": (terms.focal_weight, "N C")})
    share = terms.loss / terms.loss.sum().clamp_min(torch.finfo(terms.loss.dtype).tiny)
    trace.record("focal.loss", "Weighted loss per element",
                 "loss = BCE · focal_weight; share = each element's part of the sum, to see which samples dominate"
                 if weight is None else
                 "loss = BCE · focal_weight · weight; share = each element's part of the sum, to see which samples "
                 "dominate",
                 code=f"{_CODE} {fn}",
                 tensors={"bce": (terms.bce, "N C"), "loss": (terms.loss, "N C"), "share": (share, "N C")}
                 | ({} if weight is None else {"weight": (weight, "N C")}))
    divisor = None if avg_factor is None else float(avg_factor) + float(torch.finfo(torch.float32).eps)
    how = {"mean": T("mean over all N·C elements") if avg_factor is None
           else T("sum / (avg_factor + eps): avg_factor is usually the number of positives"),
           "sum": T("sum of all elements"), "none": T("no reduction")}[reduction]
    trace.record("focal.reduction", "Reduction",
                 T("{how}; then × loss_weight {loss_weight:g}", how=how, loss_weight=loss_weight)
                 if loss_weight != 1.0 else how,
                 code=_CODE_UTILS, tensors={"output": (out, "")},
                 values={"reduction": reduction,
                         "avg_factor": None if avg_factor is None else float(avg_factor),
                         "divisor": divisor, "loss_weight": loss_weight})


def py_sigmoid_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, gamma: float = 2.0,
                          alpha: float = 0.25, reduction: str = "mean", avg_factor: float | None = None,
                          *, trace: Trace | None = None) -> Tensor:
    """Sigmoid focal loss on logits.

    Args:
        pred (Tensor[N, C]): logits. target (Tensor[N, C]): one-hot or soft targets.
        weight (Tensor[N] | Tensor[N, C] | Tensor[N*C] | None): element weights.
        reduction: ``none`` -> ``(N, C)``; ``mean`` / ``sum`` -> 0-dim.
        avg_factor: divide the sum by this instead of ``N·C`` (``mean`` or ``none`` only).
    """
    return _focal(pred, target, weight, gamma, alpha, reduction, avg_factor, False, trace)


def py_focal_loss_with_prob(pred: Tensor, target: Tensor, weight: Tensor | None = None, gamma: float = 2.0,
                            alpha: float = 0.25, reduction: str = "mean", avg_factor: float | None = None,
                            *, trace: Trace | None = None) -> Tensor:
    """Focal loss on probabilities ``pred`` (Tensor[N, C]); ``target`` is one-hot ``(N, C)`` or integer
    labels ``(N,)`` in ``[0, C]`` with ``C`` = background. Other arguments as
    :func:`py_sigmoid_focal_loss`."""
    return _focal(pred, target, weight, gamma, alpha, reduction, avg_factor, True, trace)


def focal_curve(gamma: float = 2.0, alpha: float = 0.25, points: int = 101,
                device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """RetinaNet's Figure 1 for one positive: loss against its probability ``p_t``.

    Returns ``p_t`` (Tensor[points]) evenly spaced in the open interval (0, 1), ``loss`` from
    :func:`py_focal_loss_with_prob` (``-alpha (1 - p_t)^gamma ln p_t`` for a positive) and ``ce``, the
    plain cross-entropy ``-ln p_t`` (the gamma = 0 curve without alpha).
    """
    if points < 2:
        raise ValueError(f"points: expected at least 2, got {points}")
    p_t = torch.linspace(0.0, 1.0, points + 2, device=device)[1:-1]  # (points,)
    positive = torch.ones_like(p_t)[:, None]  # (points, 1): one class, always the target
    loss = py_focal_loss_with_prob(p_t[:, None], positive, gamma=gamma, alpha=alpha, reduction="none")[:, 0]
    ce = F.binary_cross_entropy(p_t, positive[:, 0], reduction="none")
    return {"p_t": p_t, "loss": loss, "ce": ce}


class FocalLoss(nn.Module):
    """``mmdet.models.losses.FocalLoss`` (sigmoid only), on any device with the pure-PyTorch path.

    Upstream sends CUDA logits with integer labels to ``mmcv.ops.sigmoid_focal_loss`` (same formula,
    fused kernel, different last bits); we compute the pure-PyTorch path everywhere.

    Shape:
        pred (N, C); target (N,) int64 labels with ``C`` = background, or (N, C) one-hot; output 0-dim
        for ``mean``/``sum``, (N, C) for ``none``. The result includes ``loss_weight``.
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = "mean", loss_weight: float = 1.0, activated: bool = False) -> None:
        super().__init__()
        if use_sigmoid is not True:
            raise ValueError("use_sigmoid: only the sigmoid focal loss is supported (as upstream)")
        self.use_sigmoid = use_sigmoid
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None,
                trace: Trace | None = None) -> Tensor:
        return self.evaluate(pred, target, weight, avg_factor, reduction_override, trace).loss

    def evaluate(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                 avg_factor: float | None = None, reduction_override: str | None = None,
                 trace: Trace | None = None) -> "FocalEvaluation":
        """:meth:`forward` that also returns the per-element :class:`FocalTerms` it computed."""
        if reduction_override not in (None, "none", "mean", "sum"):
            raise ValueError(f"reduction_override: expected None, 'none', 'mean' or 'sum', got {reduction_override!r}")
        reduction = reduction_override if reduction_override else self.reduction
        if pred.dim() != target.dim():  # integer labels (N,): one-hot, background column dropped
            target = labels_to_one_hot(target, pred.size(1), dtype=pred.dtype)
        terms = focal_terms(pred, target, gamma=self.gamma, alpha=self.alpha, activated=self.activated)
        shaped_weight = None if weight is None else _shape_weight(weight, terms.loss)
        reduced = weight_reduce_loss(terms.loss, shaped_weight, reduction, avg_factor)
        out = self.loss_weight * reduced
        if trace is not None:
            record_focal_terms(trace, terms, target.type_as(pred), shaped_weight, out, gamma=self.gamma,
                               alpha=self.alpha, reduction=reduction, avg_factor=avg_factor,
                               activated=self.activated, loss_weight=self.loss_weight)
        return FocalEvaluation(out, terms)


class FocalEvaluation(NamedTuple):
    loss: Tensor  # what FocalLoss.forward returns (reduced, × loss_weight)
    terms: FocalTerms  # every factor per element (N, C), before the element weight and the reduction
