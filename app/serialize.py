"""Scene in, JSON bytes out: the synchronous work each request does, run off the event loop.

Everything numeric comes from ``losscore.export`` (which reads ``losscore``'s ``SceneResult`` and
``Trace``); this module only validates the scene into a ``SceneError`` on failure and encodes with
orjson (non-finite floats are already the strings ``"nan"``/``"inf"``/``"-inf"``).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import orjson

from losscore import export, registry
from losscore.scene import Scene
from losscore.wire import LazyFlat

from .errors import scene_error

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
CHUNK_BYTES = 1 << 20  # a streamed response is written in pieces of about this size
SLICE_VALUES = 1 << 16  # a large stage tensor is encoded this many values at a time
BYTES_PER_VALUE = 12  # JSON text per number, for the size estimate (float32 shortest digits and a comma)


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=ORJSON_OPTIONS)


def iter_json(value: Any, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """:func:`dumps` of ``value`` in pieces of about ``chunk_bytes``: joined, the same bytes.

    The data of a large stage tensor (a :class:`~losscore.wire.LazyFlat`, see
    :func:`losscore.export.lazy_data`) is encoded ``SLICE_VALUES`` values at a time, so neither its
    list of values nor its whole text ever exists at once.
    """
    buffer = bytearray()
    for piece in _pieces(value):
        buffer += piece
        if len(buffer) >= chunk_bytes:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _pieces(value: Any) -> Iterator[bytes]:
    if isinstance(value, LazyFlat):
        yield b"["
        for start in range(0, value.array.size, SLICE_VALUES):
            text = dumps(value.values(start, start + SLICE_VALUES))  # "[v, ...]"
            yield (b"," + text[1:-1]) if start else text[1:-1]
        yield b"]"
    elif isinstance(value, dict):
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            yield (b"," if index else b"") + dumps(key) + b":"
            yield from _pieces(item)
        yield b"}"
    elif isinstance(value, list) and value and isinstance(value[0], dict) and ("tensors" in value[0] or "data" in value[0]):
        yield b"["  # stages and their tensors: the lists that hold lazy data
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from _pieces(item)
        yield b"]"
    else:
        yield dumps(value)


def estimate_bytes(run: export.Run, *, stage_data: int | None = None, stages: bool = True,
                   maps: Iterable[str] | None = None) -> int:
    """About how many bytes the JSON document of ``run`` takes (an estimate that errs high): what
    decides between answering at once, streaming, and 413 before anything is encoded."""
    result = run.result
    values = sum(t.numel() for t in result.positives.values())
    if stages:
        values += sum(rec.value.numel() for stage in run.trace for rec in stage.tensors.values()
                      if stage_data is None or rec.value.numel() <= stage_data)
    wanted = list(result.maps) if maps is None else [m for m in maps if m in result.maps]
    map_bytes = sum(4 * t.numel() for name in wanted for t in result.maps[name]) * 4 // 3
    return values * BYTES_PER_VALUE + map_bytes + (64 << 10)


class TooLarge(Exception):
    """The response would be larger than the server's limit (answered 413)."""

    def __init__(self, estimate: int, limit: int) -> None:
        super().__init__(f"about {estimate / 1e6:.0f} MB, above the limit of {limit} bytes")
        self.megabytes = round(estimate / 1e6)
        self.estimate, self.limit = estimate, limit


class Prepared(NamedTuple):
    """A computed response: ``payload`` when small enough to answer at once, else ``doc`` to
    stream with :func:`iter_json` (its large stage data lazy)."""

    payload: bytes | None
    doc: dict[str, Any] | None
    estimate: int


def prepare_explain(scene: Scene, maps: Iterable[str] | None, stage_data: int | None, stages: bool,
                    columns: Iterable[str] | None, checks: bool, inline_bytes: int, max_bytes: int,
                    target: int | None = None, lang: str = "en", layout: str = "rows") -> Prepared:
    """Compute an explain response: bytes when its estimate is at most ``inline_bytes``, a document
    to stream up to ``max_bytes``, else :class:`TooLarge`."""
    computed = run(scene, record=stages)
    estimate = estimate_bytes(computed, stage_data=stage_data, stages=stages, maps=maps)
    if estimate > max_bytes:
        raise TooLarge(estimate, max_bytes)
    if estimate <= inline_bytes:
        return Prepared(dumps(export.result_to_dict(computed, maps=maps, stage_data=stage_data, stages=stages,
                                                    columns=columns, checks=checks, arrays=True, target=target,
                                                    lang=lang, layout=layout)), None, estimate)
    with export.lazy_data():
        doc = export.result_to_dict(computed, maps=maps, stage_data=stage_data, stages=stages, columns=columns,
                                    checks=checks, arrays=True, target=target, lang=lang, layout=layout)
    return Prepared(None, doc, estimate)


def prepare_export(scene: Scene, inline_bytes: int, max_bytes: int, lang: str = "en") -> Prepared:
    """Compute an export document, as :func:`prepare_explain`."""
    computed = run(scene)
    estimate = estimate_bytes(computed)
    if estimate > max_bytes:
        raise TooLarge(estimate, max_bytes)
    if estimate <= inline_bytes:
        return Prepared(dumps(export.build_export(computed, arrays=True, lang=lang)), None, estimate)
    with export.lazy_data():
        doc = export.build_export(computed, arrays=True, lang=lang)
    return Prepared(None, doc, estimate)


def run(scene: Scene, record: bool = True) -> export.Run:
    """Validate and compute a scene; a ``ValueError`` from losscore becomes a :class:`SceneError`."""
    try:
        scene = registry.validate(scene)
        return export.run_scene(scene, record=record, validated=True)
    except ValueError as exc:
        raise scene_error(exc) from exc


def explain_document(scene: Scene, maps: Iterable[str] | None, stage_data: int | None,
                     stages: bool = True, columns: Iterable[str] | None = None,
                     checks: bool = False) -> dict[str, Any]:
    return export.result_to_dict(run(scene, record=stages), maps=maps, stage_data=stage_data,
                                 stages=stages, columns=columns, checks=checks, arrays=True)


def explain_bytes(scene: Scene, maps: Iterable[str] | None, stage_data: int | None,
                  stages: bool = True, columns: Iterable[str] | None = None, checks: bool = False) -> bytes:
    return dumps(explain_document(scene, maps, stage_data, stages, columns, checks))


def export_document(scene: Scene) -> dict[str, Any]:
    return export.build_export(run(scene), arrays=True)


def export_bytes(scene: Scene) -> bytes:
    return dumps(export_document(scene))
