"""A tiny but real scheme for testing the API layer independently of the families.

The scheme lives in ``tests/toy_family``, a package of the same shape as every family (loss,
scene, vectors, ``FAMILY``); :func:`with_toy` serves it next to the real families.

``toy``: one level of stride 32; each box is assigned to the cell holding its centre (rule
"centre"); the prediction of every cell is a 32x32 px box on the cell centre, and the map ``iou``
is the IoU (``losscore.boxes.bbox_iou``) of each cell's prediction with the box whose centre it
holds (0 elsewhere). The loss is ``mean(1 - iou)`` over positives. The tests below check it by hand.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from losscore import registry
from losscore.scene import Box, Scene
from toy_family import FAMILY as TOY_FAMILY
from toy_family.scene import explain_toy

TOY = TOY_FAMILY.schemes[0]


@contextmanager
def with_toy():
    """The real families plus the toy one: the one line a new family adds to ``FAMILIES``."""
    with registry.using(registry.FAMILIES + (TOY_FAMILY,)):
        yield TOY


def toy_body(**overrides) -> dict:
    body = {"scheme": "toy", "image": {"width": 128, "height": 96}, "nc": 3,
            "boxes": [{"cls": 1, "x1": 16, "y1": 16, "x2": 48, "y2": 48}], "device": "cpu"}
    body.update(overrides)
    return body


def test_toy_centre_cell_and_iou():
    # Box (16,16)-(48,48): centre (32, 32) -> cell gi = gj = 1 (32/32), cell box (48, 48, 32, 32)
    # overlaps the 32x32 target on (32..48)^2 = 256 px; union 1024 + 1024 - 256 = 1792 -> IoU 1/7.
    scene = Scene("toy", 128, 96, 3, (Box(1, 16, 16, 48, 48),),
                  params={"gain": 1.0}, device="cpu")
    result = explain_toy(scene, None)
    assert result.positives["gi"].tolist() == [1] and result.positives["gj"].tolist() == [1]
    assert result.positives["iou"].item() == pytest.approx(256 / 1792, rel=1e-5)
    assert result.losses["total"].item() == pytest.approx(1 - 256 / 1792, rel=1e-5)
    assert result.maps["iou"][0].shape == (1, 3, 4)  # 96/32 rows, 128/32 columns
