"""The "atss" and "rtmdet" schemes: explain() on learner scenes, against the family's own math."""
from __future__ import annotations

import json
import math

import pytest
import torch

from losscore import export
from losscore.mmdet_assigners import scene as S
from losscore.mmdet_assigners.atss import atss_assign
from losscore.mmdet_assigners.dsl import dsl_assign
from losscore.predictions import blend_logits
from losscore.registry import explain, get_scheme, validate
from losscore.scene import Box, Pin, Scene
from losscore.trace import Trace
from losscore.verify import verify_export


def atss(*boxes, nc=4, **kwargs):
    return Scene("atss", kwargs.pop("width", 640), kwargs.pop("height", 640), nc, tuple(boxes), device="cpu", **kwargs)


def rtmdet(*boxes, nc=4, **kwargs):
    return Scene("rtmdet", kwargs.pop("width", 640), kwargs.pop("height", 640), nc, tuple(boxes), device="cpu",
                 **kwargs)


BUSY = (Box(3, 52, 60, 148, 260), Box(0, 300, 300, 420, 380), Box(1, 500, 100, 520, 300), Box(2, 318, 318, 324, 323),
        Box(1, 310, 305, 400, 370))


def dense_heads(shapes, background, writes, progress, seed):
    """The heads as blend_logits of the dense perfect head, level by level (what blended_heads stands for)."""
    generator = torch.Generator().manual_seed(seed)
    heads = []
    for shape, (index, values) in zip(shapes, writes):
        perfect = background.expand(shape).clone()
        perfect.view(-1)[index] = values
        heads.append(blend_logits(perfect, progress, generator))
    return heads


def rows(head, first, count=None):
    part = head[:, first:] if count is None else head[:, first:first + count]
    return part.permute(0, 2, 3, 1).reshape(-1, part.shape[1]).contiguous()


# -- declarations -------------------------------------------------------------------------------
def test_specs_follow_upstream_defaults():
    atss_spec, rtm_spec = get_scheme("atss"), get_scheme("rtmdet")
    assert atss_spec.defaults() == {"topk": 9, "ignore_iof_thr": -1.0, "ignore_class": -1, "gamma": 2.0, "alpha": 0.25,
                                    "loss_cls_weight": 1.0, "loss_bbox_weight": 2.0, "loss_centerness_weight": 1.0}
    assert atss_spec.strides == (8, 16, 32, 64, 128) and atss_spec.level_names == ("P3", "P4", "P5", "P6", "P7")
    assert atss_spec.anchors_px == (((64.0, 64.0),), ((128.0, 128.0),), ((256.0, 256.0),), ((512.0, 512.0),),
                                    ((1024.0, 1024.0),))  # one square anchor of side 8·stride
    # the assigner's class defaults (13, 3.0, 3.0) are also RTMDet's config (it sets only topk=13)
    assert rtm_spec.defaults() == {"topk": 13, "iou_weight": 3.0, "soft_center_radius": 3.0, "qfl_beta": 2.0,
                                   "loss_cls_weight": 1.0, "loss_bbox_weight": 2.0}
    assert rtm_spec.strides == (8, 16, 32) and rtm_spec.anchors_px is None
    for spec in (atss_spec, rtm_spec):
        assert all(p.doc and p.upstream for p in spec.params)
        assert spec.family == "mmdet_assigners" and spec.kind == "grid"


def test_anchor_and_point_priors_sit_on_cell_corners():
    result = explain(atss(Box(0, 100, 100, 200, 180)))
    pos = result.positives
    stride = torch.tensor([8, 16, 32, 64, 128])[pos["level"]]
    centre = (pos["anchor_box_px"][:, :2] + pos["anchor_box_px"][:, 2:]) / 2
    assert torch.equal(centre, torch.stack((pos["gi"], pos["gj"]), 1).float() * stride[:, None])
    side = pos["anchor_box_px"][:, 2] - pos["anchor_box_px"][:, 0]
    assert torch.equal(side, 8 * stride.float())


