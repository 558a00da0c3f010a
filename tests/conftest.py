"""Shared fixtures: devices to parametrise over, one torch thread per test."""
from __future__ import annotations

import pytest
import torch

from losslab_testing import DEVICES


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
