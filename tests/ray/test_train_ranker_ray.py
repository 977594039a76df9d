"""Cross-encoder ranker on Ray Train + DeepSpeed ZeRO-2 with 2 CPU workers: a toy data version with
a learnable click rule, hard negatives from a real Faiss index, validation AUC and re-ranking."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.train import TrainingFailedError
from test_train_fault import kill_worker_when
from transformers import AutoModelForSequenceClassification

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.data.examples import negative_distribution, ranking_examples
from recsys.index.faiss_index import build_faiss_index, save_item_index
from recsys.models.encoder import TextEmbedder
from recsys.train.checkpoints import TRAIN_STATE_FILE
from recsys.train.curves import read_metrics
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.ranker_trainer import run_ranker_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey"]
THINGS = ["shoe", "sock", "jacket", "bottle"]
CLICKED = {"shoe", "sock"}   # the toy shop's rule: people only ever engage with shoes and socks


def make_ranking_data(n_users: int = 48, length: int = 8) -> tuple[str, list[str], list[str]]:
    """A data version with sequences/, catalog.parquet, popularity.parquet and ranking_examples/.

    Uniform negatives are mostly jackets and bottles, so "is it a shoe or a sock" is learnable
    in a few dozen steps by a tiny model. Leave-last-out: items[6] is the validation target."""
    rng = random.Random(0)
    version, out = new_version_dir("data")
    item_ids = [f"{c}-{t}" for c in COLOURS for t in THINGS]
    texts = [f"{c} {t}. Brand. Category" for c in COLOURS for t in THINGS]
    pq.write_table(pa.table({"item_id": item_ids, "title": [f"{c} {t}" for c in COLOURS for t in THINGS],
                             "brand": ["Brand"] * 32, "category": ["Category"] * 32,
                             "description": [""] * 32, "price": [1.0] * 32, "in_stock": [True] * 32}),
                   out / "catalog.parquet")
    liked = [i for i in item_ids if i.split("-")[1] in CLICKED]
    seqs = [[rng.choice(liked) for _ in range(length)] for _ in range(n_users)]
    sequences = pa.table({"user_id": [f"u{u:03d}" for u in range(n_users)], "items": seqs,
                          "n_train": [length - 2] * n_users, "valid_index": [length - 2] * n_users,
                          "test_index": [length - 1] * n_users})
    (out / "sequences").mkdir()
    pq.write_table(sequences, out / "sequences" / "part-0.parquet")
    counts: dict[str, int] = {}
    for s in seqs:
        for i in s[:length - 2]:
            counts[i] = counts.get(i, 0) + 1
    pq.write_table(pa.table({"item_id": list(counts), "count": list(counts.values())}), out / "popularity.parquet")
    ids, probs = negative_distribution(np.array(item_ids, dtype=object), counts, "uniform", 0.75)
    examples = ranking_examples(sequences, ids, probs, max_positives_per_user=5, negatives_per_positive=3,
                                imbalance="reweight", seed=0)
    (out / "ranking_examples").mkdir()
    pq.write_table(examples, out / "ranking_examples" / "part-0.parquet")
    write_manifest(out, {"kind": "data", "version": version, "config": {
        "ranking": {"negative_sampling": "uniform", "popularity_alpha": 0.75},
        "retrieval_pairs": {"max_history_items": 4}}})
    mark_latest("data", version)
    return version, item_ids, texts


def make_index(data_version: str, item_ids: list[str], texts: list[str], model_dir) -> str:
    """A real Faiss index of the catalog embedded by the tiny encoder (a weak but real retriever)."""
    vectors = TextEmbedder(str(model_dir), max_length=16).embed(texts)
    version, out = new_version_dir("indexes")
    save_item_index(out, build_faiss_index(vectors), item_ids, {
        "kind": "index", "version": version, "model_path": str(model_dir), "model_version": "tiny",
        "data_version": data_version, "query_max_length": 32})
    mark_latest("indexes", version)
    return version


def test_two_worker_zero2_ranker_learns_and_reranks(ray_cluster, recsys_home, tiny_model_dir):
    data_version, item_ids, texts = make_ranking_data()
    index_version = make_index(data_version, item_ids, texts, tiny_model_dir)
    cfg = RankerTrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, zero_stage=2,
                            micro_batch_size=8, max_steps=60, lr=3e-3, warmup_steps=4, max_length=48,
                            item_max_length=12, shuffle_buffer=0, log_every=20, hard_negatives_per_positive=1,
                            hard_negative_top_k=8, eval_max_users=None, eval_negatives_per_positive=4,
                            rerank_candidates=10, eval_k=5, eval_batch_size=32)
    result = run_ranker_training(cfg)
    out = recsys_home / "artifacts" / "rankers" / result["version"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "ranker" and manifest["data_version"] == data_version
    assert manifest["index_version"] == index_version and manifest["config"]["zero_stage"] == 2
    rows = manifest["rows"]
    # 60 steps x 2 workers x 8 rows = 960 rows = 192 groups of (positive + 3 sampled + 1 hard negative)
    # out of 48 users x 5 positives; a 32-item catalog always leaves a non-own item to mine.
    assert rows["groups_available"] == 240 and rows["groups_used"] == 192
    assert (rows["positive"], rows["sampled_negative"], rows["hard_negative"]) == (192, 576, 192)

    curve = json.loads((out / "loss_curve.json").read_text())
    assert len(curve) == 60
    first, last = np.mean(curve[:10]), np.mean(curve[-10:])
    # The BCE starts below ln 2: the frozen retriever offset (a * retriever_score + b) already separates
    # some pairs, and the transformer learns the rest (shoes and socks).
    assert last < first - 0.01, f"BCE did not go down: {first:.4f} -> {last:.4f}"
    assert [r["step"] for r in read_metrics(out / "logs" / "metrics.jsonl")] == list(range(1, 61))
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    offset = manifest["retriever_offset"]
    assert set(offset) >= {"scale", "bias"} and np.isfinite([offset["scale"], offset["bias"]]).all(), offset

    validation = manifest["validation"]
    assert validation["auc"]["positives"] == 48 and validation["auc"]["negatives"] == 192
    assert validation["auc"]["auc"] > 0.6, validation["auc"]
    before, after = validation["rerank"]["retriever"], validation["rerank"]["reranked"]
    assert before["users"] == after["users"] == 48
    assert before["recall@10"] == after["recall@10"]          # re-ranking never changes the candidate set
    assert 0.0 <= before["ndcg@5"] <= 1.0 and 0.0 <= after["ndcg@5"] <= 1.0
    assert "re-ranked by ranker" in (out / "report.md").read_text()

    reloaded = AutoModelForSequenceClassification.from_pretrained(out)   # a plain HF directory
    assert reloaded.config.num_labels == 1 and reloaded.config.hidden_size == 32


def test_killed_ranker_worker_restarts_and_a_stopped_run_resumes(ray_cluster, recsys_home, tiny_model_dir):
    """The ranker runs on the two towers' worker loop: a worker SIGKILLed after the step-3 checkpoint is
    restarted from it (max_failures=1); a second kill after step 6 stops the run; --resume finishes it
    from its latest checkpoint, to the same 12-step budget, and validates and exports as a fresh run does."""
    data_version, item_ids, texts = make_ranking_data()
    make_index(data_version, item_ids, texts, tiny_model_dir)
    cfg = RankerTrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, zero_stage=2,
                            micro_batch_size=8, max_steps=12, lr=3e-3, warmup_steps=2, max_length=48,
                            item_max_length=12, shuffle_buffer=0, log_every=3, checkpoint_every=3, max_failures=1,
                            hard_negatives_per_positive=1, hard_negative_top_k=8, eval_max_users=16,
                            rerank_candidates=10, eval_k=5, eval_batch_size=32)
    killed: list = []
    watcher = kill_worker_when(recsys_home, [lambda s: s["step"] >= 3, lambda s: s["step"] >= 6], killed)
    with pytest.raises(TrainingFailedError):
        run_ranker_training(cfg)
    watcher.join(timeout=5)
    assert [s["step"] >= 3 for s in killed] == [True, True] and killed[1]["step"] > killed[0]["step"]
    stopped = [p for p in (recsys_home / "artifacts" / "rankers").iterdir() if (p / "run.json").is_file()]
    assert len(stopped) == 1 and not (stopped[0] / "manifest.json").exists()

    result = run_ranker_training(RankerTrainConfig(resume="latest"))
    assert result["version"] == stopped[0].name
    assert result["resumed_from_step"] >= killed[1]["step"] >= 6
    out = stopped[0]
    assert [r["step"] for r in read_metrics(out / "logs" / "metrics.jsonl")] == list(range(1, 13))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 12 and manifest["validation"]["rerank"]["retriever"]["users"] == 16
    assert not (out / TRAIN_STATE_FILE).exists()
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1
