"""DETR family: conformance, hand-built numbers, upstream-shaped equality, properties, trace."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab_testing import vector_cases
from losscore import conformance
from losscore.detr import (FAMILY, GROUPS, TOLERANCES, HungarianMatcher, SetCriterion, box_area,
                           box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, build_weight_dict,
                           generalized_box_iou, hungarian_match, loss_boxes, loss_cardinality, loss_labels,
                           set_criterion, weighted_total)
from losscore.scene import STAGE_NAME
from losscore.trace import Trace, decode_tensor

ELEMENT_TOL = dict(rtol=1e-5, atol=1e-6)


# -- conformance -------------------------------------------------------------------------------
def _registered() -> bool:
    try:
        from losscore import registry
        return "detr" in registry.vector_families()
    except Exception:  # noqa: BLE001 - registry under construction: fall back to our runners
        return False


def _content(targets, b: int, target_idx: torch.Tensor) -> list[tuple]:
    t = targets[b]
    return [(int(t["labels"][j]), tuple(t["boxes"][j].tolist())) for j in target_idx.cpu().tolist()]


def _compare_indices(actual, expected, targets, tie_images, path) -> list[str]:
    """Exact pairs; for the README's tie-sensitive images the target side by content."""
    problems = []
    for b, ((q, j), (eq, ej)) in enumerate(zip(actual, expected)):
        eq, ej = decode_tensor(eq), decode_tensor(ej)
        if q.dtype != torch.int64 or not torch.equal(q.cpu(), eq):
            problems.append(f"{path}[{b}].query_idx: {q.tolist()} != {eq.tolist()}")
        if b in tie_images:
            if _content(targets, b, j) != _content(targets, b, ej):
                problems.append(f"{path}[{b}].target_idx: matched contents differ")
        elif not torch.equal(j.cpu(), ej):
            problems.append(f"{path}[{b}].target_idx: {j.tolist()} != {ej.tolist()}")
    return problems


def _check(group: str, case: dict, device: torch.device) -> list[str]:
    expected = case["expected"]
    inputs = conformance._decode_tree(case["inputs"], device)
    runner = GROUPS["detr"][group]
    if "error" in expected:
        with pytest.raises(Exception) as info:
            runner(inputs, device)
        return [] if type(info.value).__name__ == expected["error"] else [f"raised {info.typename}"]
    actual = runner(inputs, device)
    ties = set(case.get("target_idx_tie_sensitive_images", ()))
    targets = [{k: v.cpu() for k, v in t.items()} for t in inputs.get("targets") or []]
    problems = []
    for key, value in expected.items():
        tol = TOLERANCES.get(("detr", group, key), ELEMENT_TOL)
        if key == "indices":
            problems += _compare_indices(actual[key], value, targets, ties, key)
        elif key == "diagnostics":
            for name, diag in value.items():
                if "margin" in name:
                    continue  # not produced (a re-solve per pair); informational
                if name == "indices":
                    problems += _compare_indices(actual[key][name], diag, targets, ties, f"diagnostics.{name}")
                elif name == "aux_indices":
                    for i, layer in enumerate(diag):
                        problems += _compare_indices(actual[key][name][i], layer, targets, ties, f"aux[{i}]")
                else:
                    problems += conformance.compare(actual[key][name], diag, dict(rtol=1e-7, atol=1e-9), name)
        else:
            problems += conformance.compare(actual[key], value, tol, key)
    return problems


@pytest.mark.parametrize("group_name,case", vector_cases("detr"))
def test_conformance(group_name, case, device):
    assert _check(group_name, case, device) == []
    if _registered() and not case.get("target_idx_tie_sensitive_images"):
        assert conformance.check_case("detr", group_name, case, device) == []


def test_family_declares_every_group():
    assert FAMILY.name == "detr"
    assert set(FAMILY.vectors["detr"]) == {"box_cxcywh_to_xyxy", "generalized_box_iou", "matcher", "set_criterion"}


