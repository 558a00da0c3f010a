"""Request dependencies as ``Annotated`` aliases."""
from __future__ import annotations

from email.message import Message
from typing import Annotated

import anyio

from fastapi import Depends, HTTPException, Request

from losscore.text import T

from .compute import Lanes
from .settings import Settings


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (``create_app(settings)``).

    Read from the app, not injected with ``app.dependency_overrides``: while any override is set,
    FastAPI rebuilds every dependency's signature on every request (``inspect``, ~25 us each)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_limiter(request: Request) -> anyio.CapacityLimiter:
    """How many scene computations run at once in this worker (``LOSSLAB_COMPUTE_SLOTS``).

    ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per
    request (and GIL traffic with the computation) just to read an attribute."""
    return request.app.state.lanes.light


LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]


async def get_lanes(request: Request) -> Lanes:
    """The worker's compute lanes and stream slots (:mod:`app.compute`)."""
    return request.app.state.lanes


LanesDep = Annotated[Lanes, Depends(get_lanes)]


async def require_json_body(request: Request) -> None:
    """A request with a body must send it as JSON (``415`` saying so otherwise; FastAPI alone
    would answer a 422 about the body's shape). Every route has this dependency (``create_app``)."""
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return
    has_body = request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers
    if not has_body:  # nothing to parse (a POST whose parameters are all in the query)
        return
    value = request.headers.get("content-type", "")
    message = Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
        return
    shown = value if len(value) <= 60 else value[:60] + "…"
    if value:
        raise HTTPException(415, T("send the body as JSON with content-type application/json (got {got})", got=repr(shown)))
    raise HTTPException(415, T("send the body as JSON with content-type application/json (got no content-type)"))
