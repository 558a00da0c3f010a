"""YOLOv9 (WongKinYiu/yolov9 ``utils/loss_tal.py``, ``utils/tal/``): TAL + DFL math, the ``yolov9``
scheme, the vector runners."""
from ..family import Family
from .loss import (BOX_GAIN, CLS_GAIN, DFL_GAIN, BboxLoss, ComputeLoss, LossBreakdown, VarifocalLoss, compute_loss,
                   df_loss, preprocess_targets)
from .scene import SPEC
from .tal import (Assignment, CandidatePairs, DenseAssignment, TaskAlignedAssigner, assign, bbox2dist, densify,
                  dist2bbox, make_anchors, select_candidates_in_gts)
from .vectors import GROUPS, TOLERANCES

__all__ = ["make_anchors", "dist2bbox", "bbox2dist", "select_candidates_in_gts", "assign", "densify",
           "TaskAlignedAssigner", "Assignment", "CandidatePairs", "DenseAssignment", "BboxLoss", "VarifocalLoss",
           "df_loss", "compute_loss", "ComputeLoss", "LossBreakdown", "preprocess_targets", "BOX_GAIN", "CLS_GAIN",
           "DFL_GAIN", "SPEC", "FAMILY"]

FAMILY = Family(name="yolov9", schemes=(SPEC,), vectors=GROUPS, tolerances=TOLERANCES)
