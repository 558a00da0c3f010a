"""Ultralytics TaskAlignedAssigner (release 8.4.190) against ours, side by side.

Workload: the one Ultralytics' own TAL memory work measured (pull request #25240): batch 16,
640x640 (8400 anchors, strides 8/16/32), 300 boxes per image, 365 classes (Objects365), with the
settings every detection loss uses (topk 10, alpha 0.5, beta 6.0, stride [8, 16, 32]).
Predictions are random: probabilities uniform in [0, 1), boxes around each anchor with sides up
to 6 strides; targets have log-uniform sides of 4..400 px (clipped to the image) and random
classes. ``--scenario ties`` quantises scores and boxes coarsely so that ``torch.topk`` ties
among zero metrics are everywhere (a correctness check of the tie handling, not a timing).

Each implementation runs in its own fresh subprocess, on one torch thread: the worker builds the
inputs from the seed, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the
assigner once and reports the growth of the peak RSS over the RSS before the call (outputs
included: ``target_scores`` alone is 16 x 8400 x 365 float32 = 196 MB in both), then times
``--repeat`` further calls (median) and hashes every output tensor (sha256 of dtype, shape and
bytes) to check that the outputs are bit-identical.

Upstream runs in its own virtual environment, never in the product's. One-time set-up (the same
Python as ``.venv``; it reuses the installed torch through a ``.pth`` line, so pip can never pull
another torch; ``--no-deps`` everywhere; torchvision is installed only for the version lookup
``ultralytics/utils`` does at import, it is never imported)::

    .venv/bin/python -m venv /tmp/ultralytics-8.4.190
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \\
        > /tmp/ultralytics-8.4.190/lib/python3.11/site-packages/losslab-torch.pth
    /tmp/ultralytics-8.4.190/bin/pip install --no-deps ultralytics==8.4.190 \\
        opencv-python-headless pyyaml psutil pillow torchvision

Run (from the repository root)::

    .venv/bin/python -m benchmarks.bench_ultralytics --upstream-python /tmp/ultralytics-8.4.190/bin/python

Without an upstream interpreter (``python -m benchmarks``) only our figures are printed.

Measured on the 2-core AMD EPYC (AVX-512) dev machine, shared with other jobs, torch 2.13.0:
upstream 2.2-4.0 s per call and 842 MiB peak RSS growth; ours 0.33-0.72 s and 304-307 MiB
(0.11-0.18x time, 0.36x memory; 187 MiB of both peaks is the returned ``target_scores``), outputs
bit-identical; ``--scenario ties``: 0.11x, 0.36x, bit-identical. Where upstream's memory goes:
the dense ``(B, M, A)`` = 16 x 300 x 8400 tensors (float32 overlaps and metrics, 161 MB each,
plus the float ``mask_in_gts * mask_gt`` product and several int8/bool masks). Ours keeps only the
~0.7 M candidate pairs; its time goes to allocating and filling ``target_scores``, CIoU over the
pairs, the pair enumeration and one sort of the pairs' metrics.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_UPSTREAM_PYTHON = Path("/tmp/ultralytics-8.4.190/bin/python")
WORKLOAD = dict(batch=16, imgsz=640, boxes=300, classes=365)
OUTPUT_NAMES = ("target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx")


def make_inputs(batch: int = 16, imgsz: int = 640, boxes: int = 300, classes: int = 365, seed: int = 0,
                scenario: str = "random") -> dict[str, torch.Tensor]:
    """The assigner's inputs (pixels, xyxy), from a seed, with plain torch only."""
    g = torch.Generator().manual_seed(seed)
    strides = (8, 16, 32)
    points, stride_col = [], []
    for s in strides:  # make_anchors: cell centres, level by level, row-major
        n = imgsz // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack((xs, ys), -1).view(-1, 2))
        stride_col.append(torch.full((n * n, 1), float(s)))
    stride_t = torch.cat(stride_col)
    anc = torch.cat(points) * stride_t  # (A, 2) px
    A = anc.shape[0]
    pd_scores = torch.rand(batch, A, classes, generator=g)
    ltrb = torch.rand(batch, A, 4, generator=g) * stride_t * 6
    side = torch.empty(batch, boxes, 2).uniform_(float(torch.log(torch.tensor(4.0))),
                                                 float(torch.log(torch.tensor(400.0))), generator=g).exp()
    centre = torch.rand(batch, boxes, 2, generator=g) * imgsz
    gt_bboxes = torch.cat((centre - side / 2, centre + side / 2), -1).clamp(0, imgsz)
    if scenario == "ties":  # coarse lattices: many equal metrics and zero overlaps
        pd_scores = (pd_scores * 4).floor() / 4
        ltrb = (ltrb / 8).floor() * 8
        gt_bboxes = (gt_bboxes / 8).round() * 8
    pd_bboxes = torch.cat((anc - ltrb[..., :2], anc + ltrb[..., 2:]), -1)
    gt_labels = torch.randint(0, classes, (batch, boxes, 1), generator=g).float()
    mask_gt = (gt_bboxes.sum(-1, keepdim=True) > 0).float()
    return dict(pd_scores=pd_scores, pd_bboxes=pd_bboxes, anc_points=anc, gt_labels=gt_labels,
                gt_bboxes=gt_bboxes, mask_gt=mask_gt)


