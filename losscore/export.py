"""The export document: a scene's result and trace as plain JSON values.

:func:`run_scene` validates a scene and runs its scheme; :func:`result_to_dict` turns the run into
the explain response of ``docs/api-contract.md`` (positives as rows, maps as base64 float32, losses
as floats, the loss composition, the checks, stages with their tensors); :func:`build_export`
wraps the complete result (every map, every stage tensor with all its data) with the scene, the
library versions and the upstream pin. :mod:`losscore.verify` replays such a document.

Every value returned is plain Python (``json.dumps`` works); the web layer may ask for float32
numpy arrays instead (``arrays=True``, see :mod:`losscore.wire`). No web framework is imported.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from . import registry
from .mmdet.loss import py_focal_loss_with_prob
from .scene import Box, Check, LevelSpec, LossComposition, Pin, Scene, SceneResult, SchemeSpec, stage_parts
from .target_spec import TargetColumn, TargetTable
from .text import T, render
from .trace import Trace, encode_tensor
from .wire import LazyFlat, batch_stats, dtype_name, encode_map, flat_values, numpy_flat, plain, plain_float

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_STAGE_DATA",
    "FOCAL_CURVE_POINTS",
    "Run",
    "scene_to_dict",
    "scene_from_dict",
    "run_scene",
    "result_to_dict",
    "build_export",
    "lazy_data",
    "focal_state",
    "library_versions",
]

FORMAT = "losslab-trace"
VERSION = 2  # 2: declared contract (composition, checks, counts, focal, stage phase/level/step)
DEFAULT_STAGE_DATA = 64  # explain: a stage tensor carries its data when it has at most this many elements
FOCAL_CURVE_POINTS = 101
FIGURE1_P_T = (0.1, 0.5, 0.9)  # RetinaNet Figure 1's marked probabilities


# -- scenes ---------------------------------------------------------------------------------
def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """The scene as the request body of ``POST /api/v1/explain`` (docs/api-contract.md)."""
    return {
        "scheme": scene.scheme,
        "image": {"width": scene.width, "height": scene.height},
        "nc": scene.nc,
        "boxes": [{"cls": b.cls, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in scene.boxes],
        "params": plain(dict(scene.params)),
        "predictions": {
            "seed": scene.seed,
            "progress": scene.progress,
            "pins": [
                {"level": p.level, "anchor": p.anchor, "gi": p.gi, "gj": p.gj,
                 "cx": p.cx, "cy": p.cy, "w": p.w, "h": p.h}
                for p in scene.pins
            ],
        },
        "device": scene.device,
        **({} if scene.levels is None else
           {"levels": [{"stride": lv.stride, "anchors": [list(a) for a in lv.anchors]} for lv in scene.levels]}),
    }


def _field(obj: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where or 'scene'}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        if default is ...:
            raise ValueError(f"{where}.{key}: missing" if where else f"{key}: missing")
        return default
    return obj[key]


def scene_from_dict(body: Mapping[str, Any]) -> Scene:
    """A :class:`Scene` from a request body (not yet validated: see :func:`losscore.registry.validate`).

    Raises ``ValueError`` naming the field when the structure itself is wrong.
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"scene: expected an object, got {type(body).__name__}")
    image = _field(body, "image", "")
    boxes_in = _field(body, "boxes", "", [])
    if not isinstance(boxes_in, list):
        raise ValueError("boxes: expected a list")
    boxes = []
    for i, b in enumerate(boxes_in):
        where = f"boxes[{i}]"
        boxes.append(Box(cls=_field(b, "cls", where), x1=_field(b, "x1", where), y1=_field(b, "y1", where),
                         x2=_field(b, "x2", where), y2=_field(b, "y2", where)))
    predictions = body.get("predictions") or {}
    pins_in = _field(predictions, "pins", "predictions", [])
    if not isinstance(pins_in, list):
        raise ValueError("predictions.pins: expected a list")
    pins = []
    for i, p in enumerate(pins_in):
        where = f"predictions.pins[{i}]"
        pins.append(Pin(**{k: _field(p, k, where) for k in ("level", "anchor", "gi", "gj", "cx", "cy", "w", "h")}))
    params = body.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError("params: expected an object")
    levels = body.get("levels")
    if levels is not None:
        if not isinstance(levels, list):
            raise ValueError("levels: expected a list")
        levels = tuple(LevelSpec(_field(lv, "stride", f"levels[{i}]"),
                                 tuple(tuple(a) for a in _field(lv, "anchors", f"levels[{i}]")))
                       for i, lv in enumerate(levels))
    return Scene(
        scheme=_field(body, "scheme", ""),
        width=_field(image, "width", "image"),
        height=_field(image, "height", "image"),
        nc=_field(body, "nc", ""),
        boxes=tuple(boxes),
        params=dict(params),
        seed=_field(predictions, "seed", "predictions", 0),
        progress=_field(predictions, "progress", "predictions", 0.5),
        pins=tuple(pins),
        device=body.get("device", "auto"),
        levels=levels,
    )


