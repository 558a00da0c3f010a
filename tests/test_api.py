"""The HTTP API: every endpoint with real scenes, validation as 422 naming the field, 413, headers."""
from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from losscore.scene import BOX_MARGIN_FRAC, MAX_BOXES, MAX_PINS, Box, Scene
from losscore.registry import all_schemes, get_scheme, validate
from test_api_toyscheme import toy_body, with_toy

REAL_SCHEMES = sorted(all_schemes())


@pytest.fixture(scope="module")
def client():
    with with_toy(), TestClient(create_app(Settings(warmup=True))) as test_client:
        yield test_client


def real_body(scheme: str, **overrides) -> dict:
    """A 640x640 scene with three boxes, one of them thin, for any real scheme."""
    body = {"scheme": scheme, "image": {"width": 640, "height": 640}, "nc": 4, "device": "cpu",
            "boxes": [{"cls": 3, "x1": 52, "y1": 60, "x2": 148, "y2": 260},
                      {"cls": 0, "x1": 300, "y1": 300, "x2": 420, "y2": 380},
                      {"cls": 1, "x1": 500, "y1": 100, "x2": 520, "y2": 300}]}
    body.update(overrides)
    return body


def decode_b64_map(level: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(level["b64"]), dtype="<f4").reshape(level["shape"])


def assert_422(response, loc: list, fragment: str = ""):
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"] == loc for d in details), details
    if fragment:
        assert any(fragment in d["msg"] for d in details), details


# -- health, schemes, page ---------------------------------------------------------------------
def test_healthz(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["warmup_errors"] == {}
    assert "toy" in body["schemes"]


def test_schemes_lists_params_and_limits(client):
    body = client.get("/api/v1/schemes").json()
    toy = next(s for s in body["schemes"] if s["name"] == "toy")
    assert toy["params"][0]["name"] == "gain" and toy["params"][0]["default"] == 1.0
    assert toy["strides"] == [32] and [m["name"] for m in toy["maps"]] == ["iou", "inf"]
    assert body["limits"] == {"max_boxes": MAX_BOXES, "max_nc": 1000, "max_image_side": 2048,
                              "box_margin_frac": BOX_MARGIN_FRAC, "max_head_elements": 40_000_000,
                              "max_pins": MAX_PINS}
    assert set(REAL_SCHEMES) <= {s["name"] for s in body["schemes"]}


def test_security_headers_and_docs_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    docs = client.get("/docs")  # Swagger UI from the installed package: works offline
    assert docs.status_code == 200 and "http" not in docs.headers["content-security-policy"]
    assert "/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    assert client.get("/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/api/v1/schemes").headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://x.org"}).headers


def test_cors_only_when_configured():
    with TestClient(create_app(Settings(warmup=False, cors_origins=["http://x.org"]))) as c:
        r = c.get("/healthz", headers={"Origin": "http://x.org"})
        assert r.headers["access-control-allow-origin"] == "http://x.org"


def test_plotly_served_from_package(client):
    r = client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert len(r.content) > 1_000_000 and b"plotly" in r.content[:2000].lower()


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/api/v1/schemes", "/api/v1/explain", "/api/v1/export"} <= set(paths)


# -- explain with the toy scheme (arithmetic in tests/test_api_toyscheme.py) --------------------
def test_explain_toy_values(client):
    r = client.post("/api/v1/explain?maps=all&stages=true", json=toy_body())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    # one positive at cell (1, 1); IoU of the 32 px cell box with the 32 px target is 256/1792
    (row,) = body["positives"]
    assert (row["gi"], row["gj"], row["rule"]) == (1, 1, "centre")
    assert row["iou"] == pytest.approx(1 / 7, rel=1e-6)
    assert body["losses"]["total"] == pytest.approx(6 / 7, rel=1e-6)
    grid = decode_b64_map(body["maps"]["iou"]["levels"][0])
    assert grid.shape == (1, 3, 4) and grid[0, 1, 1] == pytest.approx(1 / 7, rel=1e-6) and grid.sum() == grid[0, 1, 1]
    assert np.isinf(decode_b64_map(body["maps"]["inf"]["levels"][0])).all()
    assert body["scene"]["params"] == {"gain": 1.0}  # completed with the default
    assert body["levels"] == [{"name": "P5", "stride": 32, "grid": [3, 4], "anchors": None}]
    stage = next(s for s in body["stages"] if s["name"] == "toy.assign")
    assert stage["values"]["odd"] == "nan"  # non-finite floats travel as strings
    assert {t["name"]: t["data"] for t in stage["tensors"]}["gi"] == [1]


