"""The Ingress's one FastAPI app, and the state and helpers every endpoint group shares: the stage
handles, the catalog, popularity, the user-state store and the API key. Endpoint groups
(endpoints_*.py) add their routes to `app`; ingress.py binds them to the Ingress deployment.
"""

# No `from __future__ import annotations`: FastAPI inspects require_api_key's signature.
import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from recsys.schema import RecsResponse, ScoredItem
from recsys.serve.admission import install_admission_control
from recsys.serve.api_key import API_KEY_HEADER, ApiKeyFirstMiddleware, ApiKeyGuard, routes_depending_on
from recsys.serve.body_limit import BodySizeLimitMiddleware
from recsys.serve.catalog import CATALOG_FILE, POPULARITY_FILE, SEQUENCES_DIR, CatalogLookup, load_popularity
from recsys.serve.colocated import STAGES, StageSpec, construct_stage, reconfigure_stages
from recsys.serve.http_errors import install_error_handlers
from recsys.serve.http_metrics import install_request_metrics
from recsys.serve.rank import parse_ranker_config
from recsys.serve.rerank import check_rules_fit_catalog, parse_rules_config
from recsys.serve.storefront import DEFAULT_SAME_CATEGORY_PENALTY, to_candidates
from recsys.serve.user_context import UserContext, open_serving_store, read_user_context, seed_user_store

logger = logging.getLogger("ray.serve")


def construct_colocated_stages(specs: dict[str, dict[str, Any]]) -> tuple[Any, Any, Any]:
    """Retriever, Ranker and Reranker built in this process from their bind() arguments."""
    # Imported here: a staged Ingress never loads the encoder's libraries.
    from recsys.serve.rank import Ranker
    from recsys.serve.rerank import Reranker
    from recsys.serve.retrieve import Retriever

    missing = sorted(set(STAGES) - set(specs))
    if missing:
        raise ValueError(f"colocated stages: no construction arguments for {missing}")
    parsed = {name: StageSpec.model_validate(specs[name]) for name in STAGES}
    return (construct_stage(Retriever, parsed["Retriever"]), construct_stage(Ranker, parsed["Ranker"]),
            construct_stage(Reranker, parsed["Reranker"]))


def replica_api_key() -> ApiKeyGuard | None:
    """This Ingress replica's key guard; None outside a replica or before IngressBase.__init__ ran."""
    try:
        ingress = serve.get_replica_context().servable_object
    except RayServeException:
        return None
    return getattr(ingress, "api_key", None)


async def require_api_key(
        x_api_key: Annotated[str | None, Header(alias=API_KEY_HEADER, description=(
            "The service's API key; required when the app runs with api_key_env."))] = None) -> None:
    """FastAPI dependency of the guarded endpoints: 401 unless X-API-Key matches.

    A dependency (not a check inside the endpoint) so it runs before the body is validated, and
    ApiKeyFirstMiddleware checks the same key even before the body is parsed as JSON: a caller
    without the key learns nothing about what a valid request looks like.
    """
    ingress: IngressBase = serve.get_replica_context().servable_object  # type: ignore[assignment]
    ingress.api_key.check(x_api_key)


app = FastAPI(title="recsys", description="Search, recommendations and storefront endpoints from "
                                          "transformer encoders. Errors name the field and value.")
install_error_handlers(app)
app.add_middleware(BodySizeLimitMiddleware)
app.add_middleware(ApiKeyFirstMiddleware, guarded=routes_depending_on(app, require_api_key), guard=replica_api_key)
# At import: the replica re-imports this module, so only what happens here reaches it; the limit
# is set per replica in IngressBase.__init__ (ServeArgs.max_in_flight).
ADMISSION = install_admission_control(app)   # the process's "ingress" gate, also in the pickled app
install_request_metrics(app)   # after: the outermost middleware, so it counts the 500s and the shed 503s

# Promoted items scored per /v1/promotions request (the most popular of them): see promotion_pool.
DEFAULT_PROMOTION_POOL = 500


