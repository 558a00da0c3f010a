"""Serving safely: what no client may do to the server, each issue reproducer as a test.

In process (TestClient): upstream failures and huge numbers are 422s, a wrong content type says
so, a 500 has the security headers, HEAD works wherever GET does, large responses are streamed
(the same bytes) or refused with a 413 that names the limit.

Against a real ``losslab serve --workers 2`` (app/server.py): bounded headers (431), a connection
that sends nothing is closed, a body sent byte by byte times out (408), connections past the cap
get an immediate 503, a client that never reads its response is cut off, and the workers exit
when their supervisor is killed. Waits are bounded deadlines, never timing assertions.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from losscore.registry import all_schemes, get_scheme

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"scheme": "yolov5", "image": {"width": 64, "height": 64}, "nc": 2, "device": "cpu",
         "boxes": [{"cls": 1, "x1": 10, "y1": 12, "x2": 40, "y2": 50}]}
FOCAL = {"scheme": "focal", "image": {"width": 320, "height": 320}, "nc": 80, "device": "cpu",
         "boxes": [{"cls": 3, "x1": 40, "y1": 50, "x2": 200, "y2": 260}]}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(warmup=False))) as test_client:
        yield test_client


# -- section 2 reproducers: no 500 for anything a client can send --------------------------------
def test_yolov5_autobalance_division_by_zero_is_a_422_that_says_upstream_fails(client):
    """32x32, nc 1, no boxes, fl_gamma 1, fl_alpha 1, autobalance: a level without positives has an
    objectness loss of exactly 0 and upstream's `0.0001 / obji` raises ZeroDivisionError."""
    from losscore.yolov5 import ComputeLoss

    params = {"fl_gamma": 1.0, "fl_alpha": 1.0, "autobalance": True}
    loss_fn = ComputeLoss(nc=1, anchors_px=[[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                                            [116, 90, 156, 198, 373, 326]], strides=[8, 16, 32],
                          hyp={"fl_gamma": 1.0, "fl_alpha": 1.0}, autobalance=True)
    heads = [torch.randn(1, 3, 32 // s, 32 // s, 6, generator=torch.Generator().manual_seed(0)) for s in (8, 16, 32)]
    with pytest.raises(ZeroDivisionError):  # the library keeps upstream's behaviour
        loss_fn(heads, torch.zeros(0, 6))
    r = client.post("/api/v1/explain", json={**SMALL, "image": {"width": 32, "height": 32}, "nc": 1, "boxes": [],
                                             "params": params})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"][:3] == ["body", "params", "autobalance"]
    assert "upstream" in detail["msg"] and "ZeroDivisionError" in detail["msg"]


@pytest.mark.parametrize("scheme", sorted(all_schemes()))
def test_an_integer_literal_beyond_the_float_range_is_a_422_naming_the_parameter(client, scheme):
    """`anchor_t` written as a 1 followed by 309 zeros: float() overflows (was a 500)."""
    param = next((p.name for p in get_scheme(scheme).params if p.kind in ("float", "int")), None)
    if param is None:
        pytest.skip(f"{scheme} has no numeric parameter")
    body = json.dumps({**SMALL, "scheme": scheme, "image": {"width": 128, "height": 128},
                       "params": {param: 0}}).replace(f'"{param}": 0', f'"{param}": 1{"0" * 309}')
    with pytest.raises(OverflowError):
        float(10 ** 309)
    r = client.post("/api/v1/explain", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "params", param] and "too large" in detail["msg"]
    assert len(r.content) < 1000


def test_unknown_columns_are_a_422_not_an_empty_table(client):
    r = client.post("/api/v1/explain", params={"columns": "gt,nonsense"}, json=SMALL)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "columns"]


def test_a_422_echoes_only_a_short_excerpt_of_a_huge_input(client):
    """A 900 KB unknown parameter name was echoed twice in the 422."""
    r = client.post("/api/v1/explain", json={**SMALL, "params": {"x" * 900_000: 1}})
    assert r.status_code == 422
    assert len(r.content) < 2000 and r.json()["detail"][0]["loc"][:2] == ["body", "params"]
    detail = r.json()["detail"][0]  # the location said once: an excerpt of the name in loc, not again in msg
    assert detail["loc"][2].endswith("…") and len(detail["loc"][2]) < 100 and "xxxx" not in detail["msg"]
    assert "900002 characters" in detail["msg"]
    r = client.post("/api/v1/explain", json={**SMALL, "scheme": "y" * 900_000})
    assert r.status_code == 422 and len(r.content) < 2000


def test_a_wrong_content_type_says_so(client):
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.post("/api/v1/explain", content=json.dumps(SMALL), headers=headers)
        assert r.status_code == 415, (headers, r.text)
        assert "application/json" in r.json()["detail"]
        r = client.post("/api/v1/explain", content=json.dumps(SMALL), headers={**headers, "accept-language": "zh-CN"})
        assert r.status_code == 415 and "请求体请以 JSON 发送" in r.json()["detail"], r.text  # in the reader's language
    assert client.post("/api/v1/explain", content=json.dumps(SMALL),
                       headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_a_500_has_the_security_headers_of_every_response(monkeypatch):
    import app.serialize as serialize

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serialize, "prepare_explain", boom)
    with TestClient(create_app(Settings(warmup=False)), raise_server_exceptions=False) as c:
        ok = c.get("/healthz")
        r = c.post("/api/v1/explain", json=SMALL)
    assert r.status_code == 500 and "secret" not in r.text
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options"):
        assert r.headers.get(name) == ok.headers.get(name) and r.headers.get(name), name


def test_head_works_wherever_get_does(client):
    app = client.app
    paths = sorted({route.path for route in app.routes if "GET" in getattr(route, "methods", set())
                    and "{" not in route.path})
    paths += ["/static/js/main.js", "/vendor/swagger-ui/swagger-ui.css"]
    for path in paths:
        get, head = client.get(path), client.head(path)
        assert get.status_code == 200, path
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path


# -- section 3: bounded responses -----------------------------------------------------------------
def test_a_response_above_the_limit_is_a_413_naming_it_and_the_cli():
    with TestClient(create_app(Settings(warmup=False, max_response_bytes=2**20))) as c:
        r = c.post("/api/v1/export", json=FOCAL)
        assert r.status_code == 413, r.status_code
        detail = r.json()["detail"]
        assert "LOSSLAB_MAX_RESPONSE_BYTES" in detail and "losslab explain" in detail
        assert f"above the limit of {2**20} bytes" in detail
        zh = c.post("/api/v1/export?lang=zh", json=FOCAL).json()["detail"]
        assert f"超过了 {2**20} 字节的上限" in zh and "losslab explain" in zh  # numbers and commands stay
        r = c.post("/api/v1/explain", params={"stages": "true", "stage_data": "10000000"}, json=FOCAL)
        assert r.status_code == 413 and "losslab explain" in r.json()["detail"]
        assert c.post("/api/v1/explain", json=FOCAL).status_code == 200  # the default answer is small


def test_a_streamed_response_is_the_same_document():
    """Above LOSSLAB_STREAM_BYTES a response is written as it is encoded: the same bytes, chunked."""
    bodies = {}
    for name, stream_bytes in (("inline", 2**30), ("streamed", 0)):
        with TestClient(create_app(Settings(warmup=False, stream_bytes=stream_bytes))) as c:
            export = c.post("/api/v1/export", json={**FOCAL, "predictions": {"progress": 1.0}})
            explain = c.post("/api/v1/explain", params={"stages": "true", "stage_data": "100000", "maps": "all"},
                             json=FOCAL)
            assert export.status_code == 200 and explain.status_code == 200
            assert export.headers["content-disposition"].startswith("attachment")
            bodies[name] = (json.loads(export.content), json.loads(explain.content),
                            "content-length" in export.headers)
    assert not bodies["streamed"][2] and bodies["inline"][2]  # streamed: no length known up front
    for index in (0, 1):
        inline, streamed = bodies["inline"][index], bodies["streamed"][index]
        (inline.get("result") or inline).pop("compute_ms"), (streamed.get("result") or streamed).pop("compute_ms")
        assert inline == streamed


def test_every_stream_slot_busy_is_a_503_and_slots_come_back():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from app.compute import Lanes

    async def scenario() -> list[bool]:
        lanes = Lanes(Settings(warmup=False, stream_slots=1, stream_wait=0))
        got = [await lanes.acquire_stream(), await lanes.acquire_stream()]
        lanes.release_stream()
        got.append(await lanes.acquire_stream())
        lanes.close()
        return got

    # its own thread: the browser tests' Playwright keeps an event loop running on the main thread
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, scenario()).result() == [True, False, True]


def test_heavy_scenes_and_exports_run_in_the_heavy_lane():
    from app.compute import Lanes, head_elements
    from losscore.scene import Scene

    lanes = Lanes(Settings(warmup=False))
    small = Scene("yolov5", 640, 640, 80, ())
    large = Scene("yolov5", 768, 768, 1000, ())
    assert head_elements(small) == (80 * 80 + 40 * 40 + 20 * 20) * 3 * (64 + 80)
    assert not lanes.is_heavy(small) and lanes.is_heavy(large)
    lanes.close()


# -- a real server ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(env_extra: dict[str, str], workers: int = 2) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "LOSSLAB_WARMUP": "0", **env_extra}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
                                str(workers), "--log-level", "warning"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "losslab serve exited"
        status, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", wait=2)
        if status == 200:
            return process, port
        time.sleep(0.3)
    process.kill()
    raise AssertionError("losslab serve did not answer /healthz within 120 s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _exchange(port: int, data: bytes, wait: float = 20.0) -> tuple[int | None, bytes]:
    """Send ``data`` (as much as the server takes) and read until it closes or ``wait`` passes."""
    out = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
            try:
                if data:
                    sock.sendall(data)
            except OSError:  # the server closed mid-send (it refused the request early)
                pass
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and b"connection: close" not in out.lower() and data:
                    break
    except OSError:
        pass
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else None
    return status, out


@pytest.fixture(scope="module")
def server():
    process, port = _start({"LOSSLAB_TIMEOUT_REQUEST": "2", "LOSSLAB_TIMEOUT_SEND": "2",
                            "LOSSLAB_MAX_CONNECTIONS": "24", "LOSSLAB_TIMEOUT_KEEP_ALIVE": "2"})
    yield port
    _stop(process)


def test_headers_are_bounded_in_size_and_count(server):
    status, out = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 50_000_000 + b"\r\n\r\n")
    assert status == 431 and b"LOSSLAB_MAX_HEADER_BYTES" in out
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    status, out = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    assert status == 431 and b"header fields" in out
    status, _ = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status == 200  # and the worker still serves


def test_a_connection_that_sends_nothing_is_closed(server):
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        assert sock.recv(100) == b""  # closed by the server (timeout_keep_alive), not our 30 s timeout


def test_a_body_sent_byte_by_byte_times_out_with_408(server):
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/explain HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        answer = b""
        for _ in range(60):  # one byte a second for at most a minute
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(1.0)
            try:
                answer += sock.recv(1000)
            except socket.timeout:
                continue
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_idle_connections_past_the_cap_make_room_and_busy_ones_get_a_503(server):
    """Cap 24 per worker, 2 workers: 60 idle sockets cannot lock /healthz out (the longest-idle make
    room); 60 sockets each in the middle of a request leave no room, so the rest get a 503 at once."""
    idle = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(60)]
    try:
        status, _ = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert status == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(200) in (b"",) or False
            except (socket.timeout, ConnectionResetError):
                pass
        assert closed >= 60 - 2 * 24
    finally:
        for sock in idle:
            sock.close()
    busy = []
    try:
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", server), timeout=10)
            sock.sendall(b"POST /api/v1/explain HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            busy.append(sock)
        refused = 0
        for sock in busy:
            sock.settimeout(0.5)
            try:
                refused += sock.recv(200).startswith(b"HTTP/1.1 503")
            except socket.timeout:
                pass
        assert refused >= 60 - 2 * 24
    finally:
        for sock in busy:
            sock.close()


def test_a_client_that_never_reads_its_response_is_cut_off(server):
    body = json.dumps(FOCAL).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server))
    sock.sendall(b"POST /api/v1/export HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    received, deadline = 0, time.monotonic() + 60
    try:
        time.sleep(8)  # read nothing while the server's send deadline (2 s) passes
        sock.settimeout(5)
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    except OSError:  # reset by the server: cut off too
        pass
    finally:
        sock.close()
    assert received < 8_000_000, received  # the whole export of FOCAL is about 17 MB
    status, _ = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status == 200


def test_workers_exit_when_the_supervisor_is_killed():
    process, port = _start({})
    try:
        children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                          text=True).stdout.split()]
        assert children
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], "orphaned workers still running"
        with socket.socket() as sock:  # the port is free for a new server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
    finally:
        _stop(process)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
