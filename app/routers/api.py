"""``/api/v1``: the schemes, a scene explained, a scene exported (docs/api-contract.md)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
import anyio.to_thread

from losscore import registry, wire
from losscore.mmdet import focal_curve as mmdet_focal_curve
from losscore.scene import (BOX_MARGIN_FRAC, MAX_BOXES, MAX_HEAD_ELEMENTS, MAX_IMAGE_SIDE, MAX_NC, MAX_PINS,
                            SchemeSpec)

from .. import serialize
from ..dependencies import LimiterDep
from ..errors import SceneError, scene_error
from ..schemas import ErrorOut, ExplainOut, ExportOut, FocalCurveOut, SceneIn, SchemesOut, ValidationErrorOut

router = APIRouter(prefix="/api/v1", tags=["api"])

ERRORS = {
    400: {"model": ErrorOut, "description": "the body could not be read (e.g. not UTF-8)"},
    413: {"model": ErrorOut, "description": "request body larger than 1 MiB"},
    422: {"model": ValidationErrorOut, "description": "the scene or a query option is invalid; loc names the field"},
}
EXPORT_FILENAME = "losslab-trace.json"


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
    names = [name.strip() for name in maps.split(",") if name.strip()]
    known = [m.name for m in spec.maps]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SceneError(f"unknown map(s) {unknown[:5]} for scheme {spec.name!r}; known: {known} or 'all'",
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
        raise SceneError(f"unknown column(s) {unknown[:5]} for scheme {spec.name!r}; known: {known}",
                         ["query", "columns"])
    return names


@router.get("/schemes", response_model=SchemesOut, summary="Every scheme, its parameters and maps")
async def schemes() -> Response:
    content = {
        "schemes": [spec.to_dict() for spec in registry.all_schemes().values()],
        "limits": {"max_boxes": MAX_BOXES, "max_nc": MAX_NC, "max_image_side": MAX_IMAGE_SIDE,
                   "box_margin_frac": BOX_MARGIN_FRAC, "max_head_elements": MAX_HEAD_ELEMENTS,
                   "max_pins": MAX_PINS},
    }
    return Response(serialize.dumps(content), media_type="application/json")


@router.post("/explain", response_model=ExplainOut, responses=ERRORS,
             summary="Run the scheme's real code on a scene: positives, maps, losses (and, with ?stages=true, every stage)")
async def explain(
    body: SceneIn,
    limiter: LimiterDep,
    maps: Annotated[str | None, Query(max_length=1000, pattern=r"^[A-Za-z0-9_.,\s-]*$",
                                      description="comma-separated map names, or 'all'")] = None,
    stage_data: Annotated[int, Query(ge=0, le=10_000_000,
                                     description="include a stage tensor's data when it has at most this many elements")] = 64,
    stages: Annotated[bool, Query(description="also return the trace's stage list (the page's stepper asks for it "
                                              "once a gesture ends; POST /export has every stage with all its data)")] = False,
    columns: Annotated[str | None, Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,\s-]*$",
                                         description="comma-separated positives columns, or 'all', or 'grid' (the "
                                                     "required ones and the predicted box; default: the scheme's "
                                                     "default columns)")] = None,
    checks: Annotated[bool, Query(description="also return the tests the code ran per box, anchor and cell, each "
                                              "with its numbers and a sentence (the page's inspector asks once a "
                                              "gesture ends)")] = False,
) -> Response:
    spec = _spec(body.scheme)
    wanted = parse_maps(spec, maps)
    wanted_columns = parse_columns(spec, columns)
    scene = body.to_scene()
    # torch work and encoding run in a worker thread, at most LOSSLAB_COMPUTE_SLOTS at once
    payload = await anyio.to_thread.run_sync(serialize.explain_bytes, scene, wanted, stage_data, stages,
                                             wanted_columns, checks, limiter=limiter)
    return Response(payload, media_type="application/json")


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
async def export(body: SceneIn, limiter: LimiterDep) -> Response:
    _spec(body.scheme)
    payload = await anyio.to_thread.run_sync(serialize.export_bytes, body.to_scene(), limiter=limiter)
    return Response(payload, media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{EXPORT_FILENAME}"'})
