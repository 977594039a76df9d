"""HTTP ingress: the one FastAPI deployment in front of Retrieve -> Rank -> Rerank.

Endpoints that answer with items (RecsResponse, through the Ranker and the Reranker's rules; a
user's purchases never come back): POST /v1/recommend, POST /v1/search, GET /v1/similar/{item_id},
POST /v1/cart, GET|POST /v1/promotions. Endpoints that write or report: POST /v1/feedback and
DELETE /v1/users/{user_id} (behind the optional API key), GET /healthz (liveness), GET /readyz
(every stage answers); /docs and /openapi.json from FastAPI. State and helpers: ingress_base.py;
error bodies: http_errors.py; the storefront's candidate choices: storefront.py.

The routes are methods of Ingress itself, not of mixins in other modules: Serve pickles the app
with the class, and a method importable by reference would arrive in the replica without the
`self` dependency serve.ingress gives it (FastAPI then asks the client for a "self" field).
"""

# No `from __future__ import annotations`: FastAPI must see the real request classes on the
# endpoint signatures after serve.ingress rewrites the methods, not unresolved strings.
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from recsys.schema import (
    MAX_K,
    CartRequest,
    FeedbackRequest,
    FeedbackResponse,
    PromotionsRequest,
    ReadinessResponse,
    RecommendRequest,
    RecsResponse,
    RejectedEvent,
    SearchRequest,
)
from recsys.serve.candidate_sources import drop_items
from recsys.serve.http_errors import DEFAULT_RETRY_AFTER_S, describe_request_errors, request_error
from recsys.serve.http_metrics import count_feedback
from recsys.serve.ingress_base import IngressBase, app, require_api_key
from recsys.serve.storefront import prefer_other_categories, promotion_candidates, promotion_pool, to_candidates
from recsys.serve.user_context import FeedbackNotStored, record_feedback
from recsys.serve.user_state import UserStoreError

__all__ = ["Ingress", "app", "check_stages", "describe_request_errors", "request_error"]

# How long /readyz waits for each stage: a stage slower than this to say "ok" is not ready to
# take traffic (a load balancer's probe usually times out after a few seconds).
READY_TIMEOUT_S = 2.0
# Dependencies every replica shares: their failure degrades answers but never fails readiness.
SHARED_DEPENDENCIES = frozenset({"user_store"})

