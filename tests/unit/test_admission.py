"""recsys/serve/admission.py on a bare FastAPI app: beyond the limit a request is answered 503 + Retry-After
at once, probes are never shed, and every request that got in leaves again, failed ones included."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from recsys.serve.admission import AdmissionGate, install_admission_control
from recsys.serve.http_errors import install_error_handlers


def make_app(limit: int | None) -> tuple[FastAPI, AdmissionGate, asyncio.Event]:
    app = FastAPI()
    install_error_handlers(app)
    gate = install_admission_control(app, AdmissionGate(limit))
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
