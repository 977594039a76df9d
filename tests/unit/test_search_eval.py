"""Search evaluation logic: graded NDCG by hand, the query holdout, judgments, BM25 (no Ray)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recsys.config import load_config
from recsys.data.holdout import held_out_mask, is_held_out_query, query_bucket
from recsys.eval.metrics import graded_ndcg_at_k, judged_ranks, relevant_recall_at_k
from recsys.eval.search import (
    held_out_judgments,
    holdout_fraction,
    rank_judged_items,
    read_judgments,
    summarize_search,
)
from recsys.eval.search_config import SearchEvalConfig
from recsys.index.bm25 import BM25Index
from tests.conftest import REPO_ROOT


# ---------------------------------------------------------------- graded NDCG, by hand
def test_graded_ndcg_matches_hand_computation() -> None:
    # query 0: gains 2, 1, 0 at ranks 0, 2, 1.  DCG@10 = 2/log2(2) + 1/log2(4) = 2.5,
    # IDCG@10 = 2/log2(2) + 1/log2(3) = 2.6309;  at k=2 the rank-2 item falls off: DCG = 2.
    # query 1: one item of gain 1 at rank 5: 1/log2(7) = 0.3562 at k=10, 0 at k=5.
    query, gain, rank = np.array([0, 0, 0, 1]), np.array([2.0, 1.0, 0.0, 1.0]), np.array([0, 2, 1, 5])
    idcg0 = 2 + 1 / math.log2(3)
    assert graded_ndcg_at_k(query, gain, rank, 10, 2) == pytest.approx([2.5 / idcg0, 1 / math.log2(7)])
    assert graded_ndcg_at_k(query, gain, rank, 2, 2) == pytest.approx([2 / idcg0, 0.0])
    assert graded_ndcg_at_k(query, gain, rank, 5, 2)[1] == 0.0
    # the ideal ranking is cut at k too: IDCG@1 = 2 only
    assert graded_ndcg_at_k(query, gain, rank, 1, 2) == pytest.approx([1.0, 0.0])
    # perfect order = 1 whatever the gains are
    assert graded_ndcg_at_k(np.zeros(3, int), np.array([0.5, 2.0, 1.0]), np.array([2, 0, 1]), 10, 1) == [1.0]


def test_graded_ndcg_rejects_queries_without_gain_and_negative_gains() -> None:
    with pytest.raises(ValueError, match="query 1 has no judged item with a gain > 0"):
        graded_ndcg_at_k(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0, 0]), 10, 2)
    with pytest.raises(ValueError, match="gains must be >= 0"):
        graded_ndcg_at_k(np.array([0]), np.array([-1.0]), np.array([0]), 10, 1)
    with pytest.raises(ValueError, match=r"query indexes must lie in \[0, 1\)"):
        graded_ndcg_at_k(np.array([3]), np.array([1.0]), np.array([0]), 10, 1)


def test_judged_ranks_break_ties_by_catalog_position() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0]])
    # row 0: item 2 ties with items 1 and 4 and only item 1 comes before it -> rank 1; item 3 is last.
    # row 1: all scores tie, so the rank is the position.
    ranks = judged_ranks(scores, np.array([0, 0, 0, 1, 1]), np.array([2, 4, 3, 0, 4]))
    assert ranks.tolist() == [1, 2, 4, 0, 4]
    with pytest.raises(ValueError, match="NaN in score row 0"):
        judged_ranks(np.array([[np.nan, 1.0]]), np.array([0]), np.array([0]))


def test_relevant_recall_counts_only_relevant_pairs() -> None:
    recall = relevant_recall_at_k(np.array([0, 0, 0, 1]), np.array([True, True, False, False]),
                                  np.array([0, 12, 1, 0]), 10, 2)
    assert recall[0] == 0.5 and np.isnan(recall[1])


def test_rank_and_summarize_a_toy_catalog() -> None:
    """Two queries over 4 items, scores given: the metrics follow from the hand-computed ranks."""
    judgments = pd.DataFrame({"query": ["q0", "q0", "q1"], "item_id": ["a", "c", "d"], "relevance": [3.0, 2.0, 2.5]})
    ev = held_out_judgments(judgments, {"a": 0, "b": 1, "c": 2, "d": 3}, 0.999999)
    scores = np.array([[0.1, 0.9, 0.5, 0.0],     # q0: a rank 2 (gain 2), c rank 1 (gain 1)
                       [0.0, 0.0, 0.0, 1.0]])    # q1: d rank 0
    ranks = rank_judged_items(lambda a, b: scores[a:b], ev, 4, chunk=1)
    assert ranks.tolist() == [2, 1, 0]
    metrics = summarize_search(ev, ranks, [1, 10])
    ideal = 2 + 1 / math.log2(3)
    assert metrics["ndcg@10"] == pytest.approx(((2 / 2 + 1 / math.log2(3)) / ideal + 1.0) / 2)
    assert metrics["ndcg@1"] == pytest.approx((0.0 + 1.0) / 2)
    assert metrics["recall@1"] == 0.5 and metrics["recall@10"] == 1.0     # relevant: (q0, a) and (q1, d)
    assert (metrics["queries"], metrics["queries_with_relevant"]) == (2, 2)
    with pytest.raises(ValueError, match=r"shape \(1, 3\), expected \(1, 4\)"):
        rank_judged_items(lambda a, b: scores[a:b, :3], ev, 4, chunk=1)


# ---------------------------------------------------------------- the query holdout
def test_holdout_is_a_fixed_hash_of_the_exact_query() -> None:
    # Pinned values: changing the hash would silently move queries between training and evaluation.
    assert query_bucket("deck screws") == pytest.approx(0.7741612, abs=1e-7)
    assert [is_held_out_query(q, 0.2) for q in ("bee", "dee", "blue shoe", "red boots")] == [True, True, False, False]
    assert query_bucket("Deck screws") != query_bucket("deck screws") != query_bucket("deck screws ")  # exact string
    assert not is_held_out_query("deck screws", 0.0)
    with pytest.raises(ValueError, match=r"search_holdout_fraction must be in \[0, 1\), got 1.0"):
        is_held_out_query("x", 1.0)


def test_holdout_is_the_same_in_another_process_with_another_hash_seed() -> None:
    queries = [f"query {i}" for i in range(200)]
    code = ("from recsys.data.holdout import held_out_mask; "
            f"print(''.join('1' if h else '0' for h in held_out_mask({queries!r}, 0.3)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == "".join("1" if h else "0" for h in held_out_mask(queries, 0.3))


def test_holdout_share_is_close_to_the_fraction_and_nested() -> None:
    queries = [f"product search {i}" for i in range(20_000)]
    at_20, at_10 = held_out_mask(queries, 0.2), held_out_mask(queries, 0.1)
    assert abs(at_20.mean() - 0.2) < 0.01 and abs(at_10.mean() - 0.1) < 0.01
    assert not (at_10 & ~at_20).any()                       # a larger fraction only adds queries
    repeated = held_out_mask(["a b", "c d", "a b"], 0.5)
    assert repeated[0] == repeated[2] == is_held_out_query("a b", 0.5)


# ---------------------------------------------------------------- judgments
def test_read_judgments_from_home_depot_directory_and_files(tmp_path) -> None:
    hd = tmp_path / "homedepot"
    hd.mkdir()
    (hd / "train.csv").write_bytes("id,product_uid,product_title,search_term,relevance\n"
                                   "2,100001,Simpson angle,angle bracket ,3\n"
                                   "3,100001,Simpson angle,l bracket,2.5\n"
                                   "4,100002,Behr caf\xe9 paint,caf\xe9 paint,1.33\n".encode("latin-1"))
    frame, stats = read_judgments(hd)
    assert frame.values.tolist() == [["angle bracket", "100001", 3.0], ["café paint", "100002", 1.33],
                                     ["l bracket", "100001", 2.5]]
    assert stats == {"rows": 3, "duplicate_pairs_averaged": 0}

    pd.DataFrame({"query": ["x", "x", "y"], "item_id": [7, 7, 8], "relevance": [1, 3, 2]}).to_parquet(
        tmp_path / "j.parquet")
    frame, stats = read_judgments(tmp_path / "j.parquet")
    assert frame.values.tolist() == [["x", "7", 2.0], ["y", "8", 2.0]] and stats["duplicate_pairs_averaged"] == 1


def test_read_judgments_errors_name_the_path_and_what_is_wrong(tmp_path) -> None:
    with pytest.raises(ValueError, match="judgments='.*nope.csv' does not exist"):
        read_judgments(tmp_path / "nope.csv")
    (tmp_path / "cols.csv").write_text("search,item,grade\na,b,1\n")
    with pytest.raises(ValueError, match=r"cols.csv lacks columns \['query', 'item_id', 'relevance'\]; "
                                         r"found columns \['search', 'item', 'grade'\]"):
        read_judgments(tmp_path / "cols.csv")
    (tmp_path / "rel.csv").write_text("query,item_id,relevance\na,b,1\nc,d,high\n")
    with pytest.raises(ValueError, match=r"relevance='high' in data row 2 is not a number"):
        read_judgments(tmp_path / "rel.csv")
    (tmp_path / "empty.csv").write_text("query,item_id,relevance\n  ,b,1\n")
    with pytest.raises(ValueError, match="query is empty in data row 1"):
        read_judgments(tmp_path / "empty.csv")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="is a directory but not the Home Depot data set"):
        read_judgments(tmp_path / "dir")
    (tmp_path / "j.json").write_text("{}")
    with pytest.raises(ValueError, match=r"expected the Home Depot directory, a .csv or a .parquet file"):
        read_judgments(tmp_path / "j.json")


def test_held_out_judgments_keep_only_held_out_queries_and_count_the_rest() -> None:
    held = ["bee", "dee", "q"]                       # held out at 0.2 (pinned above)
    kept = ["blue shoe", "red boots"]
    judgments = pd.DataFrame({
        "query": held + ["bee"] + kept + ["dee"],
        "item_id": ["a", "b", "c", "zzz", "a", "b", "a"],
        "relevance": [3.0, 1.0, 2.0, 3.0, 3.0, 3.0, 1.0]})
    ev = held_out_judgments(judgments, {"a": 0, "b": 1, "c": 2}, 0.2)
    assert ev.queries == ["bee", "q"]                # "dee" only has gain-0 judgments: skipped
    assert ev.counts == {"judged_queries": 5, "held_out_queries": 3, "held_out_pairs_not_in_catalog": 1,
                         "queries_skipped_no_gain": 1, "evaluated_queries": 2, "evaluated_pairs": 2}
    assert (ev.query.tolist(), ev.item.tolist(), ev.gain.tolist(), ev.relevant.tolist()) == (
        [0, 1], [0, 2], [2.0, 1.0], [True, False])
    many = pd.DataFrame({"query": [f"q{i}" for i in range(400)], "item_id": "a", "relevance": 3.0})
    sample = held_out_judgments(many, {"a": 0}, 0.5, max_queries=10, seed=3)
    assert len(sample.queries) == 10 and sample.queries == held_out_judgments(many, {"a": 0}, 0.5, max_queries=10,
                                                                              seed=3).queries
    assert all(is_held_out_query(q, 0.5) for q in sample.queries)
    with pytest.raises(ValueError, match="search_holdout_fraction=0.0: no query is held out"):
        held_out_judgments(judgments, {"a": 0}, 0.0)
    with pytest.raises(ValueError, match="no held-out query has a judged catalog item"):
        held_out_judgments(judgments[judgments["query"].isin(kept + ["dee"])], {"a": 0, "b": 1}, 0.2)


def test_holdout_fraction_comes_from_the_data_manifest() -> None:
    assert holdout_fraction({"version": "v1", "config": {"split": {"search_holdout_fraction": 0.25}}}) == 0.25
    with pytest.raises(ValueError, match="data version v0 has no split.search_holdout_fraction"):
        holdout_fraction({"version": "v0", "config": {"split": {"method": "leave_last_out"}}})


# ---------------------------------------------------------------- BM25 and the config
def test_bm25_scores_whole_catalog_and_ignores_unknown_words() -> None:
    titles = ["Red running shoes for men", "Blue hat", "Shoe rack, 3 tier", "a"]   # "a" has no token
    index = BM25Index(titles)
    scores = index.scores(["running shoe", "zzzz unknown", "the", "hats"])
    assert scores.shape == (4, 4) and scores.dtype == np.float32
    assert scores[0].argmax() == 0 and scores[0, 2] > 0 and scores[0, 1] == scores[0, 3] == 0   # stemming: shoes
    assert not scores[1].any() and not scores[2].any()       # unknown words / stopwords score nothing
    assert scores[3].argmax() == 1
    exact = BM25Index(titles, stemmer=None).scores(["shoe"])
    assert exact[0, 2] > 0 and exact[0, 0] == 0               # without stemming "shoes" != "shoe"


def test_shipped_yaml_is_the_config_defaults_and_bad_values_are_named() -> None:
    path = REPO_ROOT / "jobs" / "configs" / "evaluate_search.default.yaml"
    assert load_config(SearchEvalConfig, path).model_dump() == SearchEvalConfig().model_dump()
    cfg = load_config(SearchEvalConfig, None, ["methods=[bm25, bm25]", "ks=[20, 10]", "bm25.stemmer=null"])
    assert (cfg.methods, cfg.ks, cfg.bm25.stemmer) == (["bm25"], [10, 20], None)
    with pytest.raises(ValueError, match=r"methods\.0.*'tfidf'"):
        load_config(SearchEvalConfig, None, ["methods=[tfidf]"])
    with pytest.raises(ValueError, match=r"ks.*\[0\]"):
        load_config(SearchEvalConfig, None, ["ks=[0]"])
