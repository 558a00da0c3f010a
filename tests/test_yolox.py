"""YOLOX (losscore.yolox): SimOTA and the YOLOXHead loss, release 0.3.0 and GitHub main."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from losscore.conformance import ELEMENT_TOL, check_case, compare, run_case
from losscore.trace import Trace
from losscore.yolox import (
    VERSIONS,
    IOUloss,
    bboxes_iou,
    class_cost,
    geometry_constraint,
    get_assignments,
    get_l1_target,
    get_output_and_grid,
    iou_loss,
    make_grid,
    simota_matching,
    yolox_loss,
)
from tests.losslab_testing import DEVICES, vector_cases

CASES = vector_cases("yolox")
MAIN_CASES = [case for case in CASES if "expected_main" in case.values[1]]


# -- conformance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("group,case", CASES)
def test_conformance_release_0_3_0(group, case):
    assert check_case("yolox", group, case) == []


@pytest.mark.parametrize("group,case", MAIN_CASES)
def test_conformance_main(group, case):
    assert check_case("yolox@main", group, case) == []


@pytest.mark.parametrize("group,case", [c for c in CASES if c.values[0] in ("get_assignments", "get_losses")])
@pytest.mark.parametrize("family", ["yolox", "yolox@main"])
def test_conformance_diagnostics(family, group, case):
    """The diagnostic keys too: candidate count, upstream's cost and IoU matrices, the positives."""
    key = "expected" if family == "yolox" else "expected_main"
    if "error" in case[key]:
        pytest.skip("error case")
    actual = run_case(family, group, case["inputs"])
    assert compare(actual["diagnostics"], case[key]["diagnostics"], ELEMENT_TOL, "diagnostics") == []


# -- a dense, upstream-shaped reference (the shape of YOLOX's own code) ---------------------------
def _dense_assignments(gt, classes, preds, cls, obj, x_shifts, y_shifts, strides, version):
    """Every (target, anchor) tensor as upstream builds it: [N, A] geometry, [N, Ac, C] class
    cost, one topk call per target and a dense matching matrix."""
    spec = VERSIONS[version]
    N, nc = gt.shape[0], cls.shape[1]
    xc, yc = (x_shifts + 0.5) * strides, (y_shifts + 0.5) * strides
    r = spec.center_radius * strides
    centre_d = torch.stack([xc - (gt[:, :1] - r), yc - (gt[:, 1:2] - r),
                            (gt[:, :1] + r) - xc, (gt[:, 1:2] + r) - yc], 2)
    in_centre = centre_d.min(-1).values > 0
    if spec.box_test:
        box_d = torch.stack([xc - (gt[:, :1] - 0.5 * gt[:, 2:3]), yc - (gt[:, 1:2] - 0.5 * gt[:, 3:4]),
                             (gt[:, :1] + 0.5 * gt[:, 2:3]) - xc, (gt[:, 1:2] + 0.5 * gt[:, 3:4]) - yc], 2)
        in_box = box_d.min(-1).values > 0
        fg = (in_box.sum(0) > 0) | (in_centre.sum(0) > 0)
        relation = in_box[:, fg] & in_centre[:, fg]
    else:
        fg = in_centre.sum(0) > 0
        relation = in_centre[:, fg]
    Ac = int(fg.sum())
    ious = bboxes_iou(gt, preds[fg], False)
    score = (cls[fg].float().sigmoid() * obj[fg].float().sigmoid()).sqrt()  # (Ac, C)
    one_hot = F.one_hot(classes.long(), nc).float().unsqueeze(1).repeat(1, Ac, 1)  # (N, Ac, C)
    cls_cost = F.binary_cross_entropy(score.unsqueeze(0).repeat(N, 1, 1), one_hot, reduction="none").sum(-1)
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + spec.penalty * (~relation)
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    ks = torch.clamp(torch.topk(ious, min(10, Ac), dim=1).values.sum(1).int(), min=1).tolist()
    for g in range(N):
        matching[g][torch.topk(cost[g], k=ks[g], largest=False).indices] = 1
    claims = matching.sum(0)
    if (claims > 1).any():
        winner = torch.min(cost[:, claims > 1], dim=0).indices
        matching[:, claims > 1] *= 0
        matching[winner, claims > 1] = 1
    chosen = matching.sum(0) > 0
    out_mask = fg.clone()
    out_mask[fg.clone()] = chosen
    matched = matching[:, chosen].argmax(0)
    return out_mask, matched, (matching * ious).sum(0)[chosen], cost


