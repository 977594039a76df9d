"""HTTP ingress: validates requests, runs Retrieve -> Rank -> Rerank, shapes RecsResponse.

Endpoints: POST /v1/recommend (RecommendRequest), POST /v1/search (SearchRequest),
GET /healthz. Errors are JSON: 422 {"detail": [{"field", "message", "value"}, ...]} for
bad requests (bad JSON included), 500 {"detail": "internal error: <Type>"} for bugs,
whose traceback goes to the replica log only.
"""

# No `from __future__ import annotations`: FastAPI must see the real request classes on the
# endpoint signatures after serve.ingress rewrites the methods, not unresolved strings.
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from recsys.schema import RecommendRequest, RecsResponse, ScoredItem, SearchRequest
from recsys.serve.catalog import (
    CATALOG_FILE,
    POPULARITY_FILE,
    SEQUENCES_DIR,
    CatalogLookup,
    load_popularity,
    load_user_histories,
)

logger = logging.getLogger("ray.serve")

_LOCATIONS = ("body", "query", "path", "header", "cookie")


def describe_request_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI/pydantic errors -> [{"field", "message", "value"}] a storefront developer can read."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[1:] if loc and loc[0] in _LOCATIONS else loc
        field = ".".join(where) or (loc[0] if loc else "request")
        kind = err.get("type", "")
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        if kind == "json_invalid":
            field, value = "body", None
            message = (f"request body is not valid JSON: {err.get('ctx', {}).get('error', message)} "
                       f"at character {where[0] if where else '?'}")
        elif kind == "extra_forbidden":
            message = f"unknown field {field!r} is not accepted by this endpoint"
        elif kind == "missing":
            value = None   # the input of a missing field is the whole enclosing object
        try:
            value = jsonable_encoder(value)
        except Exception:  # noqa: BLE001 - a value we cannot echo back is still an error to report
            value = repr(value)
        out.append({"field": field, "message": message, "value": value})
    return out


def request_error(field: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 raised from endpoint code, reported like the schema's own validation errors."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message,
                                    "input": value}])


app = FastAPI(title="recsys", description="Search and recommendations from transformer encoders.")


@app.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": describe_request_errors(list(exc.errors()))})


@app.middleware("http")
async def _on_unexpected_error(request: Request, call_next):  # type: ignore[no-untyped-def]
    # A middleware, not exception_handler(Exception): Starlette re-raises after such a handler
    # runs, and the re-raised error would reach Serve's own error path.
    try:
        return await call_next(request)
    except Exception as exc:  # the boundary where every bug becomes a 500
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    """Owns user histories and popularity; calls the Retriever, Ranker and Reranker handles."""

    def __init__(self, retriever: DeploymentHandle, ranker: DeploymentHandle, reranker: DeploymentHandle,
                 data_dir: str, index_version: str, model_version: str, retrieval_k: int = 100):
        self._retriever, self._ranker, self._reranker = retriever, ranker, reranker
        data = Path(data_dir)
        self.catalog = CatalogLookup.from_parquet(data / CATALOG_FILE)
        self.histories = load_user_histories(data / SEQUENCES_DIR)
        popular, _ = load_popularity(data / POPULARITY_FILE)
        # Cold start only ever shows sellable items, so keep just those as its candidate pool.
        self.popular_in_stock = [i for i in popular if self.catalog.in_stock(i)]
        self.index_version, self.model_version = index_version, model_version
        self.retrieval_k = retrieval_k
        logger.info("Ingress ready: %d catalog items, %d users, %d popular in-stock items",
                    len(self.catalog), len(self.histories), len(self.popular_in_stock))

    def _stored_history(self, user_id: str | None) -> list[str]:
        return self.histories.get(user_id, []) if user_id else []

    async def _rank_and_rerank(self, retrieved: list[tuple[str, float]], source: str,
                               history_ids: list[str], k: int) -> list[ScoredItem]:
        cands = [{"item_id": i, "retrieval_score": s, "source": source} for i, s in retrieved]
        # Passing the Ranker's response straight to the Reranker lets Serve hand the ranked
        # list over without a round trip through this replica.
        ranked = self._ranker.rank.remote(cands)
        out = await self._reranker.rerank.remote(ranked, history_ids, k)
        logger.debug("rerank dropped %s", out["dropped"])
        return [ScoredItem.model_validate(item) for item in out["items"]]

    def _response(self, items: list[ScoredItem], cold_start: bool = False) -> RecsResponse:
        return RecsResponse(items=items, cold_start=cold_start, model_version=self.model_version,
                            index_version=self.index_version)

    @app.post("/v1/recommend", response_model=RecsResponse)
    async def recommend(self, req: RecommendRequest) -> RecsResponse:
        """Items for a user: stored history (if the user is known) plus the explicit history."""
        if req.user_id is None and req.history is None:
            raise request_error("user_id", "neither user_id nor history was given: send a user_id, "
                                "a history of item ids, or both")
        explicit = [i for i in req.history or [] if self.catalog.known(i)]
        if len(explicit) < len(req.history or []):
            logger.debug("ignored %d history ids unknown to the catalog",
                         len(req.history or []) - len(explicit))
        usable = [i for i in self._stored_history(req.user_id) if self.catalog.known(i)] + explicit
        k_retrieve = max(self.retrieval_k, req.k)
        if usable:
            retrieved = await self._retriever.recommend.remote(usable, k_retrieve)
            if retrieved:
                return self._response(await self._rank_and_rerank(retrieved, "ann", usable, req.k))
        # Cold start: nothing we can embed, so fall back to what sells (still through the rules).
        popular = [(i, 0.0) for i in self.popular_in_stock[:k_retrieve]]
        return self._response(await self._rank_and_rerank(popular, "popular", usable, req.k), True)

    @app.post("/v1/search", response_model=RecsResponse)
    async def search(self, req: SearchRequest) -> RecsResponse:
        """Free-text search; a known user_id keeps items already in its history out."""
        retrieved = await self._retriever.search.remote(req.query, max(self.retrieval_k, req.k))
        history = self._stored_history(req.user_id)
        return self._response(await self._rank_and_rerank(retrieved, "ann", history, req.k))

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the whole chain's first hop: asks the Retriever what it serves."""
        info = await self._retriever.info.remote()
        return {"status": "ok", "model_version": self.model_version,
                "index_version": self.index_version, "items": info["items"]}
