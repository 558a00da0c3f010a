"""Server settings, read from the environment with the prefix ``LOSSLAB_`` (e.g. ``LOSSLAB_PORT``)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent


def _page_dir(name: str) -> Path:
    """Where the page's ``templates/`` or ``static/`` folder is: inside the installed package
    (``losslab_web/static``, as the wheel ships it) or, in a checkout, next to ``app/``."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else ROOT / name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSSLAB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Browser origins allowed to call the API from another site; empty (the default) turns CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # 1 MiB; larger bodies get 413
    torch_threads: int = Field(1, ge=1, le=256)  # intra-op threads per worker (1 is fastest for these small ops)
    compute_slots: int = Field(1, ge=1, le=64)  # computations running at once per worker
    # glibc malloc (app/memory.py): allocations up to malloc_mmap_threshold bytes come from the heap,
    # and free memory at its top goes back to the system only above malloc_trim_threshold, so a
    # worker reuses its pages between requests (half of a drag update's compute was page faults).
    # 0 for either leaves malloc as it is.
    malloc_mmap_threshold: int = Field(32 * 2**20, ge=0, le=32 * 2**20)
    malloc_trim_threshold: int = Field(128 * 2**20, ge=0, le=2**31 - 1)
    warmup: bool = True  # run every scheme once at start-up
    # -- serving limits (losslab serve; app/server.py): per worker process ----------------------
    max_connections: int = Field(256, ge=1)  # more get an immediate 503 and are closed
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + headers; more: 431
    max_header_count: int = Field(100, ge=4)  # header fields; more: 431
    timeout_keep_alive: int = Field(5, ge=1)  # s an idle connection (new or between requests) stays open
    timeout_request: float = Field(30.0, gt=0)  # s from a request's first byte to its last; then 408
    timeout_send: float = Field(30.0, gt=0)  # s a response may wait on a client that reads nothing; then abort
    max_pending_bytes: int = Field(128 * 2**20, ge=2**20)  # response bytes waiting on clients that do not read
    timeout_graceful_shutdown: int = Field(30, ge=1)  # s SIGTERM waits for requests in flight
    backlog: int = Field(2048, ge=1)
    # -- compute lanes and large responses (app/compute.py) ------------------------------------
    # A scene whose prediction head (grid cells of all levels x 3 x (64 + nc), the library's own
    # measure) is larger than this, and every export, runs in the heavy lane: its own thread at the
    # lowest CPU priority, heavy_slots at once, so light scenes never queue behind it.
    heavy_elements: int = Field(6_000_000, ge=0)
    heavy_slots: int = Field(1, ge=1, le=16)
    # A response estimated above stream_bytes is streamed as it is encoded; stream_slots of them at
    # once per worker (each holds its scene's trace while the client reads); above max_response_bytes
    # it is refused with 413 (``losslab explain`` writes any size to a file).
    stream_bytes: int = Field(16 * 2**20, ge=0)
    stream_slots: int = Field(2, ge=1, le=64)
    max_response_bytes: int = Field(256 * 2**20, ge=2**20)
    stream_wait: float = Field(10.0, ge=0)  # s a large response waits for a stream slot; then 503
    templates_dir: Path = Field(default_factory=lambda: _page_dir("templates"))
    static_dir: Path = Field(default_factory=lambda: _page_dir("static"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
