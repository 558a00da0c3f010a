"""The step-by-step trace: one recorder shared by every family.

Design
------
Every public computation in ``losscore`` takes ``trace: Trace | None = None``. With ``None`` the
code path does no extra work: each recording site is guarded by ``if trace is not None:``, so no
tensor is copied and no explanation string is built. With a recorder, each stage is appended in
the order the code runs it, as a :class:`Stage`:

* ``name``: a stable dotted identifier in one pattern for every family,
  ``<phase>.<step>`` or ``<phase>.<level>.<step>`` (``"assigner.topk"``, ``"loss.P3.ciou"``; see
  :data:`losscore.scene.STAGE_NAME`). :meth:`Trace.scope` prefixes names; :meth:`Trace.level`
  puts a level right after the phase, so the same function reads the same way on every level.
* ``title``: a few words for a stepper ("Anchor-ratio filter").
* ``explain``: one line that says what the code does at this step and why, in the words of the
  seed documents ("keep target/anchor pairs with max(w/aw, aw/w, h/ah, ah/h) < anchor_t").
* ``tensors``: name -> :class:`Recorded`, each a *detached copy* taken at the moment of recording
  (later in-place writes by the algorithm cannot change what was recorded) together with its
  axes in the house vocabulary (``"N 4"``, ``"A H W"``...).
* ``code``: the upstream symbol the stage mirrors (``"utils/loss.py ComputeLoss.build_targets"``).

Recording never changes an output bit: tensors are copied with ``detach().clone()``, never
modified, and nothing the algorithm computes depends on whether a recorder is present.

Serialisation (``to_dict``) gives plain Python values (``name``, ``shape``, ``dtype``, flat
``data``; non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``), the same tensor
encoding as the shared reference vectors, so an exported trace can be decoded by
:func:`decode_tensor` and replayed.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

__all__ = ["Trace", "Stage", "Recorded", "encode_tensor", "decode_tensor"]


@dataclass(frozen=True)
class Recorded:
    """A tensor captured by the trace, with its axes named in the house vocabulary."""

    value: torch.Tensor
    dims: str = ""  # e.g. "N 4"; empty when the axes need no name


@dataclass
class Stage:
    """One step of an algorithm, as recorded."""

    name: str
    title: Any  # str, or a losscore.text.Text rendered in the reader's language
    explain: Any
    tensors: dict[str, Recorded] = field(default_factory=dict)
    code: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # plain scalars/strings (hyp values, flags)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": str(self.title),
            "explain": str(self.explain),
            "code": self.code,
            "values": {k: _plain(v) for k, v in self.values.items()},
            "tensors": [
                {"name": key, "dims": rec.dims, **encode_tensor(rec.value)}
                for key, rec in self.tensors.items()
            ],
        }


class Trace:
    """An ordered list of :class:`Stage` records.

    Usage inside an algorithm::

        if trace is not None:
            trace.record("build_targets.anchor_filter", "Anchor-ratio filter",
                         "keep pairs whose shape ratio r_max < anchor_t",
                         code="ComputeLoss.build_targets",
                         tensors={"r_max": (r_max, "A N"), "keep": (keep, "A N")},
                         values={"anchor_t": anchor_t})
    """

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self._prefix: list[str] = []
        self._level: str | None = None

    # -- recording -------------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator["Trace"]:
        """Prefix the names of the stages recorded inside the block with ``name.``."""
        self._prefix.append(name)
        try:
            yield self
        finally:
            self._prefix.pop()

    @contextmanager
    def level(self, name: str) -> Iterator["Trace"]:
        """Insert ``name`` (e.g. ``"P3"``) after the phase of every stage recorded inside the block:
        ``record("build_targets.wh_iou")`` becomes ``"build_targets.P3.wh_iou"``."""
        outer, self._level = self._level, name
        try:
            yield self
        finally:
            self._level = outer

    def record(
        self,
        name: str,
        title: str,
        explain: str,
        *,
        tensors: Mapping[str, torch.Tensor | tuple[torch.Tensor, str]] | None = None,
        values: Mapping[str, Any] | None = None,
        code: str = "",
    ) -> Stage:
        full = ".".join([*self._prefix, name])
        if self._level is not None:
            phase, _, rest = full.partition(".")
            full = f"{phase}.{self._level}.{rest}"
        captured: dict[str, Recorded] = {}
        for key, item in (tensors or {}).items():
            tensor, dims = item if isinstance(item, tuple) else (item, "")
            if not isinstance(tensor, torch.Tensor):
                tensor = torch.as_tensor(tensor)
            # a snapshot: later in-place updates of the tensor (or its graph) do not reach it
            captured[key] = Recorded((tensor.detach() if tensor.requires_grad else tensor).clone(), dims)
        stage = Stage(full, title, explain, captured, code, dict(values or {}))
        self.stages.append(stage)
        return stage

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def get(self, name: str) -> Stage:
        """The last stage called ``name`` (raises ``KeyError`` when there is none)."""
        for stage in reversed(self.stages):
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {self.names()}")

    def find(self, suffix: str) -> list[Stage]:
        """Every stage whose name ends with ``suffix`` (e.g. ``"ciou"`` across levels)."""
        return [s for s in self.stages if s.name == suffix or s.name.endswith("." + suffix)]

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.stages]


# -- tensor encoding (the vectors' JSON form) -----------------------------------------------
_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.bool: "bool",
}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


def _plain_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return encode_tensor(v)
    if isinstance(v, float):
        return _plain_float(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}`` with flat row-major data (non-finite floats as strings)."""
    t = t.detach().cpu()
    dtype = _DTYPE_NAMES.get(t.dtype, str(t.dtype).replace("torch.", ""))
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    flat = t.reshape(-1).tolist()
    if t.is_floating_point():
        flat = [_plain_float(x) for x in flat]
    return {"dtype": dtype, "shape": list(t.shape), "data": flat}


def decode_tensor(obj: Any, device: torch.device | str | None = None) -> Any:
    """Inverse of :func:`encode_tensor`; also reads the vectors' ``int8_scaled`` form.

    Anything that is not an encoded tensor (numbers, ``None``, lists, tensors) is returned as is.
    """
    if isinstance(obj, torch.Tensor):
        return obj if device is None else obj.to(device)
    if not isinstance(obj, dict) or "dtype" not in obj or "shape" not in obj:
        return obj
    if obj.get("encoding") == "int8_scaled":
        import base64

        codes = torch.frombuffer(bytearray(base64.b64decode(obj["data_b64"])), dtype=torch.int8)
        out = (codes.to(torch.float32) * float(obj["scale"])).reshape(obj["shape"])
        return out if device is None else out.to(device)
    dtype = _DTYPES[obj["dtype"]]
    data = [float(v) if isinstance(v, str) else v for v in obj["data"]]
    out = torch.tensor(data, dtype=dtype).reshape(obj["shape"])
    return out if device is None else out.to(device)
