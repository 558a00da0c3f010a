"""Runners for ``mmdet_assigners.json`` (``../shared/vectors/README-mmdet_assigners.md``).

Each runner returns ``num_gts``, ``gt_inds``, ``max_overlaps``, ``labels`` and, unless upstream
returned early, ``diagnostics`` with every key the README lists (the conformance harness skips
``diagnostics``; ``tests/test_mmdet_assigners.py`` compares them). ATSS candidate rows are put
in the README's canonical order: level blocks, increasing distance, equal distances by prior
index.
"""
from __future__ import annotations

from typing import Any

import torch

from .atss import ATSSCandidates, atss_assign
from .dsl import dsl_assign
from .overlaps import check_iou_calculator

__all__ = ["GROUPS", "TOLERANCES", "atss_diagnostics"]


def atss_diagnostics(candidates: ATSSCandidates) -> dict[str, Any]:
    """The README's ``diagnostics`` from :class:`ATSSCandidates`, rows in canonical order."""
    order = []
    start = 0
    for k in candidates.num_candidates_per_level:
        idx = candidates.candidate_idxs[start:start + k]  # (k, M)
        dist = candidates.candidate_distances[start:start + k]
        by_index = idx.argsort(dim=0, stable=True)
        by_distance = dist.gather(0, by_index).argsort(dim=0, stable=True)
        order.append(by_index.gather(0, by_distance) + start)
        start += k
    order = torch.cat(order)  # (K, M) row permutation per column

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.gather(0, order)

    return {
        "num_candidates_per_level": list(candidates.num_candidates_per_level),
        "candidate_idxs": rows(candidates.candidate_idxs),
        "candidate_overlaps": rows(candidates.candidate_overlaps),
        "iou_mean": candidates.iou_mean,
        "iou_std": candidates.iou_std,
        "iou_thr": candidates.iou_thr,
        "iou_ge_thr": rows(candidates.iou_ge_thr),
        "center_in_gt": rows(candidates.center_in_gt),
        "is_pos": rows(candidates.is_pos),
    }


def _atss(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    cfg = inputs["assigner"]
    check_iou_calculator(cfg.get("iou_calculator"))
    result = atss_assign(
        inputs["priors"], inputs["num_level_priors"], inputs["gt_bboxes"], inputs["gt_labels"],
        gt_bboxes_ignore=inputs.get("gt_bboxes_ignore"), pred_scores=inputs.get("pred_scores"),
        pred_bboxes=inputs.get("pred_bboxes"), topk=cfg.get("topk", 9), alpha=cfg.get("alpha"),
        ignore_iof_thr=cfg.get("ignore_iof_thr", -1))
    out = {"num_gts": result.num_gts, "gt_inds": result.gt_inds, "max_overlaps": result.max_overlaps,
           "labels": result.labels}
    if result.candidates is not None:
        out["diagnostics"] = atss_diagnostics(result.candidates)
    return out


def _dsl(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    cfg = inputs["assigner"]
    check_iou_calculator(cfg.get("iou_calculator"))
    result = dsl_assign(
        inputs["priors"], inputs["pred_bboxes"], inputs["pred_scores"], inputs["gt_bboxes"], inputs["gt_labels"],
        soft_center_radius=cfg.get("soft_center_radius", 3.0), topk=cfg.get("topk", 13),
        iou_weight=cfg.get("iou_weight", 3.0))
    out = {"num_gts": result.num_gts, "gt_inds": result.gt_inds, "max_overlaps": result.max_overlaps,
           "labels": result.labels}
    d = result.details
    if d is not None:
        out["diagnostics"] = {
            "valid_indices": d.valid_indices,
            "dynamic_ks": d.dynamic_ks.long(),
            "topk_iou_sum": d.topk_iou_sum,
            "matching_before_conflict": d.matching_before_conflict.long(),
            "pairwise_ious": d.pairwise_ious,
            "soft_center_prior": d.soft_center_prior,
            "iou_cost": d.iou_cost,
            "soft_cls_cost": d.soft_cls_cost,
            "cost_matrix": d.cost_matrix,
        }
    return out


GROUPS = {"mmdet_assigners": {"atss_assign": _atss, "dsl_assign": _dsl}}
# The README's tolerances are the harness defaults or tighter (max_overlaps rel 1e-5, abs 1e-7;
# the tests apply those); nothing needs more.
TOLERANCES: dict = {}
