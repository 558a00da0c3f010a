"""The Ultralytics schemes (yolov8, yolov10, yolo26): explain() on learner scenes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from losslab_testing import assert_same_result
from losscore import export
from losscore.registry import explain, get_scheme, validate
from losscore.scene import Box, Pin, Scene, boxes_to_targets
from losscore.trace import Trace
from losscore.ultralytics import E2ELoss, detection_loss
from losscore.ultralytics.scene import build_heads
from losscore.verify import verify_export

SCHEMES = ("yolov8", "yolov10", "yolo26")
REG_MAX = {"yolov8": 16, "yolov10": 16, "yolo26": 1}


def box(cx, cy, w, h, cls=0):
    return Box(cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def scene(name, *boxes, nc=4, width=256, height=256, **kwargs):
    return Scene(name, width, height, nc, tuple(boxes), device="cpu", **kwargs)


# A 6x5 px box: x in [318, 324], y in [318, 323]. P3 anchor centres sit at 316, 324, ...: 324 lies ON the
# right edge (strictly inside is required), so no anchor of any level is inside the real box. Enlarged to
# stride_val = 16 px (the middle stride) about its centre (321, 320.5): x in [313, 329], y in [312.5, 328.5],
# which holds the P3 centres x, y in {316, 324} (4 anchors) and the P4 centre (328, 328): 5 candidates.
TINY = Box(2, 318, 318, 324, 323)
TINY_256 = Box(2, 118, 118, 124, 123)  # on a 256 px image: P3 centres 116, 124 outside; the P4 centre 120 inside
# Three overlapping boxes where one anchor is claimed by two boxes and won by a third (seed 3, progress 0.5):
# P4 (6, 6) is in the top-10 of boxes 1 (u 0.427) and 2 (u 0.591); box 0 has u 0.642 there and never selected it.
CROWD = (Box(0, 84.0, 80.0, 108.0, 120.0), Box(2, 76.0, 88.0, 116.0, 112.0), Box(3, 88.0, 84.0, 112.0, 124.0))


def test_specs_follow_upstream():
    v8 = get_scheme("yolov8")
    assert v8.defaults() == {"small_object_enlargement": True, "topk": 10, "alpha": 0.5, "beta": 6.0, "box": 7.5,
                             "cls": 0.5, "dfl": 1.5}
    for name in ("yolov10", "yolo26"):
        spec = get_scheme(name)
        defaults = spec.defaults()
        assert (defaults["o2m_topk"], defaults["o2o_topk"], defaults["o2o_topk2"]) == (10, 7, 1)
        assert (defaults["epoch"], defaults["epochs"]) == (0, 100)
        assert "branch" in {c.name for c in spec.columns}
        assert len({r.glyph for r in spec.rules}) == len(spec.rules) == 8
        assert spec.rule_names[0] == "one-to-many top-k" and spec.rule_names[4] == "one-to-one top-k"
    assert "dfl_term" in {c.name for c in get_scheme("yolov10").columns}
    assert {"l1_term", "pred_ltrb"} <= {c.name for c in get_scheme("yolo26").columns}
    for name in SCHEMES:
        assert all(p.doc and p.upstream for p in get_scheme(name).params)


def test_yolov8_equals_a_direct_call_of_the_loss():
    s = validate(scene("yolov8", box(100, 90, 60, 40, 1), box(150, 160, 30, 70, 3), TINY_256, seed=4, progress=0.4,
                       params={"topk": 7, "alpha": 1.0, "box": 5.0}))
    result = explain(s)
    targets = boxes_to_targets(s, torch.device("cpu"))
    with build_heads(s, 16, True, torch.device("cpu")) as heads:
        direct = detection_loss(heads.heads, targets, nc=4, reg_max=16, strides=(8, 16, 32),
                                hyp={"box": 5.0, "cls": 0.5, "dfl": 1.5}, topk=7, alpha=1.0, beta=6.0)
    assert torch.equal(result.losses["total"], direct.loss.sum())
    assert torch.equal(result.positives["target_score"], direct.assignment.score)
    assert torch.equal(result.positives["gt"], direct.assignment.gt)
    assert torch.equal(result.composition.terms[0].value, direct.items[0])
    # the cls_bce map (the loss trace's per-anchor BCE) sums to the raw class term times target_scores_sum
    cls_map = sum(m.sum() for m in result.maps["cls_bce"])
    assert float(cls_map) == pytest.approx(float(direct.cls * direct.target_scores_sum), rel=1e-5)
    # the composition adds up to the total the code returned
    assert sum(float(t.value) for t in result.composition.terms) == pytest.approx(float(result.losses["total"]),
                                                                                   rel=1e-6)


@pytest.mark.parametrize("name", ["yolov10", "yolo26"])
def test_e2e_equals_a_direct_call_and_shares_the_decode_bit_for_bit(name):
    s = validate(scene(name, box(100, 90, 60, 40, 1), box(110, 100, 50, 50, 3), seed=2, progress=0.5,
                       params={"epoch": 40, "epochs": 60}))
    result = explain(s)
    targets = boxes_to_targets(s, torch.device("cpu"))
    R = REG_MAX[name]
    e2e = E2ELoss(4, R, (8, 16, 32), hyp={"box": 7.5, "cls": 0.5, "dfl": 1.5, "epochs": 60})
    for _ in range(40):
        e2e.update()
    with build_heads(s, R, True, torch.device("cpu")) as heads:
        shared = e2e.breakdown((heads.heads, heads.heads), targets)  # one head object: decoded once
        separate = e2e.breakdown((heads.heads, [h.clone() for h in heads.heads]), targets)
    assert torch.equal(shared.loss, separate.loss)  # the shared decode gives the same bits
    assert torch.equal(result.losses["total"], shared.loss.sum())
    assert result.losses["o2m_weight"].item() == e2e.o2m and result.losses["o2o_weight"].item() == e2e.o2o
    branch = result.positives["branch"]
    assert torch.equal(result.positives["gt"][branch == 0], shared.one2many.assignment.gt)
    assert torch.equal(result.positives["gt"][branch == 1], shared.one2one.assignment.gt)
    # one-to-one: top-7 then topk2 = 1, so at most one anchor per box; one-to-many keeps up to 10
    o2o = result.positives["gt"][branch == 1]
    assert o2o.unique().numel() == o2o.numel() <= 2
    rule = result.positives["rule"]
    assert bool((rule[branch == 1] >= 4).all()) and bool((rule[branch == 0] < 4).all())  # one set of rules per branch
    values = [float(t.value) for t in result.composition.terms]
    assert [t.name for t in result.composition.terms][:3] == ["box_o2m", "cls_o2m", "dfl_o2m" if R > 1 else "l1_o2m"]
    assert sum(values) == pytest.approx(float(result.losses["total"]), rel=1e-6)


def test_e2e_weights_follow_the_epoch():
    fresh = explain(scene("yolo26", box(100, 90, 60, 40)))
    late = explain(scene("yolo26", box(100, 90, 60, 40), params={"epoch": 99, "epochs": 100}))
    assert (fresh.losses["o2m_weight"].item(), fresh.losses["o2o_weight"].item()) == (0.8, 1 - 0.8)
    assert late.losses["o2m_weight"].item() == pytest.approx(0.1)
    assert any("after 99 of 100 epochs" in str(note) for note in late.notes)


@pytest.mark.parametrize("name", SCHEMES)
def test_a_tiny_box_gains_positives_from_the_enlargement(name):
    # progress 1: the perfect head predicts the box at every candidate, so every candidate has t > 0 (at lower
    # progress a candidate with u = 0 is left to torch.topk's order among the zeros of the whole row)
    on = explain(scene(name, TINY, width=640, height=640, progress=1.0))
    off = explain(scene(name, TINY, width=640, height=640, progress=1.0,
                        params={"small_object_enlargement": False}))
    # off: no anchor centre lies strictly inside 318..324 x 318..323, so no candidate and no positive
    assert off.positives["gt"].numel() == 0
    assert any("hold no anchor centre" in str(note) for note in off.notes)
    assert off.maps["candidates"][0].sum().item() == 0
    # on: the 5 candidates of the 16x16 px box (4 at P3, 1 at P4) are all outside the real box
    assert sum(m.sum().item() for m in on.maps["enlarged_only"]) == 5
    assert on.positives["gt"].numel() > 0 and not bool(on.positives["in_box"].any())
    assert bool(((on.positives["rule"] % 4) == 3).all())  # "top-k (enlarged box)" in every branch
    assert any("Small-object enlargement" in str(note) and "middle stride" in str(note) for note in on.notes)
    # every candidate lies outside the real box: DFL distances are >= 0, so a reg_max 16 head cannot decode to
    # the box from there (u < 1); YOLO26's raw distances can be negative and reach it exactly (u = 1)
    u = on.positives["u"]
    assert bool((u < 0.9).all()) if REG_MAX[name] > 1 else bool((u > 0.999).all())
    checks = [c for c in on.check_list() if c.test.endswith("top_k")]
    assert checks and all("enlarged to 16 px" in str(c.text) for c in checks)
    cells = {(c.level, c.gi, c.gj) for c in checks}
    assert cells == {(0, 39, 39), (0, 40, 39), (0, 39, 40), (0, 40, 40), (1, 20, 20)}


def test_a_conflict_won_by_a_box_that_never_selected_the_anchor():
    result = explain(scene("yolov8", *CROWD, seed=3, progress=0.5))
    pos = result.positives
    row = (pos["rule"] == 2).nonzero().squeeze(1)
    assert row.numel() == 1
    i = int(row)
    assert (int(pos["gt"][i]), int(pos["level"][i]), int(pos["gi"][i]), int(pos["gj"][i])) == (0, 1, 6, 6)
    assert int(pos["topk_rank"][i]) == -1  # box 0 did not select it
    at = [c for c in result.check_list() if c.test == "conflict" and (c.level, c.gi, c.gj) == (1, 6, 6)]
    assert {(c.gt, c.passed) for c in at} == {(1, False), (2, False), (0, True)}
    lost = next(c for c in at if c.gt == 1)
    assert "did not select it" in str(lost.text) and str(lost.label) == "lost to #0"
    # u of the winner (0.642) is larger than both claimants' (0.427, 0.591)
    assert lost.values["winner_u"] > max(c.values["u"] for c in at if c.gt != 0)
    assert any("1 of them to a target that had not selected it" in str(note) for note in result.notes)


def test_checks_tell_how_far_a_loser_is_from_the_kth_t():
    result = explain(scene("yolov8", box(100, 90, 80, 60, 1), seed=1, progress=0.3))
    losers = [c for c in result.check_list() if c.test == "top_k" and not c.passed]
    winners = [c for c in result.check_list() if c.test == "top_k" and c.passed]
    assert len(winners) == 10 and losers
    kth = min(c.values["t"] for c in winners)
    for check in losers:
        assert check.values["kth_t"] == kth
        assert check.values["t"] <= kth and "cut-off" in str(check.text)


def test_topk2_checks_keep_one_anchor_per_box():
    result = explain(scene("yolov10", box(100, 90, 80, 60, 1), box(160, 160, 40, 40, 2), seed=1, progress=0.6))
    topk2 = [c for c in result.check_list() if c.test == "o2o.topk2"]
    kept = [c for c in topk2 if c.passed]
    assert {c.gt for c in kept} == {0, 1} and len(kept) == 2
    assert all("dropped by topk2" in str(c.text) for c in topk2 if not c.passed)
    o2o = result.positives["branch"] == 1
    assert bool((result.positives["topk2_rank"][o2o] == 0).all())
    assert bool((result.positives["topk2_rank"][~o2o] == -1).all())


def test_reg_max_1_has_an_l1_term_under_the_dfl_gain():
    s = scene("yolo26", box(100, 90, 60, 40), params={"dfl": 3.0})
    result = explain(s)
    assert torch.equal(result.losses["l1_o2o"], result.losses["l1_raw_o2o"] * 3.0)
    pos = result.positives
    l1 = (pos["pred_ltrb"] - pos["ltrb_target"]).abs().mean(1)
    assert torch.allclose(l1, pos["l1"], rtol=1e-5, atol=1e-7)
    assert any("reg_max 1" in str(note) and "dfl gain (3)" in str(note) for note in result.notes)


@pytest.mark.parametrize("name", SCHEMES)
def test_pins(name):
    # an anchor centre (100, 244) outside the pinned box (x 130..190): DFL cannot reach it, raw distances can
    pin = Pin(0, 0, 12, 30, 160.0, 244.0, 60.0, 90.0)
    result = explain(scene(name, box(160, 244, 60, 90), width=320, height=320, pins=(pin,), progress=0.0))
    unreachable = [str(note) for note in result.notes if "unreachable" in str(note)]
    assert bool(unreachable) == (REG_MAX[name] > 1)
    with build_heads(validate(scene(name, box(160, 244, 60, 90), width=320, height=320)), REG_MAX[name], True,
                     torch.device("cpu")) as heads:
        assert heads[0].shape == (1, 4 * REG_MAX[name] + 4, 40, 40)


@pytest.mark.parametrize("name", SCHEMES)
def test_trace_changes_no_bit_and_follows_the_stage_pattern(name):
    s = scene(name, box(100, 90, 60, 40, 1), box(110, 100, 50, 50, 3), TINY_256, seed=5, progress=0.7)
    trace = Trace()
    traced, plain = explain(s, trace), explain(s)
    assert plain.trace is None and traced.trace is trace
    assert_same_result(traced, plain)
    prefix = "o2m_" if name != "yolov8" else ""
    names = trace.names()
    for stage in ("inputs.anchors", "assigner.candidates", "assigner.metrics", "assigner.topk", "assigner.conflicts",
                  "assigner.normalise", "loss.cls", "loss.box", "loss.total"):
        assert prefix + stage in names
    if name != "yolov8":
        assert "o2o_assigner.topk2" in names and names[-1] == "e2e.weights"
    phases = {p.name for p in get_scheme(name).phases}
    assert {n.split(".")[0] for n in names} <= phases


@pytest.mark.parametrize("name", SCHEMES)
def test_export_round_trip_verifies(name):
    s = scene(name, box(100, 90, 60, 40, 1), box(110, 100, 50, 50, 3), TINY_256, seed=6, progress=0.5,
              pins=(Pin(0, 0, 12, 11, 100.0, 90.0, 60.0, 40.0),))
    document = json.loads(json.dumps(export.build_export(export.run_scene(s))))
    report = verify_export(document)
    assert report.ok, report.mismatches


def _non_finite(run) -> bool:
    result = run.result
    tables = list(result.positives.values()) + list(result.losses.values())
    tables += [level for levels in result.maps.values() for level in levels]
    tables += [rec.value for stage in run.trace for rec in stage.tensors.values()]
    return any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()) for t in tables)


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_every_non_finite_number_has_a_note(name, progress):
    # no boxes; a 2 px box inside a huge one and a thin one on the border; a degenerate pin
    scenes = [
        scene(name, progress=progress),
        scene(name, box(128, 128, 2, 2), box(128, 128, 250, 250, 1), box(5, 250, 10, 3, 2), progress=progress),
        scene(name, box(64, 64, 20, 20), progress=progress, pins=(Pin(0, 0, 8, 8, 68.0, 68.0, 0.001, 30.0),)),
        scene(name, box(4, 4, 4, 4), width=32, height=32, progress=progress,
              params={"topk": 5} if name == "yolov8" else {"o2m_topk": 5, "o2o_topk": 5}),
    ]
    for s in scenes:
        run = export.run_scene(s)
        if _non_finite(run):
            assert any("Non-finite" in str(note) for note in run.result.notes), s


@pytest.mark.parametrize("name", SCHEMES)
def test_no_boxes(name):
    result = explain(scene(name))
    assert result.positives["gt"].numel() == 0
    cls = "cls" if name == "yolov8" else "cls_o2m"
    assert result.losses[cls].item() > 0 and result.losses["box" if name == "yolov8" else "box_o2m"].item() == 0
    assert result.check_list() == []


def test_topk_larger_than_the_anchors_is_a_value_error():
    # a 32x32 image has 16 + 4 + 1 = 21 anchors
    with pytest.raises(ValueError, match="params.topk"):
        explain(scene("yolov8", box(16, 16, 8, 8), width=32, height=32, params={"topk": 30}))
    with pytest.raises(ValueError, match="params.o2m_topk"):
        explain(scene("yolov10", box(16, 16, 8, 8), width=32, height=32, params={"o2m_topk": 30}))


def test_stage_cells_name_recorded_stages():
    s = scene("yolov10", box(100, 90, 60, 40, 1), box(110, 100, 50, 50, 3), TINY_256, seed=5)
    trace = Trace()
    result = explain(s, trace)
    cells = result.stage_cells()
    assert set(cells) <= set(trace.names())
    assert {"o2m_assigner.candidates", "o2o_assigner.topk2", "o2o_loss.box"} <= set(cells)
    labels = {str(c.label) for c in cells["o2m_assigner.candidates"]}
    assert labels == {"in box", "enlarged"}
    assert len(cells["o2o_loss.box"]) == int((result.positives["branch"] == 1).sum())
    assert math.isfinite(float(result.losses["total"]))


def test_the_math_hook_assigner_stride_switches_the_enlargement_off():
    # detection_loss(assigner_stride=[0]): stride_val 0, no side is shorter, no box is enlarged
    s = validate(scene("yolov8", TINY_256, progress=1.0))
    targets = boxes_to_targets(s, torch.device("cpu"))
    with build_heads(s, 16, True, torch.device("cpu")) as heads:
        on_trace, off_trace = Trace(), Trace()
        on = detection_loss(heads.heads, targets, nc=4, trace=on_trace)
        off = detection_loss(heads.heads, targets, nc=4, assigner_stride=[0.0], trace=off_trace)
    assert on.assignment.stride_val == 16.0 and off.assignment.stride_val == 0.0
    # 118..124 holds the P4 centre (120, 120) itself; the 16 px box adds the four P3 centres 116 and 124
    assert on.assignment.candidates.gt.numel() == 5 and off.assignment.candidates.gt.numel() == 1
    assert on.assignment.candidates.in_box.tolist().count(False) == 4
    assert "no box is enlarged" in off_trace.get("assigner.candidates").explain
    assert bool(on_trace.get("assigner.candidates")["enlarged"].all())
