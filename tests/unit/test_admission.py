"""recsys/serve/admission.py on a bare FastAPI app: beyond the limit a request is answered 503 + Retry-After
at once, probes are never shed, and every request that got in leaves again, failed ones included."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from recsys.serve.admission import AdmissionGate, install_admission_control
from recsys.serve.http_errors import install_error_handlers


def make_app(limit: int | None, timeout_s: float | None = None) -> tuple[FastAPI, AdmissionGate, asyncio.Event]:
    app = FastAPI()
    install_error_handlers(app)
    gate = install_admission_control(app, AdmissionGate(limit, timeout_s=timeout_s))
    release = asyncio.Event()

    @app.get("/v1/slow")
    async def slow() -> dict:
        await release.wait()
        return {"ok": True}

    @app.get("/v1/broken")
    async def broken() -> dict:
        raise RuntimeError("a bug")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app, gate, release


async def burst(limit: int | None, n: int) -> tuple[list[httpx.Response], AdmissionGate, httpx.Response]:
    """n concurrent /v1/slow requests, held until the ones shed have come back; plus a /healthz meanwhile."""
    app, gate, release = make_app(limit)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        calls = [asyncio.create_task(client.get("/v1/slow")) for _ in range(n)]
        while gate.in_flight + gate.shed < n:   # every request is either in or turned away
            await asyncio.sleep(0.01)
        health = await client.get("/healthz")
        release.set()
        responses = list(await asyncio.gather(*calls))
    return responses, gate, health


def test_requests_beyond_the_limit_are_shed_with_retry_after() -> None:
    responses, gate, health = asyncio.run(burst(limit=2, n=5))
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503]
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1", r.headers
            assert "2 requests in flight" in r.json()["detail"] and r.json()["retry_after_s"] == 1
    assert health.status_code == 200, "a probe must not be shed while the replica is full"
    assert (gate.in_flight, gate.shed) == (0, 3)


def test_no_limit_lets_everything_in() -> None:
    responses, gate, _ = asyncio.run(burst(limit=None, n=5))
    assert [r.status_code for r in responses] == [200] * 5 and gate.shed == 0


def test_a_failed_request_leaves_the_gate() -> None:
    async def call() -> tuple[httpx.Response, AdmissionGate]:
        app, gate, _ = make_app(limit=1)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.get("/v1/broken")
            assert first.status_code == 500
            return await client.get("/v1/broken"), gate

    second, gate = asyncio.run(call())
    assert second.status_code == 500, "the first failure kept its slot: the second request was shed"
    assert gate.in_flight == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="admission limit"):
        AdmissionGate(bad)  # type: ignore[arg-type]


def test_the_ingress_gate_survives_serve_pickling_the_app() -> None:
    """serve.ingress freezes the Ingress's FastAPI app by a pickle round trip (ray/serve/api.py), and that
    copy is what the replica serves. The replica's __init__ sets the limit on ingress_base.ADMISSION; the
    gate inside the frozen app's middleware must be that same object, or the replica never sheds (it
    answered 300 concurrent searches with max_in_flight 16 before the gate was named)."""
    import cloudpickle
    from ray._common.serialization import pickle_dumps
    from ray.serve._private.utils import ensure_serialization_context

    from recsys.serve.admission import AdmissionMiddleware
    from recsys.serve.ingress_base import ADMISSION, app

    ensure_serialization_context()   # what serve.ingress does before the round trip
    shipped = cloudpickle.loads(pickle_dumps(app, error_msg="app"))
    gates = [m.kwargs["gate"] for m in shipped.user_middleware if m.cls is AdmissionMiddleware]
    assert gates == [ADMISSION]
    assert gates[0] is ADMISSION


def test_unnamed_gates_stay_separate_objects() -> None:
    import pickle

    gate = AdmissionGate(3)
    copy = pickle.loads(pickle.dumps(gate))
    assert copy is not gate and copy.limit == 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_slow_answers_shrink_what_is_let_in_and_fast_ones_grow_it_back() -> None:
    from recsys.serve.admission import AdaptiveLimit

    clock = FakeClock()
    limit = AdaptiveLimit(ceiling=16, target_s=0.5, floor=2, clock=clock)
    assert limit.allowed == 16
    limit.observe(0.9)
    assert limit.allowed == 12
    limit.observe(0.9)   # the same burst (within one target window): no second cut
    assert limit.allowed == 12
    for _ in range(20):  # sustained slowness: one cut per window, down to the floor
        clock.now += 0.5
        limit.observe(2.0)
    assert limit.allowed == 2
    for _ in range(200):  # fast again: about +1 per round of `allowed` answers, up to the ceiling
        limit.observe(0.05)
    assert limit.allowed == 16


def test_a_gate_with_a_latency_target_sheds_at_the_adapted_limit() -> None:
    gate = AdmissionGate(4, target_latency_s=0.1)
    assert [gate.try_enter() for _ in range(5)] == [True] * 4 + [False]
    gate.leave(1.0)   # a slow answer: 4 -> 3 allowed
    assert gate.allowed == 3 and gate.in_flight == 3
    assert not gate.try_enter() and gate.shed == 2
    gate.leave(0.01)
    assert gate.try_enter()


@pytest.mark.parametrize("bad", [0, -0.5])
def test_bad_latency_targets_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="target latency"):
        AdmissionGate(8, target_latency_s=bad)


def test_a_request_past_its_deadline_is_cancelled_and_answered_503() -> None:
    """A stuck stage (here: an endpoint that never returns) costs the client a retryable 503 at the request
    timeout, not a hung connection, and the work is cancelled: the slot is free again."""
    async def call() -> tuple[httpx.Response, AdmissionGate, httpx.Response]:
        app, gate, release = make_app(limit=1, timeout_s=0.2)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            stuck = await client.get("/v1/slow")
            release.set()
            after = await client.get("/v1/slow")
        return stuck, gate, after

    stuck, gate, after = asyncio.run(call())
    assert stuck.status_code == 503 and stuck.headers["retry-after"] == "1"
    assert "request timeout (0.2s)" in stuck.json()["detail"]
    assert after.status_code == 200, "the timed-out request kept its slot"
    assert (gate.in_flight, gate.timed_out) == (0, 1)
