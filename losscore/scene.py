"""Scenes: what a learner draws, validated, and the result every family's ``explain`` returns.

A :class:`Scene` is image size, ground-truth boxes in pixels, the number of classes, a scheme
name, its parameters, the prediction settings and a device. Each scheme (``yolov5``, ``yolov3``,
``yolov9``, ``focal``) registers a :class:`SchemeSpec` whose ``explain(scene, trace)`` runs the
family's real ``losscore`` functions on it and returns a :class:`SceneResult`. The API and the
page read only that result and its :class:`~losscore.trace.Trace`; no number is recomputed
outside ``losscore``.

Vocabulary for shapes: ``B`` images, ``L`` levels, ``A`` anchors per level, ``H W`` grid, ``N``
targets, ``P`` positives, ``C`` classes, ``R`` DFL bins.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from .trace import Trace

__all__ = [
    "Box",
    "Pin",
    "Scene",
    "ParamSpec",
    "SchemeSpec",
    "LevelInfo",
    "SceneResult",
    "SCHEMES",
    "register_scheme",
    "get_scheme",
    "resolve_device",
    "boxes_to_targets",
    "blend_logits",
    "blend_sparse",
    "blended_heads",
    "BlendedHeads",
    "MAX_BOXES",
    "MAX_NC",
    "BOX_MARGIN_FRAC",
    "MAX_IMAGE_SIDE",
    "MAX_HEAD_ELEMENTS",
]

MAX_BOXES = 256  # most boxes in one scene
MAX_NC = 1000  # most classes
MAX_IMAGE_SIDE = 2048  # pixels, each side
BOX_MARGIN_FRAC = 0.5  # a box may stick out of the image by at most half the image side
MAX_HEAD_ELEMENTS = 40_000_000  # grid cells (all levels) x 3 x (64 + nc): bounds one scene's memory


@dataclass(frozen=True)
class Box:
    """A ground-truth box in pixels, corners (x1, y1) top-left and (x2, y2) bottom-right."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Pin:
    """Force the predicted box of one positive slot (level, anchor, cell) to a box in pixels.

    The family inverts its decode to find the logits; ``SceneResult.notes`` says when the box
    cannot be reached (e.g. YOLOv5 xy outside (-0.5, 1.5) cells, wh outside (0, 4) anchors).
    """

    level: int
    anchor: int
    gi: int
    gj: int
    cx: float
    cy: float
    w: float
    h: float


