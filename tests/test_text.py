"""Every text the server produces has a 中文 template, with the same placeholders, and nothing English
is left in what a 中文 reader gets.

* The templates the code can produce are collected twice: statically (an AST scan of ``losscore``
  for ``T("...")`` literals and the string literals passed as a doc, title, explain, text or label
  to the spec classes, the box-panel declarations of :mod:`losscore.target_spec`, ``Trace.record``,
  ``Check`` and ``StageCell``), and at run time (every registered scheme on the preset scenes, with a
  trace, every note, check, stage and cell label).
* The catalogue's templates keep their placeholders and format specs.
* :func:`losscore.text.untranslated` is the rule for "English left over" (the page tests use it too).
"""
from __future__ import annotations

import ast
import inspect
import pickle
import string
from pathlib import Path

import pytest

import losscore
from losscore import export, registry
from losscore.diff import diff_results, reveal
from losscore.presets import PRESETS, preset_scene
from losscore.scene import (Box, Check, ColumnSpec, FocalSpec, InspectorSpec, LevelSpec, LossPart, LossSpec,
                            LossTermSpec, MapSpec, ParamSpec, PhaseSpec, Pin, RuleSpec, Scene, SchemeSpec, SplitSpec,
                            StageCell, validate_scene)
from losscore.target_spec import TargetColumn, TargetFact, TargetHistogram, TargetMap, TargetTable
from losscore.text import (T, Text, TextError, catalogue, error_message, has_words, join, placeholders, render,
                           untranslated)
from losscore.trace import Trace

ZH = catalogue("zh")
LOSSCORE = Path(losscore.__file__).resolve().parent
APP = LOSSCORE.parent / "app"  # the web layer's own 422 messages are T() templates too


# -- the static scan --------------------------------------------------------------------------
def _fields(cls, *names: str) -> tuple[list[str], set[str]]:
    """The parameter names of ``cls`` (positional order) and the ones that hold learner texts."""
    return list(inspect.signature(cls).parameters), set(names)


TEXT_ARGUMENTS = {  # callee name -> (its parameters in order, those holding texts)
    "T": (["template"], {"template"}),
    "Text": (["template", "values"], {"template"}),
    "TextError": (["path", "text"], {"text"}),
    "record": (["name", "title", "explain"], {"title", "explain"}),
    "Check": _fields(Check, "text", "label"),
    "StageCell": _fields(StageCell, "label"),
    "LossPart": _fields(LossPart, "label"),
    "ParamSpec": _fields(ParamSpec, "doc", "inert_hint"),
    "ColumnSpec": _fields(ColumnSpec, "doc", "formula"),
    "RuleSpec": _fields(RuleSpec, "name", "doc"),
    "MapSpec": _fields(MapSpec, "doc"),
    "FocalSpec": _fields(FocalSpec, "applies_to"),
    "LossTermSpec": _fields(LossTermSpec, "doc", "part_factor", "divisor", "gain"),
    "LossSpec": _fields(LossSpec, "formula", "multiplier"),
    "PhaseSpec": _fields(PhaseSpec, "title", "doc"),
    "InspectorSpec": _fields(InspectorSpec, "groups"),
    "SchemeSpec": _fields(SchemeSpec, "title", "doc"),
    "SplitSpec": _fields(SplitSpec, "values"),
    "Preset": (["name", "title", "doc", "build"], {"title", "doc"}),
    "render": (["text", "lang"], {"text"}),
    # the box panel (losscore/target_spec.py): rendered with render() by TargetSpec.to_dict
    "TargetTable": _fields(TargetTable, "title", "doc"),
    "TargetColumn": _fields(TargetColumn, "label"),
    "TargetFact": _fields(TargetFact, "label"),
    "TargetHistogram": _fields(TargetHistogram, "title", "lines", "passed", "failed"),
    "TargetMap": _fields(TargetMap, "doc"),
}
TEMPLATE_CALLS = {"T", "Text"}
PAIRS = {"groups", "lines", "values"}  # (key, text) pairs: the text is the second element


def _callee(node: ast.Call, aliases: dict[str, str] | None = None) -> str | None:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return (aliases or {}).get(name, name)


def _aliases(tree: ast.Module) -> dict[str, str]:
    """``from ..target_spec import TargetColumn as Col``: Col -> TargetColumn (for the callees scanned)."""
    return {a.asname: a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names if a.asname and a.name in TEXT_ARGUMENTS}


