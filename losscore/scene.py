"""Scenes: what a learner draws, what a scheme declares, and what its ``explain`` returns.

This module is the data model only (no scheme lives here and nothing registers itself):

* :class:`Scene` — image size, ground-truth boxes in pixels, the number of classes, a scheme
  name, its parameters, the prediction settings (seed, training progress, pins) and a device.
* :class:`SchemeSpec` — everything the page needs to know about a scheme, declared once: its
  parameters (:class:`ParamSpec`), the positives columns with unit and box format
  (:class:`ColumnSpec`), the rules that make a slot positive with their glyph
  (:class:`RuleSpec`), the heat maps with meaning and scale (:class:`MapSpec`), which parameters
  feed a focal curve (:class:`FocalSpec`), the loss composition (:class:`LossSpec`) and the
  phases of its trace (:class:`PhaseSpec`). The page reads only this declaration and the result.
* :class:`SceneResult` — what a scheme's ``explain(scene, trace)`` returns; the API and the page
  read only it (and its :class:`~losscore.trace.Trace`).
* :func:`validate_scene` — the one validation path of a scene against its scheme (boxes,
  parameters, predictions and pins).

Which schemes exist is :mod:`losscore.registry`'s business; the prediction heads are built by
:mod:`losscore.predictions`.

Vocabulary for shapes: ``B`` images, ``L`` levels, ``A`` anchors per level, ``H W`` grid, ``N``
targets, ``P`` positives, ``C`` classes, ``R`` DFL bins.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .text import T, TextError, render as _r
from .trace import Trace
from .target_spec import TargetSpec

__all__ = [
    "Box",
    "Pin",
    "LevelSpec",
    "SplitSpec",
    "Scene",
    "scene_levels",
    "ParamSpec",
    "ColumnSpec",
    "RuleSpec",
    "MapSpec",
    "FocalSpec",
    "LossTermSpec",
    "LossSpec",
    "PhaseSpec",
    "InspectorSpec",
    "SchemeSpec",
    "LevelInfo",
    "LossPart",
    "LossTerm",
    "LossComposition",
    "Check",
    "StageCell",
    "SceneResult",
    "validate_scene",
    "resolve_device",
    "boxes_to_targets",
    "STAGE_NAME",
    "stage_parts",
    "UNITS",
    "MAX_BOXES",
    "MAX_NC",
    "MAX_PINS",
    "BOX_MARGIN_FRAC",
    "MAX_IMAGE_SIDE",
    "MAX_HEAD_ELEMENTS",
]

MAX_BOXES = 256  # most boxes in one scene
MAX_NC = 1000  # most classes
MAX_PINS = 64  # most pinned predictions
MAX_IMAGE_SIDE = 2048  # pixels, each side
BOX_MARGIN_FRAC = 0.5  # a box may stick out of the image by at most half the image side
MAX_HEAD_ELEMENTS = 40_000_000  # grid cells (all levels) x 3 x (64 + nc): bounds one scene's memory

# One stage-naming pattern for every family: "<phase>.<step>" or "<phase>.<level>.<step>", with
# lowercase snake_case words and a level like "P3" (losscore.trace.Trace.scope builds the prefixes).
STAGE_NAME = re.compile(r"^(?P<phase>[a-z][a-z0-9_]*)\.(?:(?P<level>P\d+)\.)?(?P<step>[a-z][a-z0-9_]*)$")


def stage_parts(name: str) -> tuple[str, str | None, str]:
    """``"loss.P3.ciou"`` -> ``("loss", "P3", "ciou")``; ``"assigner.topk"`` -> ``("assigner", None, "topk")``.

    Raises ``ValueError`` for a name outside :data:`STAGE_NAME`.
    """
    match = STAGE_NAME.match(name)
    if not match:
        raise ValueError(f"stage name {name!r} does not follow '<phase>[.<level>].<step>'")
    return match["phase"], match["level"], match["step"]


# Units a positives column, a check or a map may declare (the page formats by unit, never by name).
UNITS = {
    "index": "an integer index (box, level, anchor, cell, rank, bin)",
    "px": "image pixels",
    "grid": "cells of the row's level (pixels / stride)",
    "ratio": "a dimensionless ratio",
    "iou": "an overlap in [-1, 1] (IoU, GIoU, DIoU, CIoU)",
    "prob": "a probability in [0, 1]",
    "logit": "a logit (before the sigmoid)",
    "loss": "a loss value (nats for BCE)",
    "weight": "a weight or factor",
    "count": "a count",
    "bool": "true or false",
    "bins": "DFL bins (cells of the level)",
    "grad": "a gradient (dloss/dlogit)",
    "": "no unit",
}


@dataclass(frozen=True)
class Box:
    """A ground-truth box in pixels, corners (x1, y1) top-left and (x2, y2) bottom-right."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Pin:
    """Force the predicted box of one positive slot (level, anchor, cell) to a box in pixels.

    The family inverts its decode to find the logits; ``SceneResult.notes`` says when the box
    cannot be reached (e.g. YOLOv5 xy outside (-0.5, 1.5) cells, wh outside (0, 4) anchors).
    """

    level: int
    anchor: int
    gi: int
    gj: int
    cx: float
    cy: float
    w: float
    h: float


