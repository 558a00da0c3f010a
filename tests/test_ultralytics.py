"""Ultralytics 8.4.190 family: conformance, hand-built numbers, a dense reference, properties, trace."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab_testing import load_vector_file, vector_cases
from losscore import registry
from losscore.conformance import ELEMENT_TOL, compare, run_case
from losscore.conformance import check_case
from losscore.scene import STAGE_NAME
from losscore.trace import Trace, decode_tensor
from losscore.ultralytics import (FAMILY, BboxLoss, DensePredictions, DFLoss, E2EDetectLoss, E2ELoss,
                                  TaskAlignedAssigner, assign, bbox2dist, bbox_iou, candidate_pairs, detection_loss,
                                  e2e_weights, make_anchors, select_candidates_in_gts, v8DetectionLoss)


def _families():
    known = tuple(f for f in registry.FAMILIES if f.name != FAMILY.name)
    return known + (FAMILY,)


# -- conformance -------------------------------------------------------------------------------
@pytest.mark.parametrize("group_name,case", vector_cases("ultralytics"))
def test_conformance(group_name, case, device):
    with registry.using(_families()):
        assert check_case("ultralytics", group_name, case, device) == []


def _loss_cases():
    return [param for param in vector_cases("ultralytics")  # none when the vectors are absent (a skip, not an error)
            if param.values[0] in ("v8_detection_loss", "e2e_detect_loss", "e2e_loss")]


@pytest.mark.parametrize("group_name,case", list(_loss_cases()))
def test_loss_diagnostics(group_name, case):
    """The diagnostics the harness skips: exact where no topk tie can decide (README "Ties")."""
    with registry.using(_families()):
        actual = run_case("ultralytics", group_name, case["inputs"])
    expected = case["expected"]
    pairs = [(actual["diagnostics"], expected["diagnostics"])] if "diagnostics" in expected else \
        [(actual["branches"][b]["diagnostics"], expected["branches"][b]["diagnostics"]) for b in expected["branches"]]
    for ours, theirs in pairs:
        assert ours["fg_count_tie_sensitive"] == theirs["fg_count_tie_sensitive"]
        if theirs["fg_count_tie_sensitive"]:  # only positives with t > 0 and the maxima are comparable
            keep = ours["positives"]["align_metric"] > 0
            ours = {**ours, "positives": {k: v[keep] for k, v in ours["positives"].items()}}
            theirs_pos = {k: decode_tensor(v) for k, v in theirs["positives"].items()}
            keep = theirs_pos["align_metric"] > 0
            theirs = {**theirs, "positives": {k: v[keep] for k, v in theirs_pos.items()}}
            for key in ("fg_count", "n_conflict_anchors", "n_won_by_non_selecting_gt", "tie_flags"):
                ours.pop(key), theirs.pop(key)
        assert compare(ours, theirs, dict(rtol=1e-4, atol=1e-6)) == []


# -- overlap ---------------------------------------------------------------------------------------
def test_ciou_hand_numbers():
    # gt 2x2 and prediction 2x4 sharing the bottom-left corner (xyxy):
    # inter 4, union 4 + 8 - 4 = 8 -> IoU .5; enclosing 2x4 -> c² = 20; centres (1, 1), (1, 2) -> rho² = 1
    # DIoU = .5 - 1/20 = .45; v = 4/pi² (atan(2/4) - atan(2/2))² = .0419568
    # alpha = v / (1 - .5 + v) = .0774174 -> CIoU = .45 - v * alpha = .4467518
    gt, pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 2.0, 4.0]])
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(1.0)) ** 2
    assert bbox_iou(gt, pred, xywh=False).item() == pytest.approx(0.5, rel=1e-6)
    assert bbox_iou(gt, pred, xywh=False, DIoU=True).item() == pytest.approx(0.45, rel=1e-6)
    assert bbox_iou(gt, pred, xywh=False, CIoU=True).item() == pytest.approx(0.45 - v * v / (0.5 + v), rel=1e-6)
    # GIoU: the enclosing box is the prediction itself, so GIoU = IoU
    assert bbox_iou(gt, pred, xywh=False, GIoU=True).item() == pytest.approx(0.5, rel=1e-6)


def test_ciou_alpha_is_written_one_minus_iou_plus_v():
    trace = Trace()
    boxes = torch.rand(64, 4, generator=torch.Generator().manual_seed(0)) * 10
    box1 = torch.cat((boxes[:, :2], boxes[:, :2] + 1 + boxes[:, 2:]), -1)
    box2 = box1 + torch.rand(64, 4, generator=torch.Generator().manual_seed(1))
    out = bbox_iou(box1, box2, xywh=False, CIoU=True, trace=trace)
    terms = trace.get("iou.terms")
    # same ops in the same order as upstream: ((1 - iou) + v) + eps, bit for bit
    assert torch.equal(terms["alpha"], terms["v"] / (1 - terms["iou"] + terms["v"] + 1e-7))
    assert torch.equal(out, bbox_iou(box1, box2, xywh=False, CIoU=True))


# -- candidates and the small-object enlargement ---------------------------------------------------
def _anchors_px(h: int, w: int, strides=(8, 16, 32)):
    points, stride = make_anchors([(h // s, w // s) for s in strides], strides)
    return points * stride


def test_tiny_box_gets_candidates_from_the_enlargement():
    anchors = _anchors_px(64, 64)  # P3 centres 4, 12, 20, ...; P4 8, 24, 40, 56; P5 16, 48
    gt = torch.tensor([[[14.0, 14.0, 18.0, 18.0]]])  # 4x4 px between the P3 centres 12 and 20
    mask = torch.ones(1, 1, 1)
    # inside the box itself: only the P5 centre (16, 16)
    assert int(select_candidates_in_gts(anchors, gt).sum()) == 1
    # raised to 16x16 about (16, 16) -> (8, 8, 24, 24): P3 12 and 20 (4 anchors), P4 8 / 24 sit on the
    # edges (distance 0, not > eps), P5 (16, 16) -> 5 candidates
    assert int(select_candidates_in_gts(anchors, gt, mask, stride_val=16).sum()) == 5
    trace = Trace()
    scores, boxes = torch.full((1, anchors.shape[0], 1), 0.5), anchors.repeat(1, 2).unsqueeze(0)
    result = assign(DensePredictions(scores, boxes), anchors, torch.zeros(1, 1, 1), gt, mask, topk=10,
                    stride=[8, 16, 32], trace=trace)
    stage = trace.get("assigner.candidates")
    assert stage["candidate_count"].tolist() == [[5]] and stage["in_box_count"].tolist() == [[1]]
    assert stage["in_box"].tolist() == [False, False, False, False, True]  # (b, gt, anchor) order: P3 then P5
    assert result.enlarged.tolist() == [[[True, True]]]


def test_side_equal_to_stride_val_is_kept():
    gt = torch.tensor([[[8.0, 8.0, 24.0, 20.0]]])  # 16 wide (kept: strict <), 12 high (raised)
    anchors = _anchors_px(64, 64)
    result = assign(DensePredictions(torch.ones(1, anchors.shape[0], 1), anchors.repeat(1, 2).unsqueeze(0)),
                    anchors, torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1), topk=10, stride=[8, 16, 32])
    assert result.enlarged.tolist() == [[[False, True]]]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["grid", "shuffled", "reversed", "random"]))
def test_candidate_pairs_equal_the_dense_mask(seed, layout):
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors_px(96, 64)
    if layout == "shuffled":
        anchors = anchors[torch.randperm(anchors.shape[0], generator=g)]
    elif layout == "reversed":
        anchors = anchors.flip(0)
    elif layout == "random":
        anchors = (torch.rand(50, 2, generator=g) * 64).round()  # repeated x / y values included
    corner = torch.rand(7, 2, generator=g) * 80 - 8
    boxes = torch.cat((corner, corner + torch.rand(7, 2, generator=g) * 40), -1).round()  # edges on anchors too
    valid = torch.rand(7, generator=g) > 0.2
    box, anchor = candidate_pairs(anchors, boxes, valid)
    dense = select_candidates_in_gts(anchors, boxes.unsqueeze(0))[0] & valid.unsqueeze(1)  # (G, A)
    ref_box, ref_anchor = dense.nonzero(as_tuple=True)
    assert torch.equal(box, ref_box) and torch.equal(anchor, ref_anchor)


# -- assignment: hand-built scenes -----------------------------------------------------------------
def _conflict_scene():
    """Anchors X (10, 10), Y (30, 10), Z (10, 30); targets A (0, 0, 20, 20) class 0, B (0, 0, 40, 20)
    class 1, C (0, 0, 20, 40) class 2: X lies in all three, Y only in B, Z only in C.

    X and Y predict exactly B's box (u_B = 1); Z predicts a far box (u = 0). Class scores at X
    (.9, .1, .9), at Y (0, .5, 0). With top-1, alpha 1: A and C both pick X, B picks Y (.5 > .1).
    """
    anchors = torch.tensor([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0]])
    pd_bboxes = torch.tensor([[[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 40.0, 20.0], [100.0, 100.0, 110.0, 110.0]]])
    pd_scores = torch.tensor([[[0.9, 0.1, 0.9], [0.0, 0.5, 0.0], [0.0, 0.0, 0.9]]])
    gt_bboxes = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 20.0, 40.0]]])
    gt_labels = torch.tensor([[[0.0], [1.0], [2.0]]])
    return pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, torch.ones(1, 3, 1)


def test_conflict_goes_to_the_best_overlap_even_if_it_did_not_select_the_anchor():
    pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, mask = _conflict_scene()
    trace = Trace()
    result = assign(DensePredictions(pd_scores, pd_bboxes), anchors, gt_labels, gt_bboxes, mask, topk=1, alpha=1.0,
                    beta=6.0, stride=[1], trace=trace)
    conflicts = trace.get("assigner.conflicts")
    assert conflicts["anchor"].tolist() == [0] and conflicts["claims"].tolist() == [2]
    assert conflicts["winner"].tolist() == [1] and conflicts["winner_selected"].tolist() == [False]
    # X goes to B (u = 1 beats A's .447 and C's .237) although B's own top-1 was Y
    assert result.anchor.tolist() == [0, 1] and result.gt.tolist() == [1, 1]
    assert result.topk_rank.tolist() == [-1, 0] and result.rule.tolist() == [2, 0]
    # B's positives: t = .1 * 1^6 at X, .5 at Y; scores t * max(u) / (max(t) + eps) = .2 and 1
    torch.testing.assert_close(result.score, torch.tensor([0.2, 1.0]), rtol=1e-6, atol=1e-7)
    dense = TaskAlignedAssigner(1, 3, 1.0, 6.0, stride=[1])(pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, mask)
    assert dense.target_gt_idx.tolist() == [[1, 1, 0]] and dense.fg_mask.tolist() == [[True, True, False]]
    # background anchor Z carries target 0's label and box, with zero scores
    assert dense.target_labels.tolist() == [[1, 1, 0]] and dense.target_bboxes[0, 2].tolist() == [0, 0, 20, 20]


def test_conflict_with_all_zero_overlaps_goes_to_target_zero():
    # X = (10, 10) lies in targets 1 and 2, not in target 0; it predicts a far box, so u = 0 everywhere.
    # top-k = 2 = every anchor, so both targets keep X (a zero-metric candidate) without any tie order.
    anchors = torch.tensor([[10.0, 10.0], [100.0, 100.0]])
    pd_bboxes = torch.tensor([[[200.0, 200.0, 210.0, 210.0], [200.0, 200.0, 210.0, 210.0]]])
    gt_bboxes = torch.tensor([[[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 25.0, 25.0]]])
    gt_labels = torch.tensor([[[2.0], [0.0], [1.0]]])
    out = TaskAlignedAssigner(2, 3, 0.5, 6.0, stride=[1])(torch.full((1, 2, 3), 0.5), pd_bboxes, anchors, gt_labels,
                                                         gt_bboxes, torch.ones(1, 3, 1))
    # upstream's argmax of an all-zero overlap column is target 0, which does not even contain X
    assert out.fg_mask.tolist() == [[True, False]] and out.target_gt_idx.tolist() == [[0, 0]]
    assert out.target_labels.tolist() == [[2, 2]] and not bool(out.target_scores.any())


def test_topk2_keeps_the_best_aligned_positive():
    anchors = _anchors_px(32, 32, strides=(8,))  # 4x4 anchors at 4, 12, 20, 28
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])  # anchors (4, 4), (12, 4), (4, 12), (12, 12)
    scores = torch.zeros(1, 16, 1)
    scores[0, [0, 1, 4, 5], 0] = torch.tensor([0.2, 0.9, 0.5, 0.7])
    boxes = gt[0].expand(16, 4).unsqueeze(0)  # every anchor predicts the target: u = 1, t = sqrt(s)
    plain = assign(DensePredictions(scores, boxes), anchors, torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1), topk=3,
                   alpha=0.5, stride=[8])
    capped = assign(DensePredictions(scores, boxes), anchors, torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1), topk=3,
                    alpha=0.5, stride=[8], topk2=1)
    assert plain.anchor.tolist() == [1, 4, 5]  # top-3 by s: .9, .7, .5
    assert capped.anchor.tolist() == [1] and capped.score.tolist() == pytest.approx([1.0])


def test_normalised_score_identity():
    pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, mask = _conflict_scene()
    r = assign(DensePredictions(pd_scores, pd_bboxes), anchors, gt_labels, gt_bboxes, mask, topk=3, stride=[1])
    expected = r.align_metric * r.pos_overlap_max[r.batch, r.gt] / (r.pos_align_max[r.batch, r.gt] + 1e-9)
    assert torch.equal(r.score, expected)


def test_assigner_without_targets_returns_upstream_floats():
    out = TaskAlignedAssigner(10, 3)(torch.rand(2, 12, 3), torch.rand(2, 12, 4), torch.rand(12, 2),
                                     torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1))
    assert out.target_labels.dtype == torch.float32 and bool((out.target_labels == 3).all())
    assert out.fg_mask.dtype == torch.bool and not bool(out.fg_mask.any())
    assert out.target_gt_idx.dtype == torch.float32


def test_topk_larger_than_anchors_raises_like_torch_topk():
    with pytest.raises(RuntimeError):
        TaskAlignedAssigner(13, 1)(torch.rand(1, 4, 1), torch.rand(1, 4, 4), torch.rand(4, 2), torch.zeros(1, 1, 1),
                                   torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), torch.ones(1, 1, 1))


# -- assignment against a dense reference written from the README -----------------------------------
def _dense_reference(pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, mask_gt, topk, topk2, alpha, beta,
                     stride_val, eps=1e-9):
    """Every (target, anchor) pair densely, step by step as README-ultralytics.md describes."""
    B, M = gt_bboxes.shape[:2]
    valid = mask_gt[..., 0] > 0  # (B, M)
    centre, size = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2, gt_bboxes[..., 2:] - gt_bboxes[..., :2]
    size = torch.where((size < stride_val) & valid[..., None], torch.full_like(size, stride_val), size)
    grown = torch.cat((centre - size / 2, centre + size / 2), -1)
    inside = select_candidates_in_gts(anchors, grown) & valid[..., None]  # (B, M, A)
    labels = gt_labels[..., 0].long()
    s = pd_scores.gather(2, labels.unsqueeze(1).expand(-1, pd_scores.shape[1], -1)).transpose(1, 2)  # (B, M, A)
    u = bbox_iou(gt_bboxes.unsqueeze(2), pd_bboxes.unsqueeze(1), xywh=False, CIoU=True).squeeze(-1).clamp(0)
    u = torch.where(inside, u, 0.0)
    t = torch.where(inside, s.pow(alpha) * u.pow(beta), 0.0)
    top = torch.zeros_like(inside).scatter_(2, t.topk(topk, -1).indices, True)
    pos = top & inside
    multi = pos.sum(1, keepdim=True) > 1
    best = torch.zeros_like(pos).scatter_(1, u.argmax(1, keepdim=True), True)
    pos = torch.where(multi, best, pos)
    if topk2 != topk:
        pos &= torch.zeros_like(pos).scatter_(2, (t * pos).topk(topk2, -1).indices, True)
    fg, gt_index = pos.any(1), pos.float().argmax(1)
    max_t, max_u = (t * pos).amax(-1, keepdim=True), (u * pos).amax(-1, keepdim=True)
    score = (t * pos * max_u / (max_t + eps)).amax(1)  # (B, A)
    target_scores = torch.zeros_like(pd_scores)
    b, a = fg.nonzero(as_tuple=True)
    target_scores[b, a, labels[b, gt_index[b, a]].clamp(0)] = score[b, a]
    return fg, gt_index, target_scores


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), topk=st.sampled_from([1, 4, 10]), topk2=st.sampled_from([None, 1, 2]),
       stride=st.sampled_from([[8, 16, 32], [1]]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_sparse_assignment_equals_dense_reference(seed, topk, topk2, stride, dtype):
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors_px(64, 96).to(dtype)
    B, M, C, A = 2, 6, 3, anchors.shape[0]
    pd_scores = torch.rand(B, A, C, generator=g, dtype=dtype)
    ltrb = torch.rand(B, A, 4, generator=g, dtype=dtype) * 30
    pd_bboxes = torch.cat((anchors - ltrb[..., :2], anchors + ltrb[..., 2:]), -1)
    corner = torch.rand(B, M, 2, generator=g, dtype=dtype) * torch.tensor([96.0, 64.0], dtype=dtype)
    gt_bboxes = torch.cat((corner, corner + 2 + torch.rand(B, M, 2, generator=g, dtype=dtype) * 40), -1)
    mask = (torch.rand(B, M, 1, generator=g) > 0.25).to(dtype)
    gt_bboxes = gt_bboxes * mask
    gt_labels = torch.randint(0, C, (B, M, 1), generator=g).to(dtype)
    out = TaskAlignedAssigner(topk, C, 0.5, 6.0, stride=stride, topk2=topk2)(pd_scores, pd_bboxes, anchors, gt_labels,
                                                                             gt_bboxes, mask)
    fg, gt_index, target_scores = _dense_reference(pd_scores, pd_bboxes, anchors, gt_labels, gt_bboxes, mask, topk,
                                                   topk2 or topk, 0.5, 6.0, stride[1] if len(stride) > 1 else stride[0])
    # continuous random inputs: positive metrics never tie, so only zero-metric picks could differ,
    # and those carry score 0; compare where the reference has a positive score
    scored = target_scores.sum(-1) > 0
    assert torch.equal(out.fg_mask & scored, fg & scored)
    assert torch.equal(out.target_gt_idx[scored], gt_index[scored])
    torch.testing.assert_close(out.target_scores, target_scores, rtol=1e-5, atol=1e-6)


# -- DFL, box loss -----------------------------------------------------------------------------------
def test_dfl_two_bins_and_in_place_clamp():
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))  # one positive, 4 sides
    target = torch.tensor([[3.3, 0.0, 7.5, 15.5]])
    log_p = logits.log_softmax(-1)
    trace = Trace()
    loss = DFLoss(16)(logits, target, trace=trace)
    # 15.5 is clamped IN PLACE to 16 - 1 - .01 = 14.99 -> bins 14, 15 with weights .01, .99
    assert target[0, 3].item() == pytest.approx(14.99)
    # 3.3 -> bins 3, 4 with weights .7, .3; 0 -> bin 0 (weight 1); 7.5 -> 7, 8 halves
    per_side = torch.stack([-(0.7 * log_p[0, 3] + 0.3 * log_p[0, 4]), -log_p[1, 0],
                            -(0.5 * log_p[2, 7] + 0.5 * log_p[2, 8]), -(0.01 * log_p[3, 14] + 0.99 * log_p[3, 15])])
    torch.testing.assert_close(loss, per_side.mean().view(1, 1), rtol=1e-5, atol=1e-6)
    assert trace.get("dfl.bins")["bin_left"].tolist() == [[3, 0, 7, 14]]


def test_reg_max_1_l1_term_by_hand():
    # one positive at anchor (2.5, 2.5) grid, stride 8, image H 64 x W 128
    # target (1, 1, 4, 5) grid -> sides (1.5, 1.5, 1.5, 2.5) * 8 = (12, 12, 12, 20) px
    #   / (W, H, W, H) -> (.09375, .1875, .09375, .3125)
    # prediction (1, 1, 2, 2) * 8 = (8, 8, 16, 16) px -> (.0625, .125, .125, .25)
    # |diff| = (.03125, .0625, .03125, .0625), mean .046875; weight .5, target_scores_sum 1 -> .0234375
    pred_dist = torch.tensor([[[1.0, 1.0, 2.0, 2.0]]])
    anchor = torch.tensor([[2.5, 2.5]])
    pred_box = torch.tensor([[[1.5, 1.5, 4.5, 4.5]]])
    target = torch.tensor([[[1.0, 1.0, 4.0, 5.0]]])
    scores = torch.tensor([[[0.5, 0.0]]])
    loss_iou, loss_l1 = BboxLoss(1)(pred_dist, pred_box, anchor, target, scores, torch.tensor(1.0),
                                    torch.tensor([[True]]), torch.tensor([64.0, 128.0]), torch.tensor([[8.0]]))
    assert loss_l1.item() == pytest.approx(0.0234375, rel=1e-6)
    # the L1 path does not clamp: an anchor outside its target gives negative distances
    assert bbox2dist(anchor, torch.tensor([[3.0, 3.0, 5.0, 5.0]])).tolist() == [[-0.5, -0.5, 2.5, 2.5]]
    assert bbox2dist(anchor, torch.tensor([[3.0, 3.0, 5.0, 5.0]]), 15).tolist() == [[0.0, 0.0, 2.5, 2.5]]


def test_bbox_loss_without_foreground_is_exactly_zero():
    pred = torch.randn(1, 3, 64, requires_grad=True)
    loss_iou, loss_dfl = BboxLoss(16)(pred, torch.rand(1, 3, 4), torch.rand(3, 2), torch.rand(1, 3, 4),
                                      torch.zeros(1, 3, 2), torch.tensor(1.0), torch.zeros(1, 3, dtype=torch.bool),
                                      torch.tensor([32.0, 32.0]), torch.ones(3, 1))
    assert loss_iou.item() == 0.0 and loss_dfl.item() == 0.0
    (loss_iou + loss_dfl).backward()  # pred_dist stays in the graph
    assert pred.grad is not None and not bool(pred.grad.any())


# -- the detection losses ----------------------------------------------------------------------------
def _head(B: int, nc: int, reg_max: int, size: int = 64, seed: int = 0, dtype=torch.float32,
          requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    feats = [(torch.randn(B, 4 * reg_max + nc, size // s, size // s, generator=g) * 2).to(dtype)
             .requires_grad_(requires_grad) for s in (8, 16, 32)]
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.4, 0.3], [0, 1, 0.7, 0.6, 0.2, 0.5], [B - 1, 0, 0.5, 0.5, 0.05, 0.08]],
                           dtype=dtype)
    return feats, targets


def test_no_targets_leaves_only_the_class_loss():
    feats, _ = _head(2, 3, 16)
    out = detection_loss(feats, torch.zeros(0, 6), nc=3)
    scores = torch.cat([f[:, 64:].reshape(2, 3, -1) for f in feats], 2)
    # every target is 0 and target_scores_sum is max(0, 1) = 1: cls = sum softplus(logit), times .5 and batch 2
    torch.testing.assert_close(out.loss[1], torch.nn.functional.softplus(scores).sum() * 0.5 * 2)
    assert out.loss[0].item() == 0.0 and out.loss[2].item() == 0.0


def test_gains_come_from_hyp_and_class_weights_scale_bce():
    feats, targets = _head(2, 3, 16, seed=3)
    base = detection_loss(feats, targets, nc=3)
    moved = detection_loss(feats, targets, nc=3, hyp={"box": 1.0, "cls": 2.0, "dfl": 3.0})
    torch.testing.assert_close(moved.items, torch.stack((base.box, base.cls * 2, base.dfl * 3)))
    weighted = detection_loss(feats, targets, nc=3, class_weights=torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(weighted.cls, base.cls * 2)


def test_e2e_weight_schedule():
    assert e2e_weights(0, 100) == (0.8, 1 - 0.8)  # 0.19999999999999996
    assert e2e_weights(50, 100) == pytest.approx(((1 - 50 / 99) * 0.7 + 0.1, 1 - ((1 - 50 / 99) * 0.7 + 0.1)))
    assert e2e_weights(99, 100)[0] == pytest.approx(0.1) and e2e_weights(500, 100)[0] == pytest.approx(0.1)
    loss = E2ELoss(nc=3, hyp={"epochs": 2})
    loss.update()
    assert (loss.o2m, loss.o2o) == e2e_weights(1, 2)


def test_e2e_schedule_vectors_are_exact():
    for case in load_vector_file("ultralytics")["groups"]["e2e_schedule"]:
        loss = E2ELoss(hyp={"epochs": case["inputs"]["epochs"]})
        for _ in range(case["inputs"]["updates"]):
            loss.update()
        assert (loss.o2m, loss.o2o) == (case["expected"]["o2m"], case["expected"]["o2o"])  # same double ops


def test_e2e_losses_combine_their_branches():
    feats, targets = _head(2, 3, 1, seed=5)
    feats_o2o = [f * 0.5 for f in feats]
    e2e = E2ELoss(nc=3, reg_max=1, hyp={"epochs": 10})
    for _ in range(3):
        e2e.update()
    out = e2e.breakdown({"one2many": feats, "one2one": feats_o2o}, targets)
    assert torch.equal(out.loss, out.one2many.loss * e2e.o2m + out.one2one.loss * e2e.o2o)
    assert list(out.items) == ["box_loss", "cls_loss", "l1_loss"]
    assert all(torch.equal(v, out.one2one.items[i]) for i, v in enumerate(out.items.values()))
    # the one-to-one branch (top-k 7, topk2 1) keeps at most one anchor per target
    assert int(out.one2one.assignment.fg_mask.sum()) <= targets.shape[0]
    feats16, _ = _head(2, 3, 16, seed=5)
    legacy = E2EDetectLoss(nc=3).breakdown((feats16, [f * 0.5 for f in feats16]), targets)
    assert torch.equal(legacy.loss, legacy.one2many.loss + legacy.one2one.loss)
    assert int(legacy.one2one.assignment.fg_mask.sum()) <= targets.shape[0]


@pytest.mark.parametrize("reg_max", [16, 1])
def test_gradcheck_float64(reg_max):
    feats, targets = _head(1, 2, reg_max, size=32, seed=7, dtype=torch.float64, requires_grad=True)

    def total(*maps):
        return detection_loss(list(maps), targets, nc=2, reg_max=reg_max).loss.sum()

    assert torch.autograd.gradcheck(total, tuple(feats), eps=1e-6, atol=1e-5, fast_mode=True)


# -- trace -------------------------------------------------------------------------------------------
def _grads(fn, feats):
    for f in feats:
        f.grad = None
    out = fn()
    out.loss.sum().backward()
    return out, [f.grad.clone() for f in feats]


@pytest.mark.parametrize("reg_max", [16, 1])
def test_trace_is_bit_identical_and_complete(reg_max):
    feats, targets = _head(2, 4, reg_max, size=96, seed=11, requires_grad=True)
    loss_fn = v8DetectionLoss(nc=4, reg_max=reg_max, tal_topk=10, tal_topk2=3)
    plain, plain_grads = _grads(lambda: loss_fn.breakdown(feats, targets), feats)
    trace = Trace()
    traced, traced_grads = _grads(lambda: loss_fn.breakdown(feats, targets, trace), feats)
    assert torch.equal(plain.loss, traced.loss) and torch.equal(plain.items, traced.items)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, traced_grads))
    last = "loss.dfl" if reg_max > 1 else "loss.l1"
    assert trace.names() == ["inputs.anchors", "inputs.targets", "assigner.candidates", "assigner.metrics",
                             "assigner.topk", "assigner.conflicts", "assigner.topk2", "assigner.normalise",
                             "loss.cls", "loss.box", last, "loss.total"]
    metrics = trace.get("assigner.metrics")
    torch.testing.assert_close(metrics["t"], metrics["s"].pow(0.5) * metrics["u"].pow(6.0))
    norm = trace.get("assigner.normalise")
    assert torch.equal(norm["score"], traced.assignment.score)
    torch.testing.assert_close(trace.get("loss.total")["total"], traced.loss.sum().detach())
    if reg_max > 1:
        dfl = trace.get("loss.dfl")
        torch.testing.assert_close(dfl["weight_left"] + dfl["weight_right"], torch.ones_like(dfl["weight_left"]))


def test_e2e_trace_names_follow_the_pattern_and_keep_outputs():
    feats, targets = _head(1, 3, 1, seed=2)
    loss_fn = E2ELoss(nc=3, reg_max=1)
    trace = Trace()
    plain = loss_fn.breakdown((feats, feats), targets)
    traced = loss_fn.breakdown((feats, feats), targets, trace)
    assert torch.equal(plain.loss, traced.loss)
    names = trace.names()
    assert all(STAGE_NAME.match(n) for n in names)
    assert names[0] == "o2m_inputs.anchors" and "o2o_assigner.topk2" in names and names[-1] == "e2e.weights"
    weights = trace.get("e2e.weights")
    assert weights.values == {"o2m": 0.8, "o2o": 1 - 0.8}
    # one-to-one: at most one positive per target after topk2
    o2o = trace.get("o2o_assigner.normalise")
    assert o2o["gt"].unique().numel() == o2o["gt"].numel()


def test_assigner_vector_trace_matches_our_trace_stage():
    cases = load_vector_file("ultralytics")["groups"]["assigner"]
    case = next(c for c in cases if c["id"] == "tal_96x128_nc3_overlapping")
    inputs = {k: decode_tensor(v) for k, v in case["inputs"].items()}
    trace = Trace()
    assigner = TaskAlignedAssigner(inputs["topk"], inputs["num_classes"], inputs["alpha"], inputs["beta"],
                                   inputs["stride"], inputs["eps"], inputs["topk2"])
    assigner(inputs["pd_scores"], inputs["pd_bboxes"], inputs["anc_points"], inputs["gt_labels"],
             inputs["gt_bboxes"], inputs["mask_gt"], trace=trace)
    expected = case["expected"]["trace"]
    assert trace.get("assigner.conflicts").values["n_conflict_anchors"] == expected["n_conflict_anchors"]
    topk = trace.get("assigner.topk")
    assert compare({"b": topk["batch"], "gt": topk["gt"], "anchor": topk["anchor"], "overlap": topk["u"]},
                   {k: expected["candidates"][k] for k in ("b", "gt", "anchor", "overlap")}, ELEMENT_TOL) == []