# -- the scheme runs the family's math -----------------------------------------------------------
@pytest.mark.parametrize("progress", [0.0, 0.6, 1.0])
def test_atss_positives_and_losses_equal_a_direct_call(progress):
    scene = validate(atss(*BUSY, seed=7, progress=progress, pins=(Pin(1, 0, 22, 21, 360.0, 340.0, 110.0, 70.0),)))
    result = explain(scene)
    grid, anchors, targets = S.atss_inputs(scene)
    assign = atss_assign(anchors, grid.counts, targets.bboxes, targets.labels, topk=9)
    pos = (assign.gt_inds > 0).nonzero().squeeze(1)
    level, gi, gj = grid.locate(pos)
    assert torch.equal(result.positives["level"], level) and torch.equal(result.positives["gi"], gi)
    assert torch.equal(result.positives["gj"], gj)
    assert torch.equal(result.positives["gt"], assign.gt_inds[pos] - 1)
    assert torch.equal(result.positives["iou"], assign.max_overlaps[pos])
    # rebuild the head with blend_logits of the dense perfect head, and the pin by hand
    background, writes = S.atss_perfect_writes(grid, anchors, assign, targets, scene.nc)
    heads = dense_heads(S._atss_shapes(grid, scene.nc), background, writes, progress, scene.seed)
    pin = scene.pins[0]
    prior = grid.starts[1] + pin.gj * grid.sizes[1][1] + pin.gi
    box = torch.tensor([[pin.cx - pin.w / 2, pin.cy - pin.h / 2, pin.cx + pin.w / 2, pin.cy + pin.h / 2]])
    heads[1][0, :4, pin.gj, pin.gi] = S.bbox2delta(anchors[prior:prior + 1], box)[0]
    loss = S.atss_head_loss([rows(h, 5) for h in heads], [rows(h, 0, 4) for h in heads],
                            [rows(h, 4, 1).reshape(-1) for h in heads], grid, anchors, assign, targets.bboxes,
                            targets.labels, scene.nc)
    for name, value in (("total", loss.total), ("loss_cls", sum(loss.loss_cls)), ("loss_bbox", sum(loss.loss_bbox)),
                        ("loss_centerness", sum(loss.loss_third))):
        assert torch.allclose(result.losses[name], value, rtol=1e-6, atol=0), name
    assert torch.allclose(result.positives["pred_box_px"], loss.pred_box, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_rtmdet_positives_and_losses_equal_a_direct_call(progress):
    scene = validate(rtmdet(*BUSY, seed=2, progress=progress, pins=(Pin(0, 0, 13, 20, 100.0, 160.0, 96.0, 200.0),)))
    result = explain(scene)
    grid, points, targets = S.rtmdet_inputs(scene)
    background, writes = S.rtmdet_perfect_writes(grid, points, targets, scene.nc)
    heads = dense_heads(S._rtmdet_shapes(grid, scene.nc), background, writes, progress, scene.seed)
    pin = scene.pins[0]
    x, y = pin.gi * 8.0, pin.gj * 8.0  # the point: the cell's top-left corner
    sides = torch.tensor([x - (pin.cx - pin.w / 2), y - (pin.cy - pin.h / 2), pin.cx + pin.w / 2 - x,
                          pin.cy + pin.h / 2 - y])
    heads[0][0, :4, pin.gj, pin.gi] = torch.log(sides / 8)
    cls = [rows(h, 4) for h in heads]
    boxes = []
    for start, count, stride, h in zip(grid.starts, grid.counts, grid.strides, heads):
        d = rows(h, 0, 4).exp() * stride
        p = points[start:start + count]
        boxes.append(torch.stack((p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]), -1))
    assign = dsl_assign(points, torch.cat(boxes), torch.cat(cls), targets.bboxes, targets.labels)
    pos = (assign.gt_inds > 0).nonzero().squeeze(1)
    level, gi, gj = grid.locate(pos)
    assert torch.equal(result.positives["level"], level) and torch.equal(result.positives["gi"], gi)
    assert torch.equal(result.positives["gt"], assign.gt_inds[pos] - 1)
    assert torch.equal(result.positives["iou"], assign.max_overlaps[pos])
    d = assign.details
    row = torch.searchsorted(d.valid_indices, pos)
    t = assign.gt_inds[pos] - 1
    full_rank = (d.cost_matrix[:, t] < d.cost_matrix[row, t][None]).sum(0)  # every valid point, counted directly
    assert torch.equal(result.positives["cost_rank"], full_rank)
    loss = S.rtmdet_head_loss(cls, boxes, grid, assign, targets.bboxes, targets.labels, scene.nc)
    for name, value in (("total", loss.total), ("loss_cls", sum(loss.loss_cls)), ("loss_bbox", sum(loss.loss_bbox))):
        assert torch.allclose(result.losses[name], value, rtol=1e-6, atol=0), name


