"""The priors the two assigners run on, laid out as MMDetection 3.3.0's prior generators do.

* :func:`anchor_priors` (``prior_generators/anchor_generator.py AnchorGenerator.grid_priors``):
  at every location ``(i*s, j*s)`` of a level the base anchors of that level, shifted there.
  ATSS configs (``configs/atss/atss_r50_fpn_1x_coco.py``) use ``ratios=[1.0]``,
  ``octave_base_scale=8``, ``scales_per_octave=1``, strides 8/16/32/64/128: ONE square anchor of
  side ``8*s`` per location, centred on the location (``center_offset=0``: the first anchor is
  centred on the image corner and sticks out of the image). RetinaNet's configs use
  ``octave_base_scale=4``, ``scales_per_octave=3``, ``ratios=[0.5, 1.0, 2.0]``: 9 anchors.
* :func:`point_priors` (``prior_generators/point_generator.py MlvlPointGenerator.grid_priors``):
  one point per location, ``(x, y, stride_w, stride_h) = ((i + offset)*s, (j + offset)*s, s, s)``;
  RTMDet uses ``offset=0``, so the point is the top-left corner of its cell, not its centre.

Both are ordered level by level (smallest stride first) and, within a level, row-major (y outer,
x inner); with several anchors per location those ``A`` anchors are adjacent.

Shapes: ``L`` levels, ``H W`` the grid of a level, ``A`` anchors per location, ``N`` priors in all.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Priors", "featmap_sizes", "anchor_priors", "point_priors"]


class Priors(NamedTuple):
    """All levels' priors concatenated, and how many each level holds."""

    priors: Tensor  # (N, 4): anchors xyxy, or points (x, y, stride_w, stride_h)
    num_level_priors: list[int]  # (L,) sums to N


def featmap_sizes(img_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """``(ceil(H / s), ceil(W / s))`` per level: the head's grid for a padded input of ``img_hw``."""
    height, width = img_hw
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def _meshgrid(shift_x: Tensor, shift_y: Tensor) -> tuple[Tensor, Tensor]:
    feat_h, feat_w = shift_y.shape[0], shift_x.shape[0]
    xx = shift_x.repeat(feat_h)  # (H*W,) x inner
    yy = shift_y.view(-1, 1).repeat(1, feat_w).view(-1)  # (H*W,) y outer
    return xx, yy


def anchor_priors(sizes: Sequence[Sequence[int]], strides: Sequence[int], *,
                  ratios: Sequence[float] = (1.0,), octave_base_scale: float | None = 8,
                  scales_per_octave: int | None = 1, scales: Sequence[float] | None = None,
                  center_offset: float = 0.0, scale_major: bool = True,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Priors:
    """``AnchorGenerator`` anchors of every level (defaults: the ATSS configuration).

    Args:
        sizes: ``(H, W)`` of each level's grid (:func:`featmap_sizes`).
        strides: square strides in pixels, one per level; the base size of a level is its stride.
        ratios: height / width ratios. octave_base_scale, scales_per_octave: scales
            ``octave_base_scale * 2**(i / scales_per_octave)``; or explicit ``scales``.
        center_offset: anchor centre within the stride cell, as a fraction of the base size.

    Returns:
        :class:`Priors` with xyxy anchors ``(N, 4)``, ``N = sum(H*W*A)``.
    """
    if scales is None:
        if octave_base_scale is None or scales_per_octave is None:
            raise ValueError("scales: give either scales or octave_base_scale with scales_per_octave")
        octave = np.array([2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
        scale_t = torch.Tensor(octave * octave_base_scale)  # float64 product, stored as float32
    else:
        scale_t = torch.Tensor(list(scales))
    ratio_t = torch.Tensor(list(ratios))
    h_ratios = torch.sqrt(ratio_t)
    w_ratios = 1 / h_ratios
    levels = []
    for (feat_h, feat_w), stride in zip(sizes, strides):
        size = stride  # base size = the (square) stride
        x_centre = center_offset * size
        y_centre = center_offset * size
        if scale_major:
            ws = (size * w_ratios[:, None] * scale_t[None, :]).view(-1)  # (A,)
            hs = (size * h_ratios[:, None] * scale_t[None, :]).view(-1)
        else:
            ws = (size * scale_t[:, None] * w_ratios[None, :]).view(-1)
            hs = (size * scale_t[:, None] * h_ratios[None, :]).view(-1)
        base = torch.stack([x_centre - 0.5 * ws, y_centre - 0.5 * hs, x_centre + 0.5 * ws, y_centre + 0.5 * hs],
                           dim=-1).to(device=device, dtype=dtype)  # (A, 4)
        # AnchorGenerator: cast the integer range first, then scale
        xx, yy = _meshgrid(torch.arange(0, feat_w, device=device).to(dtype) * stride,
                           torch.arange(0, feat_h, device=device).to(dtype) * stride)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)  # (H*W, 4)
        levels.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4))  # (H*W*A, 4)
    return Priors(torch.cat(levels), [level.size(0) for level in levels])


def point_priors(sizes: Sequence[Sequence[int]], strides: Sequence[int], *, offset: float = 0.0,
                 with_stride: bool = True, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Priors:
    """``MlvlPointGenerator`` points of every level (defaults: RTMDet's ``offset=0``).

    Returns:
        :class:`Priors` with ``(N, 4)`` rows ``(x, y, stride_w, stride_h)``, or ``(N, 2)`` rows
        ``(x, y)`` without ``with_stride``.
    """
    levels = []
    for (feat_h, feat_w), stride in zip(sizes, strides):
        # MlvlPointGenerator: offset and scale the integer range, then cast
        xx, yy = _meshgrid(((torch.arange(0, feat_w, device=device) + offset) * stride).to(dtype),
                           ((torch.arange(0, feat_h, device=device) + offset) * stride).to(dtype))
        if with_stride:
            stride_col = xx.new_full((xx.shape[0],), stride).to(dtype)
            levels.append(torch.stack([xx, yy, stride_col, stride_col], dim=-1))
        else:
            levels.append(torch.stack([xx, yy], dim=-1))
    return Priors(torch.cat(levels), [level.size(0) for level in levels])
