"""Prediction heads for a learner's scene: an untrained random head blended with a perfect one.

A scene has no network, so each scheme builds its raw head from ``seed`` and ``progress``:
``(1 - progress) * noise + progress * perfect``, where ``noise`` is a standard normal times
``scale`` drawn on the CPU from a seeded generator (the same seed gives the same scene on every
device) and ``perfect`` is the head that decodes exactly to the scheme's targets. Dragging a box
re-runs the same seed many times a second, so the scaled draw (and, for a head that is a constant
background plus a few written slots, its blend with that background) is cached, keyed by the
generator's exact state. Every function here returns the same bits as the plain formula.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["blend_logits", "blend_sparse", "blended_heads", "BlendedHeads", "smallest_owner"]


class _NoiseEntry:
    """One cached draw: the generator state after it, ``(1 - progress) * noise`` (``scaled``) and,
    with a background, ``progress * background`` (``term``) and the blend ``scaled + term``
    (``scratch``: the one copy :func:`blended_heads` patches in place and restores).

    ``users`` counts the calls reading it right now: an entry evicted while in use gives its
    buffers back to the pool (:data:`_POOL`) only when the last of them is done."""

    __slots__ = ("state", "scaled", "term", "scratch", "lock", "users", "evicted")

    def __init__(self, state: torch.Tensor, scaled: torch.Tensor, term: torch.Tensor | None,
                 blend: torch.Tensor | None) -> None:
        self.state, self.scaled, self.term = state, scaled, term
        self.scratch = blend  # the blend outside a blended_heads block; patched inside one
        self.lock = threading.Lock()  # held by the blended_heads block patching scratch
        self.users = 0
        self.evicted = False

    def fresh_blend(self) -> torch.Tensor:
        """A new tensor with the bits of the unpatched ``scratch``: ``scaled + term``."""
        with torch.inference_mode(False):  # as the draw: a normal tensor whatever the caller's mode
            return torch.add(self.scaled, self.term.expand(self.scaled.shape))


_NOISE_CACHE: "OrderedDict[tuple, _NoiseEntry]" = OrderedDict()
_NOISE_CACHE_SIZE = 12  # entries (one per level and seed/progress/background)
# Bytes the cached draws may hold (scaled noise and, with a background, its blend): the least
# recently used go first, but the newest entry always stays. A 640x640 nc-80 YOLOv5 scene holds ~17 MB.
_NOISE_CACHE_BYTES = 192 * 2**20
# A draw larger than this (a 768x768 head with 1000 classes: ~110 MB a copy) is not cached at all:
# it would pin several hundred MB in a worker for a scene that takes seconds anyway.
_NOISE_ENTRY_MAX_BYTES = 96 * 2**20
_NOISE_LOCK = threading.Lock()
# Buffers of evicted draws, by (shape, dtype): a new seed draws into them instead of fresh memory
# (a fresh 8 MB tensor costs ~2000 page faults, about a third of drawing its noise). Bounded in bytes.
_POOL: "dict[tuple, list[torch.Tensor]]" = {}
_POOL_BYTES = 64 * 2**20


def _entry_bytes(entry: _NoiseEntry) -> int:
    copies = 1 if entry.term is None else 2  # scaled, plus its blend with the background
    return copies * entry.scaled.numel() * entry.scaled.element_size()


def _pool_key(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.dtype


def _pooled(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A free buffer of this shape and dtype (call with ``_NOISE_LOCK`` held)."""
    free = _POOL.get((tuple(shape), dtype))
    return free.pop() if free else None


def _recycle(entry: _NoiseEntry) -> None:
    """Give an evicted entry's CPU buffers to the pool, within its byte budget (``_NOISE_LOCK`` held)."""
    held = sum(t.numel() * t.element_size() for free in _POOL.values() for t in free)
    for tensor in (entry.scaled, entry.scratch):
        if tensor is None or not tensor.is_cpu or tensor.is_inference():
            continue
        size = tensor.numel() * tensor.element_size()
        if held + size > _POOL_BYTES:
            break
        _POOL.setdefault(_pool_key(tensor), []).append(tensor)
        held += size
    entry.scaled = entry.scratch = None  # type: ignore[assignment]


def _done(entry: _NoiseEntry) -> None:
    """A call has finished reading ``entry`` (see ``users``)."""
    with _NOISE_LOCK:
        entry.users -= 1
        if entry.evicted and entry.users == 0:
            _recycle(entry)


def _is_power_of_two(x: float) -> bool:
    return x > 0 and math.isfinite(x) and math.frexp(x)[0] == 0.5