# -- boxes: hand-built numbers ------------------------------------------------------------------
def test_cxcywh_to_xyxy_hand_built():
    # centre (0.5, 0.5), size 0.25 x 0.5 -> x 0.5 -/+ 0.125, y 0.5 -/+ 0.25 (all dyadic, exact)
    box = torch.tensor([[0.5, 0.5, 0.25, 0.5]])
    assert torch.equal(box_cxcywh_to_xyxy(box), torch.tensor([[0.375, 0.25, 0.625, 0.75]]))
    # no clipping, no check: a box reaching outside [0, 1] and a negative width convert as they are
    odd = torch.tensor([[0.0, 1.0, 0.5, 0.5], [0.5, 0.5, -0.25, 0.0]])
    assert torch.equal(box_cxcywh_to_xyxy(odd), torch.tensor([[-0.25, 0.75, 0.25, 1.25], [0.625, 0.5, 0.375, 0.5]]))
    assert box_cxcywh_to_xyxy(torch.zeros((0, 4))).shape == (0, 4)


def test_xyxy_round_trip_on_lattice():
    g = torch.Generator().manual_seed(0)
    cxcywh = torch.randint(0, 1024, (50, 4), generator=g).float() / 1024
    assert torch.equal(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)


def test_giou_hand_built():
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    others = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],  # identical: 1
        [0.0, 0.0, 0.5, 0.5],  # quarter inside: iou 0.25/1, enclose = union = 1 -> 0.25
        [1.0, 0.0, 2.0, 1.0],  # edge-touching: inter 0, union 2, enclose 2 -> 0
        [2.0, 0.0, 3.0, 1.0],  # disjoint: union 2, enclose 3 -> 0 - (3 - 2)/3 = -1/3
    ])
    giou = generalized_box_iou(unit, others)
    assert giou.shape == (1, 4)
    torch.testing.assert_close(giou, torch.tensor([[1.0, 0.25, 0.0, -1 / 3]]))
    iou, union = box_iou(unit, others)
    torch.testing.assert_close(iou, torch.tensor([[1.0, 0.25, 0.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[1.0, 1.0, 2.0, 2.0]]))
    assert torch.equal(box_area(others), torch.tensor([1.0, 0.25, 1.0, 1.0]))


def test_giou_nan_and_empty():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    # the same point twice: union 0, enclose 0 -> 0/0 = nan (no epsilon anywhere)
    assert torch.isnan(generalized_box_iou(point, point)).all()
    # zero-width boxes on the same vertical line: enclose width 0 -> nan as well
    line = torch.tensor([[0.5, 0.0, 0.5, 1.0]])
    assert torch.isnan(generalized_box_iou(line, torch.tensor([[0.5, 0.2, 0.5, 0.4]]))).all()
    assert generalized_box_iou(point.repeat(3, 1), torch.zeros((0, 4))).shape == (3, 0)


@pytest.mark.parametrize("bad", [[0.6, 0.0, 0.5, 1.0], [0.0, 0.6, 1.0, 0.5], [float("nan"), 0.0, 1.0, 1.0]])
def test_giou_asserts_on_degenerate_boxes(bad):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(AssertionError):
        generalized_box_iou(torch.tensor([bad]), good)
    with pytest.raises(AssertionError):
        generalized_box_iou(good, torch.tensor([bad]))
    # a zero width or height passes the check
    assert generalized_box_iou(torch.tensor([[0.5, 0.0, 0.5, 1.0]]), good).shape == (1, 1)


def test_giou_half_areas_are_upcast():
    # torchvision's box_area upcasts half boxes, so union (and the GIoU) come out in float32
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]], dtype=torch.float16)
    assert generalized_box_iou(a, a).dtype == torch.float32


