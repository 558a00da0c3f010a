"""DETR Hungarian matching + SetCriterion: ours against the upstream code, same process, same inputs.

Scales (COCO DETR: 91 classes + no-object, 300 queries, sigmoid boxes, one CPU thread):
* 1 image, 100 targets, final layer only;
* 4 images, 100 targets each, final layer only;
* 4 images, 100 targets each, 6 decoder layers (the final one and 5 auxiliary ones, as DETR trains).

For each: median time of ``criterion(outputs, targets)`` (matching included) and of that plus
``backward()`` of the weighted total, paired (ours and upstream alternate, so both see the same
machine), wall and process-CPU time; peak memory of one forward+backward (CPU: the peak of live
tensor bytes from the profiler's allocation events, which also sees allocations inside kernels;
CUDA: ``max_memory_allocated``; SciPy's own buffers are the same call in both and not counted);
and whether every loss, the weighted total and every matched index are bit-identical.

The upstream code is never a dependency: it is read at run time from a DETR checkout or a bare git
mirror (``models/matcher.py``, ``util/box_ops.py``, ``SetCriterion`` from ``models/detr.py``,
``accuracy``/``get_world_size`` from ``util/misc.py``) inside a spawned worker process. Their sha256
are checked against the vectors' ``upstream.file_sha256``. torchvision (DETR imports its
``box_area``) is replaced by a two-line stand-in of ``torchvision/ops/boxes.py``'s ``box_area``
(upcast half to float32, then ``(x2 - x1) * (y2 - y1)``); the worker first replays every
``detr.json`` case through this upstream harness to show it reproduces the stored values bit for bit.

Get the upstream code (commit of ``../shared/vectors/detr.json``)::

    git clone https://github.com/facebookresearch/detr /tmp/detr
    git -C /tmp/detr checkout 29901c51d7fe8712168b8d0d64351170bc0f83e0

Run::

    .venv/bin/python -m benchmarks.bench_detr --upstream /tmp/detr [--quick] [--device cuda]

(``--upstream`` also takes a bare mirror, read with ``git show <commit>:<path>``; the environment
variable ``DETR_UPSTREAM`` is the default, which ``python -m benchmarks --only detr`` uses.)
Without the upstream code the benchmark times ours alone.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("LOSSLAB_VECTORS", ROOT.parent / "shared" / "vectors")) / "detr.json"
COMMIT = "29901c51d7fe8712168b8d0d64351170bc0f83e0"
FILE_SHA256 = {
    "models/matcher.py": "5dc956c06849722bd754806e559e420c13364e286546a5c9c04f8820e9c99b20",
    "models/detr.py": "b5a584ada4d074d16852f9ad87ebc75bbdc91386b630755f993cb3fbf2290d42",
    "util/box_ops.py": "f0c1c3e27b0f69955e74b09b4ae1898e41e409d1af292c478ba8be71856112fc",
    "util/misc.py": "b56dfabebf8eded2e7dbf359e167bd308d9c75ee0394f63a751cad9eee597f00",
}
NUM_CLASSES, QUERIES = 91, 300
SCALES = (("1 image x 100 targets, 1 layer", 1, 100, 0),
          ("4 images x 100 targets, 1 layer", 4, 100, 0),
          ("4 images x 100 targets, 6 layers", 4, 100, 5))


# -- inputs ------------------------------------------------------------------------------------
def make_inputs(batch: int, per_image: int, aux_layers: int, seed: int = 0, device: str = "cpu"):
    """COCO-like DETR outputs and targets: logits N(0, 2^2) over 92 columns, sigmoid boxes, targets
    with COCO ids 1..90 and boxes of 2..50% of the image side."""
    g = torch.Generator().manual_seed(seed)

    def layer() -> dict[str, torch.Tensor]:
        return {"pred_logits": (torch.randn((batch, QUERIES, NUM_CLASSES + 1), generator=g) * 2).to(device),
                "pred_boxes": torch.sigmoid(torch.randn((batch, QUERIES, 4), generator=g)).to(device)}

    outputs = layer()
    if aux_layers:
        outputs["aux_outputs"] = [layer() for _ in range(aux_layers)]
    targets = []
    for _ in range(batch):
        wh = torch.rand((per_image, 2), generator=g) * 0.48 + 0.02
        centre = torch.rand((per_image, 2), generator=g) * (1 - wh) + wh / 2
        targets.append({"labels": torch.randint(1, NUM_CLASSES, (per_image,), generator=g).to(device),
                        "boxes": torch.cat([centre, wh], 1).to(device)})
    return outputs, targets


def weight_dict(aux_layers: int) -> dict[str, float]:
    base = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}  # DETR's build() with its defaults
    out = dict(base)
    for i in range(aux_layers):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    return out


def _with_grad(outputs: dict[str, Any]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    leaves: list[torch.Tensor] = []

    def fresh(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        new = {k: v.detach().clone().requires_grad_(True) for k, v in layer.items() if k != "aux_outputs"}
        leaves.extend(new.values())
        return new

    out = fresh(outputs)
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [fresh(layer) for layer in outputs["aux_outputs"]]
    return out, leaves


# -- the upstream code, loaded from the checkout at run time --------------------------------------
def _read_upstream(source: str, path: str) -> str:
    file = Path(source, path)
    if file.is_file():
        text = file.read_text(encoding="utf-8")
    else:
        for rev in (COMMIT, "HEAD"):
            done = subprocess.run(["git", "-C", source, "show", f"{rev}:{path}"], capture_output=True, text=True)
            if done.returncode == 0:
                text = done.stdout
                break
        else:
            raise FileNotFoundError(f"{path} not found in {source} (a DETR checkout or git mirror)")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != FILE_SHA256[path]:
        print(f"  warning: upstream {path} sha256 {digest[:12]}... differs from the vectors' "
              f"{FILE_SHA256[path][:12]}...")
    return text


def _module(name: str, source: str | None = None, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    if source is not None:
        exec(compile(source, f"<upstream {name}>", "exec"), module.__dict__)  # noqa: S102 - the benchmark's subject
    return module


def _definitions(source: str, names: set[str], namespace: dict[str, Any], filename: str) -> dict[str, Any]:
    """Execute only the named top-level functions/classes of ``source`` in ``namespace``."""
    tree = ast.parse(source)
    body = [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    exec(compile(ast.Module(body=body, type_ignores=[]), filename, "exec"), namespace)  # noqa: S102
    return namespace


def _box_area_stand_in(boxes: torch.Tensor) -> torch.Tensor:
    """torchvision/ops/boxes.py box_area: _upcast (half -> float32), then (x2 - x1) * (y2 - y1)."""
    if boxes.is_floating_point() and boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def load_upstream(source: str) -> types.SimpleNamespace:
    """``HungarianMatcher``, ``SetCriterion`` and ``box_ops`` from a DETR checkout (worker only)."""
    import torch.nn.functional as F
    from torch import nn

    tv = _module("torchvision", __version__="0.28.0")
    tv.ops = _module("torchvision.ops")
    tv.ops.boxes = _module("torchvision.ops.boxes", box_area=_box_area_stand_in)
    _module("util", __path__=[])
    box_ops = _module("util.box_ops", _read_upstream(source, "util/box_ops.py"))
    _module("models", __path__=[])
    matcher = _module("models.matcher", _read_upstream(source, "models/matcher.py"))
    misc = _definitions(_read_upstream(source, "util/misc.py"),
                        {"accuracy", "get_world_size", "is_dist_avail_and_initialized"},
                        {"torch": torch, "dist": torch.distributed}, "<upstream util/misc.py>")
    detr = _definitions(_read_upstream(source, "models/detr.py"), {"SetCriterion"},
                        {"torch": torch, "F": F, "nn": nn, "box_ops": box_ops, **misc},
                        "<upstream models/detr.py>")
    return types.SimpleNamespace(HungarianMatcher=matcher.HungarianMatcher, SetCriterion=detr["SetCriterion"],
                                 box_ops=box_ops)


def engine_total(loss_dict: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """engine.train_one_epoch's weighted sum over the keys that have a weight."""
    return sum(loss_dict[k] * weights[k] for k in loss_dict.keys() if k in weights)


