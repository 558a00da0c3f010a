"""What changed between two runs of a scheme (a slider moved, a box moved, or the compare column):
the positives added and removed, the tests whose outcome flipped, the totals, in a few sentences.

The page shows the sentences as they are and lights the cells; it compares nothing itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import get_scheme
from .scene import Scene, SceneResult
from .text import T, Text

__all__ = ["Change", "diff_results", "changed_cells", "Reveal", "reveal"]

Slot = tuple[int, int, int, int, int]  # gt, level, anchor, gi, gj
MAX_FLIPS = 3  # flipped tests named in the summary


@dataclass(frozen=True)
class Change:
    """``added``/``removed``: positive slots (gt, level, anchor, gi, gj) only in after / only in before.
    ``sentences``: the summary, most important first. ``nothing``: no positive, check or loss changed."""

    added: list[Slot]
    removed: list[Slot]
    sentences: list[Text]
    nothing: bool


def _slots(result: SceneResult) -> set[Slot]:
    p = result.positives
    if "query" in p:  # a query scheme: (gt, query) pairs
        return {(g, 0, q, 0, 0) for g, q in zip(p["gt"].tolist(), p["query"].tolist())}
    return set(zip(p["gt"].tolist(), p["level"].tolist(), p["anchor"].tolist(), p["gi"].tolist(), p["gj"].tolist()))


def _params_changed(before: Scene, after: Scene) -> list[tuple[str, Any, Any]]:
    names = list(dict.fromkeys([*before.params, *after.params]))
    return [(n, before.params.get(n), after.params.get(n)) for n in names if before.params.get(n) != after.params.get(n)]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def diff_results(before_scene: Scene, before: SceneResult, after_scene: Scene, after: SceneResult) -> Change:
    """Compare two results of the same image (the scheme may differ in compare mode)."""
    a, b = _slots(before), _slots(after)
    added, removed = sorted(b - a), sorted(a - b)
    sentences: list[Text] = []
    changed = _params_changed(before_scene, after_scene)
    if before_scene.scheme != after_scene.scheme:
        lead = T("{a} → {b}", a=Text(get_scheme(before_scene.scheme).title),
                 b=Text(get_scheme(after_scene.scheme).title))
    elif changed:
        lead = T("{changes}", changes=", ".join(f"{n} {_fmt(x)} → {_fmt(y)}" for n, x, y in changed))
    elif before_scene.boxes != after_scene.boxes:
        lead = T("boxes moved")
    elif (before_scene.seed, before_scene.progress) != (after_scene.seed, after_scene.progress):
        lead = T("predictions: seed {s0} → {s1}, progress {p0:.3g} → {p1:.3g}", s0=before_scene.seed,
                 s1=after_scene.seed, p0=before_scene.progress, p1=after_scene.progress)
    elif before_scene.pins != after_scene.pins:
        lead = T("pinned predictions moved")
    else:
        lead = T("same scene")
    n_before, n_after = len(a), len(b)
    if n_after > n_before:
        count = T("{n} more positives ({a} → {b})", n=n_after - n_before, a=n_before, b=n_after)
    elif n_after < n_before:
        count = T("{n} fewer positives ({a} → {b})", n=n_before - n_after, a=n_before, b=n_after)
    elif added or removed:
        count = T("{n} positives, {k} of them moved", n=n_after, k=len(added))
    else:
        count = T("the same {n} positives", n=n_after)
    sentences.append(T("{lead}: {count}", lead=lead, count=count))
    flips = _flipped_checks(before, after) if before_scene.scheme == after_scene.scheme else []
    for check in flips[:MAX_FLIPS]:
        sentences.append(T("now {verdict}: {text}", verdict=T("passes") if check.passed else T("fails"), text=check.text))
    total_a, total_b = float(before.losses["total"]), float(after.losses["total"])
    same_total = total_a == total_b or (total_a != total_a and total_b != total_b)  # NaN == NaN here
    if not same_total:
        sentences.append(T("total loss {a:.4g} → {b:.4g}", a=total_a, b=total_b))
    nothing = not added and not removed and not flips and same_total
    if nothing and before_scene.scheme == after_scene.scheme and changed:
        spec = get_scheme(after_scene.scheme)
        hints = [p.inert_hint for name, _, _ in changed for p in spec.params if p.name == name and p.inert_hint]
        sentences.append(T("Nothing changed for this scene.") if not hints else
                         T("Nothing changed for this scene: {hint}", hint=Text(hints[0])))
    return Change(added, removed, sentences, nothing)


def _flipped_checks(before: SceneResult, after: SceneResult):
    """Checks of the same (box, level, anchor, cell, test) whose outcome differs, as they are now."""
    old = {(c.gt, c.level, c.anchor, c.gi, c.gj, c.test): c.passed for c in before.check_list()}
    out, said = [], set()
    for c in after.check_list():
        key = (c.gt, c.level, c.anchor, c.gi, c.gj, c.test)
        if key in old and old[key] != c.passed and str(c.text) not in said:
            said.add(str(c.text))  # the same neighbour test repeats for each kept anchor
            out.append(c)
    return out


def changed_cells(change: Change) -> dict[str, list[dict[str, int]]]:
    as_dict = lambda s: {"gt": s[0], "level": s[1], "anchor": s[2], "gi": s[3], "gj": s[4]}  # noqa: E731
    return {"added": [as_dict(s) for s in change.added], "removed": [as_dict(s) for s in change.removed]}



@dataclass(frozen=True)
class Reveal:
    """A learner's guess of the positive cells of one level, against the code's answer."""

    hits: list[tuple[int, int]]
    misses: list[tuple[int, int]]
    extras: list[tuple[int, int]]
    reasons: dict[tuple[int, int], Text]


def reveal(result: SceneResult, level: int, guess: list[tuple[int, int]], rule_docs: dict[str, str],
           anchor: int = -1) -> Reveal:
    """Compare guessed cells (gi, gj) of ``level`` (and ``anchor``, -1: any) with the cells the code made
    positive; say, for each miss and each extra, why in one sentence (the rule that made it positive,
    or the test that failed)."""
    p = result.positives
    anchors = p["anchor"].tolist()
    here = [k for k, lv in enumerate(p["level"].tolist()) if lv == level and anchor in (-1, anchors[k])]
    gi, gj, rule, gt = p["gi"].tolist(), p["gj"].tolist(), p["rule"].tolist(), p["gt"].tolist()
    positive: dict[tuple[int, int], list[int]] = {}
    for k in here:
        positive.setdefault((gi[k], gj[k]), []).append(k)
    guessed = list(dict.fromkeys((int(a), int(b)) for a, b in guess))
    hits = [c for c in guessed if c in positive]
    extras = [c for c in guessed if c not in positive]
    misses = [c for c in sorted(positive) if c not in set(guessed)]
    names = list(rule_docs)
    reasons: dict[tuple[int, int], Text] = {}
    for cell in misses:
        k = positive[cell][0]
        name = names[rule[k]] if 0 <= rule[k] < len(names) else str(rule[k])
        reasons[cell] = T("({gi}, {gj}) is positive for box #{gt} by the {rule} rule: {doc}", gi=cell[0], gj=cell[1],
                          gt=gt[k], rule=Text(name), doc=rule_docs.get(name, ""))
    checks = [c for c in result.check_list() if c.level == level and anchor in (-1, c.anchor)]
    for cell in extras:
        failed = [c for c in checks if (c.gi, c.gj) == cell and not c.passed]
        reasons[cell] = (T("({gi}, {gj}) is not positive: {why}", gi=cell[0], gj=cell[1], why=failed[0].text) if failed
                         else T("({gi}, {gj}) is not positive: no box tests this cell, so it stays background",
                                gi=cell[0], gj=cell[1]))
    return Reveal(hits, misses, extras, reasons)
