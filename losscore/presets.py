"""Preset scenes: box layouts that make one learner's question visible, computed here from the
scheme's declared strides and anchors (the page never computes geometry).

:func:`preset_scene` returns the boxes (and parameters, when a preset needs one) for a scheme and
image size; :data:`PRESETS` lists the names with a one-line title each (``Preset.to_dict(lang)`` gives
them in English or 中文).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from .scene import Box, SchemeSpec
from .text import render

__all__ = ["PRESETS", "Preset", "preset_scene", "centred"]


def centred(cls: int, cx: float, cy: float, w: float, h: float) -> Box:
    """A box of size ``w × h`` px centred at ``(cx, cy)``."""
    return Box(cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str  # a template of losscore/catalogue (rendered in the reader's language by to_dict)
    doc: str
    build: Callable[[SchemeSpec, int, int, int, dict[str, Any]], tuple[list[Box], dict[str, Any]]]

    def to_dict(self, lang: str = "en") -> dict[str, str]:
        """``name``, and ``title`` and ``doc`` in ``lang``."""
        return {"name": self.name, "title": render(self.title, lang), "doc": render(self.doc, lang)}


def _first_anchor(spec: SchemeSpec) -> tuple[float, float]:
    if spec.anchors_px:
        return spec.anchors_px[0][0]
    return float(spec.strides[0]), float(spec.strides[0])


def _half(spec, width, height, nc, params):
    s = spec.strides[0]  # centre at 12.5 cells of the first level: the fraction is exactly 0.5
    return [centred(0, 12.5 * s, 12.5 * s, 50, 80)], {}


def _border(spec, width, height, nc, params):
    return [centred(0, 0, round(height * 0.32), 60, 80)], {}


def _ratio(spec, width, height, nc, params):
    aw, ah = _first_anchor(spec)
    limit = params.get("anchor_t")
    if limit is None:
        limit = next((p.default for p in spec.params if p.name == "anchor_t"), 4.0)
    s = spec.strides[0]  # w / aw = anchor_t exactly and h = ah: r_max = anchor_t, rejected by the strict <
    return [centred(0, 20.5 * s, 20.5 * s, aw * float(limit), ah)], {}


def _tiny(spec, width, height, nc, params):
    return [centred(0, width / 2 + 2, height / 2 - 2, 4, 4)], {}


def _fight(spec, width, height, nc, params):
    s = spec.strides[0]
    return [centred(0, 30.25 * s, 30.25 * s, 60, 60), centred(min(1, nc - 1), 30.75 * s, 30.25 * s, 40, 90)], {}


def _crowded(spec, width, height, nc, params):
    rng = random.Random(12345)  # the same scene everywhere
    boxes = []
    for i in range(20):
        w, h = round(16 + rng.random() * 0.25 * width), round(16 + rng.random() * 0.25 * height)
        cx, cy = round(w / 2 + rng.random() * (width - w)), round(h / 2 + rng.random() * (height - h))
        boxes.append(centred(i % min(nc, 8), cx, cy, w, h))
    return boxes, {}


def _learners(cy: float):
    def build(spec, width, height, nc, params):
        return [centred(0, 100, cy, 50, 80)], {}
    return build


PRESETS: tuple[Preset, ...] = (
    Preset("learners19", "50×80 box at (100, 203)", "LEARNERS.md: 19 positives for YOLOv5 (P3 4, P4 9, P5 6)",
           _learners(203)),
    Preset("learners17", "The same box at (100, 204)", "one pixel lower: 17 positives (a neighbour rule stops firing)",
           _learners(204)),
    Preset("half", "Centre exactly at a cell half", "the centre's fraction is exactly 0.5 on the first level: "
           "neither neighbour rule fires (strict < g)", _half),
    Preset("border", "Centre on the image border", "a neighbour rule needs the centre more than one cell from "
           "the border", _border),
    Preset("ratio", "w/h ratio exactly anchor_t", "r_max equals anchor_t for the first anchor: rejected, the "
           "test is a strict <", _ratio),
    Preset("tiny", "A tiny box", "a 4×4 px box: how many cells and anchors can it train?", _tiny),
    Preset("fight", "Two boxes fighting for one cell", "two overlapping boxes whose centres share a cell", _fight),
    Preset("crowded", "Crowded scene (20 boxes)", "twenty boxes of mixed sizes, the same every time", _crowded),
)


def preset_scene(spec: SchemeSpec, name: str, width: int, height: int, nc: int,
                 params: dict[str, Any] | None = None) -> tuple[list[Box], dict[str, Any]]:
    """The boxes (and parameters) of preset ``name`` for ``spec`` on a ``width × height`` image."""
    for preset in PRESETS:
        if preset.name == name:
            return preset.build(spec, width, height, nc, dict(params or {}))
    raise ValueError(f"preset: unknown preset {name!r}; known: {[p.name for p in PRESETS]}")