# -- head losses by hand ----------------------------------------------------------------------------
def test_delta_coder_round_trip_and_clamp():
    anchor = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    deltas = S.bbox2delta(anchor, box)  # dx = (30 - 32)/64/0.1, dw = ln(40/64)/0.2
    assert torch.allclose(deltas, torch.tensor([[-2 / 64 / 0.1, 28 / 64 / 0.1, math.log(40 / 64) / 0.2,
                                                 math.log(80 / 64) / 0.2]]))
    assert torch.allclose(S.delta2bbox(anchor, deltas), box, atol=1e-4)
    huge = S.delta2bbox(anchor, torch.tensor([[0.0, 0.0, 100.0, 0.0]]))  # dw·0.2 = 20 is clamped to ln(1000/16)
    assert huge[0, 2] - huge[0, 0] == pytest.approx(64 * 1000 / 16, rel=1e-5)


def test_centerness_target_by_hand():
    # anchor centre (40, 30) in the box (0, 0, 100, 40): l 40, r 60, t 30, b 10 -> sqrt(40/60 · 10/30) = 0.4714
    value = S.centerness_target(torch.tensor([[20.0, 10.0, 60.0, 50.0]]), torch.tensor([[0.0, 0.0, 100.0, 40.0]]))
    assert value.item() == pytest.approx(math.sqrt(40 / 60 * 10 / 30), rel=1e-6)


