"""The box panel's declaration: what the page shows about one selected target box.

Every scheme's checks already say, cell by cell, which test the code ran for a box and with what
numbers. A :class:`TargetSpec` declares how the selected box's checks are laid out, so that the
page shows, e.g. for SimOTA, the box's cost row cheapest first and its ten largest IoUs that make
its ``dynamic_k``; for ATSS, its candidates' IoUs as a histogram with the mean and the threshold
lines; for RTMDet, its three cost maps painted on the grid. The server fills in every number
(:func:`losscore.export.target_to_dict`); the page only formats.

A scheme without a declaration gets the automatic panel: one table per test of its checks, with
the checks' values as columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .text import render

__all__ = ["TargetColumn", "TargetTable", "TargetFact", "TargetHistogram", "TargetMap", "TargetSpec"]


def _r(text: Any, lang: str) -> str:
    return render(text, lang)


@dataclass(frozen=True)
class TargetColumn:
    """A value of the checks shown as a table column: ``key`` in ``Check.values``, its heading and unit
    (a unit of :data:`losscore.scene.UNITS`: how the page formats it)."""

    key: str
    label: str
    unit: str = ""

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"key": self.key, "label": _r(self.label, lang), "unit": self.unit}


@dataclass(frozen=True)
class TargetTable:
    """The selected box's checks of one ``test``, one row per cell, ordered by ``sort`` (a value key;
    ``descending`` for largest first), at most ``limit`` rows (the total is said)."""

    test: str
    title: str
    doc: str = ""
    columns: tuple[TargetColumn, ...] = ()  # empty: every value key of the checks, in their order
    sort: str | None = None
    descending: bool = False
    limit: int = 40

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"test": self.test, "title": _r(self.title, lang), "doc": _r(self.doc, lang),
                "columns": [c.to_dict(lang) for c in self.columns], "sort": self.sort,
                "descending": self.descending, "limit": self.limit}


@dataclass(frozen=True)
class TargetFact:
    """One number about the box: ``key`` of the first of its checks of ``test`` (e.g. its dynamic_k)."""

    label: str
    test: str
    key: str
    unit: str = ""

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"label": _r(self.label, lang), "test": self.test, "key": self.key, "unit": self.unit}


@dataclass(frozen=True)
class TargetHistogram:
    """The box's checks of ``test`` binned by ``key`` (``bins`` bins over ``range``), split by the
    check's outcome, with a vertical line at each of ``lines`` (value keys, e.g. mean and threshold)."""

    test: str
    key: str
    title: str
    lines: tuple[tuple[str, str], ...] = ()  # (value key, label)
    bins: int = 20
    range: tuple[float, float] = (0.0, 1.0)
    passed: str = "passed"
    failed: str = "failed"

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"test": self.test, "key": self.key, "title": _r(self.title, lang),
                "lines": [{"key": k, "label": _r(label, lang)} for k, label in self.lines],
                "bins": self.bins, "range": list(self.range), "passed": _r(self.passed, lang),
                "failed": _r(self.failed, lang)}


@dataclass(frozen=True)
class TargetMap:
    """A heat layer for the selected box: ``key`` of its checks of ``test`` at each check's cell
    (NaN elsewhere). Named ``box.<key>`` (or ``box.<test>.<key>`` where two tests share a key)."""

    name: str
    test: str
    key: str
    doc: str
    unit: str = ""
    scale: str = "linear"

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"name": self.name, "doc": _r(self.doc, lang), "unit": self.unit, "scale": self.scale,
                "reduce": "max", "range": None, "target": True}


@dataclass(frozen=True)
class TargetSpec:
    """The box panel of a scheme. ``verdicts``: tests whose check sentences are said above the tables
    (a box with no positive, a conflict lost)."""

    facts: tuple[TargetFact, ...] = ()
    tables: tuple[TargetTable, ...] = ()
    histogram: TargetHistogram | None = None
    maps: tuple[TargetMap, ...] = ()
    verdicts: tuple[str, ...] = ()
    auto: bool = True  # tests without a declared table get an automatic one

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"facts": [f.to_dict(lang) for f in self.facts], "tables": [t.to_dict(lang) for t in self.tables],
                "histogram": None if self.histogram is None else self.histogram.to_dict(lang),
                "maps": [m.to_dict(lang) for m in self.maps], "verdicts": list(self.verdicts), "auto": self.auto}
