"""A tiny but real scheme for testing the API layer independently of the families.

``toy``: one level of stride 32; each box is assigned to the cell holding its centre (rule
"centre"); the prediction of every cell is a 32x32 px box on the cell centre, and the map ``iou``
is the IoU (``losscore.boxes.bbox_iou``) of each cell's prediction with the box whose centre it
holds (0 elsewhere). The loss is ``mean(1 - iou)`` over positives. The tests below check it by hand.
"""
from __future__ import annotations

import pytest
import torch

from losscore.boxes import bbox_iou
from losscore.scene import (Box, LevelInfo, ParamSpec, Scene, SceneResult, SchemeSpec, boxes_to_targets,
                            register_scheme, resolve_device)
from losscore.trace import Trace

TOY_STRIDE = 32


def _toy_explain(scene: Scene, trace: Trace | None) -> SceneResult:
    device = resolve_device(scene.device)
    gain = float(scene.param("gain"))
    targets = boxes_to_targets(scene, device)  # (N, 6) image, class, cx, cy, w, h normalised
    H, W = scene.height // TOY_STRIDE, scene.width // TOY_STRIDE
    centre_px = targets[:, 2:4] * torch.tensor([scene.width, scene.height], device=device)  # (N, 2)
    cell = (centre_px / TOY_STRIDE).long()  # (N, 2) gi, gj
    gi, gj = cell[:, 0].clamp(0, W - 1), cell[:, 1].clamp(0, H - 1)
    pred = torch.stack([(gi + 0.5) * TOY_STRIDE, (gj + 0.5) * TOY_STRIDE,
                        torch.full_like(gi, TOY_STRIDE), torch.full_like(gi, TOY_STRIDE)], 1).float()  # (N, 4)
    gt = torch.cat([centre_px, targets[:, 4:6] * torch.tensor([scene.width, scene.height], device=device)], 1)
    iou = bbox_iou(pred, gt, trace=trace).squeeze(-1)  # (N,)
    iou_map = torch.zeros((1, H, W), device=device)  # (A=1, H, W)
    iou_map[0, gj, gi] = iou
    loss = gain * (1.0 - iou).mean() if len(iou) else iou.sum() * 0.0
    if trace is not None:
        trace.record("toy.assign", "Centre cell", "each box goes to the cell holding its centre",
                     tensors={"gi": (gi, "N"), "gj": (gj, "N"), "iou_map": (iou_map, "A H W")},
                     values={"gain": gain, "odd": float("nan")}, code="tests toy")
    count = len(gi)
    return SceneResult(
        scheme="toy", levels=[LevelInfo("P5", TOY_STRIDE, (H, W), None)],
        positives={"gt": torch.arange(count), "level": torch.zeros(count, dtype=torch.long),
                   "anchor": torch.zeros(count, dtype=torch.long), "gi": gi, "gj": gj,
                   "rule": torch.zeros(count, dtype=torch.long), "iou": iou, "pred": pred},
        rule_names=["centre"], maps={"iou": [iou_map], "inf": [torch.full((1, H, W), float("inf"))]},
        losses={"total": loss, "box": loss / max(gain, 1e-12) if gain else loss},
        trace=trace, device=str(device), column_docs={"iou": "IoU of the cell box with the target"},
        notes=["toy scheme for tests"], targets=targets,
    )


TOY = SchemeSpec(
    name="toy", title="Toy", family="toy", strides=(TOY_STRIDE,),
    params=(ParamSpec("gain", 1.0, 0.0, 10.0, 0.1, doc="loss gain", upstream="hyp['box']"),),
    explain=_toy_explain, upstream="example/toy@0123abc tests/toy.py", doc="centre-cell IoU",
    maps=(("iou", "IoU of each cell's box with its target"), ("inf", "always +inf (encoding test)")),
    rule_names=("centre",),
)


def ensure_toy() -> SchemeSpec:
    """Register the toy scheme next to whatever families are installed."""
    from losscore.scene import all_schemes

    all_schemes()  # load the built-in families first so the registry is not left with toy only
    return register_scheme(TOY)


def toy_body(**overrides) -> dict:
    body = {"scheme": "toy", "image": {"width": 128, "height": 96}, "nc": 3,
            "boxes": [{"cls": 1, "x1": 16, "y1": 16, "x2": 48, "y2": 48}], "device": "cpu"}
    body.update(overrides)
    return body


def test_toy_centre_cell_and_iou():
    ensure_toy()
    # Box (16,16)-(48,48): centre (32, 32) -> cell gi = gj = 1 (32/32), cell box (48, 48, 32, 32)
    # overlaps the 32x32 target on (32..48)^2 = 256 px; union 1024 + 1024 - 256 = 1792 -> IoU 1/7.
    scene = Scene("toy", 128, 96, 3, (Box(1, 16, 16, 48, 48),),
                  params={"gain": 1.0}, device="cpu")
    result = _toy_explain(scene, None)
    assert result.positives["gi"].tolist() == [1] and result.positives["gj"].tolist() == [1]
    assert result.positives["iou"].item() == pytest.approx(256 / 1792, rel=1e-5)
    assert result.losses["total"].item() == pytest.approx(1 - 256 / 1792, rel=1e-5)
    assert result.maps["iou"][0].shape == (1, 3, 4)  # 96/32 rows, 128/32 columns
