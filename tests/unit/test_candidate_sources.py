"""Candidate sources and their merge (recsys/serve/candidate_sources.py, fresh_items.py): no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.serve.candidate_sources import (
    RetrieverConfig,
    SourceQuota,
    SourcesConfig,
    cooccurrence_source,
    drop_items,
    merge_candidates,
    scale_scores,
)
from recsys.serve.fresh_items import FreshItems, unindexed_item_texts


def test_scale_scores_best_is_one_and_non_positive_lists_keep_order() -> None:
    assert scale_scores([("a", 0.8), ("b", 0.4)]) == [("a", 1.0), ("b", 0.5)]
    assert scale_scores([("a", 0.0), ("b", 0.0)]) == [("a", 1.0), ("b", 0.5)]
    assert scale_scores([("a", 0.5), ("b", -0.2)]) == [("a", 1.0), ("b", 0.0)]
    assert scale_scores([]) == []


def test_merge_dedupes_keeps_best_source_and_respects_quota_and_k() -> None:
    cfg = SourcesConfig(ann=SourceQuota(quota=2, weight=1.0), cooccurrence=SourceQuota(quota=5, weight=0.8),
                        fresh=SourceQuota(quota=5, weight=0.6), popular=SourceQuota(quota=5, weight=0.3))
    merged = merge_candidates({
        "ann": [("a", 0.9), ("b", 0.45), ("c", 0.3)],          # cosines kept; c is over the quota of 2
        "cooccurrence": [("b", 4.0), ("d", 2.0)],              # scaled: b 0.8 beats its ann 0.45
        "fresh": [("n", 0.7)],                                 # cosine 0.7 x 0.6, not its own best x 0.6
        "popular": [("a", 10.0), ("p", 5.0)],
    }, cfg, k=10)
    by_id = {c["item_id"]: c for c in merged}
    assert [c["item_id"] for c in merged] == ["a", "b", "n", "d", "p"]
    assert by_id["a"]["source"] == "ann" and by_id["a"]["retrieval_score"] == pytest.approx(0.9)
    assert by_id["n"]["retrieval_score"] == pytest.approx(0.42)
    assert by_id["b"]["source"] == "cooccurrence" and by_id["b"]["retrieval_score"] == pytest.approx(0.8)
    assert by_id["n"]["source"] == "fresh" and by_id["p"]["source"] == "popular"
    assert "c" not in by_id, "a source gives at most its quota"
    assert len(merge_candidates({"ann": [("a", 1.0)], "popular": [("p", 1.0)]}, cfg, k=1)) == 1


def test_merge_ties_go_to_the_more_personal_source_and_zero_quota_turns_a_source_off() -> None:
    cfg = SourcesConfig(popular=SourceQuota(quota=0, weight=1.0), cooccurrence=SourceQuota(weight=1.0))
    merged = merge_candidates({"cooccurrence": [("x", 3.0)], "ann": [("x", 1.0)], "popular": [("p", 9.0)]},
                              cfg, k=5)
    assert merged == [{"item_id": "x", "retrieval_score": 1.0, "source": "ann"}]


def test_merge_refuses_unknown_sources_and_bad_k() -> None:
    with pytest.raises(ValueError, match="unknown candidate source.*'bestsellers'"):
        merge_candidates({"bestsellers": [("a", 1.0)]}, SourcesConfig(), k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        merge_candidates({}, SourcesConfig(), k=0)


def test_retriever_config_validates_fields() -> None:
    cfg = RetrieverConfig.model_validate({"sources": {"fresh": {"quota": 5}}, "max_batch_size": 8})
    assert cfg.sources.fresh.quota == 5 and cfg.sources.fresh.weight == 1.0 and cfg.max_batch_size == 8
    with pytest.raises(ValueError, match="trending"):
        RetrieverConfig.model_validate({"sources": {"trending": {"quota": 5}}})
    with pytest.raises(ValueError, match="max_batch_size"):
        RetrieverConfig.model_validate({"max_batch_size": 0})


def test_drop_items_counts_what_it_drops() -> None:
    kept, dropped = drop_items([{"item_id": "a"}, {"item_id": "b"}], {"b"})
    assert kept == [{"item_id": "a"}] and dropped == 1


def test_cooccurrence_source_uses_item_ids_and_leaves_history_out() -> None:
    source = cooccurrence_source([["a", "b", "c"], ["a", "b"], ["x", "y"]], window=1)
    got = source.neighbours(["a"], k=5)
    assert [i for i, _ in got] == ["b"], "c is two steps from a, outside window 1; x/y never co-occur"
    assert [i for i, _ in source.neighbours(["b"], k=5)] == ["a", "c"]   # a twice, c once
    assert source.neighbours(["a", "b"], k=5)[0][0] == "c"
    assert source.neighbours(["unknown"], k=5) == [] and cooccurrence_source([]).neighbours(["a"], 3) == []


def _fake_embed(texts):  # one-hot by first letter: deterministic unit vectors
    out = np.zeros((len(texts), 4), dtype=np.float32)
    for row, t in enumerate(texts):
        out[row, "abcd".index(t[0].lower())] = 1.0
    return out


def test_fresh_items_are_embedded_searchable_and_replaced(tmp_path) -> None:
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": ["i1", "i2", "i3", None], "title": ["Apple", "Banana", "Cherry", "x"],
                             "brand": ["Acme", None, "Co", None], "category": ["fruit"] * 4}), path)
    ids, texts = unindexed_item_texts(path, indexed={"i1"})
    assert ids == ["i2", "i3"] and texts == ["Banana. fruit", "Cherry. Co. fruit"]
    fresh = FreshItems(4, _fake_embed)
    assert fresh.search(np.ones(4, dtype=np.float32), 3) == []
    assert fresh.add(ids, texts) == 2 and len(fresh) == 2
    query = np.array([0, 0, 1, 0], dtype=np.float32)
    assert fresh.search(query, 1) == [("i3", pytest.approx(1.0))]
    fresh.add(["i3"], ["apple now"])   # re-embedded, not duplicated
    assert len(fresh) == 2 and fresh.search(query, 2)[0][1] == pytest.approx(0.0)
    assert fresh.search(None, 3) == []
    with pytest.raises(ValueError, match="2 item ids but 1 texts"):
        fresh.add(["a", "b"], ["x"])
