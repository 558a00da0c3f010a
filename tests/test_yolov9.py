"""YOLOv9 TAL family: conformance, hand-built numbers, dense-reference equality, gradients, trace."""
from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from losslab_testing import ROOT, vector_cases
from losscore.conformance import check_case
from losscore.scene import Box, Pin, Scene
from losscore.registry import explain, get_scheme
from losscore.yolov9.tal import DensePredictions, TaskAlignedAssigner, assign, make_anchors, select_candidates_in_gts
from losscore.trace import Trace
from losscore.yolov9.loss import BboxLoss, _bce_focal, _LevelGather, compute_loss, df_loss
from losscore.yolov9.scene import two_bin_logits

sys.path.insert(0, str(ROOT))
from benchmarks.bench_yolov9 import dense_reference_loss, make_inputs  # noqa: E402


# -- conformance -------------------------------------------------------------------------------
@pytest.mark.parametrize("group_name,case", vector_cases("yolov9"))
def test_conformance(group_name, case, device):
    assert check_case("yolov9", group_name, case, device) == []


# -- TAL metric (LEARNERS.md "Numbers to reproduce") -------------------------------------------
def _concentric_square(side: float) -> list[float]:
    half = side / 2
    return [5 - half, 5 - half, 5 + half, 5 + half]


def _two_anchor_scene(alpha: float, topk: int = 1):
    """One 10x10 target at the origin and two anchors inside it.

    Anchor 0 predicts s = .5 and a concentric square of side sqrt(80) (IoU = CIoU = 80/100 = .8);
    anchor 1 predicts s = .1 and side sqrt(95) (u = .95).
    """
    pd_scores = torch.tensor([[[0.5], [0.1]]])  # (B=1, N=2, C=1)
    pd_bboxes = torch.tensor([[_concentric_square(math.sqrt(80)), _concentric_square(math.sqrt(95))]])
    anchors = torch.tensor([[3.0, 3.0], [7.0, 7.0]])
    gt_labels = torch.zeros((1, 1, 1))
    gt_bboxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    mask_gt = torch.ones((1, 1, 1))
    return assign(DensePredictions(pd_scores, pd_bboxes), anchors, gt_labels, gt_bboxes, mask_gt,
                  topk=topk, alpha=alpha, beta=6.0)


@pytest.mark.parametrize("alpha,expected,winner", [(1.0, (0.131072, 0.073509), 0), (0.5, (0.185364, 0.232456), 1)])
def test_tal_metric_numbers_and_ranking_flip(alpha, expected, winner):
    result = _two_anchor_scene(alpha)
    pairs = result.candidates
    assert pairs.anchor.tolist() == [0, 1]
    torch.testing.assert_close(pairs.overlap, torch.tensor([0.8, 0.95]), rtol=1e-5, atol=1e-6)
    # t = s^alpha * u^6: .5 * .8^6 = .131072, sqrt(.5) * .262144 = .185364; .1 * .95^6 = .073509 ...
    torch.testing.assert_close(pairs.align_metric, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # top-1: the higher t wins, so alpha flips which anchor is the positive
    assert result.anchor.tolist() == [winner]
    # a single positive normalises to t * u / (t + eps) = u
    torch.testing.assert_close(result.score, pairs.overlap[winner:winner + 1], rtol=1e-6, atol=1e-7)


def test_normalised_scores_follow_formula():
    result = _two_anchor_scene(alpha=0.5, topk=2)
    t, u = result.align_metric, result.overlap
    # both anchors positive: score_i = t_i * max(u) / (max(t) + 1e-9)
    expected = t * u.max() / (t.max() + 1e-9)
    torch.testing.assert_close(result.score, expected)
    assert result.score.max().item() == pytest.approx(0.95, rel=1e-5)  # best-aligned gets the best overlap


# -- hand-built geometry -------------------------------------------------------------------------
def test_candidates_strictly_inside():
    points, strides = make_anchors([(1, 1, 12, 12)], [8])
    centres = points * strides  # (144, 2): 4, 12, ..., 92 px
    # box (16,16)-(80,80): centres 20, 28, ..., 76 are inside -> 8 x 8 = 64
    # box (20,20)-(76,76): centres 20 and 76 sit on the edges (distance 0, not > eps) -> 6 x 6 = 36
    boxes = torch.tensor([[[16.0, 16.0, 80.0, 80.0], [20.0, 20.0, 76.0, 76.0]]])
    counts = select_candidates_in_gts(centres, boxes).sum(-1)
    assert counts.tolist() == [[64, 36]]


def test_conflict_goes_to_highest_overlap():
    # One anchor at (5, 5) inside both targets; its predicted box equals target 1 exactly, so
    # u = 1 for target 1 and IoU 25/100 - penalties for target 0: target 1 wins the anchor.
    pd_scores = torch.tensor([[[0.6, 0.3], [0.2, 0.2]]])  # (1, N=2, C=2); anchor 1 is outside both
    pd_bboxes = torch.tensor([[[2.5, 2.5, 7.5, 7.5], [0.0, 0.0, 1.0, 1.0]]])
    anchors = torch.tensor([[5.0, 5.0], [50.0, 50.0]])
    gt_labels = torch.tensor([[[0.0], [1.0]]])
    gt_bboxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [2.5, 2.5, 7.5, 7.5]]])
    result = assign(DensePredictions(pd_scores, pd_bboxes), anchors, gt_labels, gt_bboxes, torch.ones(1, 2, 1),
                    topk=1, alpha=0.5, beta=6.0)
    assert result.anchor.tolist() == [0] and result.gt.tolist() == [1] and result.label.tolist() == [1]
    assert result.rule.tolist() == [1]  # in its own top-k, won the conflict
    torch.testing.assert_close(result.overlap, torch.tensor([1.0]))
    torch.testing.assert_close(result.class_score, torch.tensor([0.3]))
    dense = TaskAlignedAssigner(1, 2, 0.5, 6.0)(pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, torch.ones(1, 2, 1))
    assert dense.fg_mask.tolist() == [[True, False]]
    # background anchor points at target 0, as upstream's argmax over an all-zero column
    assert dense.target_gt_idx.tolist() == [[1, 0]] and dense.target_labels.tolist() == [[1, 0]]
    torch.testing.assert_close(dense.target_scores[0, 0], torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-7)


