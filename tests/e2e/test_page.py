"""The page in a real browser against the real server: what it shows equals what the API says for
the scene the page sends (read from the page's own request body, then posted here independently)."""
from __future__ import annotations

import json
import math
from urllib.parse import parse_qs

import pytest

from e2e_helpers import api_get, api_post, open_page, wait_rendered

pytestmark = pytest.mark.e2e

# LEARNERS.md: a 50x80 box centred at (100, 203) on 640x640 with the default anchors -> 19 positives.
LEARNERS_BOX = "0,75,163,125,243"
FULL = "/api/v1/explain?maps=all&columns=all&checks=1&stages=1&stage_data=64"


def scene_of(lab) -> dict:
    """The request body the page sends for its main view."""
    return lab.evaluate("() => window.__losslab.scene()")


def state_of(lab) -> dict:
    return lab.evaluate("() => window.__losslab.state()")


def shown_rows(lab) -> list[tuple]:
    rows = lab.get_by_test_id("positive-row")
    attrs = rows.evaluate_all("els => els.map(e => [e.dataset.gt, e.dataset.level, e.dataset.anchor, e.dataset.gi, e.dataset.gj, e.dataset.rule])")
    return [(int(g), int(lv), int(a), int(i), int(j), r) for g, lv, a, i, j, r in attrs]


def api_rows(result: dict) -> list[tuple]:
    return [(p["gt"], p["level"], p["anchor"], p["gi"], p["gj"], p["rule"]) for p in result["positives"]][:400]


def grid_cells(lab) -> set[tuple]:
    cells = lab.get_by_test_id("grid-cell").evaluate_all(
        "els => els.map(e => [e.dataset.gt, e.dataset.level, e.dataset.anchor, e.dataset.gi, e.dataset.gj, e.dataset.rule])")
    return {(int(g), int(lv), int(a), int(i), int(j), r) for g, lv, a, i, j, r in cells}


def to_screen(lab, x: float, y: float, testid: str = "scene") -> tuple[float, float]:
    """Image pixels -> screen pixels through the grid's bounding box and its viewBox."""
    svg = lab.get_by_test_id(testid)
    box = svg.bounding_box()
    vx, vy, vw, vh = (float(v) for v in svg.get_attribute("viewBox").split())
    return box["x"] + (x - vx) * box["width"] / vw, box["y"] + (y - vy) * box["height"] / vh


def wait_settled(lab):
    lab.wait_for_timeout(50)
    wait_rendered(lab)
    lab.wait_for_timeout(250)  # the slow views (table, plots, inspector) render after the last result


def open_free(lab, hash_: str):
    """Open the page on a scene in free play (no welcome screen)."""
    open_page(lab, f"welcome=0&{hash_}")
    wait_settled(lab)


# -- the grid equals the API ---------------------------------------------------------------------
def test_draw_then_drag_shows_what_the_api_computes(lab):
    open_free(lab, "scheme=yolov5&view=0,0,640,640")
    assert lab.get_by_test_id("gt-box").count() == 0
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
    scene = scene_of(lab)
    box = scene["boxes"][0]
    for got, want in zip((box["x1"], box["y1"], box["x2"], box["y2"]), (237, 221, 297, 321)):
        assert abs(got - want) <= 1.0  # one screen pixel of rounding
    result = api_post(lab.base, FULL, scene)
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    assert grid_cells(lab) == {row for row in api_rows(result) if row[1] == 0}  # P3 shown, all anchors
    assert lab.errors == []


def test_a_drag_draws_the_cells_of_its_columns_answer(lab):
    """While a box is dragged the page asks for the positives as columns (?layout=columns, a fifth of the
    bytes of a crowded focal scene's rows) and draws exactly the cells the API names for that scene."""
    open_free(lab, "scheme=focal&sel=0&view=0,0,640,640&boxes=0,100,150,260,330;1,230,280,420,400")
    lab.mouse.move(*to_screen(lab, 180, 240))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 204, 262), steps=5)
    lab.wait_for_function("() => window.__losslab.renderedSeq === window.__losslab.submittedSeq")
    assert lab.evaluate("() => window.__losslab.renders.at(-1).kind") == "light"  # still dragging
    assert lab.evaluate("() => performance.getEntriesByType('resource').some(e => e.name.includes('layout=columns'))")
    result = api_post(lab.base, "/api/v1/explain?columns=grid", scene_of(lab))
    want = {(p["gt"], p["level"], p["anchor"], p["gi"], p["gj"], p["rule"]) for p in result["positives"] if p["level"] == 0}
    assert len(want) > 100 and grid_cells(lab) == want
    lab.mouse.up()
    wait_settled(lab)
    assert lab.errors == []


