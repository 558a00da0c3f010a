"""The export document: a scene's full result and trace as plain JSON values, and its replay.

:func:`result_to_dict` turns a :class:`~losscore.scene.SceneResult` into the explain response of
``docs/api-contract.md`` (positives as rows, maps as base64 little-endian float32, losses as
floats, stages with their tensors). :func:`build_export` wraps the complete result (every map,
every stage tensor with all its data) with the scene, the library versions and the upstream pin.
:func:`verify_export` recomputes the scene of an export with this copy of ``losscore`` and
compares every recorded tensor, map, positive and loss.

Everything here returns plain Python values (dict, list, str, int, float, bool, None) and, for
float32 data whose values are all finite, float32 numpy arrays (written by orjson with
``OPT_SERIALIZE_NUMPY`` in their shortest exact digits: smaller and faster than Python floats);
non-finite floats are the strings ``"nan"``, ``"inf"``, ``"-inf"``. No web framework is imported.
"""
from __future__ import annotations

import base64
import dataclasses
import math
import platform
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
import torch

from .scene import Box, Pin, Scene, SceneResult, get_scheme, validate_scene
from .trace import Trace, decode_tensor, encode_tensor

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_STAGE_DATA",
    "scene_to_dict",
    "scene_from_dict",
    "run_scene",
    "result_to_dict",
    "build_export",
    "verify_export",
    "Mismatch",
    "VerifyReport",
    "library_versions",
    "plain",
    "encode_map",
    "decode_map",
]

FORMAT = "losslab-trace"
VERSION = 1
DEFAULT_STAGE_DATA = 64  # explain: a stage tensor carries its data when it has at most this many elements

# Replay tolerance for floats (the reference vectors' elementwise tolerance); ints and bools are exact.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-6


_HALF = (torch.float16, torch.bfloat16)  # converted to float32 before numpy or lists


# -- plain values ---------------------------------------------------------------------------
def _plain_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python values; tensors become nested lists, non-finite floats strings."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _plain_float(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in _HALF:
            value = value.float()
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    if hasattr(value, "item"):
        return plain(value.item())
    return str(value)


def _finite_or_none(x: float) -> float | str | None:
    return _plain_float(x)


def encode_map(tensor: torch.Tensor) -> dict[str, Any]:
    """One map level ``(A, H, W)`` as ``{"shape", "dtype": "float32", "b64"}`` (little-endian, row-major)."""
    array = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "b64": base64.b64encode(array.astype("<f4", copy=False).tobytes()).decode("ascii"),
    }