class _Scan:
    """String literals in text positions of one module; f-strings and concatenations there are
    flagged (they bake numbers into English that no catalogue can translate)."""

    def __init__(self, path: Path, tree: ast.Module, callees: set[str]) -> None:
        self.path, self.callees, self.aliases = path, callees, _aliases(tree)
        self.constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                          and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                          for t in n.targets if isinstance(t, ast.Name)}
        self.templates: set[str] = set()
        self.baked: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node, self.aliases) in callees:
                self.call(node)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "notes" and node.args):
                self.text(node.args[0], "notes.append")
            elif (isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "notes"
                  and isinstance(node.value, ast.List)):
                for element in node.value.elts:
                    self.text(element, "notes +=")
            elif isinstance(node, ast.FunctionDef) and ("note" in node.name or "reason" in node.name):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return) and inner.value is not None:
                        self.text(inner.value, f"return of {node.name}")

    def call(self, node: ast.Call) -> None:
        callee = _callee(node, self.aliases)
        names, wanted = TEXT_ARGUMENTS[callee]
        if callee == "record" and len(node.args) < 3 and not node.keywords:
            return  # not Trace.record
        bound = {names[i]: arg for i, arg in enumerate(node.args) if i < len(names)}
        bound.update({k.arg: k.value for k in node.keywords if k.arg})
        for name in wanted & set(bound):
            value = bound[name]
            if name in PAIRS:
                for pair in getattr(value, "elts", []):
                    self.pair(pair, f"{callee}.{name}")
            elif callee in TEMPLATE_CALLS:
                self.text(value, callee, names_only=True)
            else:
                self.text(value, f"{callee}({name}=)")

    def pair(self, node: ast.AST, where: str) -> None:
        """A (key, text) pair, or a choice of pairs (``(a, "A") if x else (b, "B")``)."""
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 2:
            self.text(node.elts[1], where)
        elif isinstance(node, ast.IfExp):
            self.pair(node.body, where)
            self.pair(node.orelse, where)
        else:  # a pair the scan cannot read: its text would go unchecked
            self.baked.append(f"{self.path.relative_to(LOSSCORE.parent)}:{node.lineno} ({where}: not a literal (key, text) pair)")

    def text(self, node: ast.AST, where: str, names_only: bool = False) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            self.templates.add(node.value)
        elif isinstance(node, ast.IfExp):
            self.text(node.body, where, names_only)
            self.text(node.orelse, where, names_only)
        elif isinstance(node, ast.Name) and node.id in self.constants:
            self.templates.add(self.constants[node.id])
        elif isinstance(node, (ast.Tuple, ast.List)) and not names_only:
            for element in node.elts:
                self.text(element, where)
        elif isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp) and _has_text(node)):
            self.baked.append(f"{self.path.relative_to(LOSSCORE.parent)}:{node.lineno} ({where})")


def _has_text(node: ast.AST) -> bool:
    return any(isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
               for n in ast.walk(node))


def _scan() -> tuple[set[str], list[str]]:
    """(templates of the code, baked texts)."""
    templates: set[str] = set()
    baked: list[str] = []
    for path in sorted(LOSSCORE.rglob("*.py")) + sorted(APP.rglob("*.py")):
        scan = _Scan(path, ast.parse(path.read_text(encoding="utf-8")), set(TEXT_ARGUMENTS))
        templates |= scan.templates
        baked += scan.baked
    return templates, baked


TEMPLATES, BAKED = _scan()


def test_the_scan_sees_every_kind_of_text():
    for template in ("keep an anchor when max(w/aw, aw/w, h/ah, ah/h) < anchor_t",  # ParamSpec doc
                     "Anchor-ratio filter",  # a stage title
                     "{kind} of predicted vs target boxes",  # T() in the math
                     "expected an integer in [0, {max}], got {got}",  # a validation message
                     "Assignment",  # an inspector group title
                     "centre",  # a rule name
                     "50×80 box at (100, 203)",  # a preset title
                     "nc = 1: upstream skips the class loss (cls = 0).",  # a constant note
                     "Its candidates, by IoU",  # a box-panel table title (TargetTable)
                     "rank on level",  # a box-panel column, imported as Col (TargetColumn)
                     "IoU threshold = mean + std",  # a box-panel fact (TargetFact)
                     "IoU of its candidates",  # a box-panel histogram title (TargetHistogram)
                     "this box's total cost at each valid point",  # a box-panel heat layer (TargetMap)
                     "no box {target}: the scene has {n} box(es), numbered from 0"):  # the web layer's 422
        assert template in TEMPLATES, template