def _draw(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, progress: float,
          generator: torch.Generator, scale: float, background: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(1 - progress) * noise``, ``progress * background`` and their blend: the bits of the plain
    formula ``(1 - progress) * (randn(shape) * scale)`` and ``scaled + progress * background.expand(shape)``,
    computed in place in pooled buffers where possible.

    One pass instead of three for the scaling when ``scale`` is a power of two: ``normal_(0, s)``
    with ``s = scale * (1 - progress)`` has the bits of ``randn() * scale * (1 - progress)`` (for
    float32 and at least 16 elements torch computes ``n * s + 0`` from the very ``n`` ``randn``
    returns, in float32; multiplying by a power of two is exact and ``float32(s)`` is ``scale *
    float32(1 - progress)``). Checked bit for bit in ``tests/test_foundation.py``."""
    # normal tensors even when drawn under torch.inference_mode (export.run_scene): the cache
    # outlives the call, and a later caller without inference mode patches the scratch copy
    with torch.inference_mode(False):
        term = None if background is None else progress * background
        numel = math.prod(shape)
        if device.type != "cpu" or dtype != torch.float32:  # the general path, as written
            noise = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
            noise = noise.to(device=device, dtype=dtype)
            scaled = (1.0 - progress) * noise
            blend = None if term is None else scaled + term.expand(shape)
            return scaled, term, blend
        with _NOISE_LOCK:
            scaled, blend = _pooled(shape, dtype), None if term is None else _pooled(shape, dtype)
        if scaled is None:
            scaled = torch.empty(shape, dtype=dtype)
        if numel >= 16 and _is_power_of_two(scale) and 0.0 <= progress < 1.0:
            scaled.normal_(0.0, scale * (1.0 - progress), generator=generator)
        else:
            torch.randn(shape, generator=generator, dtype=torch.float32, out=scaled)
            scaled.mul_(scale).mul_(1.0 - progress)
        if term is None:
            return scaled, None, None
        if blend is None:
            blend = torch.empty(shape, dtype=dtype)
        torch.add(scaled, term.expand(shape), out=blend)
        return scaled, term, blend


def _noise_entry(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, progress: float,
                 generator: torch.Generator, scale: float, background: torch.Tensor | None) -> _NoiseEntry:
    """The cached draw for the generator's state (drawn on a miss); the generator is left in the
    state after the draw either way, as if it had drawn again. The caller reads the entry and then
    calls :func:`_done` (the entry's buffers are not reused before)."""
    state = generator.get_state()
    bg_key = None if background is None else (tuple(background.shape), tuple(background.reshape(-1).tolist()))
    key = (hashlib.blake2b(state.numpy().tobytes(), digest_size=16).digest(), tuple(shape), dtype,
           str(device), float(scale), float(progress), bg_key)
    with _NOISE_LOCK:
        hit = _NOISE_CACHE.get(key)
        if hit is not None:
            _NOISE_CACHE.move_to_end(key)
            hit.users += 1
    if hit is not None:
        generator.set_state(hit.state)
        return hit
    scaled, term, blend = _draw(tuple(shape), dtype, device, progress, generator, scale, background)
    hit = _NoiseEntry(generator.get_state(), scaled, term, blend)
    hit.users = 1
    with _NOISE_LOCK:
        if _entry_bytes(hit) > _NOISE_ENTRY_MAX_BYTES:
            hit.evicted = True  # used by this call only, never cached
            return hit
        _NOISE_CACHE[key] = hit
        held = sum(_entry_bytes(entry) for entry in _NOISE_CACHE.values())
        while len(_NOISE_CACHE) > 1 and (len(_NOISE_CACHE) > _NOISE_CACHE_SIZE or held > _NOISE_CACHE_BYTES):
            _, evicted = _NOISE_CACHE.popitem(last=False)
            held -= _entry_bytes(evicted)
            evicted.evicted = True
            if evicted.users == 0:
                _recycle(evicted)
    return hit


def blend_logits(
    perfect: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> torch.Tensor:
    """``(1 - progress) * random + progress * perfect``: an untrained head at 0, a perfect one at 1.

    The random part is a standard normal times ``scale``, drawn on the CPU from ``generator`` (so the
    same seed gives the same scene on every device), then moved to ``perfect``'s device. Dragging a
    box re-runs a scene with the same seed, so the scaled draw is cached, keyed by the generator's
    exact state; the result has the same bits as the plain formula. When the perfect head is a
    constant background with a few written slots, :func:`blend_sparse` is faster.
    """
    entry = _noise_entry(tuple(perfect.shape), perfect.dtype, perfect.device, progress, generator, scale, None)
    try:
        return entry.scaled + progress * perfect
    finally:
        _done(entry)


def blend_sparse(
    shape: tuple[int, ...],
    background: torch.Tensor | float,
    index: torch.Tensor,
    values: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> torch.Tensor:
    """:func:`blend_logits` of a perfect head given as a background plus a few written elements.

    The perfect head is ``background`` (broadcast to ``shape``) with ``values`` written at the flat
    row-major positions ``index`` (unique). Same bits as ``blend_logits`` of that dense head, but
    only one pass over the full tensor (the copy of the cached background blend).
    """
    background = torch.as_tensor(background, dtype=values.dtype, device=values.device)
    entry = _noise_entry(tuple(shape), values.dtype, values.device, progress, generator, scale, background)
    try:
        out = entry.fresh_blend()
        out.view(-1)[index] = _blend_at(entry, index, values, progress)
    finally:
        _done(entry)
    return out


def _blend_at(entry: _NoiseEntry, index: torch.Tensor, values: torch.Tensor, progress: float) -> torch.Tensor:
    """The blend at the written flat positions ``index``: ``(1 - progress) * noise + progress * values``."""
    return entry.scaled.reshape(-1)[index] + progress * values


class BlendedHeads:
    """The heads of a :func:`blended_heads` block, one per level, and :meth:`write` for more writes."""

    def __init__(self) -> None:
        self.heads: list[torch.Tensor] = []
        self._undo: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (flat head, index, old values)

    def __getitem__(self, level: int) -> torch.Tensor:
        return self.heads[level]

    def __len__(self) -> int:
        return len(self.heads)

    def write(self, level: int, index: torch.Tensor, values: torch.Tensor) -> None:
        """``heads[level].view(-1)[index] = values``, undone when the block exits."""
        flat = self.heads[level].view(-1)
        self._undo.append((flat, index, flat[index]))
        flat[index] = values


@contextmanager
def blended_heads(
    shapes: list[tuple[int, ...]],
    background: torch.Tensor,
    writes: list[tuple[torch.Tensor, torch.Tensor]],
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> Iterator[BlendedHeads]:
    """Per level the head :func:`blend_sparse` returns, valid only inside the ``with`` block.

    ``writes``: per level ``(index, values)`` as for :func:`blend_sparse`. Each head is the cached
    draw's scratch copy of the blended background with the writes applied in place; on exit every
    write is undone, so the scratch copy equals the blended background again for the next block.
    That saves a fresh copy of the whole head per call (6.5 MB for P3 at 640x640 and nc = 80, the
    largest single cost of a drag). Same bits as :func:`blend_sparse`. A draw whose scratch copy is
    in use by another thread gets a private copy instead. Do not keep a head (or a view of it)
    beyond the block: compute what you need from it inside.
    """
    out = BlendedHeads()
    locks: list[threading.Lock] = []
    entries: list[_NoiseEntry] = []
    try:
        for shape, (index, values) in zip(shapes, writes):
            background = torch.as_tensor(background, dtype=values.dtype, device=values.device)
            entry = _noise_entry(tuple(shape), values.dtype, values.device, progress, generator, scale, background)
            entries.append(entry)
            if entry.lock.acquire(blocking=False):
                locks.append(entry.lock)
                head = entry.scratch
            else:  # another thread is patching the scratch copy: a private blend
                head = entry.fresh_blend()
            out.heads.append(head)
            out.write(len(out.heads) - 1, index, _blend_at(entry, index, values, progress))
        yield out
    finally:
        for flat, index, old in reversed(out._undo):
            flat[index] = old
        out._undo.clear()
        for lock in locks:
            lock.release()
        for entry in entries:
            _done(entry)


def smallest_owner(inside: torch.Tensor, rank_of_box: torch.Tensor) -> torch.Tensor:
    """Per cell, the rank of the smallest box that holds it, or ``N`` when none does.

    Args:
        inside (Tensor[N, H, W]): bool, box n holds the cell. rank_of_box (Tensor[N]): int64, each
            box's place when the boxes are sorted smallest first.

    Returns:
        Tensor[H, W] int64 in [0, N]. The minimum is taken in int16 (ranks are below 32,767: a scene
        has at most 256 boxes), a fifth of the time of the int64 one, with the same integers.
    """
    N = inside.shape[0]
    if N >= 2**15 - 1:
        return torch.where(inside, rank_of_box[:, None, None], N).amin(0)
    ranks = rank_of_box.to(torch.int16)[:, None, None]
    none = torch.full((), N, dtype=torch.int16, device=inside.device)
    return torch.where(inside, ranks, none).amin(0).long()
