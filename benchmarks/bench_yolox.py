"""YOLOX SimOTA (``get_assignments``) on one image: ours against the YOLOX code itself.

Scene: 640x640, strides 8/16/32 (8400 anchors), 80 classes, 300 targets, predictions at the
"mid" stage of training (cells within 2.5 strides of a target decode near it), for both versions
(release 0.3.0 and GitHub main 6ddff482).

The upstream side runs YOLOX's own ``YOLOXHead.get_assignments`` / ``get_in_boxes_info`` /
``dynamic_k_matching`` (0.3.0) or ``get_geometry_constraint`` / ``simota_matching`` (main) and
``bboxes_iou``, read at run time from a local git mirror of Megvii-BaseDetection/YOLOX (``--mirror``
or ``$YOLOX_MIRROR``; default ``/work/.mirror/Megvii-BaseDetection+YOLOX/repo``) at the pinned
commits in ``REVISIONS``. Only those class/function definitions are compiled (``ast``), with ``torch`` in
scope; nothing of YOLOX is imported, installed or stored in this repository. Without a mirror the
upstream columns are skipped.

Times: one ``spawn`` subprocess per version times ours and upstream alternately (medians; the
machine is shared, so alternating keeps the ratio honest). Peak memory: each (implementation,
version) makes one call in a fresh ``spawn`` subprocess; the figure is the growth of the process's
peak RSS (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) over its
RSS before the call; on CUDA it is ``torch.cuda.max_memory_allocated`` growth. The outputs of both
implementations (``fg_mask``, ``matched_gt_inds``, ``gt_matched_classes``,
``pred_ious_this_matching``, ``num_fg``) are compared with ``torch.equal``.

Run: ``.venv/bin/python -m benchmarks.bench_yolox [--quick] [--threads 1] [--targets 300]``
(or ``python -m benchmarks --only yolox``).
"""
from __future__ import annotations

import argparse
import ast
import io
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch

DEFAULT_MIRROR = "/work/.mirror/Megvii-BaseDetection+YOLOX/repo"
REVISIONS = {"0.3.0": "419778480ab6ec0590e5d3831b3afb3b46ab2aa3",  # tag 0.3.0 = PyPI yolox 0.3.0
             "main": "6ddff4824372906469a7fae2dc3206c7aa4bbaee"}


# -- the scene ------------------------------------------------------------------------------------
def make_scene(num_targets: int = 300, nc: int = 80, size: int = 640, seed: int = 0,
               device: str = "cpu") -> dict[str, Any]:
    """Targets and "mid"-stage predictions on a ``size`` x ``size`` image (strides 8/16/32)."""
    from losscore.yolox import make_grid

    g = torch.Generator().manual_seed(seed)
    grid = make_grid((size, size), (8, 16, 32))
    A = grid.x_shifts.numel()
    centre = torch.rand(num_targets, 2, generator=g) * size
    wh = torch.exp(torch.empty(num_targets, 2).uniform_(math.log(8), math.log(320), generator=g))
    gt = torch.cat([centre, wh], 1)
    classes = torch.randint(0, nc, (num_targets,), generator=g).float()
    s = grid.expanded_strides
    cell_xy = torch.stack([(grid.x_shifts + 0.5) * s, (grid.y_shifts + 0.5) * s], 1)  # (A, 2)
    # untrained everywhere: box logits in [-1.5, 1.5], scores in [-6, 2]
    t = torch.empty(A, 4).uniform_(-1.5, 1.5, generator=g)
    cls = torch.empty(A, nc).uniform_(-6, 2, generator=g)
    obj = torch.empty(A, 1).uniform_(-6, 2, generator=g)
    # "mid": a cell within 2.5 strides of a target centre predicts that target with noise 0.35
    dist = (cell_xy[:, None, :] - gt[None, :, :2]).abs().amax(-1) / s[:, None]  # (A, N) in strides
    nearest_dist, nearest = dist.min(1)
    near = nearest_dist < 2.5
    target = gt[nearest[near]]
    stride_near = s[near, None]
    t[near, :2] = target[:, :2] / stride_near - torch.stack([grid.x_shifts, grid.y_shifts], 1)[near] \
        + torch.empty(int(near.sum()), 2).uniform_(-0.35, 0.35, generator=g)
    t[near, 2:] = torch.log(target[:, 2:] / stride_near) + torch.empty(int(near.sum()), 2).uniform_(-0.35, 0.35,
                                                                                                    generator=g)
    cls[near] = torch.empty(int(near.sum()), nc).uniform_(-1, 2, generator=g)
    obj[near] = torch.empty(int(near.sum()), 1).uniform_(-1, 2, generator=g)
    pred = torch.cat([(t[:, :2] + torch.stack([grid.x_shifts, grid.y_shifts], 1)) * s[:, None],
                      torch.exp(t[:, 2:]) * s[:, None]], 1)
    scene = {"gt": gt, "classes": classes, "pred": pred, "cls": cls, "obj": obj, "x_shifts": grid.x_shifts,
             "y_shifts": grid.y_shifts, "strides": s, "nc": nc}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in scene.items()}


