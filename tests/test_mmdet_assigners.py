"""MMDetection assigners (ATSS, RTMDet's DynamicSoftLabelAssigner): conformance, hand-built numbers,
dense-reference equality, properties, trace, empty inputs."""
from __future__ import annotations

import math
import re
import sys
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from losslab_testing import ROOT, load_vector_file, vector_cases
from losscore import registry
from losscore.conformance import _decode_tree, check_case, compare
from losscore.mmdet_assigners import (INF, ZERO_POSITIVE_REASONS, ATSSAssigner, DynamicSoftLabelAssigner,
                                      anchor_priors, atss_assign, bbox_overlaps, dsl_assign, featmap_sizes,
                                      point_priors)
from losscore.mmdet_assigners.dsl import _lowest_costs, _sigmoid_simd, _soft_class_cost
from losscore.trace import Trace

sys.path.insert(0, str(ROOT))
from benchmarks.bench_mmdet_assigners import (dense_reference_atss, dense_reference_dsl,  # noqa: E402
                                              make_atss_scene, make_dsl_scene)

FAMILY = "mmdet_assigners"
# README-mmdet_assigners.md: max_overlaps rel 1e-5, abs 1e-7; diagnostics rel 1e-5 (abs 1e-7 for the
# ATSS statistics, 1e-6 for the DSL cost terms; soft_cls_cost rel 3e-5 if summed in another order)
MAX_OVERLAPS_TOL = dict(rtol=1e-5, atol=1e-7)
DIAG_TOL = {"soft_cls_cost": dict(rtol=3e-5, atol=1e-6), "pairwise_ious": dict(rtol=1e-5, atol=1e-6),
            "soft_center_prior": dict(rtol=1e-5, atol=1e-6), "iou_cost": dict(rtol=1e-5, atol=1e-6),
            "cost_matrix": dict(rtol=1e-5, atol=1e-6)}
STAGE_NAME = re.compile(r"^[a-z][a-z_]*(\.P\d+)?\.[a-z][a-z_]*$")


def _run(group: str, inputs: dict, device: torch.device) -> dict:
    return registry.runner(FAMILY, group)(_decode_tree(inputs, device), device)


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


# -- conformance -------------------------------------------------------------------------------
@pytest.mark.parametrize("group_name,case", vector_cases(FAMILY))
def test_conformance(group_name, case, device):
    skip = set(case.get("tie_sensitive") or [])
    expected = case["expected"]
    if "error" in expected or not skip & set(expected):
        assert check_case(FAMILY, group_name, case, device) == []
    if "error" in expected:
        return
    actual = _run(group_name, case["inputs"], device)
    # every key once more, with the README's own (tighter) max_overlaps tolerance; the
    # tie-sensitive keys depend on torch.topk's unspecified tie order: skipped, as the README says
    problems = []
    for key, value in expected.items():
        if key in skip or key == "diagnostics":
            continue
        tol = MAX_OVERLAPS_TOL if key == "max_overlaps" else dict(rtol=1e-5, atol=1e-6)
        problems += compare(actual[key], value, tol, key)
    for key, value in expected.get("diagnostics", {}).items():
        if "diagnostics" in skip or f"diagnostics.{key}" in skip:
            continue
        tol = DIAG_TOL.get(key, dict(rtol=1e-5, atol=1e-7))
        problems += compare(actual["diagnostics"][key], value, tol, f"diagnostics.{key}")
    assert problems == []


def test_family_is_registered():
    assert registry.get_family(FAMILY).vectors[FAMILY].keys() == {"atss_assign", "dsl_assign"}


@pytest.mark.parametrize("group_name,case", [p for p in vector_cases(FAMILY) if "error" not in p.values[1]["expected"]])
def test_priors_match_the_generators(group_name, case):
    """The stored priors are exactly what our generators give for the stored generator config."""
    gen = case["inputs"]["prior_generator"]
    sizes = [tuple(s) for s in gen["featmap_sizes"]]
    if gen["type"] == "AnchorGenerator":
        priors, counts = anchor_priors(sizes, gen["strides"], ratios=gen["ratios"],
                                       octave_base_scale=gen["octave_base_scale"],
                                       scales_per_octave=gen["scales_per_octave"], center_offset=gen["center_offset"])
    else:
        priors, counts = point_priors(sizes, gen["strides"], offset=gen["offset"], with_stride=gen["with_stride"])
    stored = _decode_tree(case["inputs"]["priors"], torch.device("cpu"))
    assert torch.equal(priors, stored)
    assert counts == case["inputs"]["num_level_priors"]
    assert sizes == featmap_sizes(case["inputs"]["img_hw"], gen["strides"])