@dataclass(frozen=True)
class Scene:
    scheme: str
    width: int
    height: int
    nc: int
    boxes: tuple[Box, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: float = 0.5
    pins: tuple[Pin, ...] = ()
    device: str = "auto"

    def param(self, name: str) -> Any:
        """The value of a parameter: the scene's, else the scheme's (upstream) default."""
        if name in self.params:
            return self.params[name]
        return get_scheme(self.scheme).param(name).default


@dataclass(frozen=True)
class ParamSpec:
    """A parameter of a scheme, described so the page can build its control from it."""

    name: str
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    kind: str = "float"  # float | int | bool | choice
    choices: tuple[str, ...] = ()
    doc: str = ""  # one-line meaning
    upstream: str = ""  # the upstream symbol, e.g. "hyp['anchor_t']"

    def validate(self, value: Any) -> Any:
        where = f"params.{self.name}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where}: expected one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{where}: must be finite, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            value = int(value)
        if self.min is not None and value < self.min:
            raise ValueError(f"{where}: {value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{where}: {value!r} is above the maximum {self.max}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "kind": self.kind,
            "choices": list(self.choices),
            "doc": self.doc,
            "upstream": self.upstream,
        }


@dataclass(frozen=True)
class LevelInfo:
    """One detection level: ``name`` ("P3"), ``stride`` px, ``grid`` (H, W), anchors in px."""

    name: str
    stride: int
    grid: tuple[int, int]
    anchors_px: torch.Tensor | None  # (A, 2) w, h in pixels; None for anchor-free heads


@dataclass
class SceneResult:
    """What a family's ``explain`` returns; the API serialises exactly this.

    ``positives``: columns of one table, one row per positive (P rows). Required columns:
      ``gt`` (P,) int64 box index, ``level`` (P,) int64, ``anchor`` (P,) int64 (0 for anchor-free),
      ``gi`` (P,) int64 column, ``gj`` (P,) int64 row, ``rule`` (P,) int64 index into
      ``rule_names``. Any further column is a per-positive number the code computed (offsets,
      ``r_max``, decoded box, IoU terms, objectness target, ...), shape (P,) or (P, k);
      ``column_docs`` says in one line what each is.
    ``maps``: heat-layer name -> one tensor per level, each (A, H, W) (A = 1 for anchor-free).
    ``losses``: ``total`` plus each term, and per-level entries as ``"obj.P3"``; 0-dim tensors.
    ``notes``: sentences the page shows as they are (unreachable pins, which upstream variant
      a number follows, ...).
    """

    scheme: str
    levels: list[LevelInfo]
    positives: dict[str, torch.Tensor]
    rule_names: list[str]
    maps: dict[str, list[torch.Tensor]]
    losses: dict[str, torch.Tensor]
    trace: Trace | None
    device: str
    column_docs: dict[str, str] = field(default_factory=dict)
    map_docs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: torch.Tensor | None = None  # (N, 6) the target rows the code consumed


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    title: str
    family: str  # yolov5 | yolov3 | yolov9 | mmdet
    strides: tuple[int, ...]
    params: tuple[ParamSpec, ...]
    explain: Callable[[Scene, Trace | None], SceneResult]
    upstream: str = ""  # "ultralytics/yolov5@<commit> utils/loss.py"
    doc: str = ""
    maps: tuple[tuple[str, str], ...] = ()  # (map name, one-line meaning), first is the default view
    rule_names: tuple[str, ...] = ()  # why a slot became positive; SceneResult.positives["rule"] indexes it
    anchors_px: tuple[tuple[tuple[float, float], ...], ...] | None = None  # default anchors per level

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise ValueError(f"params.{name}: unknown parameter for scheme {self.name!r}; "
                         f"known: {[p.name for p in self.params]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "family": self.family,
            "strides": list(self.strides),
            "upstream": self.upstream,
            "doc": self.doc,
            "params": [p.to_dict() for p in self.params],
            "maps": dict(self.maps),
            "rule_names": list(self.rule_names),
            "anchors_px": None if self.anchors_px is None else [[list(a) for a in lvl] for lvl in self.anchors_px],
        }


SCHEMES: dict[str, SchemeSpec] = {}


def register_scheme(spec: SchemeSpec) -> SchemeSpec:
    SCHEMES[spec.name] = spec
    return spec


_BUILTINS_LOADED = False


def _load_builtin_schemes() -> None:
    """Import every family module once; each registers its scheme on import."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for module in ("yolov5", "yolov3", "yolov9", "mmdet"):
        try:
            importlib.import_module(f"losscore.{module}")
        except ModuleNotFoundError as exc:  # a family that has not landed yet
            if exc.name != f"losscore.{module}":
                raise


def get_scheme(name: str) -> SchemeSpec:
    _load_builtin_schemes()
    if name not in SCHEMES:
        raise ValueError(f"scheme: unknown scheme {name!r}; known: {sorted(SCHEMES)}")
    return SCHEMES[name]


def all_schemes() -> dict[str, SchemeSpec]:
    _load_builtin_schemes()
    return dict(SCHEMES)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was requested but no CUDA device is available here")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {name!r}")


def validate_scene(scene: Scene) -> Scene:
    """Check a scene and return it with its parameters validated and completed with defaults.

    Raises ``ValueError`` naming the argument and the problem.
    """
    spec = get_scheme(scene.scheme)
    for side, value in (("width", scene.width), ("height", scene.height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"image.{side}: expected an integer number of pixels, got {value!r}")
        if value <= 0:
            raise ValueError(f"image.{side}: must be positive, got {value}")
        if value > MAX_IMAGE_SIDE:
            raise ValueError(f"image.{side}: {value} px is above the limit of {MAX_IMAGE_SIDE} px")
        largest = max(spec.strides)
        if value % largest:
            raise ValueError(
                f"image.{side}: {value} px is not a multiple of the largest stride {largest} "
                f"(the grids of all levels must be whole)")
    if isinstance(scene.nc, bool) or not isinstance(scene.nc, int) or not 1 <= scene.nc <= MAX_NC:
        raise ValueError(f"nc: expected an integer in [1, {MAX_NC}], got {scene.nc!r}")
    cells = sum((scene.width // stride) * (scene.height // stride) for stride in spec.strides)
    head_elements = cells * 3 * (64 + scene.nc)  # the largest head any scheme builds, per element
    if head_elements > MAX_HEAD_ELEMENTS:
        raise ValueError(
            f"nc: {scene.width}x{scene.height} px with {scene.nc} classes needs a prediction head of about "
            f"{head_elements / 1e6:.0f}M values, above the limit of {MAX_HEAD_ELEMENTS / 1e6:.0f}M; "
            f"use fewer classes or a smaller image")
    if len(scene.boxes) > MAX_BOXES:
        raise ValueError(f"boxes: {len(scene.boxes)} boxes is above the limit of {MAX_BOXES}")
    mx, my = BOX_MARGIN_FRAC * scene.width, BOX_MARGIN_FRAC * scene.height
    for i, box in enumerate(scene.boxes):
        where = f"boxes[{i}]"
        if isinstance(box.cls, bool) or not isinstance(box.cls, int) or not 0 <= box.cls < scene.nc:
            raise ValueError(f"{where}.cls: expected an integer in [0, {scene.nc - 1}], got {box.cls!r}")
        for name in ("x1", "y1", "x2", "y2"):
            v = getattr(box, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}.{name}: expected a finite number, got {v!r}")
        if box.x2 <= box.x1:
            raise ValueError(f"{where}: x2 ({box.x2}) must be greater than x1 ({box.x1})")
        if box.y2 <= box.y1:
            raise ValueError(f"{where}: y2 ({box.y2}) must be greater than y1 ({box.y1})")
        if box.x1 < -mx or box.y1 < -my or box.x2 > scene.width + mx or box.y2 > scene.height + my:
            raise ValueError(
                f"{where}: lies outside the image by more than the allowed margin "
                f"({BOX_MARGIN_FRAC:g} of the image side)")
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        if not (0 <= cx <= scene.width and 0 <= cy <= scene.height):
            raise ValueError(f"{where}: its centre ({cx:g}, {cy:g}) lies outside the image")
    params: dict[str, Any] = {}
    for name, value in scene.params.items():
        params[name] = spec.param(name).validate(value)
    for p in spec.params:
        params.setdefault(p.name, p.default)
    if isinstance(scene.seed, bool) or not isinstance(scene.seed, int) or not 0 <= scene.seed < 2**31:
        raise ValueError(f"predictions.seed: expected an integer in [0, 2^31), got {scene.seed!r}")
    if not isinstance(scene.progress, (int, float)) or not 0.0 <= scene.progress <= 1.0:
        raise ValueError(f"predictions.progress: expected a number in [0, 1], got {scene.progress!r}")
    resolve_device(scene.device)
    return Scene(
        scheme=scene.scheme, width=scene.width, height=scene.height, nc=scene.nc,
        boxes=tuple(scene.boxes), params=params, seed=scene.seed, progress=float(scene.progress),
        pins=tuple(scene.pins), device=scene.device,
    )


def explain(scene: Scene, trace: Trace | None = None) -> SceneResult:
    """Validate ``scene`` and run its scheme's real code on it."""
    scene = validate_scene(scene)
    return get_scheme(scene.scheme).explain(scene, trace)


def boxes_to_targets(scene: Scene, device: torch.device) -> torch.Tensor:
    """Target rows ``(N, 6)`` = (image 0, class, cx, cy, w, h), normalised as YOLOv5's loader does.

    ``cx`` and ``w`` are divided by the image width, ``cy`` and ``h`` by the height, in float32
    (``xyxy2xywhn``), so a centre exactly on a cell edge behaves as it does in training.
    """
    if not scene.boxes:
        return torch.zeros((0, 6), dtype=torch.float32, device=device)
    xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in scene.boxes], dtype=torch.float32)
    w, h = float(scene.width), float(scene.height)
    cls = torch.tensor([float(b.cls) for b in scene.boxes], dtype=torch.float32)
    rows = torch.stack(
        [
            torch.zeros_like(cls),
            cls,
            ((xyxy[:, 0] + xyxy[:, 2]) / 2) / w,
            ((xyxy[:, 1] + xyxy[:, 3]) / 2) / h,
            (xyxy[:, 2] - xyxy[:, 0]) / w,
            (xyxy[:, 3] - xyxy[:, 1]) / h,
        ],
        dim=1,
    )  # (N, 6)
    return rows.to(device)