def _scene(seed, N=6, nc=5, hw=(128, 96), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    grid = make_grid(hw, dtype=dtype)
    A = grid.x_shifts.numel()
    centre = torch.rand(N, 2, generator=g) * torch.tensor([hw[1], hw[0]])
    size = torch.exp(torch.rand(N, 2, generator=g) * 4) + 2
    gt = torch.cat([centre, size], 1).to(dtype)
    classes = torch.randint(0, nc, (N,), generator=g).to(dtype)
    t = torch.rand(A, 4, generator=g) * 3 - 1.5
    xy = torch.stack([grid.x_shifts, grid.y_shifts], 1)
    preds = torch.cat([(t[:, :2] + xy) * grid.expanded_strides[:, None],
                       torch.exp(t[:, 2:]) * grid.expanded_strides[:, None]], 1).to(dtype)
    cls = (torch.rand(A, nc, generator=g) * 8 - 6).to(dtype)
    obj = (torch.rand(A, 1, generator=g) * 8 - 6).to(dtype)
    return gt, classes, preds, cls, obj, grid


@pytest.mark.parametrize("version", ["0.3.0", "main"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_dense_upstream_shaped_reference(version, seed):
    gt, classes, preds, cls, obj, grid = _scene(seed, N=4 + 3 * seed)
    ours = get_assignments(gt, classes, preds, cls, obj, grid.x_shifts, grid.y_shifts, grid.expanded_strides,
                           version=version)
    mask, matched, ious, _ = _dense_assignments(gt, classes, preds, cls, obj, grid.x_shifts, grid.y_shifts,
                                                grid.expanded_strides, version)
    assert torch.equal(ours.fg_mask, mask)
    assert torch.equal(ours.matched_gt_inds, matched)
    assert torch.equal(ours.pred_ious_this_matching, ious)  # the same IoUs, picked
    assert torch.equal(ours.gt_matched_classes, classes[matched])


def test_class_cost_has_the_dense_bits():
    """Per distinct class, in chunks: the same BCE elements, the same .sum(-1) over the classes."""
    g = torch.Generator().manual_seed(3)
    cls, obj = torch.randn(50, 7, generator=g) * 4, torch.randn(50, 1, generator=g) * 4
    classes = torch.tensor([3.0, 1.0, 3.0, 6.0, 0.0, 1.0])
    score = (cls.sigmoid() * obj.sigmoid()).sqrt()
    one_hot = F.one_hot(classes.long(), 7).float().unsqueeze(1).repeat(1, 50, 1)
    dense = F.binary_cross_entropy(score.unsqueeze(0).repeat(6, 1, 1), one_hot, reduction="none").sum(-1)
    assert torch.equal(class_cost(cls, obj, classes), dense)
    import losscore.yolox.assign as assign_module  # one class per chunk: still the same bits

    old, assign_module._CLASS_COST_CHUNK = assign_module._CLASS_COST_CHUNK, 1
    try:
        assert torch.equal(class_cost(cls, obj, classes), dense)
    finally:
        assign_module._CLASS_COST_CHUNK = old


MIRROR = Path(os.environ.get("YOLOX_MIRROR", "/work/.mirror/Megvii-BaseDetection+YOLOX/repo"))


@pytest.mark.skipif(not MIRROR.exists() or shutil.which("git") is None, reason="no local git mirror of YOLOX")
@pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast:FutureWarning")
@pytest.mark.parametrize("version", ["0.3.0", "main"])
def test_bit_identical_to_the_yolox_code(version):
    """Where a mirror of Megvii-BaseDetection/YOLOX is at hand, run its own get_assignments (compiled
    from the mirror by the benchmark's loader, never stored here) on the benchmark's scene."""
    from benchmarks.bench_yolox import load_upstream_head, make_scene

    sc = make_scene(40, nc=20, size=320, seed=1)
    head = load_upstream_head(str(MIRROR), version, 20)
    xs, ys, ss = sc["x_shifts"][None], sc["y_shifts"][None], sc["strides"][None]
    if version == "0.3.0":
        up = head.get_assignments(0, 40, xs.shape[1], sc["gt"], sc["classes"], sc["pred"], ss, xs, ys, sc["cls"][None],
                                  None, sc["obj"][None], None, None)
    else:
        up = head.get_assignments(0, 40, sc["gt"], sc["classes"], sc["pred"], ss, xs, ys, sc["cls"][None],
                                  sc["obj"][None])
    ours = get_assignments(sc["gt"], sc["classes"], sc["pred"], sc["cls"], sc["obj"], sc["x_shifts"], sc["y_shifts"],
                           sc["strides"], version=version)
    assert up[4] == ours.num_fg
    for a, b in zip(up[:4], ours[:4]):
        assert torch.equal(a, b)


# -- hand-built numbers ---------------------------------------------------------------------------
def test_bboxes_iou_by_hand():
    # xyxy: a 2x2 box in the corner of a 4x4 box: 4 / 16 = 0.25; touching boxes: 0 (strict)
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 4.0]])
    assert bboxes_iou(a, b).tolist() == [[0.25, 0.0]]
    # cxcywh: two zero-area boxes: 0 / (0 + 0 - 0) is NaN (no eps in the union)
    zero = torch.tensor([[5.0, 5.0, 0.0, 3.0]])
    assert math.isnan(bboxes_iou(zero, zero, False).item())
    with pytest.raises(IndexError):
        bboxes_iou(torch.zeros(2, 5), torch.zeros(2, 4))