def test_quality_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    # positive of class 1 with IoU 0.5: BCE(2, 0.5)·|0.5 - σ(2)|² for class 1, BCE(0, 0)·σ(0)² for class 0
    loss = S.quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.5]))
    sig2 = 1 / (1 + math.exp(-2))
    bce1 = -(0.5 * math.log(sig2) + 0.5 * math.log(1 - sig2))
    expected = [math.log(2) * 0.25, bce1 * (0.5 - sig2) ** 2]
    assert loss[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_atss_loss_without_positive_divides_by_eps():
    # no box: 3.3.0's avg_factor is the number of positives, 0, so loss_cls = Σ focal / 1.19e-7
    result = explain(atss(progress=0.5))
    composition = result.composition
    cls = composition.terms[0]
    assert result.losses["avg_factor"].item() == 0
    assert result.losses["loss_cls"].item() == pytest.approx(cls.sum.item() / torch.finfo(torch.float32).eps, rel=1e-4)
    assert any("not by max(.., 1)" in str(n) for n in result.notes)
    assert result.losses["loss_bbox"].item() == 0 and result.losses["loss_centerness"].item() == 0


def test_composition_adds_up():
    for scene in (atss(*BUSY, seed=1, progress=0.4), rtmdet(*BUSY, seed=1, progress=0.4)):
        result = explain(scene)
        comp = result.composition
        assert comp.total.item() == pytest.approx(sum(t.value.item() for t in comp.terms), rel=1e-5)
        for term in comp.terms:
            assert term.value.item() == pytest.approx(term.sum.item() / term.divisor * term.gain, rel=1e-4), term.name


def test_perfect_heads_give_small_losses():
    a = explain(atss(Box(1, 100, 100, 260, 220), Box(2, 300, 320, 420, 600), progress=1.0))
    assert a.losses["loss_bbox"].item() < 1e-5 and a.losses["loss_cls"].item() < 1e-2
    assert torch.allclose(a.positives["pred_box_px"], a.positives["target_box_px"], atol=1e-3)
    r = explain(rtmdet(Box(1, 100, 100, 260, 220), Box(2, 300, 320, 420, 600), progress=1.0))
    assert r.losses["loss_bbox"].item() < 1e-5 and r.losses["loss_cls"].item() < 0.05
    assert (r.positives["iou"] > 0.999).all()


# -- learner questions: ATSS ---------------------------------------------------------------------
def test_atss_threshold_above_every_candidate_gives_no_positive():
    # a tall thin box with topk 1: 5 candidates, IoUs 0.12, 0.186, 0.178, 0.109, 0.028 (P3..P7); the threshold
    # mean 0.124 + std 0.0637 = 0.188 is above the best, 0.186 at P4 (36, 20): no positive (sfzhang15/ATSS#90)
    result = explain(atss(Box(0, 550, 51, 606, 575), params={"topk": 1}))
    assert result.positives["gt"].numel() == 0
    checks = result.check_list()
    zero = [c for c in checks if c.test == "zero_positives"]
    assert len(zero) == 1 and (zero[0].level, zero[0].gi, zero[0].gj) == (1, 36, 20)
    assert "above every candidate's IoU" in str(zero[0].text) and zero[0].values["reason"] == 2
    iou_checks = [c for c in checks if c.test == "iou_threshold"]
    assert len(iou_checks) == 5 and not any(c.passed for c in iou_checks)
    assert all(c.values["threshold"] > c.values["iou"] for c in iou_checks)
    assert "0.188" in str(iou_checks[1].text) and "0.186" in str(iou_checks[1].text)
    assert any("above every candidate" in str(n) for n in result.notes)


def test_atss_thin_box_between_anchor_rows_gets_no_positive():
    # 56 x 4 px between the anchor rows y = 128 and y = 136: candidates pass the IoU test, no centre is inside
    result = explain(atss(Box(0, 411, 131, 467, 135)))
    assert result.positives["gt"].numel() == 0
    checks = result.check_list()
    assert any(c.test == "iou_threshold" and c.passed for c in checks)
    assert not any(c.test == "centre_inside" and c.passed for c in checks)
    assert any("none has its anchor centre inside" in str(n) for n in result.notes)


def test_atss_shared_anchor_goes_to_the_larger_iou_then_the_lower_index():
    # two 100 x 100 boxes 10 px apart: the anchors centred at x = 160 and 144 (P4, 128 px) overlap both; where the
    # IoUs differ the larger wins, where they are equal (mirror positions) the lower box index wins
    result = explain(atss(Box(0, 100, 100, 200, 200), Box(1, 110, 100, 210, 200)))
    shared = result.positives["rule"] == 1
    assert shared.any()
    lost = [c for c in result.check_list() if c.test == "shared" and not c.passed]
    assert lost
    for c in lost:
        assert c.values["winner_iou"] >= c.values["iou"]
        if c.values["winner_iou"] == c.values["iou"]:
            assert c.values["winner"] < c.gt
    kept = [c for c in result.check_list() if c.test == "shared" and c.passed]
    assert len(kept) == len(lost) == int(shared.sum())


def test_atss_ignore_regions():
    keep, crowd = Box(0, 100, 100, 300, 300), Box(3, 120, 120, 280, 280)
    off = explain(atss(keep, crowd, params={"ignore_class": 3}))  # ignore_iof_thr -1: no effect
    assert (off.positives["gt"] == 0).all() and any("ignores nothing" in str(n) for n in off.notes)
    on = explain(atss(keep, crowd, params={"ignore_class": 3, "ignore_iof_thr": 0.5}))
    assert any("lie in an ignore region" in str(n) for n in on.notes)
    assert on.targets.shape == (1, 6) and on.box_cells.shape == (2, 5, 2)


def test_atss_pin_on_a_negative_changes_nothing():
    scene = atss(Box(0, 100, 100, 200, 200), seed=1, progress=0.3)
    pinned = Scene(**{**scene.__dict__, "pins": (Pin(0, 0, 70, 70, 560.0, 560.0, 30.0, 30.0),)})
    a, b = explain(scene), explain(pinned)
    assert torch.equal(a.losses["total"], b.losses["total"])
    assert any("changes nothing" in str(n) for n in b.notes)


# -- learner questions: RTMDet -------------------------------------------------------------------
def positive_cells(result):
    p = result.positives
    return {(int(l), int(i), int(j)) for l, i, j in zip(p["level"], p["gi"], p["gj"])}


def test_rtmdet_pin_makes_a_point_positive():
    # half-trained head: the P4 point (256, 256), 0.68 strides from the centre (265, 250), has a good class score but
    # a noisy box (IoU 0.03): not positive. Pinned to the box, its IoU cost drops to 0 and its total to 0.006: rank 0
    box = Box(1, 200, 200, 330, 300)
    cell = (1, 16, 16)
    before = explain(rtmdet(box, seed=3, progress=0.5))
    pinned = explain(rtmdet(box, seed=3, progress=0.5, pins=(Pin(1, 0, 16, 16, 265.0, 250.0, 130.0, 100.0),)))
    assert cell not in positive_cells(before)
    assert cell in positive_cells(pinned)
    p = pinned.positives
    row = [k for k in range(p["gt"].numel()) if (p["level"][k], p["gi"][k], p["gj"][k]) == cell][0]
    assert pinned.positives["iou"][row].item() == pytest.approx(1.0, abs=1e-5)
    assert pinned.positives["cost_rank"][row].item() == 0


def test_rtmdet_exact_box_with_a_low_class_score_is_not_taken():
    # the dynamic soft label: an exact box makes the class target 1, so a point whose class score is low pays a large
    # class cost (6.17 here) and is not taken, although its IoU cost is 0
    box = Box(1, 200, 200, 330, 300)
    result = explain(rtmdet(box, seed=3, progress=0.5, pins=(Pin(1, 0, 15, 15, 265.0, 250.0, 130.0, 100.0),)))
    check = [c for c in result.check_list() if c.test == "dynamic_k" and (c.level, c.gi, c.gj) == (1, 15, 15)][0]
    assert not check.passed and check.values["iou"] == pytest.approx(1.0, abs=1e-5)
    assert check.values["cost_class"] > 5 and abs(check.values["cost_iou"]) < 1e-5


def test_rtmdet_conflict_won_by_a_box_that_did_not_take_the_point():
    # crowded 320 x 320 scene (found by search): a point taken by other boxes goes to a box that did not take it,
    # because the conflict keeps the lowest cost over ALL boxes
    boxes = (Box(0, 138, 99, 201, 186), Box(0, 113, 129, 192, 151), Box(1, 150, 107, 181, 154),
             Box(0, 133, 152, 160, 206), Box(1, 125, 102, 191, 195), Box(1, 122, 150, 219, 167))
    result = explain(rtmdet(*boxes, nc=2, width=320, height=320, seed=2, progress=0.5))
    won = result.positives["rule"] == 2
    assert won.any()
    # such a positive ranks beyond its box's dynamic k: its rank is counted over the whole column
    pos = result.positives
    ranks = {(c.gt, c.level, c.gi, c.gj): c.values["rank"] for c in result.check_list() if c.test == "dynamic_k"}
    for k in won.nonzero().squeeze(1).tolist():
        key = (int(pos["gt"][k]), int(pos["level"][k]), int(pos["gi"][k]), int(pos["gj"][k]))
        assert pos["cost_rank"][k].item() == ranks[key] >= pos["dynamic_k"][k].item()
    assert any("did not take them" in str(n) for n in result.notes)
    assert any(c.test == "conflict" and c.passed and "not among this box's lowest costs" in str(c.text)
               for c in result.check_list())


def test_rtmdet_positive_outside_its_own_box_and_box_without_positive():
    outside = explain(rtmdet(Box(2, 214, 236, 262, 300), Box(2, 119, 281, 267, 296), Box(1, 165, 257, 183, 290),
                             Box(1, 57, 95, 148, 191), nc=3, width=320, height=320, seed=6, progress=0.0))
    assert (~outside.positives["inside_own_gt"]).any()
    assert any("outside their own box" in str(n) for n in outside.notes)
    assert any(c.test == "outside" for c in outside.check_list())
    zero = explain(rtmdet(Box(2, 128, 170, 193, 258), Box(1, 78, 237, 222, 304), Box(1, 78, 189, 215, 337), nc=3,
                          width=320, height=320, seed=5, progress=0.0))
    assert torch.bincount(zero.positives["gt"], minlength=3).tolist()[2] == 0
    assert any("Box 2 gets no positive" in str(n) for n in zero.notes)


def test_rtmdet_no_valid_point_and_no_box():
    tiny = explain(rtmdet(Box(0, 1, 1, 7, 7)))  # no point strictly inside (points at multiples of 8)
    assert tiny.positives["gt"].numel() == 0 and any("No point lies strictly inside" in str(n) for n in tiny.notes)
    empty = explain(rtmdet())
    assert empty.positives["gt"].numel() == 0 and torch.isfinite(empty.losses["total"])


def test_rtmdet_checks_fill_in_the_three_costs():
    result = explain(rtmdet(Box(0, 100, 100, 220, 200), seed=1, progress=0.5))
    checks = [c for c in result.check_list() if c.test == "dynamic_k"]
    # one box: no conflict, so the points it took are its positives
    assert checks and sum(c.passed for c in checks) == result.positives["gt"].numel()
    for c in checks:
        v = c.values
        assert v["cost"] == pytest.approx(v["cost_class"] + v["cost_iou"] + v["cost_centre"], rel=1e-5, abs=1e-6)
        assert c.passed == (v["rank"] < v["dynamic_k"])
    assert "= class" in str(checks[0].text) and "strides" in str(checks[0].text)


# -- contract-level properties --------------------------------------------------------------------
@pytest.mark.parametrize("make", [atss, rtmdet])
def test_trace_changes_no_bit(make):
    scene = make(*BUSY, seed=4, progress=0.7, pins=(Pin(0, 0, 12, 30, 100.0, 244.0, 60.0, 90.0),))
    plain, traced = explain(scene, None), explain(scene, Trace())
    for name in plain.positives:
        assert torch.equal(plain.positives[name], traced.positives[name]), name
    for name in plain.maps:
        assert all(torch.equal(a, b) for a, b in zip(plain.maps[name], traced.maps[name])), name
    for name in plain.losses:
        assert torch.equal(plain.losses[name], traced.losses[name]), name


@pytest.mark.parametrize("make", [atss, rtmdet])
def test_export_round_trip_verifies(make):
    scene = make(*BUSY, seed=4, progress=0.7)
    doc = json.loads(json.dumps(export.build_export(export.run_scene(scene))))
    report = verify_export(doc)
    assert report.ok, report.mismatches


def _non_finite(result) -> list[str]:
    bad = [f"positives.{k}" for k, v in result.positives.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    bad += [f"maps.{k}" for k, levels in result.maps.items() if not all(torch.isfinite(t).all() for t in levels)]
    bad += [f"losses.{k}" for k, v in result.losses.items() if not torch.isfinite(v)]
    return bad


@pytest.mark.parametrize("make", [atss, rtmdet])
@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_every_non_finite_number_has_a_note(make, progress):
    scenes = [make(progress=progress), make(*BUSY, progress=progress, seed=9),
              make(Box(0, 318, 318, 321, 321), progress=progress),  # tiny
              make(Box(1, -300, -300, 940, 940), progress=progress)]  # huge, sticking out
    for scene in scenes:
        result = explain(scene)
        bad = _non_finite(result)
        if bad:
            assert any("not finite" in str(n) or " inf" in str(n) for n in result.notes), bad


def test_maps_cover_every_level():
    for make, names in ((atss, ("P3", "P4", "P5", "P6", "P7")), (rtmdet, ("P3", "P4", "P5"))):
        result = explain(make(*BUSY))
        assert [lv.name for lv in result.levels] == list(names)
        for name, levels in result.maps.items():
            assert [tuple(t.shape) for t in levels] == [(1, *lv.grid) for lv in result.levels], name


@pytest.mark.parametrize("make", [atss, rtmdet])
def test_stage_cells_name_recorded_stages_and_real_cells(make):
    trace = Trace()
    result = explain(make(*BUSY, seed=2, progress=0.6), trace)
    cells = result.stage_cells()
    assert set(cells) <= set(trace.names())
    assert {"atss.P3.candidates", "atss.threshold", "atss.result"} <= set(cells) if make is atss else \
        {"dsl.valid", "dsl.cost", "dsl.matching", "dsl.result"} <= set(cells)
    for name, stage_cells in cells.items():
        for cell in stage_cells:
            H, W = result.levels[cell.level].grid
            assert 0 <= cell.gi < W and 0 <= cell.gj < H and 0 <= cell.gt < len(BUSY), (name, cell)
