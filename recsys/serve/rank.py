"""Rank stage: add a rank_score to each retrieved candidate.

Reads candidate dicts {item_id, retrieval_score, source[, features]}; writes the same dicts plus
rank_score and without features (order unchanged: the Reranker sorts). Search candidates are scored
by the learned search ranker when the app serves one (args.search_ranker: LambdaMART over the
Retriever's features plus popularity, recsys.models.ltr), squashed to (0, 1) so the Reranker's
multiplicative boosts keep their meaning; everything else by models.ranker.score_candidates'
blend, weights from `user_config`. A served cross-encoder (args.cross_encoder) then re-scores the
top `rerank_depth` of /v1/recommend's list against the user's history (ServedCrossEncoder).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import serve

from recsys.artifacts import read_manifest
from recsys.config import validate_mapping
from recsys.data.text import catalog_texts, history_text_for_items
from recsys.models.cross_encoder import CrossEncoderScorer
from recsys.models.ltr import LTRModel
from recsys.models.ranker import RankerConfig, blend_cross_encoder, score_candidates, top_positions
from recsys.models.recommend_features import RECOMMEND_FEATURES
from recsys.models.retriever_offset import RetrieverOffset
from recsys.models.search_features import SEARCH_FEATURES, popularity_column
from recsys.serve.catalog import load_popularity

logger = logging.getLogger("ray.serve")


def parse_ranker_config(user_config: dict[str, Any] | None) -> RankerConfig:
    """user_config dict -> RankerConfig; a ValueError naming each bad field and value."""
    return validate_mapping(RankerConfig, user_config, "Ranker user_config")


def rank_candidates(candidates: list[dict[str, Any]], counts: dict[str, int], cfg: RankerConfig,
                    max_popularity: float, kind: str = "items",
                    learned: LTRModel | None = None) -> list[dict[str, Any]]:
    """Copies of `candidates` with rank_score set (features dropped); unknown items count as 0 interactions.
    `learned` (the kind's LambdaMART ranker) scores them when every candidate carries features; else the
    blend, with cfg.search's weights for kind "search" and cfg's own for every other kind."""
    if not candidates:
        return []
    pop = np.array([counts.get(c["item_id"], 0) for c in candidates], dtype=np.float64)      # [C]
    if learned is not None and all("features" in c for c in candidates):
        rows = np.array([c["features"] for c in candidates], dtype=np.float32)                  # [C, F - 1]
        rows = np.concatenate([rows, popularity_column(pop, max_popularity)[:, None]], axis=1)
        scores = 1.0 / (1.0 + np.exp(-learned.score(rows)))
    else:
        retrieval = np.array([float(c["retrieval_score"]) for c in candidates], dtype=np.float64)  # [C]
        scores = score_candidates(retrieval, pop, cfg.for_kind(kind), max_popularity)
    return [{**{k: v for k, v in c.items() if k != "features"}, "rank_score": float(s)}
            for c, s in zip(candidates, scores)]


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Ranker:
    """Serve shell: popularity counts loaded once, weights tunable live via user_config."""

    def __init__(self, popularity_path: str, search_ranker_dir: str | None = None,
                 recommend_ranker_dir: str | None = None, cross_encoder: dict[str, Any] | None = None):
        _, self.counts = load_popularity(popularity_path)
        self.max_popularity = float(max(self.counts.values(), default=0))
        self.cfg = RankerConfig()
        # kind of list -> (LambdaMART ranker, its version, the model whose features it was trained on);
        # a kind without one keeps the blend
        self.learned = {kind: (LTRModel.load(path, features), Path(path).name,
                               str(read_manifest(Path(path)).get("model_version")))
                        for kind, path, features in (("search", search_ranker_dir, SEARCH_FEATURES),
                                                     ("recommend", recommend_ranker_dir, RECOMMEND_FEATURES))
                        if path is not None}
        self.cross_encoder = ServedCrossEncoder(**cross_encoder) if cross_encoder else None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Raising here fails the deploy / config update, so a typo never goes live silently.
        self.cfg = parse_ranker_config(user_config)
        logger.info("Ranker config: %s", self.cfg.model_dump())

    async def rank(self, candidates: list[dict[str, Any]], kind: str = "items", model_version: str | None = None,
                   history: list[str] | None = None) -> list[dict[str, Any]]:
        """[{item_id, retrieval_score, source[, features]}] -> same order, each with rank_score; kind "search"
        for /v1/search's candidates, "recommend" for /v1/recommend's, "items" for every other list.
        With a cross-encoder served, /v1/recommend's top rerank_depth are then re-scored against `history`
        (the user's item ids, oldest first), in a thread: the forward pass must not hold up the event loop.

        `model_version`: the model whose Retriever computed the features. A learned ranker scores them only
        when it was trained on that model: mid-swap in the staged topology an old Retriever's answer can
        reach a new Ranker (or the reverse), and a ranker must never read another model's cosines; those
        few answers get the blend instead (logged)."""
        model, version, trained_on = self.learned.get(kind, (None, None, None))
        if model is not None and model_version is not None and model_version != trained_on:
            logger.warning("%s ranker %s was trained on model %s, these candidates come from %s (a swap in "
                           "progress?): the blend ranks them", kind, version, trained_on, model_version)
            model = None
        ranked = rank_candidates(candidates, self.counts, self.cfg, self.max_popularity, kind, model)
        if self.cross_encoder is None or kind != "recommend" or not history or not self.cfg.rerank_depth:
            return ranked
        return await asyncio.to_thread(self.cross_encoder.rescore, ranked, history, self.cfg.rerank_depth,
                                       self.cfg.cross_encoder_weight)

    def ready(self) -> dict[str, Any]:
        """Answers when the replica is up: /readyz asks every stage."""
        return {"items_with_counts": len(self.counts), "config": self.cfg.model_dump(),
                "learned_rankers": {kind: version for kind, (_, version, _) in self.learned.items()},
                "cross_encoder": self.cross_encoder.version if self.cross_encoder else None}


class ServedCrossEncoder:
    """A cross-encoder ranker (jobs/train_ranker.py) in the Rank stage: it re-scores the top of a
    recommendation list against the user's history text, formatted as in its training."""

    def __init__(self, path: str, catalog_path: str, quantize: str = "none", batch_size: int = 64):
        manifest = read_manifest(Path(path))
        self.version = Path(path).name
        self.scorer = CrossEncoderScorer(path, int(manifest.get("max_length", 128)),
                                         int(manifest.get("item_max_length", 48)), batch_size,
                                         quantize=quantize)   # type: ignore[arg-type]
        self.max_history_items = int(manifest.get("max_history_items", 8))
        self.offset = RetrieverOffset.from_manifest(manifest)   # trained as a residual on the retrieval score
        ids, titles, texts = catalog_texts(pd.read_parquet(catalog_path))
        self.titles, self.texts = dict(zip(ids, titles)), dict(zip(ids, texts))

    def rescore(self, ranked: list[dict[str, Any]], history: list[str], depth: int,
                weight: float) -> list[dict[str, Any]]:
        """Ranked candidates -> the same, the top `depth` re-scored (recsys.models.ranker.blend_cross_encoder)."""
        scores = np.array([c["rank_score"] for c in ranked], dtype=np.float64)
        top = top_positions(scores, depth)
        context = history_text_for_items(history, self.titles, self.max_history_items)
        logits = self.scorer.score([context] * len(top), [self.texts.get(ranked[i]["item_id"], "") for i in top])
        if self.offset is not None:
            logits = logits + self.offset.apply([ranked[i]["retrieval_score"] for i in top])
        final = blend_cross_encoder(scores, top, logits, weight)
        return [{**c, "rank_score": float(s)} for c, s in zip(ranked, final)]
