"""Hybrid search: reciprocal-rank fusion by hand, BM25 saved and loaded, score-matrix fusion (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.index.bm25 import BM25Index
from recsys.index.hybrid import FusedList, HybridSearchConfig, fuse_ranked_lists, fuse_score_rows

TITLES = ["AcuRite 00613 Humidity Monitor", "Infrared thermometer gun", "Paper towel dispenser",
          "Dual flush toilet system", "Digital humidity and temperature gauge", "Black ink cartridge"]


def test_rrf_scores_by_hand_and_names_the_lists() -> None:
    fused = fuse_ranked_lists({"ann": ["a", "b", "c"], "bm25": ["b", "d"]}, {"ann": 1.0, "bm25": 1.0}, rrf_k=60)
    best = 2 / 61
    want = {"b": (1 / 62 + 1 / 61) / best, "a": (1 / 61) / best, "d": (1 / 62) / best, "c": (1 / 63) / best}
    assert [c["item_id"] for c in fused] == ["b", "a", "d", "c"]
    assert {c["item_id"]: c["retrieval_score"] for c in fused} == pytest.approx(want)
    assert {c["item_id"]: c["source"] for c in fused} == {"b": "ann+bm25", "a": "ann", "d": "bm25", "c": "ann"}
    # a tie (a and d both first in one list) goes to the earlier list, then to the id
    tie = fuse_ranked_lists({"ann": ["a"], "bm25": ["d"]}, {"ann": 1.0, "bm25": 1.0})
    assert [c["item_id"] for c in tie] == ["a", "d"]


def test_rrf_weights_and_empty_lists() -> None:
    # BM25 found nothing (a query of stopwords): the dense list alone, its first item scored 1.0
    alone = fuse_ranked_lists({"ann": ["a", "b"], "bm25": []}, {"ann": 1.0, "bm25": 1.0})
    assert [(c["item_id"], c["source"]) for c in alone] == [("a", "ann"), ("b", "ann")]
    assert alone[0]["retrieval_score"] == pytest.approx(1.0)
    # weight 0 turns a list off; a heavier list wins a disagreement
    assert [c["item_id"] for c in fuse_ranked_lists({"ann": ["a"], "bm25": ["d"]}, {"ann": 0.0, "bm25": 1.0})] == ["d"]
    heavy = fuse_ranked_lists({"ann": ["a", "d"], "bm25": ["d", "a"]}, {"ann": 1.0, "bm25": 2.0})
    assert [c["item_id"] for c in heavy] == ["d", "a"]
    # an item a list names twice counts once
    twice = fuse_ranked_lists({"ann": ["a", "a"], "bm25": ["a"]}, {"ann": 1.0, "bm25": 1.0})
    assert twice == [{"item_id": "a", "retrieval_score": pytest.approx(1.0), "source": "ann+bm25"}]


def test_bm25_saved_and_loaded_scores_the_same(tmp_path) -> None:
    index = BM25Index(TITLES)
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    queries = ["acurite 00613 humidity", "humidities gauges", "ink", "the of and", "?!", "zzzz unknown"]
    np.testing.assert_allclose(loaded.scores(queries), index.scores(queries))
    assert loaded.settings == index.settings and loaded.n_items == len(TITLES)
    assert [p for p, _ in loaded.search("acurite 00613 humidity", 3)][:2] == [0, 4], "model number + word first"
    assert [p for p, _ in loaded.search("humidities gauges", 5)] == [4, 0], "stemmed: gauges -> gauge"
    assert loaded.search("the of and", 5) == [] and loaded.search("?!", 5) == [], "no word: no candidates"


def test_score_matrix_fusion_is_the_list_fusion() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(3, 40)).astype(np.float32)
    lexical = np.where(rng.random((3, 40)) < 0.2, rng.random((3, 40)) * 5, 0).astype(np.float32)
    lexical[2] = 0   # a query with no catalog word
    cfg = HybridSearchConfig(ann=FusedList(depth=10), bm25=FusedList(depth=5, weight=0.5))
    fused = fuse_score_rows(dense, lexical, cfg)
    for row in range(3):
        ann = [str(p) for p in np.argsort(-dense[row], kind="stable")[:10]]
        lex = [str(p) for p in np.argsort(-lexical[row], kind="stable")[:5] if lexical[row, p] > 0]
        want = fuse_ranked_lists({"ann": ann, "bm25": lex}, {"ann": 1.0, "bm25": 0.5}, cfg.rrf_k)
        got = {str(p): float(fused[row, p]) for p in np.flatnonzero(fused[row])}
        assert got == pytest.approx({c["item_id"]: c["retrieval_score"] for c in want})
    assert np.count_nonzero(fused[2]) == 10, "dense list alone"