def _upstream_shaped_giou(boxes1, boxes2):
    """util/box_ops.py's formula as written there: (N, M, 2) corner pairs, then the products."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    iou = inter / union
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


def _random_cxcywh(n: int, g: torch.Generator) -> torch.Tensor:
    wh = torch.rand((n, 2), generator=g) * 0.5 + 0.01
    centre = torch.rand((n, 2), generator=g)
    return torch.cat([centre, wh], 1)


def test_giou_equals_upstream_shaped_formula_bitwise():
    # the same float ops on the same pairs: equal bits, whatever the vector width
    g = torch.Generator().manual_seed(1)
    a = box_cxcywh_to_xyxy(torch.sigmoid(torch.randn(37, 4, generator=g)))
    b = box_cxcywh_to_xyxy(_random_cxcywh(23, g))
    assert torch.equal(generalized_box_iou(a, b), _upstream_shaped_giou(a, b))


# -- matcher: hand-built numbers -----------------------------------------------------------------
def _two_query_scene():
    """One class (logits: class 0, no-object). Query 0 sits on target 1, query 1 on target 0.

    targets: t0 = (0.25, 0.25, 0.5, 0.5) -> xyxy (0, 0, 0.5, 0.5); t1 = (0.75, 0.75, 0.5, 0.5).
    logits q0 = (1, 0): p(class 0) = e/(e+1) = 0.7311; q1 = (0, 1): p = 1/(1+e) = 0.2689.
    """
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    boxes = torch.tensor([[[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]])
    targets = [{"labels": torch.tensor([0, 0]), "boxes": torch.tensor([[0.25, 0.25, 0.5, 0.5],
                                                                       [0.75, 0.75, 0.5, 0.5]])}]
    return logits, boxes, targets


def test_matcher_hand_built_costs():
    logits, boxes, targets = _two_query_scene()
    matching = hungarian_match(logits, boxes, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    cost = matching.cost.block(0)
    p0, p1 = math.e / (math.e + 1), 1 / (1 + math.e)
    # class: minus the probability of the target's class (softmax over both columns)
    torch.testing.assert_close(cost.cost_class, torch.tensor([[-p0, -p0], [-p1, -p1]]))
    # L1 over 4 coordinates, summed: |0.75 - 0.25| on cx and on cy = 1.0; identical boxes 0
    assert torch.equal(cost.cost_bbox, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # GIoU: identical 1; corner-touching squares: inter 0, union 0.5, enclose 1 -> -0.5
    assert torch.equal(cost.cost_giou, torch.tensor([[0.5, -1.0], [-1.0, 0.5]]))
    # C = 5 * L1 + 1 * class + 2 * giou-cost
    torch.testing.assert_close(cost.C, torch.tensor([[5 - p0 + 1, -p0 - 2], [-p1 - 2, 5 - p1 + 1]]))
    (query, target), = matching.indices
    assert query.tolist() == [0, 1] and target.tolist() == [1, 0]
    assert query.dtype == target.dtype == torch.int64


def test_matcher_weights_and_assertion():
    with pytest.raises(AssertionError, match="all costs cant be 0"):
        HungarianMatcher(0, 0, 0)
    logits, boxes, targets = _two_query_scene()
    # class cost alone prefers query 0 for both targets; the assignment still gives each one query
    only_class = HungarianMatcher(cost_class=1, cost_bbox=0, cost_giou=0)
    (query, target), = only_class({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert sorted(query.tolist()) == [0, 1] and sorted(target.tolist()) == [0, 1]


def test_matcher_empty_images_and_more_targets_than_queries():
    logits, boxes, targets = _two_query_scene()
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros((0, 4))}
    both = hungarian_match(logits.repeat(2, 1, 1), boxes.repeat(2, 1, 1), [empty, targets[0]])
    assert [m.query_idx.numel() for m in both.indices] == [0, 2]
    assert both.cost.block(0).C.shape == (2, 0)
    none = hungarian_match(logits, boxes, [empty])
    assert none.indices[0].query_idx.shape == (0,) and none.indices[0].target_idx.dtype == torch.int64
    # three targets, two queries: the solver pairs min(Q, T) of them (upstream does not forbid it)
    three = [{"labels": torch.tensor([0, 0, 0]), "boxes": torch.cat([targets[0]["boxes"],
                                                                     torch.tensor([[0.5, 0.5, 0.1, 0.1]])])}]
    (query, target), = hungarian_match(logits, boxes, three).indices
    assert query.tolist() == [0, 1] and target.tolist() == [1, 0]


def test_matcher_checks_every_predicted_box_even_without_targets():
    # upstream's GIoU check runs on all B*Q predictions, even when the batch has no targets
    logits = torch.zeros((1, 2, 2))
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, -0.1, 0.2]]])
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros((0, 4))}]
    with pytest.raises(AssertionError):
        hungarian_match(logits, boxes, empty)
    boxes[0, 1, 2] = float("nan")
    with pytest.raises(AssertionError):
        hungarian_match(logits, boxes, empty)


def test_matcher_nan_cost_is_rejected_by_the_solver():
    logits, boxes, targets = _two_query_scene()
    logits[0, 0, 0] = float("nan")  # softmax row of NaN -> NaN class cost
    with pytest.raises(ValueError):
        hungarian_match(logits, boxes, targets)


def _scene(B, Q, C, sizes, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn((B, Q, C + 1), generator=g) * 2).to(device)
    boxes = torch.sigmoid(torch.randn((B, Q, 4), generator=g)).to(device)
    targets = [{"labels": torch.randint(0, C, (n,), generator=g).to(device),
                "boxes": _random_cxcywh(n, g).to(device)} for n in sizes]
    return logits, boxes, targets


def _upstream_shaped_cost(logits, boxes, targets, wc, wb, wg):
    """models/matcher.py's batch-wide matrix: every query of the batch against every target."""
    B, Q = logits.shape[:2]
    prob = logits.flatten(0, 1).softmax(-1)
    out_bbox = boxes.flatten(0, 1)
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    cost_class = -prob[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -_upstream_shaped_giou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    C = wb * cost_bbox + wc * cost_class + wg * cost_giou
    sizes = [len(t["boxes"]) for t in targets]
    view = lambda x: x.view(B, Q, -1).split(sizes, -1)  # noqa: E731
    return [[part[b][b] for part in map(view, (C, cost_class, cost_bbox, cost_giou))] for b in range(B)]


def test_matcher_blocks_equal_the_batch_wide_matrix_bitwise(device):
    logits, boxes, targets = _scene(3, 40, 91, (7, 0, 12), seed=2, device=device)
    matching = hungarian_match(logits, boxes, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    reference = _upstream_shaped_cost(logits, boxes, targets, 1, 5, 2)
    for b, ref in enumerate(reference):
        for ours, theirs in zip(matching.cost.block(b), ref):
            assert torch.equal(ours, theirs)
        assert matching.indices[b].query_idx.device == logits.device


def test_matcher_batch_equals_one_image_at_a_time():
    logits, boxes, targets = _scene(3, 30, 5, (4, 9, 2), seed=3)
    batch = hungarian_match(logits, boxes, targets, cost_bbox=5, cost_giou=2)
    for b in range(3):
        alone = hungarian_match(logits[b:b + 1], boxes[b:b + 1], targets[b:b + 1], cost_bbox=5, cost_giou=2)
        assert torch.equal(alone.cost.block(0).C, batch.cost.block(b).C)
        assert all(torch.equal(x, y) for x, y in zip(alone.indices[0], batch.indices[b]))


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(0, 6), seed=st.integers(0, 2**31 - 1))
def test_giou_range_and_symmetry(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = box_cxcywh_to_xyxy(_random_cxcywh(n, g))
    b = box_cxcywh_to_xyxy(_random_cxcywh(m, g))
    ab, ba = generalized_box_iou(a, b), generalized_box_iou(b, a)
    assert torch.equal(ab, ba.T)  # min, max, + and * commute exactly
    assert bool(((ab >= -1) & (ab <= 1)).all())
    if n and m:
        assert torch.equal(generalized_box_iou(a, a).diagonal(), torch.ones(n))


@settings(max_examples=25, deadline=None)
@given(q=st.integers(1, 5), t=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_matching_is_optimal(q, t, seed):
    t = min(t, q)
    logits, boxes, targets = _scene(1, q, 3, (t,), seed)
    matching = hungarian_match(logits, boxes, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    C = matching.cost.block(0).C.double()
    m = matching.indices[0]
    ours = float(C[m.query_idx, m.target_idx].sum())
    best = min(sum(float(C[rows[j], j]) for j in range(t)) for rows in itertools.permutations(range(q), t))
    assert ours <= best + 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_matching_follows_permuted_targets(seed):
    # upstream is order-free in the targets: permuting them permutes the matched target indices
    logits, boxes, targets = _scene(1, 12, 4, (5,), seed)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    permuted = [{k: v[perm] for k, v in targets[0].items()}]
    a = hungarian_match(logits, boxes, targets, cost_bbox=5, cost_giou=2).indices[0]
    b = hungarian_match(logits, boxes, permuted, cost_bbox=5, cost_giou=2).indices[0]
    assert torch.equal(a.query_idx, b.query_idx)
    assert torch.equal(a.target_idx, perm[b.target_idx])


# -- the criterion: hand-built numbers -------------------------------------------------------------
def test_criterion_hand_built():
    logits, boxes, targets = _two_query_scene()
    # a third, unmatched query: logits (0, 0.5) -> no-object wins its argmax
    logits = torch.cat([logits, torch.tensor([[[0.0, 0.5]]])], 1)
    boxes = torch.cat([boxes, torch.tensor([[[0.5, 0.5, 0.1, 0.1]]])], 1)
    matcher = HungarianMatcher(1, 5, 2)
    out = set_criterion({"pred_logits": logits, "pred_boxes": boxes}, targets, num_classes=1, matcher=matcher,
                        eos_coef=0.1)
    losses = out.losses
    assert list(losses) == ["loss_ce", "class_error", "loss_bbox", "loss_giou", "cardinality_error"]
    # q0 -> t1 (class 0, logits (1, 0)), q1 -> t0 (class 0, logits (0, 1)), q2 -> no-object weight 0.1:
    # loss_ce = (log(1 + e^-1) + log(1 + e) + 0.1 * log(1 + e^-0.5)) / (1 + 1 + 0.1)
    nll = [math.log(1 + math.exp(-1)), math.log(1 + math.e), 0.1 * math.log(1 + math.exp(-0.5))]
    assert losses["loss_ce"].item() == pytest.approx(sum(nll) / 2.1, rel=1e-6)
    # q1's top-1 is no-object although it is matched: 1 of 2 correct -> class_error 50
    assert losses["class_error"].item() == 50.0
    # boxes sit exactly on their targets: L1 0, 1 - GIoU 0
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # q0 predicts an object, q1 and q2 no-object: |1 - 2| = 1
    assert losses["cardinality_error"].item() == 1.0
    assert out.num_boxes == 2.0
    # engine.py: 1 * ce + 5 * bbox + 2 * giou; class_error and cardinality_error are left out
    total = weighted_total(losses, build_weight_dict())
    assert total.item() == pytest.approx(sum(nll) / 2.1, rel=1e-6)


def test_cardinality_tie_counts_as_object():
    # argmax returns the first maximum: logits (0, 0) tie class 0 with no-object -> an object
    logits = torch.zeros((1, 3, 2))
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
    assert loss_cardinality(logits, targets).item() == 2.0  # |3 - 1|


def test_criterion_without_targets():
    logits, boxes, _ = _scene(2, 6, 3, (0, 0), seed=4)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros((0, 4))} for _ in range(2)]
    out = set_criterion({"pred_logits": logits, "pred_boxes": boxes}, empty, num_classes=3,
                        matcher=HungarianMatcher(1, 5, 2), eos_coef=0.1)
    assert out.num_boxes == 1.0  # clamped
    assert out.losses["class_error"].item() == 100.0  # accuracy() returns 0 for no targets
    assert out.losses["loss_bbox"].item() == 0.0 and out.losses["loss_giou"].item() == 0.0
    # every query is no-object with the same weight 0.1: the weighted mean is the plain mean
    torch.testing.assert_close(out.losses["loss_ce"], F.cross_entropy(logits.flatten(0, 1),
                                                                      torch.full((12,), 3)))


def test_loss_ce_is_the_weighted_mean():
    logits, boxes, targets = _scene(2, 10, 4, (3, 5), seed=5)
    indices = HungarianMatcher(1, 5, 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    target_classes = torch.full((2, 10), 4)
    for b, (q, j) in enumerate(indices):
        target_classes[b, q] = targets[b]["labels"][j]
    w = torch.where(target_classes == 4, 0.25, 1.0)
    nll = -logits.log_softmax(-1).gather(2, target_classes[..., None])[..., 0]
    ce = loss_labels(logits, targets, indices, num_classes=4, eos_coef=0.25).loss_ce
    torch.testing.assert_close(ce, (w * nll).sum() / w.sum())  # denominator 8 + 0.25 * 12, not num_boxes
    # eos_coef 1: the plain cross-entropy mean over all B*Q queries
    plain = loss_labels(logits, targets, indices, num_classes=4, eos_coef=1.0, log=False)
    assert plain.class_error is None
    torch.testing.assert_close(plain.loss_ce, nll.mean())


def test_box_losses_equal_the_diagonal_of_the_pairwise_giou_bitwise():
    logits, boxes, targets = _scene(2, 30, 4, (6, 9), seed=6)
    indices = HungarianMatcher(1, 5, 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    src = torch.cat([boxes[b, q] for b, (q, _) in enumerate(indices)])
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    upstream_giou = (1 - torch.diag(_upstream_shaped_giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))))
    ours = loss_boxes(boxes, targets, indices, 15.0)
    assert torch.equal(ours.loss_giou, upstream_giou.sum() / 15.0)
    assert torch.equal(ours.loss_bbox, F.l1_loss(src, tgt, reduction="none").sum() / 15.0)


def test_degenerate_off_diagonal_pair_keeps_gradients_finite():
    # pair 0: a zero-area predicted box; pair 1's target is a zero-area box at the same point.
    # Upstream's (P, P) GIoU matrix has union 0 at [0, 1]: its zero gradient becomes 0/0 = NaN on
    # query 0's box. Pair by pair there is no such entry (documented difference, gradients only).
    boxes = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.2, 0.2]]], requires_grad=True)
    targets = [{"labels": torch.tensor([0, 0]),
                "boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])}]
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    out = loss_boxes(boxes, targets, indices, 2.0)
    # L1: pair 0 |0.25| + |0.25| = 0.5, pair 1 |0.25| * 2 + |0.2| * 2 = 0.9 -> 1.4 / 2
    torch.testing.assert_close(out.loss_bbox, torch.tensor(0.7))
    (out.loss_bbox + out.loss_giou).backward()
    assert torch.isfinite(boxes.grad).all()


def test_aux_layers_are_matched_again():
    logits, boxes, targets = _scene(2, 12, 3, (3, 4), seed=7)
    other_logits, other_boxes, _ = _scene(2, 12, 3, (3, 4), seed=8)
    outputs = {"pred_logits": logits, "pred_boxes": boxes,
               "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes},
                               {"pred_logits": other_logits, "pred_boxes": other_boxes}]}
    criterion = SetCriterion(3, HungarianMatcher(1, 5, 2), build_weight_dict(aux_layers=2), 0.1)
    result = criterion.compute(outputs, targets)
    assert list(result.losses) == ["loss_ce", "class_error", "loss_bbox", "loss_giou", "cardinality_error",
                                   "loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0",
                                   "loss_ce_1", "loss_bbox_1", "loss_giou_1", "cardinality_error_1"]
    for key in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):  # aux 0 is the final layer again
        assert torch.equal(result.losses[key], result.losses[key + "_0"])
    alone = HungarianMatcher(1, 5, 2)({"pred_logits": other_logits, "pred_boxes": other_boxes}, targets)
    assert all(torch.equal(x, y) for a, b in zip(alone, result.aux_indices[1]) for x, y in zip(a, b))
    total = criterion.weighted_total(result.losses)
    manual = sum(result.losses[k] * w for k, w in criterion.weight_dict.items())
    torch.testing.assert_close(total, manual)