# -- upstream, compiled from the mirror -------------------------------------------------------------
def _git_show(mirror: str, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", mirror, "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _definitions(source: str, names: set[str]) -> ast.Module:
    tree = ast.parse(source)
    return ast.Module(body=[node for node in tree.body if getattr(node, "name", None) in names], type_ignores=[])


def load_upstream_head(mirror: str, version: str, num_classes: int) -> Any:
    """A ``YOLOXHead`` of the given version with only what ``get_assignments`` reads set up."""
    import torch.nn.functional as F
    from torch import nn

    rev = REVISIONS[version]
    scope: dict[str, Any] = {"torch": torch, "nn": nn, "F": F, "math": math,
                             "logger": types.SimpleNamespace(error=print, info=print)}
    exec(compile(_definitions(_git_show(mirror, rev, "yolox/utils/boxes.py"), {"bboxes_iou"}),
                 f"{version}:yolox/utils/boxes.py", "exec"), scope)
    exec(compile(_definitions(_git_show(mirror, rev, "yolox/models/yolo_head.py"), {"YOLOXHead"}),
                 f"{version}:yolox/models/yolo_head.py", "exec"), scope)
    head = scope["YOLOXHead"].__new__(scope["YOLOXHead"])
    nn.Module.__init__(head)
    head.num_classes = num_classes
    head.n_anchors = 1
    return head


# -- one measured variant per subprocess -----------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _runner(impl: str, version: str, scene: dict[str, Any], mirror: str):
    if impl == "ours":
        from losscore.yolox import get_assignments

        def run(trace=None):
            a = get_assignments(scene["gt"], scene["classes"], scene["pred"], scene["cls"], scene["obj"],
                                scene["x_shifts"], scene["y_shifts"], scene["strides"], version=version, trace=trace)
            return a.gt_matched_classes, a.fg_mask, a.pred_ious_this_matching, a.matched_gt_inds, a.num_fg
        return run
    head = load_upstream_head(mirror, version, scene["nc"])
    N = scene["gt"].shape[0]
    xs, ys, ss = scene["x_shifts"][None], scene["y_shifts"][None], scene["strides"][None]
    cls, obj = scene["cls"][None], scene["obj"][None]

    def run(trace=None):
        if version == "0.3.0":
            return head.get_assignments(0, N, xs.shape[1], scene["gt"], scene["classes"], scene["pred"], ss, xs, ys,
                                        cls, None, obj, None, None)
        return head.get_assignments(0, N, scene["gt"], scene["classes"], scene["pred"], ss, xs, ys, cls, obj)
    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_worker(impl: str, version: str, num_targets: int, threads: int, device: str, mirror: str,
                 queue) -> None:
    """One call in a fresh process: its peak memory growth, and its outputs."""
    warnings.filterwarnings("ignore")  # upstream's torch.cuda.amp.autocast deprecation
    torch.set_num_threads(threads)
    scene = make_scene(num_targets, device=device)
    run = _runner(impl, version, scene, mirror)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        how = "torch.cuda.max_memory_allocated growth over one call, fresh process"
    else:
        reset = _reset_peak()
        before = _rss_kib("VmRSS") if reset else _rss_kib("VmHWM")
        out = run()
        peak_mib = (_rss_kib("VmHWM") - before) / 1024
        how = "peak RSS (VmHWM, reset via /proc/self/clear_refs) growth over one call, fresh process"
        if not reset:
            how = "peak RSS (VmHWM) growth over the first call, fresh process"
    buffer = io.BytesIO()  # tensors through a queue would be shared-memory handles of a dying process
    torch.save(tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in out), buffer)
    queue.put({"peak_mib": peak_mib, "how": how, "out": buffer.getvalue()})


