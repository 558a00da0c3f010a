"""The new families in a real browser: the box panel (its numbers are the API's), the box's own heat
layers, ATSS's zero-positive box said where it happens, and DETR's queries: a dragged query box
flips the matching."""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from e2e_helpers import api_get, api_post, open_page, wait_rendered
from losscore.registry import all_schemes
from losscore.text import untranslated

pytestmark = pytest.mark.e2e

BOXES = "0,100,150,260,330;1,230,280,420,400;2,410,100,430,122;3,412,102,428,124"
FULL = "/api/v1/explain?maps=all&columns=all&checks=box:{gt}&stages=1&stage_data=64&target={gt}"


def settled(lab):
    lab.wait_for_timeout(50)
    wait_rendered(lab)
    lab.wait_for_timeout(300)


def open_free(lab, hash_: str):
    open_page(lab, f"welcome=0&{hash_}")
    settled(lab)


def scene_of(lab) -> dict:
    return lab.evaluate("() => window.__losslab.scene()")


def to_screen(lab, x: float, y: float) -> tuple[float, float]:
    svg = lab.get_by_test_id("scene")
    box = svg.bounding_box()
    vx, vy, vw, vh = (float(v) for v in svg.get_attribute("viewBox").split())
    return box["x"] + (x - vx) * box["width"] / vw, box["y"] + (y - vy) * box["height"] / vh


@pytest.mark.parametrize("scheme", ["yolox", "atss", "rtmdet", "yolov8", "yolov10", "yolo26", "detr"])
def test_box_panel_is_the_servers_for_the_selected_box(lab, scheme):
    open_free(lab, f"scheme={scheme}&sel=3&progress=0.7&boxes={BOXES}")
    panel = lab.get_by_test_id("target-panel")
    api = api_post(lab.base, FULL.format(gt=3), scene_of(lab))["target"]
    assert panel.get_attribute("data-gt") == "3"
    assert panel.get_attribute("data-positives") == str(api["positives"])
    tables = lab.get_by_test_id("target-table")
    assert tables.count() == len(api["tables"])
    for i, table in enumerate(api["tables"]):
        shown = tables.nth(i)
        assert shown.get_attribute("data-test") == table["test"]
        assert shown.locator("tbody tr").count() == table["shown"]
        assert table["title"] in shown.locator("summary").inner_text()
        assert f"{table['passed']} ✓ / {table['failed']} ✗" in shown.locator("summary").inner_text()
    facts = lab.get_by_test_id("target-facts")
    for fact in api["facts"]:
        assert fact["label"] in facts.inner_text()
    assert lab.errors == [], (scheme, lab.errors)


def test_atss_box_without_positives_says_why_and_shows_the_threshold(lab):
    params = quote(json.dumps({"topk": 1}))
    open_free(lab, f"scheme=atss&params={params}&progress=0.7&boxes={BOXES}")
    scene = scene_of(lab)
    counts = api_post(lab.base, "/api/v1/explain", scene)["counts"]["per_box"]
    empty = [box["gt"] for box in counts if box["total"] == 0]
    assert empty, "topk 1 leaves a box of this scene without positives"
    lab.evaluate(f"() => {{ location.hash = location.hash.replace(/sel=\\d+&?/, '') + '&sel={empty[0]}'; }}")
    settled(lab)
    api = api_post(lab.base, FULL.format(gt=empty[0]), scene_of(lab))["target"]
    assert api["positives"] == 0 and api["verdicts"]
    verdict = lab.get_by_test_id("target-verdict")
    assert verdict.count() == len(api["verdicts"]) and verdict.first.inner_text() == api["verdicts"][0]
    hist = lab.get_by_test_id("target-histogram")
    threshold = next(line for line in api["histogram"]["lines"] if line["key"] == "threshold")
    assert "threshold" in hist.inner_text()
    assert hist.locator(".main-svg").count() >= 1, "the histogram is drawn"
    assert lab.errors == []


