"""Retrieve stage (Serve shell around retrieval_model.RetrievalModel): query / history text ->
encoder -> Faiss -> candidate (item_id, score) pairs; item ids -> neighbours or scores; and the
merged multi-source candidates of /v1/recommend (see candidate_sources.py).

Query and history texts from concurrent requests are encoded together (@serve.batch): one
forward pass over 16 texts costs far less than 16 passes, on a GPU above all. max_batch_size
and batch_wait_timeout_s come from user_config, so they can be tuned without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import numpy as np
from ray import serve

from recsys.config import validate_mapping
from recsys.models.quantize import Quantize
from recsys.serve.candidate_sources import RetrieverConfig
from recsys.serve.retrieval_model import RetrievalModel

__all__ = ["RetrievalModel", "Retriever", "parse_retriever_config"]

logger = logging.getLogger("ray.serve")

# Batch sizes remembered for batch_stats(): enough to see the recent load, bounded memory.
_BATCH_HISTORY = 1000


def parse_retriever_config(user_config: dict[str, Any] | None) -> RetrieverConfig:
    """user_config dict -> RetrieverConfig; a ValueError naming each bad field and value."""
    return validate_mapping(RetrieverConfig, user_config, "Retriever user_config")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Retriever:
    """One encoder + index copy per replica; concurrent texts share encoder forwards."""

    def __init__(self, index_dir: str, catalog_path: str, query_max_length: int = 128,
                 max_history_items: int = 8, data_dir: str | None = None, embed_fresh_items: bool = True,
                 quantize: Quantize = "none"):
        self.model = RetrievalModel(index_dir, catalog_path, query_max_length, max_history_items,
                                    data_dir=data_dir, embed_fresh_items=embed_fresh_items,
                                    quantize=quantize)
        self.batch_sizes: deque[int] = deque(maxlen=_BATCH_HISTORY)
        # Sent with every answer: during a version swap the Ingress may reach an old or a new
        # Retriever replica, and the response must name the versions that really computed it.
        self.served = {"index_version": self.model.index.version,
                       "model_version": str(self.model.index.manifest.get("model_version", "unknown"))}
        self.reconfigure({})   # defaults until (unless) a user_config arrives
        logger.info("Retriever ready: index %s (%d items, %d fresh), %d co-occurring items, model %s",
                    self.model.index.version, self.model.size, len(self.model.fresh),
                    len(self.model.cooccurrence), self.model.index.manifest.get("model_path"))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Raising here fails the deploy / config update, so a typo never goes live silently.
        self.cfg = parse_retriever_config(user_config)
        batcher: Any = self._embed_batch   # serve.batch's wrapper carries the setters (mypy sees the method)
        batcher.set_max_batch_size(self.cfg.max_batch_size)
        batcher.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        logger.info("Retriever config: %s", self.cfg.model_dump())

    # Two batches in flight: a CPU forward runs on one torch thread (OMP_NUM_THREADS=1), so one batch
    # at a time left the second core idle under load (bench/serve_bench.py: 0.40x the in-process
    # throughput); on a GPU the second batch tokenizes while the first runs.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, max_concurrent_batches=2)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Texts of concurrent calls -> one vector [D] each, in one forward pass."""
        self.batch_sizes.append(len(texts))
        # The forward pass is CPU-bound; a thread keeps the replica's event loop answering
        # health checks and filling the next batch meanwhile (torch releases the GIL).
        vectors = await asyncio.to_thread(self.model.embedder.embed, texts)   # [B, D]
        return list(vectors)

    async def embed(self, text: str) -> list[float]:
        """One text's query vector [D], through the batcher (tests compare it with unbatched)."""
        return (await self._embed_batch(text)).tolist()

    async def search(self, query: str, k: int) -> dict[str, Any]:
        """Free-text query -> {"found": up to k candidates {item_id, retrieval_score, source}, best first:
        the index's nearest and catalog items newer than it (up to the fresh source's quota), fused with
        BM25's when the index has one (user_config `search`), and the index_version / model_version
        that found them}."""
        vector = await self._embed_batch(query)
        found = await asyncio.to_thread(self.model.search_candidates, vector, query, k, self.cfg.sources.fresh.quota,
                                        self.cfg.search)
        return {"found": found, **self.served}

    async def recommend(self, history: list[str], k: int) -> list[tuple[str, float]]:
        """Item ids, oldest first -> up to k (item_id, score) from ANN alone; [] when no id is known."""
        return await asyncio.to_thread(self.model.recommend, history, k)

    async def recommend_candidates(self, history: list[str], k: int) -> dict[str, Any]:
        """Item ids, oldest first -> {"candidates": up to k merged [{item_id, retrieval_score, source}],
        "personal": whether any history-based source (not popularity alone) found something, and the
        index_version / model_version}."""
        # The history text's vector feeds ANN without a sequence tower, and the fresh items; skip
        # the forward pass when neither needs it.
        fresh = self.cfg.sources.fresh.quota > 0 and len(self.model.fresh) > 0
        need_text = self.model.user_tower is None or fresh
        text = self.model.history_text(history) if need_text else ""
        vector = await self._embed_batch(text) if text else None
        cands, personal = await asyncio.to_thread(self.model.recommend_candidates, history, self.cfg.sources, k,
                                                  vector)
        return {"candidates": cands, "personal": personal, **self.served}

    async def similar(self, item_id: str, k: int) -> dict[str, Any]:
        """{"found": items nearest to an item (itself left out), None when the index lacks it; versions}."""
        return {"found": await asyncio.to_thread(self.model.similar, item_id, k), **self.served}

    async def complements(self, item_ids: list[str], k: int) -> dict[str, Any]:
        """{"found": items nearest to the mean direction of `item_ids` (those left out); versions}."""
        return {"found": await asyncio.to_thread(self.model.complements, item_ids, k), **self.served}

    async def score_items(self, history: list[str], item_ids: list[str]) -> dict[str, Any]:
        """{"found": the user's retrieval score for each given item, None when the history has no known
        id; versions}."""
        return {"found": await asyncio.to_thread(self.model.score_items, history, item_ids), **self.served}

    async def batch_stats(self) -> dict[str, Any]:
        """Sizes of the recent encoder batches (oldest first) and the batching settings."""
        return {"batch_sizes": list(self.batch_sizes), "max_batch_size": self.cfg.max_batch_size,
                "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s}

    async def info(self) -> dict:
        """What this replica serves: index version, item counts, model path."""
        return {"index_version": self.model.index.version, "items": self.model.size,
                "fresh_items": len(self.model.fresh),
                "model_path": str(self.model.index.manifest.get("model_path")),
                "user_tower": "sequence" if self.model.user_tower is not None else "text"}