@dataclass
class Run:
    """A validated scene, what its scheme returned, and how long the computation took."""

    scene: Scene
    result: SceneResult
    compute_ms: float
    trace: Trace = field(default_factory=Trace)


def run_scene(scene: Scene, device: str | None = None, record: bool = True, *, validated: bool = False) -> Run:
    """Validate ``scene`` (optionally forcing ``device``), run its scheme, time it.

    ``record=False`` passes no trace recorder (the run's ``trace`` is then empty); the outputs are
    the same bits either way. ``validated=True``: the scene is what
    :func:`losscore.registry.validate` returned (and ``device`` is None), so it is not checked again.

    The scheme runs under ``torch.inference_mode()``: the run exists to be read and serialised, and
    inference mode skips autograd's bookkeeping on each of a scene's ~600 small ops (same bits as
    ``no_grad``). Its tensors are therefore inference tensors: fine to read, convert and compute
    from, not to modify in place or to feed to autograd (``losscore.registry.explain`` returns
    normal tensors for that).
    """
    if device is not None:
        scene = dataclasses.replace(scene, device=device)
        validated = False
    if not validated:
        scene = registry.validate(scene)
    trace = Trace()
    start = time.perf_counter()
    with torch.inference_mode():  # the run is only read and serialised; ~10% less dispatch overhead
        result = registry.get_scheme(scene.scheme).explain(scene, trace if record else None)
    if result.device.startswith("cuda"):
        torch.cuda.synchronize()
    compute_ms = (time.perf_counter() - start) * 1e3
    return Run(scene=scene, result=result, compute_ms=compute_ms,
               trace=result.trace if result.trace is not None else trace)


# -- the explain document -------------------------------------------------------------------
def _column_rows(tensor: torch.Tensor, arrays: bool) -> Any:
    """One positives column as per-row values: scalars for a (P,) column, a list of k values per
    row for a (P, k) one."""
    if tensor.dim() <= 1:
        return flat_values(numpy_flat(tensor), arrays=arrays)
    array = numpy_flat(tensor).reshape(tensor.shape[0], math.prod(tensor.shape[1:]))  # (P, k); P may be 0
    values = flat_values(array.reshape(-1), arrays=arrays)
    if isinstance(values, np.ndarray):
        return list(array)  # row views, no copy
    width = array.shape[1]
    return [values[i * width:(i + 1) * width] for i in range(array.shape[0])]


def _rows(table: Mapping[str, torch.Tensor], arrays: bool) -> list[dict[str, Any]]:
    """A table of columns (each (R,) or (R, k)) as R row dicts."""
    columns = {name: _column_rows(tensor, arrays) for name, tensor in table.items()}
    keys = list(columns)
    return [dict(zip(keys, row)) for row in zip(*columns.values())]


