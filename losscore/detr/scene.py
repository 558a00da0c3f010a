"""The "detr" scheme: a learner's scene through DETR's real ``HungarianMatcher`` and ``SetCriterion``.

A query-based scheme (``SchemeSpec.kind = "queries"``): the head is ``Q`` queries, each with class
logits over ``C + 1`` columns (the last is "no object") and one box ``(cx, cy, w, h)`` normalised by
the image size (after the head's sigmoid). The page draws every query's box, the ``(Q, N)`` cost
matrices (queries × boxes) with the matching, and for each matched pair its cost filled in.

Predictions come from :func:`losscore.predictions.blend_logits`, as in the other schemes: the raw head
``(1, Q, C + 1 + 4)`` is ``(1 - progress)·noise + progress·perfect`` with the noise drawn from
``scene.seed``. The perfect head: query ``q < N`` predicts box ``q`` exactly (its box logits are the
logit of the box, +8 for its class, -8 for every other column, no-object included); every other
query predicts no-object (+8 there, -8 elsewhere) and a box spread over the image (query ``q`` in
cell ``q`` of a ``k × k`` grid, ``k = ceil(sqrt(Q))``), so the idle queries do not stack up. A pin
sets a query's box (after the sigmoid) to the pinned box, clamped into [0, 1].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..predictions import blend_logits
from ..scene import (Check, ColumnSpec, InspectorSpec, LevelInfo, LossComposition, LossPart, LossSpec, LossTerm,
                     LossTermSpec, MapSpec, ParamSpec, PhaseSpec, RuleSpec, Scene, SceneResult, SchemeSpec, StageCell,
                     resolve_device)
from ..target_spec import TargetColumn as Col, TargetSpec, TargetTable
from ..text import T, TextError
from ..trace import Trace
from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .loss import build_weight_dict, set_criterion, weighted_total
from .matcher import HungarianMatcher

__all__ = ["SPEC", "explain_scene", "detr_inputs", "perfect_head"]

UPSTREAM = "facebookresearch/detr@29901c51d7fe8712168b8d0d64351170bc0f83e0 models/matcher.py, models/detr.py, util/box_ops.py"
STRIDES = (32,)  # no grid: the images must be multiples of the backbone's stride 32
CLASS_ON, CLASS_OFF = 8.0, -8.0
PROB_EPS = 1e-6
MAX_CHECKED_QUERIES = 10  # checks per box: its cheapest queries (and its matched one)
XYXY = ("x1", "y1", "x2", "y2")
CXCYWH = ("cx", "cy", "w", "h")

PARAMS = (
    ParamSpec("num_queries", 20, 1, 300, 1, kind="int", doc="number of object queries (DETR trains with 100)",
              upstream="--num_queries 100"),
    ParamSpec("set_cost_class", 1.0, 0.0, 10.0, 0.5, doc="matcher weight of the class cost -p(class)",
              upstream="--set_cost_class 1 (HungarianMatcher(cost_class), class default 1)"),
    ParamSpec("set_cost_bbox", 5.0, 0.0, 10.0, 0.5, doc="matcher weight of the L1 box cost",
              upstream="--set_cost_bbox 5 (HungarianMatcher(cost_bbox), class default 1)"),
    ParamSpec("set_cost_giou", 2.0, 0.0, 10.0, 0.5, doc="matcher weight of the GIoU cost -GIoU",
              upstream="--set_cost_giou 2 (HungarianMatcher(cost_giou), class default 1)"),
    ParamSpec("eos_coef", 0.1, 0.0, 1.0, 0.01, doc="class weight of no-object in loss_ce",
              upstream="--eos_coef 0.1 (SetCriterion(eos_coef))"),
    ParamSpec("bbox_loss_coef", 5.0, 0.0, 10.0, 0.5, doc="weight of loss_bbox (L1) in the total",
              upstream="--bbox_loss_coef 5 (weight_dict['loss_bbox'])"),
    ParamSpec("giou_loss_coef", 2.0, 0.0, 10.0, 0.5, doc="weight of loss_giou in the total",
              upstream="--giou_loss_coef 2 (weight_dict['loss_giou'])"),
)
RULES = (
    RuleSpec("matched, cheapest", "●", "the one-to-one assignment gives this query to the box, and it is also the "
                                       "box's lowest-cost query"),
    RuleSpec("matched, not cheapest", "◆", "matched although another query costs less for this box: the assignment "
                                           "minimises the total cost over all boxes, one query each"),
)
COLUMNS = (
    ColumnSpec("gt", "index of the ground-truth box", "index", group="matching"),
    ColumnSpec("query", "index of the matched query", "index", group="matching"),
    ColumnSpec("rule", "matched and cheapest for its box, or matched by the global optimum only", "index",
               group="matching"),
    ColumnSpec("level", "0: a query head has no levels (one pseudo-level 'queries')", "index", default=False,
               group="matching"),
    ColumnSpec("anchor", "0: no anchors (the query is in the 'query' column)", "index", default=False,
               group="matching"),
    ColumnSpec("cost_total", "C = w_class·cost_class + w_bbox·cost_bbox + w_giou·cost_giou, what the assignment "
                             "minimises", "loss", group="cost",
               formula="C = −{weight_class}·p {p_class} + {weight_bbox}·L1 {cost_bbox} − {weight_giou}·GIoU {giou} "
                       "= {cost_total}"),
    ColumnSpec("cost_class", "-softmax(logits)[label]: minus the probability, no-object inside the softmax", "prob",
               group="cost"),
    ColumnSpec("cost_bbox", "L1 distance of (cx, cy, w, h), normalised, summed over the 4 coordinates", "ratio",
               group="cost"),
    ColumnSpec("cost_giou", "-GIoU of the predicted and target box", "iou", group="cost"),
    ColumnSpec("weight_class", "set_cost_class", "weight", group="cost"),
    ColumnSpec("weight_bbox", "set_cost_bbox", "weight", group="cost"),
    ColumnSpec("weight_giou", "set_cost_giou", "weight", group="cost"),
    ColumnSpec("cost_rank", "rank of this query's cost among all queries for this box (0 = cheapest)", "index",
               group="matching"),
    ColumnSpec("pred_box_px", "the query's predicted box", "px", XYXY, box="xyxy", group="boxes"),
    ColumnSpec("target_box_px", "the target box", "px", XYXY, box="xyxy", group="boxes"),
    ColumnSpec("l1", "|predicted - target| per coordinate (cx, cy, w, h), normalised", "ratio", CXCYWH,
               group="boxes", formula="L1 = Σ |Δ| = {l1} summed = {cost_bbox}"),
    ColumnSpec("iou", "IoU of the predicted and target box", "iou", group="boxes"),
    ColumnSpec("giou", "GIoU = IoU - (enclose - union) / enclose", "iou", group="boxes"),
    ColumnSpec("p_class", "softmax probability of the target's class (over C + 1 columns)", "prob", group="class"),
    ColumnSpec("nll", "-log softmax(logits)[label]: this query's cross-entropy term (weight 1)", "loss",
               group="class", formula="−ln p = −ln {p_class} = {nll}"),
    ColumnSpec("top1_correct", "the query's argmax over all C + 1 columns is the target's class (class_error)",
               "bool", group="class"),
    ColumnSpec("loss_bbox_term", "Σ L1 / num_boxes: this pair's part of loss_bbox", "loss", group="loss"),
    ColumnSpec("loss_giou_term", "(1 - GIoU) / num_boxes: this pair's part of loss_giou", "loss", group="loss",
               formula="(1 − {giou}) / num_boxes = {loss_giou_term}"),
)
QUERY_COLUMNS = (
    ColumnSpec("query", "query index", "index", group="matching"),
    ColumnSpec("box_px", "the query's predicted box", "px", XYXY, box="xyxy", group="boxes"),
    ColumnSpec("box_cxcywh", "the predicted box as the code reads it: (cx, cy, w, h) / image size", "ratio", CXCYWH,
               group="boxes"),
    ColumnSpec("pred_class", "most probable real class (the no-object column left out)", "index", group="class"),
    ColumnSpec("pred_prob", "softmax probability of pred_class", "prob", group="class"),
    ColumnSpec("no_object_prob", "softmax probability of no-object", "prob", group="class"),
    ColumnSpec("top1", "argmax over all C + 1 columns (C = no-object)", "index", group="class"),
    ColumnSpec("is_object", "argmax is not no-object: counted by cardinality_error", "bool", group="class"),
    ColumnSpec("matched_gt", "the box this query is matched to, -1 for none", "index", group="matching"),
    ColumnSpec("class_target", "class target of loss_ce: the matched box's class, else C (no-object)", "index",
               group="class"),
    ColumnSpec("ce_weight", "the query's weight in loss_ce: 1, or eos_coef for no-object", "weight", group="loss"),
    ColumnSpec("nll", "-log softmax(logits)[class_target]", "loss", group="loss"),
)
MATRICES = (
    MapSpec("cost_total", "C = w_class·cost_class + w_bbox·cost_bbox + w_giou·cost_giou, queries × boxes", "loss"),
    MapSpec("cost_class", "-softmax(logits)[label of the box], queries × boxes", "prob", range=(-1.0, 0.0)),
    MapSpec("cost_bbox", "L1 distance of the normalised (cx, cy, w, h), queries × boxes", "ratio"),
    MapSpec("cost_giou", "-GIoU, queries × boxes", "iou", range=(-1.0, 1.0)),
)
LOSSES = LossSpec(
    terms=(
        LossTermSpec("loss_ce", "weighted cross-entropy over all Q queries: matched ones against their box's class, "
                                "the rest against no-object with weight eos_coef",
                     part_factor="class weight (1 or eos_coef)", divisor="Σ weights = matched + eos_coef·unmatched",
                     gain="weight_dict['loss_ce'] = 1"),
        LossTermSpec("loss_bbox", "Σ over matched pairs of the L1 distance of (cx, cy, w, h)",
                     divisor="num_boxes", gain="bbox_loss_coef"),
        LossTermSpec("loss_giou", "Σ over matched pairs of 1 - GIoU", divisor="num_boxes", gain="giou_loss_coef"),
    ),
    formula="loss_ce + bbox_loss_coef·loss_bbox + giou_loss_coef·loss_giou (class_error, cardinality_error: logging)",
)
PHASES = (
    PhaseSpec("inputs", "Queries", "the head's class logits and boxes per query, the targets normalised"),
    PhaseSpec("match", "Hungarian matching", "class, L1 and GIoU cost matrices, weighted sum, linear_sum_assignment"),
    PhaseSpec("loss", "Set loss", "num_boxes, weighted cross-entropy, class error, L1 and GIoU, cardinality, total"),
)


def detr_inputs(scene: Scene, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The targets of a validated ``detr`` scene as DETR's data pipeline gives them: labels ``(N,)``,
    boxes ``(N, 4)`` ``box_xyxy_to_cxcywh(xyxy) / [w, h, w, h]`` (``datasets/transforms.py Normalize``),
    and the pixel boxes ``(N, 4)`` xyxy."""
    device = resolve_device(scene.device) if device is None else device
    xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32).reshape(-1, 4)
    boxes = box_xyxy_to_cxcywh(xyxy) / torch.tensor([scene.width, scene.height, scene.width, scene.height],
                                                    dtype=torch.float32)
    labels = torch.tensor([b.cls for b in scene.boxes], dtype=torch.int64)
    return labels.to(device), boxes.to(device), xyxy.to(device)


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(p) - torch.log1p(-p)


