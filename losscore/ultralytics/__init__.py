"""Ultralytics (the ``ultralytics`` package, release 8.4.190: ``utils/tal.py``, ``utils/loss.py``,
``utils/metrics.py``): YOLOv8 / YOLO11 ``v8DetectionLoss``, YOLOv10 ``E2EDetectLoss`` and YOLO26
``E2ELoss``, their task-aligned assigner, and the vector runners."""
from ..family import Family
from .loss import (DEFAULT_HYP, BboxLoss, BoxTerms, DetectionLoss, DFLoss, E2EBreakdown, E2EDetectLoss, E2ELoss,
                   detection_loss, e2e_weights, v8DetectionLoss)
from .metrics import bbox_iou
from .tal import (RULE_NAMES, Assignment, CandidatePairs, DenseAssignment, DensePredictions, TaskAlignedAssigner,
                  assign, bbox2dist, candidate_pairs, densify, dist2bbox, enlarge_small_boxes, make_anchors,
                  select_candidates_in_gts, stride_value, xywh2xyxy, xyxy2xywh)
from .scene import SPECS
from .vectors import GROUPS, TOLERANCES

__all__ = ["make_anchors", "dist2bbox", "bbox2dist", "xyxy2xywh", "xywh2xyxy", "bbox_iou", "stride_value",
           "enlarge_small_boxes", "select_candidates_in_gts", "candidate_pairs", "assign", "densify",
           "TaskAlignedAssigner", "Assignment", "CandidatePairs", "DenseAssignment", "DensePredictions", "RULE_NAMES",
           "DFLoss", "BboxLoss", "BoxTerms", "detection_loss", "DetectionLoss", "v8DetectionLoss", "E2EDetectLoss",
           "E2ELoss", "E2EBreakdown", "e2e_weights", "DEFAULT_HYP", "SPECS", "FAMILY"]

FAMILY = Family(name="ultralytics", schemes=SPECS, vectors=GROUPS, tolerances=TOLERANCES)
