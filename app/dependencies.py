"""Request dependencies as ``Annotated`` aliases."""
from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Request

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
    return request.app.state.compute_limiter


LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]
