"""Run every family benchmark: ``python -m benchmarks [--only yolov5,yolov9] [--threads 1]``.

Each ``benchmarks/bench_<family>.py`` exposes ``main(threads: int, quick: bool) -> None`` that
prints median times (trace off and on) at the interactive and the training scale.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil

import torch

import benchmarks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", default="", help="comma-separated families, e.g. yolov5,yolov9")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (upstream figures: 1)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = {f for f in args.only.split(",") if f}
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    for name in names:
        family = name.removeprefix("bench_")
        if wanted and family not in wanted:
            continue
        print(f"== {family} (torch {torch.__version__}, {args.threads} thread(s))")
        importlib.import_module(f"benchmarks.{name}").main(threads=args.threads, quick=args.quick)


if __name__ == "__main__":
    main()
