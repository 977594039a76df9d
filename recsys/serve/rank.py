"""Rank stage: add a rank_score to each retrieved candidate.

Reads candidate dicts {item_id, retrieval_score, source}; writes the same dicts plus
rank_score (order unchanged: the Reranker sorts). The scoring itself is
models.ranker.score_candidates; this module only feeds it popularity counts and the
weights that arrive through `user_config`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray import serve

from recsys.config import validate_mapping
from recsys.models.ranker import RankerConfig, score_candidates
from recsys.serve.catalog import load_popularity

logger = logging.getLogger("ray.serve")


def parse_ranker_config(user_config: dict[str, Any] | None) -> RankerConfig:
    """user_config dict -> RankerConfig; a ValueError naming each bad field and value."""
    return validate_mapping(RankerConfig, user_config, "Ranker user_config")


def rank_candidates(candidates: list[dict[str, Any]], counts: dict[str, int], cfg: RankerConfig,
                    max_popularity: float, kind: str = "items") -> list[dict[str, Any]]:
    """Copies of `candidates` with rank_score set; unknown items count as 0 interactions.
    kind "search" blends with cfg.search's weights, anything else with cfg's own."""
    if not candidates:
        return []
    retrieval = np.array([float(c["retrieval_score"]) for c in candidates], dtype=np.float64)  # [C]
    pop = np.array([counts.get(c["item_id"], 0) for c in candidates], dtype=np.float64)      # [C]
    scores = score_candidates(retrieval, pop, cfg.for_kind(kind), max_popularity)
    return [{**c, "rank_score": float(s)} for c, s in zip(candidates, scores)]


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Ranker:
    """Serve shell: popularity counts loaded once, weights tunable live via user_config."""

    def __init__(self, popularity_path: str):
        _, self.counts = load_popularity(popularity_path)
        self.max_popularity = float(max(self.counts.values(), default=0))
        self.cfg = RankerConfig()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Raising here fails the deploy / config update, so a typo never goes live silently.
        self.cfg = parse_ranker_config(user_config)
        logger.info("Ranker config: %s", self.cfg.model_dump())

    def rank(self, candidates: list[dict[str, Any]], kind: str = "items") -> list[dict[str, Any]]:
        """[{item_id, retrieval_score, source}] -> same order, each with rank_score; kind "search" for
        /v1/search's candidates (their own blend), "items" for every other list."""
        return rank_candidates(candidates, self.counts, self.cfg, self.max_popularity, kind)

    def ready(self) -> dict[str, Any]:
        """Answers when the replica is up: /readyz asks every stage."""
        return {"items_with_counts": len(self.counts), "config": self.cfg.model_dump()}
