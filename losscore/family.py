"""What one family package declares: its schemes for the page and its conformance runners.

Every family is one package, ``losscore/<family>/``, with files of the same names:

* ``loss.py`` (and further math modules, e.g. ``tal.py``): the upstream-mirroring math. It imports
  only torch, the shared blocks (:mod:`losscore.boxes`, :mod:`losscore.trace`) and other families'
  math; never the scene layer, never the conformance harness.
* ``scene.py``: the learner's scheme(s), each a :class:`~losscore.scene.SchemeSpec`.
* ``vectors.py``: ``GROUPS`` = ``{vector family: {group: runner}}`` for the reference vectors in
  ``../shared/vectors/<vector family>.json``, and optionally ``TOLERANCES``.
* ``__init__.py``: re-exports the public math names and builds ``FAMILY``, a :class:`Family`.

:mod:`losscore.registry` lists every ``FAMILY`` in one explicit tuple: adding a family is one new
package and one registry line. Nothing registers itself on import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .scene import SchemeSpec

__all__ = ["Family", "Runner", "Tolerance"]

# A conformance runner: the case's ``inputs`` decoded (tensors on ``device``) -> a dict shaped like
# the case's ``expected`` (tensors, lists of tensors, numbers). It raises what upstream raises.
Runner = Callable[[dict[str, Any], torch.device], dict[str, Any]]
Tolerance = Mapping[str, float]  # {"rtol": ..., "atol": ...}


@dataclass(frozen=True)
class Family:
    """One family package: ``name`` (the package), its schemes, its vector runners.

    ``vectors``: ``{vector family: {group: runner}}``; the vector family is the ``family`` field of
    a vector file (one package may answer several, e.g. ``yolox`` and ``yolox@main``).
    ``tolerances``: ``{(vector family, group, key): {"rtol", "atol"}}`` where the vectors' README
    allows more than the default elementwise / scalar tolerances.
    """

    name: str
    schemes: tuple[SchemeSpec, ...] = ()
    vectors: Mapping[str, Mapping[str, Runner]] = field(default_factory=dict)
    tolerances: Mapping[tuple[str, str, str], Tolerance] = field(default_factory=dict)
