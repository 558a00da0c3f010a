"""Helpers shared by the test modules (import from here, never from ``conftest``: pytest loads
tests/conftest.py and tests/e2e/conftest.py under the same module name)."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("LOSSLAB_VECTORS", ROOT.parent / "shared" / "vectors"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@lru_cache(maxsize=None)
def load_vector_file(family: str) -> dict:
    path = VECTORS / f"{family}.json"
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def vector_cases(family: str):
    """(group, case) pairs of a vector file, as pytest params with readable ids."""
    path = VECTORS / f"{family}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [pytest.param(group, case, id=f"{group}-{case['id']}")
            for group, cases in data["groups"].items() for case in cases]


def assert_same_result(traced, plain) -> None:
    """Two runs of a scheme on one scene, one traced: same positives, losses and maps, bit for bit."""
    for table in ("positives", "losses"):
        a, b = getattr(traced, table), getattr(plain, table)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), table
    assert traced.maps.keys() == plain.maps.keys()
    assert all(torch.equal(x, y) for k in traced.maps for x, y in zip(traced.maps[k], plain.maps[k]))
