"""The "detr" scheme (kind "queries"): explain() on learner scenes, against DETR's own SetCriterion."""
from __future__ import annotations

import json

import pytest
import torch

from losscore import export
from losscore.detr import scene as S
from losscore.detr.loss import build_weight_dict, set_criterion, weighted_total
from losscore.detr.matcher import HungarianMatcher
from losscore.predictions import blend_logits
from losscore.registry import explain, get_scheme, validate
from losscore.scene import Box, Pin, Scene
from losscore.trace import Trace
from losscore.verify import verify_export


def detr(*boxes, nc=4, **kwargs):
    return Scene("detr", kwargs.pop("width", 640), kwargs.pop("height", 640), nc, tuple(boxes), device="cpu", **kwargs)


BUSY = (Box(3, 52, 60, 148, 260), Box(0, 300, 300, 420, 380), Box(1, 500, 100, 520, 300), Box(2, 318, 318, 324, 323),
        Box(1, 310, 305, 400, 370))


def test_spec_is_a_queries_scheme_with_detrs_defaults():
    spec = get_scheme("detr")
    assert spec.kind == "queries" and spec.required_columns == ("gt", "query", "rule")
    assert spec.defaults() == {"num_queries": 20, "set_cost_class": 1.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0,
                               "eos_coef": 0.1, "bbox_loss_coef": 5.0, "giou_loss_coef": 2.0}
    assert spec.param("num_queries").max == 300
    assert {c.name for c in spec.query_columns} >= {"query", "box_px", "pred_class", "pred_prob", "no_object_prob",
                                                   "matched_gt"}
    assert [m.name for m in spec.matrices] == ["cost_total", "cost_class", "cost_bbox", "cost_giou"]
    box_px = [c for c in spec.query_columns if c.name == "box_px"][0]
    assert box_px.box == "xyxy" and box_px.unit == "px"
    doc = spec.to_dict()
    assert doc["kind"] == "queries" and len(doc["query_columns"]) == len(spec.query_columns)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_positives_and_losses_equal_a_direct_call(progress):
    scene = validate(detr(*BUSY, seed=5, progress=progress, params={"num_queries": 12}))
    result = explain(scene)
    labels, boxes, _ = S.detr_inputs(scene)
    generator = torch.Generator().manual_seed(scene.seed)
    raw = blend_logits(S.perfect_head(scene, labels, boxes, 12), progress, generator)
    outputs = {"pred_logits": raw[..., :5], "pred_boxes": raw[..., 5:].sigmoid()}
    direct = set_criterion(outputs, [{"labels": labels, "boxes": boxes}], num_classes=4,
                           matcher=HungarianMatcher(1, 5, 2), eos_coef=0.1)
    total = weighted_total(direct.losses, build_weight_dict(5, 2))
    assert torch.equal(result.positives["query"], direct.indices[0].query_idx)
    assert torch.equal(result.positives["gt"], direct.indices[0].target_idx)
    for name, value in direct.losses.items():
        assert torch.allclose(result.losses[name], value, rtol=1e-6, atol=0), name
    assert torch.allclose(result.losses["total"], total, rtol=1e-6, atol=0)
    assert result.matrices["cost_total"].shape == (12, 5)


def test_hovered_pair_cost_is_filled_in():
    result = explain(detr(*BUSY, seed=1, progress=0.5))
    pos = result.positives
    expected = pos["weight_bbox"] * pos["cost_bbox"] + pos["weight_class"] * pos["cost_class"] \
        + pos["weight_giou"] * pos["cost_giou"]
    assert torch.allclose(pos["cost_total"], expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pos["p_class"], -pos["cost_class"]) and torch.allclose(pos["giou"], -pos["cost_giou"])
    C = result.matrices["cost_total"]
    assert torch.equal(C[pos["query"], pos["gt"]], pos["cost_total"])
    check = [c for c in result.check_list() if c.passed][0]
    assert "C = −1·p" in str(check.text) and "+ 5·L1" in str(check.text) and "− 2·GIoU" in str(check.text)
    formula = get_scheme("detr").column("cost_total").formula
    assert "{p_class}" in formula and "{cost_bbox}" in formula and "{giou}" in formula


def test_dragging_a_query_flips_the_matching():
    # progress 1: query 0 predicts box A exactly, query 1 box B. A and B (same class) overlap 80/120 (IoU 0.67).
    A, B = Box(0, 100, 100, 200, 200), Box(0, 120, 100, 220, 200)
    far = Pin(0, 1, 0, 0, 600.0, 600.0, 20.0, 20.0)  # query 1 dragged far away
    result = explain(detr(A, B, nc=1, progress=1.0, params={"num_queries": 2}, pins=(far,)))
    # B's cheapest query is now query 0 (C = -1 + 5·0.0625 - 2·0.667 = -2.02 vs about 8.8 for query 1), but query 0
    # is worth more on A (C = -3): the total -3 + 8.8 beats -2.02 + 8.9, so B keeps query 1, not its cheapest
    pos = result.positives
    assert pos["query"].tolist() == [0, 1] and pos["gt"].tolist() == [0, 1]
    assert pos["rule"].tolist() == [0, 1] and pos["cost_rank"].tolist() == [0, 1]
    assert any("not their cheapest" in str(n) for n in result.notes)
    # drag query 0 onto B and query 1 onto A: the matching swaps
    swapped = explain(detr(A, B, nc=1, progress=1.0, params={"num_queries": 2},
                           pins=(Pin(0, 0, 0, 0, 170.0, 150.0, 100.0, 100.0), Pin(0, 1, 0, 0, 150.0, 150.0, 100.0, 100.0))))
    assert swapped.positives["query"].tolist() == [0, 1] and swapped.positives["gt"].tolist() == [1, 0]
    assert swapped.queries["matched_gt"].tolist() == [1, 0]


