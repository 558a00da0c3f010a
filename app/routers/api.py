"""``/api/v1``: the schemes, a scene explained, a scene exported (docs/api-contract.md)."""
from __future__ import annotations

import weakref
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from losscore import registry, wire
from losscore.export import check_filter
from losscore.mmdet import focal_curve as mmdet_focal_curve
from losscore.text import T
from losscore.scene import (BOX_MARGIN_FRAC, MAX_BOXES, MAX_HEAD_ELEMENTS, MAX_IMAGE_SIDE, MAX_NC, MAX_PINS,
                            SchemeSpec)

from .. import serialize
from ..compute import Lanes
from ..dependencies import LanesDep, SettingsDep
from ..errors import SceneError, scene_error
from ..schemas import ErrorOut, ExplainOut, ExportOut, FocalCurveOut, SceneIn, SchemesOut, ValidationErrorOut

router = APIRouter(prefix="/api/v1", tags=["api"])

ERRORS = {
    400: {"model": ErrorOut, "description": "the body could not be read (e.g. not UTF-8)"},
    413: {"model": ErrorOut, "description": "request body larger than 1 MiB, or a response larger than the "
                                            "server's LOSSLAB_MAX_RESPONSE_BYTES (the detail names the limit)"},
    415: {"model": ErrorOut, "description": "the body is not sent as application/json"},
    503: {"model": ErrorOut, "description": "every stream slot of this worker is busy with a large response; retry"},
    422: {"model": ValidationErrorOut, "description": "the scene or a query option is invalid; loc names the field"},
}
EXPORT_FILENAME = "losslab-trace.json"
# The scene a new page starts from: the request model's own defaults (the page keeps no copy of its own).
SCENE_DEFAULTS = SceneIn(scheme="_").model_dump(include={"image", "nc", "predictions", "device"})


def _spec(scheme: str) -> SchemeSpec:
    try:
        return registry.get_scheme(scheme)
    except ValueError as exc:
        raise scene_error(exc) from exc


def parse_maps(spec: SchemeSpec, maps: str | None) -> list[str] | None:
    """``None`` -> the scheme's first map; ``"all"`` -> every map (None); else the named maps."""
    if maps is None or maps.strip() == "":
        return [spec.maps[0].name] if spec.maps else None
    if maps.strip() == "all":
        return None
    if maps.strip() == "none":
        return []
    names = [name.strip() for name in maps.split(",") if name.strip()]
    known = [m.name for m in spec.maps] + [m.name for m in spec.target.maps]  # box.*: the selected box's (?target=)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SceneError(T("unknown map(s) {unknown} for scheme {scheme}; known: {known} or 'all'", unknown=unknown[:5],
                           scheme=repr(spec.name), known=known),
                         ["query", "maps"])
    return names


def parse_columns(spec: SchemeSpec, columns: str | None) -> list[str]:
    """``None`` -> the scheme's default columns; ``all`` / ``grid`` -> those sets; else the named
    columns, each declared by the scheme."""
    if columns is None or columns.strip() in ("", "default"):
        return list(spec.column_set("default"))
    if columns.strip() in ("all", "grid"):
        return list(spec.column_set(columns.strip()))
    names = [name.strip() for name in columns.split(",") if name.strip()]
    known = [c.name for c in spec.columns]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SceneError(T("unknown column(s) {unknown} for scheme {scheme}; known: {known}", unknown=unknown[:5],
                           scheme=repr(spec.name), known=known),
                         ["query", "columns"])
    return names


@router.get("/schemes", response_model=SchemesOut, summary="Every scheme, its parameters and maps")
async def schemes(lang: Annotated[str, Query(pattern="^(en|zh)$", description="language of every text")] = "en"
                  ) -> Response:
    content = {
        "schemes": [spec.to_dict(lang) for spec in registry.all_schemes().values()],
        "scene_defaults": SCENE_DEFAULTS,
        "limits": {"max_boxes": MAX_BOXES, "max_nc": MAX_NC, "max_image_side": MAX_IMAGE_SIDE,
                   "box_margin_frac": BOX_MARGIN_FRAC, "max_head_elements": MAX_HEAD_ELEMENTS,
                   "max_pins": MAX_PINS},
    }
    return Response(serialize.dumps(content), media_type="application/json")


