"""A guarded endpoint checks the API key before it reads the body (issue 24: malformed JSON to
/v1/feedback got 422, describing the body, before 401). The Ingress's own middleware and dependency
on a bare FastAPI app, with a real ApiKeyGuard."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel

from recsys.serve.api_key import API_KEY_HEADER, ApiKeyFirstMiddleware, ApiKeyGuard, routes_depending_on
from recsys.serve.http_errors import install_error_handlers

GUARD = ApiKeyGuard("KEY_ENV", environ={"KEY_ENV": "s3cret"})


class Feedback(BaseModel):
    item_id: str


async def require_key(x_api_key: str | None = Header(default=None, alias=API_KEY_HEADER)) -> None:
    GUARD.check(x_api_key)


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(ApiKeyFirstMiddleware, guarded=routes_depending_on(app, require_key), guard=lambda: GUARD)

    @app.post("/feedback", dependencies=[Depends(require_key)])
    async def feedback(body: Feedback) -> dict:
        return {"ok": body.item_id}

    @app.post("/search")
    async def search(body: Feedback) -> dict:
        return {"ok": body.item_id}

    return app


def post(path: str, body: bytes, key: str | None = None) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
        headers = {"content-type": "application/json"} | ({API_KEY_HEADER: key} if key else {})
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=body, headers=headers)

    return asyncio.run(call())


def test_malformed_json_without_the_key_is_401_not_422() -> None:
    for body in (b'{"item_id": ', b'not json', b'{"item_id": NaN}'):
        r = post("/feedback", body)
        assert r.status_code == 401, r.text
        assert "missing X-API-Key" in r.json()["detail"] and r.headers["www-authenticate"] == API_KEY_HEADER
        wrong = post("/feedback", body, key="nope")
        assert wrong.status_code == 401 and "does not match" in wrong.json()["detail"]
        assert post("/feedback", body, key="s3cret").status_code == 422   # with the key: the body's error


def test_the_key_opens_the_endpoint_and_unguarded_routes_need_none() -> None:
    assert post("/feedback", b'{"item_id": "i1"}', key="s3cret").json() == {"ok": "i1"}
    assert post("/search", b'{"item_id": "i1"}').json() == {"ok": "i1"}
    assert post("/search", b'{"item_id": ').status_code == 422


def limited_app(max_bytes: int) -> FastAPI:
    from recsys.serve.body_limit import BodySizeLimitMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_bytes)

    @app.post("/echo")
    async def echo(body: Feedback) -> dict:
        return {"ok": len(body.item_id)}

    return app


def send(app: FastAPI, content) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/echo", content=content, headers={"content-type": "application/json"})

    return asyncio.run(call())


def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_streamed() -> None:
    """Regression: no body-size limit at all; a replica read and parsed any body whole (issue 24)."""
    app = limited_app(max_bytes=1000)
    small = b'{"item_id": "' + b"x" * 900 + b'"}'
    assert send(app, small).json() == {"ok": 900}
    big = b'{"item_id": "' + b"x" * 5000 + b'"}'
    declared = send(app, big)                              # Content-Length: refused before reading
    assert declared.status_code == 413 and "limit of 1000 bytes" in declared.json()["detail"], declared.text

    async def chunks():                                    # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 500

    streamed = send(app, chunks())
    assert streamed.status_code == 413 and "limit of 1000 bytes" in streamed.json()["detail"], streamed.text
