"""The "yolov5" scheme: explain() on learner scenes."""
from __future__ import annotations

import pytest
import torch

from losscore.scene import Box, Pin, Scene
from losscore.registry import explain, get_scheme
from losscore.trace import Trace



def box(cx, cy, w, h, cls=0):
    return Box(cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def scene(*boxes, nc=80, width=640, height=640, **kwargs):
    return Scene("yolov5", width, height, nc, tuple(boxes), **kwargs)


def test_spec_defaults_follow_upstream():
    spec = get_scheme("yolov5")
    defaults = {p.name: p.default for p in spec.params}
    assert defaults == {"anchor_t": 4.0, "g": 0.5, "gr": 1.0, "box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0,
                        "obj_pw": 1.0, "fl_gamma": 0.0, "fl_alpha": 0.25, "label_smoothing": 0.0,
                        "sort_obj_iou": False, "autobalance": False}
    assert all(p.doc and p.upstream for p in spec.params)
    assert spec.strides == (8, 16, 32) and spec.anchors_px[0] == ((10, 13), (16, 30), (33, 23))
    assert spec.rule_names == ("centre", "left", "up", "right", "down")


def test_learners_counts_through_explain():
    result = explain(scene(box(100, 203, 50, 80)))
    assert result.positives["level"].bincount().tolist() == [4, 9, 6]
    assert len(explain(scene(box(100, 204, 50, 80))).positives["gt"]) == 17
    assert len(explain(scene(box(4, 4, 20, 20))).positives["gt"]) == 5


def test_columns_documented_and_shaped():
    result = explain(scene(box(100, 203, 50, 80, 3), box(400, 300, 120, 60, 7)))
    count = result.positives["gt"].shape[0]
    declared = {c.name: c for c in get_scheme("yolov5").columns}
    for name, column in result.positives.items():
        assert name in declared
        assert column.shape[0] == count
        assert column.dim() == 1 or column.shape[1] == len(declared[name].parts), name
    for name in ("gt", "level", "anchor", "gi", "gj", "rule", "r_max", "offset", "tbox", "anch", "pxy", "pwh",
                 "pred_box_px", "target_box_px", "iou", "rho2", "c2", "v", "alpha", "ciou", "tobj",
                 "tobj_written", "cls_bce"):
        assert name in result.positives
    assert (result.positives["r_max"] < 4.0).all()
    assert torch.equal(result.positives["offset"], result.positives["tbox"][:, :2])


def test_target_box_px_is_the_drawn_box():
    drawn = box(100, 203, 50, 80)
    result = explain(scene(drawn))
    expected = torch.tensor([drawn.x1, drawn.y1, drawn.x2, drawn.y2]).expand_as(result.positives["target_box_px"])
    assert torch.allclose(result.positives["target_box_px"], expected, atol=1e-3)


def test_perfect_head_decodes_to_the_targets():
    # progress 1: the head is the perfect one, so every written row predicts its target box
    result = explain(scene(box(100, 203, 50, 80, 1), box(300, 420, 90, 40, 2), progress=1.0))
    pos = result.positives
    assert torch.allclose(pos["pred_box_px"], pos["target_box_px"], atol=1e-2)
    assert (pos["iou"] > 0.999).all()
    assert (pos["tobj"] > 0.999).all()
    assert result.losses["box"].item() < 1e-6


def test_losses_add_up_and_per_level_keys():
    result = explain(scene(box(100, 203, 50, 80, 1), box(500, 100, 200, 150, 2), seed=4, progress=0.3))
    losses = result.losses
    assert losses["total"].item() == pytest.approx((losses["box"] + losses["obj"] + losses["cls"]).item(), rel=1e-6)
    levels = ("P3", "P4", "P5")
    assert losses["obj"].item() == pytest.approx(sum(losses[f"obj.{n}"].item() for n in levels), rel=1e-6)
    assert losses["box"].item() == pytest.approx(0.05 * sum(losses[f"box.{n}"].item() for n in levels), rel=1e-6)
    assert losses["cls"].item() == pytest.approx(0.5 * sum(losses[f"cls.{n}"].item() for n in levels), rel=1e-6)
    for name, weight in zip(levels, (4.0, 1.0, 0.4)):
        assert losses[f"obj.{name}"].item() == pytest.approx(weight * losses[f"obj_raw.{name}"].item(), rel=1e-6)


def test_maps_per_level_and_last_write_wins():
    # the same box twice, different classes: every slot is hit twice, the later row survives
    result = explain(scene(box(100, 203, 50, 80, 1), box(100, 203, 50, 80, 2), seed=1))
    pos = result.positives
    assert pos["tobj_written"].sum().item() * 2 == pos["gt"].shape[0]
    assert (pos["gt"][pos["tobj_written"]] == 1).all()
    for level, (name, stride) in enumerate((("P3", 8), ("P4", 16), ("P5", 32))):
        for layer in ("tobj", "obj_bce", "obj_prob", "focal_weight", "positives"):
            assert result.maps[layer][level].shape == (3, 640 // stride, 640 // stride)
        rows = (pos["level"] == level) & pos["tobj_written"]
        tobj = result.maps["tobj"][level][pos["anchor"][rows], pos["gj"][rows], pos["gi"][rows]]
        assert torch.equal(tobj, pos["tobj"][rows])
        assert result.maps["positives"][level].sum().item() == (pos["level"] == level).sum().item()
    assert all(torch.equal(m, torch.ones_like(m)) for m in result.maps["focal_weight"])
    assert any("overwritten" in note for note in result.notes)


def test_focal_weight_map_when_gamma_positive():
    result = explain(scene(box(100, 203, 50, 80), params={"fl_gamma": 2.0}))
    weights = result.maps["focal_weight"][0]
    assert (weights < 1).all() and (weights > 0).all()
    assert any("FocalLoss" in note for note in result.notes)


def test_nc1_has_no_class_loss():
    result = explain(scene(box(100, 203, 50, 80), nc=1))
    assert result.losses["cls"].item() == 0
    assert (result.positives["cls_bce"] == 0).all()


def test_pins_reachable_and_unreachable():
    # P3 anchor 1 (16x30 px = 2x3.75 cells) at cell (12, 25): a 20x40 px box centred at (100, 203)
    # is offset (0.5, 0.375) cells and (1.25, 1.33) anchors: reachable
    pin = Pin(level=0, anchor=1, gi=12, gj=25, cx=100, cy=203, w=20, h=40)
    result = explain(scene(box(100, 203, 50, 80), pins=(pin,), progress=0.0))
    pos = result.positives
    row = (pos["level"] == 0) & (pos["anchor"] == 1) & (pos["gi"] == 12) & (pos["gj"] == 25)
    assert row.any()
    assert torch.allclose(pos["pred_box_px"][row][0], torch.tensor([90.0, 183, 110, 223]), atol=1e-3)
    assert not any("unreachable" in note for note in result.notes)
    far = Pin(level=0, anchor=1, gi=12, gj=25, cx=140, cy=203, w=200, h=40)  # x offset 5.5 cells, w 12.5 anchors
    notes = explain(scene(box(100, 203, 50, 80), pins=(far,))).notes
    assert any("unreachable" in note and "x offset" in note and "w " in note for note in notes)
    with pytest.raises(ValueError, match="pins"):
        explain(scene(box(100, 203, 50, 80), pins=(Pin(0, 5, 0, 0, 1, 1, 1, 1),)))


def test_trace_does_not_change_the_result_and_records_stages():
    s = scene(box(100, 203, 50, 80, 1), box(300, 420, 90, 40, 2), seed=7, params={"fl_gamma": 1.5})
    trace = Trace()
    traced, plain = explain(s, trace), explain(s)
    assert plain.trace is None and traced.trace is trace
    assert all(torch.equal(traced.losses[k], plain.losses[k]) for k in plain.losses)
    names = trace.names()
    for name in ("build_targets.P3.anchor_filter", "build_targets.P3.neighbours", "build_targets.P3.rows",
                 "loss.P3.decode", "loss.P3.bbox_iou", "loss.P3.objectness_target", "loss.P3.objectness",
                 "loss.P3.class", "loss.P3.level_losses", "loss.total"):
        assert name in names
    assert "modulating_factor" in trace.get("loss.P3.objectness").tensors


def test_seed_and_alpha_gate_note():
    a = explain(scene(box(100, 203, 50, 80), seed=1, progress=0.0))
    b = explain(scene(box(100, 203, 50, 80), seed=1, progress=0.0))
    c = explain(scene(box(100, 203, 50, 80), seed=2, progress=0.0))
    assert torch.equal(a.losses["total"], b.losses["total"])
    assert not torch.equal(a.losses["total"], c.losses["total"])
    assert any("mmdet PR #5835" in note for note in a.notes)
    assert a.device == "cpu"


def test_non_square_image_and_empty_scene():
    result = explain(scene(box(50, 40, 30, 20), width=128, height=96, nc=3))
    assert [lvl.grid for lvl in result.levels] == [(12, 16), (6, 8), (3, 4)]
    empty = explain(scene(width=128, height=96, nc=3))
    assert empty.positives["gt"].shape == (0,) and empty.positives["tbox"].shape == (0, 4)
    assert empty.losses["box"].item() == 0 and empty.losses["obj"].item() > 0


def test_objectness_bce_floor_is_the_entropy_of_the_soft_target():
    # BCE(p, t) = -t ln p - (1 - t) ln(1 - p) is smallest at p = t, where it equals the entropy of t:
    # e.g. t = 0.5 leaves ln 2 = 0.6931. LEARNERS #4: "why is BCE not 0 when prediction = target?"
    result = explain(Scene("yolov5", 640, 640, 80, (box(100, 203, 50, 80), box(400, 300, 120, 90, cls=5)),
                           progress=0.7))
    t, floor, bce = result.positives["tobj"], result.positives["obj_bce_floor"], result.positives["obj_bce"]
    written = result.positives["tobj_written"]
    assert written.any()
    t, floor, bce = t[written], floor[written], bce[written]  # rows whose target the slot kept
    entropy = -(t * torch.log(t) + (1 - t) * torch.log1p(-t))
    assert torch.allclose(floor, entropy, rtol=1e-5, atol=1e-6)
    inside = (t > 0) & (t < 1)
    assert bool((floor[inside] > 0).all())
    assert bool((bce >= floor - 1e-6).all())  # no prediction beats the floor
    assert any("entropy" in note for note in result.notes)