def test_upstream_raises_for_alpha_without_predictions():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(AssertionError):
        atss_assign(boxes, [1], boxes, torch.tensor([0]), alpha=0.8)


# -- bbox_overlaps -----------------------------------------------------------------------------
def test_bbox_overlaps_hand_numbers():
    big = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    others = torch.tensor([[0.0, 0.0, 5.0, 5.0],  # quarter inside: 25 / 100
                           [5.0, 0.0, 15.0, 10.0],  # half shifted: 50 / (100 + 100 - 50)
                           [20.0, 0.0, 30.0, 10.0]])  # disjoint: 0
    torch.testing.assert_close(bbox_overlaps(big, others), torch.tensor([[0.25, 1 / 3, 0.0]]))
    # IoF divides by the FIRST box's area: the quarter box is entirely inside the big one
    torch.testing.assert_close(bbox_overlaps(others, big, mode="iof"), torch.tensor([[1.0], [0.5], [0.0]]))
    # GIoU of the disjoint pair: 0 - (enclosing 30*10 - union 200) / 300
    torch.testing.assert_close(bbox_overlaps(big, others[2:], mode="giou"), torch.tensor([[-1 / 3]]))
    # union floored at eps = 1e-6: two identical zero-area boxes give 0 / 1e-6 = 0, not NaN
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert bbox_overlaps(point, point).item() == 0.0
    assert bbox_overlaps(torch.zeros(0, 4), others).shape == (0, 3)
    assert bbox_overlaps(others, torch.zeros(0, 4), is_aligned=False).shape == (3, 0)
    with pytest.raises(ValueError):
        bbox_overlaps(big, big, mode="diou")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.integers(1, 6), b=st.integers(1, 6))
def test_bbox_overlaps_properties(seed, a, b):
    gen = torch.Generator().manual_seed(seed)

    def boxes(count: int) -> torch.Tensor:  # x, y, w, h on a 1/16 px lattice -> xyxy
        x, y, w, h = (torch.round(torch.rand(count, 4, generator=gen) * 64 * 16) / 16).unbind(1)
        return torch.stack([x, y, x + w, y + h], 1)

    boxes1, boxes2 = boxes(a), boxes(b)
    iou = bbox_overlaps(boxes1, boxes2)
    assert bool(((iou >= 0) & (iou <= 1)).all())
    # the same operations in either argument order, and pairwise == the dense diagonal
    assert torch.equal(iou, bbox_overlaps(boxes2, boxes1).t())
    n = min(a, b)
    assert torch.equal(bbox_overlaps(boxes1[:n], boxes2[:n], is_aligned=True), iou[:n, :n].diagonal())


# -- ATSS: hand-built --------------------------------------------------------------------------
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
FAR = [[20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]]


def test_atss_threshold_hand_numbers():
    # one level, topk 3; target (0,0,10,10) centred at (5,5).
    # A = the target itself (IoU 1, distance 0); B, C shifted by 5 px (IoU 50/150 = 1/3, distance 5);
    # D far away (distance 28.3: not a candidate).
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 5.0, 10.0, 15.0], FAR[0]])
    result = atss_assign(priors, [4], GT, torch.tensor([7]), topk=3)
    cand = result.candidates
    assert sorted(cand.candidate_idxs[:, 0].tolist()) == [0, 1, 2]
    # mean = (1 + 1/3 + 1/3) / 3 = 5/9; unbiased std = sqrt(((4/9)^2 + 2 (2/9)^2) / 2) = sqrt(12)/9
    torch.testing.assert_close(cand.iou_mean, torch.tensor([5 / 9]))
    torch.testing.assert_close(cand.iou_std, torch.tensor([math.sqrt(12) / 9]))
    torch.testing.assert_close(cand.iou_thr, torch.tensor([5 / 9 + math.sqrt(12) / 9]))  # 0.9405: only A passes
    assert result.gt_inds.tolist() == [1, 0, 0, 0]
    assert result.labels.tolist() == [7, -1, -1, -1]
    assert result.max_overlaps.tolist() == [1.0, -INF, -INF, -INF]
    assert cand.zero_positive_reason.tolist() == [0]


