"""Linear retrieval + log-popularity ranker."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recsys.models.ranker import RankerConfig, score_candidates


def test_blend_matches_hand_computation() -> None:
    # log1p(9) / log1p(99) = ln 10 / ln 100 = 0.5
    out = score_candidates(np.array([0.5, 0.2, 0.1]), np.array([0, 9, 99]), RankerConfig(), max_popularity=99)
    np.testing.assert_allclose(out, [0.5, 0.2 + 0.1 * 0.5, 0.1 + 0.1 * 1.0])


def test_weights_and_batch_shape() -> None:
    cfg = RankerConfig(retrieval_weight=2.0, popularity_weight=1.0)
    out = score_candidates(np.array([[1.0, 0.0]]), np.array([[0, 9]]), cfg, max_popularity=99)
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out, [[2.0, 0.5]])


def test_popularity_can_reorder_close_candidates() -> None:
    out = score_candidates(np.array([0.50, 0.48]), np.array([0, 99]), RankerConfig(), max_popularity=99)
    assert out.argmax() == 1


def test_cold_catalog_and_bad_inputs() -> None:
    out = score_candidates(np.array([0.3]), np.array([0]), RankerConfig(), max_popularity=0)
    np.testing.assert_allclose(out, [0.3])
    with pytest.raises(ValueError, match="shape"):
        score_candidates(np.zeros(2), np.zeros(3), RankerConfig(), max_popularity=1)
    with pytest.raises(ValueError, match="exceeds max_popularity"):
        score_candidates(np.zeros(1), np.array([5]), RankerConfig(), max_popularity=4)
    with pytest.raises(ValueError, match=">= 0"):
        score_candidates(np.zeros(1), np.array([-1]), RankerConfig(), max_popularity=4)
    with pytest.raises(ValidationError):
        RankerConfig(bogus=1)  # type: ignore[call-arg]
