"""``/api/v1``: the page's content that is not a computation: preset scenes (lessons follow).

Every number here comes from ``losscore`` (``losscore.presets`` computes preset geometry from the
scheme's declared strides and anchors); the page only draws it.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from losscore import registry
from losscore.presets import PRESETS, preset_scene

from .. import serialize
from ..errors import SceneError, scene_error
from ..schemas import ErrorOut, ValidationErrorOut

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
) -> Response:
    try:
        spec = registry.get_scheme(scheme)
    except ValueError as exc:
        error = scene_error(exc, "query")
        raise SceneError(error.message, error.loc) from exc
    out = []
    for preset in PRESETS:
        boxes, params = preset_scene(spec, preset.name, width, height, nc)
        out.append({"name": preset.name, "title": preset.title, "doc": preset.doc, "params": params,
                    "boxes": [{"cls": b.cls, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in boxes]})
    return Response(serialize.dumps({"presets": out}), media_type="application/json")