@dataclass(frozen=True)
class LevelSpec:
    """A detection level a learner defines for an anchor-based scheme: its stride (px) and anchors (w, h px)."""

    stride: int
    anchors: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Scene:
    scheme: str
    width: int
    height: int
    nc: int
    boxes: tuple[Box, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: float = 0.5
    pins: tuple[Pin, ...] = ()
    device: str = "auto"
    levels: tuple[LevelSpec, ...] | None = None  # custom levels and anchors (anchor-based schemes); None: the scheme's

    def param(self, name: str) -> Any:
        """The value of a parameter of a validated scene (:func:`validate_scene` fills every default)."""
        try:
            return self.params[name]
        except KeyError:
            raise KeyError(f"params.{name}: not set; explain a scene returned by validate_scene") from None


@dataclass(frozen=True)
class ParamSpec:
    """A parameter of a scheme, described so the page can build its control from it."""

    name: str
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    kind: str = "float"  # float | int | bool | choice
    choices: tuple[str, ...] = ()
    doc: str = ""  # one-line meaning
    upstream: str = ""  # the upstream symbol, e.g. "hyp['anchor_t']"
    inert_hint: str = ""  # said when moving it changes nothing in a scene ("no anchor has ... try the preset ...")

    def validate(self, value: Any) -> Any:
        where = f"params.{self.name}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TextError(where, T("expected true or false, got {got}", got=_excerpt(value)))
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise TextError(where, T("expected one of {choices}, got {got}", choices=list(self.choices),
                                         got=_excerpt(value)))
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TextError(where, T("expected a number, got {got}", got=_excerpt(value)))
        try:
            as_float = float(value)
        except OverflowError:  # an integer literal beyond the float range (e.g. 1e309 written out)
            raise TextError(where, T("{got} is too large to be a number", got=_excerpt(value))) from None
        if not math.isfinite(as_float):
            raise TextError(where, T("must be finite, got {got}", got=repr(value)))
        if self.kind == "int":
            if as_float != int(value):
                raise TextError(where, T("expected an integer, got {got}", got=repr(value)))
            value = int(value)
        if self.min is not None and value < self.min:
            raise TextError(where, T("{got} is below the minimum {min}", got=repr(value), min=self.min))
        if self.max is not None and value > self.max:
            raise TextError(where, T("{got} is above the maximum {max}", got=repr(value), max=self.max))
        return value

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {
            "name": self.name, "default": self.default, "min": self.min, "max": self.max, "step": self.step,
            "kind": self.kind, "choices": list(self.choices), "doc": _r(self.doc, lang), "upstream": self.upstream,
        }


def _excerpt(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}… ({len(text)} characters)"


@dataclass(frozen=True)
class ColumnSpec:
    """One positives column: its meaning, unit, and for a (P, k) column the names of its k parts.

    ``box`` is ``"xyxy"`` for a box column; every box the page draws is (x1, y1, x2, y2) in pixels.
    """

    name: str
    doc: str
    unit: str = ""
    parts: tuple[str, ...] = ()  # (P, k) columns: what each of the k values is
    box: str = ""  # "xyxy" for a box in image pixels, else ""
    default: bool = True  # in the explain response unless the request names its columns ("all" includes it)
    group: str = ""  # the inspector group it belongs to: assignment, decode, iou, objectness, class, focal, dfl, loss
    formula: str = ""  # the formula with {column} placeholders filled from the same row, e.g. "CIoU = {iou} - ..."

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"name": self.name, "doc": _r(self.doc, lang), "unit": self.unit, "parts": list(self.parts), "box": self.box,
                "default": self.default, "group": self.group, "formula": _r(self.formula, lang)}


