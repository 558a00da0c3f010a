"""The ``losslab`` CLI: explain -> verify round trip, tampering caught, offline HTML report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from losscore.registry import all_schemes
from test_api_toyscheme import toy_body, with_toy

ROOT = Path(__file__).resolve().parents[1]
REAL = "yolov5" if "yolov5" in all_schemes() else None


@pytest.fixture(scope="module", autouse=True)
def _toy_family():
    with with_toy():
        yield


def losslab(*args: str) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process (as `losslab ...`)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(REAL is None, reason="the yolov5 family has not landed")
def test_explain_verify_round_trip_and_tampering(tmp_path):
    scene = {"scheme": REAL, "image": {"width": 320, "height": 320}, "nc": 2, "device": "cpu",
             "boxes": [{"cls": 1, "x1": 40, "y1": 50, "x2": 120, "y2": 200}]}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    explained = losslab("explain", str(tmp_path / "scene.json"), "-o", str(tmp_path / "trace.json"))
    assert explained.returncode == 0, explained.stderr
    doc = json.loads((tmp_path / "trace.json").read_text())
    assert doc["format"] == "losslab-trace" and doc["scene"]["scheme"] == REAL and doc["stages"]

    verified = losslab("verify", str(tmp_path / "trace.json"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK:")

    tensor = next(t for s in doc["stages"] for t in s["tensors"] if t["dtype"] == "float32" and t["data"])
    tensor["data"][0] = (tensor["data"][0] if isinstance(tensor["data"][0], float) else 0.0) + 0.5
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    tampered = losslab("verify", str(tmp_path / "tampered.json"))
    assert tampered.returncode == 1
    assert "MISMATCH" in tampered.stdout and tensor["name"] in tampered.stdout


def test_report_is_self_contained_html(tmp_path, capsys):
    (tmp_path / "scene.json").write_text(json.dumps(toy_body()))
    assert main(["report", str(tmp_path / "scene.json"), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js itself is inline
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)  # no external script
    assert "toy.assign" in page and "Losses" in page and "Positives (1)" in page


def test_invalid_scene_names_the_field(tmp_path, capsys):
    (tmp_path / "scene.json").write_text(json.dumps(toy_body(boxes=[{"cls": 9, "x1": 1, "y1": 1, "x2": 5, "y2": 5}])))
    assert main(["explain", str(tmp_path / "scene.json")]) == 2
    assert "boxes[0].cls" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps(toy_body(nc=0)))
    assert main(["explain", str(tmp_path / "bad.json")]) == 2
    assert "nc:" in capsys.readouterr().err


def test_verify_rejects_a_file_that_is_not_a_trace(tmp_path, capsys):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    assert main(["verify", str(tmp_path / "x.json")]) == 1
    assert "not a losslab-trace" in capsys.readouterr().err


def test_explain_in_process_matches_the_export_endpoint(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    (tmp_path / "scene.json").write_text(json.dumps(toy_body()))
    assert main(["explain", str(tmp_path / "scene.json"), "-o", str(tmp_path / "t.json")]) == 0
    cli_doc = json.loads((tmp_path / "t.json").read_text())
    with TestClient(create_app(Settings(warmup=False))) as client:
        api_doc = client.post("/api/v1/export", json=toy_body()).json()
    for doc in (cli_doc, api_doc):
        doc["result"].pop("compute_ms")
    assert cli_doc == api_doc