def replay_vectors(up: types.SimpleNamespace) -> tuple[int, int]:
    """Run every detr.json case through the upstream harness; (bit-exact cases, cases)."""
    from losscore.conformance import _decode_tree, compare

    if not VECTORS.exists():
        return 0, 0
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    exact = total = 0
    cpu = torch.device("cpu")
    for group, cases in data["groups"].items():
        for case in cases:
            total += 1
            inputs, expected = _decode_tree(case["inputs"], cpu), case["expected"]
            try:
                if group == "box_cxcywh_to_xyxy":
                    got = {"xyxy": up.box_ops.box_cxcywh_to_xyxy(inputs["x"])}
                elif group == "generalized_box_iou":
                    got = {"giou": up.box_ops.generalized_box_iou(inputs["boxes1"], inputs["boxes2"])}
                elif group == "matcher":
                    m = up.HungarianMatcher(inputs["cost_class"], inputs["cost_bbox"], inputs["cost_giou"])
                    got = {"indices": [list(pair) for pair in m(inputs["outputs"], inputs["targets"])]}
                else:
                    crit = up.SetCriterion(inputs["num_classes"], up.HungarianMatcher(**inputs["matcher"]),
                                           inputs["weight_dict"], inputs["eos_coef"], inputs["losses"])
                    losses = crit(inputs["outputs"], inputs["targets"])
                    got = {"losses": losses, "weighted_total": engine_total(losses, inputs["weight_dict"])}
            except Exception as exc:  # noqa: BLE001 - an expected error case
                exact += type(exc).__name__ == expected.get("error")
                continue
            exact += all(not compare(got[k], expected[k], {"rtol": 0.0, "atol": 0.0}) for k in got)
    return exact, total