def _time_worker(version: str, num_targets: int, threads: int, repeat: int, device: str, mirror: str | None,
                 queue) -> None:
    """Median times, ours and upstream timed alternately in one process (so both see the same
    machine), and ours with a trace."""
    from losscore.trace import Trace

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    scene = make_scene(num_targets, device=device)
    ours = _runner("ours", version, scene, "")
    upstream = _runner("upstream", version, scene, mirror) if mirror else None

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    ours()
    if upstream is not None:
        upstream()
    a, b, c = [], [], []
    for _ in range(repeat):
        a.append(timed(ours))
        if upstream is not None:
            b.append(timed(upstream))
        c.append(timed(lambda: ours(Trace())))
    queue.put({"ours_ms": statistics.median(a), "upstream_ms": statistics.median(b) if b else None,
               "traced_ms": statistics.median(c)})


def _spawn(target, *args) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def peak(impl: str, version: str, num_targets: int = 300, threads: int = 1, device: str = "cpu",
         mirror: str = DEFAULT_MIRROR) -> dict[str, Any]:
    """Peak memory growth of one call of ``impl`` ("ours" or "upstream") and its outputs."""
    result = _spawn(_peak_worker, impl, version, num_targets, threads, device, mirror)
    result["out"] = torch.load(io.BytesIO(result["out"]))
    return result


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def main(threads: int = 1, quick: bool = False, num_targets: int = 300, device: str = "cpu",
         mirror: str | None = None, versions: tuple[str, ...] = ("0.3.0", "main")) -> None:
    mirror = mirror or os.environ.get("YOLOX_MIRROR", DEFAULT_MIRROR)
    have_upstream = Path(mirror).exists()
    repeat = 3 if quick else 7
    print(f"  SimOTA get_assignments, 1 image, 640x640, 8400 anchors, 80 classes, {num_targets} targets, "
          f"{device}, {threads} thread(s); times: median of {repeat}, ours and upstream alternating")
    if not have_upstream:
        print(f"  (no YOLOX mirror at {mirror}: upstream columns skipped)")
    how = ""
    for version in versions:
        times = _spawn(_time_worker, version, num_targets, threads, repeat, device, mirror if have_upstream else None)
        ours = peak("ours", version, num_targets, threads, device, mirror)
        how = ours["how"]
        print(f"  {version:6s} ours     {times['ours_ms']:9.1f} ms  peak {ours['peak_mib']:8.1f} MiB   "
              f"(with a trace {times['traced_ms']:.1f} ms)   positives {ours['out'][4]}")
        if have_upstream:
            up = peak("upstream", version, num_targets, threads, device, mirror)
            print(f"  {version:6s} upstream {times['upstream_ms']:9.1f} ms  peak {up['peak_mib']:8.1f} MiB   "
                  f"time x{times['upstream_ms'] / times['ours_ms']:.1f}, memory "
                  f"x{up['peak_mib'] / max(ours['peak_mib'], 1e-3):.1f}; outputs bit-identical: "
                  f"{_same(ours['out'], up['out'])}")
    print(f"  memory: {how}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_yolox", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mirror", default=None, help=f"YOLOX git mirror (default $YOLOX_MIRROR or {DEFAULT_MIRROR})")
    parser.add_argument("--versions", default="0.3.0,main")
    args = parser.parse_args()
    print(f"== yolox (torch {torch.__version__}, {args.threads} thread(s))")
    main(args.threads, args.quick, args.targets, args.device, args.mirror, tuple(args.versions.split(",")))
