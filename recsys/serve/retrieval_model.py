"""The Retriever's in-process core: query / history text -> encoder -> Faiss -> (item_id, score)
pairs; item ids -> stored vectors -> neighbours; and the extra candidate sources of
/v1/recommend (co-occurrence, fresh items, popular). No Ray: retrieve.py is the Serve shell.

The query side must embed with the very model the index was built with, so the model
path comes from the index manifest, never from a separate setting that could drift.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.text import history_text_for_items
from recsys.index.bm25 import BM25Index
from recsys.index.faiss_index import ItemIndex, load_item_index
from recsys.index.hybrid import HybridSearchConfig, fuse_ranked_lists
from recsys.models.encoder import TextEmbedder, query_tower_path
from recsys.models.quantize import Quantize
from recsys.models.recent_popularity import RecentPopularity
from recsys.models.recommend_features import recommend_feature_rows
from recsys.models.search_features import ranks_in, retriever_feature_rows, term_rows_stats
from recsys.models.sequence_tower import USER_TOWER_DIR, SequenceTowerInput
from recsys.serve.candidate_sources import (
    PERSONAL_SOURCES,
    SOURCE_NAMES,
    SourcesConfig,
    cooccurrence_source,
    ease_source,
    merge_candidates,
)
from recsys.serve.catalog import POPULARITY_FILE, SEQUENCES_DIR, CatalogLookup, load_popularity, load_user_histories
from recsys.serve.fresh_items import FreshItems, load_fresh_items, unindexed_item_texts
from recsys.serve.item_vectors import ItemVectors

logger = logging.getLogger(__name__)


class RetrievalModel:
    """Index + query encoder + item titles; plain Python so it can be used outside Serve."""

    def __init__(self, index_dir: str | Path, catalog_path: str | Path,
                 query_max_length: int = 128, max_history_items: int = 8,
                 data_dir: str | Path | None = None, embed_fresh_items: bool = True, quantize: Quantize = "none"):
        """quantize="int8": the query encoder runs int8 on CPU (recsys.models.quantize); the index's item
        vectors stay what build_index wrote, and fresh items are embedded in fp32 like them."""
        self.index: ItemIndex = load_item_index(Path(index_dir))
        model_path = self.index.manifest.get("model_path")
        if not model_path:
            raise ValueError(f"{index_dir}/manifest.json has no model_path: cannot embed queries "
                             f"with the model the items were embedded with")
        self.embedder = TextEmbedder(query_tower_path(model_path), max_length=query_max_length, quantize=quantize)
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
        self.fresh = self._load_fresh(catalog_path, str(model_path), embed_fresh_items)
        self.lexical, self.lexical_ids = self._load_lexical(catalog_path)
        self.lexical_position = {item: p for p, item in enumerate(self.lexical_ids)}
        # Co-occurrence and popularity come from the data version beside the catalog (sequences/,
        # popularity.parquet); without data_dir those sources stay empty.
        self.cooccurrence = cooccurrence_source([])
        self.ease = ease_source([])
        self.popular: list[str] = []
        self.recent = RecentPopularity([])
        if data_dir is not None:
            histories = list(load_user_histories(Path(data_dir) / SEQUENCES_DIR).values())
            self.cooccurrence, self.ease = cooccurrence_source(histories), ease_source(histories)
            self.recent = RecentPopularity(histories)
            ranked, _ = load_popularity(Path(data_dir) / POPULARITY_FILE)
            self.popular = [i for i in ranked if self.catalog.in_stock(i)]

    def _load_fresh(self, catalog_path: str | Path, model_path: str, enabled: bool) -> FreshItems:
        """Catalog items the index lacks, embedded with the item tower (the index's own model)."""
        item_max_length = int(self.index.manifest.get("item_max_length", 48))
        item_embedder = self.embedder   # shared towers: the query encoder is the item encoder
        if enabled and (query_tower_path(model_path) != model_path or self.embedder.quantize != "none"):
            item_embedder = TextEmbedder(model_path, max_length=item_max_length)
        indexed = set(self.index.item_ids.tolist()) if enabled else set(self.catalog.titles)
        return load_fresh_items(catalog_path, indexed, self.embedder.dim,
                                lambda texts: item_embedder.embed(texts, max_length=item_max_length))

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

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Query vectors [Q, D] (already embedded, e.g. by a batch) -> per row up to k (item_id, score)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self._search(vectors, k, recommend=False)

    def search_candidates(self, vector: np.ndarray, query: str, k: int, fresh_quota: int,
                          hybrid: HybridSearchConfig | None = None) -> list[dict[str, Any]]:
        """A query's vector [D] and text -> up to k candidates {item_id, retrieval_score, source}, best first.

        Dense: the index's nearest ("ann") and up to fresh_quota items newer than the index ("fresh"),
        one cosine scale (a fresh item ranks where its text puts it). With a BM25 index and `hybrid`
        (BM25 depth > 0), the dense list and BM25's are fused by reciprocal rank (recsys.index.hybrid):
        source "ann", "bm25", "ann+bm25" or "fresh", retrieval_score the fused score in (0, 1], and
        `features` (recsys.models.search_features.RETRIEVER_FEATURES) for a learned search ranker. A query
        BM25 finds nothing for (stopwords, punctuation, unknown words) gets the dense list alone."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        fused = hybrid is not None and self.lexical is not None and hybrid.bm25.depth > 0
        dense_depth = max(hybrid.ann.depth, 1) if fused and hybrid is not None else k
        found = [(s, i, "ann") for i, s in self._search(vector[None], dense_depth, recommend=False)[0]]
        found += [(s, i, "fresh") for i, s in self.fresh.search(vector, min(fresh_quota, dense_depth))]
        found.sort(key=lambda t: -t[0])
        if not fused or hybrid is None:
            return [{"item_id": i, "retrieval_score": s, "source": source} for s, i, source in found[:k]]
        dense = [i for _, i, _ in found[:dense_depth]] if hybrid.ann.depth else []
        lexical = [i for i, _ in self.lexical_search(query, hybrid.bm25.depth)]
        cands = fuse_ranked_lists({"ann": dense, "bm25": lexical},
                                  {"ann": hybrid.ann.weight, "bm25": hybrid.bm25.weight}, hybrid.rrf_k)[:k]
        fresh = {i: s for s, i, source in found if source == "fresh"}
        rows = self._search_features(vector, query, cands, dense, lexical, fresh, hybrid)
        return [{**c, "source": "fresh" if c["item_id"] in fresh else c["source"], "features": row.tolist()}
                for c, row in zip(cands, rows)]

    def _search_features(self, vector: np.ndarray, query: str, cands: list[dict[str, Any]], dense: list[str],
                         lexical: list[str], fresh: dict[str, float], hybrid: HybridSearchConfig) -> np.ndarray:
        """[C, len(RETRIEVER_FEATURES)] for the fused candidates (recsys.models.search_features)."""
        ids = [c["item_id"] for c in cands]
        cosine = dict(self.text_vectors.score(vector, [i for i in ids if i not in fresh]))
        assert self.lexical is not None
        term_rows = self.lexical.term_rows(query)   # [T, N]
        bm25, coverage, best = term_rows_stats(term_rows, [self.lexical_position.get(i, -1) for i in ids])
        return retriever_feature_rows([c["retrieval_score"] for c in cands],
                                      [fresh.get(i, cosine.get(i, 0.0)) for i in ids],
                                      ranks_in(ids, dense, hybrid.ann.depth), bm25, best,
                                      ranks_in(ids, lexical, hybrid.bm25.depth), coverage, term_rows.shape[0])

    def lexical_search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Up to k (item_id, BM25 score) sharing a word with the query, best first; [] without a BM25 index."""
        if self.lexical is None:
            return []
        return [(self.lexical_ids[p], s) for p, s in self.lexical.search(query, k)]

    def _load_lexical(self, catalog_path: str | Path) -> tuple[BM25Index | None, list[str]]:
        """The index version's BM25 and its row ids; when the catalog holds items newer than the index,
        BM25 over the whole catalog instead (same settings; seconds for 50k items), so a new item is
        found by its words as well as by its vector."""
        stored = self.index.lexical
        if stored is None or not len(self.fresh):
            return stored, [str(i) for i in self.index.item_ids]
        ids, texts = unindexed_item_texts(catalog_path, indexed=())   # every catalog item
        logger.info("BM25 over the whole catalog (%d items, %d newer than the index)", len(ids), len(self.fresh))
        return BM25Index(texts, **stored.settings), ids

    def recommend_candidates(self, history: list[str], sources: SourcesConfig, k: int,
                             text_vector: np.ndarray | None = None) -> tuple[list[dict[str, Any]], bool]:
        """History (oldest first) -> (up to k merged candidates {item_id, retrieval_score, source, features},
        whether any personal source found something). `features` are RECOMMEND_RETRIEVER_FEATURES: every
        source's view of the candidate, for a learned recommendation ranker (recsys.models.recommend_features)."""
        quotas = {name: getattr(sources, name).quota for name in SOURCE_NAMES}
        text_vector = self._history_text_vector(history, quotas, text_vector)
        user = self.user_tower.user_vector(history) if self.user_tower is not None else text_vector
        by_source = self.candidate_sources(history, quotas, text_vector, user)
        if not any(by_source.get(s) for s in PERSONAL_SOURCES):
            return [], False
        cands = merge_candidates(by_source, sources, k)
        ids = [c["item_id"] for c in cands]
        ann = dict(self.user_space_vectors.score(user, ids)) if user is not None else {}
        last_cos = self._cosines(self.text_vectors.recent_direction(history, last_n=1), ids)
        recent_cos = self._cosines(self.text_vectors.recent_direction(history), ids)
        rows = recommend_feature_rows(cands, by_source, quotas, [ann.get(i, 0.0) for i in ids], last_cos, recent_cos,
                                      sum(i in self.catalog.titles for i in history), self.recent.columns(ids))
        return [{**c, "features": row.tolist()} for c, row in zip(cands, rows)], True

    def _cosines(self, direction: np.ndarray | None, ids: list[str]) -> list[float]:
        """The text vectors' cosine with `direction` per id (0 for ids the index lacks, or no direction)."""
        found = dict(self.text_vectors.score(direction, ids)) if direction is not None else {}
        return [found.get(i, 0.0) for i in ids]

    def _history_text_vector(self, history: list[str], quotas: dict[str, int],
                             text_vector: np.ndarray | None) -> np.ndarray | None:
        """The history text's query-tower vector when fresh items or a text-tower ANN need it."""
        need_text = (quotas.get("fresh", 0) > 0 and len(self.fresh) > 0) or self.user_tower is None
        if text_vector is None and need_text:
            text = self.history_text(history)
            text_vector = self.embedder.embed([text])[0] if text else None
        return text_vector

    def candidate_sources(self, history: list[str], quotas: dict[str, int], text_vector: np.ndarray | None = None,
                          user_vector: np.ndarray | None = None) -> dict[str, list[tuple[str, float]]]:
        """History (oldest first) -> {source: up to quota (item_id, score)} for merge_candidates.

        `text_vector` is the history text's query-tower vector [D] when the caller already has it
        (the Retriever embeds it in a batch); fresh items are scored against it, as is ANN when no
        sequence tower serves. `user_vector`: the ANN query when the caller has it already."""
        out: dict[str, list[tuple[str, float]]] = {}
        text_vector = self._history_text_vector(history, quotas, text_vector)
        if quotas.get("ann", 0) > 0:
            user = user_vector
            if user is None:
                user = self.user_tower.user_vector(history) if self.user_tower is not None else text_vector
            out["ann"] = [] if user is None else self._search(user[None], quotas["ann"], recommend=True)[0]
        if quotas.get("cooccurrence", 0) > 0:
            out["cooccurrence"] = self.cooccurrence.neighbours(history, quotas["cooccurrence"])
        if quotas.get("ease", 0) > 0:
            out["ease"] = self.ease.neighbours(history, quotas["ease"])
        if quotas.get("similar", 0) > 0:
            direction = self.text_vectors.recent_direction(history)
            out["similar"] = [] if direction is None else self.text_vectors.search(direction, quotas["similar"],
                                                                                   exclude=history)
        if quotas.get("fresh", 0) > 0:
            out["fresh"] = self.fresh.search(text_vector, quotas["fresh"])
        if quotas.get("popular", 0) > 0:
            seen = set(history)
            top = [i for i in self.popular[:quotas["popular"] + len(seen)] if i not in seen]
            # Rank scores, not counts: popularity only fills the tail, whatever the head's counts.
            out["popular"] = [(i, 1.0 / (r + 1)) for r, i in enumerate(top[:quotas["popular"]])]
        return out

    def _search(self, vectors: np.ndarray, k: int, recommend: bool) -> list[list[tuple[str, float]]]:
        scores, ids = self.index.search(vectors, k, recommend=recommend)   # [Q, k'], Q lists of ids
        return [[(item, float(s)) for item, s in zip(row_ids, np.asarray(row_scores))]
                for row_ids, row_scores in zip(ids, scores)]
