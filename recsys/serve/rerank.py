"""Rerank stage: business rules over ranked candidates, then the response items.

Reads candidate dicts {item_id, retrieval_score, rank_score, source}; writes
{"items": [ScoredItem-shaped dicts], "dropped": {rule: count}}. The rules live in
serve/rules.py (pure); this module joins catalog facts onto candidates and shapes output.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from recsys.config import validate_mapping
from recsys.serve.catalog import CatalogLookup
from recsys.serve.rules import Candidate, RulesConfig, apply_rules

logger = logging.getLogger("ray.serve")

# Candidates whose item the catalog does not know (index built on other data) are dropped
# before the rules and counted under this key.
NOT_IN_CATALOG = "not_in_catalog"


def parse_rules_config(user_config: dict[str, Any] | None) -> RulesConfig:
    """user_config dict -> RulesConfig; a ValueError naming each bad field and value."""
    return validate_mapping(RulesConfig, user_config, "Reranker user_config")


def to_candidates(ranked: list[dict[str, Any]], catalog: CatalogLookup) -> tuple[list[Candidate], int]:
    """Ranked dicts -> rule Candidates with catalog category/stock; (candidates, unknown count)."""
    cands = []
    unknown = 0
    for c in ranked:
        item_id = c["item_id"]
        if not catalog.known(item_id):
            unknown += 1
            continue
        cands.append(Candidate(item_id=item_id, category=catalog.category(item_id),
                               in_stock=catalog.in_stock(item_id),
                               retrieval_score=float(c["retrieval_score"]),
                               rank_score=float(c["rank_score"]), source=str(c.get("source", "ann"))))
    return cands, unknown


def to_item(c: Candidate, catalog: CatalogLookup) -> dict[str, Any]:
    """A kept candidate -> a dict shaped like schema.ScoredItem."""
    return {
        "item_id": c.item_id,
        "title": catalog.title(c.item_id),
        "category": c.category,
        "score": c.rank_score,
        "explanation": {"source": c.source, "retrieval_score": c.retrieval_score,
                        "rank_score": c.rank_score, "rules_applied": list(c.rules_applied)},
    }


def rerank_candidates(ranked: list[dict[str, Any]], history_ids: list[str] | None, k: int,
                      cfg: RulesConfig, catalog: CatalogLookup) -> dict[str, Any]:
    """Apply the rules and keep the top k: {"items": [...], "dropped": {rule: count}}."""
    cands, unknown = to_candidates(ranked, catalog)
    kept, dropped = apply_rules(cands, cfg, history_ids, k)
    return {"items": [to_item(c, catalog) for c in kept], "dropped": {**dropped, NOT_IN_CATALOG: unknown}}


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Reranker:
    """Serve shell: catalog loaded once, rules tunable live via user_config."""

    def __init__(self, catalog_path: str):
        self.catalog = CatalogLookup.from_parquet(catalog_path)
        self.cfg = RulesConfig()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Raising here fails the deploy / config update, so a typo never goes live silently.
        self.cfg = parse_rules_config(user_config)
        logger.info("Reranker rules: %s", self.cfg.model_dump())

    def rerank(self, candidates: list[dict[str, Any]], history_ids: list[str] | None,
               k: int) -> dict[str, Any]:
        """Ranked candidates -> {"items": top-k ScoredItem dicts, "dropped": {rule: count}}."""
        return rerank_candidates(candidates, history_ids, k, self.cfg, self.catalog)
