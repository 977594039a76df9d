"""Features of a (user history, candidate) pair for the learned recommendation ranker. No Ray.

The hand-set merge (recsys.serve.candidate_sources.merge_candidates) keeps one score per candidate,
its best weighted source; the learned ranker sees every source's view of it instead, plus how close it
is to the very last item (next-item behaviour leans on the last step), how long the history is and how
popular the item is at the end of the log (recent popularity, for time shift). All
from the behaviour log and the encoder: no categories, brands or timestamps. The Retriever computes
them for /v1/recommend's merged candidates (RetrievalModel.recommend_candidates) and the Ranker
appends popularity; jobs/train_recommend_ranker.py computes them with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from recsys.models.recent_popularity import RECENT_FEATURES

RECOMMEND_RETRIEVER_FEATURES = (
    "merged",             # the hand-set merge's score (best weighted source)
    "ann_score",          # user vector . item vector (the served user tower's space), every candidate
    "ann_rank",           # 1-based rank in the ANN list; quota + 1 when absent
    "cooc_score",         # co-occurrence score / the list's best (0 when absent)
    "cooc_rank",          # 1-based rank in the co-occurrence list; quota + 1 when absent
    "ease_score",         # EASE item-to-item score / the list's best (0 when absent)
    "ease_rank",          # 1-based rank in the EASE list; quota + 1 when absent
    "last_item_cosine",   # cosine of the item's text vector and the history's last item's
    "history_cosine",     # cosine with the recency-weighted direction of the last 5 items' text vectors
    "fresh",              # 1 for an item newer than the index
    "history_length",     # known history items
    *RECENT_FEATURES,     # recent popularity: the end of the log's sequences (recsys.models.recent_popularity)
)
RECOMMEND_FEATURES = (*RECOMMEND_RETRIEVER_FEATURES, "popularity")   # popularity appended by the Ranker
RECOMMEND_RANKER_TYPE = "recommend_ltr"   # a recommendation ranker manifest's `type`


def source_columns(item_ids: Sequence[str], pairs: Sequence[tuple[str, float]], quota: int,
                   scale_by_best: bool) -> tuple[np.ndarray, np.ndarray]:
    """One source's (item_id, score) list, best first -> (score [C], 1-based rank [C]) for the candidates;
    absent ones get score 0 and rank quota + 1."""
    best = max((float(s) for _, s in pairs), default=0.0)
    first: dict[str, tuple[int, float]] = {}
    for r, (item, s) in enumerate(pairs, start=1):
        first.setdefault(item, (r, float(s) / best if scale_by_best and best > 0 else float(s)))
    score = np.array([first.get(i, (0, 0.0))[1] for i in item_ids], dtype=np.float32)
    rank = np.array([first.get(i, (quota + 1, 0.0))[0] for i in item_ids], dtype=np.float32)
    return score, rank


def recommend_feature_rows(cands: Sequence[Mapping], by_source: Mapping[str, Sequence[tuple[str, float]]],
                           quotas: Mapping[str, int], ann_score: Sequence[float], last_cosine: Sequence[float],
                           history_cosine: Sequence[float], history_length: int,
                           recent: np.ndarray | None = None) -> np.ndarray:
    """Merged candidates [{item_id, retrieval_score, source}] -> float32 [C, len(RECOMMEND_RETRIEVER_FEATURES)].
    `recent`: RecentPopularity.columns of the candidates [C, len(RECENT_FEATURES)] (zeros when None)."""
    ids = [c["item_id"] for c in cands]
    _, ann_rank = source_columns(ids, by_source.get("ann", ()), quotas.get("ann", 0), scale_by_best=False)
    cooc, cooc_rank = source_columns(ids, by_source.get("cooccurrence", ()), quotas.get("cooccurrence", 0),
                                     scale_by_best=True)
    ease, ease_rank = source_columns(ids, by_source.get("ease", ()), quotas.get("ease", 0), scale_by_best=True)
    columns = [np.array([c["retrieval_score"] for c in cands], np.float32), np.asarray(ann_score, np.float32),
               ann_rank, cooc, cooc_rank, ease, ease_rank, np.asarray(last_cosine, np.float32),
               np.asarray(history_cosine, np.float32),
               np.array([c["source"] == "fresh" for c in cands], np.float32),
               np.full(len(ids), history_length, np.float32)]
    recent = np.zeros((len(ids), len(RECENT_FEATURES)), np.float32) if recent is None else recent
    columns += [recent[:, j] for j in range(len(RECENT_FEATURES))]
    return np.stack(columns, axis=1).astype(np.float32).reshape(len(ids), len(RECOMMEND_RETRIEVER_FEATURES))
