"""A worker reuses its memory between requests (app/memory.py): glibc malloc tuned at start-up.

The effect is asserted in page faults, which do not depend on the machine's speed: a loop that
allocates and frees the tensors of a drag update faults on fresh pages in every round with glibc's
defaults, and on none once the worker's thresholds are set.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from fastapi.testclient import TestClient

from app import compute, main, memory
from app.settings import Settings

glibc = pytest.mark.skipif(memory._glibc() is None, reason="malloc tuning is glibc's (Linux)")

# Rounds of a drag update's allocations (a dozen 8400 x 80 float tensors, 2.7 MB each, then freed);
# prints the minor page faults of five rounds after four (the first ones grow the heap; measured:
# 7,843 faults in every round with glibc's defaults; tuned, 656 in the third round, none after).
ROUNDS = textwrap.dedent("""
    import resource, sys, torch
    torch.set_num_threads(1)
    from app.memory import tune_malloc
    if sys.argv[1] == "tuned":
        assert tune_malloc(32 * 2**20, 128 * 2**20)
    def one_round():
        x = torch.rand(8400, 80)
        parts = [x * k for k in range(12)]
        return float(sum(p.sum() for p in parts))
    for _ in range(4):
        one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        one_round()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@glibc
def test_a_tuned_process_reuses_its_pages_where_glibc_defaults_fault_in_every_round():
    default, tuned = faults("default"), faults("tuned")
    # 5 rounds x 12 tensors x 2.7 MB: glibc's defaults give the pages back (trim / munmap) and
    # fault them in again, thousands of times; tuned, the heap keeps them
    assert default > 2000, default
    assert tuned < 200, tuned


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
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
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
    monkeypatch.setattr(compute, "release_memory", lambda: released.append(len(ran)) or True)
    ran: list[int] = []
    lanes = compute.Lanes(Settings(warmup=False))
    try:
        assert asyncio.run(lanes.run_heavy(lambda x: ran.append(x) or x * 2, 21)) == 42
        assert released == [1]  # once, after the computation
        with pytest.raises(ZeroDivisionError):
            asyncio.run(lanes.run_heavy(lambda: 1 / 0))
        assert released == [1, 1]  # a failed one too
        asyncio.run(lanes.run_light(lambda: None))
        assert released == [1, 1]  # the light lane keeps its pages
    finally:
        lanes.close()
