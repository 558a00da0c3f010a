"""Load benchmark of the HTTP API: ``python -m benchmarks.api_load`` (``make bench-api``).

Starts ``losslab serve`` on 127.0.0.1 (a free port) with 1 and then 2 workers, and for the
interactive YOLOv5 scene (640x640, 20 boxes) and the TAL scene (yolov9, same boxes) sends
``POST /api/v1/explain`` from 1 and 32 concurrent clients (bounded request count and time).
Prints p50/p95 latency, throughput, errors and the response payload size for three requests
(``MODES``): the API's default request, the page's light request while a box is dragged, and the
page's request when the gesture ends (stages and every heat map).

Targets on a 2-core machine: p50 <= 15 ms (YOLOv5) and <= 40 ms (TAL) at 1 client,
>= 150 req/s with 2 workers at 32 clients, zero errors, payload <= 300 KB.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def scene(scheme: str, boxes: int = 20, seed: int = 0) -> dict:
    """A 640x640 scene with ``boxes`` boxes of mixed sizes (fixed seed: the same scene every run)."""
    rng = random.Random(seed)
    out = []
    for _ in range(boxes):
        w, h = rng.uniform(12, 300), rng.uniform(12, 300)
        cx, cy = rng.uniform(w / 2, 640 - w / 2), rng.uniform(h / 2, 640 - h / 2)
        out.append({"cls": rng.randrange(80), "x1": round(cx - w / 2, 1), "y1": round(cy - h / 2, 1),
                    "x2": round(cx + w / 2, 1), "y2": round(cy + h / 2, 1)})
    return {"scheme": scheme, "image": {"width": 640, "height": 640}, "nc": 80, "boxes": out, "device": "cpu"}


def largest_scene(scheme: str, boxes: int = 256, seed: int = 1) -> dict:
    """One of the largest scenes the API accepts: 768x768 with 1000 classes (a prediction head just
    under losscore.scene.MAX_HEAD_ELEMENTS) and ``boxes`` boxes."""
    rng = random.Random(seed)
    out = []
    for _ in range(boxes):
        w, h = rng.uniform(8, 256), rng.uniform(8, 256)
        cx, cy = rng.uniform(w / 2, 768 - w / 2), rng.uniform(h / 2, 768 - h / 2)
        out.append({"cls": rng.randrange(1000), "x1": round(cx - w / 2, 1), "y1": round(cy - h / 2, 1),
                    "x2": round(cx + w / 2, 1), "y2": round(cy + h / 2, 1)})
    return {"scheme": scheme, "image": {"width": 768, "height": 768}, "nc": 1000, "boxes": out, "device": "cpu"}


HEAVY_SCHEMES = ("yolov5", "yolov3", "yolov9", "focal")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``losslab serve`` in a subprocess, up once /healthz answers."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        env = {**os.environ, "LOSSLAB_TORCH_THREADS": str(self.threads)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers), "--log-level", "warning"], cwd=ROOT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"losslab serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    time.sleep(2.0 if self.workers > 1 else 0.2)  # let every worker finish its warm-up
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("losslab serve did not answer /healthz within 120 s")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and its workers so far (Linux /proc; NaN elsewhere)."""
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total, todo = 0.0, [self.process.pid]
        try:
            while todo:
                pid = todo.pop()
                with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
                children = Path(f"/proc/{pid}/task/{pid}/children")
                todo += [int(c) for c in children.read_text().split()] if children.exists() else []
        except OSError:
            return float("nan")
        return total

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


MODES = {
    # the API's default request: positives (the default columns), the scheme's first map, losses; no stages
    "default": {},
    # what the page sends once a gesture ends (static/js/api.js explain(...)): every map and the
    # stage list (tensors of up to 64 elements inline) for the table, the plots and the stepper
    "release": {"stages": "1", "maps": "all", "stage_data": "64", "columns": "all", "checks": "1"},
    # what the page sends while a box is dragged or a slider moves (explain(..., light)); stages=0
    # is the default, spelled out so that an A/B against older servers asks the same
    "drag": {"stages": "0", "stage_data": "0", "columns": "grid"},
}