class _NoiseEntry:
    """One cached draw: the generator state after it, ``(1 - progress) * noise`` and, with a
    background, its blend with it; plus a scratch copy of that blend for :func:`blended_heads`."""

    __slots__ = ("state", "scaled", "base", "scratch", "lock")

    def __init__(self, state: torch.Tensor, scaled: torch.Tensor, base: torch.Tensor | None) -> None:
        self.state, self.scaled, self.base = state, scaled, base
        self.scratch: torch.Tensor | None = None  # == base outside a blended_heads block
        self.lock = threading.Lock()  # held by the blended_heads block patching scratch


_NOISE_CACHE: "OrderedDict[tuple, _NoiseEntry]" = OrderedDict()
_NOISE_CACHE_SIZE = 12  # entries (one per level and seed/progress/background)
# Bytes the cached draws may hold (scaled noise, blend and scratch copy each): the least recently
# used go first, but the newest entry always stays. A 640x640 nc-80 YOLOv5 scene holds ~26 MB.
_NOISE_CACHE_BYTES = 768 * 2**20
_NOISE_LOCK = threading.Lock()


def _entry_bytes(entry: _NoiseEntry) -> int:
    copies = 1 if entry.base is None else 3  # scaled, plus base and its scratch copy
    return copies * entry.scaled.numel() * entry.scaled.element_size()


