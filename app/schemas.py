"""Request and response models of the HTTP API (docs/api-contract.md).

Request models check the structure only (field names, types, list lengths); every value is
checked by the one validation path, ``losscore.scene.validate_scene`` (strides, classes, box
geometry, parameters, pins), whose ``ValueError`` messages :mod:`app.errors` turns into 422s
naming the field.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from losscore.scene import MAX_BOXES, MAX_PINS, Box, LevelSpec, Pin, Scene
ParamValue = Union[bool, int, float, str]
FloatOut = Union[float, Literal["nan", "inf", "-inf"]]  # non-finite floats travel as strings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageIn(_Strict):
    width: int = Field(640, description="px, a multiple of the scheme's largest stride, at most 2048")
    height: int = Field(640, description="px, a multiple of the scheme's largest stride, at most 2048")


class BoxIn(_Strict):
    cls: int = Field(description="class index in [0, nc)")
    x1: float = Field(description="left edge, px")
    y1: float = Field(description="top edge, px")
    x2: float = Field(description="right edge, px (> x1)")
    y2: float = Field(description="bottom edge, px (> y1)")


class PinIn(_Strict):
    level: int = Field(description="level index (0 = the first level)")
    anchor: int = Field(description="anchor index within the level (0 for anchor-free schemes)")
    gi: int = Field(description="grid column")
    gj: int = Field(description="grid row")
    cx: float = Field(description="predicted centre x, px")
    cy: float = Field(description="predicted centre y, px")
    w: float = Field(description="predicted width, px (> 0)")
    h: float = Field(description="predicted height, px (> 0)")


class LevelIn(_Strict):
    stride: int = Field(description="px per cell of this level")
    anchors: list[list[float]] = Field(max_length=9, description="anchors [[w, h], ...] in pixels")


class PredictionsIn(_Strict):
    seed: int = Field(0, description="noise seed of the untrained head, in [0, 2^31)")
    progress: float = Field(0.5, description="0 = untrained random head, 1 = perfect head")
    pins: list[PinIn] = Field(default_factory=list, max_length=MAX_PINS)


class SceneIn(_Strict):
    """What a learner draws (the body of ``POST /api/v1/explain`` and ``/api/v1/export``)."""

    scheme: str = Field(min_length=1, max_length=64, description="a scheme name from GET /api/v1/schemes",
                        examples=["yolov5"])
    image: ImageIn = Field(default_factory=ImageIn)
    nc: int = Field(80, description="number of classes, 1..1000")
    boxes: list[BoxIn] = Field(default_factory=list, max_length=MAX_BOXES)
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=64,
                                          description="omitted -> upstream defaults; unknown -> 422")
    predictions: PredictionsIn = Field(default_factory=PredictionsIn)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    levels: list[LevelIn] | None = Field(None, max_length=6, description="custom levels and anchors for "
                                         "anchor-based schemes (GET /api/v1/schemes custom_levels); null: the scheme's")

    def to_scene(self) -> Scene:
        """The losscore scene (not yet validated against its scheme)."""
        return Scene(
            scheme=self.scheme, width=self.image.width, height=self.image.height, nc=self.nc,
            boxes=tuple(Box(b.cls, b.x1, b.y1, b.x2, b.y2) for b in self.boxes),
            params=dict(self.params), seed=self.predictions.seed, progress=self.predictions.progress,
            pins=tuple(Pin(p.level, p.anchor, p.gi, p.gj, p.cx, p.cy, p.w, p.h) for p in self.predictions.pins),
            device=self.device,
            levels=None if self.levels is None else tuple(
                LevelSpec(lv.stride, tuple(tuple(a) for a in lv.anchors)) for lv in self.levels),
        )


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


class ColumnOut(_Open):
    name: str
    doc: str
    unit: str
    parts: list[str]
    box: str
    default: bool
    group: str
    formula: str


class RuleOut(_Open):
    name: str
    label: str = Field(description="the rule's name in the reader's language (name is the key positives use)")
    glyph: str
    doc: str


class MapSpecOut(_Open):
    name: str
    doc: str
    unit: str
    scale: str
    reduce: str
    range: list[float] | None


class SchemeOut(_Open):
    name: str
    title: str
    family: str
    strides: list[int]
    level_names: list[str]
    upstream: str
    doc: str
    params: list[ParamOut]
    maps: list[MapSpecOut]
    rules: list[RuleOut]
    columns: list[ColumnOut]
    losses: dict[str, Any] | None
    focal: dict[str, Any] | None
    phases: list[dict[str, str]]
    anchors_px: list[list[list[float]]] | None
    custom_levels: bool
    pred_box: str | None
    target_box: str | None
    inspector: dict[str, Any]
    kind: Literal["grid", "queries"]
    query_columns: list[ColumnOut]
    matrices: list[MapSpecOut]
    target: dict[str, Any] = Field(description="the box panel's declaration (losscore.target_spec.TargetSpec)")
    split: dict[str, Any] | None = Field(description="positives side by side by a column's value (YOLOv10's branches)")


class LimitsOut(_Open):
    max_boxes: int
    max_nc: int
    max_image_side: int
    box_margin_frac: float
    max_head_elements: int
    max_pins: int


class SchemesOut(_Open):
    schemes: list[SchemeOut]
    scene_defaults: dict[str, Any]
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
    phase: str
    level: str | None
    step: str
    title: str
    explain: str
    code: str
    values: dict[str, Any]
    tensors: list[StageTensorOut]
    cells: list[dict[str, Any]] = Field(default_factory=list, description="the cells this stage is about")


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
    boxes: list[dict[str, Any]]
    positives: list[dict[str, Any]] | dict[str, Any] = Field(
        description="one object per positive (default), or with ?layout=columns {layout, count, columns}")
    counts: dict[str, Any]
    maps: dict[str, MapOut]
    losses: dict[str, FloatOut]
    composition: dict[str, Any] | None
    focal: dict[str, Any] | None
    box_cells: list[list[list[int]]] | None
    queries: list[dict[str, Any]] | None
    matrices: dict[str, MapLevelOut] | None
    checks: list[dict[str, Any]]
    target: dict[str, Any] | None = Field(None, description="the selected box's panel (?target=N with checks)")
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
