"""Hybrid search: a dense list (query tower + Faiss) and a lexical list (BM25) fused into one. No Ray.

Why fuse by rank (reciprocal-rank fusion, Cormack et al. 2009), not by score: a cosine and a BM25
score share no unit (BM25 grows with rare query words and has no upper bound), so any weighted sum of
raw scores needs a per-catalog calibration; ranks need none. RRF is also what Elasticsearch's and
Vespa's hybrid retrievers default to. Each list contributes weight / (rrf_k + rank) for the items it
holds (rank from 1); the sum is divided by what an item ranked first in every list that answered would
get, so the fused score is in (0, 1] and the Ranker's blend sees the same scale for every query.

Both /v1/search (recsys.serve.retrieval_model) and jobs/evaluate_search.py's `hybrid` method call
`fuse_ranked_lists`, so the offline number and the served answer come from the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

# The fused lists, in the order their names appear in an explanation's source ("ann+bm25").
HYBRID_LISTS = ("ann", "bm25")


class FusedList(BaseModel, extra="forbid"):
    """How deep one ranked list is read and how much its ranks count."""

    depth: int = Field(default=100, ge=0, le=1000,
                       description="Candidates read from this list per query (0 = the list is off).")
    weight: float = Field(default=1.0, ge=0, le=10, description="Multiplies the list's 1 / (rrf_k + rank).")


class HybridSearchConfig(BaseModel, extra="forbid"):
    """/v1/search's fusion of dense and lexical candidates (Retriever user_config `search:`)."""

    rrf_k: int = Field(default=60, ge=1, le=10_000,
                       description="RRF's rank offset: larger flattens the gap between the first ranks "
                                   "(60 is the value of the original paper and of Elasticsearch).")
    ann: FusedList = Field(default_factory=FusedList,
                           description="The query tower's nearest items (and items newer than the index).")
    bm25: FusedList = Field(default_factory=FusedList,
                            description="BM25 over the item texts the index was built from (needs an index "
                                        "built with bm25, the build_index default).")


def fuse_ranked_lists(lists: Mapping[str, Sequence[str]], weights: Mapping[str, float],
                      rrf_k: int = 60) -> list[dict[str, Any]]:
    """{list name: item ids best first} -> [{item_id, retrieval_score, source}] best first.

    `source` joins the names of the lists that hold the item, in HYBRID_LISTS order ("ann+bm25").
    Ties go to the item with the better single rank, then the earlier list, then the id, so every
    replica answers the same. Empty lists and lists of weight 0 contribute nothing; a list naming an
    item twice counts it once, at its best rank.
    """
    live = {name: items for name, items in lists.items() if items and weights.get(name, 0.0) > 0}
    best_possible = sum(weights[name] / (rrf_k + 1) for name in live)
    fused: dict[str, list[Any]] = {}   # item -> [score, best rank, first list's position, list names]
    for position, (name, items) in enumerate(live.items()):
        for rank, item_id in enumerate(items, start=1):
            entry = fused.setdefault(item_id, [0.0, rank, position, []])
            if name in entry[3]:
                continue
            entry[0] += weights[name] / (rrf_k + rank)
            entry[1] = min(entry[1], rank)
            entry[3].append(name)
    order = sorted(fused.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[1][2], kv[0]))
    return [{"item_id": item_id, "retrieval_score": score / best_possible, "source": _label(names)}
            for item_id, (score, _, _, names) in order]


def _label(names: list[str]) -> str:
    return "+".join([n for n in HYBRID_LISTS if n in names] + sorted(n for n in names if n not in HYBRID_LISTS))


def fuse_score_rows(dense: np.ndarray, lexical: np.ndarray, cfg: HybridSearchConfig) -> np.ndarray:
    """Full score rows of both lists [Q, N] -> fused scores [Q, N] (0 for items neither list reads):
    what /v1/search returns, as a matrix for offline evaluation. Lexical scores of 0 (no shared word)
    are not candidates, as in BM25Index.search."""
    out = np.zeros(dense.shape, dtype=np.float32)
    for row, (d, lx) in enumerate(zip(dense, lexical)):
        lists = {"ann": [str(p) for p in _top(d, cfg.ann.depth, positive_only=False)],
                 "bm25": [str(p) for p in _top(lx, cfg.bm25.depth, positive_only=True)]}
        for c in fuse_ranked_lists(lists, {"ann": cfg.ann.weight, "bm25": cfg.bm25.weight}, cfg.rrf_k):
            out[row, int(c["item_id"])] = c["retrieval_score"]
    return out


def _top(scores: np.ndarray, k: int, positive_only: bool) -> np.ndarray:
    """Positions of the k best scores [k'], best first (stable: ties by position)."""
    n = min(k, int((scores > 0).sum()) if positive_only else len(scores))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, n - 1)[:n]
    return top[np.argsort(-scores[top], kind="stable")]
