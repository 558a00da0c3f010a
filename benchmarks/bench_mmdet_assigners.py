"""MMDetection assigners: ours against upstream mmdet 3.3.0 and a dense, upstream-shaped reference.

Scenes (one 640x640 image, 300 random targets, 80 classes, seed 0):

* ATSS: the ATSS configuration's anchors (``configs/atss/atss_r50_fpn_1x_coco.py``: ratios [1.0],
  octave_base_scale 8, scales_per_octave 1 -> ONE square anchor of side 8*s per location, not
  RetinaNet's 9), strides 8/16/32/64/128: 8525 anchors; ``topk`` 9.
* RTMDet: ``MlvlPointGenerator`` points (offset 0) on strides 8/16/32: 8400 priors; predicted
  boxes and logits like a mid-training head; ``topk`` 13, ``iou_weight`` 3, ``soft_center_radius`` 3.

Variants, each in a fresh subprocess (spawn) so its peak memory is its own:

* ``ours``: :func:`losscore.mmdet_assigners.atss_assign` / ``dsl_assign`` (trace off);
* ``dense``: :func:`dense_reference_atss` / :func:`dense_reference_dsl` below, our own
  straightforward code shaped like upstream (dense ``N x M`` matrices, the ``V x M x C`` class
  cost); ``tests/test_mmdet_assigners.py`` checks them against the reference vectors;
* ``upstream``: the real ``ATSSAssigner`` / ``DynamicSoftLabelAssigner`` files of the mmdet 3.3.0
  wheel, loaded with minimal stand-ins for mmengine and mmdet's registry (see
  :func:`load_upstream`); only when ``--upstream-src`` (or ``MMDET_SRC``) names the unpacked
  wheel. Nothing of upstream is part of this repository or a dependency.

Reported per variant: median wall and process-CPU time of one ``assign`` call, and the peak
memory growth (VmHWM) of the process during the first call. Outputs (``gt_inds``, ``labels``,
``max_overlaps``, and for RTMDet the cost matrix) are compared bit for bit with the upstream run
(or the dense reference when upstream is not available).

Run (one torch thread, as the reference vectors were made)::

    pip download mmdet==3.3.0 --no-deps -d /tmp/mmdet_up
    unzip -q /tmp/mmdet_up/mmdet-3.3.0-py3-none-any.whl 'mmdet/*' -d /tmp/mmdet_up/src
    .venv/bin/python -m benchmarks.bench_mmdet_assigners --upstream-src /tmp/mmdet_up/src
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import types
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from losscore.mmdet_assigners import (INF, AssignResult, anchor_priors, atss_assign, bbox_overlaps, dsl_assign,
                                      featmap_sizes, point_priors)

SIDE, NUM_CLASSES, NUM_TARGETS = 640, 80, 300
ATSS_STRIDES, DSL_STRIDES = (8, 16, 32, 64, 128), (8, 16, 32)


# -- scenes -----------------------------------------------------------------------------------
def _targets(gen: torch.Generator, count: int, side: int = SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO-like boxes: log-uniform sides 8..320 px, inside the image, on a 1/16 px lattice."""
    wh = torch.exp(torch.empty(count, 2).uniform_(float(torch.log(torch.tensor(8.0))),
                                                   float(torch.log(torch.tensor(320.0))), generator=gen))
    centre = torch.rand(count, 2, generator=gen) * (side - wh) + wh / 2
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], 1).clamp(0, side)
    boxes = torch.round(boxes * 16) / 16
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=gen)
    return boxes, labels


