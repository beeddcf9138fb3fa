"""``GET /metrics``: the Prometheus exposition of the service's metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