def _positive_rows(result: SceneResult, spec: SchemeSpec, only: Iterable[str] | None, arrays: bool,
                   layout: str = "rows") -> list[dict[str, Any]] | dict[str, Any]:
    """The positives table: a list of row dicts (``layout="rows"``), or ``{"layout": "columns",
    "count": P, "columns": {name: P values}}`` (a (P, k) column as P lists of k; ``rule`` as an
    index into ``rule_names``): the same table in a fifth of the bytes, which the page asks for
    while a box is dragged (a crowded focal scene has thousands of rows)."""
    if layout not in ("rows", "columns"):
        raise ValueError(f"layout: expected 'rows' or 'columns', got {layout!r}")
    wanted = None if only is None else set(only)
    chosen = {name: tensor for name, tensor in result.positives.items() if wanted is None or name in wanted}
    if layout == "columns":
        count = next(iter(result.positives.values())).shape[0] if result.positives else 0
        columns = {}
        for name, tensor in chosen.items():
            if tensor.dim() <= 1:
                columns[name] = flat_values(numpy_flat(tensor), arrays=arrays)
            else:
                columns[name] = _column_rows(tensor, arrays)  # P lists of k values
        return {"layout": "columns", "count": int(count), "columns": columns}
    columns = {name: _column_rows(tensor, arrays) for name, tensor in chosen.items()}
    if "rule" in columns:
        names = spec.rule_names
        columns["rule"] = [names[i] if isinstance(i, int) and 0 <= i < len(names) else i for i in columns["rule"]]
    if not columns:
        return []
    keys = list(columns)
    return [dict(zip(keys, row)) for row in zip(*columns.values())]


def _number(value: torch.Tensor | float | None) -> float | str | None:
    return None if value is None else plain_float(float(value))


def composition_to_dict(composition: LossComposition | None, spec: SchemeSpec, lang: str = "en"
                        ) -> dict[str, Any] | None:
    """The loss composition with the declared labels next to each number."""
    if composition is None:
        return None
    labels = {} if spec.losses is None else {t.name: t for t in spec.losses.terms}
    terms = []
    for term in composition.terms:
        label = labels.get(term.name)
        terms.append({
            "name": term.name,
            "doc": "" if label is None else render(label.doc, lang),
            "parts": [{"label": render(p.label, lang), "raw": _number(p.raw), "factor": p.factor,
                       "value": _number(p.raw if p.value is None else p.value)} for p in term.parts],
            "part_factor": "" if label is None else render(label.part_factor, lang),
            "sum": _number(term.sum),
            "divisor": term.divisor,
            "divisor_label": "" if label is None else render(label.divisor, lang),
            "normalised": _number(term.normalised if term.normalised is not None else term.sum),
            "gain": term.gain,
            "gain_label": "" if label is None else render(label.gain, lang),
            "value": _number(term.value),
        })
    return {
        "terms": terms,
        "sum": _number(composition.sum),
        "multiplier": composition.multiplier,
        "multiplier_label": "" if spec.losses is None else render(spec.losses.multiplier, lang),
        "formula": "" if spec.losses is None else render(spec.losses.formula, lang),
        "total": _number(composition.total),
    }


def _counts(result: SceneResult, spec: SchemeSpec) -> dict[str, Any]:
    """How many positives per level × anchor, per level, per box and rule: counted here, not in the page.
    One ``bincount`` per table (a crowded scene has hundreds of boxes × rules × levels)."""
    positives = result.positives
    gt, rule = positives["gt"].cpu().long(), positives["rule"].cpu().long()
    if spec.kind == "queries":  # matched (query, target) pairs: no levels or anchors to count by
        level = anchor = torch.zeros_like(gt)
    else:
        level, anchor = positives["level"].cpu().long(), positives["anchor"].cpu().long()
    L = len(result.levels)
    widths = [1 if info.anchors_px is None else int(info.anchors_px.shape[0]) for info in result.levels]
    A = max(widths, default=1)
    table = torch.bincount(level * A + anchor, minlength=L * A)[:L * A].reshape(L, A).tolist() if gt.numel() \
        else [[0] * A for _ in range(L)]
    per_level_anchor = [row[:width] for row, width in zip(table, widths)]
    boxes = 0 if result.box_cells is None else int(result.box_cells.shape[0])
    boxes = max(boxes, int(gt.max()) + 1 if gt.numel() else 0, len(result.targets) if result.targets is not None else 0)
    R = len(spec.rule_names)
    by_rule = torch.bincount(gt * R + rule, minlength=boxes * R)[:boxes * R].reshape(boxes, R).tolist() \
        if gt.numel() else [[0] * R for _ in range(boxes)]
    by_level = torch.bincount(gt * L + level, minlength=boxes * L)[:boxes * L].reshape(boxes, L).tolist() \
        if gt.numel() else [[0] * L for _ in range(boxes)]
    per_box = [{"gt": index, "total": sum(by_level[index]),
                "by_rule": {name: n for name, n in zip(spec.rule_names, by_rule[index]) if n},
                "per_level": by_level[index]} for index in range(boxes)]
    split = None
    if spec.split is not None and spec.split.column in positives:
        column = positives[spec.split.column].cpu()
        split = [{"value": value, "total": int((column == value).sum()),
                  "per_level": torch.bincount(level[column == value], minlength=L)[:L].tolist()}
                 for value, _ in spec.split.values]
    return {"total": int(gt.numel()), "per_level": [sum(row) for row in per_level_anchor],
            "per_level_anchor": per_level_anchor, "per_box": per_box, "split": split}


