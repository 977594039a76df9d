"""Candidate sources for /v1/recommend and their per-request merge. No Ray.

Sources (each a list of (item_id, score), best first):
- "ann": the user tower's nearest items in the Faiss index (personal, needs a known history);
- "cooccurrence": items bought/viewed near the history's items in the data version's sequences
  (recsys.eval.baselines.CooccurrenceRecommender, the offline baseline, reused as is);
- "ease": items the learned item-to-item weights (recsys.models.ease) give the recency-weighted history;
- "similar": the index's items nearest (text vectors) to the recency-weighted direction of the history's
  last items (ItemVectors.recent_direction): one Faiss search, no encoder pass;
- "fresh": catalog items the index lacks, embedded from their text with the item tower at
  Retriever start-up and scored against the history's text vector (cold-start items);
- "popular": the most interacted-with items (cold-start users, and filler for everyone).

Scores of different sources are not comparable (a cosine, a sum of 1/distance, a rank). The
cosine sources (ann, fresh) keep their cosines (clipped at 0): scaling them by their own best would
lift the best of a weak list (a lone new gift card for a cookware shopper) to full marks. The others
are scaled to (0, 1] by their own best score. Then each is multiplied by the source's weight; a
source contributes at most its quota. Each item keeps the source that gave it the highest
merged score: that is the `source` its explanation reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from recsys.eval.baselines import CooccurrenceRecommender
from recsys.index.hybrid import HybridSearchConfig
from recsys.models.ease import EaseRecommender

SOURCE_NAMES = ("ann", "cooccurrence", "ease", "similar", "fresh", "popular")
# Sources that find something for a known history (popular is the filler list).
PERSONAL_SOURCES = ("ann", "cooccurrence", "ease", "similar", "fresh")
# Sources whose scores are already cosines in [-1, 1], comparable across requests and with each other.
COSINE_SOURCES = frozenset({"ann", "similar", "fresh"})


class SourceQuota(BaseModel, extra="forbid"):
    """How much one source may contribute to a request's candidates."""

    quota: int = Field(default=100, ge=0, le=1000,
                       description="Most candidates taken from this source per request (0 = off).")
    weight: float = Field(default=1.0, ge=0, le=10,
                          description="Multiplies the source's scores after scaling them to (0, 1].")


def _quota(quota: int, weight: float) -> Any:
    return Field(default_factory=lambda: SourceQuota(quota=quota, weight=weight))


class SourcesConfig(BaseModel, extra="forbid"):
    """Per-source quota and weight (Retriever user_config `sources:`). The defaults let ANN lead,
    co-occurrence follow closely, new items show up, and popular items only fill the tail."""

    ann: SourceQuota = _quota(100, 1.0)
    cooccurrence: SourceQuota = _quota(50, 0.8)
    ease: SourceQuota = _quota(100, 0.9)
    similar: SourceQuota = _quota(100, 0.7)
    fresh: SourceQuota = _quota(20, 0.6)
    popular: SourceQuota = _quota(20, 0.3)