def test_no_text_is_an_f_string_or_a_concatenation():
    """A number baked into an English f-string cannot be translated: texts are T(...) templates."""
    assert not BAKED, BAKED


def test_every_template_of_the_code_has_a_chinese_template():
    missing = sorted(t for t in TEMPLATES if t not in ZH)
    assert not missing, missing


# -- the catalogue ----------------------------------------------------------------------------
def _fields_of(template: str) -> list[tuple[str, str, str | None]]:
    return sorted((name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None)


def test_every_chinese_template_keeps_the_placeholders_of_its_key():
    broken = {en: zh for en, zh in ZH.items() if _fields_of(en) != _fields_of(zh)}
    assert not broken, broken
    assert all(placeholders(en) == placeholders(zh) for en, zh in ZH.items())


def test_every_chinese_template_is_chinese():
    english = {en: untranslated(zh) for en, zh in ZH.items() if untranslated(zh)}
    assert not english, english
    same = [en for en, zh in ZH.items() if zh == en and untranslated(en)]  # formulas and symbols may stay
    assert not same, same


def test_chinese_templates_fill_in():
    """Each template formats with the values its key takes (a broken brace would fall back to English)."""
    for en, zh in ZH.items():
        names = placeholders(en)
        if not names:
            continue
        values = {name: 1.5 for name in names}
        try:
            en.format(**values)
        except (ValueError, TypeError):  # a spec like {n:d} or a list placeholder: strings fit every {name}
            values = {name: "x" for name in names}
            try:
                en.format(**values)
            except (ValueError, TypeError):
                continue
        zh.format(**values)


# -- run time ---------------------------------------------------------------------------------
def _scenes(name: str):
    spec = registry.get_scheme(name)
    for preset in PRESETS:
        boxes, params = preset_scene(spec, preset.name, 640, 640, 80)
        try:  # a preset laid out on a coarse stride may fall outside the image for some scheme (a 422 on the page)
            registry.validate(Scene(name, 640, 640, 80, tuple(boxes), params, device="cpu"))
        except TextError:
            continue
        for progress in (0.0, 0.5, 1.0):
            yield Scene(name, 640, 640, 80, tuple(boxes), params, progress=progress, device="cpu")
    for progress in (0.0, 0.5, 1.0):
        yield Scene(name, 640, 640, 80, (), progress=progress, device="cpu")
    box = (Box(0, 75, 163, 125, 243),)
    for params in VARIANTS.get(name, ()):
        yield Scene(name, 640, 640, 80, box, params, device="cpu")
    yield Scene(name, 640, 640, 1, box, device="cpu")
    for pins in PINS.get(spec.family, ()):
        for progress in (0.0, 1.0):
            yield Scene(name, 640, 640, 80, box, pins=pins, progress=progress, device="cpu")


VARIANTS = {  # parameters that switch a sentence on
    "yolov5": ({"fl_gamma": 1.5}, {"gr": 0.0}, {"autobalance": True}, {"label_smoothing": 0.1}),
    "yolov3": ({"assign": "darknet"}, {"lambda_scale": False}),
    "yolov9": ({"fl_gamma": 1.0},),
    "focal": ({"reduction": "sum"}, {"use_avg_factor": False}, {"loss_weight": 2.0}),
    "detr": ({"num_queries": 1}, {"set_cost_giou": 0.0, "eos_coef": 0.5}),
    "yolox": ({"version": "main"}, {"use_l1": True, "iou_loss_type": "giou"}),
    "atss": ({"topk": 1}, {"ignore_iof_thr": 0.5}),
    "rtmdet": ({"topk": 1}, {"iou_weight": 0.0}),
    "yolov8": ({"small_object_enlargement": False}, {"topk": 1}),
    "yolov10": ({"epoch": 50}, {"epoch": 99}, {"small_object_enlargement": False}, {"o2o_topk2": 2}),
    "yolo26": ({"epoch": 50}, {"epoch": 99}, {"small_object_enlargement": False}),
}
PINS = {  # a pin per family: a pinned box out of reach is said in a note
    "detr": ((Pin(0, 0, 0, 0, 700.0, 100.0, 50.0, 50.0),),),
    "yolox": ((Pin(0, 0, 12, 25, 100.0, 203.0, 40.0, 30.0),), (Pin(0, 0, 8, 8, 68.0, 68.0, 1e-30, 1e-30),)),
    "mmdet_assigners": ((Pin(0, 0, 12, 25, 100.0, 203.0, 50.0, 80.0),),),
    "ultralytics": ((Pin(0, 0, 12, 25, 100.0, 203.0, 60.0, 90.0),), (Pin(0, 0, 8, 8, 68.0, 68.0, 0.001, 30.0),)),
}


def _objects(run: export.Run) -> list[tuple[str, object]]:
    """Every text object of a run, as the code made it."""
    result = run.result
    out = [("note", n) for n in result.notes]
    for c in result.check_list():
        out += [("check.text", c.text), ("check.label", c.label)]
    for stage in run.trace:
        out += [(f"{stage.name}.title", stage.title), (f"{stage.name}.explain", stage.explain)]
    if result.stage_cells is not None:
        for name, cells in result.stage_cells().items():
            out += [(f"{name}.cell", c.label) for c in cells[:50]]
    if result.composition is not None:
        out += [("composition.part", p.label) for t in result.composition.terms for p in t.parts]
    return out


def _not_in_catalogue(obj: object) -> list[str]:
    """Templates of ``obj`` (and of the Texts among its values) that the catalogue lacks."""
    if isinstance(obj, Text):  # every template; of its values only the Texts (a str value is a symbol or a name)
        missing = [] if obj.template in ZH else [obj.template]
        for value in obj.values.values():
            if isinstance(value, Text):
                missing += _not_in_catalogue(value)
        return missing
    if isinstance(obj, str):
        return [obj] if has_words(obj) and obj not in ZH else []
    return []


def _document_texts(doc: dict) -> list[tuple[str, str]]:
    out = [("note", n) for n in doc["notes"]]
    out += [(f"check.{k}", c[k]) for c in doc["checks"] for k in ("text", "label")]
    for s in doc["stages"]:
        out += [(f"{s['name']}.title", s["title"]), (f"{s['name']}.explain", s["explain"])]
        out += [(f"{s['name']}.cell", c["label"]) for c in s["cells"][:50]]
    if doc["composition"]:
        comp = doc["composition"]
        out += [("composition.formula", comp["formula"]), ("composition.multiplier", comp["multiplier_label"])]
        for t in comp["terms"]:
            out += [(f"composition.{t['name']}.{k}", t[k]) for k in ("doc", "gain_label", "divisor_label")]
            out += [(f"composition.{t['name']}.part", p["label"]) for p in t["parts"]]
    if doc["focal"]:
        out += [("focal.formula", doc["focal"]["formula"]), ("focal.applies_to", doc["focal"]["applies_to"])]
    if doc["target"]:  # the box panel of the first box
        panel = doc["target"]
        out += [("target.fact", f["label"]) for f in panel["facts"]] + [("target.verdict", v) for v in panel["verdicts"]]
        for t in panel["tables"]:
            out += [(f"target.{t['test']}.{k}", t[k]) for k in ("title", "doc")]
            out += [(f"target.{t['test']}.column", c["label"]) for c in t["columns"]]
            out += [(f"target.{t['test']}.{k}", r[k]) for r in t["rows"][:20] for k in ("where", "text", "label")]
        if panel["histogram"]:
            h = panel["histogram"]
            out += [(f"target.histogram.{k}", h[k]) for k in ("title", "passed_label", "failed_label")]
            out += [("target.histogram.line", line["label"]) for line in h["lines"]]
    return out


SCHEMES = list(registry.all_schemes())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_text_of_a_run_renders_in_chinese(scheme):
    missing: set[str] = set()
    english: dict[str, list[str]] = {}
    for scene in _scenes(scheme):
        run = export.run_scene(scene)
        for where, obj in _objects(run):
            missing.update(_not_in_catalogue(obj))
        box = 0 if scene.boxes else None
        en = export.result_to_dict(run, lang="en", stage_data=0, target=box)
        zh = export.result_to_dict(run, lang="zh", stage_data=0, target=box)
        assert len(_document_texts(en)) == len(_document_texts(zh))
        for (where, e), (_, z) in zip(_document_texts(en), _document_texts(zh)):
            if untranslated(z) or (z == e and untranslated(e)):
                english.setdefault(where, []).append(z)
    assert not missing, sorted(missing)
    assert not english, {k: v[:2] for k, v in english.items()}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_declarations_have_no_english_doc_left(scheme):
    spec = registry.get_scheme(scheme)
    left = []

    def walk(en, zh, path):
        if isinstance(en, dict):
            for key in en:
                walk(en[key], zh[key], f"{path}.{key}")
        elif isinstance(en, list):
            for i, (a, b) in enumerate(zip(en, zh)):
                walk(a, b, f"{path}[{i}]")
        elif isinstance(en, str) and path.rsplit(".", 1)[-1] in DOC_KEYS:
            prose = has_words(en) if not path.endswith("formula") else untranslated(en)  # a formula may stay
            if untranslated(zh) or (zh == en and prose):
                left.append((path, zh))

    walk(spec.to_dict("en"), spec.to_dict("zh"), scheme)
    walk(spec.target.to_dict("en"), spec.target.to_dict("zh"), f"{scheme}.target")  # the box panel
    assert not left, left
    for rule in spec.rules:  # a rule's name is a key; the page shows its "label" (and stage cells, reveal)
        assert rule.name in ZH, rule.name
        assert rule.to_dict("zh")["label"] == ZH[rule.name] and rule.to_dict("en")["label"] == rule.name


DOC_KEYS = {"title", "doc", "formula", "applies_to", "multiplier", "gain", "divisor", "part_factor", "label",
            "passed", "failed"}


def test_presets_titles_and_docs_translate():
    for preset in PRESETS:
        for text in (preset.title, preset.doc):
            assert text in ZH and not untranslated(render(text, "zh")), text
        assert preset.to_dict("zh") == {"name": preset.name, "title": ZH[preset.title], "doc": ZH[preset.doc]}
        assert preset.to_dict("en") == {"name": preset.name, "title": preset.title, "doc": preset.doc}


def test_compare_and_reveal_sentences_render_in_chinese():
    box = (Box(0, 75, 163, 125, 243),)
    runs = {}
    for name, anchor_t in (("before", 4.0), ("after", 2.0)):
        scene = Scene("yolov5", 640, 640, 80, box, {"anchor_t": anchor_t}, device="cpu")
        runs[name] = export.run_scene(scene)
    change = diff_results(runs["before"].scene, runs["before"].result, runs["after"].scene, runs["after"].result)
    assert change.sentences
    for sentence in change.sentences:
        assert not _not_in_catalogue(sentence) and not untranslated(render(sentence, "zh")), sentence
    spec = registry.get_scheme("yolov5")
    docs = {r.name: render(r.doc, "zh") for r in spec.rules}
    out = reveal(runs["before"].result, 0, [(0, 0)], docs)
    for text in out.reasons.values():
        assert not untranslated(render(text, "zh")), render(text, "zh")
    nothing = diff_results(runs["before"].scene, runs["before"].result,
                           Scene("yolov5", 640, 640, 80, box, {"sort_obj_iou": True}, device="cpu"),
                           runs["before"].result)
    assert not untranslated(render(nothing.sentences[-1], "zh")), render(nothing.sentences[-1], "zh")


# -- validation messages ----------------------------------------------------------------------
BAD_SCENES = [
    (dict(width=641), "image.width: 641 px is not a multiple of the largest stride 32 (the grids of all levels "
                      "must be whole)"),
    (dict(boxes=(Box(90, 0, 0, 10, 10),)), "boxes[0].cls: expected an integer in [0, 79], got 90"),
    (dict(boxes=(Box(1, 20, 0, 10, 10),)), "boxes[0].x2: must be greater than x1 (20), got 10"),
    (dict(params={"anchor_t": 50}), "params.anchor_t: 50 is above the maximum 10.0"),
    (dict(params={"nope": 1}), None),
    (dict(pins=(Pin(0, 0, 500, 0, 1, 1, 1, 1),)), "predictions.pins[0].gi: column 500 is outside the 80-column grid"),
    (dict(levels=(LevelSpec(16, ((1, 1),)), LevelSpec(8, ((1, 1),)))),
     "levels[1].stride: strides must increase from level to level (16 then 8)"),
    (dict(nc=1000, width=2048, height=2048), None),
    (dict(device="tpu"), "device: expected 'auto', 'cpu' or 'cuda', got 'tpu'"),
]


@pytest.mark.parametrize("overrides, english", BAD_SCENES)
def test_validation_messages_are_translatable_and_unchanged_in_english(overrides, english):
    kwargs = dict(scheme="yolov5", width=640, height=640, nc=80, boxes=()) | overrides
    with pytest.raises(TextError) as caught:
        validate_scene(Scene(**kwargs), registry.get_scheme("yolov5"))
    exc = caught.value
    assert isinstance(exc, ValueError)
    if english is not None:
        assert str(exc) == english == error_message(exc, "en")
    path, _, _ = str(exc).partition(": ")
    assert exc.path == path
    zh = error_message(exc, "zh")
    assert zh.startswith(f"{exc.path}: ") and zh != str(exc)  # the path stays for the web layer to split off
    assert not untranslated(zh), zh
    assert exc.text.template in ZH


def test_run_time_errors_of_a_scheme_are_translatable():
    scene = Scene("yolov5", 640, 640, 80, (Box(0, 10, 10, 30, 30),), {"autobalance": True},
                  levels=(LevelSpec(8, ((10, 13),)), LevelSpec(32, ((116, 90),))), device="cpu")
    with pytest.raises(TextError) as caught:
        registry.explain(scene)
    assert str(caught.value) == ("params.autobalance: upstream's ComputeLoss refuses these levels: autobalance: "
                                 "needs strides that include 16 (upstream's reference level)")
    zh = error_message(caught.value, "zh")
    assert zh.startswith("params.autobalance: ") and not untranslated(zh), zh


# -- the mechanism ----------------------------------------------------------------------------
def test_a_text_is_its_english_sentence():
    text = T("{count} positive rows from {boxes} boxes ({per_level}): each box can claim up to 3 cells × 3 "
             "anchors on every level.", count=19, boxes=1, per_level="P3 4, P4 9, P5 6")
    assert isinstance(text, str) and type(str(text)) is str
    assert text == ("19 positive rows from 1 boxes (P3 4, P4 9, P5 6): each box can claim up to 3 cells × 3 anchors "
                    "on every level.")
    assert "positive rows" in text and render(text, "en") == text
    zh = render(text, "zh")
    assert zh != text and "19" in zh and "P3 4, P4 9, P5 6" in zh
    assert pickle.loads(pickle.dumps(text)).values == text.values


def test_texts_inside_texts_render_in_the_same_language():
    nested = T("{direction} neighbour: {reasons}: not added", direction=T("left"),
               reasons=join([T("frac({symbol}) = {frac:.4g} ≥ g = {g:g}", symbol="x", frac=0.62, g=0.5)],
                            "{a} and {b}"))
    assert nested == "left neighbour: frac(x) = 0.62 ≥ g = 0.5: not added"
    zh = render(nested, "zh")
    assert ZH["left"] in zh and "frac(x) = 0.62" in zh and not untranslated(zh)


def test_a_missing_or_broken_translation_falls_back_to_english(monkeypatch):
    assert render(T("no such template {n}", n=1), "zh") == "no such template 1"
    assert render("no such plain text", "zh") == "no such plain text"
    broken = {**ZH, "broken {n}": "坏的 {m}"}
    monkeypatch.setattr("losscore.text.catalogue", lambda lang: broken)
    assert render(T("broken {n}", n=2), "zh") == "broken 2"


@pytest.mark.parametrize("text, runs", [
    ("keep a pair when r_max < anchor_t", ["keep a pair when"]),
    ("保留 max(w/aw, aw/w, h/ah, ah/h) < anchor_t 的配对", []),
    ("the last write wins", ["the last write wins"]),
    ("最后写入者生效（last write wins）", ["last write wins"]),
    ("使用 `last write wins` 规则", []),  # backquoted: code
    ("x, y, w, h 为网格单位", []),  # single letters are symbols
    ("正样本位置 (image, anchor, gj, gi) 为 1", []),  # two-letter symbols end a run
    ("it is in a box", ["it is in a box"]),  # ... but two-letter English words do not
    ("BCE with logits", []),  # two words beside an abbreviation
    ("YOLOv5 CIoU BCE DFL TAL GIoU IoU PyTorch", []),
    ("utils/loss.py ComputeLoss.build_targets hyp['box'] fl_gamma e.g. σ(obj) 0.5", []),
    ("每个框最多 3 个网格 × 3 个锚框", []),
    ("Gains are hard-coded: box 7.5", ["Gains are hard-coded: box"]),
    ("(the paper's gate) is off", ["(the paper's gate) is off"]),
    ("正样本 positive 的 sample 数", []),  # CJK between English words ends a run
])
def test_untranslated_finds_runs_of_three_english_words(text, runs):
    assert untranslated(text) == runs


def test_has_words():
    assert has_words("batch size") and has_words("centre")
    assert not has_words("hyp['box']") and not has_words("P3") and not has_words("BCE 0.3") and not has_words("x y")