async def load(url: str, body: dict, clients: int, requests: int, max_seconds: float,
               params: dict | None = None) -> dict:
    latencies: list[float] = []
    errors = 0
    payload = 0
    sent = 0
    stop_at = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for _ in range(min(clients, 4)):  # warm connections and caches
            await client.post("/api/v1/explain", json=body, params=params)

        async def one_client() -> None:
            nonlocal errors, payload, sent
            while sent < requests and time.perf_counter() < stop_at:
                sent += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/api/v1/explain", json=body, params=params)
                    ok = response.status_code == 200
                    payload = max(payload, len(response.content))
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1e3)
                errors += not ok

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "n": len(latencies),
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "payload": payload,
    }


async def load_groups(url: str, groups: list[dict], seconds: float) -> dict[str, dict]:
    """Several kinds of client at once for ``seconds``: each group is ``{"name", "clients", "body"
    (a function of the request number), "params"}``; returns per group p50/p95 ms, req/s, errors."""
    stop_at = time.perf_counter() + seconds
    total = sum(g["clients"] for g in groups)
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
    results = {g["name"]: {"lat": [], "errors": 0} for g in groups}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one_client(group: dict, index: int) -> None:
            n = index
            while time.perf_counter() < stop_at:
                n += group["clients"]
                start = time.perf_counter()
                try:
                    response = await client.post("/api/v1/explain", json=group["body"](n), params=group.get("params"))
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if time.perf_counter() <= stop_at or group.get("count_late", False):
                    results[group["name"]]["lat"].append((time.perf_counter() - start) * 1e3)
                    results[group["name"]]["errors"] += not ok

        began = time.perf_counter()
        await asyncio.gather(*(one_client(g, i) for g in groups for i in range(g["clients"])))
        elapsed = time.perf_counter() - began
    out = {}
    for name, r in results.items():
        lat = sorted(r["lat"]) or [float("nan")]
        out[name] = {"n": len(r["lat"]), "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                     "rps": len(r["lat"]) / elapsed, "errors": r["errors"]}
    return out


def mixed_load(url: str, seconds: float, light_clients: int = 28, heavy_clients: int = 4) -> None:
    """Head-of-line blocking: the 640x640 YOLOv5 scene from ``light_clients`` clients, alone and
    then with ``heavy_clients`` clients sending the largest scenes (768x768, nc 1000, 256 boxes,
    one scheme each of HEAVY_SCHEMES); and the cost of a new noise seed per request."""
    light = scene("yolov5")
    groups_light = [{"name": "light", "clients": light_clients, "body": lambda n: light}]
    heavy_bodies = [largest_scene(s) for s in HEAVY_SCHEMES]
    groups_heavy = [{"name": "heavy", "clients": heavy_clients, "body": lambda n: heavy_bodies[n % len(heavy_bodies)],
                     "count_late": True}]
    alone = asyncio.run(load_groups(url, groups_light, seconds))["light"]
    mixed = asyncio.run(load_groups(url, groups_light + groups_heavy, seconds))
    print(f"  mixed load, {light_clients} clients on the 640x640 YOLOv5 scene (default request), {seconds:.0f} s each:")
    print(f"    {'':<34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'errors':>6}")
    rows = [("light alone", alone), ("light, with heavy clients", mixed["light"]),
            (f"heavy ({heavy_clients} clients, largest scenes)", mixed["heavy"])]
    for name, r in rows:
        print(f"    {name:<34} {r['n']:>5} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['rps']:>8.1f} {r['errors']:>6}")
    print(f"    light p95 with heavy / alone: {mixed['light']['p95'] / alone['p95']:.2f}x (target <= 3x)", flush=True)


def seed_load(server: "Server", seconds: float, clients: int = 32, rounds: int = 3) -> None:
    """Throughput of the 640x640 YOLOv5 scene with one seed for every request (the noise cached)
    and with a new random seed per request (the noise drawn each time).

    A shared 2-core VM drifts by 10-30 % within a minute, so the two are measured in ``rounds``
    interleaved pairs (same/new, then new/same, ...) after a short warm-up of each, and the ratio
    printed is the median of the pairs' ratios (each pair's two halves ran seconds apart). Also
    printed: the server's own CPU time per request (its processes' user + system time over the
    requests it answered), which the client's CPU and the neighbours' load do not enter."""
    url = server.url
    base = scene("yolov5")
    kinds = {"same seed (cached noise)": lambda n: base,
             "new seed per request": lambda n: {**base, "predictions": {"seed": 1000 + n}}}
    for body in kinds.values():  # warm-up: caches, pools, the workers' first-call costs
        asyncio.run(load_groups(url, [{"name": "s", "clients": clients, "body": body}], min(seconds, 3.0)))
    rows: dict[str, list[dict]] = {name: [] for name in kinds}
    ratios, cpu_ratios = [], []
    for r in range(max(1, rounds)):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        got = {}
        for name in order:
            cpu0 = server.cpu_seconds()
            got[name] = asyncio.run(load_groups(url, [{"name": "s", "clients": clients, "body": kinds[name]}], seconds))["s"]
            got[name]["cpu_ms"] = (server.cpu_seconds() - cpu0) * 1e3 / max(1, got[name]["n"])
        for name in kinds:
            rows[name].append(got[name])
        same, new = (got[name] for name in kinds)
        ratios.append(same["rps"] / new["rps"])
        cpu_ratios.append(new["cpu_ms"] / same["cpu_ms"])
    print(f"  noise seeds, {clients} clients, 640x640 YOLOv5 default request, {len(ratios)} interleaved rounds "
          f"of {seconds:.0f} s each (medians):")
    for name, runs in rows.items():
        med = {key: statistics.median(run[key] for run in runs) for key in ("p50", "p95", "rps", "cpu_ms")}
        n, errors = sum(run["n"] for run in runs), sum(run["errors"] for run in runs)
        print(f"    {name:<34} {n:>5} {med['p50']:>8.1f} {med['p95']:>8.1f} {med['rps']:>8.1f} {errors:>6}"
              f"   server CPU {med['cpu_ms']:5.1f} ms/request")
    print(f"    cost per request, new seed / same seed: throughput {statistics.median(ratios):.2f}x, server CPU "
          f"{statistics.median(cpu_ratios):.2f}x (target <= 2x; rounds: "
          f"{', '.join(f'{x:.2f}/{y:.2f}' for x, y in zip(ratios, cpu_ratios))})", flush=True)


WRK_SCRIPT = """
local f = io.open(os.getenv("LOSSLAB_BODY_FILE"), "r"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.3f %.3f %.6f %d\\n", summary.requests, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, summary.duration / 1e6, e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def load_wrk(url: str, body: dict, clients: int, max_seconds: float, params: dict | None = None) -> dict:
    """The same measurement with wrk (C, epoll): the client costs almost no CPU, so on a 2-core
    machine the server gets both cores. Needs Debian's ``wrk`` on PATH."""
    import json
    import shutil
    import subprocess
    import tempfile
    import urllib.parse

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y --no-install-recommends wrk (or use --client httpx)")
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = os.path.join(tmp, "body.json"), os.path.join(tmp, "post.lua")
        with open(body_file, "w", encoding="utf-8") as fh:
            json.dump(body, fh)
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(WRK_SCRIPT)
        target = f"{url}/api/v1/explain" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        out = subprocess.run([wrk, "-t1", f"-c{clients}", f"-d{max(1, int(max_seconds))}s", "-s", script, target],
                             capture_output=True, text=True, env={**os.environ, "LOSSLAB_BODY_FILE": body_file},
                             check=True).stdout
    line = next(row for row in out.splitlines() if row.startswith("RESULT"))
    count, p50, p95, seconds, errors = line.split()[1:]
    payload = len(httpx.post(target, json=body, timeout=30).content)
    return {"n": int(count), "p50": float(p50), "p95": float(p95), "rps": int(count) / float(seconds),
            "errors": int(errors), "payload": payload}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_load")
    parser.add_argument("--workers", default="1,2", help="worker counts to try, e.g. 1,2")
    parser.add_argument("--clients", default="1,32", help="concurrent clients, e.g. 1,32")
    parser.add_argument("--schemes", default="yolov5,yolov9")
    parser.add_argument("--requests", type=int, default=300, help="most requests per measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="most seconds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (LOSSLAB_TORCH_THREADS)")
    parser.add_argument("--modes", default="default,drag,release",
                        help="default (the API's default request), drag (the page's request while a box moves), "
                             "release (the page's request when it stops: stages and every map)")
    parser.add_argument("--client", choices=("httpx", "wrk"), default="httpx",
                        help="load generator: a Python httpx script, or wrk (far less client CPU)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each row this many times and print the median of each column "
                             "(a shared 2-core VM drifts by 10-30%% between runs)")
    parser.add_argument("--mixed", type=float, default=15.0, metavar="SECONDS",
                        help="after the table, with 2 workers: the mixed-load (head-of-line) and noise-seed "
                             "measurements, this many seconds each (0: skip)")
    parser.add_argument("--only-mixed", action="store_true", help="skip the table, run only --mixed")
    parser.add_argument("--only-seeds", action="store_true", help="skip the table and the mixed load: only the noise-seed rounds")
    parser.add_argument("--seed-rounds", type=int, default=3, help="interleaved same-seed/new-seed rounds")
    args = parser.parse_args()
    print(f"losslab API load ({args.client}): POST /api/v1/explain, 640x640, 20 boxes, torch threads/worker {args.threads}, "
          f"{os.cpu_count()} CPUs" + (f", median of {args.repeat} runs per row (n, errors: totals)" if args.repeat > 1 else ""))
    print(f"  {'workers':>7} {'mode':>5} {'scheme':>8} {'clients':>7} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'req/s':>8} {'errors':>6} {'payload KB':>10}")
    for workers in (() if args.only_mixed or args.only_seeds else (int(w) for w in args.workers.split(","))):
        with Server(workers, args.threads) as server:
            for mode, scheme in ((m, s) for m in args.modes.split(",") for s in args.schemes.split(",")):
                body = scene(scheme)
                for clients in (int(c) for c in args.clients.split(",")):
                    runs = []
                    for _ in range(max(1, args.repeat)):
                        if args.client == "wrk":
                            runs.append(load_wrk(server.url, body, clients, args.seconds, MODES[mode]))
                        else:
                            runs.append(asyncio.run(load(server.url, body, clients, args.requests, args.seconds,
                                                         MODES[mode])))
                    stats = {key: statistics.median(run[key] for run in runs) for key in ("p50", "p95", "rps", "payload")}
                    stats["n"] = sum(run["n"] for run in runs)
                    stats["errors"] = sum(run["errors"] for run in runs)
                    print(f"  {workers:>7} {mode:>5} {scheme:>8} {clients:>7} {int(stats['n']):>5} {stats['p50']:>8.1f} "
                          f"{stats['p95']:>8.1f} {stats['rps']:>8.1f} {stats['errors']:>6} "
                          f"{stats['payload'] / 1e3:>10.1f}", flush=True)

    if args.mixed > 0:
        if not args.only_seeds:
            with Server(2, args.threads) as server:
                mixed_load(server.url, args.mixed)
        with Server(2, args.threads) as server:  # a fresh server: no heavy scene's memory or pools left over
            seed_load(server, args.mixed, rounds=args.seed_rounds)


if __name__ == "__main__":
    main()