def perfect_head(scene: Scene, labels: Tensor, boxes: Tensor, num_queries: int) -> Tensor:
    """The raw head ``(1, Q, C + 1 + 4)`` of the perfect predictor (see the module docstring)."""
    device, nc = boxes.device, scene.nc
    head = torch.full((num_queries, nc + 5), CLASS_OFF, device=device)
    k = math.ceil(math.sqrt(num_queries))
    q = torch.arange(num_queries, device=device)
    spread = torch.stack(((q % k + 0.5) / k, (q // k + 0.5) / k, torch.full_like(q, 1, dtype=torch.float32) / k,
                          torch.full_like(q, 1, dtype=torch.float32) / k), 1)  # (Q, 4)
    head[:, nc] = CLASS_ON  # no-object
    head[:, nc + 1:] = _logit(spread)
    n = min(num_queries, labels.numel())
    if n:
        head[:n, nc] = CLASS_OFF
        head[torch.arange(n, device=device), labels[:n]] = CLASS_ON
        head[:n, nc + 1:] = _logit(boxes[:n])
    return head[None]


def explain_scene(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Run DETR's ``SetCriterion`` (Hungarian matching and the set loss) on one drawn image."""
    device = resolve_device(scene.device)
    nc, Q = scene.nc, int(scene.param("num_queries"))
    weights = {name: float(scene.param(name)) for name in ("set_cost_class", "set_cost_bbox", "set_cost_giou")}
    if not any(weights.values()):
        raise TextError("params.set_cost_class", "set_cost_class, set_cost_bbox and set_cost_giou are all 0; upstream's "
                        "HungarianMatcher refuses that (AssertionError 'all costs cant be 0')")
    labels, boxes, xyxy = detr_inputs(scene, device)
    notes: list = []
    generator = torch.Generator().manual_seed(scene.seed)
    with torch.no_grad():
        raw = blend_logits(perfect_head(scene, labels, boxes, Q), scene.progress, generator)  # (1, Q, C + 5)
        pred_logits = raw[..., :nc + 1]
        pred_boxes = raw[..., nc + 1:].sigmoid()  # DETR: bbox_embed(hs).sigmoid()
        pred_boxes = _apply_pins(scene, pred_boxes, notes)
        recorder = trace if trace is not None else Trace()  # the costs are read back from the trace
        recorder.record("inputs.queries", "Queries and targets",
                        "each query has C + 1 class logits (the last is no-object) and a box (cx, cy, w, h) after a "
                        "sigmoid, in fractions of the image; the targets are the drawn boxes divided by the image size",
                        code="models/detr.py DETR.forward, datasets/transforms.py Normalize",
                        tensors={"pred_logits": (pred_logits[0], "Q C+1"), "pred_boxes": (pred_boxes[0], "Q 4"),
                                 "target_labels": (labels, "N"), "target_boxes": (boxes, "N 4")},
                        values={"num_queries": Q, "num_classes": nc, "seed": scene.seed, "progress": scene.progress})
        matcher = HungarianMatcher(weights["set_cost_class"], weights["set_cost_bbox"], weights["set_cost_giou"])
        targets = [{"labels": labels, "boxes": boxes}]
        eos_coef = float(scene.param("eos_coef"))
        result = set_criterion({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, targets, num_classes=nc,
                               matcher=matcher, eos_coef=eos_coef, trace=recorder)
        weight_dict = build_weight_dict(float(scene.param("bbox_loss_coef")), float(scene.param("giou_loss_coef")))
        total = weighted_total(result.losses, weight_dict, trace=recorder)
    return _result(scene, recorder, trace, result, weight_dict, total, pred_logits, pred_boxes, labels, xyxy, weights,
                   notes, device)


def _apply_pins(scene: Scene, pred_boxes: Tensor, notes: list) -> Tensor:
    """Each pin sets query ``pin.anchor``'s box (validated: level 0, cell (0, 0), w, h > 0)."""
    if not scene.pins:
        return pred_boxes
    pred_boxes = pred_boxes.clone()
    for index, pin in enumerate(scene.pins):
        wanted = [pin.cx / scene.width, pin.cy / scene.height, pin.w / scene.width, pin.h / scene.height]
        clamped = [min(max(v, 0.0), 1.0) for v in wanted]
        if clamped != wanted:
            notes.append(T("Pin {index} (query {query}) is unreachable: the head's sigmoid keeps cx, cy, w and h within "
                           "(0, 1) of the image; clamped to cx {cx:.3g}, cy {cy:.3g}, w {w:.3g}, h {h:.3g}.",
                           index=index, query=pin.anchor, cx=clamped[0], cy=clamped[1], w=clamped[2], h=clamped[3]))
        pred_boxes[0, pin.anchor] = pred_boxes.new_tensor(clamped)
    return pred_boxes


def _result(scene: Scene, recorder: Trace, trace: Trace | None, result, weight_dict: dict, total: Tensor,
            pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, xyxy: Tensor, weights: dict, notes: list,
            device: torch.device) -> SceneResult:
    nc = scene.nc
    Q = pred_logits.shape[1]
    N = labels.numel()
    scale = torch.tensor([scene.width, scene.height, scene.width, scene.height], dtype=torch.float32, device=device)
    cost_class = recorder.get("match.cost_class")["cost_class"]  # (Q, N)
    cost_bbox = recorder.get("match.cost_bbox")["cost_bbox"]
    giou_stage = recorder.get("match.cost_giou")
    cost_giou, pair_iou = giou_stage["cost_giou"], giou_stage["iou"]
    C = recorder.get("match.cost_total")["C"]
    labels_stage = recorder.get("loss.labels")
    nll_all, ce_weight = labels_stage["nll"][0], labels_stage["weight"][0]  # (Q,)
    target_class = labels_stage["target_class"][0]
    boxes_stage = recorder.get("loss.boxes")
    correct = recorder.get("loss.class_error")["correct"]  # (P,)
    match = result.indices[0]
    query, gt = match.query_idx.to(device), match.target_idx.to(device)  # (P,), query ascending
    P = query.numel()
    num_boxes = result.num_boxes

    # positives: the matched pairs
    if P:
        rank = (C[:, gt] < C[query, gt][None, :]).sum(0)  # (P,) queries strictly cheaper for this box
    else:
        rank = torch.zeros(0, dtype=torch.long, device=device)
    full = lambda value: torch.full((P,), value, dtype=torch.float32, device=device)  # noqa: E731
    l1 = boxes_stage["l1"]  # (P, 4)
    giou = boxes_stage["giou"]
    positives = {
        "gt": gt, "query": query, "rule": (rank > 0).long(),
        "level": torch.zeros_like(query), "anchor": torch.zeros_like(query),
        "cost_total": C[query, gt], "cost_class": cost_class[query, gt], "cost_bbox": cost_bbox[query, gt],
        "cost_giou": cost_giou[query, gt], "weight_class": full(weights["set_cost_class"]),
        "weight_bbox": full(weights["set_cost_bbox"]), "weight_giou": full(weights["set_cost_giou"]),
        "cost_rank": rank, "pred_box_px": box_cxcywh_to_xyxy(pred_boxes[0, query]) * scale,
        "target_box_px": xyxy[gt], "l1": l1, "iou": boxes_stage["iou"], "giou": giou,
        "p_class": -cost_class[query, gt], "nll": nll_all[query], "top1_correct": correct.reshape(-1),
        "loss_bbox_term": l1.sum(1) / num_boxes, "loss_giou_term": (1 - giou) / num_boxes,
    }
    positives = {k: v.detach() for k, v in positives.items()}

    # one row per query
    prob = pred_logits[0].softmax(-1)  # (Q, C + 1)
    pred_prob, pred_class = prob[:, :nc].max(-1)
    top1 = pred_logits[0].argmax(-1)
    matched_gt = torch.full((Q,), -1, dtype=torch.long, device=device)
    matched_gt[query] = gt
    queries = {"query": torch.arange(Q, device=device), "box_px": box_cxcywh_to_xyxy(pred_boxes[0]) * scale,
               "box_cxcywh": pred_boxes[0], "pred_class": pred_class, "pred_prob": pred_prob,
               "no_object_prob": prob[:, nc], "top1": top1, "is_object": top1 != nc, "matched_gt": matched_gt,
               "class_target": target_class, "ce_weight": ce_weight, "nll": nll_all}
    queries = {k: v.detach() for k, v in queries.items()}
    matrices = {"cost_total": C, "cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}

    losses = dict(result.losses)
    losses["total"] = total if isinstance(total, Tensor) else torch.tensor(float(total), device=device)
    losses["num_boxes"] = torch.tensor(num_boxes, device=device)
    losses = {k: v.detach().reshape(()) for k, v in losses.items()}
    composition = _composition(losses, weight_dict, nll_all, ce_weight, query, l1, giou, num_boxes,
                               float(scene.param("eos_coef")))
    notes += _notes(scene, recorder, losses, positives, queries, Q, N, float(scene.param("eos_coef")), weights)
    return SceneResult(
        scheme="detr", levels=[LevelInfo("queries", scene.width, (1, 1), None)], positives=positives, maps={},
        losses=losses, trace=trace, device=str(device), composition=composition, box_cells=None, queries=queries,
        matrices={k: v.detach() for k, v in matrices.items()}, notes=notes,
        targets=torch.cat((torch.zeros_like(labels, dtype=torch.float32)[:, None], labels[:, None].float(),
                           recorder.get("inputs.queries")["target_boxes"]), 1),
        checks=_checks(C, cost_class, cost_bbox, cost_giou, query, gt, weights),
        stage_cells=_stage_cells(C, query, gt, correct.reshape(-1)))


def _composition(losses: dict, weight_dict: dict, nll: Tensor, weight: Tensor, query: Tensor, l1: Tensor,
                 giou: Tensor, num_boxes: float, eos: float) -> LossComposition:
    matched = torch.zeros_like(weight, dtype=torch.bool)
    matched[query] = True
    weighted = nll * weight
    ce_parts = (LossPart("matched queries", weighted[matched].sum()),
                LossPart("no-object queries", nll[~matched].sum(), eos, weighted[~matched].sum()))
    terms = (
        LossTerm("loss_ce", ce_parts, weighted.sum(), losses["loss_ce"] * weight_dict["loss_ce"],
                 gain=float(weight_dict["loss_ce"]), divisor=float(weight.sum()), normalised=losses["loss_ce"]),
        LossTerm("loss_bbox", (LossPart("matched pairs", l1.sum()),), l1.sum(),
                 losses["loss_bbox"] * weight_dict["loss_bbox"], gain=float(weight_dict["loss_bbox"]),
                 divisor=num_boxes, normalised=losses["loss_bbox"]),
        LossTerm("loss_giou", (LossPart("matched pairs", (1 - giou).sum()),), (1 - giou).sum(),
                 losses["loss_giou"] * weight_dict["loss_giou"], gain=float(weight_dict["loss_giou"]),
                 divisor=num_boxes, normalised=losses["loss_giou"]),
    )
    return LossComposition(terms, sum(t.value for t in terms), losses["total"])


def _notes(scene: Scene, recorder: Trace, losses: dict, positives: dict, queries: dict, Q: int, N: int,
           eos_coef: float, weights: dict) -> list:
    nc = scene.nc
    P = positives["gt"].numel()
    notes: list = [
        T("{P} of {Q} queries are matched, one per box ({N} boxes); the other {rest} are trained towards no-object "
          "(class {nc}) with weight eos_coef {eos:g} in loss_ce.", P=P, Q=Q, N=N, rest=Q - P, nc=nc, eos=eos_coef),
        T("The class cost is minus the probability, -softmax(logits)[label], with the softmax over all C + 1 columns "
          "(no-object included): not 1 - p and not a log (upstream's comment says 1 - p; the constant changes no "
          "matching)."),
        T("Boxes are (cx, cy, w, h) divided by the image width and height: the L1 cost and loss are in fractions of "
          "the image, so a box off by the image's width costs 1 in L1, and the image size never enters."),
        T("loss_ce is a weighted mean over all {Q} queries: Σ w·(-ln p) / Σ w with Σ w = {P} + {eos:g}·{rest} = {sw:.4g}, "
          "not divided by num_boxes; loss_bbox and loss_giou are sums over the matched pairs divided by num_boxes = "
          "{nb:g}.", Q=Q, P=P, eos=eos_coef, rest=Q - P, sw=P + eos_coef * (Q - P), nb=float(losses["num_boxes"])),
        T("Weights: the matcher's set_cost_class/bbox/giou ({wc:g}, {wb:g}, {wg:g}) and the loss's 1, bbox_loss_coef, "
          "giou_loss_coef are separate settings; DETR trains with 1, 5, 2 for both (HungarianMatcher's own defaults are "
          "1, 1, 1).", wc=weights["set_cost_class"], wb=weights["set_cost_bbox"], wg=weights["set_cost_giou"]),
        T("One decoder layer: DETR's 5 auxiliary layers (aux_loss) are each matched again and add their own loss_ce_i, "
          "loss_bbox_i and loss_giou_i to the total; there is no class_error_i."),
    ]
    objects = int(queries["is_object"].sum())
    notes.append(T("cardinality_error {card:g} = |{objects} queries whose argmax is not no-object - {N} boxes| "
                   "(logging only, not in the total; argmax takes the first maximum, so a tie with no-object counts as "
                   "an object).", card=float(losses["cardinality_error"]), objects=objects, N=N))
    drawn = [(b.cls, b.x1, b.y1, b.x2, b.y2) for b in scene.boxes]
    if len(set(drawn)) < len(drawn):
        notes.append(T("Two boxes are identical (same class and corners): swapping them between their queries costs "
                       "the same, so which query gets which is up to the solver; the costs and losses do not change."))
    if N == 0:
        notes.append(T("No boxes: class_error is 100 (upstream's accuracy() returns 0 without targets), num_boxes is "
                       "1 (clamped), loss_bbox and loss_giou are 0, and every query is trained towards no-object."))
    else:
        notes.append(T("class_error {err:.4g} % = 100 - top-1 accuracy of the matched queries, the argmax taken over "
                       "all C + 1 columns (a matched query whose no-object logit is highest counts as wrong); logging "
                       "only.", err=float(losses["class_error"])))
    not_cheapest = int((positives["rule"] == 1).sum())
    if not_cheapest:
        notes.append(T("{n} box(es) got a query that is not their cheapest: the Hungarian assignment minimises the total "
                       "cost with one query per box, so a box can lose its cheapest query to a box that needs it more.",
                       n=not_cheapest))
    if N > Q:
        notes.append(T("{N} boxes but only {Q} queries: the solver pairs {Q} of them and {rest} box(es) stay "
                       "unmatched, with no loss at all (DETR assumes more queries than objects).", N=N, Q=Q,
                       rest=N - Q))
    if scene.progress < 1:
        notes.append(T("At progress < 1 the class logits carry noise around 0, so no-object is not yet the favourite "
                       "of the idle queries; at progress 1 query q < N predicts box q exactly and every other query "
                       "predicts no-object."))
    for name, value in losses.items():
        if not bool(torch.isfinite(value)):
            notes.append(T("{name} is not finite: a predicted box has zero area where the GIoU divides by its "
                           "enclosing area.", name=name))
    return notes


def _checks(C: Tensor, cost_class: Tensor, cost_bbox: Tensor, cost_giou: Tensor, query: Tensor, gt: Tensor,
            weights: dict):
    """For each box, its cheapest queries (and its matched one): the cost filled in, matched or not."""

    def build() -> list[Check]:
        Cc, cc, cb, cg = C.cpu(), cost_class.cpu(), cost_bbox.cpu(), cost_giou.cpu()
        owner = {int(q): int(t) for q, t in zip(query.tolist(), gt.tolist())}  # query -> box
        matched_query = {t: q for q, t in owner.items()}
        out: list[Check] = []
        Q, N = Cc.shape
        wc, wb, wg = weights["set_cost_class"], weights["set_cost_bbox"], weights["set_cost_giou"]
        for t in range(N):
            order = Cc[:, t].argsort(stable=True).tolist()
            shown = order[:MAX_CHECKED_QUERIES]
            if t in matched_query and matched_query[t] not in shown:
                shown.append(matched_query[t])
            for q in shown:
                rank = order.index(q)
                values = {"cost_total": float(Cc[q, t]), "cost_class": float(cc[q, t]), "cost_bbox": float(cb[q, t]),
                          "cost_giou": float(cg[q, t]), "rank": rank, "weight_class": wc, "weight_bbox": wb,
                          "weight_giou": wg}
                filled = dict(q=q, p=-values["cost_class"], wc=wc, l1=values["cost_bbox"], wb=wb,
                              g=-values["cost_giou"], wg=wg, c=values["cost_total"], rank=rank)
                if owner.get(q) == t:
                    text = T("query {q}: C = −{wc:g}·p {p:.3g} + {wb:g}·L1 {l1:.3g} − {wg:g}·GIoU {g:.3g} = {c:.4g} "
                             "(rank {rank} for this box): matched", **filled)
                    label = T("C {c:.3g} ✓", c=values["cost_total"])
                elif q in owner:
                    text = T("query {q}: C = −{wc:g}·p {p:.3g} + {wb:g}·L1 {l1:.3g} − {wg:g}·GIoU {g:.3g} = {c:.4g} "
                             "(rank {rank} for this box): the assignment gives it to box {other} instead (lower total)",
                             other=owner[q], **filled)
                    label = T("→ #{other}", other=owner[q])
                else:
                    text = T("query {q}: C = −{wc:g}·p {p:.3g} + {wb:g}·L1 {l1:.3g} − {wg:g}·GIoU {g:.3g} = {c:.4g} "
                             "(rank {rank} for this box): not matched (no-object)", **filled)
                    label = T("C {c:.3g}", c=values["cost_total"])
                out.append(Check(t, 0, q, 0, 0, "cost", owner.get(q) == t, text, values, label))
        return out

    return build


def _stage_cells(C: Tensor, query: Tensor, gt: Tensor, correct: Tensor):
    def build() -> dict[str, list[StageCell]]:
        cells: dict[str, list[StageCell]] = {}
        Cc = C.cpu()
        for q, t, ok in zip(query.tolist(), gt.tolist(), correct.tolist()):
            cells.setdefault("match.assignment", []).append(StageCell(t, 0, q, 0, 0, T("C {c:.3g}", c=float(Cc[q, t]))))
            cells.setdefault("loss.labels", []).append(StageCell(t, 0, q, 0, 0, T("box {box}", box=t)))
            cells.setdefault("loss.boxes", []).append(StageCell(t, 0, q, 0, 0, T("box {box}", box=t)))
            cells.setdefault("loss.class_error", []).append(StageCell(t, 0, q, 0, 0, T("✓") if ok else T("✗")))
        if Cc.numel():
            for t, q in enumerate(Cc.argmin(0).tolist()):
                cells.setdefault("match.cost_total", []).append(StageCell(t, 0, q, 0, 0, T("cheapest")))
        return cells

    return build


TARGET = TargetSpec(
    tables=(TargetTable("cost", "Its cheapest queries (and the one it got)",
                        "C = −1·p(class) + 5·L1 − 2·GIoU; the Hungarian assignment gives each box one query (✓)",
                        (Col("cost_total", "C", "loss"), Col("cost_class", "−p", "loss"), Col("cost_bbox", "L1", "loss"),
                         Col("cost_giou", "−GIoU", "loss"), Col("rank", "rank", "index")), sort="rank"),),
)


SPEC = SchemeSpec(
    name="detr", title="DETR (Hungarian matching)", family="detr", strides=STRIDES, params=PARAMS,
    explain=explain_scene, upstream=UPSTREAM,
    doc="set prediction: each box gets one query by the Hungarian assignment of least total cost (−p·1 + L1·5 − "
        "GIoU·2); weighted cross-entropy with no-object, L1 and GIoU losses on the matched pairs",
    maps=(), rules=RULES, columns=COLUMNS, losses=LOSSES, focal=None, phases=PHASES, anchors_px=None,
    # pred_box stays None: the page draws every query's box from query_columns' box_px (the positives carry
    # pred_box_px too); tests/test_contract.py's busy scene pins a grid cell for any scheme with a pred_box
    level_names=("queries",), pred_box=None, target_box="target_box_px",
    inspector=InspectorSpec(groups=(("matching", "Matching"), ("cost", "Cost"), ("boxes", "Boxes"),
                                    ("class", "Class"), ("loss", "Loss shares")),
                            target_columns=("target_box_px",), loss_columns=("nll", "loss_bbox_term", "loss_giou_term")),
    kind="queries", query_columns=QUERY_COLUMNS, matrices=MATRICES, target=TARGET,
)