def test_assigner_without_targets_returns_upstream_floats():
    out = TaskAlignedAssigner(10, 3)(torch.rand(2, 12, 3), torch.rand(2, 12, 4), torch.rand(12, 2),
                                     torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1))
    assert out.target_labels.dtype == torch.float32 and bool((out.target_labels == 3).all())
    assert out.fg_mask.dtype == torch.float32 and not bool(out.fg_mask.any())


# -- DFL -------------------------------------------------------------------------------------------
def test_dfl_two_bins():
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))  # one positive, 4 sides
    target = torch.tensor([[3.3, 0.0, 7.5, 14.99]])
    log_p = logits.log_softmax(-1)
    # 3.3 -> bins 3, 4 with weights .7, .3; 0 -> bin 0 with weight 1; 7.5 -> 7, 8 halves; 14.99 -> 14, 15
    per_side = torch.stack([-(0.7 * log_p[0, 3] + 0.3 * log_p[0, 4]), -log_p[1, 0],
                            -(0.5 * log_p[2, 7] + 0.5 * log_p[2, 8]), -(0.01 * log_p[3, 14] + 0.99 * log_p[3, 15])])
    torch.testing.assert_close(df_loss(logits, target), per_side.mean().view(1, 1), rtol=1e-5, atol=1e-6)


def test_two_bin_logits_reach_the_distance():
    logits = two_bin_logits(torch.tensor([3.3, 0.25, 12.0]))
    probs = logits.softmax(-1)
    torch.testing.assert_close(probs @ torch.arange(16.0), torch.tensor([3.3, 0.25, 12.0]), rtol=1e-5, atol=1e-5)
    assert probs[0, 3].item() == pytest.approx(0.7, abs=1e-5) and probs[0, 4].item() == pytest.approx(0.3, abs=1e-5)