def test_atss_single_candidate_gives_nan_threshold():
    # K = 1: the unbiased std of one value is NaN, IoU >= NaN is false -> no positive at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the degrees of freedom, as upstream's run does
        result = atss_assign(torch.tensor([[0.0, 0.0, 10.0, 10.0], FAR[0]]), [2], GT, torch.tensor([0]), topk=1)
    assert math.isnan(result.candidates.iou_thr.item())
    assert result.gt_inds.tolist() == [0, 0]
    assert ZERO_POSITIVE_REASONS[result.candidates.zero_positive_reason.item()].startswith("threshold is NaN")


@pytest.mark.parametrize("inset,inside", [(1 / 128, False), (1 / 64, True)])
def test_atss_centre_margin_is_strict_001_px(inset, inside):
    # candidates [x, 0, 0]: threshold = x/3 + x/sqrt(3) = 0.91 x, so the overlapping prior passes the
    # IoU test; its centre is `inset` px inside the target's right edge (needs > 0.01 px)
    cx = 10.0 - inset
    priors = torch.tensor([[cx - 5, 0.0, cx + 5, 10.0], *FAR])
    result = atss_assign(priors, [3], GT, torch.tensor([0]), topk=3)
    assert result.candidates.iou_ge_thr[result.candidates.candidate_idxs == 0].item()
    assert result.gt_inds.tolist() == ([1, 0, 0] if inside else [0, 0, 0])
    assert result.candidates.zero_positive_reason.item() == (0 if inside else 3)


@pytest.mark.parametrize("swap", [False, True])
def test_atss_shared_prior_goes_to_larger_iou_then_lower_index(swap):
    # prior A = (0,0,10,10) passes for both targets (candidates [x, 0, 0] again)
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], *FAR])
    # IoU 1 with (0,0,10,10) and 80/120 with (2,0,12,10): the exact one wins, whatever its index
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    gts = gts.flip(0) if swap else gts
    result = atss_assign(priors, [3], gts, torch.tensor([3, 4]).flip(0) if swap else torch.tensor([3, 4]), topk=3)
    assert result.gt_inds[0].item() == (2 if swap else 1)
    assert result.labels[0].item() == 3
    # mirror images about x = 5: IoU 80/120 with both -> exact tie -> the lower target index
    mirror = torch.tensor([[-2.0, 0.0, 8.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    mirror = mirror.flip(0) if swap else mirror
    tied = atss_assign(priors, [3], mirror, torch.tensor([5, 6]), topk=3)
    assert tied.candidates.is_pos[tied.candidates.candidate_idxs == 0].tolist() == [True, True]
    assert tied.gt_inds[0].item() == 1 and tied.labels[0].item() == 5


def test_atss_ignore_regions():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0], *FAR])
    ignore = torch.tensor([[38.0, 38.0, 52.0, 52.0]])  # covers FAR[1] entirely: IoF 1
    # default ignore_iof_thr -1: no effect
    assert -1 not in atss_assign(priors, [4], GT, torch.tensor([0]), gt_bboxes_ignore=ignore).gt_inds.tolist()
    result = atss_assign(priors, [4], GT, torch.tensor([0]), gt_bboxes_ignore=ignore, ignore_iof_thr=0.5, topk=3)
    assert result.gt_inds[3].item() == -1
    assert result.candidates.ignored.tolist() == [False, False, False, True]
    # with no targets the early return comes first: ignored priors stay 0
    empty = atss_assign(priors, [4], GT[:0], torch.tensor([], dtype=torch.long), gt_bboxes_ignore=ignore,
                        ignore_iof_thr=0.5)
    assert empty.gt_inds.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("num_priors,num_gts", [(0, 2), (4, 0), (0, 0)])
