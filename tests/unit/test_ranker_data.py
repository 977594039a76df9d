"""Ranker rows from a small real data version: contexts, group selection, hard negatives, validation
pairs and the metrics computed from their scores (pure code, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import write_manifest
from recsys.train.ranker_data import (
    build_training_frame,
    load_ranking_inputs,
    select_example_groups,
    select_validation_users,
)
from recsys.train.ranker_eval import (
    build_validation_pairs,
    format_validation_table,
    validation_metrics,
)

ITEMS = [f"i{n}" for n in range(10)]


@pytest.fixture()
def data_dir(tmp_path):
    """10 items; u1 saw i0..i4 (valid target i3), u2 saw i5 i6 i7 (valid i6), u3 has no valid target."""
    pq.write_table(pa.table({"item_id": ITEMS, "title": [f"title {i}" for i in ITEMS], "brand": ["b"] * 10,
                             "category": ["c"] * 10}), tmp_path / "catalog.parquet")
    (tmp_path / "sequences").mkdir()
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3"], "items": [ITEMS[:5], ITEMS[5:8], ["i9", "i8"]],
                             "n_train": [3, 1, 2], "valid_index": [3, 1, -1]}), tmp_path / "sequences" / "p.parquet")
    pq.write_table(pa.table({"item_id": ["i0", "i5"], "count": [7, 3]}), tmp_path / "popularity.parquet")
    write_manifest(tmp_path, {"kind": "data", "version": "v1", "config": {
        "ranking": {"negative_sampling": "uniform"}, "retrieval_pairs": {"max_history_items": 2}}})
    return tmp_path


def test_inputs_and_newest_first_contexts(data_dir) -> None:
    inputs = load_ranking_inputs(data_dir)
    assert inputs.data_version == "v1" and inputs.item_ids == ITEMS and inputs.popularity == {"i0": 7, "i5": 3}
    assert inputs.texts["i2"] == "title i2. b. c"
    assert inputs.context_text("u1", 3) == "title i2 | title i1"        # newest first, max_history_items=2
    assert inputs.context_text("u1", 0) == ""
    np.testing.assert_allclose(inputs.negative_probs, 0.1)               # the manifest's uniform sampler


def test_select_example_groups_keeps_whole_groups() -> None:
    examples = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "position": [1] * 9,
                             "item_id": list("xyz") * 3, "label": [1, 0, 0] * 3})
    picked = select_example_groups(examples, 2, seed=0)
    assert len(picked) == 6 and picked.groupby("user_id").size().eq(3).all()
    assert picked.equals(select_example_groups(examples, 2, seed=0))       # seeded
    assert len(select_example_groups(examples, None, seed=0)) == 9
    assert len(select_example_groups(examples, 50, seed=0)) == 9


def test_training_frame_adds_hard_negatives_and_counts_what_it_drops(data_dir) -> None:
    inputs = load_ranking_inputs(data_dir)
    examples = pd.DataFrame({"user_id": ["u1", "u1", "u1"], "position": [2, 2, 2], "item_id": ["i2", "i9", "gone"],
                             "label": [1, 0, 0], "weight": [3.0, 1.0, 1.0]})
    frame, counts = build_training_frame(examples, inputs, {("u1", 2): ["i7", "i8"]}, hard_weight=0.5, seed=0)
    assert counts == {"positive": 1, "sampled_negative": 1, "hard_negative": 2, "dropped_no_item_text": 1}
    assert len(frame) == 4 and set(frame["context_text"]) == {"title i1 | title i0"}
    hard = frame[frame["source"] == "hard_negative"]
    assert hard["label"].eq(0).all() and hard["weight"].eq(0.5).all()
    assert set(hard["item_text"]) == {"title i7. b. c", "title i8. b. c"}
    assert frame.loc[frame["source"] == "positive", "weight"].tolist() == [3.0]


def test_validation_pairs_and_metrics_from_scores(data_dir) -> None:
    inputs = load_ranking_inputs(data_dir)
    users = select_validation_users(inputs, None, seed=0)
    assert users.user_ids == ["u1", "u2"] and users.targets == ["i3", "i6"]
    assert users.histories == [ITEMS[:3], ["i5"]]
    candidates = [[("i8", 0.9), ("i9", 0.8), ("i3", 0.7)], [("i0", 0.5), ("i1", 0.4)]]   # u2's target: not retrieved
    pairs = build_validation_pairs(inputs, users, negatives_per_positive=3, candidates=candidates, seed=0)
    auc = pairs[pairs["kind"] == "auc"]
    assert auc.groupby("user")["label"].agg(["sum", "size"]).values.tolist() == [[1, 4], [1, 4]]
    own = {0: set(ITEMS[:5]), 1: set(ITEMS[5:8])}
    negatives = auc[auc["label"] == 0]
    assert not any(item in own[u] for u, item in zip(negatives["user"], negatives["item_id"]))
    rerank = pairs[pairs["kind"] == "rerank"]
    assert rerank["item_id"].tolist() == ["i8", "i9", "i3", "i0", "i1"] and rerank["label"].sum() == 1
    assert rerank["retriever_rank"].tolist() == [0, 1, 2, 0, 1]
    assert rerank["retriever_score"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.5, 0.4])

    # A ranker that scores every positive pair highest: AUC 1, and u1's target moves from 3rd to 1st.
    scored = pairs.assign(score=pairs["label"].astype(float))
    result = validation_metrics(scored, inputs.popularity, n_users=2, n_candidates=3, k=2, with_rerank=True,
                                depth=2, weights=[0.1, 0.5])
    assert result["auc"]["auc"] == 1.0 and result["auc"]["positives"] == 2 and result["auc"]["negatives"] == 6
    before, after = result["rerank"]["retriever"], result["rerank"]["reranked"]
    assert before["ndcg@2"] == 0.0 and after["ndcg@2"] == pytest.approx(0.5)    # 1 of 2 users at rank 0
    assert before["recall@3"] == after["recall@3"] == pytest.approx(0.5)
    assert result["rerank"]["ndcg@2_gain"] == pytest.approx(0.5)
    # Served blend, top 2 by retriever score re-scored: the target (3rd) is outside them and stays 3rd.
    blend = result["rerank"]["served_blend"]
    assert blend["0.1"]["ndcg@2"] == blend["0.5"]["ndcg@2"] == 0.0 and result["rerank"]["best_ndcg@2_gain"] == 0.5
    deeper = validation_metrics(scored, {}, 2, 3, 2, True, depth=3, weights=[0.1, 0.5])["rerank"]["served_blend"]
    # Re-scored too: 0.9 * 0.7 + 0.1 * sigmoid(1) < 0.9 * 0.9 + 0.1 * sigmoid(0), but at w 0.5 the target leads.
    assert deeper["0.1"]["ndcg@2"] == 0.0 and deeper["0.5"]["ndcg@2"] == pytest.approx(0.5)
    assert "served: top-2 blended, cross_encoder_weight 0.5" in format_validation_table(result, 2, 3)
    worse = validation_metrics(pairs.assign(score=-pairs["retriever_rank"].astype(float)), {}, 2, 3, 2, True)
    assert worse["rerank"]["ndcg@2_gain"] == 0.0 and worse["auc"]["auc"] < 1.0   # retriever order kept
    assert "do not serve it" in format_validation_table(worse, 2, 3)
    assert validation_metrics(scored, {}, 2, 3, 2, with_rerank=False)["rerank"] is None
