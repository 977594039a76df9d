"""Popularity and co-occurrence baselines on tiny sequences with obvious answers."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.eval.baselines import CooccurrenceRecommender, popularity_scores


def test_popularity_counts() -> None:
    np.testing.assert_array_equal(popularity_scores([[0, 1, 1], [2], []], 4), [1, 2, 1, 0])
    np.testing.assert_array_equal(popularity_scores([], 2), [0, 0])
    with pytest.raises(ValueError, match="item position 4"):
        popularity_scores([[0, 4]], 4)


def test_cooccurrence_is_symmetric_and_distance_weighted() -> None:
    model = CooccurrenceRecommender().fit([[0, 1, 2]], n_items=3, window=2)
    assert model.neighbours(0) == {1: 1.0, 2: 0.5}
    assert model.neighbours(1) == {0: 1.0, 2: 1.0}
    assert model.neighbours(2) == {0: 0.5, 1: 1.0}


def test_window_limits_pairs_and_sequences_do_not_mix() -> None:
    model = CooccurrenceRecommender().fit([[0, 1, 2, 3], [4], [5]], n_items=6, window=1)
    assert model.neighbours(0) == {1: 1.0}
    # The last item of one sequence never pairs with the first item of the next.
    assert model.neighbours(3) == {2: 1.0}
    assert model.neighbours(4) == {}
    assert model.neighbours(5) == {}


def test_self_pairs_are_skipped_and_repeats_add_up() -> None:
    model = CooccurrenceRecommender().fit([[0, 1, 0], [0, 1]], n_items=2, window=2)
    # 0-1 at distance 1 twice in seq 0 and once in seq 1; 0-0 at distance 2 ignored.
    assert model.neighbours(0) == {1: 3.0}
    assert model.neighbours(1) == {0: 3.0}


SEQS = [[0, 1], [0, 1], [2, 3]]  # popularity: 0:2, 1:2, 2:1, 3:1, 4:0


def test_score_recommends_the_obvious_next_item() -> None:
    model = CooccurrenceRecommender().fit(SEQS, n_items=5, window=1)
    scores = model.score([[0], [2]])
    assert scores.shape == (2, 5)
    assert scores.argmax(axis=1).tolist() == [1, 3]


def test_score_recency_weights_and_popularity_tiebreak() -> None:
    model = CooccurrenceRecommender().fit(SEQS, n_items=5, window=1)
    pop = 1e-6 * np.array([1.0, 1.0, 0.5, 0.5, 0.0])
    # Most recent item (2) weighs 1 (row 2: {3: 1}); the one before (0) weighs 1/2 and its
    # row is {1: 2} because 0->1 occurs in two sequences.
    np.testing.assert_allclose(model.score([[0, 2]], last_n=2)[0], [0, 0.5 * 2, 0, 1.0, 0] + pop,
                               rtol=0, atol=1e-12)
    # last_n=1 ignores item 0 entirely.
    np.testing.assert_allclose(model.score([[0, 2]], last_n=1)[0], [0, 0, 0, 1.0, 0] + pop, atol=1e-12)
    # No history: popularity order only, and far below any real co-occurrence.
    cold = model.score([[]])[0]
    np.testing.assert_allclose(cold, pop, atol=1e-15)


def test_score_validates_inputs() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        CooccurrenceRecommender().score([[0]])
    model = CooccurrenceRecommender().fit(SEQS, n_items=5)
    with pytest.raises(ValueError, match="histories\\[1\\]"):
        model.score([[0], [7]])
    with pytest.raises(ValueError, match="last_n"):
        model.score([[0]], last_n=0)


def test_scale_is_fast_enough() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 4000, size=rng.integers(3, 15)).tolist() for _ in range(8000)]
    model = CooccurrenceRecommender().fit(seqs, n_items=4000)
    scores = model.score([s[:-1] for s in seqs])
    assert scores.shape == (8000, 4000)
    # Every user's history item co-occurs with their held-out last item at distance 1.
    assert (scores[np.arange(8000), [s[-1] for s in seqs]] >= 1.0).all()
