"""Texts a learner reads, in English and 中文, from one catalogue per language.

A text is written once, in English, as a template with ``{name}`` (or ``{name:.4g}``) placeholders,
and carries its values: ``T("{count} positive rows from {boxes} boxes", count=19, boxes=1)``. It
renders in a language by looking its template up in that language's catalogue
(``losscore/catalogue/zh.json``, English template -> Chinese template) and filling the values in;
numbers and code symbols are never translated. A plain string (a parameter's doc, a stage title) is
its own template with no values. A template missing from a catalogue renders in English (the test
``tests/test_text.py`` fails on every such template the code can produce).

A :class:`Text` *is* its English sentence (a ``str`` subclass), so code that only knows strings
(``"overwritten" in note``, ``html.escape(stage.title)``, a log line) keeps working and reads
English; :func:`render` gives any language. A value that is itself a :class:`Text` renders in the
same language as the sentence around it (``T("now {verdict}: {text}", verdict=T("passes"), ...)``).

Errors: :class:`TextError` is the ``ValueError`` of a field path and a translatable message
(``str(exc)`` is ``"boxes[0].cls: expected ..."`` in English); :func:`error_message` gives the
message of any exception in a language.

:func:`untranslated` is the rule the tests use to find English left in a translated text.

Nothing here imports torch or the web layer.
"""
from __future__ import annotations

import json
import re
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["Text", "T", "TextError", "join", "render", "error_message", "catalogue", "LANGUAGES", "placeholders",
           "untranslated", "has_words"]

LANGUAGES = ("en", "zh")
CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"


class Text(str):
    """An English template and its values; the string itself is the English sentence.

    ``Text(template, values)``; :func:`T` is the short form with keyword values. A template with
    no values is not formatted (it may hold braces a page fills in, e.g. a column formula).
    """

    template: str
    values: Mapping[str, Any]

    def __new__(cls, template: str, values: Mapping[str, Any] | None = None) -> "Text":
        values = dict(values or {})
        self = super().__new__(cls, template.format(**values) if values else template)
        self.template = template
        self.values = values
        return self

    def render(self, lang: str = "en") -> str:
        return render(self, lang)

    def __str__(self) -> str:
        return str.__str__(self)  # a plain str: the English sentence

    def __repr__(self) -> str:
        return f"T({self.template!r}, **{self.values!r})"

    def __reduce__(self):
        return (Text, (self.template, dict(self.values)))


def T(template: str, **values: Any) -> Text:  # noqa: N802 - the conventional name of a translatable text
    """A translatable text: ``template`` in English with ``{placeholders}``, and their values."""
    return Text(template, values)


class TextError(ValueError):
    """A ``ValueError`` about one field of a scene, with a translatable message.

    ``str(exc)`` is ``"<path>: <English message>"`` (the form every ``losscore`` error has, whose
    path the web layer turns into a location); ``exc.path`` is the field path (``"boxes[0].cls"``,
    may be ``""``) and ``exc.text`` the message alone, a :class:`Text` or a plain template.
    """

    def __init__(self, path: str, text: Text | str) -> None:
        self.path = path
        self.text = text if isinstance(text, Text) else Text(text)
        super().__init__(f"{path}: {text}" if path else str(text))

    def render(self, lang: str = "en") -> str:
        """The whole message, path first, in ``lang``."""
        message = render(self.text, lang)
        return f"{self.path}: {message}" if self.path else message

    def as_text(self) -> Text:
        """The whole message as one :class:`Text` (to quote it inside another message)."""
        return T("{path}: {message}", path=self.path, message=self.text) if self.path else self.text


def join(parts: Sequence[Text | str], template: str = "{a}, {b}") -> Text:
    """``parts`` joined two by two with ``template`` (``"{a}, {b}"``, ``"{a} and {b}"``), each part in
    the reader's language: ``join([T("x"), T("y")], "{a} and {b}")`` is ``"x and y"`` in English."""
    texts = [p if isinstance(p, Text) else Text(p) for p in parts]
    if not texts:
        return Text("")
    out = texts[0]
    for part in texts[1:]:
        out = T(template, a=out, b=part)
    return out


def error_message(exc: BaseException, lang: str = "en") -> str:
    """The message of ``exc`` in ``lang``: a :class:`TextError` rendered, any other exception as ``str``."""
    return exc.render(lang) if isinstance(exc, TextError) else str(exc)


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
    if isinstance(text, Text):
        if lang == "en":
            return str(text)
        template = catalogue(lang).get(text.template, text.template)
        if not text.values:
            return template
        values = {k: render(v, lang) if isinstance(v, Text) else v for k, v in text.values.items()}
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError, TypeError):  # a broken translation never hides the sentence
            return text.template.format(**values)
    if isinstance(text, str):
        return catalogue(lang).get(text, text) if lang != "en" else text
    return "" if text is None else str(text)


# -- finding English left in a translation ---------------------------------------------------
_CJK = "\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\u3000-\u303f"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\s{_CJK}]+")
_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
_BACKQUOTED = re.compile(r"`[^`]*`")
_LEAD = "(“‘«"  # straight quotes are not stripped: 'box' is a quoted value, not a word
_TRAIL = ")”’»,;:!?.…"
# Words of one or two letters that are English (other short tokens are symbols: x, y, gi, gj, tx, cx).
_SHORT_WORDS = frozenset("a i am an as at be by do go he if in is it me my no of on or so to up us we".split())


def _is_word(token: str) -> bool:
    """An English word, not code or a symbol: after stripping brackets and punctuation around it,
    ASCII letters only (an inner ' or - allowed). Not a word: a token with ``_ ( [ . /``, digits or
    a straight quote in it; an abbreviation or CamelCase name (an upper-case letter after the first:
    BCE, IoU, CIoU, PyTorch); a token of one or two letters that is not a common English word
    (x, gi, tx, cx)."""
    word = token.lstrip(_LEAD).rstrip(_TRAIL)
    if not word or not _WORD.fullmatch(word):
        return False
    if any(c.isupper() for c in word[1:]):
        return False
    return len(word) > 2 or word.lower() in _SHORT_WORDS


def untranslated(text: str, run: int = 3) -> list[str]:
    """Runs of ``run`` (three) or more English words in ``text``, outside code and symbols.

    The text is cut into tokens at white space and at CJK characters (a CJK stretch is a token of
    its own, so it ends a run); text inside backquotes is left out; a token counts as a word by
    :func:`_is_word` (``anchor_t``, ``utils/loss.py``, ``hyp['box']``, ``σ(obj)``, ``0.5``, ``BCE``,
    ``CIoU``, ``YOLOv5`` are not words). Returns each run as it stands in ``text``.
    """
    text = _BACKQUOTED.sub(" ` ", text)
    runs: list[str] = []
    current: list[re.Match] = []
    for match in [*_TOKEN.finditer(text), None]:
        if match is not None and _is_word(match.group()):
            current.append(match)
            continue
        if len(current) >= run:
            runs.append(text[current[0].start():current[-1].end()])
        current = []
    return runs


def has_words(text: str) -> bool:
    """Whether ``text`` holds at least one English word (see :func:`untranslated`)."""
    return bool(untranslated(text, run=1))