def test_explain_maps_and_stage_data_options(client):
    default = client.post("/api/v1/explain", json=toy_body()).json()
    assert list(default["maps"]) == ["iou"]
    assert default["stages"] == [], "the stage list is opt-in (?stages=true)"
    only = client.post("/api/v1/explain?maps=inf", json=toy_body()).json()
    assert list(only["maps"]) == ["inf"]
    small = client.post("/api/v1/explain?stage_data=5&stages=true", json=toy_body()).json()
    iou_map = {t["name"]: t for s in small["stages"] for t in s["tensors"]}["iou_map"]  # 12 elements > 5
    assert iou_map["data"] is None and iou_map["shape"] == [1, 3, 4]
    assert iou_map["max"] == pytest.approx(1 / 7, rel=1e-6) and iou_map["min"] == 0.0
    assert_422(client.post("/api/v1/explain?maps=nope", json=toy_body()), ["query", "maps"], "nope")


def test_export_toy_is_attachment_with_versions(client):
    r = client.post("/api/v1/export", json=toy_body())
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="losslab-trace.json"'
    doc = r.json()
    assert doc["format"] == "losslab-trace" and doc["version"] == 2
    assert doc["library"]["torch"] == torch.__version__
    assert doc["upstream"] == {"repo": "example/toy", "commit": "0123abc", "files": ["tests/toy.py"],
                               "pin": "example/toy@0123abc tests/toy.py"}
    assert set(doc["result"]["maps"]) == {"iou", "inf"}
    assert all(t["data"] is not None for s in doc["stages"] for t in s["tensors"])


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, loc, fragment", [
    ({"boxes": [{"cls": 5, "x1": 1, "y1": 1, "x2": 9, "y2": 9}]}, ["body", "boxes", 0, "cls"], "[0, 2]"),
    ({"boxes": [{"cls": 0, "x1": 20, "y1": 1, "x2": 10, "y2": 9}]}, ["body", "boxes", 0, "x2"], "greater than x1"),
    ({"boxes": [{"cls": 0, "x1": 1, "y1": 9, "x2": 10, "y2": 9}]}, ["body", "boxes", 0, "y2"], "greater than y1"),
    # 128 px wide image, margin 0.5 -> x2 may reach 192; 200 is outside
    ({"boxes": [{"cls": 0, "x1": 100, "y1": 1, "x2": 200, "y2": 9}]}, ["body", "boxes", 0], "margin"),
    ({"image": {"width": 100, "height": 96}}, ["body", "image", "width"], "multiple of the largest stride 32"),
    ({"params": {"bogus": 1}}, ["body", "params", "bogus"], "unknown parameter"),
    ({"params": {"gain": 11}}, ["body", "params", "gain"], "above the maximum"),
    ({"scheme": "nosuch"}, ["body", "scheme"], "unknown scheme"),
    ({"predictions": {"pins": [{"level": 0, "anchor": 0, "gi": 4, "gj": 0, "cx": 1, "cy": 1, "w": 2, "h": 2}]}},
     ["body", "predictions", "pins", 0, "gi"], "4-column grid"),
    ({"predictions": {"pins": [{"level": 1, "anchor": 0, "gi": 0, "gj": 0, "cx": 1, "cy": 1, "w": 2, "h": 2}]}},
     ["body", "predictions", "pins", 0, "level"], "not a level"),
])
def test_scene_validation_is_422_naming_the_field(client, overrides, loc, fragment):
    assert_422(client.post("/api/v1/explain", json=toy_body(**overrides)), loc, fragment)


