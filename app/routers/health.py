"""``GET /healthz``: the server is up and which schemes warmed up."""
from __future__ import annotations

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from losscore.registry import all_schemes

from ..schemas import HealthOut
from ..serialize import dumps

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness and warm-up status")
async def healthz(request: Request) -> Response:
    errors = dict(getattr(request.app.state, "warmup_errors", {}))
    content = {"status": "degraded" if errors else "ok", "schemes": sorted(all_schemes()),
               "warmup_errors": errors, "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    return Response(dumps(content), media_type="application/json")