def _noise_entry(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, progress: float,
                 generator: torch.Generator, scale: float, background: torch.Tensor | None) -> _NoiseEntry:
    """The cached draw for the generator's state (drawn on a miss); the generator is left in the
    state after the draw either way, as if it had drawn again."""
    state = generator.get_state()
    bg_key = None if background is None else (tuple(background.shape), tuple(background.reshape(-1).tolist()))
    key = (hashlib.blake2b(state.numpy().tobytes(), digest_size=16).digest(), tuple(shape), dtype,
           str(device), float(scale), float(progress), bg_key)
    with _NOISE_LOCK:
        hit = _NOISE_CACHE.get(key)
        if hit is not None:
            _NOISE_CACHE.move_to_end(key)
    if hit is None:
        # normal tensors even when drawn under torch.inference_mode (export.run_scene): the cache
        # outlives the call, and a later caller without inference mode patches the scratch copy
        with torch.inference_mode(False):
            noise = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
            noise = noise.to(device=device, dtype=dtype)
            scaled = (1.0 - progress) * noise
            base = None if background is None else scaled + progress * background.expand(shape)
        hit = _NoiseEntry(generator.get_state(), scaled, base)
        with _NOISE_LOCK:
            _NOISE_CACHE[key] = hit
            held = sum(_entry_bytes(entry) for entry in _NOISE_CACHE.values())
            while len(_NOISE_CACHE) > 1 and (len(_NOISE_CACHE) > _NOISE_CACHE_SIZE or held > _NOISE_CACHE_BYTES):
                _, evicted = _NOISE_CACHE.popitem(last=False)
                held -= _entry_bytes(evicted)
    else:
        generator.set_state(hit.state)
    return hit


