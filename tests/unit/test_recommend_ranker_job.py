"""jobs/train_recommend_ranker.py end to end on a toy shop: real Faiss index of a tiny encoder, the serving code's
candidates and features, LightGBM with CV-chosen rounds, two targets per user."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.index.faiss_index import build_faiss_index, save_item_index
from recsys.models.encoder import TextEmbedder
from recsys.models.ltr import LTRModel
from recsys.models.recommend_features import RECOMMEND_FEATURES
from recsys.train.recommend_ranker import next_item_targets, run_recommend_ranker_training
from recsys.train.recommend_ranker_config import RecommendRankerConfig

N_ITEMS, N_USERS = 40, 120


def toy_shop(tiny_model_dir) -> None:
    """Item 2k is always followed by item 2k + 1 (a refill after its device): co-occurrence knows it."""
    rng = np.random.default_rng(0)
    items = [f"i{n:02d}" for n in range(N_ITEMS)]
    version, out = new_version_dir("data")
    pq.write_table(pa.table({"item_id": items, "title": [f"thing {n}" for n in range(N_ITEMS)],
                             "category": [""] * N_ITEMS, "in_stock": [True] * N_ITEMS}), out / "catalog.parquet")
    seqs = [[items[p + d] for p in 2 * rng.choice(N_ITEMS // 2, 3, replace=False) for d in (0, 1)]
            for _ in range(N_USERS)]
    (out / "sequences").mkdir()
    pq.write_table(pa.table({"user_id": [f"u{u:03d}" for u in range(N_USERS)], "items": seqs}),
                   out / "sequences" / "part-0.parquet")
    pq.write_table(pa.table({"item_id": items, "count": [1] * N_ITEMS}), out / "popularity.parquet")
    write_manifest(out, {"kind": "data", "version": version})
    mark_latest("data", version)
    vectors = TextEmbedder(str(tiny_model_dir), max_length=8).embed([f"thing {n}" for n in range(N_ITEMS)])
    version, out = new_version_dir("indexes")
    save_item_index(out, build_faiss_index(vectors), items, {"kind": "index", "version": version,
                                                              "model_path": str(tiny_model_dir)})
    mark_latest("indexes", version)


def test_next_item_targets_shift_back_one_step_at_a_time() -> None:
    histories = {"a": ["1", "2", "3", "4"], "b": ["5", "6", "7"]}
    assert next_item_targets(histories, 2) == (["a", "b"], [["1", "2", "3"], ["5", "6"]], ["4", "7"])
    assert next_item_targets(histories, 2, shift=2) == (["a"], [["1", "2"]], ["3"])


def test_ranker_job_learns_from_two_targets_per_user(recsys_home, tiny_model_dir) -> None:
    toy_shop(tiny_model_dir)
    cfg = RecommendRankerConfig(retrieval_k=20, num_trees=60, cv_folds=3, min_data_in_leaf=20,
                                targets_per_user=2, validation_fraction=0.2)
    result = run_recommend_ranker_training(cfg)
    manifest = json.loads((recsys_home / "artifacts" / "rankers" / result["version"] / "manifest.json").read_text())
    report = manifest["validation"]
    queries = report["queries"]
    # Every user has 6 items: all give a last-item target; the ones outside validation give a second one.
    assert queries["validation"] + 2 * (N_USERS - queries["validation"]) == queries["train"] + queries["validation"]
    assert report["cv"]["folds"] == 3 and 1 <= report["cv"]["rounds"] <= 60 == cfg.num_trees
    assert report["trees"] == report["cv"]["rounds"]
    # The refill rule makes half the targets obvious to co-occurrence; the learned order must find them.
    assert report["validation_ndcg@10"]["ranker"] >= 0.4, report
    assert manifest["features"] == list(RECOMMEND_FEATURES)
    LTRModel.load(recsys_home / "artifacts" / "rankers" / result["version"], RECOMMEND_FEATURES)


def test_cv_rounds_peak_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    gains = (x[:, 0] > 1.0).astype(np.float32)        # feature 0 decides relevance
    rounds, ndcg = LTRModel.cv_rounds(x, gains, [20] * 30, folds=3, max_trees=40, min_data_in_leaf=5)
    assert 1 <= rounds <= 40 and ndcg > 0.8
    with pytest.raises(ValueError):
        LTRModel.cv_rounds(x, gains, [20] * 30, folds=1, max_trees=40)
