"""Errors as HTTP responses, and the middlewares that keep every response well formed.

* ``losscore`` raises ``ValueError("boxes[0].cls: ...")``; :func:`scene_error` turns the field
  path at the front of the message into FastAPI's ``loc`` (``["body", "boxes", 0, "cls"]``) and the
  rest into ``msg`` (the location is said once), and :class:`SceneError` becomes a 422 in FastAPI's
  shape.
* Request validation errors are answered with only ``loc``, ``msg`` and ``type`` (the echoed input
  may hold NaN, which JSON cannot carry).
* :class:`BodyLimitMiddleware` answers 413 to bodies over the limit, :class:`SecurityHeadersMiddleware`
  adds CSP, nosniff and Referrer-Policy (outermost, so every response has them, a 500 too),
  :class:`CatchAllMiddleware` turns any unexpected exception into a JSON 500 without traceback (the
  traceback goes to the server log only), :class:`HeadMiddleware` answers ``HEAD`` wherever ``GET``
  works.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from losscore.text import LANGUAGES, T, Text, error_message, render

log = logging.getLogger("losslab")

SCENE_FIELDS = {"scheme", "image", "nc", "boxes", "params", "predictions", "device", "levels"}
_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*):\s*(.*)$", re.S)
_CUT_PATH = re.compile(r"^([A-Za-z_]\w*)\.(.{0,80}?)… \((\d+) characters\):\s*(.*)$", re.S)
_SEGMENT = re.compile(r"\[(\d+)\]|\.?([A-Za-z_]\w*)")


class SceneError(Exception):
    """A scene that losscore rejected; ``loc`` is FastAPI's location of the field. ``source``: the
    losscore exception it came from, rendered again in the request's language when answered."""

    def __init__(self, message: str, loc: list[str | int], source: BaseException | None = None, prefix: str = "body"):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.source = source
        self.prefix = prefix

    def message_in(self, lang: str) -> str:
        """The message in ``lang`` (the location stays the English field path)."""
        part = self.message
        if self.source is not None and lang != "en":
            part = _split(error_message(self.source, lang), self.prefix)[1]
        return render(part, lang) if isinstance(part, Text) else str(part)


def request_lang(request: Request) -> str:
    """The reader's language: ``?lang=`` when given, else the first of Accept-Language we speak, else en."""
    lang = request.query_params.get("lang")
    if lang in LANGUAGES:
        return lang
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


def scene_error_loc(message: str, prefix: str = "body") -> list[str | int]:
    """``"boxes[0].cls: ..."`` -> ``["body", "boxes", 0, "cls"]``; unknown paths -> ``["body"]``."""
    return _split(message, prefix)[0]


def _split(message: str, prefix: str) -> tuple[list[str | int], str]:
    cut = _CUT_PATH.match(message)
    if cut and cut.group(1) in SCENE_FIELDS:  # "params.xxxx… (900002 characters): ..." -> the excerpt in loc
        head, name, length, rest = cut.groups()
        return [prefix, head, name + "…"], T("{rest} (the name has {length} characters)", rest=rest, length=int(length))
    match = _PATH.match(message)
    if not match:
        head = re.match(r"^([A-Za-z_]\w*)[.\[]", message)  # "params.<a cut-off name>…: ..."
        return ([prefix, head.group(1)] if head and head.group(1) in SCENE_FIELDS else [prefix]), message
    path, rest = match.groups()
    loc: list[str | int] = [prefix]
    for index, name in _SEGMENT.findall(path):
        loc.append(int(index) if index else name)
    if len(loc) < 2 or loc[1] not in SCENE_FIELDS:
        return [prefix], message
    return loc, rest


def scene_error(exc: ValueError, prefix: str = "body") -> "SceneError":
    """A losscore ``ValueError`` as a :class:`SceneError`: ``loc`` from the path at the front of its
    message, ``msg`` the rest (so a client that prints "loc: msg" says the location once)."""
    loc, rest = _split(str(exc), prefix)
    return SceneError(rest, loc, exc, prefix)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status_code,
                    media_type="application/json", headers=headers)


def _plain_loc(loc: Any) -> list[str | int]:
    return [part if isinstance(part, (int, str)) else str(part) for part in (loc or [])]


async def _validation_handler(request: Request, exc: RequestValidationError) -> Response:
    detail = [{"loc": _plain_loc(e.get("loc")), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return json_response({"detail": detail}, 422)


async def _scene_handler(request: Request, exc: SceneError) -> Response:
    return json_response({"detail": [{"loc": exc.loc, "msg": exc.message_in(request_lang(request)),
                                      "type": "value_error"}]}, 422)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail
    if isinstance(detail, Text):  # the web layer's own message, in the reader's language
        detail = render(detail, request_lang(request))
    elif not isinstance(detail, (str, list, dict)):
        detail = str(detail)
    return json_response({"detail": detail}, exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(SceneError, _scene_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = orjson.dumps(content)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class CatchAllMiddleware:
    """Any exception escaping the app becomes ``500 {"detail": "internal error (<Type>)"}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the point of this middleware
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, {"detail": f"internal error ({type(exc).__name__}); see the server log"})


class BodyLimitMiddleware:
    """Read at most ``max_bytes`` of a request body; more gets ``413`` before the app sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = {"detail": f"request body is larger than {self.max_bytes} bytes"}
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _send_json(send, 413, too_large)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HeadMiddleware:
    """``HEAD`` wherever ``GET`` works: the app answers it as a ``GET`` and the body is dropped
    (headers, ``content-length`` included, are the ``GET``'s)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# The page loads only its own scripts; Plotly injects <style> elements, hence 'unsafe-inline' for styles.
APP_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
           "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
           "frame-ancestors 'none'; form-action 'self'")
# /docs serves Swagger UI from the installed fastapi-offline package; FastAPI starts it with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs",)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else APP_CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"content-security-policy", b"x-content-type-options", b"referrer-policy")]
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
