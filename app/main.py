"""The LossLab web app: ``create_app()`` wires settings, middlewares, routers and the warm-up."""
from __future__ import annotations

import gc
import importlib.util
import logging
import math
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import anyio
import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from losscore import export, registry
from losscore.scene import Box, Scene

from .compute import Lanes
from .dependencies import require_json_body
from .errors import (BodyLimitMiddleware, CatchAllMiddleware, HeadMiddleware, SecurityHeadersMiddleware,
                     install_error_handlers)
from .memory import tune_malloc
from .routers import api, content, health, pages
from .server import watch_parent
from .settings import Settings, get_settings

log = logging.getLogger("losslab")
SWAGGER_UI_DIR = Path(importlib.util.find_spec("fastapi_offline").origin).parent / "static"  # Swagger UI 5


def warmup_scene(name: str, strides: tuple[int, ...]) -> Scene:
    """A small scene every scheme accepts: 640 px rounded up to the largest stride, two boxes."""
    side = max(strides) * math.ceil(640 / max(strides))
    boxes = (Box(0, 52.0, 60.0, 148.0, 260.0), Box(1, 300.0, 310.0, 420.0, 380.0))
    return Scene(scheme=name, width=side, height=side, nc=2, boxes=boxes, device="cpu")


def warm_up() -> dict[str, str]:
    """Run every scheme once (first-call costs: kernels, caches); returns the schemes that failed."""
    errors: dict[str, str] = {}
    for name, spec in registry.all_schemes().items():
        start = time.perf_counter()
        try:
            export.result_to_dict(export.run_scene(warmup_scene(name, spec.strides)), maps=None, arrays=True)
        except Exception as exc:  # noqa: BLE001 - one broken family must not stop the server
            log.exception("warm-up of scheme %s failed", name)
            errors[name] = f"{type(exc).__name__}: {exc}"
        else:
            log.info("warmed up %s in %.1f ms", name, (time.perf_counter() - start) * 1e3)
    return errors


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    torch.set_num_threads(settings.torch_threads)
    tune_malloc(settings.malloc_mmap_threshold, settings.malloc_trim_threshold)  # before any tensor of the warm-up
    app.state.lanes = lanes = Lanes(settings)
    app.state.compute_limiter = lanes.light
    watch_parent()  # a worker of `losslab serve --workers N` exits when its supervisor dies
    app.state.warmup_errors = await anyio.to_thread.run_sync(warm_up) if settings.warmup else {}
    # Everything alive now (modules, torch, the app) lives as long as the worker: move it out of the
    # garbage collector's generations, so a full collection no longer walks ~200k objects (measured:
    # one every ~200 requests, ~140 ms each).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        lanes.close()


class PageMissing(RuntimeError):
    """The page's files are not where the settings say (a broken install): the server does not start."""


def check_page(settings: Settings) -> None:
    """Refuse to start without the page: ``templates/index.html`` and ``static/js/main.js``."""
    needed = [Path(settings.templates_dir) / "index.html", Path(settings.static_dir) / "js" / "main.js"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise PageMissing(
            f"LossLab's page is missing ({', '.join(missing)} not found): the installed package ships it as "
            "losslab_web/templates and losslab_web/static, so reinstall losslab, or point LOSSLAB_TEMPLATES_DIR "
            "and LOSSLAB_STATIC_DIR at a checkout's templates/ and static/")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_page(settings)
    app = FastAPI(
        docs_url=None,  # served by pages.docs with Swagger UI from the installed fastapi-offline: no CDN
        redoc_url=None,
        title="LossLab",
        version=export.library_versions()["losslab"],
        summary="Label assignment and losses of object detectors, computed by real PyTorch code.",
        lifespan=lifespan,
        dependencies=[Depends(require_json_body)],  # a body that is not JSON is a 415 that says so
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(content.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(settings.static_dir), check_dir=False), name="static")
    app.mount("/vendor/swagger-ui", StaticFiles(directory=str(SWAGGER_UI_DIR)), name="swagger-ui")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(CatchAllMiddleware)  # nothing escapes as a traceback
    app.add_middleware(SecurityHeadersMiddleware)  # outermost of ours: every response has them, a 500 too
    return app


app = create_app()
