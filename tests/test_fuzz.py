"""Schemathesis fuzzes the OpenAPI schema in process: no server error, no response off its schema.

The number of examples per operation is bounded so the run stays well under a minute.
"""
from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from app.main import create_app
from app.settings import Settings
from test_api_toyscheme import with_toy


@pytest.fixture(scope="module", autouse=True)
def _toy_family():
    with with_toy():
        yield


app = create_app(Settings(warmup=False))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(app):  # runs the lifespan (thread settings, compute limiter)
        yield


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_errors(case):
    case.call_and_validate(checks=CHECKS)
