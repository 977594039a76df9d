"""The retriever's score as the cross-encoder's starting point (a residual ranker).

A cross-encoder trained from a bi-encoder checkpoint starts with a random head: its logit is about
constant, and on a few thousand behaviour pairs (2 CPU cores) BCE barely moves it, so re-ranking by it
alone scrambles the retriever's order (docs/results.md, 2026-12-04). Instead the logit the loss sees is

    offset + cross_encoder(context, item),   offset = scale * retriever_score + bias,

with (scale, bias) a weighted one-feature logistic regression of the training labels on the retriever's
cosine, fitted before training and then frozen. This is the offset (init_score) of boosting and GLMs: the
transformer learns only what the retriever gets wrong, and an untrained head leaves the retriever's order
as it is. The trained ranker stays a plain HF directory; (scale, bias) live in its manifest, and whoever
scores with it (validation, the Rank stage) adds the offset of each candidate's retrieval score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RetrieverOffset:
    scale: float
    bias: float

    def apply(self, retriever_scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Retriever cosines [N] -> the logit offsets [N] (float32)."""
        return (self.scale * np.asarray(retriever_scores, dtype=np.float64) + self.bias).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> RetrieverOffset | None:
        """A ranker manifest's `retriever_offset` (null or absent: the ranker was trained without one)."""
        value = manifest.get("retriever_offset")
        return None if value is None else cls(float(value["scale"]), float(value["bias"]))


def fit_retriever_offset(retriever_scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> RetrieverOffset:
    """Weighted logistic regression of labels (0/1) on the retriever's scores, nearly unregularised (C=1e4:
    one feature and thousands of rows need no shrinkage). sklearn rather than a hand-written Newton step."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels) > 0
    if labels.all() or not labels.any():
        raise ValueError(f"the retriever offset needs positive and negative rows, got {int(labels.sum())} "
                         f"positives of {len(labels)}")
    model = LogisticRegression(C=1e4, max_iter=1000)
    model.fit(np.asarray(retriever_scores, dtype=np.float64).reshape(-1, 1), labels,
              sample_weight=np.asarray(weights, dtype=np.float64))
    return RetrieverOffset(scale=float(model.coef_[0, 0]), bias=float(model.intercept_[0]))


def pair_scores(query_vectors: np.ndarray, query_rows: np.ndarray, item_vectors: np.ndarray,
                item_rows: np.ndarray) -> np.ndarray:
    """Inner products of query_vectors[query_rows] and item_vectors[item_rows] row by row ([N] float32);
    an item row of -1 (not in the index) gets NaN, for the caller to count."""
    query_rows, item_rows = np.asarray(query_rows, dtype=np.int64), np.asarray(item_rows, dtype=np.int64)
    found = item_rows >= 0
    out = np.full(len(item_rows), np.nan, dtype=np.float32)
    out[found] = np.einsum("nd,nd->n", query_vectors[query_rows[found]], item_vectors[item_rows[found]])
    return out