def decode_map(obj: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_map` (a float32 CPU tensor)."""
    raw = bytearray(base64.b64decode(obj["b64"]))
    flat = torch.frombuffer(raw, dtype=torch.float32) if raw else torch.zeros(0, dtype=torch.float32)
    return flat.reshape(obj["shape"]).clone()


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.uint8: "uint8",
                torch.int8: "int8", torch.bool: "bool"}  # the names of losscore.trace.encode_tensor


def _numpy(tensor: torch.Tensor):
    """``tensor`` as a flat numpy array (a view when it already is a CPU tensor numpy can read)."""
    if tensor.is_cpu and not tensor.requires_grad and tensor.dtype not in _HALF:
        return tensor.numpy().reshape(-1)  # the common case, ~1 us cheaper than the general one
    t = tensor.detach().cpu()
    if t.dtype in _HALF:
        t = t.float()
    return t.reshape(-1).numpy()


def _flat_values(array, finite: bool | None = None) -> Any:
    """float32 all finite -> the array itself; other floats -> list, non-finite as strings; ints -> list.

    ``finite``: whether every value is finite, when the caller already knows (else it is checked)."""
    if array.dtype.kind == "f":
        if finite is None:
            finite = bool(np.isfinite(array).all())
        if array.dtype.itemsize == 4 and finite:
            return array
        return [_plain_float(x) for x in array.tolist()]
    return array.tolist()


def compact(tensor: torch.Tensor) -> Any:
    """Flat values of ``tensor`` for orjson: a float32 numpy array when every value is finite
    (orjson writes the shortest float32 digits, which read back to the same float32), else a list
    with non-finite values as strings; integers and booleans as lists."""
    return _flat_values(_numpy(tensor))


_NO_STATS = {"min": None, "max": None, "mean": None}
_BATCH_STATS_MAX = 4096  # elements; larger arrays get their own reductions


def _batch_stats(arrays: list) -> list[dict[str, Any]]:
    """min, max and mean of each flat array: small arrays share three vectorised reductions.

    Arrays of at most ``_BATCH_STATS_MAX`` elements are concatenated in float64 (exact for every
    recorded dtype's values up to 2**53) and reduced per segment with ``reduceat``; NaN propagates
    through min, max and the sum, and ``inf - inf`` gives a NaN mean, as per-array reductions do.
    A trace holds ~150 mostly small tensors, where per-call overhead, not arithmetic, was the cost
    (3 ms -> under 1 ms per yolov5 trace). Larger arrays are reduced one by one: copying them would
    cost more than the call overhead it saves.
    """
    out: list[dict[str, Any] | None] = [None] * len(arrays)
    small = [i for i, a in enumerate(arrays) if 0 < a.size <= _BATCH_STATS_MAX]
    for i, a in enumerate(arrays):
        if a.size == 0:
            out[i] = dict(_NO_STATS)
        elif a.size > _BATCH_STATS_MAX:
            values = [a.min(), a.max(), a.mean(dtype=np.float64)]
            out[i] = dict(zip(("min", "max", "mean"), (_plain_float(float(v)) for v in values)))
    if small:
        flat = np.concatenate([arrays[i] for i in small], dtype=np.float64, casting="unsafe")
        starts = np.cumsum([0] + [arrays[i].size for i in small[:-1]])
        counts = np.fromiter((arrays[i].size for i in small), dtype=np.float64, count=len(small))
        columns = [np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts),
                   np.add.reduceat(flat, starts) / counts]
        finite = bool(all(np.isfinite(c).all() for c in columns))
        rows = zip(*(c.tolist() if finite else [_plain_float(x) for x in c.tolist()] for c in columns))
        for i, (low, high, mean) in zip(small, rows):
            out[i] = {"min": low, "max": high, "mean": mean}
    return out  # type: ignore[return-value]


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
    }


def _field(obj: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        if default is ...:
            raise ValueError(f"{where}.{key}: missing" if where else f"{key}: missing")
        return default
    return obj[key]


def scene_from_dict(body: Mapping[str, Any]) -> Scene:
    """A :class:`Scene` from a request body (not yet validated: call ``validate_scene``).

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
    pins = []
    for i, p in enumerate(_field(predictions, "pins", "predictions", [])):
        where = f"predictions.pins[{i}]"
        pins.append(Pin(**{k: _field(p, k, where) for k in ("level", "anchor", "gi", "gj", "cx", "cy", "w", "h")}))
    params = body.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError("params: expected an object")
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

    ``record=False`` passes no trace recorder (the run's ``trace`` is then empty unless the scheme
    keeps one of its own); the outputs are the same bits either way. ``validated=True``: the scene
    is what :func:`~losscore.scene.validate_scene` returned (and ``device`` is None), so it is not
    checked again.

    The scheme runs under ``torch.inference_mode()``: the run exists to be read and serialised, and
    inference mode skips autograd's bookkeeping on each of a scene's ~600 small ops (same bits as
    ``no_grad``). Its tensors are therefore inference tensors: fine to read, convert and compute
    from, not to modify in place or to feed to autograd (``losscore.scene.explain`` returns normal
    tensors for that).
    """
    if device is not None:
        scene = dataclasses.replace(scene, device=device)
        validated = False
    if not validated:
        scene = validate_scene(scene)
    trace = Trace()
    start = time.perf_counter()
    with torch.inference_mode():  # the run is only read and serialised; ~10% less dispatch overhead
        result = get_scheme(scene.scheme).explain(scene, trace if record else None)
    if result.device.startswith("cuda"):
        torch.cuda.synchronize()
    compute_ms = (time.perf_counter() - start) * 1e3
    return Run(scene=scene, result=result, compute_ms=compute_ms, trace=result.trace if result.trace is not None else trace)


# -- the explain document -------------------------------------------------------------------
def _column_rows(tensor: torch.Tensor) -> Any:
    """One positives column as per-row values: scalars for a (P,) column, a list of k values per
    row for a (P, k) one. float32 rows stay float32 numpy views (orjson writes their shortest
    digits) when every value is finite."""
    if tensor.dim() <= 1:
        return compact(tensor)
    array = _numpy(tensor).reshape(tensor.shape[0], math.prod(tensor.shape[1:]))  # (P, k); P may be 0
    values = _flat_values(array.reshape(-1))
    if isinstance(values, np.ndarray):
        return list(array)  # row views, no copy
    width = array.shape[1]
    return [values[i * width:(i + 1) * width] for i in range(array.shape[0])]


def _positive_rows(result: SceneResult, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    wanted = None if only is None else set(only)
    columns = {name: _column_rows(tensor) for name, tensor in result.positives.items()
               if wanted is None or name in wanted}
    if "rule" in columns:
        names = result.rule_names
        columns["rule"] = [names[i] if isinstance(i, int) and 0 <= i < len(names) else i for i in columns["rule"]]
    if not columns:
        return []
    keys = list(columns)
    return [dict(zip(keys, row)) for row in zip(*columns.values())]


def result_to_dict(
    run: Run,
    *,
    maps: Iterable[str] | None = None,
    stage_data: int | None = DEFAULT_STAGE_DATA,
    stages: bool = True,
    columns: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The ``POST /api/v1/explain`` response for a run.

    ``stages=False`` leaves the stage list empty; ``columns`` keeps only those positives columns
    (``None``: all of them).
    ``maps``: names of the maps to include (``None``: all of them). ``stage_data``: a stage tensor
    carries its flat ``data`` only when it has at most this many elements (``None``: always).
    """
    result, scene = run.result, run.scene
    spec = get_scheme(scene.scheme)
    wanted = list(result.maps) if maps is None else [m for m in maps if m in result.maps]
    map_docs = {**dict(spec.maps), **result.map_docs}
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
        "rule_names": list(result.rule_names),
        "positives": _positive_rows(result, columns),
        "columns": {k: v for k, v in result.column_docs.items() if columns is None or k in set(columns)},
        "maps": {
            name: {"doc": map_docs.get(name, ""), "levels": [encode_map(t) for t in result.maps[name]]}
            for name in wanted
        },
        "map_names": {name: map_docs.get(name, "") for name in result.maps},
        "losses": {name: _plain_float(float(value)) for name, value in result.losses.items()},
        "notes": [str(n) for n in result.notes],
        "stages": _stages_to_list(run.trace, stage_data) if stages else [],
    }


def _stages_to_list(trace, stage_data: int | None) -> list[dict[str, Any]]:
    """Every stage as ``{name, title, explain, code, values, tensors}``; each tensor with its
    dims, dtype, shape, min/max/mean and (when it has at most ``stage_data`` elements) its data."""
    stages = list(trace)
    recorded = [(key, rec) for stage in stages for key, rec in stage.tensors.items()]
    arrays = [_numpy(rec.value) for _, rec in recorded]
    with np.errstate(all="ignore"):  # NaN and inf are legitimate recorded values
        stats = _batch_stats(arrays)
        tensors = []
        for (key, rec), array, stat in zip(recorded, arrays, stats):
            t = rec.value
            dtype = _DTYPE_NAMES.get(t.dtype) or encode_tensor(t.reshape(-1)[:0])["dtype"]
            keep = stage_data is None or array.size <= stage_data
            # min and max are finite exactly when every value is (NaN and inf reach them)
            finite = isinstance(stat["min"], float) and isinstance(stat["max"], float) if array.size else True
            tensors.append({"name": key, "dims": rec.dims, "dtype": dtype, "shape": list(t.shape),
                            "data": _flat_values(array, finite) if keep else None, **stat})
    out, start = [], 0
    for stage in stages:
        stop = start + len(stage.tensors)
        out.append({"name": stage.name, "title": stage.title, "explain": stage.explain, "code": stage.code,
                    "values": plain(stage.values), "tensors": tensors[start:stop]})
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


def build_export(run: Run) -> dict[str, Any]:
    """The downloadable document: scene, params, versions, upstream pin, full result and stages."""
    spec = get_scheme(run.scene.scheme)
    result = result_to_dict(run, maps=None, stage_data=None)
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


# -- verification ---------------------------------------------------------------------------
class Mismatch(NamedTuple):
    """One item of an export that the recomputation does not reproduce."""

    where: str  # e.g. "stages[3] build_targets.anchor_filter: r_max"
    problem: str


class VerifyReport(NamedTuple):
    ok: bool
    checked: int  # how many tensors, maps, losses and tables were compared
    mismatches: list[Mismatch]
    device: str


def _same_tensor(expected: torch.Tensor, actual: torch.Tensor) -> str | None:
    if tuple(expected.shape) != tuple(actual.shape):
        return f"shape {list(expected.shape)} recorded, {list(actual.shape)} recomputed"
    if expected.dtype != actual.dtype:
        return f"dtype {expected.dtype} recorded, {actual.dtype} recomputed"
    actual = actual.detach().cpu()
    if expected.is_floating_point():
        if not torch.allclose(expected.double(), actual.double(), rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True):
            diff = (expected.double() - actual.double()).abs().nan_to_num(nan=float("inf"))
            return f"values differ (largest difference {float(diff.max()):.3g})"
        return None
    if not torch.equal(expected, actual):
        changed = int((expected != actual).sum())
        return f"{changed} of {expected.numel()} values differ"
    return None


def _same_value(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) \
            and not isinstance(expected, bool) and not isinstance(actual, bool):
        return math.isclose(float(expected), float(actual), rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_same_value(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same_value(expected[k], actual[k]) for k in expected)
    return expected == actual


def verify_export(doc: Mapping[str, Any], device: str | None = None) -> VerifyReport:
    """Recompute ``doc["scene"]`` and compare every stage tensor, map, positive and loss.

    ``device`` overrides the scene's device (e.g. verify a CUDA export on the CPU). Raises
    ``ValueError`` when the document is not a LossLab export or its scene is invalid.
    """
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise ValueError(f"format: not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise ValueError(f"version: expected {VERSION}, got {doc.get('version')!r}")
    if device is None and str(doc["scene"].get("device", "auto")).startswith("cuda") \
            and not torch.cuda.is_available():
        device = "cpu"
    run = run_scene(scene_from_dict(doc["scene"]), device=device)
    fresh = build_export(run)
    mismatches: list[Mismatch] = []
    checked = 0

    recorded_stages = doc.get("stages") or []
    names_then = [s.get("name") for s in recorded_stages]
    names_now = [s["name"] for s in fresh["stages"]]
    if names_then != names_now:
        mismatches.append(Mismatch("stages", f"recorded stages {names_then} but the code now records {names_now}"))
    for index, (then, now) in enumerate(zip(recorded_stages, run.trace)):
        label = f"stages[{index}] {now.name}"
        recorded = {t.get("name"): t for t in then.get("tensors", [])}
        if set(recorded) != set(now.tensors):
            mismatches.append(Mismatch(label, f"tensors {sorted(recorded)} recorded, {sorted(now.tensors)} now"))
        for key, rec in now.tensors.items():
            if key not in recorded:
                continue
            checked += 1
            try:
                expected = decode_tensor(recorded[key])
            except Exception as exc:  # malformed entry in the file
                mismatches.append(Mismatch(f"{label}: {key}", f"cannot decode the recorded tensor ({exc})"))
                continue
            problem = _same_tensor(expected, rec.value)
            if problem:
                mismatches.append(Mismatch(f"{label}: {key}", problem))
        checked += 1
        if not _same_value(plain(then.get("values", {})), fresh["stages"][index]["values"]):
            mismatches.append(Mismatch(f"{label}: values", "recorded values differ from the recomputed ones"))

    result_then = doc.get("result") or {}
    result_now = fresh["result"]
    maps_then = result_then.get("maps") or {}
    if set(maps_then) != set(result_now["maps"]):
        mismatches.append(Mismatch("result.maps", f"maps {sorted(maps_then)} recorded, {sorted(result_now['maps'])} now"))
    for name, entry in result_now["maps"].items():
        if name not in maps_then:
            continue
        levels_then = maps_then[name].get("levels", [])
        if len(levels_then) != len(entry["levels"]):
            mismatches.append(Mismatch(f"result.maps.{name}", "number of levels differs"))
            continue
        for level_index, (lt, ln) in enumerate(zip(levels_then, entry["levels"])):
            checked += 1
            try:
                problem = _same_tensor(decode_map(lt), decode_map(ln))
            except Exception as exc:
                problem = f"cannot decode the recorded map ({exc})"
            if problem:
                mismatches.append(Mismatch(f"result.maps.{name}[{level_index}]", problem))
    for key in ("losses", "positives", "levels"):
        checked += 1
        if not _same_value(plain(result_then.get(key)), plain(result_now[key])):
            mismatches.append(Mismatch(f"result.{key}", "recorded values differ from the recomputed ones"))
    return VerifyReport(ok=not mismatches, checked=checked, mismatches=mismatches, device=run.result.device)