def test_a_dragged_box_is_drawn_above_the_grid_and_returns_to_its_place(lab):
    """During a drag the box follows the pointer in a separate SVG above the grid (so its 60 Hz moves do
    not repaint the thousands of cells); on release it is back among the boxes, in index order, focus kept."""
    open_free(lab, "scheme=focal&sel=1&view=0,0,640,640&boxes=0,100,150,260,330;1,230,280,420,400;2,450,60,600,200")
    order = "() => [...document.querySelectorAll('[data-testid=scene] [data-testid=gt-box]')].map(g => g.dataset.index)"
    assert lab.evaluate(order) == ["0", "1", "2"]
    lab.locator("[data-testid=gt-box][data-index='1']").focus()
    lab.mouse.move(*to_screen(lab, 320, 340))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 300, 320), steps=4)
    lifted = lab.locator("svg.lifted [data-testid=gt-box]")
    assert lifted.count() == 1 and lifted.get_attribute("data-index") == "1"
    x = float(lifted.locator("rect.gt").get_attribute("x"))
    assert abs(x - 210) < 1  # the box follows the pointer (moved 20 px left)
    assert lab.evaluate(order) == ["0", "2"]
    lab.mouse.up()
    wait_settled(lab)
    assert lab.locator("svg.lifted [data-testid=gt-box]").count() == 0
    assert lab.evaluate(order) == ["0", "1", "2"]
    assert lab.evaluate("() => document.activeElement.dataset.index") == "1"
    assert scene_of(lab)["boxes"][1]["x1"] == pytest.approx(210, abs=1)
    assert lab.errors == []


