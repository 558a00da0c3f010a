"""In-process cost of one explain response: ``python -m benchmarks.explain_inprocess``.

Times ``app.serialize.explain_bytes`` (validate, run the scheme, build the response, orjson) for
the load benchmark's 640x640, 20-box scene, without HTTP: the part of a request's CPU that is
LossLab's own. "default" is the API's default request (no stage list), "stages" the same with
``?stages=true`` (as the page asks when a gesture ends, which also asks for every map). The two are timed alternately, so drift on a shared machine hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from app import serialize
from app.schemas import SceneIn
from losscore.registry import get_scheme

from .api_load import scene


def measure(scheme: str, repeats: int) -> dict[str, float]:
    body = SceneIn.model_validate(scene(scheme)).to_scene()
    maps = [get_scheme(scheme).maps[0].name] if get_scheme(scheme).maps else None  # what the API sends without ?maps=
    calls = {"default": lambda: serialize.explain_bytes(body, maps, 64, False, None),
             "stages": lambda: serialize.explain_bytes(body, maps, 64, True, None)}
    for call in calls.values():  # warm caches (the seeded noise, kernels)
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain_inprocess")
    parser.add_argument("--schemes", default="yolov5,yolov9,yolov3,focal")
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("explain_bytes in process (640x640, 20 boxes, nc 80, 1 torch thread), median ms")
    print(f"  {'scheme':>8} {'default':>8} {'stages':>8}")
    for scheme in args.schemes.split(","):
        result = measure(scheme, args.repeats)
        print(f"  {scheme:>8} {result['default']:>8.1f} {result['stages']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
