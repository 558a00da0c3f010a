"""YOLOv9 ComputeLoss: our sparse path against a dense, upstream-shaped reference.

Scales (upstream figures measured on one CPU thread of this machine, 80 classes, 640x640):
* interactive: 1 image, 20 targets, forward: upstream 26 ms (goal <= 13 ms);
* training: 16 images, 8 targets each: upstream 774 ms forward, 990 ms forward+backward
  (goals <= 387 ms and <= 495 ms).

``dense_reference_loss`` below is our own straightforward implementation of what upstream does
(every (target, anchor) pair, dense one-hots); the tests use it as the equality reference. Peak
memory is the growth of the process's peak RSS while one forward+backward runs, measured in a
fresh subprocess per variant.

Run: ``.venv/bin/python -m benchmarks --only yolov9 [--quick]``.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from benchmarks.timing import median_ms, row
from losscore.boxes import bbox_iou, xywh2xyxy
from losscore.yolov9.tal import dist2bbox, make_anchors, select_candidates_in_gts
from losscore.trace import Trace
from losscore.yolov9 import BOX_GAIN, CLS_GAIN, DFL_GAIN, BboxLoss, compute_loss

UPSTREAM_MS = {"interactive fwd": 26.0, "training fwd": 774.0, "training fwd+bwd": 990.0}


def dense_reference_loss(feats: Sequence[torch.Tensor], targets: torch.Tensor, *, nc: int,
                         strides: Sequence[int] = (8, 16, 32), reg_max: int = 16, cls_pw: float = 1.0,
                         fl_gamma: float = 0.0, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                         eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upstream-shaped ComputeLoss: dense (B, M, N) metrics and one-hots. Returns (total, items, fg_mask)."""
    B, R, C = feats[0].shape[0], reg_max, nc
    no = 4 * R + C
    head = torch.cat([f.view(B, no, -1) for f in feats], 2)  # (B, no, N)
    box_logits, cls_logits = head.split((4 * R, C), 1)
    cls_logits = cls_logits.permute(0, 2, 1).contiguous()  # (B, N, C)
    box_logits = box_logits.permute(0, 2, 1).contiguous()  # (B, N, 4R)
    N = cls_logits.shape[1]
    anchor_points, stride_tensor = make_anchors(feats, strides, 0.5)
    image_hw = torch.tensor(feats[0].shape[2:], dtype=head.dtype) * strides[0]
    # targets -> (B, M, 5), one image at a time
    image = targets[:, 0]
    M = int(torch.bincount(image.long()).max()) if targets.shape[0] else 0
    gt = torch.zeros((B, M, 5), dtype=targets.dtype)
    for b in range(B):
        rows = targets[image == b, 1:]
        gt[b, :rows.shape[0]] = rows
    gt[..., 1:5] = xywh2xyxy(gt[..., 1:5] * image_hw[[1, 0, 1, 0]])
    gt_labels, gt_boxes = gt[..., 0].long(), gt[..., 1:5]  # (B, M), (B, M, 4)
    real = gt_boxes.sum(-1) > 0  # (B, M)
    proj = torch.arange(R, dtype=head.dtype)
    pred_dist = box_logits.view(B, N, 4, R).softmax(3).matmul(proj)  # (B, N, 4)
    pred_boxes = dist2bbox(pred_dist, anchor_points, xywh=False)  # (B, N, 4) grid units
    target_scores = torch.zeros((B, N, C), dtype=head.dtype)
    fg_mask = torch.zeros((B, N), dtype=torch.bool)
    target_boxes = torch.zeros((B, N, 4), dtype=head.dtype)
    if M:
        with torch.no_grad():
            probs = cls_logits.sigmoid()
            pd_px = pred_boxes * stride_tensor
            in_box = select_candidates_in_gts(anchor_points * stride_tensor, gt_boxes)  # (B, M, N)
            s = probs.gather(2, gt_labels.unsqueeze(1).expand(B, N, M)).permute(0, 2, 1)  # (B, M, N)
            u = bbox_iou(gt_boxes.unsqueeze(2), pd_px.unsqueeze(1), xywh=False, CIoU=True,
                         variant="yolov9").squeeze(-1).clamp(0)  # (B, M, N)
            t = s.pow(alpha) * u.pow(beta)
            top = (t * in_box).topk(topk, dim=-1).indices  # (B, M, K)
            top[~real] = 0
            in_top = torch.zeros((B, M, N)).scatter_add_(-1, top, torch.ones(top.shape))
            in_top = torch.where(in_top > 1, 0.0, in_top)
            mask_pos = in_top * in_box * real.unsqueeze(-1)  # (B, M, N)
            claims = mask_pos.sum(1)  # (B, N)
            if claims.max() > 1:
                best = F.one_hot(u.argmax(1), M).permute(0, 2, 1).to(u.dtype)  # (B, M, N)
                mask_pos = torch.where((claims > 1).unsqueeze(1), best, mask_pos)
            fg_mask = mask_pos.sum(1) > 0
            gt_index = mask_pos.argmax(1)  # (B, N)
            batch = torch.arange(B).unsqueeze(1)
            labels = gt_labels[batch, gt_index]  # (B, N)
            target_boxes = gt_boxes[batch, gt_index] / stride_tensor
            t = t * mask_pos
            norm = (t * (u * mask_pos).amax(-1, keepdim=True) / (t.amax(-1, keepdim=True) + eps)).amax(1)  # (B, N)
            target_scores = F.one_hot(labels, C) * fg_mask.unsqueeze(-1) * norm.unsqueeze(-1)
    score_sum = target_scores.sum().clamp(min=1)
    loss = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="none",
                                              pos_weight=torch.tensor([cls_pw], dtype=head.dtype))
    if fl_gamma > 0:
        p = cls_logits.sigmoid()
        p_t = target_scores * p + (1 - target_scores) * (1 - p)
        loss = loss * ((target_scores * 0.25 + (1 - target_scores) * 0.75) * (1.0 - p_t) ** fl_gamma)
    loss_cls = loss.sum() / score_sum
    zero = torch.zeros((), dtype=head.dtype)
    loss_box = loss_dfl = zero
    if fg_mask.any():
        loss_box, loss_dfl, _ = BboxLoss(R - 1, True)(box_logits, pred_boxes, anchor_points, target_boxes,
                                                      target_scores, score_sum, fg_mask)
    items = torch.stack((loss_box * BOX_GAIN, loss_cls * CLS_GAIN, loss_dfl * DFL_GAIN))
    return items.sum() * B, items.detach(), fg_mask


