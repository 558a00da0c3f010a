"""Server settings, read from the environment with the prefix ``LOSSLAB_`` (e.g. ``LOSSLAB_PORT``)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]


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
    warmup: bool = True  # run every scheme once at start-up
    templates_dir: Path = ROOT / "templates"
    static_dir: Path = ROOT / "static"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