def make_atss_scene(num_targets: int = NUM_TARGETS, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    priors, num_level_priors = anchor_priors(featmap_sizes((SIDE, SIDE), ATSS_STRIDES), ATSS_STRIDES)
    gt_bboxes, gt_labels = _targets(gen, num_targets)
    return {"priors": priors, "num_level_priors": num_level_priors, "gt_bboxes": gt_bboxes, "gt_labels": gt_labels}


def make_dsl_scene(num_targets: int = NUM_TARGETS, seed: int = 0) -> dict[str, Any]:
    """Mid-training head: a prior inside a target predicts it with +-25 % noise and a gt-class
    logit in [-3, 1]; elsewhere a box of 4 strides around the point; logits on a 1/16 lattice."""
    gen = torch.Generator().manual_seed(seed + 1)
    priors, num_level_priors = point_priors(featmap_sizes((SIDE, SIDE), DSL_STRIDES), DSL_STRIDES)
    gt_bboxes, gt_labels = _targets(gen, num_targets)
    N = priors.size(0)
    x, y, stride = priors[:, 0:1], priors[:, 1:2], priors[:, 2:3]
    inside = (x > gt_bboxes[:, 0]) & (y > gt_bboxes[:, 1]) & (x < gt_bboxes[:, 2]) & (y < gt_bboxes[:, 3])  # (N, M)
    owner = torch.where(inside.any(1), inside.float().argmax(1), -1)  # (N,) first containing target
    half = 2 * stride * (1 + 0.5 * torch.rand(N, 1, generator=gen))
    boxes = torch.cat([x - half, y - half, x + half, y + half], 1)
    has = owner >= 0
    target = gt_bboxes[owner[has]]
    wh = (target[:, 2:] - target[:, :2]).repeat(1, 2)
    boxes[has] = target + wh * (torch.rand(int(has.sum()), 4, generator=gen) - 0.5) * 0.5
    boxes = torch.round(boxes * 2) / 2
    logits = torch.randint(-96, -47, (N, NUM_CLASSES), generator=gen).float() / 16  # [-6, -3]
    logits[has, gt_labels[owner[has]]] = torch.randint(-48, 17, (int(has.sum()),), generator=gen).float() / 16
    return {"priors": priors, "num_level_priors": num_level_priors, "pred_bboxes": boxes, "pred_scores": logits,
            "gt_bboxes": gt_bboxes, "gt_labels": gt_labels}


# -- dense, upstream-shaped references (our own code) -----------------------------------------
@torch.no_grad()
def dense_reference_atss(priors: torch.Tensor, num_level_priors: Sequence[int], gt_bboxes: torch.Tensor,
                         gt_labels: torch.Tensor, *, gt_bboxes_ignore: torch.Tensor | None = None, topk: int = 9,
                         ignore_iof_thr: float = -1) -> AssignResult:
    """ATSS with upstream's dense tensors: the (N, M) IoU, the (N, M, 2) centre offsets, and a
    (M, N) matrix of claimed overlaps reduced with ``max`` (IoU mode only)."""
    N, M = priors.size(0), gt_bboxes.size(0)
    overlaps = bbox_overlaps(priors, gt_bboxes)  # (N, M)
    gt_inds = torch.zeros(N, dtype=torch.long)
    if M == 0 or N == 0:
        return AssignResult(M, gt_inds, overlaps.new_zeros(N), torch.full((N,), -1, dtype=torch.long))
    prior_centre = torch.stack([(priors[:, 0] + priors[:, 2]) / 2.0, (priors[:, 1] + priors[:, 3]) / 2.0], 1)
    gt_centre = torch.stack([(gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0, (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0], 1)
    distances = (prior_centre[:, None, :] - gt_centre[None, :, :]).pow(2).sum(-1).sqrt()  # (N, M)
    if ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0:
        ignored = bbox_overlaps(priors, gt_bboxes_ignore, mode="iof").max(dim=1).values > ignore_iof_thr
        distances[ignored, :] = INF
        gt_inds[ignored] = -1
    blocks, start = [], 0
    for count in num_level_priors:
        blocks.append(distances[start:start + count].topk(min(topk, count), dim=0, largest=False).indices + start)
        start += count
    candidates = torch.cat(blocks)  # (K, M)
    columns = torch.arange(M)
    cand_overlaps = overlaps[candidates, columns]  # (K, M)
    threshold = cand_overlaps.mean(0) + cand_overlaps.std(0)
    centre_x, centre_y = prior_centre[candidates, 0], prior_centre[candidates, 1]  # (K, M)
    margins = torch.stack([centre_x - gt_bboxes[:, 0], centre_y - gt_bboxes[:, 1],
                           gt_bboxes[:, 2] - centre_x, gt_bboxes[:, 3] - centre_y], dim=1)  # (K, 4, M)
    positive = (cand_overlaps >= threshold[None, :]) & (margins.min(dim=1).values > 0.01)
    claimed = torch.full((M, N), -INF, dtype=overlaps.dtype)  # (M, N)
    gt_of, prior_of = columns.expand_as(candidates)[positive], candidates[positive]
    claimed[gt_of, prior_of] = overlaps[prior_of, gt_of]
    max_overlaps, best = claimed.t().max(dim=1)  # first maximum on a tie
    hit = max_overlaps != -INF
    gt_inds[hit] = best[hit] + 1
    labels = torch.full((N,), -1, dtype=torch.long)
    labels[gt_inds > 0] = gt_labels[gt_inds[gt_inds > 0] - 1]
    return AssignResult(M, gt_inds, max_overlaps, labels)


@torch.no_grad()
def dense_reference_dsl(priors: torch.Tensor, pred_bboxes: torch.Tensor, pred_scores: torch.Tensor,
                        gt_bboxes: torch.Tensor, gt_labels: torch.Tensor, *, soft_center_radius: float = 3.0,
                        topk: int = 13, iou_weight: float = 3.0) -> tuple[AssignResult, torch.Tensor | None]:
    """RTMDet's assignment with upstream's dense tensors: the (N, M, 4) inside test and the
    (V, M, C) class cost; one top-k per target. Returns the result and the cost matrix."""
    M, N = gt_bboxes.size(0), pred_bboxes.size(0)
    gt_inds = torch.zeros(N, dtype=torch.long)
    labels = torch.full((N,), -1, dtype=torch.long)
    if M == 0 or N == 0:
        return AssignResult(M, gt_inds, pred_bboxes.new_zeros(N), labels), None
    point = priors[:, None, :2]  # (N, 1, 2)
    sides = torch.cat([point - gt_bboxes[:, :2], gt_bboxes[:, 2:] - point], dim=-1)  # (N, M, 4)
    valid = (sides.min(dim=-1).values > 0).sum(dim=1) > 0  # (N,)
    V = int(valid.sum())
    if V == 0:
        return AssignResult(M, gt_inds, pred_bboxes.new_zeros(N), labels), None
    centre = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2.0
    vp = priors[valid]
    distance = (vp[:, None, :2] - centre[None]).pow(2).sum(-1).sqrt() / vp[:, 2][:, None]  # (V, M)
    centre_cost = torch.pow(10, distance - soft_center_radius)
    ious = bbox_overlaps(pred_bboxes[valid], gt_bboxes)  # (V, M)
    iou_cost = -torch.log(ious + 1e-7) * iou_weight
    C = pred_scores.shape[-1]
    logits = pred_scores[valid].unsqueeze(1).repeat(1, M, 1)  # (V, M, C)
    soft_label = F.one_hot(gt_labels.long(), C).float().unsqueeze(0).repeat(V, 1, 1) * ious[..., None]
    term = F.binary_cross_entropy_with_logits(logits, soft_label, reduction="none")
    cls_cost = (term * (soft_label - logits.sigmoid()).abs().pow(2.0)).sum(dim=-1)  # (V, M)
    cost = cls_cost + iou_cost + centre_cost
    ks = torch.clamp(torch.topk(ious, min(topk, V), dim=0).values.sum(0).int(), min=1)
    taken = torch.zeros((V, M), dtype=torch.uint8)
    for g in range(M):
        taken[torch.topk(cost[:, g], k=int(ks[g]), largest=False).indices, g] = 1
    several = taken.sum(1) > 1
    if several.any():
        winner = torch.min(cost[several, :], dim=1).indices
        taken[several, :] = 0
        taken[several.nonzero().squeeze(1), winner] = 1
    matched = taken.sum(1) > 0
    rows = valid.nonzero().squeeze(1)[matched]
    gt_of = taken[matched].argmax(1)
    gt_inds[rows] = gt_of + 1
    labels[rows] = gt_labels[gt_of].long()
    max_overlaps = torch.full((N,), -INF, dtype=torch.float32)
    max_overlaps[rows] = (taken * ious).sum(1)[matched]
    return AssignResult(M, gt_inds, max_overlaps, labels), cost


# -- upstream, from the unpacked wheel, with minimal stand-ins ----------------------------------
def load_upstream(src: str) -> types.SimpleNamespace:
    """Import mmdet 3.3.0's two assigner files from ``src`` (the wheel's root, holding ``mmdet/``).

    Stand-ins replace what they import beyond torch: ``mmengine.structures.InstanceData`` (an
    attribute bag), ``mmdet.registry.TASK_UTILS`` (builds ``BboxOverlaps2D``), ``mmdet.utils``
    (``ConfigType``) and ``mmdet.structures.bbox`` (``BaseBoxes`` as an empty class, with the
    real ``bbox_overlaps.py`` and ``transforms.py``). Meant for a benchmark subprocess only.
    """
    root = os.path.join(src, "mmdet")
    if not os.path.isfile(os.path.join(root, "models/task_modules/assigners/atss_assigner.py")):
        raise FileNotFoundError(f"no mmdet/models/task_modules/assigners/atss_assigner.py under {src!r}")

    def package(name: str, path: str | None = None) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [path] if path else []
        sys.modules[name] = module
        return module

    def load(name: str, rel: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, rel))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    class InstanceData:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

        def __contains__(self, key: str) -> bool:
            return key in self.__dict__

    class Registry:
        def __init__(self) -> None:
            self.classes: dict[str, type] = {}

        def register_module(self):
            def deco(cls):
                self.classes[cls.__name__] = cls
                return cls
            return deco

        def build(self, cfg: dict):
            cfg = dict(cfg)
            return self.classes[cfg.pop("type")](**cfg)

    package("mmengine").structures = package("mmengine.structures")
    sys.modules["mmengine.structures"].InstanceData = InstanceData
    mmdet = package("mmdet", root)
    mmdet.registry = package("mmdet.registry")
    mmdet.registry.TASK_UTILS = Registry()
    utils = package("mmdet.utils", os.path.join(root, "utils"))
    utils.ConfigType = dict
    package("mmdet.structures", os.path.join(root, "structures"))
    bbox = package("mmdet.structures.bbox", os.path.join(root, "structures/bbox"))
    bbox.BaseBoxes = type("BaseBoxes", (), {})
    bbox.bbox_overlaps = load("mmdet.structures.bbox.bbox_overlaps", "structures/bbox/bbox_overlaps.py").bbox_overlaps
    bbox.get_box_tensor = load("mmdet.structures.bbox.transforms", "structures/bbox/transforms.py").get_box_tensor
    for name in ("models", "models/task_modules", "models/task_modules/assigners"):
        package("mmdet." + name.replace("/", "."), os.path.join(root, name))
    prefix = "mmdet.models.task_modules.assigners."
    load(prefix + "iou2d_calculator", "models/task_modules/assigners/iou2d_calculator.py")
    atss = load(prefix + "atss_assigner", "models/task_modules/assigners/atss_assigner.py")
    dsl = load(prefix + "dynamic_soft_label_assigner", "models/task_modules/assigners/dynamic_soft_label_assigner.py")
    return types.SimpleNamespace(ATSSAssigner=atss.ATSSAssigner, DynamicSoftLabelAssigner=dsl.DynamicSoftLabelAssigner,
                                 InstanceData=InstanceData)


# -- one variant in a subprocess --------------------------------------------------------------
def _callable(assigner: str, variant: str, scene: dict[str, Any], upstream_src: str | None, captured: dict):
    s = scene
    if assigner == "atss":
        if variant == "ours":
            return lambda: atss_assign(s["priors"], s["num_level_priors"], s["gt_bboxes"], s["gt_labels"])
        if variant == "dense":
            return lambda: dense_reference_atss(s["priors"], s["num_level_priors"], s["gt_bboxes"], s["gt_labels"])
        up = load_upstream(upstream_src)
        assigner_obj = up.ATSSAssigner(topk=9)
        pred = up.InstanceData(priors=s["priors"])
        gts = up.InstanceData(bboxes=s["gt_bboxes"], labels=s["gt_labels"])
        return lambda: assigner_obj.assign(pred, s["num_level_priors"], gts)
    if variant == "ours":
        def run():
            result = dsl_assign(s["priors"], s["pred_bboxes"], s["pred_scores"], s["gt_bboxes"], s["gt_labels"])
            captured["cost"] = None if result.details is None else result.details.cost_matrix
            return result
        return run
    if variant == "dense":
        def run():
            result, captured["cost"] = dense_reference_dsl(s["priors"], s["pred_bboxes"], s["pred_scores"],
                                                           s["gt_bboxes"], s["gt_labels"])
            return result
        return run
    up = load_upstream(upstream_src)
    assigner_obj = up.DynamicSoftLabelAssigner()
    matching = assigner_obj.dynamic_k_matching

    def keep_cost(cost, pairwise_ious, num_gt, valid_mask):
        captured["cost"] = cost
        return matching(cost, pairwise_ious, num_gt, valid_mask)

    assigner_obj.dynamic_k_matching = keep_cost
    pred = up.InstanceData(priors=s["priors"], bboxes=s["pred_bboxes"], scores=s["pred_scores"])
    gts = up.InstanceData(bboxes=s["gt_bboxes"], labels=s["gt_labels"])
    return lambda: assigner_obj.assign(pred, gts)


def _high_water_kib() -> int:
    """Peak resident memory of this process so far (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker(assigner: str, variant: str, upstream_src: str | None, threads: int, repeat: int, num_targets: int,
            out_path: str, queue) -> None:
    torch.set_num_threads(threads)
    scene = (make_atss_scene if assigner == "atss" else make_dsl_scene)(num_targets)
    captured: dict = {}
    fn = _callable(assigner, variant, scene, upstream_src, captured)
    before = _high_water_kib()
    result = fn()
    peak_mib = (_high_water_kib() - before) / 1024.0
    torch.save({"gt_inds": result.gt_inds, "max_overlaps": result.max_overlaps, "labels": result.labels,
                "cost": captured.get("cost"), "num_pos": int((result.gt_inds > 0).sum())}, out_path)
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    queue.put({"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu), "peak_mib": peak_mib})


def run_variant(assigner: str, variant: str, *, upstream_src: str | None = None, threads: int = 1, repeat: int = 5,
                num_targets: int = NUM_TARGETS) -> tuple[dict, dict]:
    """Timing/memory figures and the saved outputs of one variant, run in a fresh subprocess."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "out.pt")
        proc = ctx.Process(target=_worker, args=(assigner, variant, upstream_src, threads, repeat, num_targets,
                                                 out_path, queue))
        proc.start()
        figures = queue.get()
        proc.join()
        outputs = torch.load(out_path)
    return figures, outputs


def _bit_identical(a: dict, b: dict) -> str:
    def same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        if x is None or y is None:
            return x is y
        return (x.dtype == y.dtype and x.shape == y.shape
                and torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)))

    keys = ["gt_inds", "labels", "max_overlaps"] + (["cost"] if a.get("cost") is not None else [])
    bad = [k for k in keys if not same(a[k], b[k])]
    return f"bit-identical ({', '.join(keys)})" if not bad else f"DIFFERENT: {', '.join(bad)}"


