"""Retrieve stage: query / history text -> encoder -> Faiss -> candidate (item_id, score) pairs;
item ids -> their stored vectors -> neighbours (similar items, cart complements) or scores.

The query side must embed with the very model the index was built with, so the model
path comes from the index manifest, never from a separate setting that could drift.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
from ray import serve

from recsys.data.text import history_text_for_items
from recsys.index.faiss_index import ItemIndex, load_item_index
from recsys.models.encoder import TextEmbedder, query_tower_path
from recsys.models.sequence_tower import USER_TOWER_DIR, SequenceTowerInput
from recsys.serve.catalog import CatalogLookup
from recsys.serve.item_vectors import ItemVectors

logger = logging.getLogger("ray.serve")


class RetrievalModel:
    """Index + query encoder + item titles; plain Python so it can be used outside Serve."""

    def __init__(self, index_dir: str | Path, catalog_path: str | Path,
                 query_max_length: int = 128, max_history_items: int = 8):
        self.index: ItemIndex = load_item_index(Path(index_dir))
        model_path = self.index.manifest.get("model_path")
        if not model_path:
            raise ValueError(f"{index_dir}/manifest.json has no model_path: cannot embed queries "
                             f"with the model the items were embedded with")
        self.embedder = TextEmbedder(query_tower_path(model_path), max_length=query_max_length)
        if self.embedder.dim != self.index.index.d:
            raise ValueError(f"model {model_path} gives {self.embedder.dim}-d vectors but index "
                             f"{index_dir} holds {self.index.index.d}-d vectors")
        self.catalog = CatalogLookup.from_parquet(catalog_path)
        self.max_history_items = max_history_items
        self.user_tower = None
        # Item-to-item answers use the text vectors (as search does); user-to-item scores use the
        # space the user vectors live in: the sequence tower's item vectors when it serves.
        self.text_vectors = ItemVectors(self.index.index, self.index.item_ids)
        self.user_space_vectors = self.text_vectors
        if self.index.recommend_index is not None:
            self.user_tower = SequenceTowerInput(Path(model_path) / USER_TOWER_DIR)
            self.user_space_vectors = ItemVectors(self.index.recommend_index, self.index.item_ids)

    @property
    def size(self) -> int:
        return len(self.index.item_ids)

    def history_text(self, history: list[str]) -> str:
        """Item ids, oldest first -> query-tower text (newest first, unknown ids skipped)."""
        return history_text_for_items(history, self.catalog.titles, self.max_history_items)

    def retrieve(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        """texts [Q] -> per text, up to k (item_id, cosine score) pairs, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self._search(self.embedder.embed(texts), k, recommend=False)   # [Q, D] unit rows

    def recommend(self, history: list[str], k: int) -> list[tuple[str, float]]:
        """Item ids, oldest first -> up to k (item_id, score): the sequence user tower when the index was
        built for it, else the text tower over the history's titles; [] when no id is known."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vector = self.user_vector(history)
        return [] if vector is None else self._search(vector[None], k, recommend=True)[0]

    def user_vector(self, history: list[str]) -> np.ndarray | None:
        """Item ids, oldest first -> the user's query vector [D] (sequence tower, else the text tower
        over the history's titles); None when no id is known."""
        if self.user_tower is not None:
            return self.user_tower.user_vector(history)
        text = self.history_text(history)
        return self.embedder.embed([text])[0] if text else None

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """Up to k (item_id, cosine) nearest to the item's text vector, itself left out; None when
        the index does not hold the item."""
        if item_id not in self.text_vectors:
            return None
        _, vecs = self.text_vectors.vectors([item_id])
        return self.text_vectors.search(vecs[0], k, exclude=[item_id])

    def complements(self, item_ids: list[str], k: int) -> list[tuple[str, float]]:
        """Up to k (item_id, cosine to the items' mean direction), the items themselves left out;
        [] when the index holds none of them."""
        centre = self.text_vectors.mean_direction(item_ids)
        return [] if centre is None else self.text_vectors.search(centre, k, exclude=item_ids)

    def score_items(self, history: list[str], item_ids: list[str]) -> list[tuple[str, float]] | None:
        """(item_id, the user's retrieval score) for the given items the index holds, in their order;
        None when the history gives no user vector."""
        vector = self.user_vector(history)
        return None if vector is None else self.user_space_vectors.score(vector, item_ids)

    def _search(self, vectors: np.ndarray, k: int, recommend: bool) -> list[list[tuple[str, float]]]:
        scores, ids = self.index.search(vectors, k, recommend=recommend)   # [Q, k'], Q lists of ids
        return [[(item, float(s)) for item, s in zip(row_ids, np.asarray(row_scores))]
                for row_ids, row_scores in zip(ids, scores)]


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Retriever:
    """Serve shell around RetrievalModel; one encoder + index copy per replica."""

    def __init__(self, index_dir: str, catalog_path: str, query_max_length: int = 128,
                 max_history_items: int = 8):
        self.model = RetrievalModel(index_dir, catalog_path, query_max_length, max_history_items)
        logger.info("Retriever ready: index %s (%d items), model %s", self.model.index.version,
                    self.model.size, self.model.index.manifest.get("model_path"))

    # Later: batch concurrent requests into one encoder forward with
    #   @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    #   async def _retrieve_batch(self, texts: list[str]) -> list[list[tuple[str, float]]]
    # (all requests in a batch must share k: retrieve at the deployment's max k, cut per
    # request). At concurrency 1 on 2 CPUs batching only adds the wait, so not yet.
    async def _retrieve_one(self, text: str, k: int) -> list[tuple[str, float]]:
        # The forward pass is CPU-bound; a thread keeps the replica's event loop answering
        # health checks and queued requests meanwhile (torch releases the GIL).
        results = await asyncio.to_thread(self.model.retrieve, [text], k)
        return results[0]

    async def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Free-text query -> up to k (item_id, score), best first."""
        return await self._retrieve_one(query, k)

    async def recommend(self, history: list[str], k: int) -> list[tuple[str, float]]:
        """Item ids, oldest first -> up to k (item_id, score); [] when no id is in the catalog."""
        return await asyncio.to_thread(self.model.recommend, history, k)

    async def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """Items nearest to an item (itself left out); None when the index lacks it."""
        return await asyncio.to_thread(self.model.similar, item_id, k)

    async def complements(self, item_ids: list[str], k: int) -> list[tuple[str, float]]:
        """Items nearest to the mean direction of `item_ids` (those left out)."""
        return await asyncio.to_thread(self.model.complements, item_ids, k)

    async def score_items(self, history: list[str], item_ids: list[str]) -> list[tuple[str, float]] | None:
        """The user's retrieval score for each given item; None when the history has no known id."""
        return await asyncio.to_thread(self.model.score_items, history, item_ids)

    async def info(self) -> dict:
        """What this replica serves: index version, item count, model path."""
        return {"index_version": self.model.index.version, "items": self.model.size,
                "model_path": str(self.model.index.manifest.get("model_path")),
                "user_tower": "sequence" if self.model.user_tower is not None else "text"}
