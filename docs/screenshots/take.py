"""Take the screenshots in docs/screenshots/: every scheme's default view with its inspector and box
panel, and the first step of every lesson in English and 中文.

    .venv/bin/python docs/screenshots/take.py            # all of them
    .venv/bin/python docs/screenshots/take.py yolox tal  # only these schemes / lessons

Needs Debian's chromium (/usr/bin/chromium) and Playwright, like the browser tests; starts its own
server. Four boxes of mixed sizes, progress 0.7, box 0 selected, one positive cell hovered.
"""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from e2e_helpers import launch_chromium, start_server  # noqa: E402

OUT = Path(__file__).resolve().parent
BOXES = "0,100,150,260,330;1,230,280,420,400;2,410,100,430,122;3,412,102,428,124"
VIEWPORT = {"width": 1500, "height": 1100}


def shrink(paths) -> None:
    """256-colour PNGs, a third of the size (text and glyphs stay sharp: no dithering); skipped without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return
    for path in paths:
        with Image.open(path) as image:
            if image.mode == "P":
                continue
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path) as response:
        return json.loads(response.read())


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def settle(page) -> None:
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("() => window.__losslab.renderedSeq === window.__losslab.submittedSeq "
                           "&& window.__losslab.renderedSeq > 0")
    page.wait_for_timeout(900)


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    svg = page.get_by_test_id("scene")
    box = svg.bounding_box()
    vx, vy, vw, vh = (float(v) for v in svg.get_attribute("viewBox").split())
    return box["x"] + (x - vx) * box["width"] / vw, box["y"] + (y - vy) * box["height"] / vh


def scheme_shot(page, base: str, spec: dict) -> Path:
    page.goto(f"{base}/#welcome=0&scheme={spec['name']}&sel=0&progress=0.7&boxes={BOXES}")
    settle(page)
    scene = page.evaluate("() => window.__losslab.scene()")
    if spec["kind"] != "queries":  # DETR: the queries, the cost matrix and box 0's cheapest queries
        result = post(base, "/api/v1/explain?columns=grid", scene)
        level = page.evaluate("() => window.__losslab.state().level")
        stride = result["levels"][level]["stride"]
        row = next((r for r in result["positives"] if r["level"] == level and r["gt"] == 0), None)
        if row:
            page.mouse.move(*to_screen(page, (row["gi"] + 0.5) * stride, (row["gj"] + 0.5) * stride))
    page.wait_for_timeout(700)
    path = OUT / f"scheme-{spec['name']}.png"
    page.screenshot(path=str(path))
    return path


def lesson_shot(page, base: str, lesson: dict, lang: str) -> Path:
    page.goto(f"{base}/#lang={lang}&welcome=1")
    settle(page)
    page.locator(f"[data-testid=lesson-link][data-lesson='{lesson['id']}']").click()
    page.wait_for_timeout(300)
    settle(page)
    path = OUT / f"lesson-{lesson['order']:02d}-{lesson['id']}-{lang}.png"
    page.screenshot(path=str(path))
    return path


def main(only: list[str]) -> None:
    base, server = start_server()
    try:
        schemes = get(base, "/api/v1/schemes")["schemes"]
        lessons = get(base, "/api/v1/lessons")["lessons"]
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            errors: list[str] = []

            def fresh():  # a new page per picture: no "what changed" carried over from the last one
                page = browser.new_page(viewport=VIEWPORT)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                return page

            for spec in schemes:
                if not only or spec["name"] in only:
                    print(scheme_shot(fresh(), base, spec).relative_to(ROOT))
            for lesson in lessons:
                if not only or lesson["id"] in only:
                    for lang in ("en", "zh"):
                        print(lesson_shot(fresh(), base, lesson, lang).relative_to(ROOT))
            page = fresh()
            page.goto(f"{base}/#welcome=1")
            settle(page)
            if not only:
                page.screenshot(path=str(OUT / "welcome-en.png"))
                page.goto(f"{base}/#welcome=1&lang=zh")
                settle(page)
                page.screenshot(path=str(OUT / "welcome-zh.png"))
            browser.close()
            shrink(OUT.glob("*.png"))
            if errors:
                raise SystemExit(f"page errors: {errors}")
    finally:
        server.terminate()


if __name__ == "__main__":
    main(sys.argv[1:])
