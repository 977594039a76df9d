"""The whole product on synthetic data: preprocess -> train -> index -> evaluate -> Serve over HTTP."""

from __future__ import annotations

import json

import httpx
import pyarrow.parquet as pq
import pytest

from recsys.data.config import PreprocessConfig, SourceConfig, SyntheticConfig
from recsys.data.pipeline import run_preprocess
from recsys.eval.config import EvalConfig
from recsys.eval.offline import run_evaluation
from recsys.index.build import run_build_index
from recsys.index.config import IndexConfig
from recsys.serve.app import build_app
from recsys.train.config import TrainConfig
from recsys.train.trainer import run_training
from recsys.train.user_tower import UserTowerSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def test_pipeline_end_to_end(ray_cluster, recsys_home, tiny_model_dir, serve_app):
    data = run_preprocess(PreprocessConfig(
        source=SourceConfig(synthetic=SyntheticConfig(n_users=60, n_items=50, seed=3)), num_partitions=2))
    assert data["users"] == 60 and data["events"]["rows_quarantined"] == 0
    assert data["train_pairs"]["next_item"] > 100

    # The sequence user tower is forced (auto would keep whichever tower wins on validation) so the
    # index, evaluation and Serve paths of that tower run here.
    model = run_training(TrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, micro_batch_size=8,
                                     max_steps=4, warmup_steps=1, query_max_length=32, item_max_length=16,
                                     user_tower=UserTowerSettings(kind="sequence", epochs=3, threads=1)))
    assert model["steps"] == 4 and model["data_version"] == data["version"]
    model_dir = recsys_home / "artifacts" / "models" / model["version"]
    tower = json.loads((model_dir / "manifest.json").read_text())["user_tower"]
    assert tower["kind"] == "sequence" and set(tower["validation"]) == {"sequence", "text"}
    assert (model_dir / "user_tower" / "user_tower.safetensors").is_file()

    index = run_build_index(IndexConfig(embed_concurrency=1))
    assert index["items"] == 50 and index["model_version"] == model["version"]
    index_dir = recsys_home / "artifacts" / "indexes" / index["version"]
    assert (index_dir / "recommend.faiss").is_file()

    report = run_evaluation(EvalConfig(max_users=40, ks=[10], embed_concurrency=1))
    metrics = report["metrics"]
    assert set(metrics) == {"fine_tuned", "fine_tuned (text tower)", "fine_tuned (sequence tower)", "zero_shot",
                            "popularity", "cooccurrence"}
    assert metrics["fine_tuned"] == metrics["fine_tuned (sequence tower)"]
    assert all(m["users"] == 40 and 0.0 <= m["recall@10"] <= 1.0 for m in metrics.values())
    eval_dir = recsys_home / "artifacts" / "eval" / report["version"]
    assert "| fine_tuned |" in (eval_dir / "report.md").read_text()
    assert json.loads((eval_dir / "metrics.json").read_text())["models"]["fine_tuned"] == model["version"]

    base_url = serve_app(build_app({}))
    with httpx.Client(base_url=base_url, timeout=60) as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["index_version"] == index["version"]
        found = http.post("/v1/search", json={"query": "stainless skillet", "k": 5}).json()
        assert 1 <= len(found["items"]) <= 5 and found["model_version"] == model["version"]
        user = http.post("/v1/recommend", json={"user_id": "u00001", "k": 5})
        assert user.status_code == 200, user.text
        assert user.json()["cold_start"] is False and user.json()["items"]
        some_items = pq.read_table(index_dir / "item_ids.parquet").column("item_id").to_pylist()[:2]
        explicit = http.post("/v1/recommend", json={"history": some_items, "k": 5})
        assert explicit.status_code == 200 and explicit.json()["items"], explicit.text
        bad = http.post("/v1/recommend", json={"user_id": "u00001", "k": 0})
        assert bad.status_code == 422 and "k" in bad.text
