"""YOLOv5: build_targets, loss forward, forward + backward at 640x640, 80 classes (trace off / on).

Upstream reference on one CPU thread here: build_targets 1.3 ms and loss forward 3.3 ms at batch 1
(20 targets); forward 16 ms and forward + backward 200 ms at batch 16 (8 targets per image).
"""
from __future__ import annotations

import torch

from benchmarks.timing import paired_median_ms, row
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
        print(f" batch {batch}, {batch * per_image} targets, 640x640, nc 80 (trace off and on timed alternately)")

        def build(traced: bool):
            return lambda: compute.build_targets(p, targets, trace=Trace() if traced else None)

        def forward(traced: bool):
            def run():
                with torch.no_grad():
                    return compute(p, targets, trace=Trace() if traced else None)
            return run

        def forward_backward(traced: bool):
            def run():
                loss, _ = compute(leaves, targets, trace=Trace() if traced else None)
                loss.backward()
            return run

        for name, make in (("build_targets", build), ("forward", forward), ("forward+backward", forward_backward)):
            reps = max(3, repeat // 5) if (batch == 16 and name == "forward+backward") else repeat
            off, on = paired_median_ms(make(False), make(True), repeat=reps, warmup=2)
            row(f"{name:18s} trace off", off, UPSTREAM_MS.get((batch, name), ""))
            row(f"{name:18s} trace on", on, f"{on / off:.2f}x trace off (target < 2x)")


if __name__ == "__main__":
    main()