def _vm(field: str) -> int:
    """A ``Vm*`` line of /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def worker(impl: str, args: argparse.Namespace) -> dict:
    """Runs in a fresh process: one call for memory, ``repeat`` calls for time, output digests."""
    torch.set_num_threads(1)
    if impl == "upstream":
        from ultralytics.utils.tal import TaskAlignedAssigner
    else:
        sys.path.insert(0, str(ROOT))
        from losscore.ultralytics.tal import TaskAlignedAssigner
    inputs = make_inputs(args.batch, args.imgsz, args.boxes, args.classes, args.seed, args.scenario)
    assigner = TaskAlignedAssigner(topk=10, num_classes=args.classes, alpha=0.5, beta=6.0, stride=[8.0, 16.0, 32.0])
    call = [inputs[k] for k in ("pd_scores", "pd_bboxes", "anc_points", "gt_labels", "gt_bboxes", "mask_gt")]
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:  # reset the peak-RSS mark
        fh.write("5")
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    outputs = assigner(*call)
    first_s = time.perf_counter() - t0
    peak = _vm("VmHWM") - before
    digests = {name: _digest(t) for name, t in zip(OUTPUT_NAMES, outputs)}
    fg = int(outputs[3].sum())
    del outputs
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        assigner(*call)
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "peak_bytes": peak, "first_s": first_s,
            "median_s": statistics.median(times) if times else first_s, "digests": digests, "fg": fg,
            "torch": torch.__version__}


def _spawn(python: str, impl: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, YOLO_AUTOINSTALL="0", YOLO_OFFLINE="1", YOLO_VERBOSE="0",
               YOLO_CONFIG_DIR=tempfile.gettempdir(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [python, "-m", "benchmarks.bench_ultralytics", "--worker", impl, "--batch", str(args.batch),
           "--imgsz", str(args.imgsz), "--boxes", str(args.boxes), "--classes", str(args.classes),
           "--seed", str(args.seed), "--repeat", str(args.repeat), "--scenario", args.scenario]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    upstream_python = args.upstream_python
    if upstream_python is None and DEFAULT_UPSTREAM_PYTHON.exists():
        upstream_python = str(DEFAULT_UPSTREAM_PYTHON)
    print(f"  workload: batch {args.batch}, {args.imgsz}x{args.imgsz}, {args.boxes} boxes/image, "
          f"{args.classes} classes, scenario {args.scenario}, seed {args.seed}; topk 10, alpha 0.5, beta 6, "
          "stride [8, 16, 32]; 1 thread")
    ours = _spawn(sys.executable, "ours", args)
    results = [ours]
    if upstream_python:
        results.insert(0, _spawn(upstream_python, "upstream", args))
    for r in results:
        print(f"  {r['impl']:9s} time {r['median_s'] * 1e3:9.1f} ms (first call {r['first_s'] * 1e3:8.1f} ms)  "
              f"peak RSS growth {r['peak_bytes'] / 2**20:7.1f} MiB  fg anchors {r['fg']}")
    if not upstream_python:
        print("  upstream: no interpreter (pass --upstream-python; set-up in this module's docstring)")
        return
    up = results[0]
    same = {k: up["digests"][k] == ours["digests"][k] for k in OUTPUT_NAMES}
    print(f"  ours / upstream: time {ours['median_s'] / up['median_s']:.3f}x, "
          f"peak memory {ours['peak_bytes'] / up['peak_bytes']:.3f}x (target <= 0.5x each)")
    print("  outputs bit-identical: " + ("yes, all five" if all(same.values())
                                        else "NO: " + ", ".join(k for k, v in same.items() if not v)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ultralytics", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream-python", default=None, help="interpreter of the ultralytics==8.4.190 venv")
    parser.add_argument("--batch", type=int, default=WORKLOAD["batch"])
    parser.add_argument("--imgsz", type=int, default=WORKLOAD["imgsz"])
    parser.add_argument("--boxes", type=int, default=WORKLOAD["boxes"])
    parser.add_argument("--classes", type=int, default=WORKLOAD["classes"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls after the first (median)")
    parser.add_argument("--scenario", choices=("random", "ties"), default="random")
    parser.add_argument("--worker", choices=("ours", "upstream"), help=argparse.SUPPRESS)
    return parser


def main(threads: int = 1, quick: bool = False) -> None:
    """Entry for ``python -m benchmarks`` (our side only unless the default upstream venv exists)."""
    args = _parser().parse_args([])
    args.repeat = 1 if quick else args.repeat
    run(args)


if __name__ == "__main__":
    parsed = _parser().parse_args()
    if parsed.worker:
        print(json.dumps(worker(parsed.worker, parsed)))
    else:
        run(parsed)
