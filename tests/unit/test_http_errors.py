"""The Ingress's error mapping (recsys/serve/http_errors.py) on a bare FastAPI app: client errors that endpoint
code finds are 422s naming the field, bugs are 500s without a trace, and the request models refuse blank ids.

Regressions from schemathesis (tests/integration/test_serve_openapi_fuzz.py): a blank user_id reached the
user-state store (ValueError -> 500) or failed a request model built in endpoint code (ValidationError -> 500).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError

from recsys.schema import PromotionsRequest, RecommendRequest, SearchRequest
from recsys.serve.http_errors import install_error_handlers
from recsys.serve.user_state import InvalidId, check_id


class InternalModel(BaseModel):   # stands for a response or stage model: never the client's fault
    score: float


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/store")
    async def store(user_id: str) -> dict:
        return {"user_id": check_id("user_id", user_id)}

    @app.get("/promotions")
    async def promotions(user_id: str) -> dict:
        return PromotionsRequest(user_id=user_id).model_dump()

    @app.post("/search")
    async def search(req: SearchRequest) -> dict:
        return req.model_dump()

    @app.get("/lost")
    async def lost() -> dict:
        from ray.exceptions import ActorDiedError

        raise ActorDiedError()   # what awaiting a stage whose replica was killed mid-request raises

    @app.get("/internal")
    async def internal() -> dict:
        return InternalModel(score="not a number").model_dump()   # type: ignore[arg-type]

    return app


def get(path: str, **params: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, params=params)

    return asyncio.run(call())


@pytest.mark.parametrize("path", ["/store", "/promotions"])
def test_blank_id_found_by_endpoint_code_is_422_naming_the_field(path: str) -> None:
    r = get(path, user_id="\t")
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["field"] == "user_id" and error["value"] == "\t", error
    assert get(path, user_id="u1").status_code == 200


def post_raw(path: str, body: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=body, headers={"content-type": "application/json"})

    return asyncio.run(call())


@pytest.mark.parametrize(("body", "field", "echoed"), [
    (b'{"query": "ok", "k": NaN}', "k", "NaN"),
    (b'{"query": "ok", "k": Infinity}', "k", "Infinity"),
    (b'{"query": "ok", "k": -Infinity}', "k", "-Infinity"),
    (b'{"query": "ok", "k": 1e400}', "k", "Infinity"),            # Python's JSON parses it to inf
    (b'{"query": "\\ud800"}', "query", "\\ud800"),                # a lone surrogate, escaped back
    (b'{"query": "ok", "user_id": ["\\udfff", 1.5]}', "user_id", ["\\udfff", 1.5]),
])
def test_values_json_cannot_echo_get_a_422_naming_the_field_not_a_500(body: bytes, field: str, echoed) -> None:
    """Regression: rendering the 422 that echoes NaN / Infinity / a lone surrogate failed, and the client
    got 500 "internal error" (issue 24)."""
    r = post_raw("/search", body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["field"] == field and e["value"] == echoed for e in errors), errors


def test_a_stage_replica_lost_mid_request_is_a_retryable_503() -> None:
    """Regression (issue 24): a replica dying mid-request surfaced as 500 internal error."""
    r = get("/lost")
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert "ActorDiedError" in r.json()["detail"] and r.json()["retry_after_s"] == 1


def test_a_failing_internal_model_is_still_a_500() -> None:
    r = get("/internal")
    assert r.status_code == 500, r.text
    assert r.json() == {"detail": "internal error: ValidationError"}


def test_invalid_id_names_field_and_value() -> None:
    with pytest.raises(InvalidId) as caught:
        check_id("user_id", " ")
    assert (caught.value.field, caught.value.value) == ("user_id", " ")
    assert isinstance(caught.value, ValueError), "callers that catch ValueError keep working"


@pytest.mark.parametrize("model", [RecommendRequest, SearchRequest, PromotionsRequest])
@pytest.mark.parametrize("blank", [" ", "\t", "\u3000\n"])
def test_request_models_refuse_a_blank_user_id(model: type[BaseModel], blank: str) -> None:
    extra = {"query": "pan"} if model is SearchRequest else {}
    with pytest.raises(ValidationError, match="non-space"):
        model(user_id=blank, **extra)
    assert model(user_id="u1", **extra).user_id == "u1"


@pytest.mark.parametrize("model", [RecommendRequest, PromotionsRequest])
def test_history_ids_are_capped_like_every_other_id(model: type[BaseModel]) -> None:
    """Regression: a history element had no length limit (issue 24); blank or unknown ids stay allowed
    (the service skips them)."""
    with pytest.raises(ValidationError, match="at most 200 characters"):
        model(history=["x" * 201])
    assert model(history=["", "x" * 200]).history == ["", "x" * 200]   # type: ignore[attr-defined]
