"""EASE item-to-item weights (recsys.models.ease) and the id-level source around them."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.models.ease import EaseRecommender
from recsys.serve.candidate_sources import ease_source

# Items 0-1 always bought together, 2-3 together, 4 with everything.
SEQS = [[0, 1, 4], [0, 1], [2, 3, 4], [2, 3], [0, 1, 4], [2, 3, 4], [4]]


def dense_ease(seqs: list[list[int]], n: int, l2: float) -> np.ndarray:
    """The closed form written out once more, without truncation, as the reference."""
    x = np.zeros((len(seqs), n))
    for u, s in enumerate(seqs):
        x[u, s] = 1
    p = np.linalg.inv(x.T @ x + l2 * np.eye(n))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0)
    return b


def test_weights_are_the_closed_form_and_keep_the_largest_positive_ones() -> None:
    model = EaseRecommender(l2=1.0, neighbours=2).fit(SEQS, n_items=5)
    ref = dense_ease(SEQS, 5, 1.0)
    for i in range(5):
        row = {int(j): w for j, w in zip(model.indices[model.indptr[i]:model.indptr[i + 1]],
                                         model.weights[model.indptr[i]:model.indptr[i + 1]])}
        expected = sorted((j for j in range(5) if j != i and ref[i, j] > 0), key=lambda j: -ref[i, j])[:2]
        assert set(row) == set(expected), (i, row, ref[i])
        for j, w in row.items():
            assert w == pytest.approx(ref[i, j])
    assert model.indptr[-1] == model.weights.size and (model.weights > 0).all()


def test_a_partner_outweighs_an_item_that_goes_with_everything() -> None:
    scores = EaseRecommender(l2=1.0).fit(SEQS, n_items=5).score([[0]])[0]
    assert scores[1] > scores[4] > scores[2], scores   # 1 always with 0; 4 with everything; 2 never with 0


def test_recent_items_count_more() -> None:
    model = EaseRecommender(l2=1.0, decay=0.5).fit(SEQS, n_items=5)
    newest_2 = model.score([[0, 2]])[0]
    newest_0 = model.score([[2, 0]])[0]
    assert newest_2[3] > newest_2[1] and newest_0[1] > newest_0[3]
    # a repeated item counts once, at its newest step
    np.testing.assert_allclose(model.score([[0, 2, 0]])[0], newest_0)


def test_only_the_most_frequent_items_get_rows() -> None:
    model = EaseRecommender(l2=1.0, max_items=2).fit(SEQS, n_items=5)   # 4 (6 times) and 0 (3, before 1 by id)
    has_row = np.diff(model.indptr) > 0
    assert has_row.tolist() == [True, False, False, False, True]
    assert set(model.indices.tolist()) <= {0, 4}
    with pytest.raises(RuntimeError, match="before fit"):
        EaseRecommender().score([[0]])
    with pytest.raises(ValueError, match="decay"):
        EaseRecommender(decay=0)


def test_the_source_answers_in_item_ids_without_the_history() -> None:
    source = ease_source([["a", "b", "z"], ["a", "b"], ["c", "d", "z"], ["c", "d"], ["a", "b", "z"], ["z"]])
    found = source.neighbours(["a"], k=3)
    assert found[0][0] == "b" and "a" not in dict(found), found
    assert source.neighbours(["unknown"], k=3) == [] and ease_source([]).neighbours(["a"], 3) == []