# -- the fast path equals a dense, upstream-shaped reference ------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_matches_dense_reference(seed):
    nc = [1, 3, 7][seed % 3]
    fl_gamma = 1.5 if seed == 5 else 0.0
    feats, targets = make_inputs(2, 3 + seed, nc=nc, size=128 if seed % 2 else 160, seed=seed, requires_grad=True)
    ours = compute_loss(feats, targets, nc=nc, fl_gamma=fl_gamma, topk=10 - seed)
    ours.total.backward()
    grads = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    total, items, fg_mask = dense_reference_loss(feats, targets, nc=nc, fl_gamma=fl_gamma, topk=10 - seed)
    total.backward()
    assert torch.equal(ours.assignment.fg_mask, fg_mask)
    torch.testing.assert_close(ours.items, items, rtol=2e-5, atol=1e-6)
    for mine, ref in zip(grads, (f.grad for f in feats)):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_gradcheck_float64():
    # The assignment (target scores, boxes) is computed on detached predictions, as upstream, so the
    # loss is checked with it frozen: the per-level softplus + gather function with its hand-written
    # backward, the box/DFL loss and the class terms, each against finite differences in float64.
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn((2, 6, 3, 4), generator=gen, dtype=torch.float64, requires_grad=True)
    cells = torch.tensor([0, 5, 11, 7])  # image 0: cells 0, 5; image 1: 11, 7
    for with_background in (True, False):
        fn = lambda x: _LevelGather.apply(x, cells, (2, 2), 2, with_background)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (feat,))
    pred_dist = torch.randn((1, 3, 64), generator=gen, dtype=torch.float64, requires_grad=True)
    anchors = torch.tensor([[2.5, 2.5], [3.5, 2.5], [2.5, 3.5]], dtype=torch.float64)
    pred_boxes = torch.tensor([[[1.0, 1.2, 4.0, 4.5], [2.0, 1.0, 5.5, 4.0], [0.5, 2.0, 4.0, 6.0]]],
                              dtype=torch.float64, requires_grad=True)
    target_boxes = torch.tensor([[[1.2, 1.0, 4.4, 4.0]] * 3], dtype=torch.float64)
    target_scores = torch.tensor([[[0.7], [0.2], [0.5]]], dtype=torch.float64)
    fg = torch.tensor([[True, True, True]])
    box_fn = lambda d, b: BboxLoss(15)(d, b, anchors, target_boxes, target_scores, 1.4, fg)[:2]  # noqa: E731
    assert torch.autograd.gradcheck(box_fn, (pred_dist, pred_boxes))
    logits = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(5, generator=gen, dtype=torch.float64)
    for fl_gamma in (0.0, 1.5):
        assert torch.autograd.gradcheck(lambda x: _bce_focal(x, scores, 2.0, fl_gamma), (logits,))


@pytest.mark.parametrize("fl_gamma", [0.0, 2.0])
def test_gradient_equals_dense_reference_float64(fl_gamma):
    # the hand-written level backward vs plain autograd through the dense reference, in float64
    feats, targets = make_inputs(2, 3, nc=2, size=64, seed=3, dtype=torch.float64, requires_grad=True)
    compute_loss(feats, targets, nc=2, fl_gamma=fl_gamma, cls_pw=1.7).total.backward()
    ours = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    dense_reference_loss(feats, targets, nc=2, fl_gamma=fl_gamma, cls_pw=1.7)[0].backward()
    for mine, ref in zip(ours, (f.grad for f in feats)):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12)


def test_empty_targets_only_class_loss():
    feats, _ = make_inputs(2, 1, nc=3, size=64, seed=4, requires_grad=True)
    out = compute_loss(feats, torch.zeros((0, 6)), nc=3)
    background = sum(F.binary_cross_entropy_with_logits(f[:, 64:], torch.zeros_like(f[:, 64:]), reduction="sum")
                     for f in feats)
    # nothing is foreground: box = dfl = 0, cls = 0.5 * sum BCE(x, 0) / max(0, 1); total = items.sum() * B
    assert out.items[0].item() == 0.0 and out.items[2].item() == 0.0
    torch.testing.assert_close(out.items[1], 0.5 * background.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.total, out.items.sum() * 2)
    out.total.backward()
    torch.testing.assert_close(feats[0].grad[:, 64:], torch.sigmoid(feats[0][:, 64:].detach()) * 0.5 * 2)
    assert bool((feats[0].grad[:, :64] == 0).all())


def test_label_smoothing_is_unused_like_upstream():
    feats, targets = make_inputs(1, 4, nc=3, size=96, seed=7)
    plain = compute_loss(feats, targets, nc=3)
    smoothed = compute_loss(feats, targets, nc=3, label_smoothing=0.2)
    assert torch.equal(plain.items, smoothed.items)


# -- trace -------------------------------------------------------------------------------------
def test_trace_is_bit_identical_and_complete():
    feats, targets = make_inputs(2, 5, nc=4, size=128, seed=11, requires_grad=True)
    plain = compute_loss(feats, targets, nc=4)
    plain.total.backward()
    grads = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    trace = Trace()
    traced = compute_loss(feats, targets, nc=4, trace=trace)
    traced.total.backward()
    assert torch.equal(plain.total, traced.total) and torch.equal(plain.items, traced.items)
    assert all(torch.equal(a, f.grad) for a, f in zip(grads, feats))
    assert trace.names() == ["inputs.split", "inputs.anchors", "inputs.targets", "inputs.decode",
                             "assigner.candidates", "assigner.topk",
                             "assigner.conflicts", "assigner.normalise", "loss.cls", "loss.dfl", "loss.box",
                             "loss.total"]
    assert "dim 1" in trace.get("inputs.split").explain and "wrong" in trace.get("inputs.split").explain
    candidates = trace.get("assigner.candidates")
    torch.testing.assert_close(candidates["t"], candidates["s"].pow(0.5) * candidates["u"].pow(6.0))
    dfl = trace.get("loss.dfl")
    torch.testing.assert_close(dfl["weight_left"], (dfl["bin_right"] - dfl["target_ltrb"]))
    torch.testing.assert_close(dfl["expected"], dfl["probs"] @ torch.arange(16.0))
    torch.testing.assert_close(trace.get("loss.total")["total"], traced.total.detach())


