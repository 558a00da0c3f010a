"""Conformance harness: run our code on the reference vectors that upstream produced.

``run_case(family, group, inputs)`` takes a case's ``inputs`` as stored in the vector files (the
encoded JSON form) or already decoded into tensors, and returns a dict shaped like the case's
``expected`` (tensors, lists of tensors, numbers). A case whose ``expected`` is an error raises
that exception type.

Each family package declares its runners in its ``vectors.py`` (``GROUPS``), listed by
:mod:`losscore.registry`; this module only decodes, dispatches and compares. A vector family
``name@tag`` (e.g. ``yolox@main``) is checked against each case's ``expected_<tag>``.

Command line::

    python -m losscore.conformance ../shared/vectors/yolov5.json [more.json ...] [--device cuda]

prints one line per group and a final ``N passed, M failed`` line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import torch

from . import registry
from .trace import decode_tensor

__all__ = ["run_case", "compare", "check_case", "expected_key", "load_vectors"]

# Tolerances from ../shared/vectors/README.md: elementwise values, and loss scalars.
ELEMENT_TOL = dict(rtol=1e-5, atol=1e-6)
SCALAR_TOL = dict(rtol=1e-4, atol=1e-5)
# Keys whose values are reductions over many terms (loss scalars).
_SCALAR_KEYS = {"loss", "loss_items", "total_loss", "loss_iou", "loss_dfl", "metrics"}


def expected_key(family: str) -> str:
    """``"yolox@main"`` -> ``"expected_main"``; a plain family -> ``"expected"``."""
    return f"expected_{family.split('@', 1)[1]}" if "@" in family else "expected"


def _decode_tree(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, dict) and "dtype" in obj and "shape" in obj:
        return decode_tensor(obj, device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _decode_tree(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_tree(v, device) for v in obj]
    return obj


def run_case(
    family: str, group_name: str, inputs: dict[str, Any], device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Run one case's inputs through our implementation; returns an ``expected``-shaped dict."""
    fn = registry.runner(family, group_name)
    device = torch.device(device)
    return fn(_decode_tree(inputs, device), device)


def compare(actual: Any, expected: Any, tol: dict[str, float], path: str = "") -> list[str]:
    """Differences between ``actual`` and the decoded ``expected`` (empty list when they agree)."""
    if isinstance(expected, dict) and not ("dtype" in expected and "shape" in expected):
        if not isinstance(actual, dict):
            return [f"{path}: expected a dict, got {type(actual).__name__}"]
        problems = []
        for k, v in expected.items():
            if k not in actual:
                problems.append(f"{path}.{k}: missing")
                continue
            problems += compare(actual[k], v, tol, f"{path}.{k}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            n = len(actual) if isinstance(actual, (list, tuple)) else type(actual).__name__
            return [f"{path}: expected a list of {len(expected)}, got {n}"]
        problems = []
        for i, (a, e) in enumerate(zip(actual, expected)):
            problems += compare(a, e, tol, f"{path}[{i}]")
        return problems
    exp = decode_tensor(expected)
    if isinstance(exp, torch.Tensor):
        act = actual if isinstance(actual, torch.Tensor) else torch.as_tensor(actual)
        act = act.detach().cpu()
        if tuple(act.shape) != tuple(exp.shape):
            return [f"{path}: shape {tuple(act.shape)} != expected {tuple(exp.shape)}"]
        if exp.dtype in (torch.int64, torch.bool):
            if act.dtype != exp.dtype:
                return [f"{path}: dtype {act.dtype} != expected {exp.dtype}"]
            if not torch.equal(act, exp):
                bad = (act != exp).nonzero()[:5].tolist()
                return [f"{path}: values differ at {bad}"]
            return []
        if not act.is_floating_point():
            return [f"{path}: dtype {act.dtype}, expected floating {exp.dtype}"]
        a, e = act.double(), exp.double()
        ok = torch.isclose(a, e, equal_nan=True, **tol)
        if not bool(ok.all()):
            idx = (~ok).nonzero()[:3].tolist()
            sample = [(a[tuple(i)].item(), e[tuple(i)].item()) for i in idx]
            return [f"{path}: {int((~ok).sum())} values off, e.g. at {idx} got/expected {sample}"]
        return []
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        a = float(actual.item() if isinstance(actual, torch.Tensor) else actual)
        e = float(exp)
        if math.isnan(e) and math.isnan(a):
            return []
        if not math.isclose(a, e, rel_tol=tol["rtol"], abs_tol=tol["atol"]):
            return [f"{path}: {a!r} != expected {e!r}"]
        return []
    if actual != exp:
        return [f"{path}: {actual!r} != expected {exp!r}"]
    return []


def _tolerance(family: str, group_name: str, key: str) -> dict[str, float]:
    declared = registry.tolerance(family, group_name, key)
    if declared is not None:
        return dict(declared)
    return SCALAR_TOL if key in _SCALAR_KEYS else ELEMENT_TOL


def check_case(family: str, group_name: str, case: dict[str, Any],
               device: str | torch.device = "cpu") -> list[str]:
    """Run one stored case and list its differences from its expected values (empty when it passes).

    ``family`` ``name@tag`` compares against ``case["expected_<tag>"]``.
    """
    expected = case[expected_key(family)]
    if "error" in expected:
        try:
            run_case(family, group_name, case["inputs"], device)
        except Exception as exc:  # noqa: BLE001 - we compare the exception's type name
            if type(exc).__name__ == expected["error"]:
                return []
            return [f"raised {type(exc).__name__}: {exc}, expected {expected['error']}"]
        return [f"did not raise, expected {expected['error']}"]
    actual = run_case(family, group_name, case["inputs"], device)
    problems = []
    for key, value in expected.items():
        if key in ("diagnostics", "n_matches_per_level"):
            continue  # diagnostic only (README)
        if key not in actual:
            problems.append(f"{key}: missing")
            continue
        problems += compare(actual[key], value, _tolerance(family, group_name, key), key)
    return problems


def load_vectors(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _checks(data: dict[str, Any]):
    """(vector family, group, cases) to check in one file: ``family`` against ``expected``, and
    ``family@tag`` against ``expected_<tag>`` for the cases that carry one."""
    family = data["family"]
    for group_name, cases in data["groups"].items():
        yield family, group_name, cases
        tags = sorted({key[len("expected_"):] for case in cases for key in case if key.startswith("expected_")})
        for tag in tags:
            tagged = [case for case in cases if f"expected_{tag}" in case]
            yield f"{family}@{tag}", group_name, tagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m losscore.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="vector files, e.g. ../shared/vectors/yolov5.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every failing case")
    args = parser.parse_args(argv)
    passed = failed = 0
    for path in args.files:
        data = load_vectors(path)
        for family, group_name, cases in _checks(data):
            ok = 0
            failures = []
            for case in cases:
                try:
                    problems = check_case(family, group_name, case, args.device)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    problems = [f"raised {type(exc).__name__}: {exc}"]
                if problems:
                    failures.append((case["id"], problems))
                else:
                    ok += 1
            passed += ok
            failed += len(failures)
            status = "ok" if not failures else "FAIL"
            print(f"{family:15s} {group_name:24s} {ok}/{len(cases)} {status}")
            for cid, problems in failures if (args.verbose or len(failures) <= 3) else failures[:3]:
                print(f"    {cid}: {'; '.join(problems[:3])}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
