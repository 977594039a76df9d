"""Per-endpoint request counters for Prometheus, next to the ones Ray Serve exports itself.

Serve already counts requests per route and status at the proxy (ray_serve_num_http_requests,
ray_serve_http_request_latency_ms); these add what only the ingress knows: the endpoint's route
template (/v1/similar/{item_id}, not one series per item), and the feedback events stored or
rejected per event type. Ray exports them on each node's metrics port with the prefix `ray_`,
e.g. ray_recsys_http_requests_total{endpoint="/v1/recommend",method="POST",status="200"}.
"""

import functools
import logging
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from recsys.serve.http_errors import HttpOnlyMiddleware

logger = logging.getLogger("ray.serve")


@functools.cache
def _counters() -> dict[str, Any]:
    # Created on first use, in the replica: Serve's metrics read the replica context then.
    from ray.serve import metrics

    # Ray's stub types tag_keys as tuple[str]; any tuple of names works.
    return {
        "requests": metrics.Counter("recsys_http_requests", description="Ingress requests by endpoint and status.",
                                    tag_keys=("endpoint", "method", "status")),  # type: ignore[arg-type]
        "feedback": metrics.Counter("recsys_feedback_events", description="Feedback events by type and outcome.",
                                    tag_keys=("event_type", "outcome")),  # type: ignore[arg-type]
    }


def _inc(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        _counters()[name].inc(value, tags=tags)
    except Exception:  # noqa: BLE001 - a metrics failure must never fail the request it counts
        logger.debug("could not record metric %s %s", name, tags, exc_info=True)


def count_feedback(by_event_type: dict[str, int], rejected: int) -> None:
    """Stored events per event type, and the rejected ones."""
    for event_type, n in by_event_type.items():
        _inc("feedback", n, {"event_type": event_type, "outcome": "stored"})
    if rejected:
        _inc("feedback", rejected, {"event_type": "any", "outcome": "rejected"})


class RequestMetricsMiddleware(HttpOnlyMiddleware):
    """Counts every request by endpoint, method and status."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router leaves the matched route in the scope; unmatched paths share one series.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            _inc("requests", 1, {"endpoint": endpoint, "method": scope.get("method", ""), "status": str(status)})


def install_request_metrics(app: FastAPI) -> None:
    """Count every request by endpoint, method and status (installed outermost: sees the 500s too)."""
    app.add_middleware(RequestMetricsMiddleware)
