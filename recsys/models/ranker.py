"""Candidate scoring for the Rank stage: a transparent linear blend of the retrieval score and
log-popularity, with its own weights for search, and the blend of a cross-encoder's logits into the
top of a list. The Ranker deployment calls `score_candidates` and `blend_cross_encoder`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class BlendWeights(BaseModel, extra="forbid"):
    """Weights of the blend rank = w_r * retrieval + w_p * normalised log-popularity."""

    retrieval_weight: float = Field(
        default=1.0, description="Weight of the retrieval (embedding similarity) score."
    )
    popularity_weight: float = Field(
        default=0.1,
        description="Weight of log1p(count) / log1p(max catalog count), a value in [0, 1].",
    )


class RankerConfig(BlendWeights):
    """The blend for recommendation lists (recommend, similar, cart, promotions), and its own for search.

    Search has its own weights because its retrieval score is another scale: the reciprocal-rank
    fusion of the dense and BM25 lists (recsys.index.hybrid) packs the first few items of both lists
    within a few percent of each other, so a popularity term sized for cosines would reorder them
    (a best-seller above the product whose title is the query)."""

    search: BlendWeights = Field(
        default_factory=lambda: BlendWeights(retrieval_weight=1.0, popularity_weight=0.0),
        description="Blend for /v1/search; popularity off by default (see the class docstring).")
    rerank_depth: int = Field(
        default=20, ge=0, le=1000,
        description="With a cross-encoder served (serve args cross_encoder): the top N of /v1/recommend's "
                    "first-pass order it re-scores, in one batch; 0 = off.")
    cross_encoder_weight: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Final score of a re-scored candidate = (1 - w) * first-pass score + w * sigmoid(cross-encoder "
                    "logit); the others keep (1 - w) * first-pass score.")

    def for_kind(self, kind: str) -> BlendWeights:
        """The blend of one kind of list: "search", or anything else for recommendation lists."""
        return self.search if kind == "search" else self


def score_candidates(
    retrieval_scores: np.ndarray,
    popularity_counts: np.ndarray,
    cfg: BlendWeights,
    max_popularity: float,
) -> np.ndarray:
    """Rank scores for candidates.

    retrieval_scores: [C] (or [B, C]) float similarities from the Retrieve stage.
    popularity_counts: same shape, interaction count of each candidate item.
    max_popularity: the largest count over the whole catalog, not just these candidates,
        so a candidate's score does not depend on which other items were retrieved.
    Returns float64 array of the input shape.
    """
    retrieval = np.asarray(retrieval_scores, dtype=np.float64)
    pop = np.asarray(popularity_counts, dtype=np.float64)
    if retrieval.shape != pop.shape:
        raise ValueError(
            f"retrieval_scores shape {retrieval.shape} != popularity_counts shape {pop.shape}"
        )
    if pop.size and pop.min() < 0:
        raise ValueError(f"popularity_counts must be >= 0, got {pop.min()}")
    if max_popularity < 0 or not np.isfinite(max_popularity):
        raise ValueError(f"max_popularity must be finite and >= 0, got {max_popularity}")
    if pop.size and pop.max() > max_popularity:
        # A candidate more popular than the catalog maximum means stale popularity stats.
        raise ValueError(f"popularity_counts max {pop.max()} exceeds max_popularity {max_popularity}")
    # log1p damps the heavy tail so best-sellers do not swamp relevance; an all-zero catalog
    # (cold start) contributes no popularity signal rather than dividing by zero.
    denom = np.log1p(max_popularity)
    pop_term = np.log1p(pop) / denom if denom > 0 else np.zeros_like(pop)
    return cfg.retrieval_weight * retrieval + cfg.popularity_weight * pop_term


def top_positions(scores: np.ndarray, depth: int) -> np.ndarray:
    """Positions of the `depth` highest scores, best first (ties: the earlier position first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:depth]


def blend_cross_encoder(scores: np.ndarray, positions: np.ndarray, logits: np.ndarray, weight: float) -> np.ndarray:
    """First-pass scores [C] + cross-encoder logits [D] of the candidates at `positions` -> final scores [C].

    Re-scored candidates get (1 - w) * score + w * sigmoid(logit), the others (1 - w) * score: the logit is
    squashed to (0, 1) so the final score stays positive (the Reranker's boosts multiply it) and on the
    scale of the first pass, whose cosines and learned-ranker outputs also live in about [0, 1]."""
    if len(positions) != len(logits):
        raise ValueError(f"{len(positions)} re-scored positions but {len(logits)} logits")
    out = (1.0 - weight) * np.asarray(scores, dtype=np.float64)
    out[positions] += weight / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return out