def test_atss_empty_returns_zero_overlaps(num_priors, num_gts):
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], *FAR])[:num_priors]
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 5.0, 5.0]])[:num_gts]
    result = atss_assign(priors, [num_priors], gts, torch.zeros(num_gts, dtype=torch.long))
    assert result.candidates is None
    assert result.num_gts == num_gts
    assert result.gt_inds.tolist() == [0] * num_priors and result.labels.tolist() == [-1] * num_priors
    assert result.max_overlaps.tolist() == [0.0] * num_priors  # 0.0 here, -1e8 for later negatives


def test_atss_zero_positive_cases_from_the_vectors():
    data = load_vector_file(FAMILY)["groups"]["atss_assign"]
    by_id = {case["id"]: case for case in data}
    cpu = torch.device("cpu")
    for case_id, reason in (("atss_192x192_3lvl_thr_above_all_candidates", 2),
                            ("atss_192x192_5lvl_tiny_huge_border", 3)):
        inputs = _decode_tree(by_id[case_id]["inputs"], cpu)
        trace = Trace()
        result = atss_assign(inputs["priors"], inputs["num_level_priors"], inputs["gt_bboxes"], inputs["gt_labels"],
                             topk=inputs["assigner"]["topk"], trace=trace)
        assert result.candidates.zero_positive_reason[0].item() == reason
        assert trace.get("atss.result")["zero_positive_reason"][0].item() == reason
        assert trace.get("atss.result")["positives_per_gt"][0].item() == 0
        if reason == 2:
            assert trace.get("atss.threshold")["threshold_above_all"][0].item()


# -- ATSS: properties --------------------------------------------------------------------------
def _random_atss(seed: int, side: int = 128, targets: int = 6):
    gen = torch.Generator().manual_seed(seed)
    strides = (8, 16, 32, 64, 128)
    priors, counts = anchor_priors(featmap_sizes((side, side), strides), strides)
    wh = torch.rand(targets, 2, generator=gen) * 60 + 4
    centre = torch.rand(targets, 2, generator=gen) * (side - wh) + wh / 2
    gts = torch.round(torch.cat([centre - wh / 2, centre + wh / 2], 1) * 16) / 16
    return priors, counts, gts, torch.randint(0, 5, (targets,), generator=gen)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), targets=st.integers(1, 8))
def test_atss_invariants(seed, targets):
    priors, counts, gts, labels = _random_atss(seed, targets=targets)
    result = atss_assign(priors, counts, gts, labels)
    cand = result.candidates
    pos = (result.gt_inds > 0).nonzero().squeeze(1)
    gt = result.gt_inds[pos] - 1
    # the overlap is the prior's IoU with its target (same operations as the dense matrix)
    assert torch.equal(result.max_overlaps[pos], bbox_overlaps(priors[pos], gts)[torch.arange(len(pos)), gt])
    assert torch.equal(result.labels[pos], labels[gt])
    assert bool((result.max_overlaps[result.gt_inds == 0] == -INF).all())
    for p, g in zip(pos.tolist(), gt.tolist()):
        row = (cand.candidate_idxs[:, g] == p).nonzero().squeeze(1)
        assert cand.is_pos[row, g].item() and cand.centre_margin[row, g].item() > 0.01
        assert cand.candidate_overlaps[row, g].item() >= cand.iou_thr[g].item()
        # no other target it passed for has a larger overlap
        others = (cand.candidate_idxs == p) & cand.is_pos
        assert cand.candidate_overlaps[others].max().item() == result.max_overlaps[p].item()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), targets=st.integers(2, 8))
def test_atss_permuting_targets_permutes_the_assignment(seed, targets):
    priors, counts, gts, labels = _random_atss(seed, targets=targets)
    base = atss_assign(priors, counts, gts, labels)
    # exact overlap ties between targets go to the lower index: order-dependent by design
    assume(not _has_shared_tie(base))
    perm = torch.randperm(targets, generator=torch.Generator().manual_seed(seed))
    permuted = atss_assign(priors, counts, gts[perm], labels[perm])
    inverse = torch.argsort(perm)
    expect = torch.where(base.gt_inds > 0, inverse[(base.gt_inds - 1).clamp(min=0)] + 1, base.gt_inds)
    assert torch.equal(permuted.gt_inds, expect)
    assert torch.equal(permuted.labels, base.labels)


