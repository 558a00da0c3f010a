"""A worker reuses its memory between requests (app/memory.py): glibc malloc tuned at start-up.

The effect is asserted in page faults, which do not depend on the machine's speed: one scene
computed again and again (a drag's requests) faults on fresh pages every time with glibc's
defaults, and not at all once the worker's thresholds are set.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import compute, main, memory
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(memory._glibc() is None, reason="malloc tuning is glibc's (Linux)")

# The focal scheme's 640x640, 80-class scene computed twelve times in one process (a drag's
# requests in one worker); prints the median of the minor page faults of rounds 3 to 12. Measured:
# 5,875-7,187 in every round with glibc's defaults; tuned, none after the first two rounds
# (a toy loop of bare tensors is not used: glibc's dynamic threshold sometimes settles on it).
ROUNDS = textwrap.dedent("""
    import resource, statistics, sys, torch
    torch.set_num_threads(1)
    from app.memory import tune_malloc
    if sys.argv[1] == "tuned":
        assert tune_malloc(32 * 2**20, 128 * 2**20)
    from losscore import export
    from losscore.scene import Box, Scene
    boxes = tuple(Box(k % 80, 20 + 30 * k, 40 + 25 * k, 120 + 30 * k, 160 + 24 * k) for k in range(15))
    scene = Scene(scheme="focal", width=640, height=640, nc=80, boxes=boxes)
    faults = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        export.run_scene(scene, record=False)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(statistics.median(faults[2:]))
""")


def faults(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


@glibc
def test_a_tuned_worker_reuses_its_pages_where_glibc_defaults_fault_in_every_request():
    default, tuned = faults("default"), faults("tuned")
    # a dozen (8400, 80) float tensors of 2.7 MB per round: glibc's defaults give the pages back (trim / munmap) and
    # fault them in again, request after request; tuned, the heap keeps them
    assert default > 3000, default
    assert tuned < 100, tuned


def test_zero_leaves_malloc_as_it_is_and_glibcs_limit_is_refused():
    assert memory.tune_malloc(0, 128 * 2**20) is False
    assert memory.tune_malloc(32 * 2**20, 0) is False
    with pytest.raises(ValueError, match="at most 33554432 bytes"):
        memory.tune_malloc(32 * 2**20 + 1, 128 * 2**20)
    with pytest.raises(ValueError):  # the setting has the same bound
        Settings(malloc_mmap_threshold=64 * 2**20)


@glibc
def test_release_memory_gives_freed_heap_pages_back():
    script = textwrap.dedent("""
        import torch
        from app.memory import release_memory, tune_malloc
        assert tune_malloc(32 * 2**20, 1 << 30)
        held = [torch.ones(2**20) for _ in range(64)]  # 64 x 4 MiB from the heap
        keep = torch.ones(10)  # allocated above them: the heap cannot simply shrink
        del held
        print(release_memory())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_the_worker_tunes_malloc_with_its_settings_before_the_warm_up(monkeypatch):
    calls = []
    monkeypatch.setattr(main, "tune_malloc", lambda mmap, trim: calls.append((mmap, trim)) or True)
    monkeypatch.setattr(main, "warm_up", lambda: calls.append("warm-up") or {})
    settings = Settings(warmup=True, malloc_mmap_threshold=8 * 2**20, malloc_trim_threshold=96 * 2**20)
    with TestClient(main.create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert calls == [(8 * 2**20, 96 * 2**20), "warm-up"]
    assert Settings().malloc_mmap_threshold == 32 * 2**20 and Settings().malloc_trim_threshold == 128 * 2**20


def test_a_heavy_computation_gives_its_memory_back_after_it_ran(monkeypatch):
    released = []
    ran: list[int] = []
    monkeypatch.setattr(compute, "release_memory", lambda: released.append(len(ran)) or True)

    async def scenario() -> list:
        lanes = compute.Lanes(Settings(warmup=False))
        got = []
        try:
            got.append(await lanes.run_heavy(lambda x: ran.append(x) or x * 2, 21))
            got.append(list(released))  # once, after the computation
            try:
                await lanes.run_heavy(lambda: 1 / 0)
            except ZeroDivisionError:
                got.append(list(released))  # a failed one too
            await lanes.run_light(lambda: None)
            got.append(list(released))  # the light lane keeps its pages
        finally:
            lanes.close()
        return got

    # its own thread: the browser tests' Playwright keeps an event loop running on the main thread
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, scenario()).result() == [42, [1], [1, 1], [1, 1]]
