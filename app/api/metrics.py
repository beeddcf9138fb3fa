"""``GET /metrics``: the Prometheus exposition of the service's metrics. With ``metrics_token`` set it needs
``Authorization: Bearer <token>``. Without one it is public only while the server has no API keys (a local
server, scraped without a key): once keys are on, what tenants spend is not for anyone who can reach the port,
so it is refused until a token is set."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep
from app.api.errors import ApiError

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = services.settings.access.metrics_token
    if token is None and services.admission.keys.has_keys():
        raise ApiError(
            401, "/metrics needs a metrics token while API keys are on: set metrics_token (RAGOPS_METRICS_TOKEN) "
            "and send 'Authorization: Bearer <metrics_token>'", code="metrics_token_required",
        )  # fmt: skip
    if token is not None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        # Digests, so that the comparison's time does not even tell the token's length.
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest()):
            raise ApiError(401, "/metrics needs 'Authorization: Bearer <metrics_token>'", code="invalid_metrics_token")
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
