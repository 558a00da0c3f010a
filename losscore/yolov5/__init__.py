"""YOLOv5 (ultralytics/yolov5 ``utils/loss.py``): the math, the ``yolov5`` scheme, the vector runners."""
from ..family import Family
from .loss import (HYP_DEFAULTS, NEIGHBOUR_REASONS, RULE_NAMES, UPSTREAM, AssignedTargets, BCEBlurWithLogitsLoss,
                   CellIndex, ComputeLoss, FocalLoss, LossOutput, QFocalLoss, build_targets, default_balance,
                   last_write_mask, smooth_BCE)
from .scene import SPEC
from .vectors import GROUPS

__all__ = ["smooth_BCE", "BCEBlurWithLogitsLoss", "FocalLoss", "QFocalLoss", "build_targets", "ComputeLoss",
           "AssignedTargets", "CellIndex", "LossOutput", "HYP_DEFAULTS", "RULE_NAMES", "NEIGHBOUR_REASONS",
           "UPSTREAM", "default_balance", "last_write_mask", "SPEC", "FAMILY"]

FAMILY = Family(name="yolov5", schemes=(SPEC,), vectors=GROUPS)
