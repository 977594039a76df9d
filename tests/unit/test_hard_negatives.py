"""Hard-negative mining shared by both trainers: candidate lists from a real Faiss index, seeded draws
that never pick an anchor's own positives, and the uniform fallback that keeps batches full."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.index.faiss_index import ItemIndex, build_faiss_index
from recsys.train.hard_negatives import (
    bm25_candidates,
    judged_negative_candidates,
    negative_column_pairs,
    negative_columns,
    pairs_with_hard_negatives,
    pick_hard_negatives,
    retrieve_candidates,
)


def test_hard_negatives_skip_excluded_items_and_are_seeded() -> None:
    candidates = [["a", "b", "c", "d", "b"], ["a", "b"], ["x"]]
    excluded = [{"a"}, {"a", "b"}, set()]
    picked = pick_hard_negatives(candidates, excluded, per_positive=2, seed=3)
    assert picked == pick_hard_negatives(candidates, excluded, per_positive=2, seed=3)
    assert len(picked[0]) == 2 and len(set(picked[0])) == 2 and set(picked[0]) <= {"b", "c", "d"}
    assert picked[1] == [] and picked[2] == ["x"]                      # fewer only when fewer are eligible
    with pytest.raises(ValueError, match="3 candidate lists but 1 exclusion sets"):
        pick_hard_negatives(candidates, [set()], 1, 0)


def test_retrieve_candidates_excludes_history_with_a_real_index() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = ItemIndex(build_faiss_index(vectors), np.array(["a", "b", "c", "d"], dtype=object), {})
    query = np.array([[1.0, 0.9, 0.5, 0.1]], dtype=np.float32)
    assert retrieve_candidates(index, query, [[]], 3) == [["a", "b", "c"]]
    assert retrieve_candidates(index, query, [["a", "c"]], 3) == [["b", "d"]]   # catalog runs out


def test_pair_negatives_never_hit_any_positive_of_the_same_anchor() -> None:
    pairs = pd.DataFrame({"anchor_text": ["drill", "drill", "saw"], "positive_item_id": ["p1", "p2", "p3"],
                          "positive_text": ["t1", "t2", "t3"]})
    texts = {i: f"text {i}" for i in ["p1", "p2", "p3", "n1", "n2", "n3"]}
    # "drill"'s list starts with its own positives: neither may become a negative of either drill pair.
    candidates = {"drill": ["p1", "p2", "n1", "n2", "gone"], "saw": ["p3", "p1", "n3"]}
    out, counts = pairs_with_hard_negatives(pairs, candidates, texts, seed=0)
    assert counts == {"mined": 3, "uniform_fallback": 0, "anchors": 2}
    assert set(out.loc[:1, "negative_item_id"]) <= {"n1", "n2"}             # "gone" has no text: never drawn
    assert out.loc[2, "negative_item_id"] in {"p1", "n3"}                   # another anchor's positive is fine
    assert out["negative_text"].tolist() == [texts[i] for i in out["negative_item_id"]]
    assert out[["anchor_text", "positive_item_id"]].equals(pairs[["anchor_text", "positive_item_id"]])
    again, _ = pairs_with_hard_negatives(pairs, candidates, texts, seed=0)
    assert again.equals(out)                                                # seeded


def test_pair_without_an_eligible_candidate_gets_a_uniform_catalog_item() -> None:
    pairs = pd.DataFrame({"anchor_text": ["a"], "positive_item_id": ["p1"], "positive_text": ["t1"]})
    texts = {"p1": "t1", "x": "tx", "y": "ty"}
    out, counts = pairs_with_hard_negatives(pairs, {"a": ["p1"]}, texts, seed=0)
    assert counts["uniform_fallback"] == 1 and out.loc[0, "negative_item_id"] in {"x", "y"}
    with pytest.raises(ValueError, match="no retrieved candidates for 1 anchors, e.g. 'a'"):
        pairs_with_hard_negatives(pairs, {}, texts, seed=0)


def test_judged_negatives_are_the_low_graded_items_of_the_same_query() -> None:
    judgments = pd.DataFrame({"query": ["drill", "drill", "drill", "saw", "saw", "held out"],
                              "item_id": ["p1", "n1", "n2", "p3", "n3", "n4"],
                              "relevance": [3.0, 1.0, 1.75, 2.67, 2.0, 1.0]})
    found = judged_negative_candidates(judgments, ["drill", "saw", "glue"], max_relevance=1.75)
    assert found == {"drill": ["n1", "n2"]}, "saw's items are all above 1.75; glue and 'held out' are no anchors"
    assert judged_negative_candidates(judgments, ["saw"], max_relevance=2.0) == {"saw": ["n3"]}
    # Fed to the pair builder: judged items first, an anchor without any falls back to a uniform item.
    pairs = pd.DataFrame({"anchor_text": ["drill", "saw"], "positive_item_id": ["p1", "p3"],
                          "positive_text": ["t1", "t3"]})
    texts = {i: f"text {i}" for i in ["p1", "p3", "n1", "n2", "n3"]}
    out, counts = pairs_with_hard_negatives(pairs, {**found, "saw": []}, texts, seed=0)
    assert out.loc[0, "negative_item_id"] in {"n1", "n2"} and counts["uniform_fallback"] == 1


def test_several_negatives_per_pair_are_distinct_and_filled_up_uniformly() -> None:
    pairs = pd.DataFrame({"anchor_text": ["drill", "drill", "saw"], "positive_item_id": ["p1", "p2", "p3"],
                          "positive_text": ["t1", "t2", "t3"]})
    texts = {i: f"text {i}" for i in ["p1", "p2", "p3", "n1", "n2", "n3", "n4", "u1", "u2"]}
    # drill has three eligible items for three negatives; saw only one (n4), so two come from the catalog.
    candidates = {"drill": ["p1", "n1", "p2", "n2", "n3"], "saw": ["p3", "n4"]}
    out, counts = pairs_with_hard_negatives(pairs, candidates, texts, seed=0, per_pair=3)
    columns = [negative_columns(k) for k in range(3)]
    assert negative_column_pairs(list(out.columns)) == columns
    assert columns[0] == ("negative_item_id", "negative_text")             # one-negative tables read as before
    rows = out[[c for c, _ in columns]].values.tolist()
    assert sorted(rows[0]) == sorted(rows[1]) == ["n1", "n2", "n3"]
    assert rows[2][0] == "n4" and len(set(rows[2])) == 3 and "p3" not in rows[2]
    assert counts == {"mined": 7, "uniform_fallback": 2, "anchors": 2}
    for id_column, text_column in columns:
        assert out[text_column].tolist() == [texts[i] for i in out[id_column]]
    assert pairs_with_hard_negatives(pairs, candidates, texts, seed=0, per_pair=3)[0].equals(out)
    one, _ = pairs_with_hard_negatives(pairs, candidates, texts, seed=0)
    assert negative_column_pairs(list(one.columns)) == columns[:1]
    with pytest.raises(ValueError, match="per_pair=0"):
        pairs_with_hard_negatives(pairs, candidates, texts, seed=0, per_pair=0)


def test_per_pair_above_top_k_is_refused_naming_both_fields() -> None:
    from recsys.train.config import HardNegativeSettings

    assert HardNegativeSettings(top_k=5, per_pair=5).per_pair == 5
    with pytest.raises(ValueError, match=r"hard_negatives.per_pair=6 is above hard_negatives.top_k=5"):
        HardNegativeSettings(top_k=5, per_pair=6)


def test_bm25_candidates_are_lexical_look_alikes_best_first() -> None:
    from recsys.index.bm25 import BM25Index

    ids = ["hat", "shoe", "rack", "boot"]
    titles = ["Blue hat", "Red running shoes", "Shoe rack, 3 tier", "Leather boots"]
    bm25 = BM25Index(titles)
    got = bm25_candidates(bm25, ids, ["running shoe", "shoe", "zzzz", "hat"], n=5)
    assert got[0] == ["shoe", "rack"]               # both share "shoe"; the one also matching "running" first
    assert set(got[1]) == {"shoe", "rack"}          # only items sharing a word, never the whole catalog
    assert got[2] == [] and got[3] == ["hat"]
    assert bm25_candidates(bm25, ids, ["running shoe"], n=1) == [["shoe"]]
    # blocks of queries give the same lists as one block
    assert bm25.top_items(["running shoe", "shoe", "hat"], 2, block=1) == bm25.top_items(["running shoe", "shoe",
                                                                                           "hat"], 2)


def test_bm25_negatives_count_as_hard_negatives_and_exclude_catalog_queries() -> None:
    from recsys.train.config import HardNegativeSettings, TrainConfig

    assert not HardNegativeSettings().enabled
    assert HardNegativeSettings(bm25_top_k=50).enabled and HardNegativeSettings(index="latest").enabled
    with pytest.raises(ValueError, match=r"catalog_queries.pairs=10 cannot be combined with hard_negatives "
                                         r"\(index, bm25_top_k or judgments\)"):
        TrainConfig(catalog_queries={"pairs": 10}, hard_negatives={"bm25_top_k": 50})
    with pytest.raises(ValueError, match="bm25_top_k"):
        HardNegativeSettings(bm25_top_k=-1)
