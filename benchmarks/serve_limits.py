"""What a client can do to a worker, measured: ``python -m benchmarks.serve_limits``.

Starts ``losslab serve --workers 2`` (the default limits of app/server.py and app/settings.py) and
prints, per scenario, the workers' resident memory above idle (``VmRSS`` sampled every 20 ms, the
largest seen) and what the clients got:

* ``export-1.2GB``: 3 clients each POST the issue's 64-byte request (focal, 768x768, nc 1000) to
  ``/api/v1/export`` and never read the answer (it was 1.18 GB; now a 413 naming the limit);
* ``export-stalled``: 6 clients POST a 67 MB export (focal 640x640, nc 80) and never read: streamed,
  at most LOSSLAB_STREAM_SLOTS per worker, cut off after LOSSLAB_TIMEOUT_SEND;
* ``largest``: one explain of each scheme's largest scene (768x768, nc 1000, 256 boxes), one after
  another: the transient cost of the computation itself, and what the worker still holds after;
* ``header``: a 100 MB request header, while another client polls /healthz (worst latency seen);
* ``idle``: thousands of connections that send nothing (file descriptors per worker, /healthz);
* ``slow body``: a body sent at 1 byte/s (seconds to the 408);
* ``orphans``: SIGKILL of the supervisor (seconds until its workers are gone, the port free).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.api_load import HEAVY_SCHEMES, free_port, largest_scene

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


class Sampler:
    """The largest RSS of each worker while the block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, {pid: 0.0 for pid in pids}, threading.Event()

    def __enter__(self) -> "Sampler":
        def run() -> None:
            while not self._stop.is_set():
                for pid in self.pids:
                    self.peak[pid] = max(self.peak[pid], rss_mb(pid))
                time.sleep(0.02)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def start(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2",
                                "--log-level", "error"], cwd=ROOT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                time.sleep(3)  # both workers warmed up
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("server did not start")


def workers(process: subprocess.Popen) -> list[int]:
    pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                           text=True).stdout.split()]
    return [p for p in pids if rss_mb(p) > 150]  # the uvicorn workers (not multiprocessing's resource tracker)


def raw_post(port: int, path: str, body: bytes, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (path.encode(), len(body)) + body)
    return sock


def first_line(sock: socket.socket, wait: float) -> str:
    sock.settimeout(wait)
    try:
        data = sock.recv(256)
    except OSError as exc:
        return type(exc).__name__
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def scenario_memory(port: int, pids: list[int], idle: dict[int, float]) -> None:
    def report(name: str, sampler: Sampler, clients: str) -> None:
        above = {pid: sampler.peak[pid] - idle[pid] for pid in pids}
        print(f"  {name:<15} peak RSS above idle per worker: "
              + ", ".join(f"{v:.0f} MB" for v in above.values()) + f"; {clients}", flush=True)

    big = json.dumps({"scheme": "focal", "image": {"width": 768, "height": 768}, "nc": 1000}).encode()
    with Sampler(pids) as sampler:
        socks = [raw_post(port, "/api/v1/export", big) for _ in range(3)]
        time.sleep(25)  # the computations run (a few seconds each), nobody reads
        answers = [first_line(s, 60) for s in socks]
        for s in socks:
            s.close()
    report("export-1.2GB", sampler, f"{len(big)}-byte requests, answers: {sorted(set(answers))}")

    mid = json.dumps({"scheme": "focal", "image": {"width": 640, "height": 640}, "nc": 80, "device": "cpu",
                      "boxes": [{"cls": 1, "x1": 40, "y1": 50, "x2": 320, "y2": 400}]}).encode()
    with Sampler(pids) as sampler:
        socks = [raw_post(port, "/api/v1/export", mid) for _ in range(6)]
        time.sleep(50)  # > LOSSLAB_TIMEOUT_SEND (30 s) after the first answers started
        answers = [first_line(s, 1) for s in socks]
        for s in socks:
            s.close()
    report("export-stalled", sampler, f"6 clients that never read a 67 MB export; first lines: "
                                      f"{sorted(set(answers))}")
    time.sleep(2)
    now = {pid: rss_mb(pid) - idle[pid] for pid in pids}
    print(f"  {'':<15} after they are cut off: " + ", ".join(f"{v:.0f} MB" for v in now.values()), flush=True)

    for scheme in HEAVY_SCHEMES:
        with Sampler(pids) as sampler:
            started = time.perf_counter()
            r = httpx.post(f"http://127.0.0.1:{port}/api/v1/explain", json=largest_scene(scheme), timeout=300)
            took = time.perf_counter() - started
        held = {pid: rss_mb(pid) - idle[pid] for pid in pids}
        report(f"largest {scheme}", sampler, f"{r.status_code} in {took:.1f} s, {len(r.content) / 1e6:.1f} MB; "
                                             "held after: " + ", ".join(f"{v:.0f} MB" for v in held.values()))


