"""The page: ``GET /`` renders templates/index.html; Plotly.js is served from the installed package.

The page ships with the package (``losslab_web/templates``, ``losslab_web/static``); ``create_app``
refuses to start without it (:func:`app.main.check_page`), so there is no placeholder page.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import plotly
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ..dependencies import SettingsDep

router = APIRouter(tags=["page"], include_in_schema=False)

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"

@lru_cache(maxsize=4)
def _templates(directory: str) -> Jinja2Templates:
    return Jinja2Templates(directory=directory)


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, settings: SettingsDep) -> Response:
    return _templates(str(settings.templates_dir)).TemplateResponse(
        request, "index.html", {"plotly_src": "/vendor/plotly.min.js"})


@router.get("/vendor/plotly.min.js")
async def plotly_js() -> Response:
    return FileResponse(PLOTLY_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI for /openapi.json, its assets served from the installed ``fastapi-offline``."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="LossLab API",
                               swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
                               swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
                               swagger_favicon_url="data:,")