def test_learners_box_gives_19_and_anchor_t_control_changes_positives(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    assert lab.get_by_test_id("positive-count").inner_text() == "19"  # LEARNERS.md: P3 4, P4 9, P5 6
    counts = api_post(lab.base, FULL, scene_of(lab))["counts"]
    assert counts["per_level"] == [4, 9, 6]
    lab.get_by_test_id("number-anchor_t").fill("2")
    lab.get_by_test_id("number-anchor_t").dispatch_event("change")
    wait_settled(lab)
    scene = scene_of(lab)
    assert scene["params"] == {"anchor_t": 2}
    result = api_post(lab.base, FULL, scene)
    assert len(result["positives"]) != 19  # r_max 3.125 against (16, 30) is no longer < 2
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    assert lab.errors == []


def test_every_scheme_renders_without_console_or_csp_errors(lab):
    schemes = [s for s in api_get(lab.base, "/api/v1/schemes")["schemes"] if s["kind"] == "grid"]
    assert {"yolov5", "yolov9", "yolov3", "focal"} <= {s["name"] for s in schemes}
    for spec in schemes:
        open_free(lab, f"scheme={spec['name']}&boxes={LEARNERS_BOX};1,400,380,520,600")
        result = api_post(lab.base, FULL, scene_of(lab))
        assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"])), spec["name"]
        assert shown_rows(lab) == api_rows(result), spec["name"]
        # the rule legend shows exactly the declared glyphs, and every drawn cell carries its rule's glyph
        glyphs = {r["name"]: r["glyph"] for r in spec["rules"]}
        marks = lab.locator("[data-testid=scene] .rulemark").all_text_contents()
        assert set(marks) <= set(glyphs.values()), spec["name"]
        lab.get_by_test_id("stage-next").click()
        assert lab.get_by_test_id("stage-tensor").count() >= 1 or lab.locator("#stage-detail h3").count() == 1
        assert lab.errors == [], (spec["name"], lab.errors)


def test_copied_url_restores_the_view(lab, browser_context):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    lab.get_by_test_id("number-anchor_t").fill("3")
    lab.get_by_test_id("number-anchor_t").dispatch_event("change")
    lab.locator("[data-testid=level-tab][data-level='2']").click()
    lab.locator("[data-testid=anchor-strip][data-anchor='0']").click()  # P5 a0 116x90: r_max 2.32 < 3
    lab.get_by_test_id("heat-select").select_option("obj_bce")
    wait_settled(lab)
    url, count = lab.url, lab.get_by_test_id("positive-count").inner_text()
    other = browser_context.new_page()
    try:
        other.base = lab.base
        other.goto(url)
        other.wait_for_selector("body[data-ready='1']")
        wait_rendered(other)
        assert other.get_by_test_id("positive-count").inner_text() == count
        assert other.get_by_test_id("number-anchor_t").input_value() == "3"
        assert other.get_by_test_id("heat-select").input_value() == "obj_bce"
        result = api_post(lab.base, FULL, scene_of(other))
        cells = grid_cells(other)
        assert cells and all((lv, a) == (2, 0) for _, lv, a, _, _, _ in cells)
        assert cells == {r for r in api_rows(result) if (r[1], r[2]) == (2, 0)}
    finally:
        other.close()


def test_keyboard_nudges_by_pixel_and_by_cell_and_deletes(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    lab.get_by_test_id("gt-box").first.focus()
    lab.keyboard.press("ArrowRight")
    lab.keyboard.press("Shift+ArrowDown")  # one P3 cell: 8 px
    wait_settled(lab)
    box = scene_of(lab)["boxes"][0]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (76, 171, 126, 251)
    lab.keyboard.press("Delete")
    wait_settled(lab)
    assert scene_of(lab)["boxes"] == []
    assert lab.get_by_test_id("positive-count").inner_text() == "0"


def test_numeric_entry_sets_the_selected_box_and_shows_the_servers_numbers(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&sel=0")
    assert lab.get_by_test_id("box-cx").input_value() == "100" and lab.get_by_test_id("box-h").input_value() == "80"
    lab.get_by_test_id("box-cy").fill("204")
    lab.get_by_test_id("box-cy").dispatch_event("change")
    wait_settled(lab)
    assert scene_of(lab)["boxes"][0] == {"cls": 0, "x1": 75, "y1": 164, "x2": 125, "y2": 244}
    assert lab.get_by_test_id("positive-count").inner_text() == "17"  # LEARNERS.md: one pixel lower, 17
    assert lab.get_by_test_id("box-y1").input_value() == "164"


# -- why: the inspector, the checks, linked views ------------------------------------------------
def test_hovering_a_non_positive_neighbour_says_which_test_failed_with_its_numbers(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&sel=0")
    # centre (100, 203) is P3 cell (12, 25) at (12.5, 25.375) cells: frac x = 0.5 is not < g = 0.5,
    # so the left neighbour (11, 25) is not added
    result = api_post(lab.base, FULL, scene_of(lab))
    check = next(c for c in result["checks"] if c["test"] == "neighbour.left" and c["level"] == 0)
    assert (check["gi"], check["gj"], check["passed"]) == (11, 25, False)
    lab.mouse.move(*to_screen(lab, 11 * 8 + 4, 25 * 8 + 4))
    summary = lab.get_by_test_id("inspector-summary").inner_text()
    assert "Not positive" in summary and check["text"] in summary
    assert "0.5 ≥ g = 0.5" in summary
    # the centre cell itself is positive, by the centre rule, with its target and loss
    lab.mouse.move(*to_screen(lab, 101, 203))
    summary = lab.get_by_test_id("inspector-summary").inner_text()
    assert "positive for box #0" in summary and "tobj" in summary and "obj_bce" in summary
    assert lab.errors == []


def test_anchor_strips_show_the_ratio_test_for_the_selected_box(lab):
    open_free(lab, "scheme=yolov5&sel=0")
    lab.get_by_test_id("preset-select").select_option("ratio")
    wait_settled(lab)
    # the preset: P3 anchor 0 is 10x13 px, the box 40x13 px: r_max = 40/10 = 4.0, not < anchor_t = 4
    box = scene_of(lab)["boxes"][0]
    assert (box["x2"] - box["x1"], box["y2"] - box["y1"]) == (40, 13)
    verdict = lab.locator("[data-testid=anchor-strip][data-anchor='0'] [data-testid=anchor-verdict]")
    assert "✗" in verdict.inner_text() and "r 4 ≥ 4" in verdict.inner_text()
    assert lab.locator("[data-testid=counts-table] td[data-level='0'][data-anchor='0']").inner_text() == "0"
    lab.get_by_test_id("number-anchor_t").fill("4.05")
    lab.get_by_test_id("number-anchor_t").dispatch_event("change")
    wait_settled(lab)
    result = api_post(lab.base, FULL, scene_of(lab))
    p3_a0 = result["counts"]["per_level_anchor"][0][0]
    assert p3_a0 > 0 and lab.locator("[data-testid=counts-table] td[data-level='0'][data-anchor='0']").inner_text() == str(p3_a0)
    assert "✓" in verdict.inner_text()


def test_a_table_row_hover_lights_the_cell_the_api_names(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    result = api_post(lab.base, FULL, scene_of(lab))
    row = lab.get_by_test_id("positive-row").nth(1)
    row.hover()
    glow = lab.get_by_test_id("glow-cell")
    api = result["positives"][1]
    assert glow.count() == 1
    assert [glow.get_attribute(f"data-{k}") for k in ("level", "anchor", "gi", "gj")] == \
        [str(api[k]) for k in ("level", "anchor", "gi", "gj")]


def test_a_stepper_stage_lights_the_cells_it_is_about(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    result = api_post(lab.base, FULL, scene_of(lab))
    stage = next(s for s in result["stages"] if s["name"] == "build_targets.P3.rows")
    lab.get_by_test_id("stage-select").select_option(stage["name"])
    glowing = lab.get_by_test_id("glow-cell").evaluate_all(
        "els => els.map(e => [e.dataset.level, e.dataset.anchor, e.dataset.gi, e.dataset.gj].map(Number))")
    named = [[c["level"], c["anchor"], c["gi"], c["gj"]] for c in stage["cells"]]
    assert sorted(glowing) == sorted(named) and len(named) == 4  # the 4 P3 positives
    assert lab.get_by_test_id("stage-cells").locator("li").count() == 4
    lab.get_by_test_id("stage-next").click()
    assert lab.get_by_test_id("stage-select").input_value() != stage["name"]


def test_the_waterfall_factors_multiply_to_the_api_total(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX};3,300,300,380,340")
    result = api_post(lab.base, FULL, scene_of(lab))
    waterfall = lab.get_by_test_id("loss-waterfall")
    assert waterfall.is_visible()
    term_values = [float(v) for v in waterfall.get_by_test_id("term-value").evaluate_all("els => els.map(e => e.dataset.value)")]
    total = float(waterfall.get_by_test_id("waterfall-total").get_attribute("data-value"))
    composition = result["composition"]
    assert total == pytest.approx(result["losses"]["total"], rel=1e-6)
    # each term: (sum of parts × their labelled factors) × gain = its value; then the total
    rebuilt = 0.0
    for term, shown in zip(composition["terms"], term_values):
        parts = sum(p["raw"] * p["factor"] for p in term["parts"])
        assert parts / term["divisor"] * term["gain"] == pytest.approx(shown, rel=1e-5, abs=1e-9)
        rebuilt += shown
    assert rebuilt * composition["multiplier"] == pytest.approx(total, rel=1e-5)
    assert "× 4" in waterfall.inner_text() and "balance[level]" in waterfall.inner_text()  # obj × balance


def test_dfl_bars_of_a_yolov9_positive_equal_the_api(lab):
    open_free(lab, f"scheme=yolov9&boxes={LEARNERS_BOX}&sel=0")
    result = api_post(lab.base, FULL, scene_of(lab))
    row = next(r for r in result["positives"] if r["level"] == 0)
    lab.mouse.move(*to_screen(lab, row["gi"] * 8 + 4, row["gj"] * 8 + 4))
    bars = lab.get_by_test_id("dfl-bars").first
    assert bars.is_visible()
    probs = bars.locator(".bar").evaluate_all("els => els.map(e => Number(e.dataset.prob))")
    assert probs == pytest.approx(row["dfl_probs"], rel=1e-6)
    targets = bars.locator(".bar.target").evaluate_all("els => els.map(e => Number(e.dataset.bin))")
    expected = sorted({16 * k + b for k in range(4) for b in (row["bin_left"][k], row["bin_right"][k])})
    assert sorted(16 * k + b for k, b in zip(
        bars.locator(".dflsvg").evaluate_all("els => els.flatMap((s, k) => [...s.querySelectorAll('.bar.target')].map(() => k))"),
        targets)) == expected
    assert lab.errors == []


def test_the_focal_curve_follows_the_declared_parameters(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    assert "Focal wrapper off" in lab.get_by_test_id("focal-note").inner_text()  # fl_gamma = 0: plain BCE
    open_free(lab, f"scheme=yolov9&boxes={LEARNERS_BOX}&params=%7B%22alpha%22%3A4%7D")  # TAL alpha, not focal
    assert lab.get_by_test_id("status").inner_text() == ""
    assert "Focal wrapper off" in lab.get_by_test_id("focal-note").inner_text()
    open_free(lab, f"scheme=focal&boxes={LEARNERS_BOX}")
    note = lab.get_by_test_id("focal-note").inner_text()
    assert "γ = 2" in note and "α = 0.25" in note
    assert lab.errors == []


# -- errors and state -----------------------------------------------------------------------------
def test_a_failed_request_keeps_the_last_good_view_and_says_what_is_wrong_beside_the_control(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    total = lab.get_by_test_id("loss-total").inner_text()
    number = lab.get_by_test_id("number-anchor_t")
    number.fill("0.5")  # below the minimum 1.0 -> 422
    number.dispatch_event("change")
    lab.wait_for_function("() => window.__losslab.errors.length > 0")
    message = lab.get_by_test_id("error-anchor_t").inner_text()
    assert "0.5" in message and "minimum" in message and "params.anchor_t: params.anchor_t" not in message
    assert lab.get_by_test_id("positive-count").inner_text() == "19"
    assert lab.get_by_test_id("loss-total").inner_text() == total
    assert lab.get_by_test_id("stale").is_visible()
    # one total on the page: the summary's (the waterfall shows the same last good result)
    assert float(lab.get_by_test_id("waterfall-total").get_attribute("data-value")) == pytest.approx(float(total), rel=1e-3)
    lab.get_by_test_id("input-nc").fill("2000")
    lab.get_by_test_id("input-nc").dispatch_event("change")
    lab.wait_for_function("() => window.__losslab.errors.length > 1")
    assert lab.get_by_test_id("input-nc").input_value() == "2000"  # the field shows what was sent
    assert "nc" in lab.get_by_test_id("error-scene").inner_text()
    lab.errors.clear()  # the browser logs the 422 responses itself


def test_imports_say_what_happened(lab, tmp_path):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX};3,300,300,380,340&params=%7B%22anchor_t%22%3A3.5%7D")
    count = lab.get_by_test_id("positive-count").inner_text()
    with lab.expect_download() as info:
        lab.get_by_test_id("export-json").click()
    good = tmp_path / "trace.json"
    info.value.save_as(good)
    exported = json.loads(good.read_text())
    assert exported["format"] == "losslab-trace" and exported["scene"]["params"]["anchor_t"] == 3.5
    assert len(exported["result"]["positives"]) == int(count)
    (tmp_path / "hello.json").write_text('{"hello": 1}')
    (tmp_path / "inverted.json").write_text(json.dumps({"scheme": "yolov5", "image": {"width": 640, "height": 640},
                                                        "nc": 80, "boxes": [{"cls": 0, "x1": 50, "y1": 10, "x2": 20, "y2": 40}]}))
    open_free(lab, "scheme=yolov5")
    for name, fragment in (("hello.json", "no \"scheme\""), ("inverted.json", "boxes[0].x2")):
        lab.get_by_test_id("import-json").set_input_files(str(tmp_path / name))
        lab.wait_for_function("name => document.querySelector('[data-testid=status]').textContent.includes(name)", arg=name)
        status = lab.get_by_test_id("status").inner_text()
        assert name in status and fragment in status, status
        assert lab.get_by_test_id("gt-box").count() == 0  # nothing of it was drawn
    lab.get_by_test_id("import-json").set_input_files(str(good))
    lab.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.startsWith('Imported')")
    wait_settled(lab)
    assert lab.get_by_test_id("gt-box").count() == 2
    assert lab.get_by_test_id("positive-count").inner_text() == count
    assert scene_of(lab)["params"] == {"anchor_t": 3.5}
    lab.errors.clear()  # the refused probe requests are logged by the browser


def test_stale_answers_never_overwrite_newer_ones(lab):
    open_free(lab, "scheme=yolov5")
    delivered = lab.evaluate("""async () => {
        const { Coalescer } = await import('/static/js/api.js');
        const sent = [], delivered = [];
        const resolvers = [];
        const c = new Coalescer((p) => { sent.push(p); return new Promise(r => resolvers.push(() => r(p))); },
                                { onResult: (r) => delivered.push([r, sent.length]), onError: () => {} });
        c.submit(1); c.submit(2); c.submit(3);   // 1 goes out; 2 is replaced by 3 while 1 is in flight
        resolvers[0](); await new Promise(r => setTimeout(r, 0));
        resolvers[1](); await new Promise(r => setTimeout(r, 0));
        return { sent, delivered };
    }""")
    # answers in order, the stale 2 never sent; 3 left before 1's answer was drawn (server and page overlap)
    assert delivered == {"sent": [1, 3], "delivered": [[1, 2], [3, 2]]}


def test_zoom_and_pan_keep_the_pointer_on_the_same_cells(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&view=20,123,160,160")
    assert lab.get_by_test_id("scene").get_attribute("viewBox") == "20 123 160 160"
    lab.mouse.move(*to_screen(lab, 101, 203))
    assert "cell (12, 25)" in lab.get_by_test_id("cell-info").inner_text()
    lab.mouse.move(*to_screen(lab, 100, 220))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, 108, 220), steps=4)
    lab.mouse.up()
    wait_settled(lab)
    box = scene_of(lab)["boxes"][0]
    assert abs(box["x1"] - 83) <= 0.5 and abs(box["y1"] - 163) <= 0.5
    lab.get_by_test_id("zoom-fit").click()
    assert lab.get_by_test_id("scene").get_attribute("viewBox") == "0 0 640 640"
    # a corner of the image is reachable: zoom in around (630, 630)
    lab.mouse.move(*to_screen(lab, 630, 630))
    for _ in range(4):
        lab.mouse.wheel(0, -100)
    x0, y0, w, h = (float(v) for v in lab.get_by_test_id("scene").get_attribute("viewBox").split())
    assert w < 320 and x0 < 630 < x0 + w <= 640 and y0 < 630 < y0 + h <= 640  # the corner, magnified


def test_language_switch_translates_and_is_kept_in_the_link(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    heading = lab.locator("[data-i18n='insp.title']")
    assert heading.inner_text() == "Cell inspector"
    lab.get_by_test_id("lang-switch").click()
    assert heading.inner_text() == "网格检查器"  # the page's own words change on the click
    assert "lang=zh" in lab.evaluate("location.hash")  # and so does the link, not on a timer
    wait_settled(lab)
    lab.reload()
    lab.wait_for_selector("body[data-ready='1']")
    assert heading.inner_text() == "网格检查器"
    assert lab.errors == []


def test_a_moving_slider_sends_light_requests_and_its_release_the_full_one(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    sent: list[dict] = []
    lab.on("request", lambda req: sent.append(parse_qs(req.url.partition("?")[2]))
           if "/api/v1/explain" in req.url else None)
    slider = lab.get_by_test_id("slider-anchor_t")
    for value in ("3.5", "3", "2.5", "2"):  # the thumb moving: input events only
        slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", value)
        lab.wait_for_timeout(60)
    wait_rendered(lab)
    assert sent and all("stages" not in q and q.get("columns") == ["grid"] for q in sent)
    light = len(sent)
    slider.evaluate("el => el.dispatchEvent(new Event('change', {bubbles: true}))")  # release
    wait_settled(lab)
    assert len(sent) > light and sent[-1].get("stages") == ["1"] and sent[-1]["columns"] == ["all"]
    assert sent[-1]["maps"] == ["all"] and sent[-1]["checks"] == ["box:0"]  # the selected box's tests
    result = api_post(lab.base, FULL, scene_of(lab))
    assert scene_of(lab)["params"] == {"anchor_t": 2}
    assert lab.get_by_test_id("positive-count").inner_text() == str(len(result["positives"]))
    assert shown_rows(lab) == api_rows(result)
    assert lab.errors == []


def test_compare_mode_runs_the_second_setting_on_the_same_boxes(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&compare=1&cmpParams=%7B%22anchor_t%22%3A2%7D")
    lab.wait_for_function("() => document.querySelector('[data-testid=cmp-positive-count]').textContent !== '–'")
    scene = scene_of(lab)
    scene["params"] = {"anchor_t": 2}
    right = api_post(lab.base, FULL, scene)
    assert lab.get_by_test_id("positive-count").inner_text() == "19"
    assert lab.get_by_test_id("cmp-positive-count").inner_text() == str(len(right["positives"]))
    assert lab.errors == []


def test_the_page_has_no_number_that_is_not_the_servers(lab):
    """Spot check of the rule static/js follows: the counts table is the server's counts."""
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX};1,400,380,520,600")
    counts = api_post(lab.base, FULL, scene_of(lab))["counts"]
    for L, row in enumerate(counts["per_level_anchor"]):
        for a, n in enumerate(row):
            assert lab.locator(f"[data-testid=counts-table] td[data-level='{L}'][data-anchor='{a}']").inner_text() == str(n)
    assert not math.isnan(float(lab.get_by_test_id("loss-total").inner_text()))


# -- precise set-up -------------------------------------------------------------------------------
def test_the_single_level_example_of_learners_md_with_custom_anchors(lab):
    # LEARNERS.md: one level of stride 8, anchors (15,5), (24,16), (16,24); target (cx, cy, w, h) =
    # (26, 37, 36, 24) -> 6 positives, anchors 1 and 2 at cells (3,4), (2,4), (3,5); anchor 0 rejected at 4.8
    open_free(lab, "scheme=yolov5&width=64&height=64&boxes=0,8,25,44,49&sel=0")
    lab.get_by_test_id("levels-box").locator("summary").click()
    lab.get_by_test_id("levels-text").fill("8: 15x5 24x16 16x24")
    lab.get_by_test_id("levels-apply").click()
    wait_settled(lab)
    assert scene_of(lab)["levels"] == [{"stride": 8, "anchors": [[15, 5], [24, 16], [16, 24]]}]
    assert lab.get_by_test_id("positive-count").inner_text() == "6"
    assert {(a, i, j) for _, _, a, i, j, _ in grid_cells(lab)} == {(a, i, j) for a in (1, 2) for i, j in ((3, 4), (2, 4), (3, 5))}
    verdict = lab.locator("[data-testid=anchor-strip][data-anchor='0'] [data-testid=anchor-verdict]")
    assert "r 4.8 ≥ 4 ✗" in verdict.inner_text()
    lab.get_by_test_id("levels-text").fill("8: 15x5 24x16\n4: 1x1 2x2")  # strides must increase
    lab.get_by_test_id("levels-apply").click()
    lab.wait_for_function("() => window.__losslab.errors.length > 0")
    assert "levels[1].stride" in lab.get_by_test_id("error-levels").inner_text()
    assert lab.get_by_test_id("positive-count").inner_text() == "6"  # the last good view stays
    lab.errors.clear()


def test_a_pinned_prediction_gives_the_ciou_bbox_iou_computes(lab):
    import torch

    from losscore.boxes import bbox_iou

    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}&sel=0")
    # keep the centre cell (12, 25) of P3 and drag its first predicted box by (+6, -4) px
    lab.mouse.click(*to_screen(lab, 101, 203))
    pred = lab.get_by_test_id("pred-box").last  # drawn last: on top where the boxes overlap
    slot = {k: int(pred.get_attribute(f"data-{k}")) for k in ("level", "anchor", "gi", "gj")}
    x, y = (float(pred.get_attribute(k)) for k in ("x", "y"))
    w, h = (float(pred.get_attribute(k)) for k in ("width", "height"))
    lab.mouse.move(*to_screen(lab, x + w / 2, y + h / 2))
    lab.mouse.down()
    lab.mouse.move(*to_screen(lab, x + w / 2 + 6, y + h / 2 - 4), steps=5)
    lab.mouse.up()
    wait_settled(lab)
    scene = scene_of(lab)
    pin = scene["predictions"]["pins"][0]
    assert {k: pin[k] for k in slot} == slot
    result = api_post(lab.base, FULL, scene)
    row = next(r for r in result["positives"] if all(r[k] == slot[k] for k in slot))
    # the row's predicted and target boxes (xyxy px) through losscore.boxes.bbox_iou: the same CIoU
    pred_box = torch.tensor([row["pred_box_px"]]) / 8  # grid units, as the loss computes it
    target = torch.tensor([row["target_box_px"]]) / 8
    ciou = bbox_iou(pred_box, target, xywh=False, CIoU=True).item()
    assert row["ciou"] == pytest.approx(ciou, abs=2e-4)
    assert pin["cx"] == pytest.approx((row["pred_box_px"][0] + row["pred_box_px"][2]) / 2, abs=0.05)
    lab.mouse.move(*to_screen(lab, 101, 203))
    assert f"{row['ciou']:.4g}"[:5] in lab.get_by_test_id("cell-info").text_content()  # in its IoU group


def test_what_changed_is_the_servers_sentence_and_an_inert_slider_says_so(lab):
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX}")
    number = lab.get_by_test_id("number-anchor_t")
    number.fill("3")
    number.dispatch_event("change")
    wait_settled(lab)
    changed = lab.get_by_test_id("what-changed")
    lab.wait_for_function("() => document.querySelector('[data-testid=what-changed]').textContent.includes('anchor_t')")
    before = {**scene_of(lab), "params": {}}
    expected = api_post(lab.base, "/api/v1/compare", {"before": before, "after": scene_of(lab)})
    assert changed.inner_text().splitlines()[0] == expected["sentences"][0] == "anchor_t 4 → 3: 7 fewer positives (19 → 12)"
    assert changed.get_attribute("data-removed") == str(len(expected["removed"]))
    lab.get_by_test_id("slider-sort_obj_iou").check()
    lab.wait_for_function("() => document.querySelector('[data-testid=what-changed]').textContent.includes('sort_obj_iou')")
    assert "Nothing changed" in changed.inner_text() and "fight" in changed.inner_text()
    assert lab.errors == []


def test_the_inspector_asks_for_the_tests_of_a_box_that_is_not_selected(lab):
    # box 1 (cls 1) is the learners' box moved to (300, 203): its left neighbour (36, 25) on P3 is
    # refused for the same reason (frac x = 0.5); box 0 is selected, so box 1's tests are fetched on hover
    open_free(lab, f"scheme=yolov5&boxes={LEARNERS_BOX};1,275,163,325,243&sel=0")
    scene = scene_of(lab)
    result = api_post(lab.base, "/api/v1/explain?checks=box:1", scene)
    check = next(c for c in result["checks"] if c["test"] == "neighbour.left" and c["level"] == 0)
    assert (check["gt"], check["gi"], check["gj"]) == (1, 36, 25)
    lab.get_by_test_id("zoom-fit").click()
    lab.mouse.move(*to_screen(lab, 36 * 8 + 4, 25 * 8 + 4))
    lab.wait_for_function("text => document.querySelector('[data-testid=inspector-summary]')?.textContent.includes(text)",
                          arg=check["text"])
    assert lab.errors == []


def test_a_redraw_keeps_the_cells_that_did_not_change(lab):
    """Positive cells are keyed by what they show: redrawing the same answer creates no node (a drag
    that moves one box of many touches only that box's cells)."""
    open_free(lab, "scheme=focal&sel=0&boxes=0,100,150,260,330;1,230,280,420,400;2,410,100,430,122")
    cells = lab.locator("[data-testid=scene] [data-testid=grid-cell]")
    before = cells.count()
    assert before > 100
    lab.evaluate("() => document.querySelectorAll('[data-testid=scene] [data-testid=grid-cell]').forEach(n => { n.__kept = true; })")
    lab.evaluate("() => window.__losslab.redraw()")
    kept = "() => [...document.querySelectorAll('[data-testid=scene] [data-testid=grid-cell]')].filter(n => n.__kept).length"
    assert cells.count() == before and lab.evaluate(kept) == before
    mine = lab.locator("[data-testid=scene] [data-testid=grid-cell].mine").count()
    assert 0 < mine < before
    assert lab.errors == []
