"""Shared fixtures: the reference vectors, devices to parametrise over."""
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


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs torch on one intra-op thread: these tensors are small, and on a shared
    2-core machine a thread pool makes small ops many times slower, never faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