def _has_shared_tie(result) -> bool:
    cand = result.candidates
    for p in cand.candidate_idxs[cand.is_pos].unique().tolist():
        values = cand.candidate_overlaps[(cand.candidate_idxs == p) & cand.is_pos]
        if values.numel() > 1 and (values == values.max()).sum() > 1:
            return True
    return False


# -- RTMDet: hand-built ------------------------------------------------------------------------
def _dsl_scene(third_box: list[float]):
    """One target (0,0,32,32), class 0 of 2; stride-8 points (8,8), (16,16), (24,24) inside it and
    (40,40) outside; every logit 0 (p = 0.5). The first two predict the target exactly."""
    priors = torch.tensor([[8.0, 8.0, 8.0, 8.0], [16.0, 16.0, 8.0, 8.0], [24.0, 24.0, 8.0, 8.0],
                           [40.0, 40.0, 8.0, 8.0]])
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 32.0, 32.0], third_box, [36.0, 36.0, 44.0, 44.0]])
    return priors, boxes, torch.zeros(4, 2), gt, torch.tensor([0])


def test_dsl_cost_hand_numbers():
    result = dsl_assign(*_dsl_scene([0.0, 0.0, 32.0, 32.0]))
    d = result.details
    assert d.valid_indices.tolist() == [0, 1, 2]  # (40, 40) lies outside
    # distance in strides: (8,8) is sqrt(128)/8 = sqrt(2) from the centre (16,16); 10^(d - 3)
    torch.testing.assert_close(d.distance[:, 0], torch.tensor([math.sqrt(2), 0.0, math.sqrt(2)]))
    torch.testing.assert_close(d.soft_center_prior[:, 0], torch.tensor([10 ** (math.sqrt(2) - 3), 1e-3,
                                                                        10 ** (math.sqrt(2) - 3)]))
    # IoU 1 -> -ln(1 + 1e-7) * 3, and 1 + 1e-7 rounds to 1 + 2^-23 in float32: -3.58e-7, not -3e-7
    torch.testing.assert_close(d.iou_cost[:, 0], torch.full((3,), -3 * math.log1p(2**-23)))
    # logit 0: p = 0.5; gt class: BCE(0, t=1) = ln 2 times |1 - .5|^2; other class: ln 2 * .25 -> ln(2)/2
    torch.testing.assert_close(d.soft_cls_cost[:, 0], torch.full((3,), math.log(2) / 2))
    # dynamic k = int(1 + 1 + 1) = 3: all three valid priors
    assert d.dynamic_ks.tolist() == [3] and result.gt_inds.tolist() == [1, 1, 1, 0]
    assert result.max_overlaps.tolist() == [1.0, 1.0, 1.0, -INF]
    assert result.max_overlaps.dtype == torch.float32


def test_dsl_dynamic_k_truncates():
    # third prediction (0,0,32,28.75): IoU 28.75/32 = 0.8984; sum 2.898 -> int() -> 2, not 3
    result = dsl_assign(*_dsl_scene([0.0, 0.0, 32.0, 28.75]))
    torch.testing.assert_close(result.details.topk_iou_sum, torch.tensor([2 + 28.75 / 32]))
    assert result.details.dynamic_ks.tolist() == [2]
    # the two lowest costs: the centre prior and (8,8) (same distance as (24,24), better IoU)
    assert result.gt_inds.tolist() == [1, 1, 0, 0]


def test_dsl_conflict_goes_to_lowest_cost_over_all_targets():
    # two targets share the valid priors; every prior predicts target 0's box exactly
    priors = torch.tensor([[8.0, 8.0, 8.0, 8.0], [16.0, 16.0, 8.0, 8.0], [24.0, 24.0, 8.0, 8.0]])
    gts = torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 36.0, 36.0]])
    boxes = gts[:1].expand(3, 4).clone()
    trace = Trace()
    result = dsl_assign(priors, boxes, torch.zeros(3, 2), gts, torch.tensor([0, 1]), trace=trace)
    d = result.details
    taken_twice = d.matching_before_conflict.sum(1) > 1
    assert bool(taken_twice.any())
    expect = d.cost_matrix.argmin(1)
    assert torch.equal(d.matched_gt[taken_twice], expect[taken_twice])
    assert trace.get("dsl.conflicts")["row"].tolist() == taken_twice.nonzero().squeeze(1).tolist()


