"""docs/api-contract.md keeps up with the server.

The contract is written by hand; these checks make a route, a query parameter or a key that the
server has and the document does not name a failing test:

* every ``/api/v1`` route registered in the app is named as ``METHOD /path``;
* every query parameter of every ``/api/v1`` route (the explain route's first) appears as `` `name` ``;
* every top-level key of a real explain response (every query option on; two grid schemes and
  DETR), of an export document, of ``GET /api/v1/schemes`` and of ``SchemeSpec.to_dict()`` appears
  as `` `key` ``; the export's ``format`` and ``version`` are the current ones;
* the keys of the nested objects the document describes (counts, composition, focal, checks, box
  panel, stages and their tensors and cells, the declarations' params, maps, rules, columns, …) are
  named, in a field list inside a code span or as a key of a JSON example.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from losscore import export, registry

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "docs" / "api-contract.md"
BOXES = [{"cls": 0, "x1": 75, "y1": 163, "x2": 125, "y2": 243}, {"cls": 1, "x1": 300, "y1": 300, "x2": 420, "y2": 380}]
EVERYTHING = "maps=all&stages=true&stage_data=8&columns=all&checks=all&target=0&lang=en"
GRID_SCHEMES = ("yolox", "yolov10")  # box panel with box.* maps and facts; split and DFL columns
QUERY_SCHEME = "detr"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(warmup=False))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


def _scene(scheme: str) -> dict[str, Any]:
    return {"scheme": scheme, "image": {"width": 640, "height": 640}, "nc": 4, "boxes": BOXES, "device": "cpu"}


@pytest.fixture(scope="module")
def explained(client) -> dict[str, dict[str, Any]]:
    out = {}
    for scheme in (*GRID_SCHEMES, QUERY_SCHEME):
        response = client.post(f"/api/v1/explain?{EVERYTHING}", json=_scene(scheme))
        assert response.status_code == 200, response.text
        out[scheme] = response.json()
    return out


@pytest.fixture(scope="module")
def exported(client) -> dict[str, Any]:
    response = client.post("/api/v1/export?lang=en", json=_scene("yolov5"))
    assert response.status_code == 200, response.text
    return response.json()


# -- helpers --------------------------------------------------------------------------------
def missing_keys(doc: str, keys: Iterable[str]) -> list[str]:
    """The keys the document does not write as `` `key` `` (a code span of the key alone)."""
    spans = set(re.findall(r"`([^`\n]+)`", doc))
    return sorted({key for key in keys if key not in spans})


def missing_names(doc: str, keys: Iterable[str]) -> list[str]:
    """The keys the document does not name at all: neither as a word inside a code span (a field
    list such as `` `[{name, doc, unit}]` ``) nor as a ``"key":`` of a JSON example. For the keys
    of nested objects, which the document lists inside braces."""
    words = {word for span in re.findall(r"`([^`\n]+)`", doc) for word in re.findall(r"[A-Za-z_][\w.]*", span)}
    quoted = set(re.findall(r'"([^"\n]+)":', doc))
    return sorted({key for key in keys if key not in words and key not in quoted})


def _walk_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, included routers opened (FastAPI keeps them either flat, as
    ``APIRoute``s, or, from 0.16x, as included-router entries holding the original router)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _walk_routes(original.routes, prefix + (getattr(context, "prefix", "") or ""))
            continue
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or methods is None:  # a mount (static files) has no methods of its own
            continue
        for method in sorted(methods):
            if method != "HEAD":
                yield method, prefix + path


def api_routes(app) -> list[tuple[str, str]]:
    return sorted({(m, p) for m, p in _walk_routes(app.routes) if p.startswith("/api/v1/")})


def query_parameters(app) -> dict[str, list[str]]:
    """Query parameter names per ``METHOD /path`` of the ``/api/v1`` routes, from the app's schema."""
    out = {}
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            out[f"{method.upper()} {path}"] = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    return out


def unnamed_routes(doc: str, routes: Iterable[tuple[str, str]]) -> list[str]:
    """The routes the document does not name as ``METHOD /path``."""
    return [f"{method} {path}" for method, path in routes if f"{method} {path}" not in doc]


def _keys_of_items(items: Iterable[dict[str, Any]]) -> set[str]:
    return {key for item in items for key in item}


# -- routes and parameters --------------------------------------------------------------------
def test_every_api_route_is_named(app, doc):
    routes = api_routes(app)
    assert ("POST", "/api/v1/explain") in routes and ("GET", "/api/v1/lessons/{lesson_id}") in routes, routes
    assert unnamed_routes(doc, routes) == []
    for path in ("/healthz", "/docs", "/openapi.json", "/vendor/plotly.min.js"):
        assert path in {p for _, p in _walk_routes(app.routes)} and path in doc, path


def test_every_query_parameter_is_named(app, doc):
    parameters = query_parameters(app)
    explain = parameters["POST /api/v1/explain"]
    assert {"maps", "stages", "stage_data", "columns", "checks", "target", "lang"} <= set(explain)
    assert missing_keys(doc, explain) == []
    assert {route: missing_keys(doc, names) for route, names in parameters.items() if missing_keys(doc, names)} == {}


