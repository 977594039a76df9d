"""The cross-encoder's frozen retriever offset: the logistic fit, the pairwise scores it is fitted on,
the index's item vectors they read, and the Rank stage adding it to a served ranker's logits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_served_cross_encoder import served  # noqa: F401  (the fixture)

from recsys.artifacts import read_manifest, write_manifest
from recsys.index.faiss_index import ItemIndex, build_faiss_index
from recsys.models.cross_encoder import CrossEncoderScorer
from recsys.models.retriever_offset import RetrieverOffset, fit_retriever_offset, pair_scores
from recsys.serve.rank import Ranker


def test_the_fit_recovers_the_scale_and_bias_of_a_logistic_click_model() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.2, 0.8, 40_000)
    labels = rng.random(40_000) < 1 / (1 + np.exp(-(8.0 * scores - 3.0)))
    offset = fit_retriever_offset(scores, labels, np.ones(len(scores)))
    assert offset.scale == pytest.approx(8.0, rel=0.05) and offset.bias == pytest.approx(-3.0, abs=0.15)
    assert offset.apply([0.5]) == pytest.approx([offset.scale * 0.5 + offset.bias])
    # Weights count as repeated rows: doubling the positives' weight moves the bias by about log 2.
    heavier = fit_retriever_offset(scores, labels, np.where(labels, 2.0, 1.0))
    assert heavier.bias - offset.bias == pytest.approx(np.log(2), abs=0.05)
    with pytest.raises(ValueError, match="needs positive and negative rows, got 0 positives of 3"):
        fit_retriever_offset(np.zeros(3), np.zeros(3), np.ones(3))


def test_manifest_round_trip_and_absence() -> None:
    offset = RetrieverOffset(scale=7.5, bias=-2.0)
    assert RetrieverOffset.from_manifest({"retriever_offset": offset.to_dict()}) == offset
    assert RetrieverOffset.from_manifest({"retriever_offset": None}) is None
    assert RetrieverOffset.from_manifest({}) is None


def test_pair_scores_and_item_vectors_of_an_index() -> None:
    rng = np.random.default_rng(1)
    items = rng.normal(size=(5, 4)).astype(np.float32)
    index = ItemIndex(index=build_faiss_index(items), item_ids=np.array(list("abcde"), dtype=object), manifest={})
    vectors, row_of = index.item_vectors()
    assert row_of == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    np.testing.assert_allclose(vectors, items, rtol=1e-6)
    queries = rng.normal(size=(2, 4)).astype(np.float32)
    got = pair_scores(queries, np.array([0, 1, 1]), vectors, np.array([3, 0, -1]))
    assert got[:2] == pytest.approx([queries[0] @ items[3], queries[1] @ items[0]], rel=1e-5)
    assert np.isnan(got[2]), "an item the index lacks is NaN for the caller to count"


def test_the_rank_stage_adds_the_offset_of_each_candidates_retrieval_score(served) -> None:  # noqa: F811
    out, catalog, popularity, ids = served
    write_manifest(out, {**read_manifest(out), "retriever_offset": {"scale": 10.0, "bias": -6.0}})
    ranker = Ranker.func_or_class(str(popularity), None, None,
                                  cross_encoder={"path": str(out), "catalog_path": str(catalog)})
    ranker.reconfigure({"rerank_depth": 3, "cross_encoder_weight": 1.0, "popularity_weight": 0.0})
    cands = [{"item_id": i, "retrieval_score": s, "source": "ann"} for i, s in zip(ids[2:], [0.9, 0.8, 0.7, 0.6])]
    ranked = asyncio.run(ranker.rank(cands, "recommend", None, ["i0", "i1"]))
    logits = CrossEncoderScorer(str(out), max_length=48, item_max_length=12).score(
        ["blue sock | red shoe"] * 3, ["green jacket", "black bottle", "white shoe"])
    total = logits + 10.0 * np.array([0.9, 0.8, 0.7]) - 6.0
    assert [c["rank_score"] for c in ranked] == pytest.approx(list(1 / (1 + np.exp(-total))) + [0.0], abs=1e-5)
