"""Application builder: `serve deploy serve_configs/<env>.yaml` imports `build_app` from here.

Artifact references ("latest", a version name or a directory) are resolved to absolute
paths once, at build time, in the process that builds the app. Replicas then load exactly
those versions even if LATEST moves while they start or restart, and they need neither
RECSYS_HOME nor the artifacts' naming scheme.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Deployment

from recsys.artifacts import ArtifactNotFound, read_manifest, resolve_artifact
from recsys.config import validate_mapping
from recsys.models.cross_encoder import CROSS_ENCODER_TYPE
from recsys.models.recommend_features import RECOMMEND_FEATURES, RECOMMEND_RANKER_TYPE
from recsys.models.search_features import SEARCH_FEATURES, SEARCH_RANKER_TYPE
from recsys.serve.catalog import CATALOG_FILE, POPULARITY_FILE, SEQUENCES_DIR
from recsys.serve.colocated import StageSpec
from recsys.serve.ingress import Ingress
from recsys.serve.ingress_base import DEFAULT_PROMOTION_POOL
from recsys.serve.rank import Ranker
from recsys.serve.rerank import Reranker
from recsys.serve.retrieve import Retriever
from recsys.serve.storefront import DEFAULT_SAME_CATEGORY_PENALTY
from recsys.serve.user_context import ServingUserStateConfig
from recsys.serve.user_state_redis import redact_url

logger = logging.getLogger("ray.serve")


class ServeArgs(BaseModel, extra="forbid"):
    """The `args:` block of an application in a Serve config file."""

    index: str = Field(
        default="latest",
        description="Index artifact: 'latest', a version name under artifacts/indexes, or a directory. "
                    "Its manifest names the encoder that embeds queries.",
    )
    data: str = Field(
        default="latest",
        description="Data artifact ('latest', version or directory) with catalog.parquet, sequences/ "
                    "and popularity.parquet: titles, stock, user histories and cold-start items.",
    )
    retrieval_k: int = Field(
        default=100, ge=1, le=1000,
        description="Candidates fetched from the index per request, before ranking and rules; "
                    "raise it when rules (history, stock, category cap) leave fewer than k items.",
    )
    query_max_length: int | None = Field(
        default=None, ge=8, le=512,
        description="Tokenizer truncation length for query and history text; null = what the model "
                    "was trained with (index manifest).",
    )
    max_history_items: int | None = Field(
        default=None, ge=1, le=200,
        description="Most recent history items turned into the recommendation query text; null = "
                    "what preprocess used for training pairs (data manifest).",
    )
    user_state: ServingUserStateConfig = Field(
        default_factory=ServingUserStateConfig,
        description="Online user state (histories, purchases, feedback): embedded SQLite file per node "
                    "(default) or Redis shared by all nodes; see recsys/serve/user_state.py.",
    )
    seed_user_state: bool = Field(
        default=True,
        description="At start-up give every user of the data version's sequences/ who has no state yet "
                    "their history; users with state (feedback) are left alone, so restarts keep it.",
    )
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the API key that POST /v1/feedback and "
                    "DELETE /v1/users/{id} require in X-API-Key; null = no key. Read on the replica.",
    )
    cart_same_category_penalty: float = Field(
        default=DEFAULT_SAME_CATEGORY_PENALTY, ge=0, le=2,
        description="POST /v1/cart: retrieval-score penalty of complements in a cart item's category "
                    "(0 = plain similarity, 2 = other categories always first).",
    )
    embed_fresh_items: bool = Field(
        default=True,
        description="At Retriever start-up embed catalog items the index lacks with the item tower, so "
                    "new items are retrievable (source 'fresh') before the next index build.",
    )
    colocate_stages: bool = Field(
        default=False,
        description="Run the Retriever, Ranker and Reranker inside each Ingress replica instead of as "
                    "deployments of their own: no hops between stages, best on CPU nodes (see "
                    "recsys/serve/colocated.py for the measurements). Their user_configs then go in the "
                    "Ingress's, keyed by stage name, and the config names only the Ingress deployment.",
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, le=10_000,
        description="Requests one Ingress replica works on at once; beyond, it answers 503 + Retry-After "
                    "at once (recsys/serve/admission.py). Set it, with the Ingress's max_ongoing_requests "
                    "well above it: at max_ongoing_requests Serve's router re-probes a full replica only "
                    "every 0.5 s and goodput collapses under overload. With colocated stages keep it >= "
                    "the Retriever's max_batch_size. null = Serve's limits alone.",
    )
    target_latency_ms: float | None = Field(
        default=None, gt=0, le=600_000,
        description="With max_in_flight: the latency admitted requests should stay near inside a replica. "
                    "The replica lets fewer requests in at once while answers take longer than this and "
                    "more again when they are faster (AIMD, recsys/serve/admission.py), never more than "
                    "max_in_flight. null = max_in_flight alone, fixed.",
    )
    request_timeout_s: float | None = Field(
        default=10.0, gt=0, le=3600,
        description="A request the Ingress has not answered after this many seconds is cancelled, with "
                    "the stage calls it waits on, and answered 503 + Retry-After: a stuck stage replica "
                    "or store costs a retry, not a hung connection. null = no deadline.",
    )
    promotion_pool_size: int = Field(
        default=DEFAULT_PROMOTION_POOL, ge=1, le=100_000,
        description="/v1/promotions: the most popular promoted items scored per request.",
    )
    query_quantize: Literal["none", "int8"] = Field(
        default="none",
        description="int8: the Retriever's query encoder runs as dynamic int8 on CPU replicas "
                    "(recsys/models/quantize.py; faster, quality loss measured in docs/results.md); "
                    "GPU replicas refuse it. Item vectors stay as build_index wrote them.",
    )
    ranker: str | None = Field(
        default=None,
        description="Learned recommendation ranker (jobs/train_recommend_ranker.py): 'latest', a version under "
                    "artifacts/rankers or a directory, trained on the served index's model. It orders "
                    "/v1/recommend's candidates; null = the Ranker's hand-set blend.",
    )
    cross_encoder: str | None = Field(
        default=None,
        description="Cross-encoder ranker (jobs/train_ranker.py): 'latest', a version under artifacts/rankers or "
                    "a directory. It re-scores the top rerank_depth of /v1/recommend's list against the user's "
                    "history (Ranker user_config: rerank_depth, cross_encoder_weight); null = none.",
    )
    cross_encoder_quantize: Literal["none", "int8"] = Field(
        default="none",
        description="int8: the cross-encoder runs as dynamic int8 on CPU replicas (as query_quantize).",
    )
    search_ranker: str | None = Field(
        default=None,
        description="Learned search ranker (jobs/train_search_ranker.py): 'latest', a version under "
                    "artifacts/rankers or a directory; it must have been trained on the served index's model. "
                    "It orders /v1/search's candidates; null = the Ranker's hand-set blend.",
    )


def parse_serve_args(args: dict[str, Any] | None) -> ServeArgs:
    """Raw args -> ServeArgs; a ValueError naming each bad field and its value."""
    return validate_mapping(ServeArgs, args, "serve args")


def resolve_serving_artifacts(args: ServeArgs) -> dict[str, Any]:
    """Absolute index/data paths plus the versions the service reports; fails early and clearly."""
    index_dir = resolve_artifact("indexes", args.index)
    data_dir = resolve_artifact("data", args.data)
    manifest = read_manifest(index_dir)
    for name in (CATALOG_FILE, SEQUENCES_DIR, POPULARITY_FILE):
        if not (data_dir / name).exists():
            raise FileNotFoundError(f"data artifact {data_dir} lacks {name}: serve args data={args.data!r} "
                                    f"does not point at a preprocess output")
    if manifest.get("data_version") and manifest["data_version"] != data_dir.name:
        # Allowed (a catalog refresh need not re-embed), but worth seeing in the logs.
        logger.warning("index %s was built from data %s but serving data %s", index_dir.name,
                       manifest["data_version"], data_dir.name)
    try:
        data_config = read_manifest(data_dir).get("config", {})
    except ArtifactNotFound:  # hand-assembled data dirs may lack one; fall back to defaults
        data_config = {}
    return {
        "search_ranker_dir": resolve_ranker("search_ranker", args.search_ranker, manifest, SEARCH_RANKER_TYPE,
                                            SEARCH_FEATURES, "jobs/train_search_ranker.py"),
        "recommend_ranker_dir": resolve_ranker("ranker", args.ranker, manifest, RECOMMEND_RANKER_TYPE,
                                               RECOMMEND_FEATURES, "jobs/train_recommend_ranker.py"),
        "cross_encoder_dir": resolve_cross_encoder(args.cross_encoder),
        "query_max_length": args.query_max_length or int(manifest.get("query_max_length", 128)),
        "max_history_items": args.max_history_items or int(
            data_config.get("retrieval_pairs", {}).get("max_history_items", 8)),
        "index_dir": str(index_dir),
        "data_dir": str(data_dir),
        "index_version": str(manifest.get("version", index_dir.name)),
        "model_version": str(manifest.get("model_version", "unknown")),
    }


def ranker_artifact(field: str, ref: str) -> tuple[Path, dict[str, Any]]:
    """(directory, manifest) of the ranker serve args `field` names; a missing one is a ValueError naming it."""
    try:
        path = resolve_artifact("rankers", ref)
        return path, read_manifest(path)
    except ArtifactNotFound as exc:
        raise ValueError(f"serve args {field}={ref!r}: {exc}") from None


def resolve_ranker(field: str, ref: str | None, index_manifest: dict[str, Any], kind: str,
                   features: tuple[str, ...], job: str) -> str | None:
    """A learned ranker's directory, checked against the served index: a missing artifact, another kind of
    ranker (a cross-encoder, a search ranker for recommendations) or one trained on another model fails
    the deploy, naming the field."""
    if ref is None:
        return None
    path, manifest = ranker_artifact(field, ref)
    if manifest.get("type") != kind:
        found = manifest.get("type", "cross-encoder")
        raise ValueError(f"serve args {field}={ref!r}: ranker {path.name} is a {found!r} ranker, not a {kind!r} "
                         f"one (train one with {job})")
    if manifest.get("model_version") != index_manifest.get("model_version"):
        raise ValueError(f"serve args {field}={ref!r}: ranker {path.name} was trained on model "
                         f"{manifest.get('model_version')!r} but index {index_manifest.get('version')!r} serves model "
                         f"{index_manifest.get('model_version')!r}: its scores mean something else; retrain it on "
                         f"this index")
    if tuple(manifest.get("features", ())) != features:
        raise ValueError(f"serve args {field}={ref!r}: ranker {path.name} uses features "
                         f"{manifest.get('features')}, this code computes {list(features)}: retrain it")
    return str(path)


def resolve_cross_encoder(ref: str | None) -> str | None:
    """A cross-encoder ranker's directory; a missing artifact or a LambdaMART ranker fails the deploy,
    naming the field. (It reads text, not the index's features: any index can be served with it.)"""
    if ref is None:
        return None
    path, manifest = ranker_artifact("cross_encoder", ref)
    if manifest.get("type", CROSS_ENCODER_TYPE) != CROSS_ENCODER_TYPE:
        raise ValueError(f"serve args cross_encoder={ref!r}: ranker {path.name} is a {manifest['type']!r} ranker, "
                         f"not a cross-encoder (train one with jobs/train_ranker.py)")
    return str(path)


def loggable_args(cfg: ServeArgs) -> dict[str, Any]:
    """The serve args for a log line: an inline user_state.redis_url has its credentials redacted."""
    args = cfg.model_dump()
    if args.get("user_state", {}).get("redis_url"):
        args["user_state"]["redis_url"] = redact_url(args["user_state"]["redis_url"])
    return args


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve args -> Ingress bound to Retriever, Ranker and Reranker (names fixed for configs), or
    with colocate_stages the Ingress alone, constructing the three in its replicas."""
    cfg = parse_serve_args(args)
    paths = resolve_serving_artifacts(cfg)
    logger.info("building recsys app: %s", {**loggable_args(cfg), **paths})
    catalog_path = f"{paths['data_dir']}/{CATALOG_FILE}"
    stages = {
        "Retriever": StageSpec(args=[paths["index_dir"], catalog_path, paths["query_max_length"],
                                     paths["max_history_items"]],
                               kwargs={"data_dir": paths["data_dir"], "embed_fresh_items": cfg.embed_fresh_items,
                                       "quantize": cfg.query_quantize}),
        "Ranker": StageSpec(args=[f"{paths['data_dir']}/{POPULARITY_FILE}", paths["search_ranker_dir"],
                                  paths["recommend_ranker_dir"]],
                            kwargs={"cross_encoder": {"path": paths["cross_encoder_dir"], "catalog_path": catalog_path,
                                                      "quantize": cfg.cross_encoder_quantize}
                                    if paths["cross_encoder_dir"] else None}),
        "Reranker": StageSpec(args=[catalog_path]),
    }
    ingress_kwargs: dict[str, Any] = {
        "user_state": resolve_user_state(cfg.user_state).model_dump(), "api_key_env": cfg.api_key_env,
        "cart_same_category_penalty": cfg.cart_same_category_penalty,
        "promotion_pool_size": cfg.promotion_pool_size, "seed_user_state": cfg.seed_user_state,
        "max_in_flight": cfg.max_in_flight, "target_latency_ms": cfg.target_latency_ms,
        "request_timeout_s": cfg.request_timeout_s}
    if cfg.colocate_stages:
        handles: list[Any] = [None, None, None]
        ingress_kwargs["colocated"] = {name: spec.model_dump() for name, spec in stages.items()}
    else:
        handles = [_named(deployment, name).bind(*stages[name].args, **stages[name].kwargs)
                   for deployment, name in ((Retriever, "Retriever"), (Ranker, "Ranker"), (Reranker, "Reranker"))]
    return _named(Ingress, "Ingress").bind(
        *handles, paths["data_dir"], paths["index_version"], paths["model_version"], cfg.retrieval_k,
        **ingress_kwargs)


def resolve_user_state(cfg: ServingUserStateConfig) -> ServingUserStateConfig:
    """The embedded file's default path fixed now, like the artifacts: RECSYS_HOME of the process
    that builds the app, so replicas (whose environment may differ) share one file per node."""
    if cfg.backend == "embedded" and cfg.path is None:
        return cfg.model_copy(update={"path": str(cfg.resolved_path())})
    return cfg


def _named(deployment: object, name: str) -> Deployment:
    # serve.deployment turned the classes into Deployments (mypy still sees classes); the
    # names are pinned because serve_configs/*.yaml address deployments by them.
    return cast(Deployment, deployment).options(name=name)