# -- measurement -------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_times(first: Callable[[], object], second: Callable[[], object], repeat: int,
                 device: torch.device) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall ms, process-CPU ms) of ``first`` and of ``second``, run alternately."""
    for _ in range(2):
        first()
        second()
    samples: list[list[tuple[float, float]]] = [[], []]
    for i in range(repeat):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            fn = (first, second)[which]
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            samples[which].append(((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3))
    wall_first, wall_second = (statistics.median(s[0] for s in runs) for runs in samples)
    cpu_first, cpu_second = (statistics.median(s[1] for s in runs) for runs in samples)
    return (wall_first, cpu_first), (wall_second, cpu_second)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak of live tensor bytes above the starting level while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    saved = os.dup(2)  # the profiler logs its start and stop on fd 2
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    return list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _worker(upstream: str | None, device_name: str, threads: int, quick: bool, queue) -> None:
    try:
        queue.put(_measure(upstream, device_name, threads, quick))
    except BaseException:  # noqa: BLE001 - report it in the parent instead of hanging it
        import traceback

        queue.put(["  worker failed:", traceback.format_exc()])


def _measure(upstream: str | None, device_name: str, threads: int, quick: bool) -> list[str]:
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from losscore.detr import HungarianMatcher, SetCriterion
    from losscore.trace import Trace

    device = torch.device(device_name)
    lines = []
    up = load_upstream(upstream) if upstream else None
    if up is not None:
        exact, total = replay_vectors(up)
        lines.append(f"  upstream harness on detr.json: {exact}/{total} cases bit-exact (torchvision stand-in check)")
    repeat = 5 if quick else 21
    for label, batch, per_image, aux in SCALES:
        outputs, targets = make_inputs(batch, per_image, aux, device=device_name)
        weights = weight_dict(aux)
        ours = SetCriterion(NUM_CLASSES, HungarianMatcher(1, 5, 2), weights, 0.1)
        variants = {"ours": (ours, ours.weighted_total)}
        if up is not None:
            theirs = up.SetCriterion(NUM_CLASSES, up.HungarianMatcher(1, 5, 2), weights, 0.1,
                                     ["labels", "boxes", "cardinality"]).to(device)
            variants["upstream"] = (theirs, lambda losses: engine_total(losses, weights))

        def forward(name: str) -> Callable[[], object]:
            crit = variants[name][0]
            return lambda: crit(outputs, targets)

        def forward_backward(name: str) -> Callable[[], object]:
            crit, total = variants[name]

            def run() -> None:
                grad_outputs, _ = _with_grad(outputs)
                total(crit(grad_outputs, targets)).backward()
            return run

        lines.append(f"  {label} (Q={QUERIES}, {NUM_CLASSES}+1 classes, {device_name}, {threads} thread(s))")
        if up is None:
            for kind, make in (("fwd", forward), ("fwd+bwd", forward_backward)):
                fn = make("ours")
                (wall, cpu), _ = paired_times(fn, fn, repeat, device)
                lines.append(f"    {kind:8s} ours {wall:8.2f} ms [{cpu:8.2f} cpu]")
            lines.append(f"    peak fwd+bwd ours {peak_bytes(forward_backward('ours'), device) / 2**20:.2f} MiB")
            continue
        # bit-identity: every loss, the total, every matched index, and the gradients
        out_ours, leaves_ours = _with_grad(outputs)
        out_up, leaves_up = _with_grad(outputs)
        losses_ours, losses_up = ours(out_ours, targets), variants["upstream"][0](out_up, targets)
        total_ours, total_up = ours.weighted_total(losses_ours), engine_total(losses_up, weights)
        total_ours.backward()
        total_up.backward()
        idx_ours = ours.matcher(outputs, targets)
        idx_up = variants["upstream"][0].matcher(outputs, targets)
        same_idx = all(torch.equal(a.cpu(), b.cpu()) for x, y in zip(idx_ours, idx_up) for a, b in zip(x, y))
        grad_diff = max(float((a.grad - b.grad).abs().max()) for a, b in zip(leaves_ours, leaves_up))
        lines.append(f"    losses bit-identical: {_identical(losses_ours, losses_up)}, weighted total "
                     f"{torch.equal(total_ours, total_up)} ({total_ours.item():.6f}), indices {same_idx}; "
                     f"gradients max |diff| {grad_diff:.2e}")
        for kind, make in (("fwd", forward), ("fwd+bwd", forward_backward)):
            (w_o, c_o), (w_u, c_u) = paired_times(make("ours"), make("upstream"), repeat, device)
            lines.append(f"    {kind:8s} ours {w_o:8.2f} ms [{c_o:8.2f} cpu]   upstream {w_u:8.2f} ms "
                         f"[{c_u:8.2f} cpu]   ratio {w_o / w_u:.2f} [{c_o / c_u:.2f}]")
        traced = lambda: ours(outputs, targets, trace=Trace())  # noqa: E731
        (w_t, c_t), _ = paired_times(traced, forward("ours"), max(3, repeat // 3), device)
        lines.append(f"    fwd      ours with a Trace {w_t:8.2f} ms [{c_t:8.2f} cpu]")
        for kind, make in (("fwd", forward), ("fwd+bwd", forward_backward)):
            peak_o, peak_u = peak_bytes(make("ours"), device), peak_bytes(make("upstream"), device)
            lines.append(f"    peak {kind:8s} ours {peak_o / 2**20:7.2f} MiB   upstream {peak_u / 2**20:7.2f} MiB   "
                         f"ratio {peak_o / peak_u:.2f}")
    return lines


def main(threads: int = 1, quick: bool = False, upstream: str | None = None, device: str = "cpu") -> None:
    upstream = upstream or os.environ.get("DETR_UPSTREAM") or None
    if upstream is None:
        print("  (no upstream code: pass --upstream PATH or set DETR_UPSTREAM to a facebookresearch/detr checkout "
              f"at {COMMIT[:8]}; timing ours alone)")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(upstream, device, threads, quick, queue))
    proc.start()
    lines = queue.get()
    proc.join()
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_detr", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", help="a facebookresearch/detr checkout or bare git mirror (read at run time)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(args.threads, args.quick, args.upstream, args.device)