def test_unknown_loss_name_asserts_like_upstream():
    with pytest.raises(AssertionError):
        SetCriterion(3, HungarianMatcher(), {}, 0.1, ["labels", "boxs"])
    with pytest.raises(NotImplementedError):
        SetCriterion(3, HungarianMatcher(), {}, 0.1, ["masks"])


def test_gradients_float64():
    logits, boxes, targets = _scene(1, 6, 3, (3,), seed=9)
    logits, boxes = logits.double(), boxes.double()
    targets = [{"labels": t["labels"], "boxes": t["boxes"].double()} for t in targets]
    indices = HungarianMatcher(1, 5, 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)

    def fn(lg, bx):
        ce = loss_labels(lg, targets, indices, num_classes=3, eos_coef=0.1, log=False).loss_ce
        box = loss_boxes(bx, targets, indices, 3.0)
        return ce + 5 * box.loss_bbox + 2 * box.loss_giou

    assert torch.autograd.gradcheck(fn, (logits.requires_grad_(), boxes.requires_grad_()))


# -- trace ---------------------------------------------------------------------------------------
def _run(trace, device="cpu"):
    logits, boxes, targets = _scene(2, 15, 4, (3, 5), seed=10, device=device)
    aux_logits, aux_boxes, _ = _scene(2, 15, 4, (3, 5), seed=11, device=device)
    leaves = [t.clone().requires_grad_() for t in (logits, boxes, aux_logits, aux_boxes)]
    outputs = {"pred_logits": leaves[0], "pred_boxes": leaves[1],
               "aux_outputs": [{"pred_logits": leaves[2], "pred_boxes": leaves[3]}]}
    criterion = SetCriterion(4, HungarianMatcher(1, 5, 2), build_weight_dict(aux_layers=1), 0.1)
    result = criterion.compute(outputs, targets, trace=trace)
    total = criterion.weighted_total(result.losses, trace=trace)
    total.backward()
    return result, total, [leaf.grad for leaf in leaves]