def test_dsl_conflicts_can_go_to_a_target_that_did_not_take_the_prior():
    case = next(c for c in load_vector_file(FAMILY)["groups"]["dsl_assign"] if c["id"] == "dsl_192x192_nc3_crowded_mid")
    inputs = _decode_tree(case["inputs"], torch.device("cpu"))
    trace = Trace()
    dsl_assign(inputs["priors"], inputs["pred_bboxes"], inputs["pred_scores"], inputs["gt_bboxes"],
               inputs["gt_labels"], trace=trace)
    took = trace.get("dsl.conflicts")["winner_took_it"]
    assert int((~took).sum()) == case["oracle_summary"]["conflicts_resolved_to_unselecting_gt"]
    assert trace.get("dsl.result").values["gts_without_positives"] == case["oracle_summary"]["gts_without_positives"]


@pytest.mark.parametrize("num_priors,num_gts", [(0, 1), (4, 0)])
def test_dsl_empty(num_priors, num_gts):
    priors, boxes, scores, gt, labels = _dsl_scene([0.0, 0.0, 32.0, 32.0])
    result = dsl_assign(priors[:num_priors], boxes[:num_priors], scores[:num_priors], gt[:num_gts], labels[:num_gts])
    assert result.details is None
    assert result.gt_inds.tolist() == [0] * num_priors and result.max_overlaps.tolist() == [0.0] * num_priors


def test_dsl_no_valid_prior_returns_zero_overlaps():
    priors, boxes, scores, _, labels = _dsl_scene([0.0, 0.0, 32.0, 32.0])
    edge = torch.tensor([[8.0, 8.0, 16.0, 16.0]])  # points on its edges are not strictly inside
    trace = Trace()
    result = dsl_assign(priors, boxes, scores, edge, labels, trace=trace)
    assert result.details.valid_indices.numel() == 0
    assert result.max_overlaps.tolist() == [0.0] * 4 and result.labels.tolist() == [-1] * 4
    assert trace.names() == ["dsl.valid", "dsl.empty"]


# -- RTMDet: the class cost and the top-k shortcut -----------------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), v=st.integers(1, 40), m=st.integers(1, 7), c=st.integers(1, 20))
def test_soft_class_cost_equals_the_dense_formula(seed, v, m, c):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-128, 128, (v, c), generator=gen).float() / 16
    labels = torch.randint(0, c, (m,), generator=gen)
    ious = torch.rand(v, m, generator=gen) * (torch.rand(v, m, generator=gen) < 0.5)  # half exactly 0
    cost, gt_prob = _soft_class_cost(scores, labels, ious)
    # upstream's (V, M, C) formula in float64
    s = scores.double()[:, None, :].expand(v, m, c)
    t = torch.nn.functional.one_hot(labels, c).double()[None] * ious.double()[..., None]
    dense = (torch.nn.functional.binary_cross_entropy_with_logits(s, t, reduction="none")
             * (t - s.sigmoid()).abs().pow(2)).sum(-1)
    torch.testing.assert_close(cost.double(), dense, rtol=3e-5, atol=1e-6)
    torch.testing.assert_close(gt_prob, scores[:, labels].sigmoid(), rtol=1e-6, atol=1e-7)
    # a pair with IoU exactly 0 has its prior's background row, so one cost for all such targets;
    # except the pairs holding the last (<= 127) elements of upstream's (V, M, C) layout, which are
    # recomputed with upstream's scalar-tail sigmoid
    total = v * m * c
    first_tail_prior = (total - min(total, 64 + total % 64)) // c // m
    zero_row = (ious == 0).all(1)
    zero_row[first_tail_prior:] = False
    rows = cost[zero_row]
    assert bool((rows == rows[:, :1]).all())


def test_sigmoid_simd_matches_sigmoid():
    x = torch.randint(-128, 128, (1000, 37)).float() / 16
    torch.testing.assert_close(_sigmoid_simd(x), x.sigmoid(), rtol=1e-6, atol=1e-7)
    assert _sigmoid_simd(x[:0]).shape == (0, 37)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), v=st.integers(1, 30), m=st.integers(1, 5))