def test_iou_loss_by_hand():
    pred = torch.tensor([[2.0, 2.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [5.0, 1.0, 2.0, 2.0]])
    # IoU 0.25 -> 1 - 0.25**2 = 0.9375 (squared!); identical -> 0; disjoint -> 1
    assert iou_loss(pred, target).tolist() == pytest.approx([0.9375, 0.0, 1.0], abs=1e-6)
    # GIoU of the disjoint pair: 0 - (enclosing 6*2=12 - union 8) / 12 = -1/3 -> loss 4/3
    assert iou_loss(pred, target, loss_type="giou")[2].item() == pytest.approx(4 / 3, abs=1e-6)
    assert IOUloss("sum")(pred, target).item() == pytest.approx(1.9375, abs=1e-6)
    assert IOUloss("whatever")(pred, target).shape == (3,)  # not mean/sum: unreduced
    with pytest.raises(UnboundLocalError):
        IOUloss(loss_type="ciou")(pred, target)
    empty = torch.zeros(0, 4)
    assert math.isnan(IOUloss("mean")(empty, empty).item()) and IOUloss("sum")(empty, empty).item() == 0.0


def test_decode_and_l1_target_by_hand():
    raw = torch.zeros(1, 6, 2, 3)  # tx = ty = tw = th = 0, one class
    decoded = get_output_and_grid(raw, 8)
    # anchor (x=2, y=1) is index 1*3 + 2 = 5: centre (0 + 2) * 8 = 16, (0 + 1) * 8 = 8 (the cell
    # CORNER), size exp(0) * 8 = 8
    assert decoded.output[0, 5, :4].tolist() == [16.0, 8.0, 8.0, 8.0]
    assert decoded.grid[0, 5].tolist() == [2.0, 1.0]
    assert raw.abs().sum() == 0  # the input is not written to
    # a box (20, 12, 16, 8) at x=2, y=1, stride 8: (2.5 - 2, 1.5 - 1, log 2, log(1 + 1e-8))
    l1 = get_l1_target(torch.tensor([[20.0, 12.0, 16.0, 8.0]]), torch.tensor([8.0]), torch.tensor([2.0]),
                       torch.tensor([1.0]))
    assert l1[0].tolist() == pytest.approx([0.5, 0.5, math.log(2), 0.0], abs=1e-6)


def test_geometry_versions_by_hand():
    # 32x32, stride 8 only: anchor centres at 4, 12, 20, 28 in x and y. An 8x8 box centred at
    # (16, 16) has its edges 12 and 20 exactly on anchor centres: strictly inside, no anchor.
    grid = make_grid((32, 32), (8,))
    gt = torch.tensor([[16.0, 16.0, 8.0, 8.0]])
    old = geometry_constraint(gt, grid.x_shifts, grid.y_shifts, grid.expanded_strides, version="0.3.0")
    # 0.3.0: centre square 16 +- 2.5*8 = (-4, 36) holds all 16 centres; none in the box, so every
    # pair pays the penalty
    assert int(old.anchor_filter.sum()) == 16 and not old.relation.any()
    new = geometry_constraint(gt, grid.x_shifts, grid.y_shifts, grid.expanded_strides, version="main")
    # main: 16 +- 1.5*8 = (4, 28), open: centres 4 and 28 are on the border, so 12 and 20 only
    assert new.anchor_filter.view(4, 4).nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert new.relation.all()
    with pytest.raises(ValueError):
        geometry_constraint(gt, grid.x_shifts, grid.y_shifts, grid.expanded_strides, version="0.2.0")


def test_conflict_won_by_a_target_that_did_not_select_it():
    # IoUs of 1/8: every k = max(1, int(0.25)) = 1. gt0 [5, 1] and gt1 [6, 2] both take column 1;
    # gt2 [0.5, 0.75] takes column 0. Column 1 goes to argmin([1, 2, 0.75]) = gt2, which never
    # took it: gt2 ends with both anchors, gt0 and gt1 with none.
    cost = torch.tensor([[5.0, 1.0], [6.0, 2.0], [0.5, 0.75]])
    ious = torch.full((3, 2), 0.125)
    fg_mask = torch.tensor([False, True, True])
    trace = Trace()
    m = simota_matching(cost, ious, torch.tensor([0.0, 1.0, 2.0]), fg_mask, trace=trace)
    assert m.num_fg == 2 and m.matched_gt_inds.tolist() == [2, 2] and m.fg_mask.tolist() == [False, True, True]
    assert m.gt_matched_classes.tolist() == [2.0, 2.0] and fg_mask.tolist() == [False, True, True]
    assert trace.names() == ["simota.dynamic_k", "simota.select", "simota.conflicts", "simota.result"]
    conflicts = trace.get("simota.conflicts")
    assert conflicts["conflict_anchor"].tolist() == [2] and conflicts["conflict_winner"].tolist() == [2]
    assert conflicts["conflict_winner_selected"].tolist() == [False]
    assert conflicts["claim_gt"].tolist() == [0, 1] and conflicts["claim_won"].tolist() == [False, False]
    result = trace.get("simota.result")
    assert result["fg_rule"].tolist() == [0, 2] and result["gt_anchor_count"].tolist() == [0, 0, 2]
    assert result.values["gts_without_anchor"] == [0, 1]


def test_dynamic_k_truncates_and_uses_the_top_10():
    # gt0: 0.75 + 0.75 + 0.75 + 0.5 = 2.75 -> 2; gt1: twelve 0.25s, the top 10 sum to 2.5 -> 2
    # (all twelve would give 3); gt2: twelve 1/16 = 0.75 -> 0 -> at least 1
    ious = torch.zeros(3, 12)
    ious[0, :4] = torch.tensor([0.75, 0.75, 0.75, 0.5])
    ious[1] = 0.25
    ious[2] = 0.0625
    cost = torch.arange(36, dtype=torch.float32).view(3, 12)
    trace = Trace()
    m = simota_matching(cost, ious, torch.zeros(3), torch.ones(12, dtype=torch.bool), trace=trace)
    assert trace.get("simota.dynamic_k")["gt_dynamic_k"].tolist() == [2, 2, 1]
    # costs rise along every row: gt0 and gt1 take columns 0 and 1, gt2 takes column 0; both
    # columns are contested and go to gt0, the cheapest of every column
    assert m.num_fg == 2
    assert m.matched_gt_inds.tolist() == [0, 0]


def test_errors_as_upstream():
    with pytest.raises(RuntimeError):  # no candidate: torch.topk(k=1) on an empty row
        simota_matching(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(UnboundLocalError):  # no target: upstream's `del pos_idx` after an empty loop
        simota_matching(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), torch.ones(3, dtype=torch.bool))
    gt, classes, preds, cls, obj, grid = _scene(0, nc=3)
    args = (preds, cls, obj, grid.x_shifts, grid.y_shifts, grid.expanded_strides)
    with pytest.raises(RuntimeError):  # class out of range (F.one_hot)
        get_assignments(gt, classes + 3, *args)
    with pytest.raises(RuntimeError):  # only target far outside: no candidate
        get_assignments(torch.tensor([[-500.0, -500.0, 10.0, 10.0]]), torch.zeros(1), *args)
    with pytest.raises(UnboundLocalError):
        get_assignments(gt[:0], classes[:0], *args)


def _batch(seed=0, B=2, nc=3, hw=(64, 96), counts=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    raws = [torch.randint(-24, 24, (B, 5 + nc, hw[0] // s, hw[1] // s), generator=g).float() / 16 for s in (8, 16, 32)]
    labels = torch.zeros(B, 5, 5)
    for b, n in enumerate(counts):
        for i in range(n):
            labels[b, i] = torch.tensor([float(i % nc), 10.0 + 25 * i, 12.0 + 15 * i, 20.0 + 5 * i, 16.0 + 4 * i])
    return raws, labels


def test_loss_without_targets():
    raws, labels = _batch(counts=(0, 0))
    out = yolox_loss(raws, labels, use_l1=False)
    # num_fg = max(0, 1) = 1; only the objectness term: BCE(obj, 0) = softplus(obj) over every anchor
    obj = torch.cat([r[:, 4].reshape(2, -1) for r in raws], 1)
    assert out.conf_loss.item() == pytest.approx(F.softplus(obj).sum().item(), rel=1e-5)
    assert out.iou_loss.item() == 0.0 and out.cls_loss.item() == 0.0
    assert out.num_fg == 1.0 and type(out.l1_loss) is float and out.l1_loss == 0.0
    assert out.total_loss.item() == pytest.approx(out.conf_loss.item(), rel=1e-6)


def test_loss_ratio_counts_targets_and_positives():
    raws, labels = _batch()
    out = yolox_loss(raws, labels, use_l1=True)
    assert out.num_gts == 5 and out.fg_count == int(out.fg_mask.sum())
    assert out.num_fg == max(out.fg_count, 1) / 5  # the "num_fg" the trainer logs is a ratio
    assert out.total_loss.item() == pytest.approx(
        (out.iou_loss + out.conf_loss + out.cls_loss + out.l1_loss).item(), rel=1e-6)
    assert out.per_image[0].num_fg + out.per_image[1].num_fg == out.fg_count


# -- properties -----------------------------------------------------------------------------------
_box = st.tuples(*(st.integers(0, 64) for _ in range(2)), *(st.integers(1, 32) for _ in range(2)))


@settings(max_examples=40, deadline=None)
@given(st.lists(_box, min_size=1, max_size=5), st.lists(_box, min_size=1, max_size=5))
def test_bboxes_iou_is_symmetric_and_in_unit_interval(a, b):
    a = torch.tensor(a, dtype=torch.float32) / 2
    b = torch.tensor(b, dtype=torch.float32) / 2
    ab, ba = bboxes_iou(a, b, False), bboxes_iou(b, a, False)
    assert torch.equal(ab, ba.T)  # the same operations on swapped operands
    assert bool(((ab >= 0) & (ab <= 1)).all())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 9), st.sampled_from(["0.3.0", "main"]))
def test_assignment_follows_a_permutation_of_the_targets(seed, N, version):
    # float64 (upstream follows the dtype, class cost in float32): no exact cost ties between
    # targets, so permuting the targets permutes the matched target and nothing else
    gt, classes, preds, cls, obj, grid = _scene(seed, N=N, nc=12, dtype=torch.float64)
    classes = torch.randperm(12, generator=torch.Generator().manual_seed(seed))[:N].double()
    args = (preds, cls, obj, grid.x_shifts, grid.y_shifts, grid.expanded_strides)
    try:
        base = get_assignments(gt, classes, *args, version=version)
    except RuntimeError:
        return  # no candidate at all
    order = torch.randperm(N, generator=torch.Generator().manual_seed(seed + 1))
    moved = get_assignments(gt[order], classes[order], *args, version=version)
    assert torch.equal(base.fg_mask, moved.fg_mask)
    assert torch.equal(order[moved.matched_gt_inds], base.matched_gt_inds)
    assert torch.equal(moved.pred_ious_this_matching, base.pred_ious_this_matching)


# -- trace ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.3.0", "main"])
def test_trace_changes_nothing_and_names_the_stages(version):
    raws, labels = _batch(seed=1)
    plain = [r.clone().requires_grad_() for r in raws]
    traced = [r.clone().requires_grad_() for r in raws]
    a = yolox_loss(plain, labels, use_l1=True, version=version)
    trace = Trace()
    b = yolox_loss(traced, labels, use_l1=True, version=version, trace=trace)
    for x, y in zip(a[:5], b[:5]):
        assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))
    assert a.num_fg == b.num_fg and torch.equal(a.fg_mask, b.fg_mask)
    a.total_loss.backward()
    b.total_loss.backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(plain, traced))
    assert trace.names() == [
        "decode.P3.grid", "decode.P4.grid", "decode.P5.grid", "targets.count", "simota.geometry", "simota.cost",
        "simota.dynamic_k", "simota.select", "simota.conflicts", "simota.result", "loss.targets", "loss.iou",
        "loss.obj", "loss.cls", "loss.l1", "loss.total"]
    # batch stages: every row group carries its image
    result = trace.get("simota.result")
    assert result["fg_image"].tolist() == b.fg_mask.nonzero()[:, 0].tolist()
    assert result["gt_image"].tolist() == [0, 0, 0, 1, 1]
    assert trace.get("loss.targets")["fg_anchor"].tolist() == b.fg_mask.nonzero()[:, 1].tolist()
    geometry = trace.get("simota.geometry")
    assert ("pair_in_box" in geometry.tensors) == (version == "0.3.0")