@router.post("/explain", response_model=ExplainOut, responses=ERRORS,
             summary="Run the scheme's real code on a scene: positives, maps, losses (and, with ?stages=true, every stage)")
async def explain(
    body: SceneIn,
    lanes: LanesDep,
    settings: SettingsDep,
    maps: Annotated[str | None, Query(max_length=1000, pattern=r"^[A-Za-z0-9_.,\s-]*$",
                                      description="comma-separated map names (box.* ones need ?target=N), "
                                                  "or 'all' or 'none'")] = None,
    stage_data: Annotated[int, Query(ge=0, le=10_000_000,
                                     description="include a stage tensor's data when it has at most this many elements")] = 64,
    stages: Annotated[bool, Query(description="also return the trace's stage list (the page's stepper asks for it "
                                              "once a gesture ends; POST /export has every stage with all its data)")] = False,
    columns: Annotated[str | None, Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,\s-]*$",
                                         description="comma-separated positives columns, or 'all', or 'grid' (the "
                                                     "required ones and the predicted box; default: the scheme's "
                                                     "default columns)")] = None,
    checks: Annotated[str, Query(max_length=400, pattern=r"^[a-z0-9:,\s-]*$",
                                 description="the tests the code ran, each with its numbers and a sentence: 'all', "
                                             "or 'box:N' (about box N) and 'cell:L:gi:gj' (about one cell), "
                                             "comma-separated; default none")] = "none",
    target: Annotated[int | None, Query(ge=0, le=10_000, description="a box index: its box panel (the facts, "
                                        "tables and histogram the scheme declares) and its box.* maps")] = None,
    lang: Annotated[str, Query(pattern="^(en|zh)$", description="language of every text (notes, checks, "
                                                                "stages): en or zh")] = "en",
    layout: Annotated[str, Query(max_length=100, description="positives as a list of row objects "
                                 "(rows, the default) or as {layout, count, columns: {name: values}} with rule as an "
                                 "index into rule_names (columns: what the page asks for while a box is dragged)")] = "rows",
) -> Response:
    spec = _spec(body.scheme)
    if layout not in ("rows", "columns"):
        raise SceneError(T("layout must be rows or columns, got {got}", got=repr(layout[:40])), ["query", "layout"])
    wanted = parse_maps(spec, maps)
    wanted_columns = parse_columns(spec, columns)
    try:
        check_filter(checks)
    except ValueError as exc:
        raise SceneError(T("{got} is not box:N or cell:L:gi:gj", got=repr(checks.strip()[:40])), ["query", "checks"]) from exc
    if target is None and any(name.startswith("box.") for name in wanted or ()):
        raise SceneError(T("box.* maps are the selected box's: name it with ?target=N"), ["query", "maps"])
    if target is not None and target >= len(body.boxes):
        raise SceneError(T("no box {target}: the scene has {n} box(es), numbered from 0", target=target, n=len(body.boxes)),
                         ["query", "target"])
    scene = body.to_scene()
    # torch work and encoding run in the scene's lane (app.compute): light scenes never wait behind heavy ones.
    # A request that may answer hundreds of megabytes (much stage data) takes a stream slot first, so the
    # computed documents waiting to be read are bounded; any other streams only if a slot is free.
    slot = stages and stage_data > LARGE_STAGE_DATA
    if slot and not await lanes.acquire_stream():
        raise HTTPException(503, _STREAMS_BUSY, headers={"Retry-After": "5"})
    prepared: serialize.Prepared | None = None
    try:
        prepared = await lanes.run(scene, serialize.prepare_explain, scene, wanted, stage_data, stages,
                                   wanted_columns, checks, settings.stream_bytes, settings.max_response_bytes,
                                   target, lang, layout)
    except serialize.TooLarge as exc:
        raise HTTPException(413, T("this explain response would be about {mb} MB, above the limit of {limit} bytes "
                                   "(LOSSLAB_MAX_RESPONSE_BYTES): ask for less stage data (stage_data, stages) or fewer "
                                   "maps, or run `losslab explain scene.json -o trace.json`, which writes any size to a "
                                   "file", mb=exc.megabytes, limit=exc.limit)) from None
    finally:
        if slot and (prepared is None or prepared.payload is not None):  # not streamed: the slot goes back now
            lanes.release_stream()
    if prepared.payload is not None:
        return Response(prepared.payload, media_type="application/json")
    if not slot and not await lanes.acquire_stream(wait=False):
        # little stage data, larger than expected and no slot free: answer it whole (tens of MB at
        # most: every map of the largest image; the server's max_pending_bytes bounds unread answers)
        payload = await lanes.run_light(lambda: b"".join(serialize.iter_json(prepared.doc)))
        return Response(payload, media_type="application/json")
    return _stream(prepared.doc, lanes, {})