@dataclass(frozen=True)
class RuleSpec:
    """Why a slot became positive: ``SceneResult.positives["rule"]`` indexes a scheme's rules."""

    name: str
    glyph: str  # one character drawn in the cell (shape, not colour, carries the rule)
    doc: str  # one line

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        # "name" is the key positives and counts use; "label" is the name in the reader's language
        return {"name": self.name, "label": _r(self.name, lang), "glyph": self.glyph, "doc": _r(self.doc, lang)}


@dataclass(frozen=True)
class SplitSpec:
    """Positives shown side by side by the value of one of their columns: YOLOv10's and YOLO26's
    one-to-many and one-to-one branches on the same boxes (``column`` "branch", values 0 and 1)."""

    column: str
    values: tuple[tuple[int, str], ...]  # (value, label), in the order shown, left to right
    maps: tuple[tuple[str, str], ...] = ()  # (a heat map, its counterpart for the second value's grid)

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"column": self.column, "values": [{"value": v, "label": _r(label, lang)} for v, label in self.values],
                "maps": [list(pair) for pair in self.maps]}


@dataclass(frozen=True)
class MapSpec:
    """A heat layer: one value per (anchor, cell) on every level.

    ``scale``: ``linear`` (colour from the data's min to max, or ``range`` when set), ``log``
    (log10 of positive values) or ``count`` (small integers). ``reduce``: how the anchors of a cell
    are combined when all anchors are shown (``max`` or ``sum``).
    """

    name: str
    doc: str
    unit: str = ""
    scale: str = "linear"
    reduce: str = "max"
    range: tuple[float, float] | None = None

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"name": self.name, "doc": _r(self.doc, lang), "unit": self.unit, "scale": self.scale, "reduce": self.reduce,
                "range": None if self.range is None else list(self.range)}


@dataclass(frozen=True)
class FocalSpec:
    """Which parameters feed a focal curve.

    ``gamma``/``alpha`` name parameters (``alpha`` None: no alpha factor, or a fixed ``alpha_value``).
    ``off_at_zero``: at gamma = 0 the code uses plain BCE (no focal wrapper, no alpha either).
    """

    gamma: str
    alpha: str | None = None
    alpha_value: float | None = None  # a fixed alpha the code hard-codes (e.g. FocalLoss(alpha=0.25))
    off_at_zero: bool = False
    applies_to: str = ""  # which loss terms the focal wrapper touches ("class and objectness BCE")
    points: tuple[str, str] | None = None  # positives columns (p_t, per-element loss) to draw on the curve

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"gamma": self.gamma, "alpha": self.alpha, "alpha_value": self.alpha_value,
                "off_at_zero": self.off_at_zero, "applies_to": _r(self.applies_to, lang),
                "points": None if self.points is None else list(self.points)}


@dataclass(frozen=True)
class LossTermSpec:
    """One term of the total: what it is and the labels of the factors it goes through."""

    name: str
    doc: str
    part_factor: str = ""  # label of each part's factor, e.g. "balance[level]"; "" = none
    divisor: str = ""  # label of the divisor, e.g. "target_scores_sum"; "" = none
    gain: str = ""  # label of the gain, e.g. "hyp['box']"; "" = none

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"name": self.name, "doc": _r(self.doc, lang), "part_factor": _r(self.part_factor, lang),
                "divisor": _r(self.divisor, lang), "gain": _r(self.gain, lang)}


@dataclass(frozen=True)
class LossSpec:
    """How the total is built: ``total = (Σ term values) × multiplier``."""

    terms: tuple[LossTermSpec, ...]
    formula: str  # e.g. "(box + obj + cls) × batch size"
    multiplier: str = ""  # label of the final multiplier, e.g. "batch size"; "" = none

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"terms": [t.to_dict(lang) for t in self.terms], "formula": _r(self.formula, lang),
                "multiplier": _r(self.multiplier, lang)}


@dataclass(frozen=True)
class InspectorSpec:
    """What the inspector's first lines show for a hovered cell: the positives columns that are a
    positive's target and its loss, and the maps that give any cell's target and loss."""

    target_columns: tuple[str, ...] = ()
    loss_columns: tuple[str, ...] = ()
    target_map: str | None = None
    loss_map: str | None = None
    groups: tuple[tuple[str, str], ...] = ()  # (group name, title) in the order the inspector shows them

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"target_columns": list(self.target_columns), "loss_columns": list(self.loss_columns),
                "target_map": self.target_map, "loss_map": self.loss_map,
                "groups": [{"name": n, "title": _r(t, lang)} for n, t in self.groups]}


