"""MMDetection FocalLoss and the ``focal`` scheme.

Scales (80 classes, 640x640, strides 8/16/32, one sample per cell: 8400 samples per image):
* interactive: 1 image, 20 boxes (FocalLoss forward, trace off and on; the whole ``explain``);
* training: 16 images (134,400 x 80 elements), 8 boxes each (forward, forward+backward).

Run: ``.venv/bin/python -m benchmarks --only mmdet [--quick]``.
"""
from __future__ import annotations

import torch

from benchmarks.timing import median_ms, row
from losscore.mmdet import FocalLoss
from losscore.scene import Box, Scene
from losscore.registry import explain
from losscore.trace import Trace

NC, SIDE = 80, 640
CELLS = sum((SIDE // s) ** 2 for s in (8, 16, 32))  # 8400


def _labels(samples: int, positives: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.full((samples,), NC, dtype=torch.long)
    labels[torch.randperm(samples, generator=gen)[:positives]] = torch.randint(0, NC, (positives,), generator=gen)
    return labels


def main(threads: int = 1, quick: bool = False) -> None:
    repeat = 5 if quick else 20
    gen = torch.Generator().manual_seed(0)
    loss = FocalLoss()
    logits = torch.randn((CELLS, NC), generator=gen)
    labels = _labels(CELLS, 20 * 9, gen)
    row("interactive FocalLoss fwd (8400 x 80), trace off",
        median_ms(lambda: loss(logits, labels, avg_factor=180.0), repeat))
    row("interactive FocalLoss fwd (8400 x 80), trace on",
        median_ms(lambda: loss(logits, labels, avg_factor=180.0, trace=Trace()), repeat))
    boxes = []
    for _ in range(20):
        x, y = torch.rand(2, generator=gen).tolist()
        w, h = (torch.rand(2, generator=gen) * 0.3 + 0.05).tolist()
        boxes.append(Box(int(torch.randint(0, NC, (1,), generator=gen)), (x - w / 2) * SIDE, (y - h / 2) * SIDE,
                         (x + w / 2) * SIDE, (y + h / 2) * SIDE))
    boxes = [b for b in boxes if 0 <= (b.x1 + b.x2) / 2 <= SIDE and 0 <= (b.y1 + b.y2) / 2 <= SIDE]
    scene = Scene(scheme="focal", width=SIDE, height=SIDE, nc=NC, boxes=tuple(boxes), device="cpu")
    row("interactive explain(focal), trace off", median_ms(lambda: explain(scene), repeat))
    row("interactive explain(focal), trace on", median_ms(lambda: explain(scene, Trace()), repeat))

    repeat = 2 if quick else 5
    logits = torch.randn((16 * CELLS, NC), generator=gen)
    labels = _labels(16 * CELLS, 16 * 8 * 9, gen)
    row("training FocalLoss fwd (16 images), trace off",
        median_ms(lambda: loss(logits, labels, avg_factor=1152.0), repeat, warmup=1))
    row("training FocalLoss fwd (16 images), trace on",
        median_ms(lambda: loss(logits, labels, avg_factor=1152.0, trace=Trace()), repeat, warmup=1))
    leaf = logits.clone().requires_grad_(True)
    row("training FocalLoss fwd+bwd (16 images)",
        median_ms(lambda: loss(leaf, labels, avg_factor=1152.0).backward(), repeat, warmup=1))


if __name__ == "__main__":
    main()