def test_queries_table():
    result = explain(detr(*BUSY, seed=2, progress=0.7, params={"num_queries": 8}))
    q = result.queries
    assert q["query"].tolist() == list(range(8)) and q["box_px"].shape == (8, 4)
    assert torch.allclose(q["box_px"][:, 2] - q["box_px"][:, 0], q["box_cxcywh"][:, 2] * 640, atol=1e-3)
    matched = q["matched_gt"] >= 0
    assert int(matched.sum()) == 5 and torch.equal(q["matched_gt"][result.positives["query"]], result.positives["gt"])
    assert torch.equal(q["class_target"][~matched], torch.full((3,), 4))
    assert torch.allclose(q["ce_weight"][~matched], torch.full((3,), 0.1))
    assert abs(int(q["is_object"].sum()) - 5) == result.losses["cardinality_error"].item()


def test_no_box_gives_class_error_100_and_a_note():
    result = explain(detr(progress=0.5))
    assert result.losses["class_error"].item() == 100 and result.losses["num_boxes"].item() == 1
    assert result.losses["loss_bbox"].item() == 0 and result.losses["loss_giou"].item() == 0
    assert result.positives["gt"].numel() == 0 and result.matrices["cost_total"].shape == (20, 0)
    assert any("class_error is 100" in str(n) for n in result.notes)


def test_more_boxes_than_queries():
    result = explain(detr(*BUSY, params={"num_queries": 3}))
    assert result.positives["gt"].numel() == 3
    assert any("stay unmatched" in str(n) for n in result.notes)


def test_unreachable_pin_is_clamped_with_a_note():
    result = explain(detr(*BUSY, pins=(Pin(0, 4, 0, 0, 700.0, 100.0, 50.0, 50.0),)))  # cx beyond the image width
    assert result.queries["box_cxcywh"][4, 0].item() == 1.0
    assert any("Pin 0 (query 4) is unreachable" in str(n) for n in result.notes)
    with pytest.raises(ValueError, match="query 20 does not exist"):
        validate(detr(*BUSY, pins=(Pin(0, 20, 0, 0, 100.0, 100.0, 50.0, 50.0),)))


def test_all_matcher_weights_zero_is_refused():
    with pytest.raises(ValueError, match="all 0"):
        explain(detr(*BUSY, params={"set_cost_class": 0.0, "set_cost_bbox": 0.0, "set_cost_giou": 0.0}))


def test_class_cost_is_minus_the_probability_with_no_object_in_the_softmax():
    result = explain(detr(*BUSY, seed=3, progress=0.3))
    notes = " ".join(str(n) for n in result.notes)
    assert "minus the probability" in notes and "no-object included" in notes
    q = result.queries
    # the no-object column takes part in the softmax: the class probabilities and no-object sum to at most 1
    assert ((q["pred_prob"] + q["no_object_prob"]) <= 1 + 1e-6).all()


def test_trace_changes_no_bit_and_stages_follow_the_pattern():
    scene = detr(*BUSY, seed=4, progress=0.6, pins=(Pin(0, 2, 0, 0, 100.0, 150.0, 80.0, 120.0),))
    plain, traced_trace = explain(scene, None), Trace()
    traced = explain(scene, traced_trace)
    for name in plain.positives:
        assert torch.equal(plain.positives[name], traced.positives[name]), name
    for name in plain.queries:
        assert torch.equal(plain.queries[name], traced.queries[name]), name
    for name in plain.matrices:
        assert torch.equal(plain.matrices[name], traced.matrices[name]), name
    for name in plain.losses:
        assert torch.equal(plain.losses[name], traced.losses[name]), name
    assert traced_trace.names()[:6] == ["inputs.queries", "match.cost_class", "match.cost_bbox", "match.cost_giou",
                                        "match.cost_total", "match.assignment"]


def test_export_round_trip_verifies_and_carries_queries_and_matrices():
    run = export.run_scene(detr(*BUSY, seed=4, progress=0.7))
    doc = json.loads(json.dumps(export.build_export(run)))
    assert len(doc["result"]["queries"]) == 20 and set(doc["result"]["matrices"]) == {"cost_total", "cost_class",
                                                                                      "cost_bbox", "cost_giou"}
    assert doc["result"]["matrices"]["cost_total"]["shape"] == [20, 5]
    report = verify_export(doc)
    assert report.ok, report.mismatches


@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_every_non_finite_number_has_a_note(progress):
    for scene in (detr(progress=progress), detr(*BUSY, progress=progress),
                  detr(Box(0, 318, 318, 319, 319), progress=progress), detr(Box(1, -300, -300, 940, 940),
                                                                              progress=progress)):
        result = explain(scene)
        tensors = list(result.positives.values()) + list(result.queries.values()) + list(result.matrices.values()) \
            + list(result.losses.values())
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
            assert any("not finite" in str(n) for n in result.notes)


def test_stage_cells_name_recorded_stages():
    trace = Trace()
    result = explain(detr(*BUSY, seed=2, progress=0.6), trace)
    cells = result.stage_cells()
    assert set(cells) <= set(trace.names()) and "match.assignment" in cells
    assert {(c.gt, c.anchor) for c in cells["match.assignment"]} == set(zip(result.positives["gt"].tolist(),
                                                                           result.positives["query"].tolist()))