@dataclass(frozen=True)
class PhaseSpec:
    """A phase of a scheme's trace (the first word of its stage names) with a title for the stepper."""

    name: str
    title: str
    doc: str = ""

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"name": self.name, "title": _r(self.title, lang), "doc": _r(self.doc, lang)}


@dataclass(frozen=True)
class LevelInfo:
    """One detection level: ``name`` ("P3"), ``stride`` px, ``grid`` (H, W), anchors in px."""

    name: str
    stride: int
    grid: tuple[int, int]
    anchors_px: torch.Tensor | None  # (A, 2) w, h in pixels; None for anchor-free heads


@dataclass(frozen=True)
class LossPart:
    """One part of a term (a level, or positives/background): raw value, its factor, the product."""

    label: str
    raw: torch.Tensor  # 0-dim, as the code computed it
    factor: float = 1.0
    value: torch.Tensor | None = None  # raw × factor as the code computed it (None: factor is 1)


@dataclass(frozen=True)
class LossTerm:
    """``value = (Σ part values) / divisor × gain``.

    ``normalised`` is ``sum / divisor`` as the code computed it (None when the divisor is 1).
    """

    name: str
    parts: tuple[LossPart, ...]
    sum: torch.Tensor
    value: torch.Tensor
    gain: float = 1.0
    divisor: float = 1.0
    normalised: torch.Tensor | None = None


@dataclass(frozen=True)
class LossComposition:
    """``total = (Σ term values) × multiplier``."""

    terms: tuple[LossTerm, ...]
    sum: torch.Tensor
    total: torch.Tensor
    multiplier: float = 1.0


@dataclass(frozen=True)
class Check:
    """One test the code ran for a (box, level, anchor, cell), with its numbers and outcome.

    The page shows ``text`` as it is (the sentence is built here, with the numbers filled in);
    ``passed`` is the code's decision. ``cell`` is the (gi, gj) the test is about.
    """

    gt: int
    level: int
    anchor: int
    gi: int
    gj: int
    test: str  # a short name: "anchor_ratio", "neighbour.left", "top_k", ...
    passed: bool
    text: str  # a losscore.text.Text (or a plain template), rendered in the reader's language
    values: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""  # a few characters drawn on the grid ("frac 0.62 ≥ g", "r 3.13 < 4"); a Text too


@dataclass(frozen=True)
class StageCell:
    """A cell a trace stage is about (the stepper lights it up): which box, level, anchor, cell, and a
    few words on what the stage did there ("kept, r 3.13", "rank 2, t 0.13")."""

    gt: int
    level: int
    anchor: int
    gi: int
    gj: int
    label: str = ""  # a losscore.text.Text (or a plain template)


@dataclass
class SceneResult:
    """What a family's ``explain`` returns; the API serialises exactly this.

    ``positives``: columns of one table, one row per positive (P rows). Required columns:
      ``gt`` (P,) int64 box index, ``level`` (P,) int64, ``anchor`` (P,) int64 (0 for anchor-free),
      ``gi`` (P,) int64 column, ``gj`` (P,) int64 row, ``rule`` (P,) int64 index into the
      scheme's rules. Every further column is declared by the scheme's :class:`ColumnSpec`.
    ``maps``: heat-layer name -> one tensor per level, each (A, H, W) (A = 1 for anchor-free).
    ``losses``: ``total`` plus each term, and per-level entries as ``"obj.P3"``; 0-dim tensors.
    ``composition``: how the total is built (the loss chart's waterfall).
    ``box_cells``: (N, L, 2) int64, each box's centre cell (gi, gj) on each level, as the code
      computes it (clamped into the grid where the code clamps).
    ``checks``: the tests the code ran that a learner asks "why" about (anchor ratio, neighbour
      rules, top-k, ...), each with its numbers; built on demand (:meth:`check_list`), since a
      crowded TAL scene has thousands and the page asks for them only when a gesture ends.
    ``stage_cells``: per stage name, the cells that stage is about (built on demand, like checks).
    ``notes``: sentences the page shows as they are, each a :class:`~losscore.text.Text` (or a plain
      template) rendered in the reader's language.
    """

    scheme: str
    levels: list[LevelInfo]
    positives: dict[str, torch.Tensor]
    maps: dict[str, list[torch.Tensor]]
    losses: dict[str, torch.Tensor]
    trace: Trace | None
    device: str
    composition: LossComposition | None = None
    box_cells: torch.Tensor | None = None
    queries: dict[str, torch.Tensor] | None = None  # kind "queries": one row per query (Q rows)
    matrices: dict[str, torch.Tensor] | None = None  # kind "queries": name -> (Q, N) cost matrix
    checks: Callable[[], list[Check]] | None = None
    stage_cells: Callable[[], Mapping[str, list[StageCell]]] | None = None  # stage name -> its cells
    notes: list[str] = field(default_factory=list)
    targets: torch.Tensor | None = None  # (N, 6) the target rows the code consumed

    def check_list(self) -> list[Check]:
        """The checks, built once on first use."""
        if not hasattr(self, "_checks"):
            self._checks = [] if self.checks is None else list(self.checks())
        return self._checks


