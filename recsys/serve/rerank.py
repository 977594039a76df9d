"""Rerank stage: business rules over ranked candidates, then the response items.

Reads candidate dicts {item_id, retrieval_score, rank_score, source}; writes
{"items": [ScoredItem-shaped dicts], "dropped": {rule: count}}. The rules live in
serve/rules_config.py (what can be configured) and serve/rules.py (how it is applied), both
pure; this module joins catalog facts onto candidates and shapes output.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import ray
from ray import serve

from recsys.config import validate_mapping
from recsys.serve.catalog import CatalogLookup
from recsys.serve.rules import SOURCE_PIN, Candidate, apply_rules
from recsys.serve.rules_config import RulesConfig
from recsys.serve.storefront import active_promoted_items, items_of_campaigns

logger = logging.getLogger("ray.serve")

# Candidates whose item the catalog does not know (index built on other data) are dropped
# before the rules and counted under this key.
NOT_IN_CATALOG = "not_in_catalog"


def parse_rules_config(user_config: dict[str, Any] | None) -> RulesConfig:
    """user_config dict -> RulesConfig; a ValueError naming each bad field and value."""
    return validate_mapping(RulesConfig, user_config, "Reranker user_config")


def check_rules_fit_catalog(cfg: RulesConfig, catalog: CatalogLookup) -> None:
    """Refuse rules this catalog cannot support, rather than let them drop every item."""
    if cfg.price_range is not None and catalog.prices is None:
        raise ValueError(f"Reranker user_config: price_range={cfg.price_range.model_dump()} needs a "
                         f"price column in catalog.parquet, which this catalog lacks")


def catalog_candidate(item_id: str, catalog: CatalogLookup, retrieval_score: float = 0.0,
                      rank_score: float = 0.0, source: str = SOURCE_PIN) -> Candidate:
    """A rule Candidate with the catalog's facts about the item."""
    return Candidate(item_id=item_id, category=catalog.category(item_id), in_stock=catalog.in_stock(item_id),
                     retrieval_score=retrieval_score, rank_score=rank_score, source=source,
                     brand=catalog.brand(item_id), price=catalog.price(item_id),
                     product_group=catalog.product_group(item_id))


def to_candidates(ranked: list[dict[str, Any]], catalog: CatalogLookup) -> tuple[list[Candidate], int]:
    """Ranked dicts -> rule Candidates with catalog facts; (candidates, unknown count)."""
    cands = []
    unknown = 0
    for c in ranked:
        item_id = c["item_id"]
        if not catalog.known(item_id):
            unknown += 1
            continue
        cand = catalog_candidate(item_id, catalog, float(c["retrieval_score"]), float(c["rank_score"]),
                                 str(c.get("source", "ann")))
        # What an earlier stage did to the candidate (e.g. the cart's same-category penalty) leads
        # its explanation, before the rules' own labels.
        cand.rules_applied.extend(str(r) for r in c.get("rules_applied", ()))
        cands.append(cand)
    return cands, unknown


def to_item(c: Candidate, catalog: CatalogLookup) -> dict[str, Any]:
    """A kept candidate -> a dict shaped like schema.ScoredItem."""
    return {
        "item_id": c.item_id,
        "title": catalog.title(c.item_id),
        "category": c.category,
        "score": c.score,
        "explanation": {"source": c.source, "retrieval_score": c.retrieval_score,
                        "rank_score": c.rank_score, "rules_applied": list(c.rules_applied)},
    }


def rerank_candidates(ranked: list[dict[str, Any]], history_ids: list[str] | None, k: int,
                      cfg: RulesConfig, catalog: CatalogLookup, now: datetime) -> dict[str, Any]:
    """Apply the rules at time `now` and keep the top k: {"items": [...], "dropped": {rule: count}}."""
    cands, unknown = to_candidates(ranked, catalog)

    def lookup_pinned(item_id: str) -> Candidate | None:
        return catalog_candidate(item_id, catalog) if catalog.known(item_id) else None

    kept, dropped = apply_rules(cands, cfg, history_ids, k, now=now, lookup_item=lookup_pinned)
    return {"items": [to_item(c, catalog) for c in kept], "dropped": {**dropped, NOT_IN_CATALOG: unknown}}


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Reranker:
    """Serve shell: catalog loaded once, rules tunable live via user_config."""

    def __init__(self, catalog_path: str):
        self.catalog = CatalogLookup.from_parquet(catalog_path, rule_facts=True)
        self.cfg = RulesConfig()
        self.campaign_items: dict[str, list[str]] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Raising here fails the deploy / config update, so a typo never goes live silently.
        cfg = parse_rules_config(user_config)
        check_rules_fit_catalog(cfg, self.catalog)
        # Which items each campaign covers is fixed by the catalog, so it is worked out once per
        # config, not per /v1/promotions request (a category campaign can cover thousands).
        self.campaign_items = items_of_campaigns(cfg.boosts, self.catalog)
        self.cfg = cfg
        logger.info("Reranker rules: %s", cfg.model_dump(mode="json", by_alias=True))

    def rerank(self, candidates: list[dict[str, Any]], history_ids: list[str] | None,
               k: int) -> dict[str, Any]:
        """Ranked candidates -> {"items": top-k ScoredItem dicts, "dropped": {rule: count}}."""
        return rerank_candidates(candidates, history_ids, k, self.cfg, self.catalog,
                                 now=datetime.now(timezone.utc))

    def promoted_items(self) -> list[str]:
        """Item ids of the boost campaigns active now, in config order, each once."""
        return active_promoted_items(self.cfg.boosts, self.campaign_items, datetime.now(timezone.utc))

    def info(self) -> dict[str, Any]:
        """Which replica answers and the rules it runs: lets an operator (and the tests) see a
        user_config update land in place, on the same actor."""
        return {"actor_id": ray.get_runtime_context().get_actor_id(),
                "rules": self.cfg.model_dump(mode="json", by_alias=True)}
