"""Lessons: the questions learners ask, each answered by a few steps on a real scene.

A lesson is data, one JSON file in ``losscore/lesson_data/`` (no code branch per lesson): its
question, the scheme, and its steps. A step names the scene it starts from (``"keep"`` keeps the
learner's, else boxes or a preset plus view settings), the controls it shows (the others are
hidden), what to light up, the text in English and 中文, an optional prediction the learner makes
before the code's answer is revealed (``predict``: ``level``, optionally ``anchor``, and ``clue: "heat"``
when the step's text reads the heat layer, which then stays visible while every answer is hidden), and
on the last step the rule as upstream's code has it with
the line it comes from. :func:`lessons` and :func:`lesson` give them in one language.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["LESSON_DIR", "load_lessons", "lessons", "lesson", "TEXT_FIELDS"]

LESSON_DIR = Path(__file__).resolve().parent / "lesson_data"
TEXT_FIELDS = ("question", "summary")  # per lesson; per step: text, rule


@lru_cache(maxsize=1)
def load_lessons() -> tuple[dict[str, Any], ...]:
    """Every lesson file, in their declared order."""
    out = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(LESSON_DIR.glob("*.json"))]
    return tuple(sorted(out, key=lambda lesson: lesson["order"]))


def _pick(text: dict[str, str] | None, lang: str) -> str | None:
    return None if text is None else text.get(lang) or text["en"]


def lessons(lang: str = "en") -> list[dict[str, Any]]:
    """The lesson list: id, question, summary, scheme, number of steps, the LEARNERS.md row it answers."""
    return [{"id": item["id"], "order": item["order"], "scheme": item["scheme"], "confusion": item.get("confusion"),
             "question": _pick(item["question"], lang), "summary": _pick(item.get("summary"), lang),
             "steps": len(item["steps"])} for item in load_lessons()]


def lesson(lesson_id: str, lang: str = "en") -> dict[str, Any]:
    """One lesson with its texts in ``lang``; ``ValueError`` for an unknown id."""
    for item in load_lessons():
        if item["id"] == lesson_id:
            steps = [{**step, "text": _pick(step["text"], lang), "rule": _pick(step.get("rule"), lang)}
                     for step in item["steps"]]
            return {**item, "question": _pick(item["question"], lang), "summary": _pick(item.get("summary"), lang),
                    "steps": steps}
    raise ValueError(f"lesson: unknown lesson {lesson_id!r}; known: {[x['id'] for x in load_lessons()]}")
