"""Admission control in the Ingress replica: beyond `limit` requests in flight, answer 503 +
Retry-After at once, so that Serve's own per-replica limit (max_ongoing_requests) never bites.

Why not max_ongoing_requests + max_queued_requests alone: once a replica reports
max_ongoing_requests in flight, Ray Serve's router (2.60) stops sending to it and re-probes it
only on a backoff timer (RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S, 0.5 s), not when a slot frees, and
dispatches about one queued request per routing task (two per replica) per timer. Under sustained
overload the replica idles between timers. bench/serve_load.py at 2x capacity on 2 CPUs, the app
from serve_configs/local.yaml (colocated, max_ongoing_requests 8, proxy queue 64): 0.21-0.24x of
capacity served (4 req/s once the queue filled), 200s at p50 8.5-10 s / p99 12.5-14 s; a trivial
25 ms endpoint behaved the same. The same app with max_ongoing_requests 256 and this gate at 16:
0.37-0.73x served, p50 0.8-0.9 s, p99 1.5-3.4 s, 200s in every 2 s window.

Use: install the gate on the Ingress's FastAPI app at import time (the replica re-imports the
module, so an app changed in the driver does not travel), set `gate.limit` in the replica's
__init__, and give the deployment a max_ongoing_requests well above the limit (it then only caps
what reaches the replica; a shed request costs about a millisecond there). With stages colocated
keep the limit >= the Retriever's max_batch_size, or encoder batches can never fill.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from recsys.serve.http_errors import HttpOnlyMiddleware, overloaded_response

# Never shed: probes must tell "overloaded" from "down", and the docs cost nothing.
UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json"})


class AdmissionGate:
    """Counts the requests in flight in this replica; `limit` None lets every request in."""

    def __init__(self, limit: int | None = None):
        self.in_flight = 0
        self.shed = 0   # requests answered 503 by this gate since the replica started
        self.limit = limit

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"admission limit must be an int >= 1 or None, got {value!r}")
        self._limit = value

    def try_enter(self) -> bool:
        if self._limit is not None and self.in_flight >= self._limit:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class AdmissionMiddleware(HttpOnlyMiddleware):
    """The gate as a middleware."""

    def __init__(self, app: ASGIApp, gate: AdmissionGate):
        super().__init__(app)
        self.gate = gate

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.gate.try_enter():
            # Not logged one by one: under overload this runs tens of times a second; `shed` counts.
            await overloaded_response(f"{self.gate.limit} requests in flight in this replica",
                                      log=False)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


def install_admission_control(app: FastAPI, gate: AdmissionGate | None = None) -> AdmissionGate:
    """Add the gate to `app` as its outermost middleware so far (install it last); returns the gate."""
    gate = gate if gate is not None else AdmissionGate()
    app.add_middleware(AdmissionMiddleware, gate=gate)
    return gate