def test_trace_of_one_image_shows_costs_and_lost_targets():
    gt, classes, preds, cls, obj, grid = _scene(2, N=8)
    gt[1] = gt[0]  # a duplicate box of another class: one of the two may lose every anchor
    trace = Trace()
    a = get_assignments(gt, classes, preds, cls, obj, grid.x_shifts, grid.y_shifts, grid.expanded_strides,
                        trace=trace)
    b = get_assignments(gt, classes, preds, cls, obj, grid.x_shifts, grid.y_shifts, grid.expanded_strides)
    assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))
    cost = trace.get("simota.cost")
    total = cost["pair_cls_cost"] + 3.0 * cost["pair_iou_cost"] + cost["pair_penalty"]
    assert torch.allclose(total, cost["pair_cost"], rtol=1e-6)
    select = trace.get("simota.select")
    assert int(select["sel_gt"].numel()) == int(trace.get("simota.dynamic_k")["gt_dynamic_k"].sum())
    assert bool((select["sel_cost"] <= select["gt_next_cost"][select["sel_gt"]]).all())
    result = trace.get("simota.result")
    assert int(result["gt_anchor_count"].sum()) == a.num_fg
    assert result.values["gts_without_anchor"] == (result["gt_anchor_count"] == 0).nonzero().squeeze(1).tolist()


# -- devices and dtypes ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_follows_device_and_dtype(device):
    gt, classes, preds, cls, obj, grid = _scene(4, dtype=torch.float64)
    move = [t.to(device) for t in (gt, classes, preds, cls, obj, *grid[:3])]
    a = get_assignments(*move)
    assert a.fg_mask.device.type == torch.device(device).type
    assert a.pred_ious_this_matching.dtype == torch.float64 and a.gt_matched_classes.dtype == torch.float64
    raws, labels = _batch()
    out = yolox_loss([r.double().to(device) for r in raws], labels.double().to(device), use_l1=True)
    assert out.total_loss.dtype == torch.float64 and out.total_loss.device.type == torch.device(device).type
