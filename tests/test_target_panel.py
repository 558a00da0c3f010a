"""The box panel (losscore.target_spec, export.target_to_dict): every number in it is the checks'
and the positives' own, counted and ordered on the server, for every scheme."""
from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from losscore import export
from losscore.registry import all_schemes, get_scheme
from losscore.scene import UNITS, Box, Scene

SCHEMES = sorted(all_schemes())
# four boxes: two overlapping small ones fight for cells, a large one, and a tiny one
BOXES = (Box(0, 100, 150, 260, 330), Box(1, 230, 280, 420, 400), Box(2, 410, 100, 430, 122), Box(3, 412, 102, 428, 124))


def run(scheme: str, **params):
    return export.run_scene(Scene(scheme, 640, 640, 80, BOXES, progress=0.7, device="cpu", params=params))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_declarations_are_well_formed(scheme):
    spec = get_scheme(scheme)
    target = spec.target
    for table in target.tables:
        assert table.limit > 0 and table.title
        for column in table.columns:
            assert column.unit == "" or column.unit in UNITS, (table.test, column)
    names = [m.name for m in target.maps]
    assert len(set(names)) == len(names)
    assert all(name.startswith("box.") for name in names)
    assert not set(names) & {m.name for m in spec.maps}
    assert all(m.scale in ("linear", "log", "count") for m in target.maps)
    if target.histogram is not None:
        assert target.histogram.bins > 0 and target.histogram.range[0] < target.histogram.range[1]
    assert spec.to_dict()["target"]["maps"] == [m.to_dict() for m in target.maps]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gt", [0, 3])
def test_panel_numbers_are_the_checks_and_positives(scheme, gt):
    computed = run(scheme)
    result, spec = computed.result, get_scheme(scheme)
    panel = export.target_to_dict(result, spec, computed.scene, gt)
    assert panel["gt"] == gt and panel["box"]["x1"] == BOXES[gt].x1
    assert panel["positives"] == int((result.positives["gt"] == gt).sum())
    assert sum(panel["by_rule"].values()) == panel["positives"]
    mine = [c for c in result.check_list() if c.gt == gt]
    for fact in panel["facts"]:
        declared = next(f for f in spec.target.facts if f.label == fact["label"])
        first = next(c for c in mine if c.test == declared.test and declared.key in c.values)
        assert fact["value"] == pytest.approx(first.values[declared.key])
    declared_tables = {t.test: t for t in spec.target.tables}
    for table in panel["tables"]:
        checks = [c for c in mine if c.test == table["test"]]
        assert table["total"] == len(checks) and table["shown"] == len(table["rows"]) <= table["total"]
        assert table["passed"] == sum(c.passed for c in checks) and table["failed"] == table["total"] - table["passed"]
        declared = declared_tables.get(table["test"])
        if declared is not None and declared.sort:
            index = [c["key"] for c in table["columns"]].index(declared.sort) if declared.sort in \
                [c["key"] for c in table["columns"]] else None
            if index is not None:
                keys = [row["values"][index] for row in table["rows"]]
                finite = [k for k in keys if isinstance(k, (int, float))]
                assert finite == sorted(finite, reverse=declared.descending), table["test"]
        for row in table["rows"]:
            match = [c for c in checks if (c.level, c.anchor, c.gi, c.gj) == (row["level"], row["anchor"], row["gi"], row["gj"])]
            assert match and row["passed"] in {c.passed for c in match}
    if not spec.target.auto:
        return
    assert {t["test"] for t in panel["tables"]} == {c.test for c in mine}, "every test the box has gets a table"


def test_atss_histogram_bins_the_candidates_and_draws_mean_and_threshold():
    computed = run("atss")
    for gt in range(len(BOXES)):
        panel = export.target_to_dict(computed.result, get_scheme("atss"), computed.scene, gt)
        h = panel["histogram"]
        checks = [c for c in computed.result.check_list() if c.gt == gt and c.test == "iou_threshold"]
        assert h["count"] == len(checks) == sum(h["passed"]) + sum(h["failed"])
        assert sum(h["passed"]) == sum(c.passed for c in checks) == panel["positives"] + sum(
            1 for c in computed.result.check_list() if c.gt == gt and c.test in ("centre_inside", "shared") and not c.passed
            and any(o.test == "iou_threshold" and o.passed and (o.level, o.gi, o.gj) == (c.level, c.gi, c.gj) for o in checks))
        for c in checks:
            b = min(int(math.floor(c.values["iou"] * 20)), 19)
            assert (h["passed"] if c.passed else h["failed"])[b] > 0
        lines = {line["key"]: line["value"] for line in h["lines"]}
        assert lines["threshold"] == pytest.approx(lines["mean"] + checks[0].values["std"], rel=1e-6)
        assert [line["main"] for line in h["lines"]] == [False, True]