# -- the explain response -----------------------------------------------------------------------
def test_every_explain_key_is_named(explained, doc):
    for scheme, body in explained.items():
        assert missing_keys(doc, body) == [], scheme
    assert set(explained[QUERY_SCHEME]) == set(explained[GRID_SCHEMES[0]])


def test_every_key_of_the_explain_parts_is_named(explained, doc):
    keys: set[str] = set()
    for body in explained.values():
        keys |= set(body["counts"]) | _keys_of_items(body["counts"]["per_box"])
        keys |= _keys_of_items(body["counts"]["split"] or [])
        if body["composition"] is not None:
            keys |= set(body["composition"]) | _keys_of_items(body["composition"]["terms"])
            keys |= _keys_of_items(p for t in body["composition"]["terms"] for p in t["parts"])
        keys |= _keys_of_items(body["levels"]) | _keys_of_items(body["boxes"]) | _keys_of_items(body["checks"])
        keys |= _keys_of_items(level for m in body["maps"].values() for level in m["levels"])
        keys |= _keys_of_items((body["matrices"] or {}).values())
        target = body["target"]
        assert target is not None
        keys |= set(target) | _keys_of_items(target["facts"]) | _keys_of_items(target["tables"])
        keys |= _keys_of_items(row for table in target["tables"] for row in table["rows"])
        keys |= _keys_of_items(col for table in target["tables"] for col in table["columns"])
        keys |= _keys_of_items(body["stages"]) | _keys_of_items(t for s in body["stages"] for t in s["tensors"])
        keys |= _keys_of_items(c for s in body["stages"] for c in s["cells"])
    for scheme in ("atss", "yolov5"):  # a focal curve with positives on it; a histogram in the box panel
        body = explained.get(scheme) or _explain(scheme)
        keys |= set(body["focal"]) | set(body["focal"]["curve"]) | _keys_of_items(body["focal"]["marks"])
        keys |= set(body["focal"]["points"] or {})
        if body["target"]["histogram"] is not None:
            keys |= set(body["target"]["histogram"]) | _keys_of_items(body["target"]["histogram"]["lines"])
    assert missing_names(doc, keys) == []


def _explain(scheme: str) -> dict[str, Any]:
    run = export.run_scene(export.scene_from_dict(_scene(scheme)), record=False)
    return export.result_to_dict(run, stages=False, checks="all", target=0)


def test_query_kind_is_described(explained, doc):
    body = explained[QUERY_SCHEME]
    assert registry.get_scheme(QUERY_SCHEME).kind == "queries"
    assert body["queries"] and body["matrices"] and body["maps"] == {} and body["box_cells"] is None
    assert '"queries"' in doc and missing_keys(doc, ["query", "queries", "matrices", "query_columns"]) == []


# -- the export document --------------------------------------------------------------------------
def test_every_export_key_is_named(exported, doc):
    assert missing_keys(doc, exported) == []
    assert missing_keys(doc, exported["result"]) == []
    assert missing_names(doc, set(exported["upstream"]) | set(exported["library"])) == []
    assert f'"format": "{export.FORMAT}", "version": {export.VERSION}' in doc
    assert "stages" not in exported["result"]


# -- the scheme declaration -----------------------------------------------------------------------
def test_every_scheme_declaration_key_is_named(client, doc):
    body = client.get("/api/v1/schemes?lang=en").json()
    assert missing_keys(doc, body) == [] and missing_keys(doc, body["limits"]) == []
    assert missing_names(doc, body["scene_defaults"]) == []
    keys: set[str] = set()
    for spec in registry.all_schemes().values():
        declared = spec.to_dict("en")
        keys |= set(declared)
        for name in ("params", "maps", "rules", "columns", "phases", "query_columns", "matrices"):
            keys |= _keys_of_items(declared[name])
        keys |= set(declared["inspector"]) | _keys_of_items(declared["inspector"]["groups"])
        target = declared["target"]
        keys |= set(target) | _keys_of_items(target["facts"]) | _keys_of_items(target["tables"]) | _keys_of_items(target["maps"])
        keys |= _keys_of_items(c for t in target["tables"] for c in t["columns"])
        for name in ("losses", "focal", "split"):
            keys |= set(declared[name] or {})
        keys |= _keys_of_items((declared["losses"] or {}).get("terms", []))
        keys |= _keys_of_items((declared["split"] or {}).get("values", []))
    assert missing_keys(doc, {key for spec in registry.all_schemes().values() for key in spec.to_dict("en")}) == []
    assert missing_names(doc, keys) == []
    assert {s["name"] for s in body["schemes"]} == set(registry.all_schemes())
    assert [name for name in registry.all_schemes() if name not in doc] == []


# -- the checks above can fail ----------------------------------------------------------------------
def test_a_key_or_route_left_out_of_the_doc_is_reported(app, doc):
    for key in ("compute_ms", "box_cells", "stage_data", "query_columns"):
        assert missing_keys(doc, [key]) == []
        assert missing_keys(doc.replace(f"`{key}`", key), [key]) == [key]
    for key in ("per_level_anchor", "loss_without_alpha"):
        assert missing_names(doc, [key]) == []
        stripped = re.sub(rf"\b{key}\b", "x", doc)
        assert missing_names(stripped, [key]) == [key]
    without_reveal = doc.replace("POST /api/v1/reveal", "POST /reveal")
    assert unnamed_routes(without_reveal, api_routes(app)) == ["POST /api/v1/reveal"]