def make_inputs(batch: int, per_image: int, nc: int = 80, size: int = 640, seed: int = 0,
                dtype: torch.dtype = torch.float32, requires_grad: bool = False):
    """Random head maps (logits like an early model) and random boxes, ``per_image`` per image."""
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for stride in (8, 16, 32):
        logits = torch.randn((batch, 64 + nc, size // stride, size // stride), generator=gen, dtype=dtype)
        logits[:, 64:] -= 4.0  # class logits of an untrained head lean negative
        feats.append(logits.requires_grad_(requires_grad))
    rows = []
    for b in range(batch):
        wh = torch.rand((per_image, 2), generator=gen, dtype=dtype) * 0.4 + 0.03
        centre = torch.rand((per_image, 2), generator=gen, dtype=dtype) * (1 - wh) + wh / 2
        cls = torch.randint(0, nc, (per_image, 1), generator=gen).to(dtype)
        rows.append(torch.cat([torch.full((per_image, 1), float(b), dtype=dtype), cls, centre, wh], 1))
    return feats, torch.cat(rows)


def _peak_worker(variant: str, batch: int, per_image: int, queue) -> None:
    torch.set_num_threads(1)
    feats, targets = make_inputs(batch, per_image, requires_grad=True)
    before = _high_water_kib()
    if variant == "ours":
        total = compute_loss(feats, targets, nc=80).total
    else:
        total = dense_reference_loss(feats, targets, nc=80)[0]
    total.backward()
    queue.put((_high_water_kib() - before) / 1024.0)


def _high_water_kib() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent before exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_mib(variant: str, batch: int, per_image: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_worker, args=(variant, batch, per_image, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def _median_cpu_ms(fn, repeat: int, warmup: int = 1) -> float:
    """Median process CPU time of ``fn()`` in ms (robust to other processes sharing the cores)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) * 1e3)
    return statistics.median(times)


def main(threads: int = 1, quick: bool = False) -> None:
    torch.set_num_threads(threads)
    repeat = 5 if quick else 20
    print("  (median wall ms, and median process CPU ms in brackets; goal: at most half of upstream)")
    for label, batch, per_image in (("interactive", 1, 20), ("training", 16, 8)):
        feats, targets = make_inputs(batch, per_image)
        grad_feats = [f.detach().clone().requires_grad_(True) for f in feats]
        reps = repeat if batch == 1 else max(3, repeat // 4)
        ours = compute_loss(feats, targets, nc=80)
        ref = dense_reference_loss(feats, targets, nc=80)
        print(f"  {label}: B={batch}, {per_image} targets/image, 80 classes, 640x640; loss items ours "
              f"{[round(v, 5) for v in ours.items.tolist()]}, dense {[round(v, 5) for v in ref[1].tolist()]}")
        cases = {
            "fwd, ours, trace off": lambda: compute_loss(feats, targets, nc=80),
            "fwd, ours, trace on": lambda: compute_loss(feats, targets, nc=80, trace=Trace()),
            "fwd, dense reference": lambda: dense_reference_loss(feats, targets, nc=80),
            "fwd+bwd, ours, trace off": lambda: compute_loss(grad_feats, targets, nc=80).total.backward(),
            "fwd+bwd, ours, trace on": lambda: compute_loss(grad_feats, targets, nc=80,
                                                            trace=Trace()).total.backward(),
            "fwd+bwd, dense reference": lambda: dense_reference_loss(grad_feats, targets, nc=80)[0].backward(),
        }
        for name, fn in cases.items():
            dense = "dense" in name
            wall = median_ms(fn, repeat=max(2, reps // 3) if dense else reps, warmup=1)
            cpu = _median_cpu_ms(fn, repeat=max(2, reps // 3) if dense else reps)
            upstream = UPSTREAM_MS.get(f"{label} {name.split(',')[0]}")
            note = f"upstream {upstream:.0f} ms -> {upstream / wall:.1f}x" if upstream and "ours" in name else ""
            row(f"{label} {name}", wall, f"[{cpu:8.3f} ms cpu]  {note}")
        print(f"  {label} peak RSS growth fwd+bwd: ours {peak_mib('ours', batch, per_image):.1f} MiB, "
              f"dense reference {peak_mib('dense', batch, per_image):.1f} MiB")


if __name__ == "__main__":
    main()