def test_atss_zero_positive_box_says_why():
    computed = run("atss", topk=1)
    panels = [export.target_to_dict(computed.result, get_scheme("atss"), computed.scene, gt) for gt in range(len(BOXES))]
    empty = [p for p in panels if p["positives"] == 0]
    assert empty, "this scene leaves a box without positives at topk 1"
    for panel in empty:
        assert panel["verdicts"] and f"Box {panel['gt']}" in panel["verdicts"][0]


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if get_scheme(s).target.maps])
def test_box_maps_hold_the_checks_values_and_nan_elsewhere(scheme):
    computed = run(scheme)
    spec = get_scheme(scheme)
    names = [m.name for m in spec.target.maps]
    maps = export.target_maps(computed.result, spec, 0, names)
    assert set(maps) == set(names)
    for declared in spec.target.maps:
        levels = maps[declared.name]
        assert [tuple(t.shape[1:]) for t in levels] == [tuple(int(g) for g in info.grid) for info in computed.result.levels]
        cells = {}
        for c in computed.result.check_list():
            if c.gt == 0 and c.test == declared.test and isinstance(c.values.get(declared.key), (int, float)):
                cells[(c.level, c.anchor, c.gj, c.gi)] = float(c.values[declared.key])
        assert cells, declared.name
        for (level, anchor, gj, gi), value in cells.items():
            assert levels[level][anchor, gj, gi].item() == pytest.approx(value, rel=1e-6, nan_ok=True)
        filled = sum(int((~torch.isnan(t)).sum()) for t in levels)
        assert filled == sum(1 for v in cells.values() if not math.isnan(v))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(warmup=False))) as c:
        yield c


def body(scheme: str) -> dict:
    return {"scheme": scheme, "image": {"width": 640, "height": 640}, "nc": 80,
            "boxes": [{"cls": b.cls, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in BOXES],
            "predictions": {"seed": 0, "progress": 0.7, "pins": []}}


def test_api_sends_the_panel_and_box_maps_in_the_asked_language(client):
    r = client.post("/api/v1/explain", params={"target": 1, "checks": "box:1", "maps": "box.cost_class,cost"},
                    json=body("rtmdet"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["target"]["gt"] == 1 and doc["target"]["tables"][0]["test"] == "dynamic_k"
    assert set(doc["maps"]) == {"box.cost_class", "cost"}
    # a light request (no checks) still gets the box's heat layer, without the panel
    light = client.post("/api/v1/explain", params={"target": 1, "maps": "box.cost_class", "columns": "grid"},
                        json=body("rtmdet")).json()
    assert light["target"] is None and light["maps"]["box.cost_class"] == doc["maps"]["box.cost_class"]
    assert client.post("/api/v1/explain", json=body("rtmdet")).json()["target"] is None


def test_api_target_out_of_range_is_422(client):
    r = client.post("/api/v1/explain", params={"target": 4, "checks": "box:4"}, json=body("yolox"))
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", "target"] and "4 box(es)" in detail["msg"]
    r = client.post("/api/v1/explain", params={"maps": "box.nonsense"}, json=body("yolox"))
    assert r.status_code == 422 and "box.nonsense" in r.text


def test_box_maps_without_a_target_and_reveal_on_queries_are_422(client):
    r = client.post("/api/v1/explain", params={"maps": "box.cost"}, json=body("yolox"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "maps"] and "target" in r.text
    detr = {**body("detr"), "image": {"width": 640, "height": 640}}
    r = client.post("/api/v1/reveal", json={"scene": detr, "level": 0, "guess": [[0, 0]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "scene", "scheme"]
