"""Texts a learner reads, in English and 中文, from one catalogue per language.

A text is written once, in English, as a template with ``{name}`` (or ``{name:.4g}``) placeholders,
and carries its values: ``T("{count} positive rows from {boxes} boxes", count=19, boxes=1)``. It
renders in a language by looking its template up in that language's catalogue
(``losscore/catalogue/zh.json``, English template -> Chinese template) and filling the values in;
numbers and code symbols are never translated. A plain string (a parameter's doc, a stage title) is
its own template with no values. A template missing from a catalogue renders in English (the test
``tests/test_text.py`` fails on every such template the code can produce).

Nothing here imports torch or the web layer.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Text", "T", "render", "catalogue", "LANGUAGES", "placeholders"]

LANGUAGES = ("en", "zh")
CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"


@dataclass(frozen=True)
class Text:
    """An English template and its values; ``str(text)`` is the English sentence."""

    template: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def render(self, lang: str = "en") -> str:
        return render(self, lang)

    def __str__(self) -> str:
        return render(self, "en")


def T(template: str, **values: Any) -> Text:  # noqa: N802 - the conventional name of a translatable text
    """A translatable text: ``template`` in English with ``{placeholders}``, and their values."""
    return Text(template, values)


@lru_cache(maxsize=None)
def catalogue(lang: str) -> Mapping[str, str]:
    """English template -> template in ``lang`` (empty for English)."""
    if lang == "en":
        return {}
    path = CATALOGUE_DIR / f"{lang}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def placeholders(template: str) -> set[str]:
    """The names a template fills in (``{count}``, ``{r:.4g}`` -> {"count", "r"})."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def render(text: Text | str, lang: str = "en") -> str:
    """``text`` in ``lang`` (English when the catalogue has no entry for its template)."""
    if isinstance(text, str):
        return catalogue(lang).get(text, text) if lang != "en" else text
    template = catalogue(lang).get(text.template, text.template) if lang != "en" else text.template
    if not text.values:
        return template
    try:
        return template.format(**text.values)
    except (KeyError, IndexError, ValueError):  # a broken translation never hides the sentence
        return text.template.format(**text.values)