def main(threads: int = 1, quick: bool = False, upstream_src: str | None = None,
         num_targets: int = NUM_TARGETS) -> None:
    upstream_src = upstream_src or os.environ.get("MMDET_SRC")
    repeat = 3 if quick else 7
    variants = ["ours", "dense"] + (["upstream"] if upstream_src else [])
    print(f"  one 640x640 image, {num_targets} targets, 80 classes; torch {torch.__version__}, {threads} thread(s); "
          f"median of {repeat} calls; peak = growth of the process's VmHWM during the first call")
    if not upstream_src:
        print("  (upstream not run: pass --upstream-src DIR or set MMDET_SRC to the unpacked mmdet 3.3.0 wheel)")
    for assigner, label in (("atss", "ATSS, 8525 anchors (1 per location, strides 8..128), topk 9"),
                            ("dsl", "RTMDet DynamicSoftLabelAssigner, 8400 points (strides 8/16/32)")):
        print(f"  {label}")
        results = {}
        for variant in variants:
            # the dense (V, M, C) variants take seconds: fewer repetitions
            reps = repeat if (assigner == "atss" or variant == "ours") else max(2, repeat // 2)
            results[variant] = run_variant(assigner, variant, upstream_src=upstream_src, threads=threads, repeat=reps,
                                           num_targets=num_targets)
        reference = "upstream" if "upstream" in results else "dense"
        for variant, (fig, out) in results.items():
            check = "" if variant == reference else f"vs {reference}: {_bit_identical(out, results[reference][1])}"
            print(f"    {variant:9s} {fig['wall_ms']:10.2f} ms wall {fig['cpu_ms']:10.2f} ms cpu "
                  f"{fig['peak_mib']:9.1f} MiB peak   {out['num_pos']:5d} positives  {check}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_mmdet_assigners",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--upstream-src", default=None, help="root of the unpacked mmdet 3.3.0 wheel (holds mmdet/)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--targets", type=int, default=NUM_TARGETS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(threads=args.threads, quick=args.quick, upstream_src=args.upstream_src, num_targets=args.targets)
