"""Features of a (query, candidate) pair for the learned search ranker. No Ray.

Only signals every catalog and query log has (no categories, brands or timestamps): how the dense and
the lexical retriever each scored and ranked the item, how much of the query the item's text contains,
and how popular the item is. The Retriever computes all but popularity for its fused candidates
(RetrievalModel.search_candidates); the Ranker appends popularity from its counts. The search ranker's
training job computes them with the same code over its training queries, so what it learns from is
what it is served.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# In this order in every row; a trained ranker's manifest stores the names and the Ranker checks them.
RETRIEVER_FEATURES = (
    "rrf",            # the fused reciprocal-rank score in (0, 1] (recsys.index.hybrid)
    "ann_score",      # cosine of query and item vectors (computed for every candidate, listed or not)
    "ann_rank",       # 1-based rank in the dense list; depth + 1 when the dense list did not hold it
    "bm25_score",     # BM25 score of the item for the query (0: no query word in its text)
    "bm25_share",     # bm25_score / the query's best BM25 score over the catalog (0 when nothing matched)
    "bm25_rank",      # 1-based rank in the BM25 list; depth + 1 when absent
    "coverage",       # share of the query's distinct words (stemmed) found in the item's text
    "query_terms",    # distinct query words BM25 knows (0: stopwords, punctuation or unknown words only)
)
SEARCH_FEATURES = (*RETRIEVER_FEATURES, "popularity")   # log1p(count) / log1p(max count), appended by the Ranker
SEARCH_RANKER_TYPE = "search_ltr"   # a search ranker manifest's `type` (train writes it, serve checks it)


def term_rows_stats(term_rows: np.ndarray, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-term BM25 rows [T, N] (one row per distinct query word; T may be 0) and candidate positions
    (-1 = an item the lexical index lacks) -> (bm25 score [C], coverage [C], the query's best score)."""
    pos = np.asarray(positions, dtype=np.int64)
    known = pos >= 0
    if term_rows.shape[0] == 0:
        return np.zeros(len(pos), np.float32), np.zeros(len(pos), np.float32), 0.0
    total = term_rows.sum(axis=0)                                    # [N]
    cols = term_rows[:, np.where(known, pos, 0)]                     # [T, C]
    score = np.where(known, total[np.where(known, pos, 0)], 0.0)
    coverage = np.where(known, (cols > 0).mean(axis=0), 0.0)
    return score.astype(np.float32), coverage.astype(np.float32), float(total.max())


def ranks_in(item_ids: Sequence[str], ranked: Sequence[str], depth: int) -> np.ndarray:
    """1-based rank of each item in `ranked` (its first occurrence), depth + 1 for the absent ones."""
    first: dict[str, int] = {}
    for r, item in enumerate(ranked, start=1):
        first.setdefault(item, r)
    return np.array([first.get(i, depth + 1) for i in item_ids], dtype=np.float32)


def retriever_feature_rows(rrf: Sequence[float], ann_score: Sequence[float], ann_rank: np.ndarray,
                           bm25_score: np.ndarray, best_bm25: float, bm25_rank: np.ndarray,
                           coverage: np.ndarray, query_terms: int) -> np.ndarray:
    """-> float32 [C, len(RETRIEVER_FEATURES)], columns in RETRIEVER_FEATURES order."""
    share = bm25_score / best_bm25 if best_bm25 > 0 else np.zeros_like(bm25_score)
    columns = [np.asarray(rrf, np.float32), np.asarray(ann_score, np.float32), ann_rank, bm25_score, share,
               bm25_rank, coverage, np.full(len(bm25_score), query_terms, np.float32)]
    return np.stack(columns, axis=1).astype(np.float32)


def popularity_column(counts: Sequence[float] | np.ndarray, max_count: float) -> np.ndarray:
    """log1p(count) / log1p(max count) [C]; 0 everywhere for a catalog with no counts."""
    denom = np.log1p(max_count)
    c = np.log1p(np.asarray(counts, dtype=np.float64))
    return (c / denom if denom > 0 else np.zeros_like(c)).astype(np.float32)