def focal_state(spec: SchemeSpec, params: Mapping[str, Any], result: SceneResult | None = None,
                arrays: bool = False, lang: str = "en", columns: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Whether the scheme's focal wrapper is on for these parameters, its gamma and alpha, and the curve
    the page draws: the loss of one positive element against its ``p_t`` (plain BCE when it is off),
    with RetinaNet Figure 1's ``p_t`` = 0.1, 0.5, 0.9 as exact marks. ``points``: the positives' own
    (``p_t``, loss) columns, when ``columns`` (``None``: all) has both (a drag's grid-only answer has not)."""
    focal = spec.focal
    if focal is None:
        return None
    gamma = float(params[focal.gamma])
    on = gamma > 0 or not focal.off_at_zero
    alpha = None
    if on:
        alpha = float(params[focal.alpha]) if focal.alpha is not None else focal.alpha_value
    used_gamma = gamma if on else 0.0
    p_t = torch.linspace(0.0, 1.0, FOCAL_CURVE_POINTS + 2)[1:-1]  # (points,) the open interval (0, 1)
    marks_p = torch.tensor(FIGURE1_P_T)
    marks, marks_no_alpha = _positive_loss(marks_p, used_gamma, alpha), _positive_loss(marks_p, used_gamma, None)
    state: dict[str, Any] = {
        "on": on, "gamma": gamma, "alpha": alpha, "gamma_param": focal.gamma, "alpha_param": focal.alpha,
        "applies_to": render(focal.applies_to, lang),
        "formula": render("-α·(1 - p_t)^γ·ln p_t" if on and alpha is not None else
                          "-(1 - p_t)^γ·ln p_t" if on else "-ln p_t (plain BCE: the focal wrapper is off at γ = 0)", lang),
        "curve": {"p_t": flat_values(numpy_flat(p_t), arrays=arrays),
                  "loss": flat_values(numpy_flat(_positive_loss(p_t, used_gamma, alpha)), arrays=arrays),
                  "ce": flat_values(numpy_flat(_positive_loss(p_t, 0.0, None)), arrays=arrays)},
        "marks": [{"p_t": float(p), "loss": plain_float(float(v)), "loss_without_alpha": plain_float(float(w))}
                  for p, v, w in zip(marks_p.tolist(), marks, marks_no_alpha)],
        "points": None,
    }
    if result is not None and focal.points is not None:
        x_name, y_name = focal.points
        shown = result.positives if columns is None else set(columns)
        if x_name in result.positives and y_name in result.positives and x_name in shown and y_name in shown:
            state["points"] = {"x": x_name, "y": y_name,
                               "p_t": flat_values(numpy_flat(result.positives[x_name]), arrays=arrays),
                               "loss": flat_values(numpy_flat(result.positives[y_name]), arrays=arrays)}
    return state


def _positive_loss(p_t: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """The loss of a positive element with probability ``p_t``: mmdet's ``py_focal_loss_with_prob``
    with ``alpha``, or without an alpha factor ``(1 - p_t)^gamma * BCE`` (plain BCE at gamma 0)."""
    positive = torch.ones_like(p_t)
    if alpha is None:
        ce = F.binary_cross_entropy(p_t, positive, reduction="none")
        return ce if gamma == 0 else (1 - p_t).pow(gamma) * ce
    return py_focal_loss_with_prob(p_t[:, None], positive[:, None], gamma=gamma, alpha=alpha, reduction="none")[:, 0]


def check_filter(selector: bool | str | None) -> "Callable[[Check], bool] | None":
    """Which checks a request wants: ``True``/``"all"`` every one, ``False``/``None``/``"none"`` none,
    else a comma-separated list of ``box:N`` (the tests about box N) and ``cell:L:gi:gj`` (the tests
    about that cell of level L), any of which selects a check. ``ValueError`` for anything else."""
    if selector in (True, "all", "1", "true"):
        return lambda check: True
    if selector in (False, None, "", "none", "0", "false"):
        return None
    boxes: set[int] = set()
    cells: set[tuple[int, int, int]] = set()
    for part in str(selector).split(","):
        kind, _, rest = part.strip().partition(":")
        numbers = rest.split(":")
        if not all(n.lstrip("-").isdigit() for n in numbers):
            raise ValueError(f"checks: {part.strip()[:40]!r} is not box:N or cell:L:gi:gj")
        if kind == "box" and len(numbers) == 1:
            boxes.add(int(numbers[0]))
        elif kind == "cell" and len(numbers) == 3:
            cells.add(tuple(int(n) for n in numbers))
        else:
            raise ValueError(f"checks: {part.strip()[:40]!r} is not box:N or cell:L:gi:gj")
    return lambda check: check.gt in boxes or (check.level, check.gi, check.gj) in cells


def _box_dict(box: Box) -> dict[str, Any]:
    """A drawn box in both formats: corners (x1, y1, x2, y2) and centre and size (cx, cy, w, h), px."""
    return {"cls": box.cls, "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2,
            "cx": (box.x1 + box.x2) / 2, "cy": (box.y1 + box.y2) / 2, "w": box.x2 - box.x1, "h": box.y2 - box.y1}


def _checks_to_list(result: SceneResult, checks: bool | str | None, lang: str) -> list[dict[str, Any]]:
    wanted = check_filter(checks)
    if wanted is None:
        return []
    return [_check_to_dict(c, lang) for c in result.check_list() if wanted(c)]


def _where(check: Check, result: SceneResult, spec: SchemeSpec, lang: str) -> str:
    """Where a check is, in words: "P3 (20, 28)", "P4 (13, 17) anchor 2", or "query 7"."""
    if spec.kind == "queries":
        return render(T("query {q}", q=check.anchor), lang)
    level = result.levels[check.level] if 0 <= check.level < len(result.levels) else None
    name = level.name if level is not None else f"L{check.level}"
    anchors = 1 if level is None or level.anchors_px is None else int(level.anchors_px.shape[0])
    if anchors > 1:
        return render(T("{level} ({gi}, {gj}) anchor {anchor}", level=name, gi=check.gi, gj=check.gj,
                        anchor=check.anchor), lang)
    return f"{name} ({check.gi}, {check.gj})"


def _sort_value(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return math.inf if math.isnan(value) else float(value)  # NaN rows go last
    return math.inf


def target_to_dict(result: SceneResult, spec: SchemeSpec, scene: Scene, gt: int, lang: str = "en") -> dict[str, Any] | None:
    """The box panel of box ``gt`` (``None`` when there is no such box): its positives counted, the
    facts, verdicts, tables, histogram its :class:`~losscore.target_spec.TargetSpec` declares, built
    from the box's checks. Every number is computed here; the page formats."""
    if not 0 <= gt < len(scene.boxes):
        return None
    declared = spec.target
    mine = [c for c in result.check_list() if c.gt == gt]
    by_test: dict[str, list[Check]] = {}
    for check in mine:
        by_test.setdefault(check.test, []).append(check)
    counts = _counts(result, spec)["per_box"]
    count = counts[gt] if gt < len(counts) else {"gt": gt, "total": 0, "by_rule": {}, "per_level": []}
    facts = []
    for fact in declared.facts:
        first = next((c for c in by_test.get(fact.test, ()) if fact.key in c.values), None)
        if first is not None:
            facts.append({"label": render(fact.label, lang), "value": plain(first.values[fact.key]), "unit": fact.unit})
    verdicts = [render(c.text, lang) for test in declared.verdicts for c in by_test.get(test, ())]
    tables = []
    tests_declared = {table.test for table in declared.tables}
    auto = [] if not declared.auto else [test for test in by_test if test not in tests_declared]
    for table in (*declared.tables, *(TargetTable(test, test) for test in auto)):
        checks = by_test.get(table.test, [])
        if not checks:
            continue
        columns = table.columns or tuple(TargetColumn(key, key) for key in dict.fromkeys(
            k for c in checks for k in c.values))
        if table.sort:
            checks = sorted(checks, key=lambda c: _sort_value(c.values.get(table.sort)), reverse=table.descending)
        shown = checks[:table.limit]
        tables.append({
            "test": table.test, "title": render(table.title, lang), "doc": render(table.doc, lang),
            "columns": [c.to_dict(lang) for c in columns], "total": len(checks), "shown": len(shown),
            "passed": sum(1 for c in checks if c.passed), "failed": sum(1 for c in checks if not c.passed),
            "rows": [{"level": c.level, "anchor": c.anchor, "gi": c.gi, "gj": c.gj, "where": _where(c, result, spec, lang),
                      "passed": c.passed, "label": render(c.label, lang), "text": render(c.text, lang),
                      "values": [plain(c.values.get(col.key)) for col in columns]} for c in shown],
        })
    histogram = None
    if declared.histogram is not None:
        h = declared.histogram
        checks = [c for c in by_test.get(h.test, ()) if isinstance(c.values.get(h.key), (int, float))]
        lo, hi = h.range
        edges = torch.linspace(lo, hi, h.bins + 1, dtype=torch.float64)
        values = torch.tensor([float(c.values[h.key]) for c in checks], dtype=torch.float64)
        passed = torch.tensor([bool(c.passed) for c in checks], dtype=torch.bool)
        index = ((values - lo) / (hi - lo) * h.bins).floor().clamp(0, h.bins - 1).long()
        first = checks[0].values if checks else {}
        histogram = {
            "title": render(h.title, lang), "edges": edges.tolist(), "centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
            "width": (hi - lo) / h.bins, "range": [lo, hi],
            "passed": torch.bincount(index[passed], minlength=h.bins).tolist(),
            "failed": torch.bincount(index[~passed], minlength=h.bins).tolist(),
            "passed_label": render(h.passed, lang), "failed_label": render(h.failed, lang), "count": len(checks),
            "lines": [{"label": render(label, lang), "key": key, "value": plain(first[key]), "main": i == len(h.lines) - 1}
                      for i, (key, label) in enumerate(h.lines) if key in first],
        }
    return {"gt": gt, "box": _box_dict(scene.boxes[gt]), "positives": count["total"], "by_rule": count["by_rule"],
            "per_level": count["per_level"], "facts": facts, "verdicts": verdicts, "tables": tables,
            "histogram": histogram}


def target_maps(result: SceneResult, spec: SchemeSpec, gt: int, names: Iterable[str]) -> dict[str, list[torch.Tensor]]:
    """The box panel's heat layers for box ``gt``: each declared :class:`~losscore.target_spec.TargetMap`
    in ``names`` as one ``(A, H, W)`` float32 tensor per level, the value of the box's check of that
    test at its cell, NaN where the box has none."""
    wanted = [m for m in spec.target.maps if m.name in set(names)]
    if not wanted or spec.kind != "grid":
        return {}
    checks = [c for c in result.check_list() if c.gt == gt]
    out = {}
    for declared in wanted:
        levels = []
        for info in result.levels:
            anchors = 1 if info.anchors_px is None else int(info.anchors_px.shape[0])
            levels.append(torch.full((anchors, int(info.grid[0]), int(info.grid[1])), math.nan, dtype=torch.float32))
        for c in checks:
            value = c.values.get(declared.key)
            if c.test == declared.test and isinstance(value, (int, float)) and 0 <= c.level < len(levels):
                grid = levels[c.level]
                if 0 <= c.anchor < grid.shape[0] and 0 <= c.gj < grid.shape[1] and 0 <= c.gi < grid.shape[2]:
                    grid[c.anchor, c.gj, c.gi] = float(value)
        out[declared.name] = levels
    return out


def _check_to_dict(check: Check, lang: str) -> dict[str, Any]:
    return {"gt": check.gt, "level": check.level, "anchor": check.anchor, "gi": check.gi, "gj": check.gj,
            "test": check.test, "passed": check.passed, "text": render(check.text, lang),
            "label": render(check.label, lang), "values": plain(dict(check.values))}


def result_to_dict(
    run: Run,
    *,
    maps: Iterable[str] | None = None,
    stage_data: int | None = DEFAULT_STAGE_DATA,
    stages: bool = True,
    columns: Iterable[str] | None = None,
    checks: bool | str = True,
    arrays: bool = False,
    lang: str = "en",
    target: int | None = None,
    layout: str = "rows",
) -> dict[str, Any]:
    """The ``POST /api/v1/explain`` response for a run.

    ``stages=False`` leaves the stage list empty and ``checks=False`` the check list; ``columns``
    keeps only those positives columns (``None``: all of them; the API passes the scheme's
    default set unless asked). ``maps``: names of the maps to
    include (``None``: all of them). ``stage_data``: a stage tensor carries its flat ``data`` only
    when it has at most this many elements (``None``: always). ``arrays``: see :mod:`losscore.wire`.
    ``lang``: the language of every text (notes, checks, stage titles; see :mod:`losscore.text`).
    ``target``: a box index: its declared heat layers (``box.*``, among ``maps``) and, unless
    ``checks`` asks for none, its box panel (:func:`target_to_dict`). ``layout``: the positives as
    row dicts (``"rows"``) or as columns (``"columns"``, see :func:`_positive_rows`).
    """
    result, scene = run.result, run.scene
    spec = registry.get_scheme(scene.scheme)
    wanted = list(result.maps) if maps is None else [m for m in maps if m in result.maps]
    box_maps = {} if target is None else target_maps(
        result, spec, target, [m.name for m in spec.target.maps] if maps is None else maps)
    return {
        "scheme": scene.scheme,
        "family": spec.family,
        "device": result.device,
        "compute_ms": round(run.compute_ms, 3),
        "scene": scene_to_dict(scene),
        "image": {"width": scene.width, "height": scene.height},
        "levels": [
            {
                "name": level.name,
                "stride": int(level.stride),
                "grid": [int(level.grid[0]), int(level.grid[1])],
                "anchors": None if level.anchors_px is None else plain(level.anchors_px),
            }
            for level in result.levels
        ],
        "rule_names": list(spec.rule_names),
        "boxes": [_box_dict(b) for b in scene.boxes],
        "positives": _positive_rows(result, spec, columns, arrays, layout),
        "counts": _counts(result, spec),
        "maps": {name: {"levels": [encode_map(t) for t in levels]}
                 for name, levels in [*((n, result.maps[n]) for n in wanted), *box_maps.items()]},
        "losses": {name: plain_float(float(value)) for name, value in result.losses.items()},
        "composition": composition_to_dict(result.composition, spec, lang),
        "focal": focal_state(spec, scene.params, result, arrays, lang, columns),
        "box_cells": None if result.box_cells is None else result.box_cells.tolist(),
        "queries": None if result.queries is None else _rows(result.queries, arrays),
        "matrices": None if result.matrices is None else {name: encode_map(m) for name, m in result.matrices.items()},
        "checks": _checks_to_list(result, checks, lang),
        "target": None if target is None or check_filter(checks) is None
        else target_to_dict(result, spec, scene, target, lang),
        "notes": [render(n, lang) for n in result.notes],
        "stages": _stages_to_list(run.trace, stage_data, arrays, _stage_cells(result, lang), lang) if stages else [],
    }


MAX_STAGE_CELLS = 1000  # per stage in the explain response (a crowded focal scene has thousands)


def _stage_cells(result: SceneResult, lang: str) -> Mapping[str, list[dict[str, Any]]]:
    if result.stage_cells is None:
        return {}
    return {name: [{"gt": c.gt, "level": c.level, "anchor": c.anchor, "gi": c.gi, "gj": c.gj,
                    "label": render(c.label, lang)}
                   for c in cells[:MAX_STAGE_CELLS]] for name, cells in result.stage_cells().items()}


_LAZY_DATA: ContextVar[int | None] = ContextVar("losscore_export_lazy_data", default=None)


@contextmanager
def lazy_data(min_elements: int = 4096) -> Iterator[None]:
    """Inside the block, :func:`result_to_dict` and :func:`build_export` give the data of each stage
    tensor of more than ``min_elements`` values as a :class:`~losscore.wire.LazyFlat` (a view of the
    recorded tensor) instead of a list or array, for a writer that streams the document piece by
    piece (``app.serialize.iter_json``); the document it writes is the same bytes."""
    token = _LAZY_DATA.set(min_elements)
    try:
        yield
    finally:
        _LAZY_DATA.reset(token)


def _stage_data(array: np.ndarray, finite: bool, arrays: bool) -> Any:
    lazy = _LAZY_DATA.get()
    if lazy is not None and array.size > lazy:
        return LazyFlat(array, finite, arrays)
    return flat_values(array, finite, arrays)


def _stages_to_list(trace: Trace, stage_data: int | None, arrays: bool = False,
                    cells: Mapping[str, list[dict[str, Any]]] | None = None, lang: str = "en") -> list[dict[str, Any]]:
    """Every stage as ``{name, phase, level, step, title, explain, code, values, tensors}``; each
    tensor with its dims, dtype, shape, min/max/mean and (when it has at most ``stage_data``
    elements) its data."""
    stages = list(trace)
    recorded = [(key, rec) for stage in stages for key, rec in stage.tensors.items()]
    flats = [numpy_flat(rec.value) for _, rec in recorded]
    with np.errstate(all="ignore"):  # NaN and inf are legitimate recorded values
        stats = batch_stats(flats)
        tensors = []
        for (key, rec), array, stat in zip(recorded, flats, stats):
            t = rec.value
            dtype = dtype_name(t.dtype) or encode_tensor(t.reshape(-1)[:0])["dtype"]
            keep = stage_data is None or array.size <= stage_data
            # min and max are finite exactly when every value is (NaN and inf reach them)
            finite = isinstance(stat["min"], float) and isinstance(stat["max"], float) if array.size else True
            tensors.append({"name": key, "dims": rec.dims, "dtype": dtype, "shape": list(t.shape),
                            "data": _stage_data(array, finite, arrays) if keep else None, **stat})
    out, start = [], 0
    for stage in stages:
        stop = start + len(stage.tensors)
        phase, level, step = stage_parts(stage.name)
        out.append({"name": stage.name, "phase": phase, "level": level, "step": step,
                    "title": render(stage.title, lang), "explain": render(stage.explain, lang), "code": stage.code,
                    "values": plain(stage.values),
                    "tensors": tensors[start:stop], "cells": (cells or {}).get(stage.name, [])})
        start = stop
    return out


def library_versions() -> dict[str, str]:
    try:
        from importlib.metadata import version

        losslab = version("losslab")
    except Exception:  # not installed as a distribution (a bare checkout)
        losslab = "0.1.0"
    return {"losslab": losslab, "torch": torch.__version__, "python": platform.python_version()}


def _upstream(upstream: str) -> dict[str, Any]:
    """``"owner/repo@commit file1, file2"`` (or ``"repo 3.3.0 files"``, a release pin) ->
    ``{"repo", "commit", "files", "pin"}``; ``pin`` is the family's string as written."""
    words = [w for w in re.split(r"[\s,;+]+", upstream) if w]
    if not words:
        return {"repo": "", "commit": "", "files": [], "pin": upstream}
    repo, _, commit = words[0].partition("@")
    rest = words[1:]
    if not commit and rest and re.fullmatch(r"v?\d+(\.\d+)*|[0-9a-f]{7,40}", rest[0]):
        commit, rest = rest[0], rest[1:]
    return {"repo": repo, "commit": commit, "files": rest, "pin": upstream}


def build_export(run: Run, arrays: bool = False, lang: str = "en") -> dict[str, Any]:
    """The downloadable document: scene, params, versions, upstream pin, full result and stages."""
    spec = registry.get_scheme(run.scene.scheme)
    result = result_to_dict(run, maps=None, stage_data=None, arrays=arrays, columns=None, lang=lang)
    stages = result.pop("stages")
    return {
        "format": FORMAT,
        "version": VERSION,
        "scene": result["scene"],
        "params": result["scene"]["params"],
        "library": library_versions(),
        "upstream": _upstream(spec.upstream),
        "result": result,
        "stages": stages,
    }