class IngressBase:
    """Owns the catalog, popularity and the user-state store; calls the stage handles."""

    def __init__(self, retriever: DeploymentHandle | None, ranker: DeploymentHandle | None,
                 reranker: DeploymentHandle | None, data_dir: str, index_version: str, model_version: str,
                 retrieval_k: int = 100, user_state: dict[str, Any] | None = None, api_key_env: str | None = None,
                 cart_same_category_penalty: float = DEFAULT_SAME_CATEGORY_PENALTY,
                 promotion_pool_size: int = DEFAULT_PROMOTION_POOL, seed_user_state: bool = True,
                 colocated: dict[str, dict[str, Any]] | None = None, max_in_flight: int | None = None,
                 target_latency_ms: float | None = None, request_timeout_s: float | None = None):
        """Stage handles, or with `colocated` ({stage name: StageSpec dict}) none: the stages are then
        constructed in this replica (see colocated.py). `max_in_flight`: requests this replica works on
        at once before it answers 503 + Retry-After (admission.py); None = Serve's limits alone.
        `target_latency_ms`: with max_in_flight, let fewer in while admitted requests take longer.
        `request_timeout_s`: a request unanswered after this long is cancelled and answered 503."""
        ADMISSION.configure(max_in_flight, None if target_latency_ms is None else target_latency_ms / 1000,
                            request_timeout_s)
        self.colocated = colocated is not None
        if colocated is not None:
            self._retriever, self._ranker, self._reranker = construct_colocated_stages(colocated)
        else:
            self._retriever, self._ranker, self._reranker = retriever, ranker, reranker
        self._stages = {"Retriever": self._retriever, "Ranker": self._ranker, "Reranker": self._reranker}
        data = Path(data_dir)
        self.catalog = CatalogLookup.from_parquet(data / CATALOG_FILE)
        popular, self.popularity = load_popularity(data / POPULARITY_FILE)
        # Cold start only ever shows sellable items, so keep just those as its candidate pool.
        self.popular_in_stock = [i for i in popular if self.catalog.in_stock(i)]
        self.index_version, self.model_version = index_version, model_version
        self.retrieval_k = retrieval_k
        self.cart_same_category_penalty = cart_same_category_penalty
        self.promotion_pool_size = promotion_pool_size
        self.api_key = ApiKeyGuard(api_key_env)
        self.user_store = open_serving_store(user_state)
        if seed_user_state:
            started = time.monotonic()
            seeded = seed_user_store(self.user_store, data / SEQUENCES_DIR)
            logger.info("user state %r seeded from %s in %.1fs: %s", self.user_store, data.name,
                        time.monotonic() - started, seeded)
        logger.info("Ingress ready: %d catalog items, %d popular in-stock items, API key %s",
                    len(self.catalog), len(self.popular_in_stock), "on" if self.api_key.enabled else "off")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Colocated stages get their parts of this user_config; a staged Ingress refuses one."""
        if not self.colocated:
            reconfigure_stages({}, user_config, colocated=False, validators={})
            return
        from recsys.serve.retrieve import parse_retriever_config  # loaded already: the Retriever runs here

        reranker = self._reranker.obj
        reconfigure_stages(
            self._stages, user_config,
            colocated=True, validators={
                "Retriever": parse_retriever_config, "Ranker": parse_ranker_config,
                "Reranker": lambda cfg: check_rules_fit_catalog(parse_rules_config(cfg), reranker.catalog)})

    async def call_stage(self, stage: str, method: str, *args: Any) -> Any:
        """One stage method's answer, in either topology (operators' and tests' view of a stage)."""
        handle = self._stages.get(stage)
        if handle is None:
            raise ValueError(f"stage={stage!r}: want one of {list(STAGES)}")
        return await getattr(handle, method).remote(*args)

    async def _user_context(self, user_id: str | None, explicit: list[str] | None = None) -> UserContext:
        """The user's stored history and purchases plus `explicit`, catalog ids only."""
        if user_id is None:   # nothing to read: skip the thread hop
            ctx = read_user_context(self.user_store, None, explicit, self.catalog.known)
        else:   # the store does blocking I/O (SQLite, a Redis round trip): a thread keeps the loop free
            ctx = await asyncio.to_thread(read_user_context, self.user_store, user_id, explicit, self.catalog.known)
        if ctx.store_error:
            logger.warning("answering without stored user state: %s", ctx.store_error)
        if ctx.unknown_ids:
            logger.debug("ignored %d history ids unknown to the catalog", ctx.unknown_ids)
        return ctx

    async def _rank_and_rerank(self, cands: list[dict[str, Any]], exclude_ids: list[str],
                               k: int, kind: str = "items", model_version: str | None = None,
                               history: list[str] | None = None) -> list[ScoredItem]:
        """Candidates -> Ranker (kind "search", "recommend" or "items", the model_version of the Retriever
        that found them, the user's history for a cross-encoder: see Ranker.rank) -> Reranker's rules
        (exclude_history drops `exclude_ids`) -> top k."""
        # Passing the Ranker's response straight to the Reranker lets Serve hand the ranked
        # list over without a round trip through this replica.
        ranked = self._ranker.rank.remote(cands, kind, model_version, history)
        out = await self._reranker.rerank.remote(ranked, exclude_ids, k)
        logger.debug("rerank dropped %s", out["dropped"])
        return [ScoredItem.model_validate(item) for item in out["items"]]

    async def _answer(self, retrieved: list[tuple[str, float]], source: str, ctx: UserContext,
                      k: int, exclude: list[str] | None = None) -> list[ScoredItem]:
        """Retrieved pairs -> the answer; the user's purchases never come back, whatever the rules say."""
        cands, bought = to_candidates(retrieved, source, ctx.purchased)
        if bought:
            logger.debug("left out %d purchased items", bought)
        return await self._rank_and_rerank(cands, ctx.history + (exclude or []), k)

    async def _popular(self, ctx: UserContext, k: int, exclude: list[str] | None = None) -> RecsResponse:
        """Cold start: nothing we can embed, so what sells (still through the rules)."""
        popular = [(i, 0.0) for i in self.popular_in_stock[:max(self.retrieval_k, k)]]
        return self._response(await self._answer(popular, "popular", ctx, k, exclude), cold_start=True, ctx=ctx)

    def _response(self, items: list[ScoredItem], cold_start: bool = False,
                  served: Mapping[str, Any] | None = None, ctx: UserContext | None = None) -> RecsResponse:
        """The answer, naming the versions of the Retriever replica that computed it (`served`, from
        its answer: mid-swap that may be an old one), else this replica's (popularity answers), and
        what it had to do without (`degraded`: the user-state store did not answer for `ctx`)."""
        served = served or {}
        degraded = [] if ctx is None or not ctx.store_error else [
            f"user_state: {ctx.store_error}; answered from the request's own history, so the user's stored "
            f"history and purchases were not used"]
        return RecsResponse(items=items, cold_start=cold_start, degraded=degraded,
                            model_version=served.get("model_version", self.model_version),
                            index_version=served.get("index_version", self.index_version))

    def __del__(self) -> None:
        store = getattr(self, "user_store", None)
        if store is not None:
            store.close()
