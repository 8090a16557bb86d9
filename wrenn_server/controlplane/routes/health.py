"""Liveness and the API description."""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import Response

from wrenn_server import __version__

from ..schemas.health import Health

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/openapi.yaml", include_in_schema=False)
async def openapi_yaml(request: Request) -> Response:
    document = request.app.openapi()
    return Response(yaml.safe_dump(document, sort_keys=False), media_type="application/yaml")
