"""Full-ranking metrics against hand-computed ranks (ties, exclusion, chunking)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.eval import metrics
from recsys.eval.metrics import (
    format_markdown_table,
    mrr,
    ndcg_at_k,
    recall_at_k,
    summarize_ranks,
    target_ranks,
)

SCORES = np.array([
    [0.1, 0.9, 0.3, 0.5, 0.2],   # target 3 (0.5): only 0.9 beats it -> rank 1
    [0.5, 0.5, 0.5, 0.1, 0.0],   # target 1 ties with items 0 and 2 -> pessimistic rank 2
    [1.0, 0.2, 0.3, 0.4, 0.8],   # target 0 is the best -> rank 0
])
TARGETS = np.array([3, 1, 0])


def test_ranks_with_pessimistic_ties() -> None:
    assert target_ranks(SCORES, TARGETS).tolist() == [1, 2, 0]


def test_exclusion_hides_history_but_never_the_target() -> None:
    exclude = [np.array([1]), np.array([0, 1]), np.array([4, 4])]
    # u0: item 1 hidden -> rank 0; u1: item 0 hidden, target 1 kept -> rank 1; u2 unchanged.
    assert target_ranks(SCORES, TARGETS, exclude).tolist() == [0, 1, 0]
    # Excluding items below the target changes nothing.
    assert target_ranks(SCORES, TARGETS, [np.array([0]), np.array([3]), np.array([])]).tolist() == [1, 2, 0]


def test_scores_are_not_modified() -> None:
    scores = SCORES.copy()
    target_ranks(scores, TARGETS, [np.array([1]), np.array([0]), np.array([4])])
    np.testing.assert_array_equal(scores, SCORES)


def test_chunked_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # Rounded scores create many ties, which is where off-by-one errors hide.
    scores = np.round(rng.random((37, 23)), 1).astype(np.float32)
    targets = rng.integers(0, 23, size=37)
    exclude = [rng.integers(0, 23, size=rng.integers(0, 6)) for _ in range(37)]
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # ~2 users per chunk
    got = target_ranks(scores, targets, exclude)
    expected = []
    for u in range(37):
        s = scores[u].astype(np.float64).copy()
        hidden = [i for i in exclude[u] if i != targets[u]]
        s[hidden] = -np.inf
        expected.append(int((s >= s[targets[u]]).sum()) - 1)
    assert got.tolist() == expected


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="targets must lie in"):
        target_ranks(SCORES, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="one entry per user"):
        target_ranks(SCORES, TARGETS, [np.array([1])])
    with pytest.raises(ValueError, match="2-D"):
        target_ranks(SCORES[0], TARGETS[:1])
    nan_scores = SCORES.copy()
    nan_scores[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(nan_scores, TARGETS)


def test_metric_values() -> None:
    ranks = np.array([1, 2, 0])
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert recall_at_k(ranks, 3) == pytest.approx(1.0)
    assert ndcg_at_k(ranks, 2) == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4) + 1) / 3)
    assert mrr(ranks) == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    with pytest.raises(ValueError):
        recall_at_k(np.array([], dtype=np.int64), 10)
    with pytest.raises(ValueError):
        ndcg_at_k(ranks, 0)


def test_summarize_ranks_keys_and_values() -> None:
    ranks = np.array([0, 9, 10, 30, 60])
    out = summarize_ranks(ranks, ks=(10, 50))
    assert list(out) == ["recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr", "users"]
    assert out["recall@10"] == pytest.approx(2 / 5)
    assert out["recall@50"] == pytest.approx(4 / 5)
    assert out["users"] == 5
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(11)) / 5)


def test_format_markdown_table() -> None:
    rows = {
        "popularity": {"recall@10": 0.123456, "mrr": 0.05, "users": 3},
        "encoder": {"recall@10": 0.5},
    }
    table = format_markdown_table(rows, ["recall@10", "mrr", "users"])
    assert table.splitlines() == [
        "| method | recall@10 | mrr | users |",
        "|---|---:|---:|---:|",
        "| popularity | 0.1235 | 0.0500 | 3 |",
        "| encoder | 0.5000 | - | - |",
    ]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.random(200), rng.random(5000)
    lo_s, hi_s = metrics.bootstrap_interval(small)
    lo_l, hi_l = metrics.bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3   # ~ 1/sqrt(n): 5 times narrower
    assert metrics.ndcg_per_user(np.array([0, 1, 20]), 10) == pytest.approx([1.0, 1 / math.log2(3), 0.0])
