"""The defects a learner hit (issue: structure and contract), each pinned by a test that failed before its fix.

None of these depends on float rounding: where upstream's CIoU alpha can be 0/0 on some CPUs, the
NaN is injected on purpose instead of waiting for a CPU to produce it.
"""
from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from losscore import registry
from losscore.scene import Box, Scene
from losscore.yolov5 import loss as yolov5_loss
from losscore.yolov5.scene import _entropy_floor, _objectness_target_note

BODY = {"scheme": "yolov5", "image": {"width": 640, "height": 640}, "nc": 80, "device": "cpu",
        "boxes": [{"cls": 0, "x1": 75, "y1": 163, "x2": 125, "y2": 243}], "predictions": {"seed": 0, "progress": 1.0}}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(warmup=False))) as test_client:
        yield test_client


def test_a_nan_objectness_target_is_upstreams_number_and_the_page_is_told_why(client, monkeypatch):
    """At progress 1 the perfect head reproduces a target exactly; upstream's CIoU alpha is then 0/0
    on some CPUs (AVX-512 here), the objectness target is NaN and F.binary_cross_entropy refused it
    with a 500. Inject that NaN: the answer is 200, the loss stays NaN as upstream's, and a note says why."""
    real = yolov5_loss.bbox_iou

    def nan_first(*args, **kwargs):
        out = real(*args, **kwargs).clone()
        out.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(yolov5_loss, "bbox_iou", nan_first)
    response = client.post("/api/v1/explain?columns=all", json=BODY)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["losses"]["total"] == "nan" and doc["losses"]["box"] == "nan"
    assert any("NaN CIoU" in note and "upstream's own number" in note for note in doc["notes"])
    floors = [row["obj_bce_floor"] for row in doc["positives"]]
    assert "nan" in floors  # the slot whose target is NaN; the others are finite entropies
    assert all(f == "nan" or math.isfinite(f) for f in floors)


def test_entropy_floor_propagates_nan_instead_of_raising():
    floor = _entropy_floor(torch.tensor([float("nan"), 0.5, 0.0, 1.0]))
    assert math.isnan(floor[0]) and floor[1].item() == pytest.approx(math.log(2), rel=1e-6)
    assert floor[2].item() == 0.0 and floor[3].item() == 0.0
    with pytest.raises(RuntimeError):  # what the positives table called before
        torch.nn.functional.binary_cross_entropy(torch.tensor([float("nan")]), torch.tensor([float("nan")]))


def test_a_422_says_its_location_once(client):
    body = {**BODY, "image": {"width": 650, "height": 640}}
    detail = client.post("/api/v1/explain", json=body).json()["detail"][0]
    assert detail["loc"] == ["body", "image", "width"]
    assert not detail["msg"].startswith("image.width") and "650 px is not a multiple" in detail["msg"]
    body = {**BODY, "boxes": [{"cls": 99, "x1": 1, "y1": 1, "x2": 5, "y2": 5}], "nc": 3}
    detail = client.post("/api/v1/explain", json=body).json()["detail"][0]
    assert detail["loc"] == ["body", "boxes", 0, "cls"] and not detail["msg"].startswith("boxes")


def test_an_inverted_box_is_refused_at_the_corner_that_is_wrong(client):
    body = {**BODY, "boxes": [{"cls": 0, "x1": 50, "y1": 10, "x2": 20, "y2": 40}]}
    detail = client.post("/api/v1/explain", json=body).json()["detail"][0]
    assert detail["loc"] == ["body", "boxes", 0, "x2"] and "greater than x1" in detail["msg"]


def _explain(params=None, boxes=(Box(0, 75, 163, 125, 243),), progress=0.5):
    return registry.explain(Scene("yolov5", 640, 640, 80, boxes, params=params or {}, progress=progress, device="cpu"))


def test_at_gr_0_the_objectness_target_is_1_and_the_note_says_so():
    result = _explain({"gr": 0.0})
    assert torch.equal(result.positives["tobj"], torch.ones_like(result.positives["tobj"]))
    note = next(n for n in map(str, result.notes) if "objectness target" in n)
    assert "gr = 0" in note and "is 1" in note and "soft" not in note


def test_the_objectness_note_never_says_a_target_of_0_leaves_a_floor():
    class Compute:
        gr = 1.0
    positives = {"tobj": torch.tensor([0.0, 0.0]), "obj_bce_floor": torch.tensor([0.0, 0.0])}
    note = _objectness_target_note(Compute(), positives)
    assert "exactly 0 or 1" in note and "leaves 0" not in note
    positives = {"tobj": torch.tensor([0.0, 0.8]), "obj_bce_floor": torch.tensor([0.0, 0.5004])}
    note = _objectness_target_note(Compute(), positives)
    assert "t = 0.8 leaves 0.5004" in note


def test_yolov3_hard_targets_get_no_soft_target_sentence():
    result = registry.explain(Scene("yolov3", 640, 640, 80, (Box(0, 75, 163, 125, 243),), device="cpu"))
    assert not any("soft" in str(n) for n in result.notes)


def test_neighbour_reasons_are_words_not_codes():
    # centre (12.5 px, 203) on P3 is x = 1.5625 cells: frac 0.5625 >= g and the centre is 1.56 > 1 cell
    # from the left border; at x = 4 px (0.5 cells) the left rule fails on both counts
    result = _explain(boxes=(Box(0, -21, 163, 29, 243),))
    texts = [c.text for c in result.check_list() if c.test == "neighbour.left" and c.level == 0]
    assert texts and all("both" not in str(t) for t in texts)
    assert any("≥ g" in str(t) and "border" in str(t) for t in texts)
