"""YOLOv5: build_targets, loss forward, forward + backward at 640x640, 80 classes (trace off / on).

Upstream reference on one CPU thread here: build_targets 1.3 ms and loss forward 3.3 ms at batch 1
(20 targets); forward 16 ms and forward + backward 200 ms at batch 16 (8 targets per image).
"""
from __future__ import annotations

import torch

from benchmarks.timing import median_ms, row
from losscore.trace import Trace
from losscore.yolov5 import ComputeLoss

ANCHORS_PX = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                           [116, 90, 156, 198, 373, 326]], dtype=torch.float32).view(3, 3, 2)
STRIDES = (8, 16, 32)
UPSTREAM_MS = {(1, "build_targets"): "upstream 1.3 ms", (1, "forward"): "upstream 3.3 ms",
               (16, "forward"): "upstream 16 ms", (16, "forward+backward"): "upstream 200 ms"}


def _inputs(batch: int, targets_per_image: int, nc: int = 80, size: int = 640, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    p = [torch.randn((batch, 3, size // s, size // s, 5 + nc), generator=generator) for s in STRIDES]
    count = batch * targets_per_image
    image = torch.arange(batch).repeat_interleave(targets_per_image).float()
    cls = torch.randint(0, nc, (count,), generator=generator).float()
    wh = torch.rand((count, 2), generator=generator) * 0.4 + 0.02
    xy = torch.rand((count, 2), generator=generator) * (1 - wh) + wh / 2
    targets = torch.cat((image[:, None], cls[:, None], xy, wh), 1)  # (N, 6)
    return p, targets


def main(threads: int = 1, quick: bool = False) -> None:
    torch.set_num_threads(threads)
    repeat = 5 if quick else 30
    compute = ComputeLoss(80, anchors_px=ANCHORS_PX, strides=STRIDES)
    for batch, per_image in ((1, 20), (16, 8)):
        p, targets = _inputs(batch, per_image)
        leaves = [x.clone().requires_grad_(True) for x in p]
        print(f" batch {batch}, {batch * per_image} targets, 640x640, nc 80")
        for traced in (False, True):
            label = "trace on " if traced else "trace off"

            def build():
                return compute.build_targets(p, targets, trace=Trace() if traced else None)

            def forward():
                with torch.no_grad():
                    return compute(p, targets, trace=Trace() if traced else None)

            def forward_backward():
                loss, _ = compute(leaves, targets, trace=Trace() if traced else None)
                loss.backward()

            cases = [("build_targets", build), ("forward", forward)]
            cases.append(("forward+backward", forward_backward))
            for name, fn in cases:
                reps = max(3, repeat // 5) if (batch == 16 and name == "forward+backward") else repeat
                ms = median_ms(fn, repeat=reps, warmup=2)
                row(f"{name:18s} {label}", ms, UPSTREAM_MS.get((batch, name), ""))


if __name__ == "__main__":
    main()