def test_lowest_costs_equals_one_topk_per_target(seed, v, m):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randint(0, 6, (v, m), generator=gen).float()  # many exact ties
    ks = torch.randint(1, v + 1, (m,), generator=gen).int()
    expect = torch.zeros((v, m), dtype=torch.bool)
    for g in range(m):
        expect[torch.topk(cost[:, g], k=int(ks[g]), largest=False).indices, g] = True
    assert torch.equal(_lowest_costs(cost, ks), expect)


# -- dense, upstream-shaped references (used by the benchmark) ----------------------------------
@pytest.mark.parametrize("group_name,case", [p for p in vector_cases(FAMILY) if "error" not in p.values[1]["expected"]
                                             and p.values[1]["inputs"]["assigner"].get("alpha") is None])
def test_dense_reference_matches_the_vectors(group_name, case):
    inputs = _decode_tree(case["inputs"], torch.device("cpu"))
    cfg = inputs["assigner"]
    if group_name == "atss_assign":
        result = dense_reference_atss(inputs["priors"], inputs["num_level_priors"], inputs["gt_bboxes"],
                                      inputs["gt_labels"], gt_bboxes_ignore=inputs["gt_bboxes_ignore"],
                                      topk=cfg["topk"], ignore_iof_thr=cfg["ignore_iof_thr"])
    else:
        result, _ = dense_reference_dsl(inputs["priors"], inputs["pred_bboxes"], inputs["pred_scores"],
                                        inputs["gt_bboxes"], inputs["gt_labels"], topk=cfg["topk"],
                                        iou_weight=cfg["iou_weight"], soft_center_radius=cfg["soft_center_radius"])
    skip = set(case.get("tie_sensitive") or [])
    problems = []
    for key in ("gt_inds", "labels", "max_overlaps"):
        if key not in skip:
            problems += compare(getattr(result, key), case["expected"][key], MAX_OVERLAPS_TOL, key)
    assert problems == [] and result.num_gts == case["expected"]["num_gts"]


def test_ours_matches_the_dense_reference_on_the_benchmark_scenes():
    atss = make_atss_scene(num_targets=25)
    ours = atss_assign(atss["priors"], atss["num_level_priors"], atss["gt_bboxes"], atss["gt_labels"])
    dense = dense_reference_atss(atss["priors"], atss["num_level_priors"], atss["gt_bboxes"], atss["gt_labels"])
    assert torch.equal(ours.gt_inds, dense.gt_inds) and torch.equal(ours.labels, dense.labels)
    torch.testing.assert_close(ours.max_overlaps, dense.max_overlaps, rtol=1e-6, atol=0)
    dsl = make_dsl_scene(num_targets=12)
    args = (dsl["priors"], dsl["pred_bboxes"], dsl["pred_scores"], dsl["gt_bboxes"], dsl["gt_labels"])
    ours = dsl_assign(*args)
    dense, dense_cost = dense_reference_dsl(*args)
    assert torch.equal(ours.gt_inds, dense.gt_inds) and torch.equal(ours.labels, dense.labels)
    torch.testing.assert_close(ours.max_overlaps, dense.max_overlaps, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.details.cost_matrix, dense_cost, rtol=1e-5, atol=1e-6)


# -- classes, dtypes, trace --------------------------------------------------------------------
def test_assigner_classes_return_assign_results():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 5.0, 10.0, 15.0], FAR[0]])
    out = ATSSAssigner(topk=3).assign(priors, [4], GT, torch.tensor([2]))
    assert out.gt_inds.tolist() == [1, 0, 0, 0] and out.num_preds == 4
    out = DynamicSoftLabelAssigner().assign(*_dsl_scene([0.0, 0.0, 32.0, 32.0]))
    assert out.gt_inds.tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError):
        ATSSAssigner(topk=9, iou_calculator=dict(type="BboxOverlaps2D", dtype="fp16"))


