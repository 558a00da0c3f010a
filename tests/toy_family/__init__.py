"""A toy family with the shape of every family package (loss, scene, vectors): what adding a family
takes is this package and one line in ``losscore/registry.py``'s ``FAMILIES``."""
from losscore.family import Family

from .loss import centre_cell_iou
from .scene import SPEC
from .vectors import GROUPS

__all__ = ["centre_cell_iou", "SPEC", "FAMILY"]

FAMILY = Family(name="toy_family", schemes=(SPEC,), vectors=GROUPS)