def test_a_box_heat_layer_paints_that_boxs_costs(lab):
    open_free(lab, f"scheme=rtmdet&sel=0&progress=0.7&boxes={BOXES}")
    select = lab.get_by_test_id("heat-select")
    options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    spec = next(s for s in api_get(lab.base, "/api/v1/schemes")["schemes"] if s["name"] == "rtmdet")
    assert [m["name"] for m in spec["target"]["maps"]] == [o for o in options if o.startswith("box.")]
    select.select_option("box.cost_class")
    settled(lab)
    assert lab.get_by_test_id("scene-heat").get_attribute("visibility") == "visible"
    assert "box.cost_class" in lab.get_by_test_id("heat-legend").inner_text()
    # deselecting the box (click on empty image space) takes its layers away
    assert "heat=box.cost_class" in lab.evaluate("() => location.hash")
    assert lab.errors == []


def test_a_box_panel_row_lights_its_cell(lab):
    open_free(lab, f"scheme=yolox&sel=0&progress=0.7&boxes={BOXES}")
    rows = api_post(lab.base, FULL.format(gt=0), scene_of(lab))["target"]["tables"][1]["rows"]  # its cost row
    index = next(i for i, r in enumerate(rows) if r["level"] == 0)  # the grid shows P3: hover lights cells there
    api = rows[index]
    row = lab.get_by_test_id("target-table").nth(1).locator("tbody tr").nth(index)
    row.hover()
    glow = lab.get_by_test_id("glow-cell")
    assert glow.count() == 1
    assert [glow.get_attribute(f"data-{k}") for k in ("gi", "gj")] == [str(api["gi"]), str(api["gj"])]
    other = next(i for i, r in enumerate(rows) if r["level"] != 0)  # a click shows the row's level
    lab.get_by_test_id("target-table").nth(1).locator("tbody tr").nth(other).click()
    settled(lab)
    assert lab.evaluate("() => window.__losslab.state().level") == rows[other]["level"]


def test_detr_queries_render_and_dragging_a_query_flips_the_matching(lab):
    open_free(lab, "scheme=detr&progress=0.3&boxes=0,64,64,224,224;1,384,320,576,544")
    assert lab.get_by_test_id("matrix-panel").is_visible()
    scene = scene_of(lab)
    before = api_post(lab.base, "/api/v1/explain?columns=all", scene)
    assert lab.get_by_test_id("query-box").count() == len(before["queries"])
    assert lab.get_by_test_id("positive-count").inner_text() == "2"
    owner = {p["gt"]: p["query"] for p in before["positives"]}

    def pinned(query: dict) -> dict:
        x1, y1, x2, y2 = query["box_px"]
        pin = {"level": 0, "anchor": query["query"], "gi": 0, "gj": 0, "cx": 480.0, "cy": 432.0, "w": x2 - x1, "h": y2 - y1}
        return {**scene, "predictions": {**scene["predictions"], "pins": [pin]}}

    # a free query that takes box 1 once its box is centred on box 1 (the server says which), grabbed at
    # a point of its box where no other query's box lies on top
    def grip(query: dict):
        x1, y1, x2, y2 = query["box_px"]
        for fx, fy in ((0.5, 0.5), (0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3), (0.1, 0.5), (0.5, 0.1), (0.9, 0.5), (0.5, 0.9)):
            x, y = x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)
            sx, sy = to_screen(lab, x, y)
            top = lab.evaluate("([x, y]) => document.elementFromPoint(x, y)?.dataset?.query ?? null", [sx, sy])
            if top == str(query["query"]):
                return x, y
        return None

    candidates = [q for q in before["queries"] if q["matched_gt"] == -1 and
                  {p["gt"]: p["query"] for p in api_post(lab.base, "/api/v1/explain", pinned(q))["positives"]}[1] == q["query"]]
    free, (gx, gy) = next((q, grip(q)) for q in candidates if grip(q))
    x1, y1, x2, y2 = free["box_px"]
    lab.mouse.move(*to_screen(lab, gx, gy))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 480 + gx - (x1 + x2) / 2, 432 + gy - (y1 + y2) / 2), steps=10)
    lab.mouse.up()
    settled(lab)
    scene = scene_of(lab)
    assert [p["anchor"] for p in scene["predictions"]["pins"]] == [free["query"]]
    after = api_post(lab.base, "/api/v1/explain?columns=all", scene)
    now = {p["gt"]: p["query"] for p in after["positives"]}
    assert now[1] == free["query"] != owner[1], "the drag flipped box 1's query"
    shown = {int(el.get_attribute("data-query")): int(el.get_attribute("data-matched"))
             for el in lab.get_by_test_id("query-box").all()}
    assert shown == {q["query"]: q["matched_gt"] for q in after["queries"]}
    assert shown[free["query"]] == 1 and shown[owner[1]] == -1
    assert "→" in lab.get_by_test_id("what-changed").inner_text() or lab.get_by_test_id("what-changed").inner_text()
    assert lab.errors == []


