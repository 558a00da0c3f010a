"""``/api/v1``: the page's content that is not a computation: preset scenes (lessons follow).

Every number here comes from ``losscore`` (``losscore.presets`` computes preset geometry from the
scheme's declared strides and anchors); the page only draws it.
"""
from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from losscore import registry
from losscore.diff import changed_cells, diff_results, reveal
from losscore.lessons import lesson, lessons
from losscore.presets import PRESETS, preset_scene
from losscore.text import T, render

from .. import serialize
from ..dependencies import LimiterDep
from ..errors import SceneError, scene_error
from ..schemas import ErrorOut, SceneIn, ValidationErrorOut

router = APIRouter(prefix="/api/v1", tags=["content"])

ERRORS = {422: {"model": ValidationErrorOut, "description": "unknown scheme or preset; loc names the field"},
          400: {"model": ErrorOut}}


class PresetBoxOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


class PresetOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    title: str
    doc: str
    boxes: list[PresetBoxOut]
    params: dict[str, Any]


class PresetsOut(BaseModel):
    presets: list[PresetOut] = Field(description="every preset laid out for this scheme and image")


@router.get("/presets", response_model=PresetsOut, responses=ERRORS,
            summary="Preset scenes for a scheme and image size (boxes computed from the scheme's strides and anchors)")
async def presets(
    scheme: Annotated[str, Query(min_length=1, max_length=64)],
    width: Annotated[int, Query(ge=32, le=2048)] = 640,
    height: Annotated[int, Query(ge=32, le=2048)] = 640,
    nc: Annotated[int, Query(ge=1, le=1000)] = 80,
    lang: Annotated[str, Query(pattern="^(en|zh)$", description="language of titles and docs")] = "en",
) -> Response:
    try:
        spec = registry.get_scheme(scheme)
    except ValueError as exc:
        error = scene_error(exc, "query")
        raise SceneError(error.message, error.loc) from exc
    out = []
    for preset in PRESETS:
        boxes, params = preset_scene(spec, preset.name, width, height, nc)
        out.append({**preset.to_dict(lang), "params": params,
                    "boxes": [{"cls": b.cls, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in boxes]})
    return Response(serialize.dumps({"presets": out}), media_type="application/json")


class CompareIn(BaseModel):
    """Two scenes of the same image: before and after a change (or the main and the compare column)."""

    model_config = ConfigDict(extra="forbid")
    before: SceneIn
    after: SceneIn


class CompareOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    sentences: list[str]
    added: list[dict[str, int]]
    removed: list[dict[str, int]]
    nothing: bool


@router.post("/compare", response_model=CompareOut, responses={**ERRORS, 413: {"model": ErrorOut}},
             summary="What changed between two scenes: positives added and removed, tests that flipped, totals")
async def compare(body: CompareIn, limiter: LimiterDep,
                  lang: Annotated[str, Query(pattern="^(en|zh)$")] = "en") -> Response:
    def run(which: str, scene: SceneIn):
        try:
            return serialize.run(scene.to_scene(), record=False)
        except SceneError as exc:  # name the scene the field belongs to
            raise SceneError(exc.message, [exc.loc[0], which, *exc.loc[1:]]) from exc

    def work() -> bytes:
        before, after = run("before", body.before), run("after", body.after)
        change = diff_results(before.scene, before.result, after.scene, after.result)
        return serialize.dumps({"sentences": [render(s, lang) for s in change.sentences], **changed_cells(change),
                                "nothing": change.nothing})
    return Response(await anyio.to_thread.run_sync(work, limiter=limiter), media_type="application/json")


class RevealIn(BaseModel):
    """A learner's prediction: the cells of one level they expect to become positive."""

    model_config = ConfigDict(extra="forbid")
    scene: SceneIn
    level: int = Field(ge=0, le=16)
    anchor: int = Field(-1, ge=-1, le=64, description="only this anchor's positives (-1: any anchor)")
    guess: list[tuple[int, int]] = Field(default_factory=list, max_length=4096, description="[[gi, gj], ...]")


class RevealOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    hits: list[list[int]]
    misses: list[list[int]]
    extras: list[list[int]]
    reasons: list[dict[str, Any]]


@router.post("/reveal", response_model=RevealOut, responses={**ERRORS, 413: {"model": ErrorOut}},
             summary="A predicted set of positive cells against the code's: hits, misses, extras, each with why")
async def reveal_guess(body: RevealIn, limiter: LimiterDep,
                       lang: Annotated[str, Query(pattern="^(en|zh)$")] = "en") -> Response:
    known = registry.all_schemes()
    if body.scene.scheme in known and known[body.scene.scheme].kind != "grid":
        raise SceneError(T("scheme {scheme} matches queries to boxes; it has no grid cells to guess",
                           scheme=repr(body.scene.scheme)),
                         ["body", "scene", "scheme"])

    def work() -> bytes:
        run = serialize.run(body.scene.to_scene(), record=False)
        if body.level >= len(run.result.levels):
            raise SceneError(T("{level} is not a level of this scene (it has {n})", level=body.level,
                               n=len(run.result.levels)),
                             ["body", "level"])
        spec = registry.get_scheme(run.scene.scheme)
        docs = {r.name: render(r.doc, lang) for r in spec.rules}
        out = reveal(run.result, body.level, [tuple(c) for c in body.guess], docs, body.anchor)
        return serialize.dumps({
            "hits": [list(c) for c in out.hits], "misses": [list(c) for c in out.misses],
            "extras": [list(c) for c in out.extras],
            "reasons": [{"gi": c[0], "gj": c[1], "kind": "miss" if c in out.misses else "extra",
                         "text": render(t, lang)} for c, t in out.reasons.items()],
        })
    return Response(await anyio.to_thread.run_sync(work, limiter=limiter), media_type="application/json")


@router.get("/lessons", summary="The lessons: the questions learners ask, in the requested language")
async def lesson_list(lang: Annotated[str, Query(pattern="^(en|zh)$")] = "en") -> Response:
    return Response(serialize.dumps({"lessons": lessons(lang)}), media_type="application/json")


@router.get("/lessons/{lesson_id}", responses=ERRORS, summary="One lesson: its steps, texts in the requested language")
async def lesson_detail(lesson_id: Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9-]+$")],
                        lang: Annotated[str, Query(pattern="^(en|zh)$")] = "en") -> Response:
    try:
        return Response(serialize.dumps(lesson(lesson_id, lang)), media_type="application/json")
    except ValueError as exc:
        raise SceneError(str(exc).partition(": ")[2], ["path", "lesson_id"]) from exc
