"""The page in a real browser against the real server: what it shows equals what the API says."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from e2e_helpers import api_get, api_post, open_page, wait_rendered

pytestmark = pytest.mark.e2e

# LEARNERS.md: a 50x80 box centred at (100, 203) on 640x640 with the default anchors -> 19 positives.
LEARNERS_BOX = "0,75,163,125,243"


def page_state(lab) -> dict:
    """The state the page wrote into its URL hash, decoded here independently of the page's JS."""
    lab.evaluate("() => new Promise(r => setTimeout(r, 0))")
    query = parse_qs(lab.evaluate("location.hash").lstrip("#"), keep_blank_values=True)
    boxes = []
    for part in filter(None, query.get("boxes", [""])[0].split(";")):
        cls, x1, y1, x2, y2 = (float(v) for v in part.split(","))
        boxes.append({"cls": int(cls), "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    return {
        "scheme": query["scheme"][0],
        "image": {"width": int(query.get("width", ["640"])[0]), "height": int(query.get("height", ["640"])[0])},
        "nc": int(query.get("nc", ["80"])[0]),
        "boxes": boxes,
        "params": json.loads(query.get("params", ["{}"])[0]),
    }


MAX_TABLE_ROWS = 400  # static/js/config.js: rows the positives table renders


def shown_rows(lab) -> list[tuple]:
    rows = lab.get_by_test_id("positive-row")
    attrs = rows.evaluate_all("els => els.map(e => [e.dataset.gt, e.dataset.level, e.dataset.anchor, e.dataset.gi, e.dataset.gj, e.dataset.rule])")
    return [(int(g), int(lv), int(a), int(i), int(j), r) for g, lv, a, i, j, r in attrs]


def api_rows(result: dict) -> list[tuple]:
    """The API's positives in its order, as many as the table shows."""
    rows = [(p["gt"], p["level"], p["anchor"], p["gi"], p["gj"], p["rule"]) for p in result["positives"]]
    return rows[:MAX_TABLE_ROWS]


def to_screen(lab, x: float, y: float) -> tuple[float, float]:
    """Image pixels -> screen pixels through the scene's bounding box and its viewBox (zoom crop)."""
    box = lab.get_by_test_id("scene").bounding_box()
    vx, vy, vw, vh = (float(v) for v in lab.get_by_test_id("scene").get_attribute("viewBox").split())
    return box["x"] + (x - vx) * box["width"] / vw, box["y"] + (y - vy) * box["height"] / vh


def wait_settled(lab):
    lab.wait_for_timeout(50)
    wait_rendered(lab)
    lab.wait_for_timeout(300)  # the slow views (table, plots) render 200 ms after the last result


def test_draw_then_drag_shows_what_the_api_computes(lab):
    open_page(lab, "scheme=yolov5")
    assert lab.get_by_test_id("gt-box").count() == 0
    # draw from (200, 200) to (260, 300) image px, then drag the box by (+37, +21)
    lab.mouse.move(*to_screen(lab, 200, 200))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 230, 250), steps=4)
    lab.mouse.move(*to_screen(lab, 260, 300), steps=4)
    lab.mouse.up()
    assert lab.get_by_test_id("gt-box").count() == 1
    lab.mouse.move(*to_screen(lab, 230, 250))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 267, 271), steps=8)
    lab.mouse.up()
    wait_settled(lab)
    scene = page_state(lab)
    assert len(scene["boxes"]) == 1
    box = scene["boxes"][0]
    # screen pixels map to image pixels at ~0.9 px each: allow one screen pixel of rounding
    for got, want in zip((box["x1"], box["y1"], box["x2"], box["y2"]), (237, 221, 297, 321)):
        assert abs(got - want) <= 1.0
    result = api_post(lab.base, "/api/v1/explain", scene)
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    # the cells drawn on the grid (level P3, all anchors) are exactly the API's P3 rows
    cells = lab.get_by_test_id("pos-cell").evaluate_all(
        "els => els.map(e => [e.dataset.gt, e.dataset.level, e.dataset.anchor, e.dataset.gi, e.dataset.gj, e.dataset.rule])")
    drawn = {(int(g), int(lv), int(a), int(i), int(j), r) for g, lv, a, i, j, r in cells}
    assert drawn == {row for row in api_rows(result) if row[1] == 0}
    assert len(result["positives"]) < MAX_TABLE_ROWS
    assert lab.errors == []