def test_yolov10_branches_side_by_side_are_the_servers_two_sets(lab):
    open_free(lab, f"scheme=yolov10&sel=0&progress=0.7&split=1&boxes={BOXES}")
    api = api_post(lab.base, "/api/v1/explain?columns=all", scene_of(lab))
    split = api["counts"]["split"]
    assert [s["value"] for s in split] == [0, 1]
    assert split[1]["total"] == len(api["scene"]["boxes"])  # one-to-one: topk2 = 1 positive per box
    assert lab.get_by_test_id("split-title").is_visible()
    assert f"{split[0]['total']}" in lab.get_by_test_id("split-title").inner_text()
    assert lab.get_by_test_id("cmp-positive-count").inner_text() == str(split[1]["total"])
    assert not lab.get_by_test_id("cmp-loss-total").is_visible()  # one total, both branches', in the summary
    tops = [lab.get_by_test_id(t).bounding_box()["y"] for t in ("scene", "cmp-scene")]
    assert abs(tops[0] - tops[1]) < 2, tops  # the two grids level

    def cells(testid: str) -> set[tuple]:
        got = lab.locator(f"[data-testid={testid}] [data-testid=grid-cell]").evaluate_all(
            "els => els.map(e => [e.dataset.gt, e.dataset.level, e.dataset.gi, e.dataset.gj])")
        return {tuple(int(v) for v in row) for row in got}

    for testid, branch in (("scene", 0), ("cmp-scene", 1)):
        want = {(p["gt"], p["level"], p["gi"], p["gj"]) for p in api["positives"] if p["branch"] == branch and p["level"] == 0}
        assert cells(testid) == want, testid
    lab.get_by_test_id("split-toggle").uncheck()
    settled(lab)
    assert not lab.get_by_test_id("split-title").is_visible()
    assert lab.errors == []


SCHEMES = list(all_schemes())
PROSE_ONLY = """() => {  // the page's prose: tables, code, selects and plots hold code names, which stay as they are
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll('table, code, select, svg, script, style, [hidden]').forEach((e) => e.remove());
  copy.style.position = 'absolute';
  document.body.appendChild(copy);
  const text = copy.innerText;
  copy.remove();
  return text;
}"""


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_in_chinese_leaves_no_english_sentence_on_the_page(lab, scheme):
    open_free(lab, f"scheme={scheme}&lang=zh&sel=0&progress=0.7&boxes={BOXES}")
    api = api_post(lab.base, "/api/v1/explain?columns=grid", scene_of(lab))
    if api["positives"] and "gi" in api["positives"][0]:  # keep a positive cell in the inspector
        row = api["positives"][0]
        lab.locator(f"[data-testid=level-tab][data-level='{row['level']}']").click()
        settled(lab)
        stride = api["levels"][row["level"]]["stride"]
        lab.mouse.click(*to_screen(lab, (row["gi"] + 0.5) * stride, (row["gj"] + 0.5) * stride))
        settled(lab)
    assert untranslated(lab.evaluate(PROSE_ONLY)) == []
    assert lab.errors == []


def test_labels_on_the_grid_never_cover_each_other(lab):
    """YOLOX's cost labels on a crowded P3: each is written only where it covers no other (the rest keep
    their sentence in the cell's title)."""
    open_free(lab, "scheme=yolox&progress=0.2&sel=0&level=0&heat=iou&boxes=0,200,180,330,300")
    cells = lab.locator("[data-testid=scene] [data-testid=check-cell]")
    labels = lab.locator("[data-testid=scene] .checklabel")
    boxes = labels.evaluate_all("els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })")
    assert 2 <= len(boxes) < cells.count()  # some written, some left to their titles

    def overlap(a, b):
        return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5

    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if overlap(a, b)]
    assert all(cells.evaluate_all("els => els.map(e => e.querySelector('title').textContent)"))
    assert lab.errors == []
