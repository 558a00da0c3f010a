"""Serving: ``losslab serve`` runs uvicorn with its own hardening options, plus what it lacks.

uvicorn's options, set by :func:`uvicorn_options` (all from :class:`~app.settings.Settings`):

* ``timeout_keep_alive``: an idle keep-alive connection is closed after this many seconds;
* ``limit_concurrency``: past ``max_connections`` requests in flight a request gets uvicorn's ``503``;
* ``backlog``, ``timeout_graceful_shutdown`` (``SIGTERM``: stop accepting, finish what is in
  flight for at most this long, run the lifespan's shutdown), ``server_header`` off.

What uvicorn has no option for is in :class:`LossLabHttpProtocol`, a subclass of its httptools
protocol (``uvicorn.Config(http=...)`` is uvicorn's own extension point; the parsing, flow control
and ASGI cycle stay uvicorn's):

* **headers bounded**: at most ``max_header_bytes`` of request line and headers and at most
  ``max_header_count`` header fields, else ``431`` and the connection is closed. The parser is fed
  no more than the limit, so a huge header costs nothing (httptools joins a header's pieces one by
  one, quadratic in its size; uvicorn's only header limit is for its slower h11 parser);
* **a fresh connection must start a request** within ``timeout_keep_alive`` (uvicorn arms that
  timer only after a first response), else it is closed;
* **a request must arrive whole** (line, headers and body) within ``timeout_request`` seconds of
  its first byte, else ``408`` and the connection is closed (a body sent at 1 byte/s);
* **a response must keep moving**: when the client stops reading and the socket's write buffer
  stays above its high-water mark for ``timeout_send`` seconds, the connection is aborted; and the
  bytes waiting on clients that do not read are at most ``max_pending_bytes`` per worker (past
  that the longest-waiting connection is aborted), so clients that never read cannot pin
  responses in memory;
* **connections capped**: past ``max_connections`` a new connection takes the place of the
  longest-idle one (closed), and when none is idle it gets an immediate ``503`` and is closed, so
  idle sockets can neither exhaust the worker's file descriptors nor lock real clients out.

With ``--workers`` > 1 the workers exit when their supervisor dies (:func:`watch_parent`), so a
killed supervisor leaves no orphans holding the port.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings, get_settings

log = logging.getLogger("losslab")

SUPERVISOR_ENV = "LOSSLAB_SUPERVISOR_PID"  # set by `losslab serve` for the workers it starts

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _raw_response(status: int, detail: str) -> bytes:
    """A complete ``Connection: close`` JSON response, written straight to the socket."""
    body = orjson.dumps({"detail": detail})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\nx-content-type-options: nosniff\r\n\r\n" % (status, _REASONS[status], len(body))
            + body)


class _TooLarge(Exception):
    """Raised from a parser callback: the request's head is over a limit (answered 431)."""


class LossLabHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded headers, request and send deadlines and a
    connection cap (see the module docstring). The limits come from :func:`get_settings`."""

    _last_refusal_log = float("-inf")
    _paused: "dict[LossLabHttpProtocol, None]" = {}  # connections whose client is not reading (this worker)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.max_header_count = settings.max_header_count
        self.max_connections = settings.max_connections
        self.timeout_request = settings.timeout_request
        self.timeout_send = settings.timeout_send
        self.max_pending_bytes = settings.max_pending_bytes
        self._head_bytes = 0  # bytes of the current request's line and headers seen so far
        self._in_head = True  # between a request's first byte and the end of its headers
        self._header_count = 0
        self._too_large: str | None = None
        self._request_open = False  # a request has begun and not yet fully arrived
        self._request_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # -- connections ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        if len(self.connections) > self.max_connections and not self._close_an_idle_connection():
            now = self.loop.time()
            if now - LossLabHttpProtocol._last_refusal_log > 1.0:  # a flood logs once a second, not per socket
                LossLabHttpProtocol._last_refusal_log = now
                self.logger.warning("connection refused: %d connections open (limit %d)",
                                    len(self.connections), self.max_connections)
            transport.write(_raw_response(503, f"the server has {self.max_connections} connections open, its "
                                               "limit (LOSSLAB_MAX_CONNECTIONS); retry shortly"))
            transport.close()
            return
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends
        # a byte would stay open for ever. The same timer closes it.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _idle(self) -> bool:
        """Open, and neither receiving a request nor answering one."""
        return (not self._request_open and (self.cycle is None or self.cycle.response_complete)
                and self.transport is not None and not self.transport.is_closing())

    def _close_an_idle_connection(self) -> bool:
        """At the cap, a new connection takes the place of the longest-idle one (a flood of idle
        sockets cannot lock real clients out); only when every connection is busy is it refused."""
        idle = [p for p in self.connections if p is not self and isinstance(p, LossLabHttpProtocol) and p._idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p._idle_since)
        oldest._unset_keepalive_if_required()
        oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        self._cancel_send_timer()
        LossLabHttpProtocol._paused.pop(self, None)
        super().connection_lost(exc)

    # -- requests -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if not self._request_open:
            self._request_open = True
            self._request_timer = self.loop.call_later(self.timeout_request, self._request_timed_out)
        if self._in_head and self._head_bytes + len(data) > self.max_header_bytes:
            allowed = max(self.max_header_bytes - self._head_bytes, 0)
            head, rest = data[:allowed], data[allowed:]
            self._head_bytes += len(head)
            if head:
                super().data_received(head)
            if self._in_head and not self.transport.is_closing():  # still no end of headers: too large
                self._reject_head(f"the request line and headers are larger than {self.max_header_bytes} bytes")
                return
            data = rest
            if not data or self.transport.is_closing():
                return
        elif self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_count = True, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_header_count:
            self._too_large = f"more than {self.max_header_count} header fields"
            raise _TooLarge(self._too_large)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # the whole request is here: its deadline is met; the next request starts a new head
        self._cancel_request_timer()
        self._request_open = False
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        if self._too_large is not None:  # a parser callback refused the head (see on_header)
            self._reject_head(self._too_large)
            return
        super().send_400_response(msg)

    def _reject_head(self, why: str) -> None:
        self.logger.warning("request refused: %s", why)
        self.transport.write(_raw_response(431, f"{why}; the limits are LOSSLAB_MAX_HEADER_BYTES="
                                                f"{self.max_header_bytes} and LOSSLAB_MAX_HEADER_COUNT="
                                                f"{self.max_header_count}"))
        self.transport.close()

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        self.logger.warning("request timed out: not received whole within %s s", self.timeout_request)
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:  # cannot answer any more: just close
                self.transport.abort()
                return
            self.cycle.disconnected = True  # the app (waiting for the body) sees http.disconnect
            self.cycle.message_event.set()
        self.transport.write(_raw_response(408, f"the request did not arrive whole within {self.timeout_request} "
                                                "seconds (LOSSLAB_TIMEOUT_REQUEST)"))
        self.transport.close()

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    # -- responses ------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._cancel_send_timer()
        self._send_timer = self.loop.call_later(self.timeout_send, self._send_timed_out)
        paused = LossLabHttpProtocol._paused
        paused[self] = None  # insertion order: the longest-paused first
        # responses waiting on clients that do not read: at most max_pending_bytes per worker
        pending = sum(p.transport.get_write_buffer_size() for p in paused)
        while pending > self.max_pending_bytes and paused:
            oldest = next(iter(paused))
            pending -= oldest.transport.get_write_buffer_size()
            self.logger.warning("response aborted: %d bytes wait on clients that do not read (limit %d)",
                                pending, self.max_pending_bytes)
            paused.pop(oldest, None)
            oldest._cancel_send_timer()
            oldest.transport.abort()

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        LossLabHttpProtocol._paused.pop(self, None)
        super().resume_writing()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.logger.warning("response aborted: the client read nothing for %s s", self.timeout_send)
            self.transport.abort()  # close() would wait for the buffer to drain, for ever

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None


# -- the supervisor's workers ----------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def watch_parent(interval: float = 0.5) -> None:
    """In a worker started by ``losslab serve --workers N``: exit (gracefully, by ``SIGTERM`` to
    itself, which uvicorn handles) as soon as the supervisor is gone.

    Linux's ``PR_SET_PDEATHSIG`` delivers the signal at once; a thread polling the parent's pid
    covers other systems and the moment between the worker's start and the ``prctl`` call.
    """
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or int(supervisor) == os.getpid():
        return  # not a worker of a supervisor (a single-process server, a test)
    supervisor_pid = int(supervisor)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass

    def poll() -> None:
        while os.getppid() == supervisor_pid:
            threading.Event().wait(interval)
        log.warning("the supervisor (pid %d) is gone: worker %d shuts down", supervisor_pid, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="losslab-parent-watch", daemon=True).start()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's own hardening options as ``losslab serve`` applies them."""
    return {
        "http": LossLabHttpProtocol,
        "timeout_keep_alive": settings.timeout_keep_alive,
        # uvicorn counts this connection too; ours (connection_made) is the cap on connections
        "limit_concurrency": settings.max_connections + 1,
        "backlog": settings.backlog,
        "timeout_graceful_shutdown": settings.timeout_graceful_shutdown,
        "server_header": False,
        "proxy_headers": False,
    }


def serve(host: str, port: int, workers: int, log_level: str = "info") -> None:
    """Run the app under uvicorn with :func:`uvicorn_options` (``losslab serve``)."""
    import uvicorn

    # Workers are separate processes that build their own app (and settings) from the environment.
    os.environ["LOSSLAB_HOST"], os.environ["LOSSLAB_PORT"] = host, str(port)
    os.environ["LOSSLAB_WORKERS"] = str(workers)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    get_settings.cache_clear()
    settings = get_settings()
    package = __name__.rpartition(".")[0]  # "app" in a checkout, "losslab_web" when installed
    uvicorn.run(f"{package}.main:app", host=host, port=port, workers=workers, log_level=log_level,
                **uvicorn_options(settings))


__all__ = ["LossLabHttpProtocol", "watch_parent", "uvicorn_options", "serve", "SUPERVISOR_ENV"]
del httptools  # imported only to fail early, with a clear ImportError, where uvicorn[standard] is missing
