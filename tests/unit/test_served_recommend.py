"""bench/served_recommend.py's scoring: history cap, exclude-history cut, ranks, Recall/NDCG, the ratio line."""

from __future__ import annotations

import math

import pytest
from bench_modules import load_bench_module

bench = load_bench_module("served_recommend")


def test_cap_history_keeps_the_most_recent_within_the_request_limit():
    history = [f"i{n}" for n in range(120)]
    assert bench.cap_history(history) == history[-50:]
    assert bench.cap_history(["a", "b"], cap=50) == ["a", "b"]
    with pytest.raises(ValueError, match="max_length"):
        bench.cap_history(history, cap=201)   # RecommendRequest.history allows 200


def test_top_k_unseen_drops_history_and_duplicates_in_order():
    assert bench.top_k_unseen(["a", "x", "b", "x", "c", "d"], history=["a", "b"], k=2) == ["x", "c"]
    assert bench.top_k_unseen(iter(["a"]), history=["a"], k=3) == []


def test_score_answers_one_relevant_item_per_user():
    answers = [["t1", "x"], ["x", "y", "t2"], ["x"], []]
    result = bench.score_answers(answers, ["t1", "t2", "t3", "t4"], k=10)
    assert result["users"] == 4
    assert result["recall@10"] == pytest.approx(0.5)
    assert result["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)
    assert bench.target_rank(["x", "y", "t2"], "t2") == 2
    assert bench.target_rank(["x"], "t3") == bench.NOT_RETURNED
    # A target ranked beyond k counts as missed.
    assert bench.score_answers([["x"] * 10 + ["t"]], ["t"], k=10)["recall@10"] == 0.0
    with pytest.raises(ValueError, match="2 answers for 1 targets"):
        bench.score_answers([[], []], ["t"])


def test_ratio_and_latency_lines():
    assert bench.ratio_line(0.05, 0.1) == "served NDCG@10 0.0500 / co-occurrence 0.1000 = 0.500"
    assert "n/a" in bench.ratio_line(0.05, 0.0)
    line = bench.latency_line([0.010, 0.020, 0.030], wall_s=1.0, concurrency=2)
    assert line.startswith("3 requests in 1s at concurrency 2: p50 20 ms")


def test_interval_line_brackets_the_served_metrics_and_the_paired_ratio():
    import numpy as np

    rng = np.random.default_rng(0)
    served = np.where(rng.random(2000) < 0.3, rng.integers(0, 10, 2000), bench.NOT_RETURNED)
    cooc = np.where(rng.random(2000) < 0.2, rng.integers(0, 10, 2000), bench.NOT_RETURNED)
    line = bench.interval_line(served, cooc)
    numbers = [float(x) for x in line.replace("[", " ").replace("]", " ").replace(",", " ").split()
               if x.replace(".", "").isdigit()]
    ndcg_lo, ndcg_hi, rec_lo, rec_hi, ratio_lo, ratio_hi = numbers[-6:]
    assert rec_lo < (served < 10).mean() < rec_hi and rec_hi - rec_lo < 0.06
    from recsys.eval.metrics import ndcg_at_k
    assert ndcg_lo < ndcg_at_k(served, 10) < ndcg_hi
    assert ratio_lo < ndcg_at_k(served, 10) / ndcg_at_k(cooc, 10) < ratio_hi and ratio_lo > 1.0