@router.get("/focal_curve", response_model=FocalCurveOut, summary="Focal loss of one positive against p_t (RetinaNet Fig. 1)")
async def focal_curve(
    gamma: Annotated[float, Query(ge=0.0, le=10.0, description="focusing parameter")] = 2.0,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="weight of the positive class")] = 0.25,
    points: Annotated[int, Query(ge=2, le=2001, description="how many p_t values in (0, 1)")] = 101,
) -> Response:
    curve = mmdet_focal_curve(gamma=gamma, alpha=alpha, points=points)
    content = {"gamma": gamma, "alpha": alpha, **{name: wire.compact(values, arrays=True) for name, values in curve.items()}}
    return Response(serialize.dumps(content), media_type="application/json")


@router.post("/export", response_model=ExportOut, responses=ERRORS,
             summary="The full trace of a scene as a downloadable JSON document")
async def export(body: SceneIn, lanes: LanesDep, settings: SettingsDep,
                 lang: Annotated[str, Query(pattern="^(en|zh)$", description="language of every text")] = "en"
                 ) -> Response:
    """Computed in the heavy lane; a large document is streamed as it is encoded (holding one of
    the worker's stream slots, taken before computing), one above LOSSLAB_MAX_RESPONSE_BYTES is a 413."""
    _spec(body.scheme)
    scene = body.to_scene()
    headers = {"Content-Disposition": f'attachment; filename="{EXPORT_FILENAME}"'}
    if not await lanes.acquire_stream():
        raise HTTPException(503, _STREAMS_BUSY, headers={"Retry-After": "5"})
    try:
        prepared = await lanes.run(scene, serialize.prepare_export, scene, settings.stream_bytes,
                                   settings.max_response_bytes, lang, heavy=True)
    except serialize.TooLarge as exc:
        lanes.release_stream()
        raise HTTPException(413, T("the export of this scene would be about {mb} MB, above the limit of {limit} bytes "
                                   "(LOSSLAB_MAX_RESPONSE_BYTES); `losslab explain scene.json -o trace.json` writes the "
                                   "same document, of any size, to a file", mb=exc.megabytes, limit=exc.limit)) from None
    except BaseException:
        lanes.release_stream()
        raise
    if prepared.payload is not None:
        lanes.release_stream()
        return Response(prepared.payload, media_type="application/json", headers=headers)
    return _stream(prepared.doc, lanes, headers)


LARGE_STAGE_DATA = 4096  # explain: more stage data per tensor than this may make a large answer


_STREAMS_BUSY = T("every stream slot of this worker (LOSSLAB_STREAM_SLOTS) is busy sending a large response; "
                  "retry in a few seconds")


def _stream(doc: dict, lanes: Lanes, headers: dict[str, str]) -> StreamingResponse:
    """Stream ``doc`` (its large stage data lazy) as it is encoded; the caller holds a stream slot,
    released here when the response ends, however it ends."""
    pieces = serialize.iter_json(doc)
    del doc

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                piece = await lanes.encode(next, pieces, None)
                if piece is None:
                    return
                yield piece
        finally:
            release()

    stream = body()
    # released when the stream ends, or when it is dropped without ever being started (a client gone early)
    release = weakref.finalize(stream, lanes.release_stream)
    return StreamingResponse(stream, media_type="application/json", headers=headers)
