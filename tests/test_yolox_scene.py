"""The "yolox" scheme: explain() on learner scenes, SimOTA of release 0.3.0 and of main."""
from __future__ import annotations

import json

import pytest
import torch

from losslab_testing import assert_same_result
from losscore import export
from losscore.registry import explain, get_scheme, validate
from losscore.scene import Box, Pin, Scene
from losscore.trace import Trace
from losscore.verify import verify_export
from losscore.yolox import yolox_loss
from losscore.yolox.scene import build_heads, scene_labels

VERSIONS = ("0.3.0", "main")


def box(cx, cy, w, h, cls=0):
    return Box(cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def scene(*boxes, version="0.3.0", nc=4, width=256, height=256, params=None, **kwargs):
    return Scene("yolox", width, height, nc, tuple(boxes), params={"version": version, **(params or {})},
                 device="cpu", **kwargs)


# Three overlapping boxes (seed 0, progress 0.5, release 0.3.0). Every box has dynamic_k 3. P3 (11, 12) is
# taken by box 0 (cost 11.06) and box 1 (6.847); box 2's cost there is 5.062 (cls 0.404 + 3 × 1.553), the
# lowest of the column, although box 2's own 3 cheapest are 3.66, 3.748 and 3.967: box 2 wins an anchor it
# never took (rule "won a conflict it did not select").
CROWD = (Box(3, 84.0, 92.0, 124.0, 108.0), Box(0, 88.0, 92.0, 104.0, 116.0), Box(0, 88.0, 68.0, 112.0, 132.0))


def test_spec_follows_upstream():
    spec = get_scheme("yolox")
    assert spec.defaults() == {"version": "0.3.0", "use_l1": False, "iou_loss_type": "iou"}
    assert spec.param("version").choices == VERSIONS
    assert spec.rule_names == ("selected", "selected, won a conflict", "won a conflict it did not select")
    assert [t.name for t in spec.losses.terms] == ["iou", "obj", "cls", "l1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_equals_a_direct_call_of_the_loss(version):
    s = validate(scene(*CROWD, version=version, seed=0, progress=0.5, params={"use_l1": True}))
    result = explain(s)
    with build_heads(s, torch.device("cpu")) as heads:
        direct = yolox_loss(heads.heads, scene_labels(s, torch.device("cpu")), use_l1=True, version=version)
    assert torch.equal(result.losses["total"], direct.total_loss)
    assert torch.equal(result.losses["iou"], direct.iou_loss) and torch.equal(result.losses["l1"], direct.l1_loss)
    assert result.losses["num_fg_ratio"].item() == direct.num_fg
    fg = direct.fg_mask[0].nonzero().squeeze(1)
    levels = [(s.height // st) * (s.width // st) for st in (8, 16, 32)]
    anchor = torch.tensor([sum(levels[:lv]) for lv in result.positives["level"].tolist()])
    widths = torch.tensor([s.width // (8 << lv) for lv in result.positives["level"].tolist()])
    anchor = anchor + result.positives["gj"] * widths + result.positives["gi"]
    assert torch.equal(anchor, fg)
    assert torch.equal(result.positives["gt"], direct.per_image[0].matched_gt_inds)
    assert torch.equal(result.positives["iou"], direct.per_image[0].pred_ious_this_matching)


def test_release_and_main_disagree_on_the_same_predictions():
    old = explain(scene(*CROWD, version="0.3.0", seed=0, progress=0.5))
    new = explain(scene(*CROWD, version="main", seed=0, progress=0.5))
    cells = lambda r: {(g, lv, i, j) for g, lv, i, j in zip(*(r.positives[k].tolist() for k in ("gt", "level", "gi",
                                                                                               "gj")))}
    # 0.3.0: 6 positives (81 candidates: any box or 2.5-stride square); main: 5 (1.5-stride squares only)
    assert len(cells(old)) == 6 and len(cells(new)) == 5 and cells(old) != cells(new)
    assert sum(m.sum().item() for m in old.maps["candidates"]) == 81
    assert sum(m.sum().item() for m in new.maps["candidates"]) < 81
    assert any("SimOTA 0.3.0" in str(n) for n in old.notes) and any("SimOTA main" in str(n) for n in new.notes)


def test_a_conflict_won_by_a_box_that_never_took_the_anchor():
    result = explain(scene(*CROWD, seed=0, progress=0.5))
    pos = result.positives
    row = int((pos["rule"] == 2).nonzero().squeeze(1))
    assert (int(pos["gt"][row]), int(pos["level"][row]), int(pos["gi"][row]), int(pos["gj"][row])) == (2, 0, 11, 12)
    assert int(pos["sel_rank"][row]) == -1 and int(pos["dynamic_k"][row]) == 3
    assert pos["cost"][row].item() == pytest.approx(5.062, abs=1e-3)
    assert pos["cost"][row].item() == pytest.approx((pos["cls_cost"][row] + 3 * pos["iou_cost"][row]).item(), rel=1e-6)
    at = [c for c in result.check_list() if c.test == "conflict" and (c.level, c.gi, c.gj) == (0, 11, 12)]
    assert {(c.gt, c.passed) for c in at} == {(0, False), (1, False), (2, True)}
    assert all("never took it" in str(c.text) for c in at if c.gt != 2)
    winner = next(c for c in at if c.gt == 2)
    assert "never took this anchor" in str(winner.text) and winner.values["winner_selected"] is False
    # box 2's own selections are cheaper than 5.062, so the 5.062 anchor is not among them
    taken = [c for c in result.check_list() if c.test == "select" and c.gt == 2 and c.passed]
    assert len(taken) == 3 and max(c.values["cost"] for c in taken) < 5.062
    cells = result.stage_cells()["simota.conflicts"]
    assert any(c.gt == 2 and str(c.label) == "won, not taken" for c in cells)


def test_a_box_that_ends_with_no_anchor():
    # the same box twice, two classes (main, seed 1, progress 0.5): both take the same cheapest anchors and
    # every contested column goes to box 0's lower cost, so box 1 ends with none
    result = explain(scene(box(100, 100, 60, 40, 1), box(100, 100, 60, 40, 2), version="main", seed=1, progress=0.5))
    assert 1 not in result.positives["gt"].tolist() and bool((result.positives["rule"] == 1).all())
    assert any("end with no anchor" in str(n) and "num_fg ratio" in str(n) for n in result.notes)
    lost = [c for c in result.check_list() if c.test == "no_anchor"]
    assert lost and all(c.gt == 1 and not c.passed for c in lost)
    # it still counts in the logged ratio: max(positives, 1) / 2 targets
    assert result.losses["num_fg_ratio"].item() == result.positives["gt"].numel() / 2


def test_dynamic_k_checks_show_the_top10_ious():
    result = explain(scene(*CROWD, seed=0, progress=0.5))
    top = [c for c in result.check_list() if c.test == "top10_iou" and c.gt == 2]
    assert len(top) == 10
    total = sum(c.values["iou"] for c in top)
    assert top[0].values["iou_sum"] == pytest.approx(total, rel=1e-5)  # 3.636 -> k = int(3.636) = 3
    assert all(c.values["k"] == max(1, int(c.values["iou_sum"])) == 3 for c in top)
    ious = [c.values["iou"] for c in top]
    assert ious == sorted(ious, reverse=True)
    selects = [c for c in result.check_list() if c.test == "select" and c.gt == 2]
    assert all(c.values["k"] == 3 for c in selects)
    assert all(c.values["cost"] > c.values["kth_cost"] for c in selects if not c.passed)


def test_iou_loss_is_one_minus_iou_squared():
    result = explain(scene(*CROWD, seed=0, progress=0.5))
    pos = result.positives
    assert torch.allclose(pos["iou_loss"], 1 - pos["iou"] ** 2, atol=1e-6)
    assert any("1 - IoU²" in str(n) for n in result.notes)
    giou = explain(scene(*CROWD, seed=0, progress=0.5, params={"iou_loss_type": "giou"}))
    assert not torch.allclose(giou.positives["iou_loss"], 1 - giou.positives["iou"] ** 2, atol=1e-4)


def test_a_tiny_box_pays_the_penalty_in_0_3_0_and_still_takes_an_anchor():
    # a 2x2 px box at 101..103: every anchor centre of every level is a multiple of 4 px (P3 4 + 8k, P4 8 + 16k,
    # P5 16 + 32k), none strictly inside, so no pair is in both its box and its centre square: in 0.3.0 every
    # cost of its row carries +100000, yet it takes k = 1 anchor
    tiny = Box(0, 101, 101, 103, 103)
    result = explain(scene(tiny, seed=0, progress=0.5))
    assert result.positives["gt"].tolist() == [0] and result.positives["dynamic_k"].tolist() == [1]
    assert result.positives["penalty"].item() == 100000.0 and result.positives["cost"].item() > 100000.0
    assert any("no penalty-free anchor" in str(n) for n in result.notes)
    main = explain(scene(tiny, version="main", seed=0, progress=0.5))
    assert main.positives["penalty"].item() == 0.0  # main: inside its 1.5-stride centre square is enough


def test_use_l1_and_the_num_fg_ratio():
    off = explain(scene(*CROWD, seed=0, progress=0.5))
    on = explain(scene(*CROWD, seed=0, progress=0.5, params={"use_l1": True}))
    assert off.losses["l1"].item() == 0.0 and bool((off.positives["l1"] == 0).all())
    assert on.losses["l1"].item() > 0 and bool((on.positives["l1"] > 0).all())
    # the L1 target is the same either way: offsets from the cell CORNER, log sizes
    assert torch.equal(on.positives["l1_target"], off.positives["l1_target"])
    l1 = (on.positives["raw_pred"] - on.positives["l1_target"]).abs().sum(1)
    assert torch.allclose(l1, on.positives["l1"], rtol=1e-5, atol=1e-6)
    assert off.losses["num_fg_ratio"].item() == 6 / 3
    empty = explain(scene())
    assert empty.losses["num_fg_ratio"].item() == 1.0 and empty.positives["gt"].numel() == 0
    assert any("is 1.0" in str(n) for n in empty.notes)
    assert empty.losses["obj"].item() > 0 and empty.losses["cls"].item() == 0 and empty.check_list() == []


def test_maps_and_composition():
    result = explain(scene(*CROWD, seed=0, progress=0.5))
    fg = torch.cat([m.reshape(-1) for m in result.maps["fg"]])
    assert int(fg.sum()) == result.positives["gt"].numel()
    cls_bce = torch.cat([m.reshape(-1) for m in result.maps["cls_bce"]])
    assert bool((cls_bce[fg == 0] == 0).all())  # no class loss away from the positives
    obj = torch.cat([m.reshape(-1) for m in result.maps["obj_bce"]])
    assert obj.sum().item() / 6 == pytest.approx(result.losses["obj"].item(), rel=1e-5)  # num_fg = 6
    terms = {t.name: t for t in result.composition.terms}
    assert sum(float(t.value) for t in terms.values()) == pytest.approx(result.losses["total"].item(), rel=1e-6)
    assert float(terms["iou"].value) == pytest.approx(5.0 * float(terms["iou"].sum) / 6, rel=1e-5)


def test_a_pin_sets_the_predicted_box():
    # pin the anchor whose cell holds the box centre (P3 (12, 12): corner (96, 96)) to the box itself: its IoU
    # is 1, the cheapest cost of the box's row, so it becomes a positive with exactly that box
    target = box(100, 100, 40, 30)
    pin = Pin(0, 0, 12, 12, 100.0, 100.0, 40.0, 30.0)
    result = explain(scene(target, pins=(pin,), progress=0.0))
    pos = result.positives
    row = ((pos["level"] == 0) & (pos["gi"] == 12) & (pos["gj"] == 12)).nonzero().squeeze(1)
    assert row.numel() == 1
    assert torch.allclose(pos["pred_box_px"][row][0], torch.tensor([80.0, 85.0, 120.0, 115.0]), atol=1e-3)
    assert pos["iou"][row].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_trace_changes_no_bit(version):
    s = scene(*CROWD, box(200, 60, 30, 90, 1), version=version, seed=5, progress=0.7, params={"use_l1": True})
    trace = Trace()
    traced, plain = explain(s, trace), explain(s)
    assert plain.trace is None and traced.trace is trace
    assert_same_result(traced, plain)
    assert trace.names() == ["decode.P3.grid", "decode.P4.grid", "decode.P5.grid", "targets.count", "simota.geometry",
                             "simota.cost", "simota.dynamic_k", "simota.select", "simota.conflicts", "simota.result",
                             "loss.targets", "loss.iou", "loss.obj", "loss.cls", "loss.l1", "loss.total"]
    assert set(traced.stage_cells()) <= set(trace.names())


@pytest.mark.parametrize("version", VERSIONS)
def test_export_round_trip_verifies(version):
    s = scene(*CROWD, version=version, seed=0, progress=0.5, pins=(Pin(1, 0, 6, 6, 100.0, 100.0, 30.0, 20.0),))
    document = json.loads(json.dumps(export.build_export(export.run_scene(s))))
    report = verify_export(document)
    assert report.ok, report.mismatches


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_every_non_finite_number_has_a_note(version, progress):
    scenes = [
        scene(version=version, progress=progress),
        scene(box(128, 128, 2, 2), box(128, 128, 250, 250, 1), box(5, 250, 10, 3, 2), version=version,
              progress=progress),
        scene(box(64, 64, 20, 20), version=version, progress=progress,
              pins=(Pin(0, 0, 8, 8, 68.0, 68.0, 1e-30, 1e-30),)),
        scene(Box(0, 4, 4, 8, 8), version=version, width=32, height=32, progress=progress),
    ]
    for s in scenes:
        run = export.run_scene(s)
        tables = list(run.result.positives.values()) + list(run.result.losses.values())
        tables += [level for levels in run.result.maps.values() for level in levels]
        tables += [rec.value for stage in run.trace for rec in stage.tensors.values()]
        if any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()) for t in tables):
            assert any("NaN" in str(n) or "inf" in str(n) or "Non-finite" in str(n) for n in run.result.notes)


def test_fewer_than_10_candidates_pad_the_top10_with_nan_and_say_so():
    # main on a 32 px image: a 4 px box in the corner has only the anchors within 1.5 strides of its centre
    run = export.run_scene(scene(Box(0, 4, 4, 8, 8), version="main", width=32, height=32))
    top = run.trace.get("simota.dynamic_k")["gt_topk_iou"]
    assert bool(top.isnan().any())
    assert any("padded with NaN" in str(n) for n in run.result.notes)
