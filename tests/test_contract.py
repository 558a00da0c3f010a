"""The declared contract between losscore and the page, and the page's side of it.

* Every scheme's declaration names everything the page reads: no map, column, rule, loss term,
  focal parameter, stage phase or inspector field of a real result is left for the page to guess.
* No JavaScript module of the page computes a domain number (the rule is written out below).
* No import cycle inside ``losscore``; the math modules import neither the scene layer nor the
  conformance harness.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from losscore import export, registry
from losscore.scene import STAGE_NAME, UNITS, Box, Pin, Scene

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = sorted(registry.all_schemes())


def busy_scene(name: str) -> Scene:
    """Boxes of many shapes (a thin one, a tiny one, two sharing a cell) and a pin on the first level."""
    spec = registry.get_scheme(name)
    boxes = (Box(3, 52, 60, 148, 260), Box(0, 300, 300, 420, 380), Box(1, 500, 100, 520, 300),
             Box(2, 318, 318, 324, 323), Box(1, 310, 305, 400, 370))
    pins = (Pin(0, 0, 12, 30, 100.0, 244.0, 60.0, 90.0),) if spec.pred_box else ()
    return Scene(name, 640, 640, 4, boxes, seed=3, progress=0.6, pins=pins, device="cpu")


@pytest.fixture(scope="module", params=SCHEMES)
def explained(request):
    name = request.param
    run = export.run_scene(busy_scene(name))
    return registry.get_scheme(name), run, export.result_to_dict(run, maps=None, stage_data=0)


def test_every_result_name_is_declared(explained):
    spec, run, doc = explained
    columns = {c.name: c for c in spec.columns}
    assert set(spec.required_columns) <= set(columns)
    assert set(run.result.positives) <= set(columns), "a positives column the scheme does not declare"
    assert set(spec.column_set("default")) <= set(run.result.positives)
    for column in spec.columns:
        assert column.unit in UNITS, (column.name, column.unit)
        assert column.doc and column.group, column.name
        if column.name in run.result.positives:
            tensor = run.result.positives[column.name]
            assert tensor.dim() == 1 or tensor.shape[1] == len(column.parts), column.name
        if column.box:
            assert column.box == "xyxy" and column.unit == "px" and column.parts == ("x1", "y1", "x2", "y2")
        for placeholder in re.findall(r"\{([a-z_0-9]+)\}", column.formula):
            assert placeholder in columns, (column.name, placeholder)
    assert set(run.result.maps) == {m.name for m in spec.maps}
    for m in spec.maps:
        assert m.unit in UNITS and m.scale in ("linear", "log", "count") and m.reduce in ("max", "sum"), m
    for rule in spec.rules:
        assert len(rule.glyph) == 1 and rule.doc, rule
    assert len({r.glyph for r in spec.rules}) == len(spec.rules), "two rules share a glyph"
    assert set(spec.rule_names) >= {row["rule"] for row in doc["positives"]}
    for box_column in (spec.pred_box, spec.target_box):
        assert box_column is None or columns[box_column].box == "xyxy"
    inspector = spec.inspector
    assert set(inspector.target_columns) | set(inspector.loss_columns) <= set(columns)
    assert {inspector.target_map, inspector.loss_map} - {None} <= {m.name for m in spec.maps}
    assert {c.group for c in spec.columns} <= {name for name, _ in inspector.groups}


def test_loss_composition_and_focal_are_declared(explained):
    spec, run, doc = explained
    composition = doc["composition"]
    assert composition is not None and spec.losses is not None
    declared = {t.name for t in spec.losses.terms}
    assert [t["name"] for t in composition["terms"]] == [t.name for t in spec.losses.terms]
    assert {t["name"] for t in composition["terms"]} <= declared
    for term in composition["terms"]:
        assert all(isinstance(p["label"], str) and p["label"] for p in term["parts"])
    params = {p.name for p in spec.params}
    if spec.focal is not None:
        assert spec.focal.gamma in params and (spec.focal.alpha is None or spec.focal.alpha in params)
        assert doc["focal"]["gamma"] == run.scene.params[spec.focal.gamma]
    else:
        assert doc["focal"] is None


def test_stages_follow_one_pattern_and_declared_phases(explained):
    spec, run, doc = explained
    phases = {p.name for p in spec.phases}
    assert doc["stages"], "the run records its stages"
    for stage in doc["stages"]:
        assert STAGE_NAME.match(stage["name"]), stage["name"]
        assert stage["phase"] in phases, (spec.name, stage["name"])
        assert stage["level"] is None or stage["level"] in [lv["name"] for lv in doc["levels"]], stage["name"]


def test_checks_name_real_cells_and_say_why(explained):
    spec, run, doc = explained
    levels = doc["levels"]
    for check in doc["checks"]:
        assert 0 <= check["level"] < len(levels) and 0 <= check["gt"] < len(doc["boxes"])
        assert check["text"] and isinstance(check["passed"], bool)
        H, W = levels[check["level"]]["grid"]
        if not check["test"].startswith("neighbour"):  # a neighbour that would fall off the grid
            assert 0 <= check["gi"] < W and 0 <= check["gj"] < H, check


def test_counts_are_the_positives_counted(explained):
    spec, run, doc = explained
    rows = doc["positives"]
    assert doc["counts"]["total"] == len(rows)
    for L, per_anchor in enumerate(doc["counts"]["per_level_anchor"]):
        for a, n in enumerate(per_anchor):
            assert n == sum(1 for r in rows if r["level"] == L and r["anchor"] == a)
    for box in doc["counts"]["per_box"]:
        assert box["total"] == sum(1 for r in rows if r["gt"] == box["gt"])


# -- the page computes no domain number ---------------------------------------------------------
# Rule: outside the three modules named below, a page module contains no arithmetic and no ordering:
# no binary -, *, /, %, **; no <, >, <=, >=; no +=, -=, ++, --; no Math.* call; no .reduce(. Strings,
# template text and comments do not count ("+" stays allowed: it joins strings). The exceptions:
#   views/geometry.js  coordinates and indices: cell -> image px -> screen px, pointer hit-tests,
#                      flat-array indices, and the learner's own edits of a box (drag, nudge, typing)
#   views/colour.js    values -> colours (heat raster, legend)
#   views/format.js    numbers -> text
# So a verdict, a count, a cell of a box, a sum of loss terms or a unit conversion can only come
# from the server: there is nowhere else to compute it.
ARITHMETIC_ALLOWED = {"views/geometry.js", "views/colour.js", "views/format.js"}
TOKEN = re.compile(r"\*\*=?|\+\+|--|=>|===?|!==?|<=|>=|[-+*/%]=|[-+*/%<>]|[A-Za-z_$][\w$]*|\d[\w.]*|\"\"|\S")
KEYWORDS = {"return", "typeof", "case", "in", "of", "new", "delete", "void", "throw", "else", "do", "await", "yield",
            "import", "export", "instanceof"}


def _ends_a_value(token: str) -> bool:
    """Whether an operator after ``token`` is binary (the token ends an operand)."""
    return token in (")", "]", '""', "RE") or (token[:1].isalnum() or token[:1] in "_$") and token not in KEYWORDS


def offences(code: str) -> list[str]:
    """The forbidden operators of (comment- and string-free) code, see the rule above."""
    found = []
    tokens = TOKEN.findall(code)
    for index, token in enumerate(tokens):
        before = tokens[index - 1] if index else ""
        after = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ("++", "--", "+=", "-=", "*=", "/=", "%=", "**=", "**"):
            found.append(token)
        elif token in ("*", "/", "%", "-", "<", ">", "<=", ">=") and _ends_a_value(before):
            found.append(token)
        elif token == "Math" and after == ".":
            found.append("Math.")
        elif token == "reduce" and before == "." and after == "(":
            found.append(".reduce(")
    return found


def _code_only(source: str) -> str:
    """JavaScript with comments, string literals, template text and regex literals blanked out
    (template ${...} expressions are kept)."""
    out, i, n = [], 0, len(source)
    prev = ""
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j
            continue
        if source.startswith("/*", i):
            j = source.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "'\"":
            j = i + 1
            while j < n and source[j] != c:
                j += 2 if source[j] == "\\" else 1
            out.append('""')
            i = j + 1
            prev = '"'
            continue
        if c == "`":
            j, depth = i + 1, 0
            parts = []
            while j < n:
                if source[j] == "\\":
                    j += 2
                    continue
                if source.startswith("${", j):
                    k, depth = j + 2, 1
                    while k < n and depth:
                        depth += {"{": 1, "}": -1}.get(source[k], 0)
                        k += 1
                    parts.append(" " + _code_only(source[j + 2:k - 1]) + " ")
                    j = k
                    continue
                if source[j] == "`":
                    break
                j += 1
            out.append('""' + "".join(parts))
            i = j + 1
            prev = '"'
            continue
        if c == "/" and prev.strip()[-1:] in ("", "(", ",", "=", ":", "[", "!", "&", "|", "?", "{", ";", "}"):
            j = i + 1  # a regex literal
            while j < n and source[j] != "/":
                j += 2 if source[j] == "\\" else 1
            j += 1
            while j < n and source[j].isalpha():
                j += 1
            out.append("RE")
            i = j
            prev = "RE"
            continue
        out.append(c)
        if not c.isspace():
            prev = c
        i += 1
    return "".join(out)


def js_modules():
    base = ROOT / "static" / "js"
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*.js"))


@pytest.mark.parametrize("module", js_modules())
def test_page_module_has_no_arithmetic_outside_its_geometry(module):
    if module in ARITHMETIC_ALLOWED:
        pytest.skip("one of the three modules the rule allows arithmetic in")
    code = _code_only((ROOT / "static" / "js" / module).read_text(encoding="utf-8"))
    offenders = []
    for number, line in enumerate(code.splitlines(), 1):
        found = offences(line)
        if found:
            offenders.append(f"{module}:{number}: {found} in {line.strip()[:110]}")
    assert offenders == []


def test_the_rule_catches_arithmetic():
    caught = lambda code: bool(offences(_code_only(code)))  # noqa: E731
    assert caught("const pass = row.r_max < limit;")
    assert caught("const cell = Math.floor(cx / s);")
    assert caught("n += 1;") and caught("const w = box.x2 - box.x1;") and caught("const t = a * b;")
    assert caught("const s = xs.reduce((a, b) => a + b, 0);") and caught("i++")
    assert not caught("const label = `a${i} ${aw}×${ah} px / stride`; // w / h")
    assert not caught("const f = (x) => x === -1 ? 'all' : String(x);")
    assert not caught("text.replace(/^#/, '').split(/[,;]/); import * as geo from './geometry.js';")
    assert not caught("return -1;")


# -- imports ------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every losscore module ``path`` imports, at any depth of the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("losscore")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("losscore"):
                continue
            out.add(target)
            for alias in node.names:  # "from . import yolov5" imports a module
                candidate = f"{target}.{alias.name}"
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (ROOT / Path(*candidate.split("."))).is_dir():
                    out.add(candidate)
    return out


def losscore_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "losscore").rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # "losscore.scene.Box" -> "losscore.scene"
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_losscore_has_no_import_cycle():
    graph = losscore_graph()
    # a package's __init__ importing its own submodules is not a cycle of the code (Python runs the
    # submodule inside the package's import); a submodule importing its parent package is, unless the
    # parent is the top-level "losscore" (an empty namespace module)
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for target in graph[node]:
            if node.startswith(target + ".") and target == "losscore":
                continue
            visit(target)
        stack.pop()

    for module in graph:
        visit(module)
    assert cycles == []


def test_math_modules_import_neither_the_scene_layer_nor_the_harness():
    graph = losscore_graph()
    for family in registry.FAMILIES:
        for name, targets in graph.items():
            if not name.startswith(f"losscore.{family.name}.") or name.rpartition(".")[2] in ("scene", "vectors"):
                continue
            bad = {t for t in targets if t in ("losscore.scene", "losscore.conformance", "losscore.registry",
                                                "losscore.export", "losscore.predictions", "losscore.family")
                   or t.endswith((".scene", ".vectors"))}
            assert bad == set(), f"{name} imports {sorted(bad)}"
