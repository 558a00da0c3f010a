"""Replay an export document: recompute its scene with this copy of ``losscore`` and compare every
recorded stage tensor, map, positive, check and loss (``losslab verify``).

Ints and booleans must match exactly; floats to ``rtol 1e-5`` / ``atol 1e-6`` (the reference
vectors' elementwise tolerance), NaN matching NaN.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch

from .export import FORMAT, VERSION, build_export, run_scene, scene_from_dict
from .trace import decode_tensor
from .wire import decode_map, plain

__all__ = ["verify_export", "Mismatch", "VerifyReport", "FLOAT_RTOL", "FLOAT_ATOL"]

# Replay tolerance for floats (the reference vectors' elementwise tolerance); ints and bools are exact.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-6


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


def _without_text(checks: Any) -> Any:
    if not isinstance(checks, list):
        return checks
    return [{k: v for k, v in c.items() if k != "text"} if isinstance(c, dict) else c for c in checks]


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
    matrices_then = result_then.get("matrices") or {}
    for name, entry in (result_now.get("matrices") or {}).items():  # a query scheme's (Q, N) cost matrices
        checked += 1
        try:
            problem = _same_tensor(decode_map(matrices_then[name]), decode_map(entry)) if name in matrices_then \
                else "not recorded"
        except Exception as exc:
            problem = f"cannot decode the recorded matrix ({exc})"
        if problem:
            mismatches.append(Mismatch(f"result.matrices.{name}", problem))
    for key in ("losses", "positives", "queries", "levels", "composition", "checks", "counts", "box_cells"):
        checked += 1
        then_value, now_value = plain(result_then.get(key)), plain(result_now[key])
        if key == "checks":  # the sentences format the numbers; compare the numbers and decisions
            then_value, now_value = _without_text(then_value), _without_text(now_value)
        if not _same_value(then_value, now_value):
            mismatches.append(Mismatch(f"result.{key}", "recorded values differ from the recomputed ones"))
    return VerifyReport(ok=not mismatches, checked=checked, mismatches=mismatches, device=run.result.device)