ItemIdPath = Annotated[str, Path(min_length=1, max_length=200, description="an item id")]
UserIdPath = Annotated[str, Path(min_length=1, max_length=200, description="a user id")]
OptionalUser = Annotated[str | None, Query(min_length=1, max_length=200,
                                           description="leaves out what this user bought or saw")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items to return")]


async def check_stages(checks: Mapping[str, Callable[[], Awaitable[Any]]],
                       timeout_s: float = READY_TIMEOUT_S) -> dict[str, str]:
    """Run every check at once; per name "ok", or why not (its error, or no answer in time)."""
    async def one(check: Callable[[], Awaitable[Any]]) -> str:
        try:
            await asyncio.wait_for(check(), timeout_s)
            return "ok"
        except asyncio.TimeoutError:
            return f"no answer within {timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready, and says why
            return f"{type(exc).__name__}: {exc}"[:300]

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return dict(zip(checks, results))


# When this replica's own queue is full (max_queued_requests in the Serve config), Serve's proxy
# answers 503 itself; the backpressure_config gives that answer a Retry-After header too.
@serve.deployment(ray_actor_options={"num_cpus": 0.25},
                  backpressure_config=BackpressureConfig(retry_after_s=DEFAULT_RETRY_AFTER_S))
@serve.ingress(app)
class Ingress(IngressBase):
    """Owns the catalog, popularity and user-state store (IngressBase); calls the Retriever,
    Ranker and Reranker handles."""

    @app.post("/v1/recommend", response_model=RecsResponse)
    async def recommend(self, req: RecommendRequest) -> RecsResponse:
        """Items for a user: stored history (feedback included) plus the explicit history; candidates
        from every source (explanation.source says which), popular items alone for a cold start."""
        if req.user_id is None and req.history is None:
            raise request_error("user_id", "neither user_id nor history was given: send a user_id, "
                                "a history of item ids, or both")
        ctx = await self._user_context(req.user_id, req.history)
        if ctx.history:   # ANN, co-occurrence, fresh items and popular, merged by the Retriever
            found = await self._retriever.recommend_candidates.remote(ctx.history, max(self.retrieval_k, req.k))
            if found["personal"]:
                cands, _ = drop_items(found["candidates"], ctx.purchased)
                ranked = await self._rank_and_rerank(cands, ctx.history, req.k, "recommend", found["model_version"],
                                                     history=ctx.history)
                return self._response(ranked, served=found, ctx=ctx)
        return await self._popular(ctx, req.k)

    @app.post("/v1/search", response_model=RecsResponse)
    async def search(self, req: SearchRequest) -> RecsResponse:
        """Free-text search: the index's nearest items and those newer than it, fused with BM25's matches
        (explanation.source ann, bm25, ann+bm25 or fresh); a known user_id keeps items already in its
        history out."""
        retrieved = self._retriever.search.remote(req.query, max(self.retrieval_k, req.k))
        ctx = await self._user_context(req.user_id)   # read while the Retriever encodes
        answer = await retrieved
        cands, _ = drop_items(answer["found"], ctx.purchased)
        ranked = await self._rank_and_rerank(cands, ctx.history, req.k, "search", answer["model_version"])
        return self._response(ranked, served=answer, ctx=ctx)

    @app.get("/v1/similar/{item_id}", response_model=RecsResponse,
             responses={404: {"description": "the index holds no such item"}})
    async def similar(self, item_id: ItemIdPath, k: K = 10, user_id: OptionalUser = None) -> RecsResponse:
        """Items whose item-tower vectors are nearest to this item's (the item itself left out)."""
        retrieved = self._retriever.similar.remote(item_id, max(self.retrieval_k, k))
        ctx = await self._user_context(user_id)
        answer = await retrieved
        if answer["found"] is None:
            raise HTTPException(status_code=404, detail=f"item_id={item_id!r} is not in index "
                                f"{answer['index_version']}: there is no vector to find similar items by")
        return self._response(await self._answer(answer["found"], "ann", ctx, k, exclude=[item_id]), served=answer,
                              ctx=ctx)

    @app.post("/v1/cart", response_model=RecsResponse)
    async def cart(self, req: CartRequest) -> RecsResponse:
        """Complements: items nearest to the cart's mean vector, the cart left out, other categories
        preferred (see storefront.prefer_other_categories for why a penalty, not a filter)."""
        in_cart = list(dict.fromkeys(req.items))
        ctx = await self._user_context(req.user_id)
        answer = await self._retriever.complements.remote(in_cart, max(self.retrieval_k, req.k))
        if not answer["found"]:   # nothing in the cart is indexed (a catalog ahead of the index)
            return await self._popular(ctx, req.k, exclude=in_cart)
        cands, _ = to_candidates(answer["found"], "ann", ctx.purchased)
        cands = prefer_other_categories(cands, {self.catalog.category(i) for i in in_cart},
                                        self.catalog.category, self.cart_same_category_penalty)
        return self._response(await self._rank_and_rerank(cands, ctx.history + in_cart, req.k), served=answer,
                              ctx=ctx)

    @app.get("/v1/promotions", response_model=RecsResponse)
    async def promotions(self, user_id: OptionalUser = None, k: K = 10) -> RecsResponse:
        """The items of the boost campaigns running now, ordered for the user (see the POST form)."""
        return await self._promotions(PromotionsRequest(user_id=user_id, k=k))

    @app.post("/v1/promotions", response_model=RecsResponse)
    async def promotions_for(self, req: PromotionsRequest) -> RecsResponse:
        """The items of the boost campaigns running now (the Reranker's rules), ordered by similarity
        to the user's history when there is one (cold_start false), else by popularity."""
        return await self._promotions(req)

    async def _promotions(self, req: PromotionsRequest) -> RecsResponse:
        promoted = self._reranker.promoted_items.remote()
        ctx = await self._user_context(req.user_id, req.history)
        pool = promotion_pool(await promoted, self.popularity, self.promotion_pool_size)
        if not pool:
            return self._response([], cold_start=not ctx.history, ctx=ctx)
        answer = await self._retriever.score_items.remote(ctx.history, pool) if ctx.history else None
        scored = answer["found"] if answer is not None else None
        cands, _ = promotion_candidates(pool, scored, ctx.purchased)
        return self._response(await self._rank_and_rerank(cands, ctx.history, req.k), cold_start=scored is None,
                              served=answer, ctx=ctx)

    # ------------------------------------------------------------ writes and operations

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=[Depends(require_api_key)],
              responses={401: {"description": "api_key_env is set and X-API-Key is missing or wrong"},
                         503: {"description": "the user-state store failed; resending is safe"}})
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        """Store behaviour events; the next request for the user sees them.

        A malformed event (bad event_type, blank id, timestamp without timezone) rejects the whole
        batch with 422, nothing stored: that is a client bug. An item the serving catalog does not
        know is not stored but the rest of the batch is: the answer counts and names it in errors.
        """
        try:
            outcome = await asyncio.to_thread(record_feedback, self.user_store, req.events, self.catalog.known)
        except FeedbackNotStored as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        count_feedback(outcome.by_event_type, len(outcome.errors))
        return FeedbackResponse(accepted=outcome.accepted, rejected=len(outcome.errors), users=outcome.users,
                                by_event_type=outcome.by_event_type,
                                errors=[RejectedEvent(**e) for e in outcome.errors])

    @app.delete("/v1/users/{user_id}", dependencies=[Depends(require_api_key)],
                responses={401: {"description": "api_key_env is set and X-API-Key is missing or wrong"}})
    async def forget_user(self, user_id: UserIdPath) -> dict[str, Any]:
        """Admin: delete everything the user-state store holds about a user (privacy requests).
        The data version's history comes back only if the service is re-seeded from it."""
        try:
            await asyncio.to_thread(self.user_store.forget, user_id)
        except UserStoreError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return {"user_id": user_id, "forgotten": True}

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the whole chain's first hop: asks the Retriever what it serves."""
        info = await self._retriever.info.remote()
        return {"status": "ok", "model_version": self.model_version,
                "index_version": self.index_version, "items": info["items"]}

    @app.get("/readyz", response_model=ReadinessResponse,
             responses={503: {"model": ReadinessResponse, "description": "a stage is not ready"}})
    async def readyz(self) -> JSONResponse:
        """200 when this replica's stages (Retriever, Ranker, Reranker) answer within READY_TIMEOUT_S, else
        503 naming the stages that did not. The user-state store is shared by every replica: when it does
        not answer the status is "degraded", still 200 (answers then come from the request's history and say
        so in `degraded`), because failing readiness would take every replica out of rotation at once."""
        async def ping_store() -> None:
            await asyncio.to_thread(self.user_store.ping)

        stages = await check_stages({   # a DeploymentResponse is awaitable: wait_for takes it as is
            "retriever": self._retriever.info.remote,
            "ranker": self._ranker.ready.remote,
            "reranker": self._reranker.info.remote,
            "user_store": ping_store,
        })
        own = all(v == "ok" for name, v in stages.items() if name not in SHARED_DEPENDENCIES)
        status = "not_ready" if not own else "ready" if all(v == "ok" for v in stages.values()) else "degraded"
        body = ReadinessResponse(status=status, stages=stages)
        return JSONResponse(status_code=200 if own else 503, content=body.model_dump())
