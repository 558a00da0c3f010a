"""YOLOX: SimOTA label assignment and the YOLOXHead loss, release 0.3.0 and GitHub main.

:mod:`.assign` holds SimOTA (geometry, cost, dynamic k, matching), :mod:`.loss` the decode and
the loss; :mod:`.vectors` the runners for ``yolox.json`` (vector families ``yolox`` = release
0.3.0 and ``yolox@main`` = main 6ddff482).
"""
from __future__ import annotations

from ..family import Family
from .assign import (
    RULE_NAMES,
    VERSIONS,
    Assignment,
    Geometry,
    Matching,
    SimOTAVersion,
    bboxes_iou,
    class_cost,
    geometry_constraint,
    get_assignments,
    simota_matching,
)
from .loss import (
    REG_WEIGHT,
    AnchorGrid,
    Decoded,
    IOUloss,
    LossBreakdown,
    get_l1_target,
    get_losses,
    get_output_and_grid,
    iou_loss,
    make_grid,
    yolox_loss,
)
from .scene import SPEC
from .vectors import GROUPS, TOLERANCES

__all__ = [
    "RULE_NAMES", "VERSIONS", "SimOTAVersion", "Assignment", "Geometry", "Matching", "bboxes_iou",
    "class_cost", "geometry_constraint", "get_assignments", "simota_matching", "REG_WEIGHT", "AnchorGrid",
    "Decoded", "IOUloss", "LossBreakdown", "get_l1_target", "get_losses", "get_output_and_grid", "iou_loss",
    "make_grid", "yolox_loss", "GROUPS", "TOLERANCES", "SPEC", "FAMILY",
]

FAMILY = Family(name="yolox", schemes=(SPEC,), vectors=GROUPS, tolerances=TOLERANCES)
