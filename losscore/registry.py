"""The one explicit list of families, and the lookups built from it.

Adding a family is one new package under ``losscore/`` (see :mod:`losscore.family`) and one line
in :data:`FAMILIES`. Nothing registers itself on import. :func:`using` swaps the whole list for
the duration of a ``with`` block (tests run a toy family next to the real ones that way).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import MappingProxyType
from typing import Iterator, Mapping

from . import detr, mmdet, mmdet_assigners, ultralytics, yolov3, yolov5, yolov9, yolox
from .family import Family, Runner, Tolerance
from .scene import Scene, SceneResult, SchemeSpec, validate_scene
from .text import T, TextError
from .trace import Trace

__all__ = ["FAMILIES", "get_scheme", "all_schemes", "get_family", "runner", "tolerance", "vector_families",
           "explain", "validate", "using"]

FAMILIES: tuple[Family, ...] = (
    yolov5.FAMILY,
    yolov3.FAMILY,
    yolov9.FAMILY,
    mmdet.FAMILY,
    detr.FAMILY,
    yolox.FAMILY,
    mmdet_assigners.FAMILY,
    ultralytics.FAMILY,
)


def _index_schemes(families: tuple[Family, ...]) -> Mapping[str, SchemeSpec]:
    schemes: dict[str, SchemeSpec] = {}
    for family in families:
        for spec in family.schemes:
            if spec.name in schemes:
                raise RuntimeError(f"scheme {spec.name!r} is declared by two families")
            schemes[spec.name] = spec
    return MappingProxyType(schemes)


def _index_vectors(families: tuple[Family, ...]) -> Mapping[str, Family]:
    owners: dict[str, Family] = {}
    for family in families:
        for name in family.vectors:
            if name in owners:
                raise RuntimeError(f"vector family {name!r} is answered by {owners[name].name} and {family.name}")
            owners[name] = family
    return MappingProxyType(owners)


class _Index:
    """The lookups built from one tuple of families."""

    def __init__(self, families: tuple[Family, ...]) -> None:
        self.families = families
        self.schemes = _index_schemes(families)
        self.vector_owners = _index_vectors(families)


_current = _Index(FAMILIES)


@contextmanager
def using(families: tuple[Family, ...]) -> Iterator[None]:
    """Serve exactly ``families`` inside the block (e.g. ``FAMILIES + (toy.FAMILY,)`` in a test)."""
    global _current
    outer, _current = _current, _Index(tuple(families))
    try:
        yield
    finally:
        _current = outer


def get_scheme(name: str) -> SchemeSpec:
    """The scheme called ``name``; ``ValueError`` naming the known ones otherwise."""
    schemes = _current.schemes
    try:
        return schemes[name]
    except (KeyError, TypeError):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:60] + "…"
        raise TextError("scheme", T("unknown scheme {shown}; known: {known}", shown=shown, known=sorted(schemes))) from None


def all_schemes() -> Mapping[str, SchemeSpec]:
    return _current.schemes


def get_family(name: str) -> Family:
    for family in _current.families:
        if family.name == name:
            return family
    raise ValueError(f"family: unknown family {name!r}; known: {[f.name for f in _current.families]}")


def vector_families() -> list[str]:
    """Every vector family some package answers (``yolov5``, ``yolox@main``, ...)."""
    return sorted(_current.vector_owners)


def runner(vector_family: str, group: str) -> Runner:
    """The conformance runner for one group of a vector family."""
    owners = _current.vector_owners
    if vector_family not in owners:
        raise ValueError(f"family: unknown family {vector_family!r}; known: {vector_families()}")
    groups = owners[vector_family].vectors[vector_family]
    if group not in groups:
        raise ValueError(f"group: no runner for {vector_family}/{group}; known: {sorted(groups)}")
    return groups[group]


def tolerance(vector_family: str, group: str, key: str) -> Tolerance | None:
    """A tolerance the family declares for one key of one group (None: the harness default)."""
    owner = _current.vector_owners.get(vector_family)
    return None if owner is None else owner.tolerances.get((vector_family, group, key))


def validate(scene: Scene) -> Scene:
    """:func:`losscore.scene.validate_scene` against the scene's own scheme."""
    return validate_scene(scene, get_scheme(scene.scheme))


def explain(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Validate ``scene`` and run its scheme's real code on it (the library's one-call entry)."""
    scene = validate(scene)
    return get_scheme(scene.scheme).explain(scene, trace)