def test_dtype_follows_inputs_except_dsl_max_overlaps():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 5.0, 10.0, 15.0], FAR[0]]).double()
    assert atss_assign(priors, [4], GT.double(), torch.tensor([0]), topk=3).max_overlaps.dtype == torch.float64
    scene = [t.double() if t.is_floating_point() else t for t in _dsl_scene([0.0, 0.0, 32.0, 32.0])]
    result = dsl_assign(*scene)
    assert result.details.cost_matrix.dtype == torch.float64
    assert result.max_overlaps.dtype == torch.float32  # upstream hard-codes float32 here


def _vector_inputs(group: str, case_id: str) -> dict:
    case = next(c for c in load_vector_file(FAMILY)["groups"][group] if c["id"] == case_id)
    return _decode_tree(case["inputs"], torch.device("cpu"))


def _assert_same_result(a, b):
    for x, y in zip(a[:4], b[:4]):
        assert (x == y) if isinstance(x, int) else torch.equal(x, y)


@pytest.mark.parametrize("case_id", ["atss_640x640_5lvl_nc80_topk9", "atss_192x192_5lvl_ignore_iof0.5",
                                     "atss_128x128_5lvl_nc80_ddod_alpha0.8", "atss_192x192_5lvl_nc3_crowded"])
def test_atss_trace(case_id):
    i = _vector_inputs("atss_assign", case_id)
    cfg = i["assigner"]
    kwargs = dict(gt_bboxes_ignore=i["gt_bboxes_ignore"], pred_scores=i["pred_scores"], pred_bboxes=i["pred_bboxes"],
                  topk=cfg["topk"], alpha=cfg["alpha"], ignore_iof_thr=cfg["ignore_iof_thr"])
    args = (i["priors"], i["num_level_priors"], i["gt_bboxes"], i["gt_labels"])
    plain = atss_assign(*args, **kwargs)
    trace = Trace()
    traced = atss_assign(*args, **kwargs, trace=trace)
    _assert_same_result(plain, traced)
    names = trace.names()
    levels = [f"atss.P{3 + l}.candidates" for l in range(len(i["num_level_priors"]))]
    expected = (["atss.ignore"] if cfg["ignore_iof_thr"] > 0 else []) + levels + [
        "atss.overlaps", "atss.threshold", "atss.centre_test", "atss.conflicts", "atss.result"]
    assert names == expected
    assert all(STAGE_NAME.match(n) for n in names)
    N, M = i["priors"].size(0), i["gt_bboxes"].size(0)
    K = plain.candidates.candidate_idxs.size(0)
    # compact: nothing dense (N x M) is recorded, at most K x M per tensor
    assert max(rec.value.numel() for stage in trace for rec in stage.tensors.values()) <= max(K * M, N)
    # the recorded positives are the assignment
    assert torch.equal(trace.get("atss.result")["prior"], (plain.gt_inds > 0).nonzero().squeeze(1))
    trace.to_dict()  # serialisable


@pytest.mark.parametrize("case_id", ["dsl_96x128_nc80_mid", "dsl_192x192_nc3_crowded_late", "dsl_160x256_nc1_mid"])
def test_dsl_trace(case_id):
    i = _vector_inputs("dsl_assign", case_id)
    args = (i["priors"], i["pred_bboxes"], i["pred_scores"], i["gt_bboxes"], i["gt_labels"])
    cfg = i["assigner"]
    kwargs = dict(topk=cfg["topk"], iou_weight=cfg["iou_weight"], soft_center_radius=cfg["soft_center_radius"])
    plain = dsl_assign(*args, **kwargs)
    trace = Trace()
    traced = dsl_assign(*args, **kwargs, trace=trace)
    _assert_same_result(plain, traced)
    for x, y in zip(plain.details, traced.details):
        assert torch.equal(x, y)
    assert trace.names() == ["dsl.valid", "dsl.centre_prior", "dsl.iou_cost", "dsl.class_cost", "dsl.cost",
                             "dsl.dynamic_k", "dsl.matching", "dsl.conflicts", "dsl.result"]
    assert all(STAGE_NAME.match(n) for n in trace.names())
    V, M = plain.details.cost_matrix.shape
    assert max(rec.value.numel() for stage in trace for rec in stage.tensors.values()) <= V * M
    assert torch.equal(trace.get("dsl.dynamic_k")["dynamic_k"], plain.details.dynamic_ks)
    trace.to_dict()
