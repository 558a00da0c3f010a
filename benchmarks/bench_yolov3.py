"""YOLOv3 losses: the legacy YOLOLayer loss over 3 levels, HEAD compute_loss and the scheme.

Scales (80 classes, 640x640, strides 8/16/32, 3 anchors per level):
* interactive: 1 image, 20 targets (forward; trace off and on; the whole ``explain``);
* training: 16 images, 8 targets each (forward, and forward+backward).

Run: ``.venv/bin/python -m benchmarks --only yolov3 [--quick]``.
"""
from __future__ import annotations

import torch

from benchmarks.timing import median_ms, row
from losscore.scene import Box, Scene
from losscore.registry import explain
from losscore.trace import Trace
from losscore.yolov3 import YOLOV3_ANCHORS_PX, YOLOV3_STRIDES, compute_loss, yolo_layer_loss

NC, SIDE = 80, 640


def _targets(batch: int, per_image: int, gen: torch.Generator) -> torch.Tensor:
    n = batch * per_image
    image = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, NC, (n,), generator=gen).float()
    wh = torch.rand((n, 2), generator=gen) * 0.4 + 0.02
    xy = torch.rand((n, 2), generator=gen) * 0.9 + 0.05
    return torch.cat([image[:, None], cls[:, None], xy, wh], 1)  # (N, 6)


def _predictions(batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn((batch, 3, SIDE // s, SIDE // s, 5 + NC), generator=gen) for s in YOLOV3_STRIDES]


def _legacy_total(preds, targets, trace=None):
    total = 0.0
    for level, (pred, stride) in enumerate(zip(preds, YOLOV3_STRIDES)):
        anchors = torch.tensor(YOLOV3_ANCHORS_PX[level]) / stride
        if trace is not None:
            with trace.scope(f"P{level + 3}"):
                total = total + yolo_layer_loss(pred, targets, anchors, lambda_scale=True, trace=trace).total
        else:
            total = total + yolo_layer_loss(pred, targets, anchors, lambda_scale=True).total
    return total


def _head_total(preds, targets):
    # HEAD lists levels stride 32 first
    order = [2, 1, 0]
    anchors = [torch.tensor(YOLOV3_ANCHORS_PX[i]) for i in order]
    return compute_loss([preds[i] for i in order], targets, anchors, [YOLOV3_STRIDES[i] for i in order]).loss


def main(threads: int = 1, quick: bool = False) -> None:
    repeat = 5 if quick else 20
    gen = torch.Generator().manual_seed(0)
    targets = _targets(1, 20, gen)
    preds = _predictions(1, gen)
    row("interactive legacy loss (3 levels), trace off", median_ms(lambda: _legacy_total(preds, targets), repeat))
    row("interactive legacy loss (3 levels), trace on",
        median_ms(lambda: _legacy_total(preds, targets, Trace()), repeat))
    row("interactive HEAD compute_loss", median_ms(lambda: _head_total(preds, targets), repeat))
    boxes = tuple(Box(int(c), float((x - w / 2) * SIDE), float((y - h / 2) * SIDE), float((x + w / 2) * SIDE),
                      float((y + h / 2) * SIDE)) for _, c, x, y, w, h in targets.tolist())
    scene = Scene(scheme="yolov3", width=SIDE, height=SIDE, nc=NC, boxes=boxes, device="cpu")
    row("interactive explain(yolov3), trace off", median_ms(lambda: explain(scene), repeat))
    row("interactive explain(yolov3), trace on", median_ms(lambda: explain(scene, Trace()), repeat))

    targets = _targets(16, 8, gen)
    preds = _predictions(16, gen)
    repeat = 2 if quick else 5
    row("training legacy loss fwd (16 images), trace off",
        median_ms(lambda: _legacy_total(preds, targets), repeat, warmup=1))
    row("training legacy loss fwd (16 images), trace on",
        median_ms(lambda: _legacy_total(preds, targets, Trace()), repeat, warmup=1))
    leaf = [p.clone().requires_grad_(True) for p in preds]
    row("training legacy loss fwd+bwd (16 images)",
        median_ms(lambda: _legacy_total(leaf, targets).backward(), repeat, warmup=1))
    row("training HEAD compute_loss fwd+bwd (16 images)",
        median_ms(lambda: _head_total(leaf, targets).backward(), repeat, warmup=1))


if __name__ == "__main__":
    main()