REQUIRED_COLUMNS = ("gt", "level", "anchor", "gi", "gj", "rule")
QUERY_REQUIRED_COLUMNS = ("gt", "query", "rule")  # kind "queries": a matched (query, target) pair per row


@dataclass(frozen=True)
class SchemeSpec:
    """A scheme: the real code of one family run on a learner's scene, and its declaration."""

    name: str
    title: str
    family: str
    strides: tuple[int, ...]
    params: tuple[ParamSpec, ...]
    explain: Callable[[Scene, Trace | None], SceneResult]
    upstream: str = ""  # "ultralytics/yolov5@<commit> utils/loss.py"
    doc: str = ""
    maps: tuple[MapSpec, ...] = ()  # the first is the default view
    rules: tuple[RuleSpec, ...] = ()
    columns: tuple[ColumnSpec, ...] = ()  # every positives column, the required ones included
    losses: LossSpec | None = None
    focal: FocalSpec | None = None
    phases: tuple[PhaseSpec, ...] = ()
    anchors_px: tuple[tuple[tuple[float, float], ...], ...] | None = None  # default anchors per level
    level_names: tuple[str, ...] = ()  # e.g. ("P3", "P4", "P5"); default P{3 + i}
    custom_levels: bool = False  # a scene may bring its own levels and anchors (Scene.levels)
    pred_box: str | None = None  # the positives column holding each positive's predicted box (xyxy px)
    target_box: str | None = None  # the positives column holding its target box (xyxy px)
    inspector: InspectorSpec = field(default_factory=InspectorSpec)
    # "grid": positives are (level, anchor, cell) slots. "queries": a set-prediction head (DETR) whose
    # positives are matched (query, target) pairs; SceneResult.queries holds one row per query
    # (columns declared in query_columns) and SceneResult.matrices the (Q, N) cost matrices.
    kind: str = "grid"
    query_columns: tuple[ColumnSpec, ...] = ()
    matrices: tuple[MapSpec, ...] = ()
    target: TargetSpec = field(default_factory=TargetSpec)  # the box panel (losscore.target_spec)
    split: SplitSpec | None = None  # positives side by side by a column's value (YOLOv10's two branches)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return QUERY_REQUIRED_COLUMNS if self.kind == "queries" else REQUIRED_COLUMNS

    def column_set(self, which: str) -> tuple[str, ...]:
        """Named sets of positives columns: ``default`` (the explain response's), ``all``, and
        ``grid`` (what the page's grid draws while a box moves: the required ones and the predicted box)."""
        if which == "all":
            return tuple(c.name for c in self.columns)
        if which == "grid":
            return (self.required_columns + ((self.pred_box,) if self.pred_box else ())
                    + ((self.split.column,) if self.split else ()))
        if which == "default":
            return tuple(c.name for c in self.columns if c.default)
        raise TextError("columns", T("unknown set {which}; sets: default, all, grid", which=repr(which)))

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        known = [p.name for p in self.params]
        raise TextError(f"params.{_excerpt(name, 60).strip(chr(39))}",
                        T("unknown parameter for scheme {scheme}; known: {known}", scheme=repr(self.name), known=known))

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise TextError("columns", T("unknown column {name} for scheme {scheme}; known: {known}",
                                     name=_excerpt(name, 60), scheme=repr(self.name),
                                     known=[c.name for c in self.columns]))

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {
            "name": self.name,
            "title": _r(self.title, lang),
            "family": self.family,
            "strides": list(self.strides),
            "level_names": list(self.level_names or [f"P{3 + i}" for i in range(len(self.strides))]),
            "upstream": self.upstream,
            "doc": _r(self.doc, lang),
            "params": [p.to_dict(lang) for p in self.params],
            "maps": [m.to_dict(lang) for m in self.maps],
            "rules": [r.to_dict(lang) for r in self.rules],
            "columns": [c.to_dict(lang) for c in self.columns],
            "losses": None if self.losses is None else self.losses.to_dict(lang),
            "focal": None if self.focal is None else self.focal.to_dict(lang),
            "phases": [p.to_dict(lang) for p in self.phases],
            "anchors_px": None if self.anchors_px is None else [[list(a) for a in lvl] for lvl in self.anchors_px],
            "custom_levels": self.custom_levels,
            "pred_box": self.pred_box,
            "target_box": self.target_box,
            "inspector": self.inspector.to_dict(lang),
            "kind": self.kind,
            "query_columns": [c.to_dict(lang) for c in self.query_columns],
            "matrices": [m.to_dict(lang) for m in self.matrices],
            "target": self.target.to_dict(lang),
            "split": None if self.split is None else self.split.to_dict(lang),
        }


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TextError("device", T("'cuda' was requested but no CUDA device is available here"))
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise TextError("device", T("expected 'auto', 'cpu' or 'cuda', got {got}", got=_excerpt(name)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a huge int
        return False


def validate_scene(scene: Scene, spec: SchemeSpec) -> Scene:
    """Check ``scene`` against its scheme ``spec``; return it with parameters validated and completed.

    The one validation path of a scene (the API, the CLI and the library all come through here).
    Raises ``ValueError`` whose message starts with the field path (``boxes[0].cls: ...``) and
    says the problem once: a :class:`~losscore.text.TextError`, whose ``path`` and translatable
    ``text`` give the message in any language (:func:`losscore.text.error_message`).
    """
    if scene.scheme != spec.name:
        raise TextError("scheme", T("the scene is for {scene}, not {scheme}", scene=repr(scene.scheme),
                                    scheme=repr(spec.name)))
    _validate_levels(scene, spec)
    strides = [lv.stride for lv in scene.levels] if scene.levels else list(spec.strides)
    for side, value in (("width", scene.width), ("height", scene.height)):
        if not _is_int(value):
            raise TextError(f"image.{side}", T("expected an integer number of pixels, got {got}", got=_excerpt(value)))
        if value <= 0:
            raise TextError(f"image.{side}", T("must be positive, got {got}", got=value))
        if value > MAX_IMAGE_SIDE:
            raise TextError(f"image.{side}", T("{value} px is above the limit of {limit} px", value=value,
                                              limit=MAX_IMAGE_SIDE))
        largest = max(strides)
        if value % largest:
            raise TextError(f"image.{side}", T(
                "{value} px is not a multiple of the largest stride {largest} (the grids of all levels must be whole)",
                value=value, largest=largest))
    if not _is_int(scene.nc) or not 1 <= scene.nc <= MAX_NC:
        raise TextError("nc", T("expected an integer in [1, {max}], got {got}", max=MAX_NC, got=_excerpt(scene.nc)))
    cells = sum((scene.width // stride) * (scene.height // stride) for stride in strides)
    anchors = max((len(lv.anchors) for lv in scene.levels), default=3) if scene.levels else 3
    head_elements = cells * max(3, anchors) * (64 + scene.nc)  # the largest head any scheme builds, per element
    if head_elements > MAX_HEAD_ELEMENTS:
        raise TextError("nc", T(
            "{width}x{height} px with {nc} classes needs a prediction head of about {millions:.0f}M values, above "
            "the limit of {limit:.0f}M; use fewer classes or a smaller image", width=scene.width,
            height=scene.height, nc=scene.nc, millions=head_elements / 1e6, limit=MAX_HEAD_ELEMENTS / 1e6))
    if len(scene.boxes) > MAX_BOXES:
        raise TextError("boxes", T("{count} boxes is above the limit of {limit}", count=len(scene.boxes),
                                   limit=MAX_BOXES))
    mx, my = BOX_MARGIN_FRAC * scene.width, BOX_MARGIN_FRAC * scene.height
    for i, box in enumerate(scene.boxes):
        where = f"boxes[{i}]"
        if not _is_int(box.cls) or not 0 <= box.cls < scene.nc:
            raise TextError(f"{where}.cls", T("expected an integer in [0, {max}], got {got}", max=scene.nc - 1,
                                              got=_excerpt(box.cls)))
        for name in ("x1", "y1", "x2", "y2"):
            v = getattr(box, name)
            if not _is_number(v) or not _finite(v):
                raise TextError(f"{where}.{name}", T("expected a finite number, got {got}", got=_excerpt(v)))
        if box.x2 <= box.x1:
            raise TextError(f"{where}.x2", T("must be greater than x1 ({x1:g}), got {x2:g}", x1=box.x1, x2=box.x2))
        if box.y2 <= box.y1:
            raise TextError(f"{where}.y2", T("must be greater than y1 ({y1:g}), got {y2:g}", y1=box.y1, y2=box.y2))
        if box.x1 < -mx or box.y1 < -my or box.x2 > scene.width + mx or box.y2 > scene.height + my:
            raise TextError(where, T("lies outside the image by more than the allowed margin ({margin:g} of the "
                                     "image side)", margin=BOX_MARGIN_FRAC))
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        if not (0 <= cx <= scene.width and 0 <= cy <= scene.height):
            raise TextError(where, T("its centre ({cx:g}, {cy:g}) lies outside the image", cx=cx, cy=cy))
    if not isinstance(scene.params, Mapping):
        raise TextError("params", T("expected an object"))
    params: dict[str, Any] = {}
    for name, value in scene.params.items():
        params[name] = spec.param(name).validate(value)
    for p in spec.params:
        params.setdefault(p.name, p.default)
    if not _is_int(scene.seed) or not 0 <= scene.seed < 2**31:
        raise TextError("predictions.seed", T("expected an integer in [0, 2^31), got {got}", got=_excerpt(scene.seed)))
    if not _is_number(scene.progress) or not _finite(scene.progress) or not 0.0 <= scene.progress <= 1.0:
        raise TextError("predictions.progress", T("expected a number in [0, 1], got {got}",
                                                  got=_excerpt(scene.progress)))
    _validate_pins(scene, spec)
    resolve_device(scene.device)
    return Scene(
        scheme=scene.scheme, width=scene.width, height=scene.height, nc=scene.nc,
        boxes=tuple(scene.boxes), params=params, seed=scene.seed, progress=float(scene.progress),
        pins=tuple(scene.pins), device=scene.device, levels=scene.levels,
    )


MAX_LEVELS = 6
MAX_ANCHORS = 9
MAX_STRIDE = 256


def _validate_levels(scene: Scene, spec: SchemeSpec) -> None:
    """Custom levels: only for schemes that declare them; 1..6 levels of increasing stride (2..256 px),
    each with the same number (1..9) of anchors of positive finite size."""
    if scene.levels is None:
        return
    if not spec.custom_levels:
        raise TextError("levels", T("scheme {scheme} has fixed levels; custom levels are for anchor-based schemes",
                                    scheme=repr(spec.name)))
    levels = scene.levels
    if not isinstance(levels, tuple) or not 1 <= len(levels) <= MAX_LEVELS:
        raise TextError("levels", T("expected 1 to {max} levels, got {got}", max=MAX_LEVELS,
                                    got=len(levels) if isinstance(levels, tuple) else repr(levels)))
    previous = 0
    for i, level in enumerate(levels):
        where = f"levels[{i}]"
        if not _is_int(level.stride) or not 2 <= level.stride <= MAX_STRIDE:
            raise TextError(f"{where}.stride", T("expected an integer in [2, {max}] px, got {got}", max=MAX_STRIDE,
                                                 got=_excerpt(level.stride)))
        if level.stride <= previous:
            raise TextError(f"{where}.stride", T("strides must increase from level to level ({previous} then {stride})",
                                                 previous=previous, stride=level.stride))
        previous = level.stride
        if not 1 <= len(level.anchors) <= MAX_ANCHORS:
            raise TextError(f"{where}.anchors", T("expected 1 to {max} anchors, got {got}", max=MAX_ANCHORS,
                                                  got=len(level.anchors)))
        if len(level.anchors) != len(levels[0].anchors):
            raise TextError(f"{where}.anchors", T("every level needs the same number of anchors ({first} on level "
                                                  "0, {here} here)", first=len(levels[0].anchors),
                                                  here=len(level.anchors)))
        for a, wh in enumerate(level.anchors):
            if len(wh) != 2 or not all(_is_number(v) and _finite(v) and 0 < v <= MAX_IMAGE_SIDE * 2 for v in wh):
                raise TextError(f"{where}.anchors[{a}]", T("expected (w, h) in pixels, each in (0, {max}], got {got}",
                                                           max=MAX_IMAGE_SIDE * 2, got=_excerpt(wh)))


def scene_levels(scene: Scene, spec: SchemeSpec) -> tuple[tuple[int, ...], tuple[tuple[tuple[float, float], ...], ...] | None]:
    """The strides and anchors (px per level) a scene runs with: its own levels, else the scheme's."""
    if scene.levels:
        return tuple(lv.stride for lv in scene.levels), tuple(tuple((float(w), float(h)) for w, h in lv.anchors)
                                                              for lv in scene.levels)
    return tuple(spec.strides), spec.anchors_px


def _validate_pins(scene: Scene, spec: SchemeSpec) -> None:
    """Pins name a slot that exists (level, anchor and cell inside the scheme's grids) and a box
    with finite centre and positive finite size."""
    if len(scene.pins) > MAX_PINS:
        raise TextError("predictions.pins", T("{count} pins is above the limit of {limit}", count=len(scene.pins),
                                              limit=MAX_PINS))
    for index, pin in enumerate(scene.pins):
        where = f"predictions.pins[{index}]"
        for name in ("level", "anchor", "gi", "gj"):
            value = getattr(pin, name)
            if not _is_int(value) or value < 0:
                raise TextError(f"{where}.{name}", T("expected a non-negative integer, got {got}", got=_excerpt(value)))
        for name in ("cx", "cy", "w", "h"):
            value = getattr(pin, name)
            if not _is_number(value) or not _finite(value):
                raise TextError(f"{where}.{name}", T("expected a finite number, got {got}", got=_excerpt(value)))
        if spec.kind == "queries":  # a pin moves one query's predicted box: level 0, anchor = query, cell (0, 0)
            queries = int(scene.params.get("num_queries", next((p.default for p in spec.params
                                                               if p.name == "num_queries"), 100)))
            if pin.level != 0 or pin.gi != 0 or pin.gj != 0:
                raise TextError(where, T("a query pin has level 0 and cell (0, 0); the query index goes in anchor"))
            if pin.anchor >= queries:
                raise TextError(f"{where}.anchor", T("query {query} does not exist (there are {queries} queries)",
                                                     query=pin.anchor, queries=queries))
            for name in ("w", "h"):
                if not getattr(pin, name) > 0:
                    raise TextError(f"{where}.{name}", T("must be positive, got {got:g}", got=getattr(pin, name)))
            continue
        strides, anchors_px = scene_levels(scene, spec)
        if pin.level >= len(strides):
            raise TextError(f"{where}.level", T("{level} is not a level of this scene (it has {count})",
                                                level=pin.level, count=len(strides)))
        stride = strides[pin.level]
        rows, columns = scene.height // stride, scene.width // stride
        anchors = 1 if anchors_px is None else len(anchors_px[pin.level])
        if pin.anchor >= anchors:
            raise TextError(f"{where}.anchor", T("{anchor} is not an anchor of level {level} (it has {count})",
                                                 anchor=pin.anchor, level=pin.level, count=anchors))
        if pin.gi >= columns:
            raise TextError(f"{where}.gi", T("column {gi} is outside the {columns}-column grid", gi=pin.gi,
                                             columns=columns))
        if pin.gj >= rows:
            raise TextError(f"{where}.gj", T("row {gj} is outside the {rows}-row grid", gj=pin.gj, rows=rows))
        for name in ("w", "h"):
            if not getattr(pin, name) > 0:
                raise TextError(f"{where}.{name}", T("must be positive, got {got:g}", got=getattr(pin, name)))


def boxes_to_targets(scene: Scene, device: torch.device) -> torch.Tensor:
    """Target rows ``(N, 6)`` = (image 0, class, cx, cy, w, h), normalised as YOLOv5's loader does.

    ``cx`` and ``w`` are divided by the image width, ``cy`` and ``h`` by the height, in float32
    (``xyxy2xywhn``), so a centre exactly on a cell edge behaves as it does in training.
    """
    if not scene.boxes:
        return torch.zeros((0, 6), dtype=torch.float32, device=device)
    xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32)
    w, h = float(scene.width), float(scene.height)
    cls = torch.tensor([float(b.cls) for b in scene.boxes], dtype=torch.float32)
    rows = torch.stack(
        [
            torch.zeros_like(cls),
            cls,
            ((xyxy[:, 0] + xyxy[:, 2]) / 2) / w,
            ((xyxy[:, 1] + xyxy[:, 3]) / 2) / h,
            (xyxy[:, 2] - xyxy[:, 0]) / w,
            (xyxy[:, 3] - xyxy[:, 1]) / h,
        ],
        dim=1,
    )  # (N, 6)
    return rows.to(device)