def test_learners_box_gives_19_and_anchor_t_control_changes_positives(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    wait_settled(lab)
    assert lab.get_by_test_id("positive-count").inner_text() == "19"  # LEARNERS.md: P3 4, P4 9, P5 6
    lab.get_by_test_id("slider-anchor_t").fill("2")
    wait_settled(lab)
    scene = page_state(lab)
    assert scene["params"] == {"anchor_t": 2}
    result = api_post(lab.base, "/api/v1/explain", scene)
    assert len(result["positives"]) != 19  # r_max of 3.125 against (16, 30) is no longer < 2
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    assert lab.errors == []


def test_hovered_cell_shows_the_filled_formula(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    # centre (100, 203) lies in P3 cell gi = 100 // 8 = 12, gj = 203 // 8 = 25
    lab.mouse.move(*to_screen(lab, 101, 203))
    text = lab.get_by_test_id("cell-info").inner_text()
    assert "gi=12, gj=25" in text
    # anchor 1 of P3 is 16x30 px: r_max = max(50/16, 80/30) = 3.125 < 4
    assert "max(50/16, 16/50, 80/30, 30/80) = 3.125 < anchor_t = 4 ✓" in text


def test_server_error_shows_beside_the_control_and_keeps_the_view(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    number = lab.get_by_test_id("number-anchor_t")
    number.fill("0.5")  # below the minimum 1.0 -> 422 from the server
    number.dispatch_event("change")
    lab.wait_for_function("() => window.__losslab.errors > 0")
    assert "0.5" in lab.get_by_test_id("error-anchor_t").inner_text()
    assert lab.get_by_test_id("positive-count").inner_text() == "19"
    lab.errors.clear()  # the browser logs the 422 response itself


def test_export_then_import_round_trips(lab, tmp_path):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX};3,300,300,380,340&params=%7B%22anchor_t%22%3A3.5%7D")
    wait_settled(lab)
    count = lab.get_by_test_id("positive-count").inner_text()
    with lab.expect_download() as info:
        lab.get_by_test_id("export-json").click()
    path = tmp_path / "trace.json"
    info.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["format"] == "losslab-trace"
    assert exported["scene"]["params"]["anchor_t"] == 3.5
    assert [b["cls"] for b in exported["scene"]["boxes"]] == [0, 3]
    assert len(exported["result"]["positives"]) == int(count)
    open_page(lab, "scheme=yolov5")
    assert lab.get_by_test_id("gt-box").count() == 0
    lab.get_by_test_id("import-json").set_input_files(str(path))
    lab.wait_for_function("() => document.querySelectorAll('[data-testid=gt-box]').length === 2")
    wait_settled(lab)
    assert lab.get_by_test_id("positive-count").inner_text() == count
    assert page_state(lab)["params"] == {"anchor_t": 3.5}
    assert lab.errors == []


def test_copied_url_restores_the_view(lab, browser_context):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    lab.get_by_test_id("slider-anchor_t").fill("3")
    lab.get_by_test_id("level-select").select_option("2")
    lab.get_by_test_id("anchor-select").select_option("0")  # P5 a0 116x90: r_max 116/50 = 2.32 < 3
    lab.get_by_test_id("heat-select").select_option("obj_bce")
    wait_settled(lab)
    url = lab.url
    count = lab.get_by_test_id("positive-count").inner_text()
    other = browser_context.new_page()
    try:
        other.base = lab.base
        other.goto(url)
        other.wait_for_selector("body[data-ready='1']")
        wait_rendered(other)
        assert other.get_by_test_id("positive-count").inner_text() == count
        assert other.get_by_test_id("slider-anchor_t").input_value() == "3"
        assert other.get_by_test_id("level-select").input_value() == "2"
        assert other.get_by_test_id("anchor-select").input_value() == "0"
        assert other.get_by_test_id("heat-select").input_value() == "obj_bce"
        # only P5 anchor 0 cells are drawn, and they are the API's
        cells = other.get_by_test_id("pos-cell").evaluate_all("els => els.map(e => [e.dataset.level, e.dataset.anchor])")
        result = api_post(lab.base, "/api/v1/explain", page_state(other))
        assert len(cells) == sum(1 for p in result["positives"] if (p["level"], p["anchor"]) == (2, 0)) > 0
        assert all(c == ["2", "0"] for c in cells)
    finally:
        other.close()


def test_keyboard_nudges_by_pixel_and_by_cell_and_deletes(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    lab.get_by_test_id("gt-box").first.focus()
    lab.keyboard.press("ArrowRight")
    lab.keyboard.press("Shift+ArrowDown")  # one P3 cell: 8 px
    wait_settled(lab)
    box = page_state(lab)["boxes"][0]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (76, 171, 126, 251)
    lab.keyboard.press("Delete")
    wait_settled(lab)
    assert page_state(lab)["boxes"] == []
    assert lab.get_by_test_id("positive-count").inner_text() == "0"


def test_every_scheme_renders_without_console_or_csp_errors(lab):
    schemes = [s["name"] for s in api_get(lab.base, "/api/v1/schemes")["schemes"]]
    assert "yolov5" in schemes
    for name in schemes:
        open_page(lab, f"scheme={name}&boxes={LEARNERS_BOX};1,400,380,520,600")
        wait_settled(lab)
        scene = page_state(lab)
        assert scene["scheme"] == name
        result = api_post(lab.base, "/api/v1/explain", scene)
        assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"])), name
        assert shown_rows(lab) == api_rows(result), name
        lab.get_by_test_id("stage-next").click()
        assert lab.get_by_test_id("stage-tensor").count() >= 1, name
        assert lab.errors == [], (name, lab.errors)


def test_compare_mode_runs_the_second_setting_on_the_same_boxes(lab):
    sent: list[tuple[dict, dict]] = []  # (query, body) of every explain request
    lab.on("request", lambda req: sent.append((parse_qs(req.url.partition("?")[2]), json.loads(req.post_data)))
           if "/api/v1/explain" in req.url else None)
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&compare=1&cmpScheme=yolov5&cmpParams=%7B%22anchor_t%22%3A2%7D")
    wait_settled(lab)
    lab.wait_for_function("() => document.querySelector('[data-testid=cmp-positive-count]').textContent !== '–'")
    compare = [query for query, body in sent if body.get("params") == {"anchor_t": 2}]
    main = [query for query, body in sent if body.get("params") != {"anchor_t": 2}]
    # the compare column draws no stepper, so it never asks for the stage list; the main view does
    assert compare and all("stages" not in query for query in compare)
    assert main and main[-1].get("stages") == ["1"]
    scene = page_state(lab)
    scene["params"] = {"anchor_t": 2}
    right = api_post(lab.base, "/api/v1/explain", scene)
    assert lab.get_by_test_id("positive-count").inner_text() == "19"
    assert lab.get_by_test_id("cmp-positive-count").inner_text() == str(len(right["positives"]))
    assert lab.errors == []


def test_stale_answers_never_overwrite_newer_ones(lab):
    """The request coalescer: one in flight, latest wins, and an older answer is dropped."""
    open_page(lab, "scheme=yolov5")
    delivered = lab.evaluate("""async () => {
        const { Coalescer } = await import('/static/js/api.js');
        const sent = [], delivered = [];
        const resolvers = [];
        const c = new Coalescer((p) => { sent.push(p); return new Promise(r => resolvers.push(() => r(p))); },
                                { onResult: (r) => delivered.push(r), onError: () => {} });
        c.submit(1); c.submit(2); c.submit(3);   // 1 goes out; 2 is replaced by 3 while 1 is in flight
        resolvers[0](); await new Promise(r => setTimeout(r, 0));
        resolvers[1](); await new Promise(r => setTimeout(r, 0));
        return { sent, delivered };
    }""")
    assert delivered == {"sent": [1, 3], "delivered": [1, 3]}


def test_centre_cell_says_why_each_neighbour_rule_did_or_did_not_fire(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    wait_settled(lab)
    lab.mouse.move(*to_screen(lab, 101, 203))
    line = lab.locator("[data-neighbours='0,1']").inner_text()
    # centre (100, 203) on P3 is (12.5, 25.375) cells: frac x = 0.5 is not < g = 0.5, so left does
    # not fire; frac y = 0.375 < 0.5 and y > 1, so up fires (LEARNERS.md: at y = 204 it would not)
    assert "left: not fired — frac 0.5" in line
    assert "up: fired" in line


def test_zoomed_view_maps_the_pointer_to_the_same_cells(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&zoom=4")
    # 4x around the box centre (100, 203): a 640/4 = 160 px crop from (100 - 80, 203 - 80)
    assert lab.get_by_test_id("scene").get_attribute("viewBox") == "20 123 160 160"
    lab.mouse.move(*to_screen(lab, 101, 203))
    assert "gi=12, gj=25" in lab.get_by_test_id("cell-info").inner_text()
    # drag the box 8 image px right: at 4x that is 8 * 4 * (display px per image px) screen px
    lab.mouse.move(*to_screen(lab, 100, 220))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 108, 220), steps=4)
    lab.mouse.up()
    wait_settled(lab)
    box = page_state(lab)["boxes"][0]
    assert abs(box["x1"] - 83) <= 0.5 and abs(box["y1"] - 163) <= 0.5


def test_stage_with_a_large_tensor_is_filled_from_the_export(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    wait_settled(lab)
    scene = page_state(lab)
    result = api_post(lab.base, "/api/v1/explain?stages=true", scene)  # tensors over 64 elements: data null
    stage, tensor = next((s, t) for s in result["stages"] for t in s["tensors"] if t["data"] is None)
    lab.get_by_test_id("stage-select").select_option(stage["name"])
    shown = lab.locator(f"[data-testid=stage-tensor][data-name='{tensor['name']}'] pre")
    lab.wait_for_function("el => !el.textContent.startsWith('fetching') && el.textContent.length > 0", arg=shown.element_handle())
    export = api_post(lab.base, "/api/v1/export", scene)
    full = next(t for s in export["stages"] if s["name"] == stage["name"] for t in s["tensors"] if t["name"] == tensor["name"])
    first_row = shown.text_content().splitlines()[0].split()
    assert len(first_row) == (full["shape"][-1] if full["shape"] else 1)
    assert [float(v) for v in first_row] == pytest.approx([float(v) for v in full["data"][:len(first_row)]], rel=1e-3)
    assert lab.errors == []


def test_ratio_exactly_anchor_t_is_rejected_and_shown_so(lab):
    open_page(lab, "scheme=yolov5")
    lab.get_by_test_id("preset-select").select_option("ratio")
    wait_settled(lab)
    # the preset: P3 anchor 0 is 10x13 px, the box 40x13 px centred at (164, 164):
    # r_max = max(40/10, 13/13) = 4.0, and 4.0 < anchor_t = 4 is false -> no P3 anchor-0 positive
    box = page_state(lab)["boxes"][0]
    assert (box["x2"] - box["x1"], box["y2"] - box["y1"]) == (40, 13)
    assert lab.locator("[data-testid=counts-table] td[data-level='0'][data-anchor='0']").inner_text() == "0"
    lab.mouse.move(*to_screen(lab, 164.5, 164.5))
    assert "r_max = 4 ≥ anchor_t = 4 ✗ rejected" in lab.locator("[data-anchor-filter='0,0']").inner_text()
    lab.get_by_test_id("slider-anchor_t").fill("4.05")
    wait_settled(lab)
    result = api_post(lab.base, "/api/v1/explain", page_state(lab))
    p3_a0 = sum(1 for p in result["positives"] if (p["level"], p["anchor"]) == (0, 0))
    assert p3_a0 > 0
    assert lab.locator("[data-testid=counts-table] td[data-level='0'][data-anchor='0']").inner_text() == str(p3_a0)


def test_language_toggle_translates_and_is_kept_in_the_link(lab):
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    assert lab.locator("#cell-h").inner_text() == "Cell inspector"
    lab.get_by_test_id("lang-toggle").click()
    assert lab.locator("#cell-h").inner_text() == "网格检查器"
    assert "lang=zh" in lab.evaluate("location.hash")
    lab.reload()
    lab.wait_for_selector("body[data-ready='1']")
    assert lab.locator("#cell-h").inner_text() == "网格检查器"
    assert lab.errors == []


def test_a_moving_slider_sends_light_requests_and_its_release_the_full_one(lab):
    """While a range thumb moves ('input' events) the page asks for the grid only (no stages, the
    drag columns, like a box drag); on release ('change') it asks for everything (stages, every map)
    and the slow views show the full answer."""
    open_page(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    wait_settled(lab)
    sent: list[dict] = []
    lab.on("request", lambda req: sent.append(parse_qs(req.url.partition("?")[2]))
           if "/api/v1/explain" in req.url else None)
    slider = lab.get_by_test_id("slider-anchor_t")
    for value in ("3.5", "3", "2.5", "2"):  # the thumb moving: input events only
        slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", value)
        lab.wait_for_timeout(60)
    wait_rendered(lab)
    assert sent and all("stages" not in q and q.get("stage_data") == ["0"] and "columns" in q for q in sent)
    light = len(sent)
    slider.evaluate("el => el.dispatchEvent(new Event('change', {bubbles: true}))")  # release
    wait_settled(lab)
    assert len(sent) > light and sent[-1].get("stages") == ["1"] and "columns" not in sent[-1]
    assert sent[-1]["maps"] == ["all"]
    result = api_post(lab.base, "/api/v1/explain", page_state(lab))
    assert page_state(lab)["params"] == {"anchor_t": 2}
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    assert lab.errors == []
