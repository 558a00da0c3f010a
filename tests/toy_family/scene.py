"""The ``toy`` scheme: one level of stride 32; each box trains the cell holding its centre; the
loss is ``gain * mean(1 - IoU)`` of the cell-sized box there with the target."""
from __future__ import annotations

import torch

from losscore.scene import (ColumnSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm, LossTermSpec,
                            MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec, boxes_to_targets,
                            resolve_device)
from losscore.trace import Trace

from .loss import centre_cell_iou

TOY_STRIDE = 32


def explain_toy(scene: Scene, trace: Trace | None) -> SceneResult:
    device = resolve_device(scene.device)
    gain = float(scene.param("gain"))
    targets = boxes_to_targets(scene, device)  # (N, 6)
    H, W = scene.height // TOY_STRIDE, scene.width // TOY_STRIDE
    size = torch.tensor([scene.width, scene.height], device=device)
    xywh = torch.cat([targets[:, 2:4] * size, targets[:, 4:6] * size], 1)  # (N, 4) px
    out = centre_cell_iou(xywh, TOY_STRIDE, (H, W), trace=trace)
    iou_map = torch.zeros((1, H, W), device=device)  # (A=1, H, W)
    iou_map[0, out.gj, out.gi] = out.iou
    if trace is not None:
        trace.record("toy.map", "IoU map", "the IoU written at each box's centre cell",
                     tensors={"iou_map": (iou_map, "A H W")}, code="tests toy")
    mean = (1.0 - out.iou).mean() if len(out.iou) else out.iou.sum() * 0.0
    loss = gain * mean
    count = len(out.gi)
    return SceneResult(
        scheme="toy", levels=[LevelInfo("P5", TOY_STRIDE, (H, W), None)],
        positives={"gt": torch.arange(count), "level": torch.zeros(count, dtype=torch.long),
                   "anchor": torch.zeros(count, dtype=torch.long), "gi": out.gi, "gj": out.gj,
                   "rule": torch.zeros(count, dtype=torch.long), "iou": out.iou,
                   "pred": torch.cat([out.pred[:, :2] - out.pred[:, 2:] / 2, out.pred[:, :2] + out.pred[:, 2:] / 2], 1)},
        maps={"iou": [iou_map], "inf": [torch.full((1, H, W), float("inf"))]},
        losses={"total": loss, "box": mean},
        composition=LossComposition((LossTerm("box", (LossPart("P5", mean),), mean, loss, gain=gain),), loss, loss),
        trace=trace, device=str(device), notes=["toy scheme for tests"], targets=targets,
    )


SPEC = SchemeSpec(
    name="toy", title="Toy", family="toy_family", strides=(TOY_STRIDE,),
    params=(ParamSpec("gain", 1.0, 0.0, 10.0, 0.1, doc="loss gain", upstream="hyp['box']"),),
    explain=explain_toy, upstream="example/toy@0123abc tests/toy.py", doc="centre-cell IoU",
    maps=(MapSpec("iou", "IoU of each cell's box with its target", "iou"),
          MapSpec("inf", "always +inf (encoding test)", "loss")),
    rules=(RuleSpec("centre", "●", "the cell holding the box centre"),),
    columns=(ColumnSpec("gt", "box", "index"), ColumnSpec("level", "level", "index"),
             ColumnSpec("anchor", "0", "index"), ColumnSpec("gi", "column", "index"), ColumnSpec("gj", "row", "index"),
             ColumnSpec("rule", "centre", "index"), ColumnSpec("iou", "IoU of the cell box with the target", "iou"),
             ColumnSpec("pred", "the cell-sized predicted box", "px", ("x1", "y1", "x2", "y2"), box="xyxy")),
    losses=LossSpec((LossTermSpec("box", "mean of 1 - IoU over the boxes", gain="gain"),), "gain × box"),
    phases=(PhaseSpec("toy", "Toy", "IoU of the centre cell's box, then the assignment"),),
    level_names=("P5",), pred_box="pred",
)
