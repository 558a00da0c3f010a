"""Where a request's computation runs: a light lane and a heavy lane per worker, and stream slots.

* **light**: scenes whose prediction head is at most ``LOSSLAB_HEAVY_ELEMENTS`` values (grid
  cells of all levels x 3 x (64 + nc), the measure ``losscore.scene`` bounds), run in anyio's
  thread pool, ``LOSSLAB_COMPUTE_SLOTS`` at once. A 640x640 scene with 80 classes is light.
* **heavy**: larger scenes and every export run in their own threads, ``LOSSLAB_HEAVY_SLOTS`` at
  once, at the lowest CPU priority (nice 19: Linux schedules threads one by one), so a light
  request never waits behind a heavy one in a queue, and gets the CPU first when both run.
* **stream slots**: a response estimated above ``LOSSLAB_STREAM_BYTES`` is streamed as it is
  encoded (encoding in low-priority threads too); at most ``LOSSLAB_STREAM_SLOTS`` per worker,
  since each holds its scene's trace until the client has read it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import anyio
import anyio.to_thread

from losscore import registry
from losscore.scene import Scene

from .memory import release_memory
from .settings import Settings

log = logging.getLogger("losslab")
T = TypeVar("T")

LOWEST_PRIORITY = 19  # nice value of the heavy and streaming threads


def _lowest_priority() -> None:
    """Run this thread at nice 19 (Linux: per thread). Where that is not possible, run as is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except (AttributeError, OSError) as exc:  # pragma: no cover - not Linux, or not allowed
        log.debug("cannot lower the heavy lane's priority: %s", exc)


def head_elements(scene: Scene) -> int:
    """The prediction head's size as ``losscore.scene`` bounds it: cells x 3 x (64 + nc)."""
    try:
        strides = registry.get_scheme(scene.scheme).strides
        cells = sum(math.ceil(scene.height / s) * math.ceil(scene.width / s) for s in strides)
        return int(cells * 3 * (64 + int(scene.nc)))
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return 0  # an invalid scene: validation refuses it at once, in whichever lane


def _then_release(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, then the freed memory back to the system (app.memory): the worker keeps its
    pages between light requests (malloc tuning), not the hundreds of MB a heavy one used."""
    try:
        return fn(*args)
    finally:
        release_memory()


class Lanes:
    """The compute lanes and stream slots of one worker (``app.state.lanes``)."""

    def __init__(self, settings: Settings) -> None:
        self.light = anyio.CapacityLimiter(settings.compute_slots)
        self.heavy_elements = settings.heavy_elements
        self._heavy = ThreadPoolExecutor(settings.heavy_slots, thread_name_prefix="losslab-heavy",
                                         initializer=_lowest_priority)
        self._stream = ThreadPoolExecutor(settings.stream_slots, thread_name_prefix="losslab-stream",
                                          initializer=_lowest_priority)
        self.stream_slots = asyncio.Semaphore(settings.stream_slots)
        self.stream_wait = settings.stream_wait

    def is_heavy(self, scene: Scene) -> bool:
        return head_elements(scene) > self.heavy_elements

    async def run_light(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.light)

    async def run_heavy(self, fn: Callable[..., T], *args: Any) -> T:
        # a request that goes away while queued is dropped from the queue (wrap_future cancels it)
        return await asyncio.wrap_future(self._heavy.submit(_then_release, fn, *args))

    async def run(self, scene: Scene, fn: Callable[..., T], *args: Any, heavy: bool = False) -> T:
        """``fn(*args)`` in the scene's lane (the heavy one when ``heavy`` or the scene is heavy)."""
        if heavy or self.is_heavy(scene):
            return await self.run_heavy(fn, *args)
        return await self.run_light(fn, *args)

    async def encode(self, fn: Callable[..., T], *args: Any) -> T:
        """A piece of a streamed response, encoded in a low-priority thread."""
        return await asyncio.wrap_future(self._stream.submit(fn, *args))

    async def acquire_stream(self, wait: bool = True) -> bool:
        """A stream slot: ``True`` when taken (release with :meth:`release_stream`), ``False`` when
        none was free (at once, or within ``LOSSLAB_STREAM_WAIT`` seconds with ``wait``)."""
        if not wait or self.stream_wait <= 0:
            if self.stream_slots.locked():
                return False
            await self.stream_slots.acquire()
            return True
        try:
            await asyncio.wait_for(self.stream_slots.acquire(), self.stream_wait)
        except asyncio.TimeoutError:
            return False
        return True

    def release_stream(self) -> None:
        self.stream_slots.release()

    def close(self) -> None:
        self._heavy.shutdown(wait=False, cancel_futures=True)
        self._stream.shutdown(wait=False, cancel_futures=True)