def scale_scores(pairs: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Scores divided by the list's best score, so the best is 1.0. A list whose best score is
    not positive (all-zero popularity, negative cosines) gets rank scores 1, 1/2, 1/3, ... instead,
    which keeps its order without inventing a scale."""
    if not pairs:
        return []
    top = max(float(s) for _, s in pairs)
    if top > 0:
        return [(i, max(float(s), 0.0) / top) for i, s in pairs]
    return [(i, 1.0 / (r + 1)) for r, (i, _) in enumerate(pairs)]


def merge_candidates(by_source: Mapping[str, Sequence[tuple[str, float]]], cfg: SourcesConfig,
                     k: int) -> list[dict[str, Any]]:
    """{source: [(item_id, score)] best first} -> up to k Ranker candidates
    [{item_id, retrieval_score, source}], best merged score first, one per item.

    An item several sources propose keeps its best weighted score and that source (ties go to the
    source listed first in SOURCE_NAMES, i.e. the more personal one). Unknown source names raise.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    unknown = set(by_source) - set(SOURCE_NAMES)
    if unknown:
        raise ValueError(f"unknown candidate source(s) {sorted(unknown)}; known: {list(SOURCE_NAMES)}")
    best: dict[str, tuple[float, str]] = {}
    for name in SOURCE_NAMES:
        quota: SourceQuota = getattr(cfg, name)
        pairs = list(by_source.get(name, ()))
        if quota.quota == 0 or not pairs:
            continue
        taken = pairs[:quota.quota]
        scaled = ([(i, max(float(s), 0.0)) for i, s in taken] if name in COSINE_SOURCES
                  else scale_scores(taken))
        for item_id, score in scaled:
            merged = quota.weight * score
            if item_id not in best or merged > best[item_id][0]:
                best[item_id] = (merged, name)
    # Sort by score, then by source order and id so equal scores come out the same on every replica.
    order = sorted(best.items(), key=lambda kv: (-kv[1][0], SOURCE_NAMES.index(kv[1][1]), kv[0]))
    return [{"item_id": i, "retrieval_score": s, "source": src} for i, (s, src) in order[:k]]


def drop_items(cands: Iterable[dict[str, Any]], exclude: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Candidates without `exclude` (e.g. what the user bought); returns (kept, how many dropped)."""
    banned = set(exclude)
    cands = list(cands)
    kept = [c for c in cands if c["item_id"] not in banned]
    return kept, len(cands) - len(kept)


class ItemToItemSource:
    """Item ids in, item ids out, around a position-based item-to-item model fitted on the histories
    (co-occurrence, EASE): `model` has fit(position sequences, n_items) and score(position histories) -> [U, N]."""

    def __init__(self, histories: Iterable[Sequence[str]], model: Any, min_score: float = 0.0):
        seqs = [list(h) for h in histories]
        self.item_ids = sorted({i for h in seqs for i in h})
        self.position = {item: p for p, item in enumerate(self.item_ids)}
        self.min_score = min_score
        self.model = model
        if self.item_ids:
            self.model.fit([[self.position[i] for i in h] for h in seqs], len(self.item_ids))

    def __len__(self) -> int:
        return len(self.item_ids)

    def neighbours(self, history: Sequence[str], k: int) -> list[tuple[str, float]]:
        """History (oldest first) -> up to k (item_id, score), best first; items scoring at most min_score
        and history items are left out."""
        known = [self.position[i] for i in history if i in self.position]
        if not known or k < 1:
            return []
        scores = self.model.score([known])[0]   # [N]
        scores[known] = 0.0
        n = min(k, int((scores > self.min_score).sum()))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.item_ids[p], float(scores[p])) for p in top]


def cooccurrence_source(histories: Iterable[Sequence[str]], window: int = 3, last_n: int = 5) -> ItemToItemSource:
    """Co-occurrence over the histories. Its popularity tie-break adds at most 1e-6, so only scores above
    1e-3 are co-occurrences."""
    return ItemToItemSource(histories, CooccurrenceRecommender(window, last_n), min_score=1e-3)


def ease_source(histories: Iterable[Sequence[str]]) -> ItemToItemSource:
    """EASE item-to-item weights over the histories (recsys.models.ease, its defaults)."""
    return ItemToItemSource(histories, EaseRecommender())


class RetrieverConfig(BaseModel, extra="forbid"):
    """The Retriever's user_config: candidate sources and the encoder's dynamic batching."""

    sources: SourcesConfig = Field(default_factory=SourcesConfig,
                                   description="Quota and weight per /v1/recommend candidate source.")
    search: HybridSearchConfig = Field(default_factory=HybridSearchConfig,
                                       description="/v1/search: depths and weights of the dense and BM25 lists "
                                                   "fused by reciprocal rank (a depth of 0 turns that list off).")
    max_batch_size: int = Field(default=16, ge=1, le=512,
                                description="Most query/history texts encoded in one forward pass.")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, le=1,
                                        description="How long a batch waits to fill before it runs.")
