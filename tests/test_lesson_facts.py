"""The facts the lessons of the newer assigner families state, checked on the real computed values.

Each scene is built from the lesson file itself (the step's scene, or the last one before a "keep"
step), so a lesson edited without its numbers being true fails here. Every number a lesson text
states is asserted on what losscore computes for that scene.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from losscore import registry
from losscore.lessons import lesson
from losscore.scene import Box, Pin, Scene
from losscore.trace import Trace

DEFAULTS = {"width": 640, "height": 640, "nc": 80, "seed": 0, "progress": 0.5}  # the page's scene defaults


def step_scene(lesson_id: str, index: int, **params) -> Scene:
    """The scene a lesson step starts from ("keep" steps: the last explicit scene before them), with
    ``params`` laid over the step's own (what a learner sets with the step's controls)."""
    data = lesson(lesson_id)
    steps = data["steps"]
    while steps[index]["scene"] == "keep":
        index -= 1
    scene = steps[index]["scene"]
    assert "preset" not in scene, "these lessons draw their boxes inline"
    return Scene(data["scheme"], scene.get("width", DEFAULTS["width"]), scene.get("height", DEFAULTS["height"]),
                 scene.get("nc", DEFAULTS["nc"]), tuple(Box(**b) for b in scene["boxes"]),
                 {**scene.get("params", {}), **params}, seed=scene.get("seed", DEFAULTS["seed"]),
                 progress=scene.get("progress", DEFAULTS["progress"]))


def run(scene: Scene, trace: Trace | None = None):
    return registry.explain(scene, trace)


def cells(result, **where) -> list[tuple[int, int, int]]:
    """(level, gi, gj) of the positives whose columns equal ``where``."""
    p = result.positives
    keep = torch.ones_like(p["gt"], dtype=torch.bool)
    for name, value in where.items():
        keep &= p[name] == value
    return sorted(zip(p["level"][keep].tolist(), p["gi"][keep].tolist(), p["gj"][keep].tolist()))


def checks(result, test: str, level: int | None = None, gi: int | None = None, gj: int | None = None):
    return [c for c in result.check_list() if c.test == test and (level is None or c.level == level)
            and (gi is None or c.gi == gi) and (gj is None or c.gj == gj)]


def test_every_new_lesson_sets_params_the_scheme_declares():
    for lesson_id in ("small-object", "one-to-one", "simota-k", "atss-zero", "rtmdet-unmatched", "detr-one-query"):
        data = lesson(lesson_id)
        spec = registry.get_scheme(data["scheme"])
        names = {p.name for p in spec.params}
        maps = {m.name for m in spec.maps}
        for step in data["steps"]:
            if step["scene"] != "keep":
                assert set(step["scene"].get("params", {})) <= names
                assert step["scene"]["heat"] == "-" or step["scene"]["heat"] in maps
            for control in step["controls"]:
                if control.startswith("param:"):
                    assert control[len("param:"):] in names, (lesson_id, control)


# -- 12: the small object --------------------------------------------------------------------------
def test_small_object_has_no_candidate_without_the_enlargement():
    scene = step_scene("small-object", 0)
    assert scene.params["small_object_enlargement"] is False
    b = scene.boxes[0]
    assert (b.x2 - b.x1, b.y2 - b.y1, (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2) == (6, 6, 320, 320)
    trace = Trace()
    result = run(scene, trace)
    assert result.positives["gt"].numel() == 0  # 0 positives, on every level
    assert float(result.losses["box"]) == 0.0 and float(result.losses["dfl"]) == 0.0
    assert int(trace.get("assigner.candidates")["candidate_count"].sum()) == 0
    assert all(float(m.sum()) == 0 for m in result.maps["candidates"])
    # the nearest anchor points named in the text, none strictly inside (317, 323)
    for stride, nearest in ((8, (316, 324)), (16, (312, 328)), (32, (304, 336))):
        centres = [(i + 0.5) * stride for i in range(640 // stride)]
        assert [c for c in centres if 317 < c < 323] == []
        assert max(c for c in centres if c <= 320) == nearest[0] and min(c for c in centres if c >= 320) == nearest[1]


def test_small_object_gains_four_p3_positives_with_the_enlargement():
    scene = step_scene("small-object", 1)
    assert scene.params["small_object_enlargement"] is True
    result = run(scene)
    rules = registry.get_scheme("yolov8").rules
    assert cells(result) == [(0, 39, 39), (0, 39, 40), (0, 40, 39), (0, 40, 40)]  # P3 only
    assert {rules[r].name for r in result.positives["rule"].tolist()} == {"top-k (enlarged box)"}
    assert rules[3].glyph == "□"
    assert not bool(result.positives["in_box"].any())  # outside the real box
    assert bool((result.positives["align_metric"] > 0).all())  # no tie decides them at progress 0.8
    assert sum(float(m.sum()) for m in result.maps["enlarged_only"]) == 4
    # u is measured against the real box: the target box is the 6x6 box
    assert result.positives["target_box_px"].tolist() == [[317.0, 317.0, 323.0, 323.0]] * 4
    # the switch off again (the last step's control): back to 0
    assert run(step_scene("small-object", 2, small_object_enlargement=False)).positives["gt"].numel() == 0


# -- 13: one-to-one and one-to-many ------------------------------------------------------------------
def test_one_to_many_keeps_ten_and_one_to_one_keeps_its_best():
    scene = step_scene("one-to-one", 0)
    result = run(scene)
    p = result.positives
    o2m, o2o = p["branch"] == 0, p["branch"] == 1
    assert int(o2m.sum()) == 10 and int(o2o.sum()) == 1
    assert Counter(p["level"][o2m].tolist()) == {0: 5, 1: 5}  # 10 ▲ over P3 and P4
    (o2o_cell,) = cells(result, branch=1)
    assert o2o_cell[0] == 1  # on P4
    best = int(p["align_metric"][o2m].argmax())
    # the one-to-one cell is the one-to-many positive with the largest t (its rank 0)
    rows = o2m.nonzero().squeeze(1).tolist()
    top = rows[best]
    assert (int(p["level"][top]), int(p["gi"][top]), int(p["gj"][top])) == o2o_cell
    assert int(p["topk_rank"][top]) == 0 and int(p["topk_rank"][o2o]) == 0  # ranked 0 in both lists
    assert [c for c in checks(result, "o2o.topk2") if c.passed and (c.level, c.gi, c.gj) == o2o_cell]
    rules = registry.get_scheme("yolo26").rules
    assert rules[0].glyph == "▲" and rules[4].glyph == "●"
    assert {rules[r].name for r in p["rule"][o2m].tolist()} <= {r.name for r in rules[:4]}
    assert {rules[r].name for r in p["rule"][o2o].tolist()} <= {r.name for r in rules[4:]}
    # raising topk2 keeps more one-to-one cells
    assert int((run(step_scene("one-to-one", 1, o2o_topk2=3)).positives["branch"] == 1).sum()) == 3


@pytest.mark.parametrize("epoch, o2m, o2o", [(0, 0.8, 0.2), (99, 0.1, 0.9), (100, 0.1, 0.9)])
def test_one_to_one_branch_weights_follow_the_epoch(epoch, o2m, o2o):
    result = run(step_scene("one-to-one", 2, epoch=epoch))
    assert float(result.losses["o2m_weight"]) == pytest.approx(o2m)
    assert float(result.losses["o2o_weight"]) == pytest.approx(o2o)
    assert float(result.losses["o2o_weight"]) == pytest.approx(1 - float(result.losses["o2m_weight"]))
    gains = {t.name: t.gain for t in result.composition.terms}
    assert gains["box_o2m"] == pytest.approx(7.5 * o2m) and gains["box_o2o"] == pytest.approx(7.5 * o2o)


def test_one_to_many_weight_falls_linearly():
    weights = [float(run(step_scene("one-to-one", 2, epoch=e)).losses["o2m_weight"]) for e in (1, 50, 98)]
    assert weights == sorted(weights, reverse=True) and 0.1 < weights[-1] < weights[0] < 0.8


# -- 14: SimOTA's dynamic k --------------------------------------------------------------------------
def simota(scene: Scene):
    trace = Trace()
    result = run(scene, trace)
    iou_sum = float(trace.get("simota.dynamic_k")["gt_iou_sum"][0])
    k = int(trace.get("simota.dynamic_k")["gt_dynamic_k"][0])
    return result, iou_sum, k


def test_simota_k_is_small_early_in_training():
    scene = step_scene("simota-k", 0)
    assert scene.params["version"] == "0.3.0" and scene.progress == 0.2
    result, iou_sum, k = simota(scene)
    assert 4 < iou_sum < 4.5 and k == 4 == max(1, int(iou_sum))  # "just over 4, so k = 4"
    assert result.positives["gt"].numel() == 4  # one box, no conflict: k positives
    assert checks(result, "top10_iou") and checks(result, "select")  # the inspector's place and cost


def test_simota_k_grows_with_better_predictions():
    scene = step_scene("simota-k", 1)
    assert scene.progress == 0.9
    result, iou_sum, k = simota(scene)
    assert 8.5 < iou_sum < 9 and k == 8  # "almost 9, so k = 8"
    assert Counter(result.positives["level"].tolist()) == {0: 2, 1: 2, 2: 4}
    assert result.positives["dynamic_k"].tolist() == [8] * 8


def test_simota_versions_disagree():
    main, main_sum, main_k = simota(step_scene("simota-k", 2, version="main"))
    assert main_k == 8  # k stays 8 at progress 0.9 ...
    release = run(step_scene("simota-k", 2))
    assert cells(main) != cells(release)  # ... but the positives move
    assert Counter(main.positives["level"].tolist()) != Counter(release.positives["level"].tolist())
    half = step_scene("simota-k", 2)
    half = Scene(half.scheme, half.width, half.height, half.nc, half.boxes, dict(half.params), seed=half.seed,
                 progress=0.5)
    assert simota(half)[2] == 5
    assert simota(Scene(half.scheme, half.width, half.height, half.nc, half.boxes, {"version": "main"},
                        seed=half.seed, progress=0.5))[2] == 3


# -- 15: ATSS gives a box nothing -------------------------------------------------------------------
def test_atss_box_gets_nine_p3_positives_with_topk_9():
    scene = step_scene("atss-zero", 0)
    b = scene.boxes[0]
    assert (b.x2 - b.x1, b.y2 - b.y1) == (256, 32)
    result = run(scene)
    assert Counter(result.positives["level"].tolist()) == {0: 9, 1: 3}  # 12 positives, 9 on P3, 3 on P4


def test_atss_threshold_above_every_iou_with_topk_1():
    scene = step_scene("atss-zero", 1)
    assert scene.params["topk"] == 1
    result = run(scene)
    assert result.positives["gt"].numel() == 0
    (zero,) = checks(result, "zero_positives")
    assert zero.values["reason"] == 2  # the threshold is above every candidate's IoU
    ious = {c.level: c.values["iou"] for c in checks(result, "iou_threshold")}
    assert len(ious) == 5  # one candidate per level
    assert round(ious[0], 3) == round(ious[1], 3) == 0.2 and round(ious[2], 3) == 0.125
    assert ious[3] < 0.05 and ious[4] < 0.05  # "two tiny ones"
    assert (round(zero.values["mean"], 3), round(zero.values["std"], 3), round(zero.values["threshold"], 3)) == (
        0.113, 0.091, 0.204)
    assert zero.values["threshold"] > max(ious.values())
    centre = checks(result, "iou_threshold", level=0, gi=40, gj=40)
    assert centre and not centre[0].passed


def test_atss_thin_box_between_anchor_rows_gets_nothing_at_any_topk():
    scene = step_scene("atss-zero", 2)
    b = scene.boxes[0]
    assert (b.x2 - b.x1, b.y2 - b.y1, b.y1, b.y2) == (200, 6, 105, 111)
    result = run(scene)
    assert result.positives["gt"].numel() == 0
    (zero,) = checks(result, "zero_positives")
    assert zero.values["reason"] == 3  # candidates reach the threshold, no centre inside
    iou = checks(result, "iou_threshold")
    assert len(iou) == 45 and sum(c.passed for c in iou) == 9
    assert not any(c.passed for c in checks(result, "centre_inside"))
    for stride in (8, 16, 32, 64, 128):  # no row of anchor centres between y = 105 and 111
        assert [j * stride for j in range(640 // stride + 1) if 105 < j * stride < 111] == []
    for topk in (1, 2, 3, 5, 9, 13, 20, 30, 50):
        assert run(step_scene("atss-zero", 2, topk=topk)).positives["gt"].numel() == 0, topk


# -- 16: RTMDet leaves a high-IoU point out -----------------------------------------------------------
def test_rtmdet_high_iou_point_is_not_positive():
    scene = step_scene("rtmdet-unmatched", 0)
    result = run(scene)
    assert Counter(result.positives["level"].tolist()) == {0: 3, 1: 4}
    dyn = checks(result, "dynamic_k")
    inside = [c for c in dyn if c.values["inside"]]
    best = max(inside, key=lambda c: c.values["iou"])
    assert (best.level, best.gi, best.gj) == (1, 19, 17)  # the brightest cell: the highest IoU inside the box
    assert not best.passed and (1, 19, 17) not in cells(result)
    v = best.values
    assert round(v["iou"], 2) == 0.76
    assert (round(v["cost_class"], 1), round(v["cost_iou"], 2), round(v["cost_centre"], 2), round(v["distance"], 2),
            round(v["cost"], 2)) == (2.4, 0.83, 1.42, 3.15, 4.65)
    assert v["rank"] == 31 and v["dynamic_k"] == 7
    p = result.positives
    assert 7 < float(p["topk_iou_sum"][0]) < 7.5 and p["dynamic_k"].tolist() == [7] * 7
    assert sorted(p["cost_rank"].tolist()) == list(range(7))
    assert 0.39 <= round(float(p["iou"].min()), 2) and round(float(p["iou"].max()), 2) == 0.52
    assert float(p["cost"].max()) < 3.1
    assert float(p["cost_class"].max()) < v["cost_class"] and float(p["distance"].max()) < v["distance"]
    # P4 (14, 18): IoU 0.62, loses by its centre cost
    (other,) = [c for c in dyn if (c.level, c.gi, c.gj) == (1, 14, 18)]
    assert not other.passed and round(other.values["iou"], 2) == 0.62
    assert other.values["cost_centre"] > other.values["cost_class"] + other.values["cost_iou"]
    assert other.values["cost_centre"] > v["cost"]


def test_rtmdet_iou_weight_6_takes_the_high_iou_point():
    result = run(step_scene("rtmdet-unmatched", 2, iou_weight=6.0))
    (check,) = [c for c in checks(result, "dynamic_k") if (c.level, c.gi, c.gj) == (1, 19, 17)]
    assert check.passed and check.values["rank"] == 5
    assert (1, 19, 17) in cells(result) and result.positives["gt"].numel() == 7


# -- 17: DETR, one query per box ---------------------------------------------------------------------
def test_detr_matches_each_box_to_exactly_one_query():
    scene = step_scene("detr-one-query", 0)
    assert scene.params["num_queries"] == 10
    result = run(scene)
    pairs = sorted(zip(result.positives["gt"].tolist(), result.positives["query"].tolist()))
    assert pairs == [(0, 0), (1, 1)]
    matched = result.queries["matched_gt"].tolist()
    assert sorted(m for m in matched if m >= 0) == [0, 1] and matched.count(-1) == 8
    # the cost is −1·p + 5·L1 − 2·GIoU
    p = result.positives
    recomputed = -1 * p["p_class"] + 5 * p["cost_bbox"] - 2 * p["giou"]
    assert torch.allclose(recomputed, p["cost_total"], atol=1e-5)
    assert round(float(p["cost_total"][p["gt"] == 0]), 2) == 1.16


def test_detr_dragging_query_4_onto_box_0_flips_the_matching():
    scene = step_scene("detr-one-query", 1)
    before = run(scene)
    b = scene.boxes[0]
    x1, y1, x2, y2 = before.queries["box_px"][4].tolist()
    assert int(before.queries["matched_gt"][4]) == -1  # a grey query ...
    assert y1 > (b.y1 + b.y2) / 2 and x1 < b.x2 and x2 > b.x1  # ... just below box 0 ...
    assert 0.7 < (x2 - x1) / (b.x2 - b.x1) < 1.3 and 0.6 < (y2 - y1) / (b.y2 - b.y1) < 1.3  # ... about its size
    before_l1 = float(before.matrices["cost_bbox"][4, 0])
    before_giou = float(before.matrices["cost_giou"][4, 0])
    # a drag moves the query's box and keeps its size (the page pins query 4 at the new centre)
    pin = Pin(0, 4, 0, 0, (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2, x2 - x1, y2 - y1)
    after = run(Scene(scene.scheme, scene.width, scene.height, scene.nc, scene.boxes, dict(scene.params),
                      seed=scene.seed, progress=scene.progress, pins=(pin,)))
    pairs = dict(zip(after.positives["gt"].tolist(), after.positives["query"].tolist()))
    assert pairs == {0: 4, 1: 1}  # the matching flips; box 1 keeps query 1
    row = after.positives["gt"] == 0
    assert float(after.positives["cost_bbox"][row]) < before_l1  # its L1 and GIoU costs fall
    assert float(after.positives["cost_giou"][row]) < before_giou
    assert round(float(after.positives["cost_total"][row]), 1) == -1.0  # "about −1"
    assert float(after.positives["p_class"][row]) < 0.01  # its class probability is almost 0
    assert int(after.queries["matched_gt"][0]) == -1  # query 0 joins the unmatched


@pytest.mark.parametrize("query", range(3, 10))
def test_detr_a_grey_query_laid_exactly_on_a_box_takes_it(query):
    """Not in the text, but what makes the lesson robust: a grey query that covers box 0 exactly (L1 0,
    GIoU 1) costs about −2 and wins, whichever it is."""
    scene = step_scene("detr-one-query", 1)
    b = scene.boxes[0]
    pin = Pin(0, query, 0, 0, (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2, b.x2 - b.x1, b.y2 - b.y1)
    after = run(Scene(scene.scheme, scene.width, scene.height, scene.nc, scene.boxes, dict(scene.params),
                      seed=scene.seed, progress=scene.progress, pins=(pin,)))
    assert dict(zip(after.positives["gt"].tolist(), after.positives["query"].tolist())) == {0: query, 1: 1}
    assert float(after.positives["cost_total"][after.positives["gt"] == 0]) == pytest.approx(-2, abs=0.01)


def test_detr_unmatched_queries_learn_no_object_with_eos_coef():
    scene = step_scene("detr-one-query", 2)
    result = run(scene)
    q = result.queries
    unmatched = q["matched_gt"] == -1
    assert int(unmatched.sum()) == 8
    assert torch.allclose(q["ce_weight"][unmatched], torch.tensor(0.1))
    assert torch.allclose(q["ce_weight"][~unmatched], torch.tensor(1.0))
    assert float(q["ce_weight"][unmatched].sum()) == pytest.approx(0.8)
    assert bool((q["class_target"][unmatched] == scene.nc).all())  # "no object" is class C
    # no box loss for them: loss_bbox and loss_giou come from the matched pairs only
    p = result.positives
    assert float(result.losses["loss_bbox"]) == pytest.approx(float(p["loss_bbox_term"].sum()), rel=1e-5)
    assert float(result.losses["loss_giou"]) == pytest.approx(float(p["loss_giou_term"].sum()), rel=1e-5)
    # set_cost_* change only the matching: the loss weights stay
    other = run(step_scene("detr-one-query", 2, set_cost_bbox=1.0))
    assert [t.gain for t in other.composition.terms] == [t.gain for t in result.composition.terms]
