"""YOLOv3: conformance, hand-built geometry, darknet's 2 - w·h rule, the scheme, the trace."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from losscore.conformance import check_case
from losscore.scene import Box, Pin, Scene
from losscore.registry import explain, get_scheme, validate
from losscore.trace import Trace
from losscore.yolov3 import (bbox_wh_iou, build_targets, legacy_build_targets, legacy_bbox_iou,
                             yolo_layer_loss)
from losslab_testing import vector_cases


@pytest.mark.parametrize("group_name,case", vector_cases("yolov3"))
def test_conformance(group_name, case, device):
    assert check_case("yolov3", group_name, case, device) == []


# -- hand geometry ----------------------------------------------------------------------------
def _empty_preds(B, A, H, W, C, device):
    return (torch.zeros((B, A, H, W, 4), device=device), torch.zeros((B, A, H, W, C), device=device))


def test_bbox_wh_iou_by_hand(device):
    anchors = torch.tensor([[2.0, 2.0], [2.0, 1.5], [4.0, 4.0]], device=device)
    target = torch.tensor([[2.0, 2.0]], device=device)
    # same size: 4/4 = 1; (2, 1.5) inside (2, 2): 3/4; (2, 2) inside (4, 4): 4/16
    iou = bbox_wh_iou(anchors, target)
    assert iou.shape == (3, 1)
    torch.testing.assert_close(iou[:, 0], torch.tensor([1.0, 0.75, 0.25], device=device))


def test_best_anchor_and_ignore_mask_by_hand(device):
    # 4x4 grid; anchors in grid units. Target 2x2 grid units centred at (1.25, 2.5) -> cell (gi 1, gj 2).
    anchors = torch.tensor([[2.0, 2.0], [2.0, 1.5], [4.0, 4.0]], device=device)
    target = torch.tensor([[0, 3, 1.25 / 4, 2.5 / 4, 0.5, 0.5]], device=device)
    boxes, cls = _empty_preds(1, 3, 4, 4, 5, device)
    out = legacy_build_targets(boxes, cls, target, anchors, ignore_thres=0.5)
    assert out.best_anchor.tolist() == [0]  # wh-IoU 1, 0.75, 0.25
    assert out.obj_mask.sum() == 1 and bool(out.obj_mask[0, 0, 2, 1])
    # anchor 1 (IoU .75 > .5) is ignored: neither positive nor negative; anchor 2 (.25) stays negative
    assert not bool(out.noobj_mask[0, 0, 2, 1]) and not bool(out.noobj_mask[0, 1, 2, 1])
    assert bool(out.noobj_mask[0, 2, 2, 1])
    assert int((~out.noobj_mask).sum()) == 2
    assert out.tx[0, 0, 2, 1].item() == 0.25 and out.ty[0, 0, 2, 1].item() == 0.5
    assert abs(out.tw[0, 0, 2, 1].item()) < 1e-6  # log(2 / 2 + 1e-16)
    assert out.tcls[0, 0, 2, 1].tolist() == [0, 0, 0, 1, 0]
    # raising the threshold above .75 gives anchor 1 back to the no-object loss
    out_high = legacy_build_targets(boxes, cls, target, anchors, ignore_thres=0.8)
    assert bool(out_high.noobj_mask[0, 1, 2, 1])


def test_shared_slot_gives_multi_hot_tcls(device):
    anchors = torch.tensor([[1.0, 1.0], [3.0, 3.0]], device=device)
    # two 1x1 targets in cell (0, 0) of a 2x2 grid, classes 0 and 2; both pick anchor 0
    target = torch.tensor([[0, 0, 0.2, 0.2, 0.5, 0.5], [0, 2, 0.3, 0.3, 0.5, 0.5]], device=device)
    boxes, cls = _empty_preds(1, 2, 2, 2, 3, device)
    out = legacy_build_targets(boxes, cls, target, anchors)
    assert out.tcls[0, 0, 0, 0].tolist() == [1, 0, 1]
    assert out.obj_mask.sum() == 1
    assert out.tx[0, 0, 0, 0].item() == pytest.approx(0.6)  # last write wins: 0.3 * 2


def test_legacy_iou_keeps_the_plus_one_convention(device):
    box = torch.tensor([[2.0, 2.0, 2.0, 2.0]], device=device)
    shifted = torch.tensor([[3.0, 2.0, 2.0, 2.0]], device=device)
    # +1 per side: areas (2+1)^2 = 9, overlap (1+1)*(2+1) = 6 -> 6 / (9 + 9 - 6) = 0.5 (a true IoU is 1/3)
    assert legacy_bbox_iou(box, shifted).item() == pytest.approx(0.5)
    assert legacy_bbox_iou(box, box).item() == pytest.approx(1.0)


# -- darknet 2 - w*h --------------------------------------------------------------------------
def _layer_inputs(device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prediction = torch.randn((2, 3, 4, 4, 7), generator=gen, dtype=dtype).to(device)
    target = torch.tensor([[0, 1, 0.30, 0.40, 0.50, 0.25],
                           [1, 0, 0.70, 0.60, 0.20, 0.30],
                           [1, 1, 0.10, 0.90, 0.90, 0.80]], dtype=dtype, device=device)
    anchors = torch.tensor([[1.0, 1.0], [2.0, 1.5], [3.0, 3.0]], dtype=dtype, device=device)
    return prediction, target, anchors


def test_darknet_scale_off_equals_port(device):
    prediction, target, anchors = _layer_inputs(device)
    port = yolo_layer_loss(prediction, target, anchors)
    off = yolo_layer_loss(prediction, target, anchors, lambda_scale=False)
    assert torch.equal(port.total, off.total)
    assert torch.equal(off.targets.coord_scale, torch.ones_like(off.targets.coord_scale))
    # Full-image boxes make 2 - w*h = 1: the seed's reduction='none' × scale form equals the port too.
    full = target.clone()
    full[:, 4:6] = 1.0
    on, plain = (yolo_layer_loss(prediction, full, anchors, lambda_scale=s) for s in (True, False))
    for term in ("x", "y", "w", "h"):
        torch.testing.assert_close(on.terms[term], plain.terms[term], rtol=1e-6, atol=0)


def test_darknet_scale_values(device):
    prediction, target, anchors = _layer_inputs(device)
    on = yolo_layer_loss(prediction, target, anchors, lambda_scale=True)
    off = yolo_layer_loss(prediction, target, anchors, lambda_scale=False)
    mask = on.targets.obj_mask
    # 2 - w*h per target: 2 - .5*.25 = 1.875, 2 - .2*.3 = 1.94, 2 - .9*.8 = 1.28
    assert sorted(on.targets.coord_scale[mask].tolist()) == pytest.approx([1.28, 1.875, 1.94])
    scale = on.targets.coord_scale[mask]
    expected_x = (scale * (on.decoded.x[mask] - on.targets.tx[mask]) ** 2).mean()
    torch.testing.assert_close(on.terms["x"], expected_x)
    assert on.terms["w"] > off.terms["w"]  # every scale is > 1
    # classes and objectness do not change
    assert torch.equal(on.terms["conf"], off.terms["conf"]) and torch.equal(on.terms["cls"], off.terms["cls"])


def test_gradients_p_minus_y_match_autograd(device):
    prediction, target, anchors = _layer_inputs(device, torch.float64)
    prediction.requires_grad_(True)
    out = yolo_layer_loss(prediction, target, anchors, lambda_scale=True)
    counted = out.targets.obj_mask | out.targets.noobj_mask
    # d/dz of BCE(σ(z), y) summed = σ(z) - y; d/dσ of ½·scale·(σ - t)² summed = scale·(σ - t)
    obj_sum = F.binary_cross_entropy(out.decoded.conf[counted], out.targets.tconf[counted], reduction="sum")
    (grad_logit,) = torch.autograd.grad(obj_sum, prediction)
    torch.testing.assert_close(grad_logit[..., 4], out.gradients["obj"])
    mask = out.targets.obj_mask
    half_mse = 0.5 * (out.targets.coord_scale[mask] * (out.decoded.x[mask] - out.targets.tx[mask]) ** 2).sum()
    (grad_sigma,) = torch.autograd.grad(half_mse, out.decoded.x)
    torch.testing.assert_close(grad_sigma, out.gradients["x"])


def test_layer_loss_gradcheck():
    # one image, 2x2 grid, 2 classes: 3*2*2*7 = 84 inputs keeps the numerical Jacobian cheap
    gen = torch.Generator().manual_seed(1)
    prediction = torch.randn((1, 3, 2, 2, 7), generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 1, 0.30, 0.40, 0.50, 0.25], [0, 0, 0.80, 0.70, 0.30, 0.60]], dtype=torch.float64)
    anchors = torch.tensor([[0.5, 0.5], [1.0, 0.75], [1.5, 1.5]], dtype=torch.float64)

    def total(pred):
        return yolo_layer_loss(pred, target, anchors, lambda_scale=True, noobj_scale=1.0).total

    assert torch.autograd.gradcheck(total, (prediction,), eps=1e-6, atol=1e-5)


def test_empty_targets_give_nan_means(device):
    prediction, _, anchors = _layer_inputs(device)
    out = yolo_layer_loss(prediction, torch.zeros((0, 6), device=device), anchors)
    assert math.isnan(out.total.item()) and math.isnan(out.terms["x"].item())
    assert math.isfinite(out.terms["conf_noobj"].item())  # every cell is a negative
    assert not bool(out.targets.obj_mask.any()) and bool(out.targets.noobj_mask.all())
    assert out.metrics["recall50"] == 0.0


def test_head_ratio_four_is_rejected(device):
    # stride 32, anchor (32, 32) px = 1x1 grid; a 4x1 grid target has ratio exactly 4 -> rejected (strict <)
    anchors = [torch.tensor([[32.0, 32.0], [64.0, 64.0], [128.0, 128.0]], device=device)]
    target = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.125]], device=device)  # 8x8 grid: w 4, h 1
    out = build_targets([(1, 3, 8, 8)], target, anchors, [32])
    # anchor 0: r = (4, 1) -> 4 (rejected); anchor 1: (2, .5) -> 2 (kept); anchor 2: (1, .25) -> 4 (rejected)
    assert out.indices[0][1].tolist() == [1]
    assert out.indices[0][2].tolist() == [4] and out.indices[0][3].tolist() == [4]
    torch.testing.assert_close(out.tbox[0], torch.tensor([[0.0, 0.0, 4.0, 1.0]], device=device))


# -- scheme -----------------------------------------------------------------------------------
def _scene(**kw):
    base = dict(scheme="yolov3", width=640, height=480, nc=5,
                boxes=(Box(1, 52, 60, 168, 150), Box(3, 300, 200, 330, 261)), progress=0.5, device="cpu")
    base.update(kw)
    return Scene(**base)


def test_explain_non_square_grids_and_port_positives():
    result = explain(_scene())
    assert [lvl.grid for lvl in result.levels] == [(60, 80), (30, 40), (15, 20)]
    for maps in result.maps.values():
        assert [tuple(m.shape) for m in maps] == [(3, 60, 80), (3, 30, 40), (3, 15, 20)]
    # the port: every target is positive once per level
    assert sorted(zip(result.positives["gt"].tolist(), result.positives["level"].tolist())) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # box 0 centre (110, 105) px: P3 cell (13, 13), P4 (6, 6), P5 (3, 3)
    rows = result.positives["gt"] == 0
    assert result.positives["gi"][rows].tolist() == [13, 6, 3]
    assert result.positives["gj"][rows].tolist() == [13, 6, 3]
    total = sum(result.losses[f"total.{n}"] for n in ("P3", "P4", "P5"))
    torch.testing.assert_close(result.losses["total"], total)


def test_explain_darknet_best_of_nine():
    # a box equal to anchor (116, 90) has wh-IoU 1 with it: darknet puts it on P5 anchor 0 only
    result = explain(_scene(width=640, height=640, boxes=(Box(0, 200, 200, 316, 290),),
                            params={"assign": "darknet"}))
    assert result.positives["level"].tolist() == [2] and result.positives["anchor"].tolist() == [0]
    assert result.positives["best_iou"].tolist() == pytest.approx([1.0])
    assert get_scheme("yolov3").rule_names[result.positives["rule"][0]].startswith("best of all 9")


def test_perfect_head_decodes_to_targets():
    result = explain(_scene(progress=1.0, params={"lambda_scale": False}))
    torch.testing.assert_close(result.positives["pred_box_px"], result.positives["target_box_px"],
                               atol=0.01, rtol=1e-4)
    assert bool((result.positives["grad_obj"] < 0).all())  # σ(8) - 1


def test_pins_reach_the_pinned_box():
    from losscore.yolov3.scene import _apply_pins

    logits = torch.zeros((1, 3, 60, 80, 10))
    pin = Pin(level=0, anchor=1, gi=5, gj=7, cx=5.5 * 8, cy=7.25 * 8, w=40.0, h=20.0)
    notes: list[str] = []
    anchors_px = torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]])
    _apply_pins(logits, _scene(pins=(pin,)), 0, 8, anchors_px, notes)
    slot = logits[0, 1, 7, 5]
    assert ((torch.sigmoid(slot[0]) + 5) * 8).item() == pytest.approx(44.0)
    assert ((torch.sigmoid(slot[1]) + 7) * 8).item() == pytest.approx(58.0)
    assert (torch.exp(slot[2]) * 16).item() == pytest.approx(40.0)
    assert (torch.exp(slot[3]) * 30).item() == pytest.approx(20.0)
    assert notes == []


def test_ignored_anchors_show_in_the_maps():
    # 60x61 px box centred at (130, 130.5) on P4 (stride 16), cell (8, 8). wh-IoU with the P4 anchors:
    # (30, 61): 30*61 / (60*61) = 0.5 exactly -> NOT ignored (strict >)
    # (62, 45): 60*45 / (62*45 + 60*61 - 60*45) = 2700/3750 = 0.72 -> best anchor, positive
    # (59, 119): 59*61 / (59*119 + 60*61 - 59*61) = 3599/7082 = 0.508 -> ignored
    result = explain(_scene(width=640, height=640, boxes=(Box(0, 100, 100, 160, 161),)))
    ignored, obj, noobj = (result.maps[k][1] for k in ("ignored", "obj_mask", "noobj_mask"))
    assert ignored.nonzero().tolist() == [[2, 8, 8]]
    assert obj.nonzero().tolist() == [[1, 8, 8]]
    assert bool((noobj + ignored + obj == 1).all())
    p4 = result.positives["level"] == 1
    assert result.positives["wh_iou"][p4][0].tolist() == pytest.approx([0.5, 0.72, 3599 / 7082], rel=1e-6)
    assert result.maps["max_wh_iou"][1][2, 8, 8].item() == pytest.approx(3599 / 7082, rel=1e-6)


def test_empty_scene_gives_nan_terms_and_a_note():
    result = explain(_scene(boxes=()))
    assert math.isnan(result.losses["total"].item())
    assert result.positives["gt"].numel() == 0
    assert any("no targets" in n for n in result.notes)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))
        assert torch.equal(torch.isnan(a), torch.isnan(b)) if a.is_floating_point() else True
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        for x, y in zip(a, b):
            _assert_same(x, y)


@pytest.mark.parametrize("params", [{}, {"assign": "darknet", "lambda_scale": False}])
def test_trace_does_not_change_a_bit(params):
    scene = _scene(params=params)
    plain = explain(scene)
    trace = Trace()
    traced = explain(scene, trace)
    _assert_same(plain.positives, traced.positives)
    _assert_same(plain.maps, traced.maps)
    _assert_same(plain.losses, traced.losses)
    names = trace.names()
    for stage in ("build_targets.wh_iou", "build_targets.ignore", "build_targets.coord_scale",
                  "yolo_layer.terms", "yolo_layer.gradients"):
        phase, step = stage.split(".")
        assert f"{phase}.P3.{step}" in names
    ignore = trace.get("build_targets.P3.ignore")
    assert ignore.values["ignore_thres"] == 0.5


def test_unreachable_pin_is_clamped_with_a_note():
    from losscore.yolov3.scene import _apply_pins

    logits = torch.zeros((1, 3, 60, 80, 10))
    anchors_px = torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]])
    # centre x 60 px is in cell 7 (56..64), not cell 5: σ cannot leave (0, 1), so it is clamped
    far = Pin(level=0, anchor=0, gi=5, gj=7, cx=60.0, cy=58.0, w=10.0, h=13.0)
    missing = Pin(level=0, anchor=3, gi=5, gj=7, cx=44.0, cy=58.0, w=10.0, h=13.0)
    notes: list[str] = []
    _apply_pins(logits, _scene(pins=(far,)), 0, 8, anchors_px, notes)
    assert len(notes) == 1 and "clamped" in notes[0]
    with pytest.raises(ValueError, match=r"predictions.pins\[0\].anchor: 3 is not an anchor"):
        validate(_scene(pins=(missing,)))  # a slot that does not exist never reaches the scheme
    assert torch.sigmoid(logits[0, 0, 7, 5, 0]).item() == pytest.approx(1 - 1e-4, abs=1e-6)
    assert logits[0, 0, 7, 5, 2].item() == pytest.approx(0.0, abs=1e-6)  # log(10 / 10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 12))
def test_masks_and_tcls_do_not_depend_on_target_order(seed, n):
    # obj/noobj writes are constants and tcls writes are 1s, so upstream's result is order-free
    gen = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.randint(0, 2, (n, 1), generator=gen).float(),
                        torch.randint(0, 3, (n, 1), generator=gen).float(),
                        torch.rand((n, 2), generator=gen) * 0.98,
                        torch.rand((n, 2), generator=gen) * 0.6 + 0.01], 1)
    anchors = torch.tensor([[0.5, 0.7], [1.0, 1.0], [2.0, 1.5]])
    boxes, cls = _empty_preds(2, 3, 5, 5, 3, "cpu")
    perm = torch.randperm(n, generator=gen)
    a = legacy_build_targets(boxes, cls, target, anchors)
    b = legacy_build_targets(boxes, cls, target[perm], anchors)
    assert torch.equal(a.obj_mask, b.obj_mask) and torch.equal(a.noobj_mask, b.noobj_mask)
    assert torch.equal(a.tcls, b.tcls)
    assert not bool((a.obj_mask & a.noobj_mask).any())  # a positive is never a negative


def test_darknet_assignment_levels_without_targets_add_only_the_no_object_term():
    from losscore.scene import Box, Scene
    from losscore.registry import explain

    # One 100x80 box: its best of all 9 anchors is a single (level, anchor); the other two levels
    # own no target, and darknet's summed deltas add 0 there for every positive term.
    scene = Scene("yolov3", 416, 416, 3, (Box(1, 150, 160, 250, 240),), params={"assign": "darknet"})
    result = explain(scene)
    owning = {int(level) for level in result.positives["level"].tolist()}
    assert len(owning) == 1 and len(result.positives["gt"]) == 1
    for index, name in enumerate(("P3", "P4", "P5")):
        total = result.losses[f"total.{name}"]
        assert torch.isfinite(total)
        if index not in owning:
            noobj = result.losses[f"conf_noobj.{name}"] * float(get_scheme("yolov3").param("noobj_scale").default)
            assert torch.allclose(total, noobj)
            assert all(float(result.losses[f"{t}.{name}"]) == 0.0 for t in ("x", "y", "w", "h", "cls", "conf_obj"))
    assert torch.isfinite(result.losses["total"])