# -- scheme ------------------------------------------------------------------------------------
def _scene(**overrides) -> Scene:
    base = dict(scheme="yolov9", width=160, height=128, nc=3, device="cpu", progress=1.0,
                boxes=(Box(0, 20, 24, 84, 100), Box(2, 90, 30, 150, 90)))
    base.update(overrides)
    return Scene(**base)


def test_scheme_registered_with_upstream_defaults():
    spec = get_scheme("yolov9")
    assert spec.strides == (8, 16, 32) and spec.anchors_px is None
    defaults = {p.name: p.default for p in spec.params}
    assert defaults == {"topk": 10, "alpha": 0.5, "beta": 6.0, "cls_pw": 1.0, "label_smoothing": 0.0, "fl_gamma": 0.0}


def test_explain_perfect_head():
    result = explain(_scene(), Trace())
    pos = result.positives
    P = pos["gt"].numel()
    assert P > 0 and set(pos["gt"].tolist()) == {0, 1}
    for name in ("gt", "level", "anchor", "gi", "gj", "rule"):
        assert pos[name].dtype == torch.int64 and pos[name].shape == (P,)
    # a perfect head decodes every positive onto its box: CIoU 1, expected distances = targets
    torch.testing.assert_close(pos["ciou"], torch.ones(P), rtol=0, atol=1e-4)
    torch.testing.assert_close(pos["dfl_expected"], pos["ltrb_target"], rtol=0, atol=1e-4)
    torch.testing.assert_close(pos["pred_box_px"], pos["target_box_px"], rtol=0, atol=1e-2)
    assert result.losses["box"].item() < 1e-3
    # maps are (1, H, W) per level and agree with the table
    assert [tuple(m.shape) for m in result.maps["fg"]] == [(1, 16, 20), (1, 8, 10), (1, 4, 5)]
    assert sum(float(m.sum()) for m in result.maps["fg"]) == P
    total_score = sum(float(m.sum()) for m in result.maps["target_score"])
    assert total_score == pytest.approx(float(pos["target_score"].sum()), rel=1e-5)
    for row in range(P):
        level, gi, gj = int(pos["level"][row]), int(pos["gi"][row]), int(pos["gj"][row])
        assert result.maps["fg"][level][0, gj, gi] == 1
    losses = result.losses
    torch.testing.assert_close(losses["total"], losses["box"] + losses["cls"] + losses["dfl"])
    assert {c.name for c in get_scheme("yolov9").columns} >= {"s", "u", "align_metric", "target_score", "ciou"}


def test_explain_pins():
    # P4 cell (2, 3) has its centre at (40, 56) px, inside box 0; pin it to a box 8 px to the right
    pinned = Pin(level=1, anchor=0, gi=2, gj=3, cx=60.0, cy=62.0, w=64.0, h=76.0)
    trace = Trace()
    result = explain(_scene(pins=(pinned,)), trace)
    decode = trace.get("inputs.decode")
    anchor = 20 * 16 + 3 * 10 + 2
    row = (decode["anchor"] == anchor).nonzero().item()
    torch.testing.assert_close(decode["pred_box_px"][row], torch.tensor([28.0, 24.0, 92.0, 100.0]), rtol=0, atol=1e-2)
    assert not any("unreachable" in n for n in result.notes)
    far = Pin(level=0, anchor=0, gi=0, gj=0, cx=150.0, cy=120.0, w=10.0, h=10.0)
    notes = explain(_scene(pins=(far,))).notes
    assert any("unreachable" in n and "outside the pinned box" in n for n in notes)
    assert any("unreachable" in n and "16 bins" in n for n in notes)


def test_explain_empty_scene():
    result = explain(_scene(boxes=()))
    assert result.positives["gt"].numel() == 0
    assert result.losses["box"].item() == 0.0 and result.losses["cls"].item() > 0
