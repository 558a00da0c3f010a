"""Scene in, JSON bytes out: the synchronous work each request does, run off the event loop.

Everything numeric comes from ``losscore.export`` (which reads ``losscore``'s ``SceneResult`` and
``Trace``); this module only validates the scene into a ``SceneError`` on failure and encodes with
orjson (non-finite floats are already the strings ``"nan"``/``"inf"``/``"-inf"``).
"""
from __future__ import annotations

from typing import Any, Iterable

import orjson

from losscore import export, registry
from losscore.scene import Scene

from .errors import scene_error

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=ORJSON_OPTIONS)


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
