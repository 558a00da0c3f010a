"""MMDetection focal loss: conformance, RetinaNet Figure 1, identities, properties, the focal scheme."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from losscore.conformance import check_case
from losscore.mmdet import (FocalLoss, centre_in_box_labels, focal_terms, labels_to_one_hot,
                            py_focal_loss_with_prob, py_sigmoid_focal_loss, weight_reduce_loss)
from losscore.scene import Box, Scene
from losscore.registry import explain
from losscore.trace import Trace
from losslab_testing import vector_cases


@pytest.mark.parametrize("group_name,case", vector_cases("mmdet"))
def test_conformance(group_name, case, device):
    assert check_case("mmdet", group_name, case, device) == []


# RetinaNet Figure 1 (LEARNERS.md): -(1 - p_t)^gamma ln p_t at p_t = .1 / .5 / .9
FIGURE_1 = {
    0.0: (2.302585, 0.693147, 0.105361),
    0.5: (2.184424, 0.490129, 0.033318),
    1.0: (2.072327, 0.346574, 0.010536),
    2.0: (1.865094, 0.173287, 0.001054),
    # LEARNERS.md prints 1.4e-6 for the last one; the formula gives 0.1^5 · 0.105361 = 1.05361e-6
    5.0: (1.359653, 0.021661, 1.05361e-6),
}


@pytest.mark.parametrize("gamma", sorted(FIGURE_1))
def test_retinanet_figure_1(gamma, device):
    p_t = torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64, device=device)
    target = torch.ones_like(p_t)
    # alpha = 1 makes alpha_factor 1 on positives: the loss is exactly -(1 - p_t)^gamma ln p_t
    loss = py_focal_loss_with_prob(p_t, target, gamma=gamma, alpha=1.0, reduction="none")
    torch.testing.assert_close(loss.flatten().cpu(), torch.tensor(FIGURE_1[gamma], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6 if gamma < 5 else 1e-11)


def test_ce_over_fl_is_100_at_p_t_09_gamma_2(device):
    p_t = torch.tensor([[0.9]], dtype=torch.float64, device=device)
    terms = focal_terms(p_t, torch.ones_like(p_t), gamma=2.0, alpha=1.0, activated=True)
    assert (terms.bce / terms.loss).item() == pytest.approx(100.0)  # 1 / (1 - .9)^2


def test_gamma_0_alpha_half_is_half_bce_values_and_grads(device):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn((6, 3), generator=gen, dtype=torch.float64) * 3).to(device).requires_grad_(True)
    target = (torch.rand((6, 3), generator=gen, dtype=torch.float64) > 0.5).to(device, torch.float64)
    # mmdet has no "alpha < 0 means off" switch: alpha 0.5 weighs both sides by 0.5, so 2·FL = BCE
    focal = 2 * py_sigmoid_focal_loss(logits, target, gamma=0.0, alpha=0.5, reduction="none")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(focal, bce)
    (g_focal,) = torch.autograd.grad(focal.sum(), logits)
    (g_bce,) = torch.autograd.grad(bce.sum(), logits)
    torch.testing.assert_close(g_focal, g_bce)


@settings(max_examples=60, deadline=None)
@given(logit=st.floats(-30, 30), target=st.sampled_from([0.0, 1.0]),
       gamma=st.floats(0, 5), alpha=st.floats(0, 1))
def test_focal_never_exceeds_bce(logit, target, gamma, alpha):
    pred = torch.tensor([[logit]], dtype=torch.float64)
    tgt = torch.tensor([[target]], dtype=torch.float64)
    terms = focal_terms(pred, tgt, gamma=gamma, alpha=alpha)
    # alpha_factor <= 1 and (1 - p_t)^gamma <= 1, so FL <= BCE elementwise
    assert terms.loss.item() <= terms.bce.item() + 1e-12
    assert 0.0 <= terms.p_t.item() <= 1.0


def test_gradcheck_sigmoid_focal_loss():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((4, 3), generator=gen, dtype=torch.float64, requires_grad=True)
    target = labels_to_one_hot(torch.tensor([0, 2, 3, 1]), 3)
    weight = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: py_sigmoid_focal_loss(x, target, weight, gamma=1.5, alpha=0.3, avg_factor=2.5), (logits,))


def test_background_label_is_an_all_zero_row():
    one_hot = labels_to_one_hot(torch.tensor([0, 3, 2]), 3)  # label 3 = background with C = 3
    assert one_hot.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_weight_reduce_loss_avg_factor(device):
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=device)
    eps = torch.finfo(torch.float32).eps
    assert weight_reduce_loss(loss, None, "mean", avg_factor=4.0).item() == pytest.approx(10.0 / (4.0 + eps))
    assert weight_reduce_loss(loss, None, "mean").item() == pytest.approx(2.5)
    assert torch.equal(weight_reduce_loss(loss, None, "none", avg_factor=4.0), loss)
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, None, "sum", avg_factor=4.0)
    # per-row weight (N,) broadcasts over the classes: (1+2)·0 + (3+4)·2 = 14
    assert py_sigmoid_focal_loss(torch.zeros((2, 2), device=device), torch.zeros((2, 2), device=device),
                                 torch.tensor([0.0, 2.0], device=device), gamma=0.0, alpha=0.5,
                                 reduction="sum").item() == pytest.approx(2 * 2 * 0.5 * math.log(2))


def test_focal_module_loss_weight_and_override(device):
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]], device=device)
    labels = torch.tensor([0, 2], device=device)
    base = FocalLoss(reduction="sum")(logits, labels)
    assert FocalLoss(reduction="sum", loss_weight=3.0)(logits, labels).item() == pytest.approx(3 * base.item())
    per_element = FocalLoss()(logits, labels, reduction_override="none")
    assert per_element.shape == (2, 2)
    assert per_element.sum().item() == pytest.approx(base.item())
    with pytest.raises(ValueError):
        FocalLoss(use_sigmoid=False)


# -- the focal scheme --------------------------------------------------------------------------
def test_centre_in_box_smallest_box_wins():
    centres = torch.tensor([[4.0, 4.0], [12.0, 12.0], [30.0, 30.0], [20.0, 4.0]])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 16.0, 16.0]])
    labels, gt = centre_in_box_labels(centres, boxes, torch.tensor([5, 7]), 9)
    # (4, 4) and (12, 12) lie in both: the 16x16 box wins; (30, 30) only in the big one; (20, 4) too
    assert labels.tolist() == [7, 7, 5, 5] and gt.tolist() == [1, 1, 0, 0]
    edge, _ = centre_in_box_labels(torch.tensor([[16.0, 8.0]]), boxes[1:], torch.tensor([7]), 9)
    assert edge.tolist() == [9]  # on the edge: background (strictly inside)


def _scene(**kw):
    base = dict(scheme="focal", width=64, height=96, nc=4, boxes=(Box(2, 0, 0, 20, 20),), progress=0.5,
                device="cpu")
    base.update(kw)
    return Scene(**base)


def test_focal_scene_positives_by_hand():
    result = explain(_scene())
    assert [lvl.grid for lvl in result.levels] == [(12, 8), (6, 4), (3, 2)]
    # box (0, 0)-(20, 20): P3 centres 4, 12 inside (20 is on the edge) -> 2x2 cells;
    # P4 centre 8 -> 1 cell; P5 centre 16 -> 1 cell
    assert result.positives["level"].tolist() == [0, 0, 0, 0, 1, 2]
    assert result.positives["gi"].tolist() == [0, 1, 0, 1, 0, 0]
    assert result.positives["gj"].tolist() == [0, 0, 1, 1, 0, 0]
    assert bool((result.positives["alpha_factor"] == 0.25).all())
    for name, maps in result.maps.items():
        assert [tuple(m.shape) for m in maps] == [(1, 12, 8), (1, 6, 4), (1, 3, 2)], name
    torch.testing.assert_close(result.losses["pos"] + result.losses["neg"], result.losses["total"])
    levels = sum(result.losses[f"total.{n}"] for n in ("P3", "P4", "P5"))
    torch.testing.assert_close(levels, result.losses["total"])


def test_focal_scene_avg_factor_is_the_positive_count():
    trace = Trace()
    result = explain(_scene(), trace)
    elements = trace.get("focal.loss")["loss"]
    eps = torch.finfo(torch.float32).eps
    # 6 positive cells: total = sum / (6 + eps)
    assert result.losses["total"].item() == pytest.approx(elements.sum().item() / (6 + eps), rel=1e-6)
    mean = explain(_scene(params={"use_avg_factor": False}))
    assert mean.losses["total"].item() == pytest.approx(elements.mean().item(), rel=1e-6)
    summed = explain(_scene(params={"reduction": "sum"}))  # avg_factor dropped, with a note
    assert summed.losses["total"].item() == pytest.approx(elements.sum().item(), rel=1e-6)
    assert any("ValueError" in n for n in summed.notes)


def test_focal_scene_perfect_head():
    result = explain(_scene(progress=1.0))
    p = torch.sigmoid(torch.tensor(8.0))
    torch.testing.assert_close(result.positives["p"], p.expand(6))
    # a perfect head: each positive keeps alpha·(1-σ(8))^2 of its CE
    torch.testing.assert_close(result.positives["focal_weight"], (0.25 * (1 - p) ** 2).expand(6))


def test_focal_scene_trace_bit_identity():
    scene = _scene(width=128, height=64, nc=3, boxes=(Box(0, 10, 10, 90, 50), Box(1, 20, 20, 40, 40)))
    plain = explain(scene)
    traced = explain(scene, Trace())
    for key in plain.positives:
        assert torch.equal(plain.positives[key], traced.positives[key]), key
    for key in plain.maps:
        assert all(torch.equal(a, b) for a, b in zip(plain.maps[key], traced.maps[key])), key
    for key in plain.losses:
        assert torch.equal(plain.losses[key], traced.losses[key]), key
    names = traced.trace.names()
    assert names[:2] == ["assign.centre_in_box", "focal.p_t"]
    assert {"focal.alpha_factor", "focal.modulating", "focal.focal_weight", "focal.reduction"} <= set(names)


def test_a_one_hot_built_in_the_logits_dtype_equals_f_one_hot_and_fails_as_it_does():
    """FocalLoss.evaluate builds the one-hot of integer labels directly in the logits' dtype: the
    values of F.one_hot(labels, C + 1)[:, :C].type_as(pred), and F.one_hot's errors."""
    labels = torch.tensor([0, 3, 2, 3, 1, 0])
    for dtype in (torch.float32, torch.float64):
        direct = labels_to_one_hot(labels, 3, dtype=dtype)
        assert direct.dtype == dtype and torch.equal(direct, labels_to_one_hot(labels, 3).to(dtype))
    assert labels_to_one_hot(torch.zeros(0, dtype=torch.long), 3, dtype=torch.float32).shape == (0, 3)
    for bad in (torch.tensor([0, 4]), torch.tensor([-1, 0])):
        with pytest.raises(RuntimeError) as direct_error:
            labels_to_one_hot(bad, 3, dtype=torch.float32)
        with pytest.raises(RuntimeError) as upstream_error:
            labels_to_one_hot(bad, 3)
        assert str(direct_error.value).split(".")[0] in str(upstream_error.value)
    pred = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    via_labels = FocalLoss(reduction="sum").evaluate(pred, labels)
    via_one_hot = FocalLoss(reduction="sum").evaluate(pred, labels_to_one_hot(labels, 3))
    assert torch.equal(via_labels.loss, via_one_hot.loss)
    assert all(torch.equal(a, b) for a, b in zip(via_labels.terms, via_one_hot.terms))
