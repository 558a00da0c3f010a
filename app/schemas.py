"""Request and response models of the HTTP API (docs/api-contract.md).

Request models forbid unknown fields and constrain each number; what needs the scheme to decide
(strides, class range, parameters, box geometry) is checked by ``losscore.scene.validate_scene``,
whose ``ValueError`` messages :mod:`app.errors` turns into 422s naming the field.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from losscore.scene import MAX_BOXES, MAX_IMAGE_SIDE, MAX_NC, Box, Pin, Scene, get_scheme

MAX_PINS = 64
ParamValue = Union[bool, int, float, str]
FloatOut = Union[float, Literal["nan", "inf", "-inf"]]  # non-finite floats travel as strings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageIn(_Strict):
    width: int = Field(640, ge=1, le=MAX_IMAGE_SIDE, description="px, a multiple of the largest stride")
    height: int = Field(640, ge=1, le=MAX_IMAGE_SIDE, description="px, a multiple of the largest stride")


class BoxIn(_Strict):
    cls: int = Field(ge=0, lt=MAX_NC, description="class index in [0, nc)")
    x1: float = Field(ge=-1e6, le=1e6, description="left edge, px")
    y1: float = Field(ge=-1e6, le=1e6, description="top edge, px")
    x2: float = Field(ge=-1e6, le=1e6, description="right edge, px (> x1)")
    y2: float = Field(ge=-1e6, le=1e6, description="bottom edge, px (> y1)")


class PinIn(_Strict):
    level: int = Field(ge=0, le=16)
    anchor: int = Field(ge=0, le=64)
    gi: int = Field(ge=0, le=MAX_IMAGE_SIDE, description="grid column")
    gj: int = Field(ge=0, le=MAX_IMAGE_SIDE, description="grid row")
    cx: float = Field(ge=-1e6, le=1e6, description="predicted centre x, px")
    cy: float = Field(ge=-1e6, le=1e6, description="predicted centre y, px")
    w: float = Field(gt=0, le=1e6, description="predicted width, px")
    h: float = Field(gt=0, le=1e6, description="predicted height, px")


class PredictionsIn(_Strict):
    seed: int = Field(0, ge=0, lt=2**31)
    progress: float = Field(0.5, ge=0.0, le=1.0, description="0 = untrained random head, 1 = perfect head")
    pins: list[PinIn] = Field(default_factory=list, max_length=MAX_PINS)


class SceneIn(_Strict):
    """What a learner draws (the body of ``POST /api/v1/explain`` and ``/api/v1/export``)."""

    scheme: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                        description="a scheme name from GET /api/v1/schemes", examples=["yolov5"])
    image: ImageIn = Field(default_factory=ImageIn)
    nc: int = Field(80, ge=1, le=MAX_NC, description="number of classes")
    boxes: list[BoxIn] = Field(default_factory=list, max_length=MAX_BOXES)
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=64,
                                          description="omitted -> upstream defaults; unknown -> 422")
    predictions: PredictionsIn = Field(default_factory=PredictionsIn)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def to_scene(self) -> Scene:
        """The losscore scene (not yet validated against its scheme)."""
        return Scene(
            scheme=self.scheme, width=self.image.width, height=self.image.height, nc=self.nc,
            boxes=tuple(Box(b.cls, b.x1, b.y1, b.x2, b.y2) for b in self.boxes),
            params=dict(self.params), seed=self.predictions.seed, progress=self.predictions.progress,
            pins=tuple(Pin(p.level, p.anchor, p.gi, p.gj, p.cx, p.cy, p.w, p.h) for p in self.predictions.pins),
            device=self.device,
        )


def check_pins(scene: Scene) -> None:
    """Pins must name a slot that exists: level, anchor and cell inside the scheme's grids.

    Raises ``ValueError`` with the field path (``predictions.pins[0].gi: ...``).
    """
    spec = get_scheme(scene.scheme)
    for index, pin in enumerate(scene.pins):
        where = f"predictions.pins[{index}]"
        if pin.level >= len(spec.strides):
            raise ValueError(f"{where}.level: {pin.level} is not a level of {spec.name} "
                             f"(it has {len(spec.strides)})")
        stride = spec.strides[pin.level]
        rows, columns = scene.height // stride, scene.width // stride
        anchors = 1 if spec.anchors_px is None else len(spec.anchors_px[pin.level])
        if pin.anchor >= anchors:
            raise ValueError(f"{where}.anchor: {pin.anchor} is not an anchor of level {pin.level} (it has {anchors})")
        if pin.gi >= columns:
            raise ValueError(f"{where}.gi: column {pin.gi} is outside the {columns}-column grid")
        if pin.gj >= rows:
            raise ValueError(f"{where}.gj: row {pin.gj} is outside the {rows}-row grid")


# -- responses (documented for OpenAPI; the endpoints return orjson bytes of the same shape) --------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParamOut(_Open):
    name: str
    default: Any
    min: float | None
    max: float | None
    step: float | None
    kind: str
    choices: list[str]
    doc: str
    upstream: str


class SchemeOut(_Open):
    name: str
    title: str
    family: str
    strides: list[int]
    upstream: str
    doc: str
    params: list[ParamOut]
    maps: dict[str, str]
    rule_names: list[str]


class LimitsOut(_Open):
    max_boxes: int
    max_nc: int
    max_image_side: int
    box_margin_frac: float
    max_head_elements: int


class SchemesOut(_Open):
    schemes: list[SchemeOut]
    limits: LimitsOut


class LevelOut(_Open):
    name: str
    stride: int
    grid: list[int]
    anchors: list[list[FloatOut]] | None


class MapLevelOut(_Open):
    shape: list[int]
    dtype: Literal["float32"]
    b64: str


class MapOut(_Open):
    doc: str
    levels: list[MapLevelOut]


class StageTensorOut(_Open):
    name: str
    dims: str
    shape: list[int]
    dtype: str
    data: list[Any] | None
    min: FloatOut | None = None
    max: FloatOut | None = None
    mean: FloatOut | None = None


class StageOut(_Open):
    name: str
    title: str
    explain: str
    code: str
    values: dict[str, Any]
    tensors: list[StageTensorOut]


class ResultOut(_Open):
    """The explain response without its stages (as kept under ``result`` in an export)."""

    scheme: str
    family: str
    device: str
    compute_ms: float
    scene: dict[str, Any]
    image: dict[str, int]
    levels: list[LevelOut]
    rule_names: list[str]
    positives: list[dict[str, Any]]
    columns: dict[str, str]
    maps: dict[str, MapOut]
    map_names: dict[str, str]
    losses: dict[str, FloatOut]
    notes: list[str]


class ExplainOut(ResultOut):
    stages: list[StageOut]


class ExportOut(_Open):
    format: Literal["losslab-trace"]
    version: int
    scene: dict[str, Any]
    params: dict[str, Any]
    library: dict[str, str]
    upstream: dict[str, Any]
    result: ResultOut
    stages: list[StageOut]


class FocalCurveOut(_Open):
    gamma: float
    alpha: float
    p_t: list[float]
    loss: list[float]
    ce: list[float]


class HealthOut(_Open):
    status: Literal["ok", "degraded"]
    schemes: list[str]
    warmup_errors: dict[str, str]
    torch: str
    cuda: bool


class ErrorItem(_Open):
    loc: list[Union[str, int]]
    msg: str
    type: str


class ValidationErrorOut(_Open):
    detail: list[ErrorItem]


class ErrorOut(_Open):
    detail: str
