"""Admission control in the Ingress replica: beyond what it allows in flight, answer 503 +
Retry-After at once, so that accepted requests are answered about as fast as when idle and Serve's
own per-replica limit (max_ongoing_requests) never bites.

Where the queue builds (bench/serve_load.py, which reads the Server-Timing header set here; runs in
docs/results.md): under Serve's HAProxy mode nothing queues in HAProxy (no per-server maxconn), so
without a gate every request reaches the replica and waits inside it. Serve's own limit is the wrong
tool: once a replica reports max_ongoing_requests in flight, Serve's router (2.60) re-probes it only
on a 0.5 s backoff timer, not when a slot frees, and the replica idles between timers. So the
replica counts what it works on and sheds the rest itself, for about a millisecond each.

How much to let in: a fixed `limit` bounds the wait to about limit / throughput, but throughput per
replica falls when replicas share cores or the replica spends CPU turning away several times its
capacity; with `target_latency_s` an AdaptiveLimit (AIMD) lowers what is let in while answers take
longer than the target, never above `limit`.

Use: install the gate on the Ingress's FastAPI app at import time (install_admission_control: the
process's named gate, which survives Serve pickling the app), configure it in the replica's
__init__, and give the deployment a max_ongoing_requests well above the limit. With stages
colocated keep the limit >= the Retriever's max_batch_size, or encoder batches can never fill.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.serve.http_errors import HttpOnlyMiddleware, overloaded_response

# Never shed: probes must tell "overloaded" from "down", and the docs cost nothing.
UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json"})


class AdaptiveLimit:
    """AIMD on the number of requests let in at once, so that the latency of the admitted ones stays
    near `target_s`: each request back within the target adds 1/allowed (about +1 per round of
    `allowed` requests), one back later than the target cuts `allowed` by a quarter, at most once per
    `target_s` (the slow answers of one burst count once), never below `floor` nor above `ceiling`.

    Why not a fixed limit alone: the time a request spends inside is about allowed / throughput, and
    throughput per replica is not fixed: it falls when the replica shares its cores with another replica
    or has to turn away several times its capacity (docs/results.md, overload). The same approach as TCP
    congestion control and Netflix's concurrency-limits (AIMD), kept here because it is a few lines.
    """

    def __init__(self, ceiling: int, target_s: float, floor: int = 2, clock: Callable[[], float] = time.monotonic):
        if not target_s > 0:
            raise ValueError(f"admission target latency must be > 0 seconds, got {target_s!r}")
        self.ceiling, self.target_s, self.floor, self.clock = ceiling, target_s, min(floor, ceiling), clock
        self._allowed = float(ceiling)
        self._last_cut = -float("inf")

    @property
    def allowed(self) -> int:
        return int(self._allowed)

    def observe(self, latency_s: float) -> None:
        if latency_s <= self.target_s:
            self._allowed = min(float(self.ceiling), self._allowed + 1.0 / self._allowed)
            return
        now = self.clock()
        if now - self._last_cut >= self.target_s:
            self._allowed = max(float(self.floor), self._allowed * 0.75)
            self._last_cut = now


class AdmissionGate:
    """Counts the requests in flight in this replica and turns away those beyond what it allows:
    `limit` (None lets every request in), or with `target_latency_s` an AdaptiveLimit under `limit`.

    A gate with a `name` is one per process (named_gate): Serve ships the FastAPI app to the
    replica by value, pickled with the deployment class, so a plain gate in the app's middleware
    would arrive as a copy that the replica's __init__ (which sets the limit on the module's gate)
    never reaches, and nothing would be shed. A named gate unpickles as the process's own.
    """

    def __init__(self, limit: int | None = None, name: str | None = None, target_latency_s: float | None = None,
                 timeout_s: float | None = None):
        self.in_flight = 0
        self.shed = 0        # requests answered 503 by this gate since the replica started
        self.timed_out = 0   # requests answered 503 at their deadline
        self.name = name
        self.configure(limit, target_latency_s, timeout_s)

    def __reduce__(self) -> tuple:
        if self.name is None:
            return super().__reduce__()
        return named_gate, (self.name,)

    def configure(self, limit: int | None, target_latency_s: float | None = None,
                  timeout_s: float | None = None) -> None:
        """`timeout_s`: an admitted request still unanswered after this long is cancelled (its stage
        calls with it) and answered 503 + Retry-After; None = no deadline."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"admission limit must be an int >= 1 or None, got {limit!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"request timeout must be > 0 seconds, got {timeout_s!r}")
        self.limit, self.timeout_s = limit, timeout_s
        self.adaptive = AdaptiveLimit(limit, target_latency_s) if limit and target_latency_s is not None else None

    @property
    def allowed(self) -> int | None:
        """Requests let in at once now; None = no limit."""
        return self.adaptive.allowed if self.adaptive is not None else self.limit

    def try_enter(self) -> bool:
        allowed = self.allowed
        if allowed is not None and self.in_flight >= allowed:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self, latency_s: float | None = None) -> None:
        self.in_flight -= 1
        if self.adaptive is not None and latency_s is not None:
            self.adaptive.observe(latency_s)


_NAMED_GATES: dict[str, AdmissionGate] = {}


def named_gate(name: str) -> AdmissionGate:
    """This process's gate called `name`, made on first use."""
    if name not in _NAMED_GATES:
        _NAMED_GATES[name] = AdmissionGate(name=name)
    return _NAMED_GATES[name]


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
            await overloaded_response(f"{self.gate.allowed} requests in flight in this replica",
                                      log=False)(scope, receive, send)
            return
        admitted = time.perf_counter()
        latency_s: float | None = None

        async def send_with_timing(message: Message) -> None:
            nonlocal latency_s
            if message["type"] == "http.response.start":
                # The replica's own time for the request (Server-Timing): a client whose latency is much
                # larger than this waited in front of the replica (proxy, socket, event loop), not in it.
                latency_s = time.perf_counter() - admitted
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={latency_s * 1000:.1f}".encode())]}
            await send(message)

        try:
            # The deadline covers everything the request waits on (stage calls, the user-state store):
            # asyncio.timeout cancels it, and a cancelled DeploymentHandle call cancels the stage's work.
            async with asyncio.timeout(self.gate.timeout_s):
                await self.app(scope, receive, send_with_timing)
        except TimeoutError:
            if latency_s is not None:   # the answer had started: too late to send another
                raise
            self.gate.timed_out += 1
            await overloaded_response(f"no answer within the request timeout ({self.gate.timeout_s:g}s)"
                                      )(scope, receive, send)
        finally:
            self.gate.leave(latency_s if latency_s is not None else time.perf_counter() - admitted)


def install_admission_control(app: FastAPI, gate: AdmissionGate | None = None) -> AdmissionGate:
    """Add the gate to `app` as its outermost middleware so far (install it last); returns the gate.
    Default: the process's gate named "ingress", the one that survives Serve's pickling of the app."""
    gate = gate if gate is not None else named_gate("ingress")
    app.add_middleware(AdmissionMiddleware, gate=gate)
    return gate
