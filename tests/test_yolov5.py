"""YOLOv5 family: conformance with upstream vectors, hand-built geometry, properties, gradients, trace."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from losslab_testing import vector_cases
from losscore.boxes import bbox_iou
from losscore.conformance import check_case
from losscore.trace import Trace
from losscore.yolov5 import (RULE_NAMES, BCEBlurWithLogitsLoss, ComputeLoss, FocalLoss, QFocalLoss, build_targets,
                             default_balance, last_write_mask, smooth_BCE)

DEFAULT_ANCHORS_PX = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                                   [116, 90, 156, 198, 373, 326]], dtype=torch.float32).view(3, 3, 2)
STRIDES = (8, 16, 32)
ANCHORS_GRID = DEFAULT_ANCHORS_PX / torch.tensor(STRIDES, dtype=torch.float32).view(3, 1, 1)



def shapes_for(height: int, width: int, nc: int = 80, batch: int = 1):
    return [(batch, 3, height // s, width // s, 5 + nc) for s in STRIDES]


def target_px(cx, cy, w, h, width=640, height=640, image=0, cls=0):
    return [image, cls, cx / width, cy / height, w / width, h / height]


# -- conformance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("group_name,case", vector_cases("yolov5"))
def test_conformance(group_name, case, device):
    assert check_case("yolov5", group_name, case, device) == []


# -- build_targets: hand-built geometry ----------------------------------------------------------
def test_worked_assignment_single_level():
    # 64x64 image, one level of stride 8 (8x8 grid); anchors (15,5), (24,16), (16,24) px =
    # (1.875, 0.625), (3, 2), (2, 3) cells. Target (26, 37, 36, 24) px = centre (3.25, 4.625), size (4.5, 3).
    # anchor 0: h ratio 3 / 0.625 = 4.8 >= 4 rejected; anchor 1: 1.5, 1.5; anchor 2: 2.25, 1 kept.
    # x frac 0.25 < 0.5 and x > 1 -> left (2, 4); y frac 0.625 -> no up;
    # mirrored x 4.75 (frac 0.75) -> no right; mirrored y 3.375 (frac 0.375) -> down (3, 5).
    anchors = torch.tensor([[[15.0, 5.0], [24.0, 16.0], [16.0, 24.0]]]) / 8
    targets = torch.tensor([target_px(26, 37, 36, 24, 64, 64)])
    trace = Trace()
    out = build_targets([(1, 3, 8, 8, 6)], targets, anchors, trace=trace)
    index = out.indices[0]
    assert index.anchor.tolist() == [1, 2, 1, 2, 1, 2]
    assert list(zip(index.gi.tolist(), index.gj.tolist())) == [(3, 4), (3, 4), (2, 4), (2, 4), (3, 5), (3, 5)]
    assert [RULE_NAMES[r] for r in out.rule[0].tolist()] == ["centre"] * 2 + ["left"] * 2 + ["down"] * 2
    r_max = trace.get("build_targets.P3.anchor_filter")["r_max"][:, 0]
    assert r_max.tolist() == pytest.approx([4.8, 1.5, 2.25])
    # tbox xy = centre - cell: (0.25, 0.625), (1.25, 0.625), (0.25, -0.375)
    assert out.tbox[0][::2, :2].tolist() == [[0.25, 0.625], [1.25, 0.625], [0.25, -0.375]]
    assert out.anch[0][:2].tolist() == [[3.0, 2.0], [2.0, 3.0]]
    reasons = trace.get("build_targets.P3.neighbours")["reason"]  # left, up, right, down per kept pair
    assert reasons.tolist() == [[0, 1, 1, 0], [0, 1, 1, 0]]  # up and right: fraction >= g


@pytest.mark.parametrize("cy,expected,per_level", [(203, 19, [4, 9, 6]), (204, 17, None)])
def test_default_anchors_counts_from_learners(cy, expected, per_level):
    targets = torch.tensor([target_px(100, cy, 50, 80)])
    out = build_targets(shapes_for(640, 640), targets, ANCHORS_GRID)
    counts = [t.shape[0] for t in out.tcls]
    assert sum(counts) == expected
    if per_level is not None:
        assert counts == per_level


def test_box_at_the_border_gets_no_neighbours():
    # a 20x20 box centred at (4, 4) px: on P3 the centre is (0.5, 0.5) cells, not > 1 from the border
    trace = Trace()
    out = build_targets(shapes_for(640, 640), torch.tensor([target_px(4, 4, 20, 20)]), ANCHORS_GRID, trace=trace)
    assert sum(t.shape[0] for t in out.tcls) == 5
    assert all(r == 0 for level in out.rule for r in level.tolist())  # centre rows only
    reason = trace.get("build_targets.P3.neighbours")["reason"]
    assert (reason[:, :2] == 3).all()  # left/up: fraction 0.5 >= g and within one cell of the border


def test_ratio_exactly_anchor_t_is_rejected():
    # one level, one anchor of (2, 2) cells on an 8x8 grid (64 px, stride 8): a box 8 cells wide
    # has w ratio 8 / 2 = 4.0 exactly -> rejected by the strict <; 7.75 cells (ratio 3.875) is kept.
    anchors = torch.tensor([[[2.0, 2.0]]])
    exact = torch.tensor([[0, 0, 0.5, 0.5, 1.0, 0.25]])  # w = 8 cells, h = 2 cells
    assert build_targets([(1, 1, 8, 8, 6)], exact, anchors, anchor_t=4.0).tcls[0].numel() == 0
    assert build_targets([(1, 1, 8, 8, 6)], exact, anchors, anchor_t=4.0 + 1e-3).tcls[0].numel() > 0
    below = torch.tensor([[0, 0, 0.5, 0.5, 7.75 / 8, 0.25]])
    assert build_targets([(1, 1, 8, 8, 6)], below, anchors, anchor_t=4.0).tcls[0].numel() > 0


def test_g_is_a_parameter():
    # centre (3.25, 4.625) on an 8x8 grid: with g = 0.2 the x fraction 0.25 no longer fires left
    anchors = torch.tensor([[[2.0, 2.0]]])
    targets = torch.tensor([[0, 0, 3.25 / 8, 4.625 / 8, 0.25, 0.25]])
    rules = build_targets([(1, 1, 8, 8, 6)], targets, anchors, g=0.2).rule[0].tolist()
    assert rules == [0]  # mirrored y 3.375: fraction 0.375 >= 0.2 -> no down either
    rules = build_targets([(1, 1, 8, 8, 6)], targets, anchors, g=0.5).rule[0].tolist()
    assert rules == [0, 1, 4]


def test_empty_targets_give_empty_rows_and_a_finite_loss():
    out = build_targets(shapes_for(64, 64, 3, 2), torch.zeros((0, 6)), ANCHORS_GRID)
    assert [t.shape for t in out.tbox] == [(0, 4)] * 3 and all(i.gi.dtype == torch.long for i in out.indices)
    torch.manual_seed(0)
    p = [torch.randn(s) for s in shapes_for(64, 64, 3, 2)]
    compute = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES)
    loss, items = compute(p, torch.zeros((0, 6)))
    # no positives: tobj = 0 everywhere, lobj = sum_i balance_i * mean BCE(x, 0)
    expected_obj = sum(w * nn.functional.binary_cross_entropy_with_logits(pi[..., 4], torch.zeros_like(pi[..., 4]))
                       for w, pi in zip([4.0, 1.0, 0.4], p))
    assert items[0] == 0 and items[2] == 0
    assert items[1].item() == pytest.approx(expected_obj.item(), rel=1e-6)
    assert loss.item() == pytest.approx(2 * expected_obj.item(), rel=1e-6)


# -- properties ----------------------------------------------------------------------------------
coord = st.floats(0.0, 1.0, allow_nan=False, width=32)
size = st.floats(0.001953125, 1.0, allow_nan=False, width=32)  # 2^-9


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=6), st.sampled_from([(640, 640), (480, 640)]))
def test_tbox_xy_in_reachable_range_for_in_image_centres(rows, hw):
    targets = torch.tensor([[0, 0, *row] for row in rows], dtype=torch.float32)
    out = build_targets(shapes_for(*hw), targets, ANCHORS_GRID)
    for tbox, index, shape in zip(out.tbox, out.indices, shapes_for(*hw)):
        assert ((tbox[:, :2] >= -0.5) & (tbox[:, :2] <= 1.5)).all()
        assert ((index.gi >= 0) & (index.gi < shape[3]) & (index.gj >= 0) & (index.gj < shape[2])).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(coord, coord, size, size), min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_permuting_targets_permutes_rows_within_groups(rows, rng):
    targets = torch.tensor([[0, i % 3, *row] for i, row in enumerate(rows)], dtype=torch.float32)
    perm = list(range(len(rows)))
    rng.shuffle(perm)
    original = build_targets(shapes_for(640, 640), targets, ANCHORS_GRID)
    permuted = build_targets(shapes_for(640, 640), targets[perm], ANCHORS_GRID)
    for level in range(3):
        def rows_of(out, relabel):
            keys = [(r, a, relabel[t]) for r, a, t in zip(out.rule[level].tolist(), out.indices[level].anchor.tolist(),
                                                          out.target[level].tolist())]
            return keys, out.tbox[level], out.indices[level].gi, out.indices[level].gj
        keys_a, tbox_a, gi_a, gj_a = rows_of(original, list(range(len(rows))))
        keys_b, tbox_b, gi_b, gj_b = rows_of(permuted, perm)
        assert sorted(keys_a) == sorted(keys_b)
        # group order (rule, then anchor) is unchanged; only the target order inside a group moves
        assert [k[:2] for k in keys_a] == [k[:2] for k in keys_b]
        order_b = sorted(range(len(keys_b)), key=lambda i: keys_b[i])
        order_a = sorted(range(len(keys_a)), key=lambda i: keys_a[i])
        assert torch.equal(tbox_a[order_a], tbox_b[order_b])
        assert torch.equal(gi_a[order_a], gi_b[order_b]) and torch.equal(gj_a[order_a], gj_b[order_b])


box_side = st.floats(0.01, 50.0, allow_nan=False)
centre = st.floats(-50.0, 50.0, allow_nan=False)


@settings(max_examples=80, deadline=None)
@given(st.tuples(centre, centre, box_side, box_side), st.tuples(centre, centre, box_side, box_side))
def test_iou_in_unit_interval_and_ciou_at_most_iou(a, b):
    box1, box2 = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    iou = bbox_iou(box1, box2).item()
    ciou = bbox_iou(box1, box2, CIoU=True).item()
    assert 0.0 <= iou <= 1.0
    assert ciou <= iou + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=20), st.floats(0.0, 4.0), st.floats(0.0, 1.0), st.data())
def test_focal_never_exceeds_bce(logits, gamma, alpha, data):
    pred = torch.tensor(logits, dtype=torch.float64)
    true = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(logits), max_size=len(logits))),
                        dtype=torch.float64)
    bce = nn.functional.binary_cross_entropy_with_logits(pred, true, reduction="none")
    focal = FocalLoss(nn.BCEWithLogitsLoss(reduction="none"), gamma, alpha)(pred, true)
    assert (focal <= bce + 1e-12).all()


# -- the loss functions ---------------------------------------------------------------------------
def test_smooth_bce():
    assert smooth_BCE() == (0.95, 0.05)
    assert smooth_BCE(0.0) == (1.0, 0.0)


@pytest.mark.parametrize("gamma,expected", [(0, (2.302585, 0.693147, 0.105361)), (0.5, (2.184424, 0.490129, 0.033318)),
                                            (1, (2.072327, 0.346574, 0.010536)), (2, (1.865094, 0.173287, 0.001054))])
def test_focal_numbers_from_learners(gamma, expected):
    # -(1 - p_t)^gamma ln p_t with p_t = 0.1 / 0.5 / 0.9; alpha = 0.5 halves it for y = 1, so x 2
    p_t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    logits = torch.log(p_t / (1 - p_t))
    focal = FocalLoss(nn.BCEWithLogitsLoss(reduction="none"), gamma, alpha=0.5)(logits, torch.ones_like(p_t)) * 2
    assert focal.tolist() == pytest.approx(list(expected), abs=1e-6)


def test_focal_with_gamma_zero_is_weighted_bce_with_gradients():
    # gamma 0, alpha 0.5: every element weighted 0.5 -> half the BCE, gradients too
    torch.manual_seed(1)
    pred = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    true = (torch.rand(5, 4, dtype=torch.float64) > 0.5).to(torch.float64)
    focal = FocalLoss(nn.BCEWithLogitsLoss(), 0.0, 0.5)(pred, true)
    (grad_focal,) = torch.autograd.grad(focal, pred)
    bce = nn.functional.binary_cross_entropy_with_logits(pred, true)
    (grad_bce,) = torch.autograd.grad(bce, pred)
    assert torch.allclose(focal, 0.5 * bce) and torch.allclose(grad_focal, 0.5 * grad_bce)


def test_qfocal_and_blur_gradcheck():
    torch.manual_seed(2)
    pred = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    true = torch.rand(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: QFocalLoss(nn.BCEWithLogitsLoss(), 1.5, 0.25)(x, true), (pred,))
    assert torch.autograd.gradcheck(lambda x: BCEBlurWithLogitsLoss(0.05)(x, true), (pred,))
    # QFocal on a hard target y: |y - σ(x)|^γ = (1 - p_t)^γ, so it equals FocalLoss
    hard = (true > 0.5).to(torch.float64)
    q = QFocalLoss(nn.BCEWithLogitsLoss(), 2.0, 0.25)(pred, hard)
    f = FocalLoss(nn.BCEWithLogitsLoss(), 2.0, 0.25)(pred, hard)
    assert torch.allclose(q, f)


def test_bbox_iou_numbers_from_learners():
    pred, gt = torch.tensor([[1, 0.5, 5, 3.5]]), torch.tensor([[0.0, 0, 4, 2]])
    values = [bbox_iou(pred, gt, xywh=False, **{k: True} if k else {}).item() for k in ("", "GIoU", "DIoU", "CIoU")]
    assert values == pytest.approx([0.290323, 0.176037, 0.236631, 0.236394], abs=1e-6)
    a, b = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[3.0, 0, 5, 2]])
    assert bbox_iou(a, b, xywh=False).item() == 0
    assert bbox_iou(a, b, xywh=False, GIoU=True).item() == pytest.approx(-0.2, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, CIoU=True).item() == pytest.approx(-0.310345, abs=1e-6)


def test_zero_area_box_gives_nan_ciou_like_upstream():
    assert math.isnan(bbox_iou(torch.tensor([[1.0, 1, 0, 0]]), torch.tensor([[1.0, 1, 2, 2]]), CIoU=True).item())


# -- ComputeLoss -----------------------------------------------------------------------------------
def test_default_balance():
    assert default_balance(3) == [4.0, 1.0, 0.4]
    assert default_balance(5) == [4.0, 1.0, 0.25, 0.06, 0.02]
    assert default_balance(2) == [4.0, 1.0] and default_balance(4) == [4.0, 1.0, 0.25, 0.06]
    with pytest.raises(ValueError, match="balance"):
        default_balance(6)


def test_last_write_mask_keeps_the_last_row_per_slot():
    assert last_write_mask(torch.tensor([5, 2, 5, 7, 2, 5])).tolist() == [False, False, False, True, True, True]
    assert last_write_mask(torch.zeros(0, dtype=torch.long)).tolist() == []


def _scene_inputs(dtype=torch.float32, nc=3, seed=0):
    # 64x96 (H x W) image, batch 2; targets include a duplicate (same slot, last write wins)
    torch.manual_seed(seed)
    shapes = [(2, 3, 64 // s, 96 // s, 5 + nc) for s in STRIDES]
    p = [torch.randn(s, dtype=dtype) for s in shapes]
    targets = torch.tensor([target_px(30, 20, 24, 18, 96, 64, 0, 1), target_px(30, 20, 24, 18, 96, 64, 0, 2),
                            target_px(70, 40, 40, 30, 96, 64, 1, 0), target_px(12, 50, 10, 14, 96, 64, 1, 2)])
    return p, targets


def test_two_levels_use_the_five_level_fallback_prefix():
    p, targets = _scene_inputs()
    compute = ComputeLoss(3, anchors_grid=ANCHORS_GRID[:2], strides=STRIDES[:2])
    trace = Trace()
    compute(p[:2], targets, trace=trace)
    assert compute.balance == [4.0, 1.0]
    assert trace.get("loss.P4.level_losses").values["balance"] == 1.0


def test_duplicate_targets_last_write_wins_and_gr_mix():
    p, targets = _scene_inputs()
    trace = Trace()
    ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, gr=0.5)(p, targets, trace=trace)
    stage = trace.get("loss.P3.objectness_target")
    value, written, slot = stage["tobj_value"], stage["written"], stage["slot"]
    assert torch.equal(value, 0.5 + 0.5 * stage["iou_clamped"])
    assert not written.all()  # target 0 and 1 are the same box: the earlier rows are overwritten
    flat = stage["tobj"].reshape(-1)
    assert torch.equal(flat[slot[written]], value[written])
    for s in slot[~written].tolist():  # an overwritten row's slot holds the last writer's value
        last = max(i for i, t in enumerate(slot.tolist()) if t == s)
        assert flat[s] == value[last]


def test_nc1_skips_class_loss():
    p, targets = _scene_inputs(nc=1)
    targets[:, 1] = 0
    _, items = ComputeLoss(1, anchors_grid=ANCHORS_GRID, strides=STRIDES)(p, targets)
    assert items[2] == 0 and items[0] > 0


@pytest.mark.parametrize("kwargs", [dict(), dict(hyp=dict(fl_gamma=1.5, label_smoothing=0.1), gr=0.7, sort_obj_iou=True)])
def test_trace_on_off_bit_identical_without_autograd(kwargs, device):
    # without autograd a trace takes each mean from the per-element loss it records (one pass)
    p, targets = _scene_inputs()
    p = [x.to(device) for x in p]
    with torch.no_grad():
        plain = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, **kwargs)(p, targets.to(device))
        traced = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, **kwargs)(p, targets.to(device),
                                                                                       trace=Trace())
    assert torch.equal(plain.loss, traced.loss) and torch.equal(plain.loss_items, traced.loss_items)


@pytest.mark.parametrize("kwargs", [dict(), dict(hyp=dict(fl_gamma=1.5, label_smoothing=0.1), gr=0.7, sort_obj_iou=True)])
def test_trace_on_off_bit_identical(kwargs, device):
    p, targets = _scene_inputs()
    results = []
    for trace in (None, Trace()):
        leaves = [x.clone().to(device).requires_grad_(True) for x in p]
        loss, items = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, **kwargs)(
            leaves, targets.to(device), trace=trace)
        grads = torch.autograd.grad(loss, leaves)
        results.append((loss, items, grads))
    (loss_a, items_a, grads_a), (loss_b, items_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(items_a, items_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_gradcheck_float64_objectness_and_class_paths():
    # box gain 0 and gr = 0 make every remaining term differentiable in the ordinary sense (upstream
    # takes CIoU's alpha and the objectness target from the IoU without gradient, so a numerical
    # check over those paths would differ by design).
    # 32x32 image, 1 image, nc 3: grids 4x4, 2x2, 1x1 (504 logits); two boxes, one on a border
    torch.manual_seed(3)
    p = tuple(torch.randn((1, 3, 32 // s, 32 // s, 8), dtype=torch.float64, requires_grad=True) for s in STRIDES)
    targets = torch.tensor([target_px(12, 13, 10, 14, 32, 32, 0, 1), target_px(30, 4, 20, 6, 32, 32, 0, 2)])
    compute = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, gr=0.0,
                          hyp=dict(box=0.0, fl_gamma=1.5, label_smoothing=0.1, cls_pw=2.0))
    assert sum(t.shape[0] for t in compute.build_targets(p, targets).tcls) > 0
    assert torch.autograd.gradcheck(lambda *xs: compute(list(xs), targets).loss, p)


def test_box_gradient_treats_ciou_alpha_as_constant():
    # d(1 - CIoU)/dx with alpha held fixed: compare against the same expression with alpha detached
    p, targets = _scene_inputs(torch.float64)
    leaves = [x.clone().requires_grad_(True) for x in p]
    compute = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, hyp=dict(obj=0.0, cls=0.0))
    loss, _ = compute(leaves, targets)
    (grad,) = torch.autograd.grad(loss, leaves[0])
    assigned = compute.build_targets(leaves, targets)
    image, anchor, gj, gi = assigned.indices[0]
    leaf = leaves[0].detach().clone().requires_grad_(True)
    pxy = leaf[image, anchor, gj, gi, :2].sigmoid() * 2 - 0.5
    pwh = (leaf[image, anchor, gj, gi, 2:4].sigmoid() * 2) ** 2 * assigned.anch[0]
    (x1, y1, w1, h1), (x2, y2, w2, h2) = torch.cat((pxy, pwh), 1).T, assigned.tbox[0].double().T
    inter = ((torch.min(x1 + w1 / 2, x2 + w2 / 2) - torch.max(x1 - w1 / 2, x2 - w2 / 2)).clamp(0)
             * (torch.min(y1 + h1 / 2, y2 + h2 / 2) - torch.max(y1 - h1 / 2, y2 - h2 / 2)).clamp(0))
    iou = inter / (w1 * h1 + w2 * h2 - inter + 1e-7)
    cw = torch.max(x1 + w1 / 2, x2 + w2 / 2) - torch.min(x1 - w1 / 2, x2 - w2 / 2)
    ch = torch.max(y1 + h1 / 2, y2 + h2 / 2) - torch.min(y1 - h1 / 2, y2 - h2 / 2)
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    alpha = (v / (v - iou + 1 + 1e-7)).detach()
    ciou = iou - (((x2 - x1) ** 2 + (y2 - y1) ** 2) / (cw**2 + ch**2 + 1e-7) + v * alpha)
    manual = (1 - ciou).mean() * 0.05 * 2  # box gain, batch 2
    (expected,) = torch.autograd.grad(manual, leaf, retain_graph=True)
    assert torch.allclose(grad, expected, rtol=1e-7, atol=1e-10)  # same maths, different operation order
    # the check discriminates: letting the gradient flow through alpha changes it
    alpha_live = v / (v - iou + 1 + 1e-7)
    ciou_live = iou - (((x2 - x1) ** 2 + (y2 - y1) ** 2) / (cw**2 + ch**2 + 1e-7) + v * alpha_live)
    (live,) = torch.autograd.grad((1 - ciou_live).mean() * 0.05 * 2, leaf)
    assert not torch.allclose(grad, live, rtol=1e-7, atol=1e-10)


def test_autobalance_updates_balance_like_upstream():
    p, targets = _scene_inputs()
    compute = ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, autobalance=True)
    trace = Trace()
    compute(p, targets, trace=trace)
    raw = [trace.get(f"loss.{name}.level_losses")["obj"].item() for name in ("P3", "P4", "P5")]
    updated = [w * 0.9999 + 0.0001 / obj for w, obj in zip([4.0, 1.0, 0.4], raw)]
    expected = [w / updated[1] for w in updated]  # normalised by the stride-16 level
    assert compute.balance == pytest.approx(expected, rel=1e-6)
    assert compute.balance[1] == 1.0


def test_sort_obj_iou_lets_the_highest_iou_win():
    p, targets = _scene_inputs()
    # a second, shifted copy of box 2 that lands on the same P3 cells with a different IoU
    extra = torch.tensor([target_px(72, 42, 36, 26, 96, 64, 1, 0)])
    targets = torch.cat((targets, extra))
    trace = Trace()
    ComputeLoss(3, anchors_grid=ANCHORS_GRID, strides=STRIDES, sort_obj_iou=True)(p, targets, trace=trace)
    stage = trace.get("loss.P3.objectness_target")
    slot, value, written = stage["slot"], stage["tobj_value"], stage["written"]
    assert torch.equal(value, value.sort().values)  # written in ascending IoU order
    assert (slot.unique(return_counts=True)[1] > 1).any()  # the scene does contain shared slots
    for s in slot.unique().tolist():
        hits = slot == s
        assert stage["tobj"].reshape(-1)[s] == value[hits].max()
        assert written[hits].sum() == 1