def test_request_model_rejections(client):
    too_many = [{"cls": 0, "x1": 1, "y1": 1, "x2": 9, "y2": 9}] * (MAX_BOXES + 1)
    assert_422(client.post("/api/v1/explain", json=toy_body(boxes=too_many)), ["body", "boxes"])
    assert_422(client.post("/api/v1/explain", json=toy_body(extra=1)), ["body", "extra"])
    assert_422(client.post("/api/v1/explain", json=toy_body(nc=0)), ["body", "nc"])
    assert_422(client.post("/api/v1/explain", json=toy_body(device="tpu")), ["body", "device"])
    # NaN and Infinity are not JSON, but Python's parser reads them: still a 422, never a 500
    raw = '{"scheme": "toy", "nc": 3, "boxes": [{"cls": 0, "x1": NaN, "y1": 1, "x2": Infinity, "y2": 9}]}'
    r = client.post("/api/v1/explain", content=raw, headers={"content-type": "application/json"})
    assert_422(r, ["body", "boxes", 0, "x1"])
    assert client.post("/api/v1/explain", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_cuda_without_gpu_says_so(client):
    assert_422(client.post("/api/v1/explain", json=toy_body(device="cuda")), ["body", "device"], "no CUDA device")


def test_oversized_body_is_413(client):
    big = b'{"scheme": "toy", "pad": "' + b"x" * (1 << 20) + b'"}'
    r = client.post("/api/v1/explain", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no content-length: the limit still holds while streaming
        for _ in range(20):
            yield b"x" * 65536

    r = client.post("/api/v1/export", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unexpected_error_is_json_500_without_traceback(monkeypatch):
    import app.serialize as serialize

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serialize, "prepare_explain", boom)
    with TestClient(create_app(Settings(warmup=False)), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/explain", json=toy_body())
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "internal error (RuntimeError); see the server log"}
    assert "secret" not in r.text and "Traceback" not in r.text


# -- real schemes -----------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_real_scheme_positives_equal_losscore(client, scheme):
    body = real_body(scheme)
    response = client.post("/api/v1/explain?maps=all&stages=true&columns=all", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    scene = validate(Scene(scheme, 640, 640, 4, tuple(Box(b["cls"], b["x1"], b["y1"], b["x2"], b["y2"])
                                                           for b in body["boxes"]), device="cpu"))
    direct = get_scheme(scheme).explain(scene, None)
    rows = got["positives"]
    assert len(rows) == len(direct.positives["gt"])
    where = [c for c in ("gt", "level", "anchor", "gi", "gj", "query") if c in direct.positives]
    assert "gt" in where and len(where) >= 2, where  # a grid cell or a query: where each positive is
    for column in where:
        assert [row[column] for row in rows] == direct.positives[column].tolist(), column
    rule_names = get_scheme(scheme).rule_names
    assert [row["rule"] for row in rows] == [rule_names[i] for i in direct.positives["rule"].tolist()]
    for name, value in direct.losses.items():
        expected = float(value)
        assert got["losses"][name] == pytest.approx(expected, rel=1e-6, abs=1e-7) if math.isfinite(expected) \
            else got["losses"][name] in ("nan", "inf", "-inf")
    for name, levels in direct.maps.items():
        for level_json, tensor in zip(got["maps"][name]["levels"], levels):
            np.testing.assert_array_equal(decode_b64_map(level_json), tensor.float().cpu().numpy())
    assert got["stages"], "a traced explain records stages"


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_real_scheme_payload_is_small_enough(client, scheme):
    r = client.post("/api/v1/explain", json=real_body(scheme))
    assert r.status_code == 200
    assert len(r.content) <= 300_000, f"{scheme} explain payload {len(r.content)} bytes"


@pytest.mark.parametrize("scheme", ["yolov5", "yolov9"])
def test_the_load_benchmarks_default_request_is_under_300_kb(client, scheme):
    """The issue's payload budget, for the scene `make bench-api` sends (640x640, 20 boxes, nc 80)."""
    from benchmarks.api_load import scene

    r = client.post("/api/v1/explain", json=scene(scheme))
    assert r.status_code == 200 and len(r.json()["positives"]) > 100
    assert len(r.content) <= 300_000, f"{scheme} default explain payload {len(r.content)} bytes"


def test_without_its_page_the_server_refuses_to_start(tmp_path):
    """No placeholder page: a broken install (no templates/static) says so and does not start."""
    from app.main import PageMissing

    with pytest.raises(PageMissing, match="reinstall losslab"):
        create_app(Settings(warmup=False, templates_dir=tmp_path, static_dir=tmp_path))


def test_focal_curve_reproduces_retinanet_figure_1(client):
    # -(1 - p_t)^gamma ln p_t at p_t = 0.1 / 0.5 / 0.9 (LEARNERS.md); alpha = 1 leaves alpha out.
    published = {0.0: (2.302585, 0.693147, 0.105361), 2.0: (1.865094, 0.173287, 0.001054)}
    for gamma, values in published.items():
        r = client.get("/api/v1/focal_curve", params={"gamma": gamma, "alpha": 1.0, "points": 9})
        assert r.status_code == 200
        body = r.json()
        assert body["p_t"] == pytest.approx([0.1 * i for i in range(1, 10)], abs=1e-6)
        got = [body["loss"][0], body["loss"][4], body["loss"][8]]
        assert got == pytest.approx(values, abs=2e-6)
        assert body["ce"][8] == pytest.approx(0.105361, abs=1e-6)
    # CE / FL = 100 at p_t = 0.9 with gamma 2 (alpha out)
    r = client.get("/api/v1/focal_curve", params={"gamma": 2.0, "alpha": 1.0, "points": 9}).json()
    assert r["ce"][8] / r["loss"][8] == pytest.approx(100.0, rel=1e-4)
    # alpha scales the positive's loss
    a = client.get("/api/v1/focal_curve", params={"gamma": 2.0, "alpha": 0.25, "points": 9}).json()
    assert a["loss"][4] == pytest.approx(0.25 * 0.173287, abs=1e-6)
    assert client.get("/api/v1/focal_curve", params={"gamma": -1}).status_code == 422
    assert client.get("/api/v1/focal_curve", params={"points": 1}).status_code == 422


def test_explain_without_stages_and_with_chosen_columns_keeps_the_numbers(client):
    body = real_body("yolov5")
    full = client.post("/api/v1/explain", params={"stages": "true"}, json=body).json()
    light = client.post("/api/v1/explain", params={"columns": "gt,level,anchor,gi,gj,rule"}, json=body).json()
    assert full["stages"] and light["stages"] == []
    assert light["losses"] == full["losses"]
    assert light["positives"] == [{k: row[k] for k in ("gt", "level", "anchor", "gi", "gj", "rule")}
                                  for row in full["positives"]]
    unknown = client.post("/api/v1/explain", params={"columns": "gt,nonsense"}, json=body)
    assert_422(unknown, ["query", "columns"], "nonsense")


def test_a_scene_too_large_for_memory_is_422_on_nc(client):
    # 2048x2048 at strides 8/16/32 has 65536 + 16384 + 4096 = 86016 cells; x 3 x (64 + 1000)
    # is about 275M head values, far above the budget, so the scene is refused before any work.
    body = real_body("yolov5", image={"width": 2048, "height": 2048}, nc=1000)
    assert_422(client.post("/api/v1/explain", json=body), ["body", "nc"], "prediction head")


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_drag_request_is_the_full_answer_narrowed(client, scheme):
    """What the page sends while a box moves (static/js/api.js, benchmarks.api_load drag mode): no
    stages, only the grid's columns of each positive; every number it does carry equals the full answer's."""
    from benchmarks.api_load import MODES

    drag = MODES["drag"]
    columns = get_scheme(scheme).column_set("grid")
    full = client.post("/api/v1/explain", params={"stages": "true", "columns": "all"}, json=real_body(scheme)).json()
    light = client.post("/api/v1/explain", params=drag, json=real_body(scheme))
    assert light.status_code == 200, light.text
    light = light.json()
    assert light["stages"] == [] and full["stages"]
    assert light["positives"] and set(light["positives"][0]) == set(columns) & set(full["positives"][0])
    if get_scheme(scheme).pred_box:  # the focal playground has no boxes to decode; DETR draws query_columns
        assert "pred_box_px" in light["positives"][0], "the grid draws the predicted boxes while dragging"
    assert light["positives"] == [{k: row[k] for k in light["positives"][0]} for row in full["positives"]]
    assert light["losses"] == full["losses"] and light["maps"] == full["maps"]


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_the_columns_layout_is_the_same_table_as_the_rows(client, scheme):
    """?layout=columns (the page's drag answers) sends the positives as columns, rule as an index into
    rule_names: rebuilt row by row, it is the rows layout's table; the rest of the answer is unchanged."""
    params = {"columns": "all", "checks": "all"}
    rows = client.post("/api/v1/explain", params=params, json=real_body(scheme)).json()
    cols = client.post("/api/v1/explain", params={**params, "layout": "columns"}, json=real_body(scheme)).json()
    table, names = cols["positives"], cols["rule_names"]
    assert table["layout"] == "columns" and table["count"] == len(rows["positives"]) > 0
    assert set(table["columns"]) == set(rows["positives"][0])
    rebuilt = [{name: names[values[i]] if name == "rule" else values[i] for name, values in table["columns"].items()}
               for i in range(table["count"])]
    assert rebuilt == rows["positives"]
    for doc in (rows, cols):
        doc.pop("positives"), doc.pop("compute_ms")
    assert cols == rows


# -- the web layer's own 422 messages, in the reader's language --------------------------------
WEB_422 = [  # (request, loc, English fragment, Chinese fragment)
    (("post", "/api/v1/explain?maps=nope", real_body("yolox")), ["query", "maps"], "unknown map(s) ['nope'] for scheme 'yolox'",
     "方案 'yolox' 没有图层 ['nope']"),
    (("post", "/api/v1/explain?columns=nope", real_body("yolox")), ["query", "columns"], "unknown column(s) ['nope']",
     "没有列 ['nope']"),
    (("post", "/api/v1/explain?layout=cols", real_body("yolov5")), ["query", "layout"],
     "layout must be rows or columns, got 'cols'", "layout 只能是 rows 或 columns，收到的是 'cols'"),
    (("post", "/api/v1/explain?checks=box", real_body("yolov5")), ["query", "checks"], "'box' is not box:N or cell:L:gi:gj",
     "'box' 不是 box:N 或 cell:L:gi:gj"),
    (("post", "/api/v1/explain?maps=box.cost", real_body("yolox")), ["query", "maps"], "name it with ?target=N",
     "用 ?target=N 指明"),
    (("post", "/api/v1/explain?target=3", real_body("yolox")), ["query", "target"],
     "no box 3: the scene has 3 box(es), numbered from 0", "没有框 3：场景里有 3 个框，从 0 开始编号"),
    (("post", "/api/v1/explain", real_body("nosuch")), ["body", "scheme"], "unknown scheme 'nosuch'; known: [",
     "没有方案 'nosuch'；可用的有：["),
    (("post", "/api/v1/reveal", {"scene": real_body("detr"), "level": 0, "guess": []}), ["body", "scene", "scheme"],
     "scheme 'detr' matches queries to boxes", "方案 'detr' 把查询匹配到框上"),
    (("post", "/api/v1/reveal", {"scene": real_body("yolov5"), "level": 5, "guess": []}), ["body", "level"],
     "5 is not a level of this scene (it has 3)", "5 不是这个场景的层（它有 3 层）"),
]


@pytest.mark.parametrize("request_, loc, english, chinese", WEB_422, ids=[w[1][-1] + str(i) for i, w in enumerate(WEB_422)])
def test_the_web_layers_422s_say_what_and_where_in_the_readers_language(client, request_, loc, english, chinese):
    method, url, body = request_
    assert_422(getattr(client, method)(url, json=body), loc, english)
    joined = url + ("&" if "?" in url else "?") + "lang=zh"
    assert_422(getattr(client, method)(joined, json=body), loc, chinese)  # ?lang=zh
    assert_422(getattr(client, method)(url, json=body, headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}),
               loc, chinese)  # or the browser's language


@pytest.mark.parametrize("scheme", ["focal", "atss"])
def test_focal_points_are_the_positives_own_columns_and_follow_the_columns_asked(client, scheme):
    spec = get_scheme(scheme)
    x, y = spec.focal.points
    full = client.post("/api/v1/explain?columns=all", json=real_body(scheme)).json()
    points = full["focal"]["points"]
    assert points["x"] == x and points["y"] == y and len(points["p_t"]) == len(full["positives"]) > 0
    assert points["p_t"] == [row[x] for row in full["positives"]]
    assert points["loss"] == [row[y] for row in full["positives"]]
    light = client.post("/api/v1/explain?columns=grid", json=real_body(scheme)).json()  # a drag's answer
    assert light["focal"]["points"] is None and light["focal"]["curve"] == full["focal"]["curve"]