def test_trace_changes_no_bit_and_names_follow_the_pattern(device):
    plain, plain_total, plain_grads = _run(None, device)
    trace = Trace()
    traced, traced_total, traced_grads = _run(trace, device)
    assert torch.equal(plain_total, traced_total)
    assert all(torch.equal(plain.losses[k], traced.losses[k]) for k in plain.losses)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, traced_grads))
    names = trace.names()
    assert all(STAGE_NAME.match(n) for n in names), names
    match = ["cost_class", "cost_bbox", "cost_giou", "cost_total", "assignment"]
    assert names == ([f"match.{s}" for s in match] + ["loss.num_boxes", "loss.labels", "loss.class_error",
                                                        "loss.boxes", "loss.cardinality"]
                     + [f"match_aux0.{s}" for s in match] + ["loss_aux0.labels", "loss_aux0.boxes",
                                                             "loss_aux0.cardinality", "loss.total"])
    assignment = trace.get("match.assignment")
    assert assignment["query"].shape == (8,) and assignment["l1_parts"].shape == (8, 4)
    # the recorded pair costs are the cost matrix's entries at the matched pairs
    C = trace.get("match.cost_total")["C"]  # (Q, N): image 1's targets are columns 3..7
    column = assignment["target"] + torch.where(assignment["image"] == 1, 3, 0)
    assert torch.equal(C[assignment["query"], column], assignment["C"])
    assert trace.get("match.cost_total").values["cost_bbox"] == 5
    assert trace.get("loss.class_error")["class_error"].shape == ()
    trace.to_dict()  # serialisable


def test_standalone_functions_record_their_stage():
    trace = Trace()
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    generalized_box_iou(a, a, trace=trace)
    box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), trace=trace)
    assert trace.names() == ["giou.pairwise", "boxes.xyxy"]
