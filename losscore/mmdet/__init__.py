"""MMDetection 3.3.0 focal loss (``mmdet/models/losses/focal_loss.py``): the math, the ``focal`` scheme,
the vector runners."""
from ..family import Family
from .loss import (FocalEvaluation, FocalLoss, FocalTerms, focal_curve, focal_terms, labels_to_one_hot,
                   py_focal_loss_with_prob, py_sigmoid_focal_loss, reduce_loss, weight_reduce_loss)
from .scene import SPEC, centre_in_box_labels
from .vectors import GROUPS

__all__ = ["py_sigmoid_focal_loss", "py_focal_loss_with_prob", "FocalLoss", "FocalTerms", "FocalEvaluation",
           "focal_terms", "focal_curve", "labels_to_one_hot", "reduce_loss", "weight_reduce_loss",
           "centre_in_box_labels", "SPEC", "FAMILY"]

FAMILY = Family(name="mmdet", schemes=(SPEC,), vectors=GROUPS)
