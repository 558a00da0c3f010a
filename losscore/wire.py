"""The wire format: tensors and numbers as JSON values (docs/api-contract.md).

* Non-finite floats are the strings ``"nan"``, ``"inf"``, ``"-inf"``.
* A heat map level ``(A, H, W)`` is ``{"shape", "dtype": "float32", "b64"}``: base64 of the
  little-endian float32 values, row-major (:func:`encode_map` / :func:`decode_map`).
* Flat tensor data is a list of numbers. With ``arrays=True`` (what the web layer asks for), float32
  data whose values are all finite stays a float32 numpy array, which orjson writes
  (``OPT_SERIALIZE_NUMPY``) in its shortest exact digits: smaller and faster than Python floats.
  With the default ``arrays=False`` everything is plain Python, so ``json.dumps`` works.
* Stage tensors carry ``min``, ``max``, ``mean`` (:func:`batch_stats`).

Nothing here imports a web framework.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

__all__ = ["plain", "plain_float", "encode_map", "decode_map", "numpy_flat", "flat_values", "compact",
           "batch_stats", "dtype_name", "HALF", "LazyFlat"]

HALF = (torch.float16, torch.bfloat16)  # converted to float32 before numpy or lists

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.uint8: "uint8",
                torch.int8: "int8", torch.bool: "bool"}  # the names of losscore.trace.encode_tensor


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def plain_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python values; tensors become nested lists, non-finite floats strings."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return plain_float(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in HALF:
            value = value.float()
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    if hasattr(value, "item"):
        return plain(value.item())
    return str(value)


def encode_map(tensor: torch.Tensor) -> dict[str, Any]:
    """One map level ``(A, H, W)`` as ``{"shape", "dtype": "float32", "b64"}`` (little-endian, row-major)."""
    array = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "b64": base64.b64encode(array.astype("<f4", copy=False).tobytes()).decode("ascii"),
    }


def decode_map(obj: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_map` (a float32 CPU tensor)."""
    raw = bytearray(base64.b64decode(obj["b64"]))
    flat = torch.frombuffer(raw, dtype=torch.float32) if raw else torch.zeros(0, dtype=torch.float32)
    return flat.reshape(obj["shape"]).clone()


def numpy_flat(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a flat numpy array (a view when it already is a CPU tensor numpy can read)."""
    if tensor.is_cpu and not tensor.requires_grad and tensor.dtype not in HALF:
        return tensor.numpy().reshape(-1)  # the common case, ~1 us cheaper than the general one
    t = tensor.detach().cpu()
    if t.dtype in HALF:
        t = t.float()
    return t.reshape(-1).numpy()


def flat_values(array: np.ndarray, finite: bool | None = None, arrays: bool = False) -> Any:
    """A flat array's values: a list (non-finite floats as strings), or with ``arrays`` the float32
    array itself when every value is finite.

    ``finite``: whether every value is finite, when the caller already knows (else it is checked).
    """
    if array.dtype.kind == "f":
        if finite is None:
            finite = bool(np.isfinite(array).all())
        if finite:
            return array if arrays and array.dtype.itemsize == 4 else array.tolist()
        return [plain_float(x) for x in array.tolist()]
    return array.tolist()


class LazyFlat(NamedTuple):
    """:func:`flat_values` of a large array, deferred: a writer that streams a document writes it
    piece by piece (``app.serialize``), so the values never exist as one list or one string.

    :meth:`values` is what :func:`flat_values` returns for the same arguments."""

    array: np.ndarray  # flat
    finite: bool
    arrays: bool

    def values(self, start: int = 0, stop: int | None = None) -> Any:
        return flat_values(self.array[start:stop], self.finite, self.arrays)


def compact(tensor: torch.Tensor, arrays: bool = False) -> Any:
    """Flat values of ``tensor`` (see :func:`flat_values`)."""
    return flat_values(numpy_flat(tensor), arrays=arrays)


_NO_STATS = {"min": None, "max": None, "mean": None}
_BATCH_STATS_MAX = 4096  # elements; larger arrays get their own reductions


def batch_stats(arrays: list[np.ndarray]) -> list[dict[str, Any]]:
    """min, max and mean of each flat array: small arrays share three vectorised reductions.

    Arrays of at most ``_BATCH_STATS_MAX`` elements are concatenated in float64 (exact for every
    recorded dtype's values up to 2**53) and reduced per segment with ``reduceat``; NaN propagates
    through min, max and the sum, and ``inf - inf`` gives a NaN mean, as per-array reductions do.
    A trace holds ~150 mostly small tensors, where per-call overhead, not arithmetic, was the cost
    (3 ms -> under 1 ms per yolov5 trace). Larger arrays are reduced one by one: copying them would
    cost more than the call overhead it saves. Call it under ``np.errstate(all="ignore")``.
    """
    out: list[dict[str, Any] | None] = [None] * len(arrays)
    small = [i for i, a in enumerate(arrays) if 0 < a.size <= _BATCH_STATS_MAX]
    for i, a in enumerate(arrays):
        if a.size == 0:
            out[i] = dict(_NO_STATS)
        elif a.size > _BATCH_STATS_MAX:
            values = [a.min(), a.max(), a.mean(dtype=np.float64)]
            out[i] = dict(zip(("min", "max", "mean"), (plain_float(float(v)) for v in values)))
    if small:
        flat = np.concatenate([arrays[i] for i in small], dtype=np.float64, casting="unsafe")
        starts = np.cumsum([0] + [arrays[i].size for i in small[:-1]])
        counts = np.fromiter((arrays[i].size for i in small), dtype=np.float64, count=len(small))
        columns = [np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts),
                   np.add.reduceat(flat, starts) / counts]
        finite = bool(all(np.isfinite(c).all() for c in columns))
        rows = zip(*(c.tolist() if finite else [plain_float(x) for x in c.tolist()] for c in columns))
        for i, (low, high, mean) in zip(small, rows):
            out[i] = {"min": low, "max": high, "mean": mean}
    return out  # type: ignore[return-value]
