"""Candidate scoring for the Rank stage.

A transparent linear blend of retrieval similarity and log-popularity stands in until a
learned CTR / cross-encoder ranker exists; the Ranker deployment calls `score_candidates`
so swapping the model later does not change the stage contract.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class RankerConfig(BaseModel, extra="forbid"):
    """Weights of the blend rank = w_r * retrieval + w_p * normalised log-popularity."""

    retrieval_weight: float = Field(
        default=1.0, description="Weight of the retrieval (embedding similarity) score."
    )
    popularity_weight: float = Field(
        default=0.1,
        description="Weight of log1p(count) / log1p(max catalog count), a value in [0, 1].",
    )


def score_candidates(
    retrieval_scores: np.ndarray,
    popularity_counts: np.ndarray,
    cfg: RankerConfig,
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
