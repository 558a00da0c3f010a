"""YOLOv3 (PyTorch-YOLOv3 legacy and HEAD, darknet ``yolo_layer.c``): the math, the ``yolov3`` scheme,
the vector runners."""
from ..family import Family
from .loss import (YOLOV3_ANCHORS_PX, YOLOV3_STRIDES, HeadLoss, HeadTargets, LayerLoss, LegacyTargets, bbox_wh_iou,
                   build_targets, compute_loss, decode_layer, legacy_bbox_iou, legacy_build_targets,
                   legacy_scaled_anchors, yolo_layer_loss)
from .scene import SPEC
from .vectors import GROUPS

__all__ = ["bbox_wh_iou", "legacy_bbox_iou", "legacy_build_targets", "legacy_scaled_anchors", "decode_layer",
           "yolo_layer_loss", "build_targets", "compute_loss", "LegacyTargets", "LayerLoss", "HeadTargets",
           "HeadLoss", "YOLOV3_ANCHORS_PX", "YOLOV3_STRIDES", "SPEC", "FAMILY"]

FAMILY = Family(name="yolov3", schemes=(SPEC,), vectors=GROUPS)