def scenario_header(port: int) -> None:
    url = f"http://127.0.0.1:{port}/healthz"
    worst, done = [0.0], threading.Event()

    def poll() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(url, timeout=120)
                worst[0] = max(worst[0], time.perf_counter() - started)
                time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.5)
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: " + b"a" * 100_000_000 + b"\r\n\r\n")
    except OSError:
        pass
    answer = first_line(sock, 10)
    took = time.perf_counter() - started
    sock.close()
    time.sleep(0.5)
    done.set()
    poller.join()
    print(f"  {'header':<15} 100 MB header: '{answer}' after {took * 1e3:.0f} ms; worst /healthz latency of "
          f"another client meanwhile {worst[0] * 1e3:.0f} ms", flush=True)


def scenario_idle(port: int, pids: list[int], count: int) -> None:
    socks, refused_at_connect = [], 0
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            refused_at_connect += 1
    time.sleep(0.5)
    most_fds = max(fds(pid) for pid in pids)
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code
    answered_503 = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            answered_503 += sock.recv(64).startswith(b"HTTP/1.1 503")
        except OSError:
            pass
    time.sleep(6)  # past timeout_keep_alive: the accepted idle ones are closed too
    closed = 0
    for sock in socks:
        try:
            closed += sock.recv(64) == b""
        except OSError:
            pass
    for sock in socks:
        sock.close()
    print(f"  {'idle':<15} {len(socks)} idle connections: {answered_503} answered 503 at once, "
          f"{closed} closed by the server within 6.5 s, most fds in one worker {most_fds}, /healthz {health}",
          flush=True)


def scenario_slow_body(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/v1/explain HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    started, answer = time.perf_counter(), ""
    sock.settimeout(1.0)
    while time.perf_counter() - started < 90:
        try:
            sock.sendall(b" ")
            data = sock.recv(256)
            answer = data.split(b"\r\n", 1)[0].decode() if data else "closed"
            break
        except socket.timeout:
            continue
        except OSError as exc:
            answer = type(exc).__name__
            break
    sock.close()
    print(f"  {'slow body':<15} 1 byte/s: '{answer}' after {time.perf_counter() - started:.1f} s", flush=True)


def scenario_orphans() -> None:
    port = free_port()
    process = start(port)
    pids = workers(process)
    os.kill(process.pid, signal.SIGKILL)
    started = time.perf_counter()
    while time.perf_counter() - started < 30 and any(rss_mb(pid) > 0 for pid in pids):
        time.sleep(0.05)
    gone = time.perf_counter() - started
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            port_state = "free"
        except OSError:
            port_state = "still taken"
    process.wait()
    print(f"  {'orphans':<15} SIGKILL of the supervisor: its {len(pids)} workers gone after {gone:.2f} s, "
          f"port {port_state}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_limits")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections to open")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    port = free_port()
    process = start(port)
    try:
        pids = workers(process)
        idle = {pid: rss_mb(pid) for pid in pids}
        print(f"losslab serve --workers 2 (default limits), {os.cpu_count()} CPUs; idle RSS per worker: "
              + ", ".join(f"{v:.0f} MB" for v in idle.values()), flush=True)
        if not args.skip_memory:
            scenario_memory(port, pids, idle)
        scenario_header(port)
        scenario_idle(port, pids, args.idle)
        scenario_slow_body(port)
    finally:
        process.terminate()
        process.wait(30)
    scenario_orphans()


if __name__ == "__main__":
    main()