def blend_logits(
    perfect: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> torch.Tensor:
    """``(1 - progress) * random + progress * perfect``: an untrained head at 0, a perfect one at 1.

    The random part is a standard normal times ``scale``, drawn on the CPU from ``generator`` (so the
    same seed gives the same scene on every device), then moved to ``perfect``'s device. Dragging a
    box re-runs a scene with the same seed, so the scaled draw is cached, keyed by the generator's
    exact state; the result has the same bits as the plain formula. When the perfect head is a
    constant background with a few written slots, :func:`blend_sparse` is faster.
    """
    entry = _noise_entry(tuple(perfect.shape), perfect.dtype, perfect.device, progress, generator, scale, None)
    return entry.scaled + progress * perfect


def blend_sparse(
    shape: tuple[int, ...],
    background: torch.Tensor | float,
    index: torch.Tensor,
    values: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> torch.Tensor:
    """:func:`blend_logits` of a perfect head given as a background plus a few written elements.

    The perfect head is ``background`` (broadcast to ``shape``) with ``values`` written at the flat
    row-major positions ``index`` (unique). Same bits as ``blend_logits`` of that dense head, but
    only one pass over the full tensor (the copy of the cached background blend).
    """
    background = torch.as_tensor(background, dtype=values.dtype, device=values.device)
    entry = _noise_entry(tuple(shape), values.dtype, values.device, progress, generator, scale, background)
    out = entry.base.clone()
    out.view(-1)[index] = _blend_at(entry, index, values, progress)
    return out


def _blend_at(entry: _NoiseEntry, index: torch.Tensor, values: torch.Tensor, progress: float) -> torch.Tensor:
    """The blend at the written flat positions ``index``: ``(1 - progress) * noise + progress * values``."""
    return entry.scaled.reshape(-1)[index] + progress * values


class BlendedHeads:
    """The heads of a :func:`blended_heads` block, one per level, and :meth:`write` for more writes."""

    def __init__(self) -> None:
        self.heads: list[torch.Tensor] = []
        self._undo: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (flat head, index, old values)

    def __getitem__(self, level: int) -> torch.Tensor:
        return self.heads[level]

    def __len__(self) -> int:
        return len(self.heads)

    def write(self, level: int, index: torch.Tensor, values: torch.Tensor) -> None:
        """``heads[level].view(-1)[index] = values``, undone when the block exits."""
        flat = self.heads[level].view(-1)
        self._undo.append((flat, index, flat[index]))
        flat[index] = values


@contextmanager
def blended_heads(
    shapes: list[tuple[int, ...]],
    background: torch.Tensor,
    writes: list[tuple[torch.Tensor, torch.Tensor]],
    progress: float,
    generator: torch.Generator,
    scale: float = 2.0,
) -> Iterator[BlendedHeads]:
    """Per level the head :func:`blend_sparse` returns, valid only inside the ``with`` block.

    ``writes``: per level ``(index, values)`` as for :func:`blend_sparse`. Each head is the cached
    draw's scratch copy of the blended background with the writes applied in place; on exit every
    write is undone, so the scratch copy equals the blended background again for the next block.
    That saves a fresh copy of the whole head per call (6.5 MB for P3 at 640x640 and nc = 80, the
    largest single cost of a drag). Same bits as :func:`blend_sparse`. A draw whose scratch copy is
    in use by another thread gets a private copy instead. Do not keep a head (or a view of it)
    beyond the block: compute what you need from it inside.
    """
    out = BlendedHeads()
    locks: list[threading.Lock] = []
    try:
        for shape, (index, values) in zip(shapes, writes):
            background = torch.as_tensor(background, dtype=values.dtype, device=values.device)
            entry = _noise_entry(tuple(shape), values.dtype, values.device, progress, generator, scale, background)
            if entry.lock.acquire(blocking=False):
                locks.append(entry.lock)
                if entry.scratch is None:
                    with torch.inference_mode(False):  # a normal tensor, as the entry's others
                        entry.scratch = entry.base.clone()
                head = entry.scratch
            else:
                head = entry.base.clone()
            out.heads.append(head)
            out.write(len(out.heads) - 1, index, _blend_at(entry, index, values, progress))
        yield out
    finally:
        for flat, index, old in reversed(out._undo):
            flat[index] = old
        out._undo.clear()
        for lock in locks:
            lock.release()
