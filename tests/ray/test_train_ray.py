"""Ray Train + DeepSpeed ZeRO-2 with 2 CPU workers: a few real steps, the loss goes down (full fine-tuning and
LoRA), with mined hard negatives and graded positive weights on the way."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModel

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.train.config import TrainConfig
from recsys.train.curves import read_metrics
from recsys.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey"]
THINGS = ["shoe", "sock", "jacket", "bottle"]


def make_pair_data(home, catalog_items: int | None = None) -> str:
    """192 pairs where the anchor names the positive item's colour and kind: learnable fast.

    Big enough that 24 steps of 2 x 8 pairs are ~2 epochs (each epoch restarts the data stream).
    catalog_items: also write catalog.parquet (the first N colour-kind items) and sequences/ whose
    validation target is the user's last history item, for in-training evaluation."""
    version, out = new_version_dir("data")
    rows = [("next_item", f"{c} {t} | seen {k}", f"{c}-{t}", f"{c} {t}. Brand. Category")
            for c in COLOURS for t in THINGS for k in range(6)]
    (out / "train_pairs").mkdir()
    table = pa.table({k: [r[i] for r in rows] for i, k in
                      enumerate(["kind", "anchor_text", "positive_item_id", "positive_text"])})
    pq.write_table(table, out / "train_pairs" / "part-0.parquet")
    if catalog_items:
        items = [(f"{c}-{t}", f"{c} {t}") for c in COLOURS for t in THINGS][:catalog_items]
        pq.write_table(pa.table({"item_id": [i for i, _ in items], "title": [t for _, t in items],
                                 "brand": ["Brand"] * len(items), "category": ["Category"] * len(items),
                                 "in_stock": [True] * len(items)}),
                       out / "catalog.parquet")
        # items [other, target, target]: valid_index 2, the history text names the target first.
        users = [[items[(u + 1) % len(items)][0], items[u % len(items)][0], items[u % len(items)][0]]
                 for u in range(3 * len(items))]
        (out / "sequences").mkdir()
        n = len(users)   # the columns of recsys.data.sequences.build_user_sequences
        pq.write_table(pa.table({
            "user_id": [f"u{u}" for u in range(n)], "items": users, "event_types": [["view"] * 3] * n,
            "weights": pa.array([[1.0] * 3] * n, pa.list_(pa.float32())),
            "timestamps": [[1_700_000_000 + 60 * k for k in range(3)]] * n, "n_sessions": [1] * n,
            "n_train": [2] * n, "valid_index": [2] * n, "test_index": [-1] * n, "valid_item": [u[2] for u in users],
            "test_item": pa.nulls(n, pa.string()), "search_queries": pa.array([[]] * n, pa.list_(pa.string())),
            "search_items": pa.array([[]] * n, pa.list_(pa.string()))}), out / "sequences" / "part-0.parquet")
    write_manifest(out, {"kind": "data", "version": version,
                         "config": {"retrieval_pairs": {"max_history_items": 8}}})
    mark_latest("data", version)
    return version


def test_lora_run_exports_a_plain_model_the_index_job_and_retriever_load(ray_cluster, recsys_home, tiny_model_dir):
    """LoRA through Ray Train + DeepSpeed: only the adapted projections change, the export is a plain
    HF directory (adapters merged), and the index job and Serve's retrieval stage load it as they load
    a fully fine-tuned model. The run also uses the logQ-corrected loss (its log q column on the way in)."""
    from safetensors.torch import load_file

    from recsys.index.build import run_build_index
    from recsys.index.config import IndexConfig
    from recsys.serve.retrieve import RetrievalModel

    data_version = make_pair_data(recsys_home, catalog_items=32)
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, zero_stage=2, micro_batch_size=8,
                      max_steps=24, lr=2e-2, warmup_steps=2, temperature=0.1, query_max_length=16,
                      item_max_length=16, shuffle_buffer=0, eval_every=0, checkpoint_every=0,
                      lora={"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0}, logq_correction=True)
    result = run_training(cfg)
    model_dir = recsys_home / "artifacts" / "models" / result["version"]
    curve = json.loads((model_dir / "loss_curve.json").read_text())
    # Adapters on a tiny random encoder learn slower than full fine-tuning: a smaller, still real, drop.
    assert sum(curve[-6:]) < 0.95 * sum(curve[:6]), f"LoRA loss did not go down: {curve}"
    trained = load_file(str(model_dir / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not any("lora" in k for k in trained), "adapters must be merged into the exported weights"
    changed = {k for k in base if not (trained[k] == base[k]).all()}
    assert changed and all(".attention.self.query." in k or ".attention.self.value." in k for k in changed), changed

    index = run_build_index(IndexConfig(embed_concurrency=1))
    assert index["items"] == 32 and index["model_version"] == result["version"]
    retrieval = RetrievalModel(index["path"], recsys_home / "artifacts" / "data" / data_version / "catalog.parquet",
                               query_max_length=16)
    found = retrieval.retrieve(["red shoe"], k=5)[0]
    scores = [score for _, score in found]
    assert len({item for item, _ in found}) == 5 and scores == sorted(scores, reverse=True)
    assert {item for item, _ in found} <= set(retrieval.catalog.titles)


def test_two_worker_zero2_learns_from_hard_negatives_and_logs_every_step(ray_cluster, recsys_home, tiny_model_dir,
                                                                         monkeypatch, capsys):
    """Full fine-tuning, 2 workers, ZeRO-2: the loss goes down, the export is a plain HF directory, and rank 0
    logged every step (JSON lines, TensorBoard, a PNG of the curves).

    Mining from a real index (MiniLM item vectors, Faiss) before Ray Train: each pair gets two distinct items
    of its anchor's top-k that are none of the anchor's positives, the run trains on those pairs with the
    other worker's items as extra negatives, and a resumed run would read the same mined file. The pairs
    also carry graded judgments (red ones judged looser), whose weights reach the loss on the way; the
    judgments file, named by both the hard negatives and the weights, is parsed once."""
    import recsys.train.trainer as trainer
    from recsys.eval.search import read_judgments
    from recsys.index.build import run_build_index
    from recsys.index.config import IndexConfig
    from recsys.train.hard_negatives import negative_column_pairs, negative_columns
    from recsys.train.retriever import HARD_NEGATIVE_PAIRS

    data_version = make_pair_data(recsys_home, catalog_items=32)
    pairs = pq.read_table(recsys_home / "artifacts" / "data" / data_version / "train_pairs").to_pandas()
    judged = recsys_home / "judgments.csv"
    pairs.assign(query=pairs["anchor_text"], item_id=pairs["positive_item_id"],
                 relevance=[2.0 if a.startswith("red") else 3.0 for a in pairs["anchor_text"]])[
        ["query", "item_id", "relevance"]].to_csv(judged, index=False)
    index = run_build_index(IndexConfig(model="default", embed_concurrency=1))
    reads: list[str] = []

    def counted(path):
        reads.append(str(path))
        return read_judgments(path)

    monkeypatch.setattr(trainer, "read_judgments", counted)
    # No pair is judged <= 1.75, so the judged negatives leave every anchor to the index.
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, zero_stage=2, micro_batch_size=8,
                      max_steps=24, lr=5e-3, warmup_steps=2, temperature=0.1, query_max_length=16,
                      item_max_length=16, shuffle_buffer=0, eval_every=0, checkpoint_every=0,
                      hard_negatives={"index": index["version"], "top_k": 5, "per_pair": 2, "embed_concurrency": 1,
                                      "judgments": str(judged)},
                      negatives_across_workers=True, graded_positives={"judgments": str(judged)})
    capsys.readouterr()
    result = run_training(cfg)
    assert reads == [str(judged)]
    red = pairs["anchor_text"].str.startswith("red").mean()   # weight 0.5 (gain 1 of 2), the rest 1.0
    assert f"graded positives: 192 of 192 pairs judged in {judged} (mean weight {1 - red / 2:.3f}" \
        in capsys.readouterr().out
    model_dir = recsys_home / "artifacts" / "models" / result["version"]
    mined = pq.read_table(model_dir / HARD_NEGATIVE_PAIRS).to_pandas()
    assert negative_column_pairs(list(mined.columns)) == [negative_columns(0), negative_columns(1)]
    assert len(mined) == 192 and (mined["negative_item_id"] != mined["negative_item_id_1"]).all()
    positives = mined.groupby("anchor_text")["positive_item_id"].agg(set)
    for id_column, text_column in (negative_columns(0), negative_columns(1)):
        assert mined[text_column].str.len().gt(0).all()
        assert not any(neg in positives[a] for a, neg in zip(mined["anchor_text"], mined[id_column]))
        # Retrieved, not uniform: MiniLM puts other items of the same colour or kind near each anchor.
        shares_a_word = [bool(set(a.split(" | ")[0].split()) & set(n.split(".")[0].split()))
                         for a, n in zip(mined["anchor_text"], mined[text_column])]
        assert sum(shares_a_word) > 0.8 * len(mined), (text_column, sum(shares_a_word))
    curve = json.loads((model_dir / "loss_curve.json").read_text())
    assert len(curve) == 24 and sum(curve[-6:]) < 0.8 * sum(curve[:6]), f"loss did not go down: {curve}"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["config"]["zero_stage"] == 2 and manifest["metrics"]["steps"] == 24
    assert AutoModel.from_pretrained(model_dir).config.hidden_size == 32   # a plain HF directory, no DeepSpeed
    # Observability: one JSON line per step written by rank 0 while training, TensorBoard events, a PNG.
    records = read_metrics(model_dir / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    assert [round(r["loss"], 4) for r in records] == curve
    assert all(r["samples_per_s"] > 0 and r["lr"] >= 0 for r in records) and records[1]["lr"] > records[0]["lr"]
    assert list((model_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (model_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bm25_mining_alone_gives_lexical_negatives_never_a_positive(recsys_home, capsys):
    """hard_negatives.bm25_top_k without an index: each pair's negative is one of the catalog items BM25 ranks
    for its anchor (so shares a word with it), never the anchor's positive; no Ray or model needed."""
    from recsys.train.config import HardNegativeSettings
    from recsys.train.retriever import mine_pair_hard_negatives

    data_version = make_pair_data(recsys_home, catalog_items=32)
    data_dir = recsys_home / "artifacts" / "data" / data_version
    out_dir = recsys_home / "model-out"
    target = mine_pair_hard_negatives(HardNegativeSettings(bm25_top_k=10), data_dir, data_version, out_dir,
                                      use_gpu=False, seed=0, job="train", judgments=None)
    mined = pq.read_table(target).to_pandas()
    assert len(mined) == 192 and (mined["negative_item_id"] != mined["positive_item_id"]).all()
    shares_a_word = [bool(set(a.split(" | ")[0].split()) & set(n.split(".")[0].split()))
                     for a, n in zip(mined["anchor_text"], mined["negative_text"])]
    assert all(shares_a_word)
    assert mined["negative_item_id"].nunique() > 8                  # drawn across each anchor's top-10
    logged = capsys.readouterr().out
    assert "BM25 top-10 of 192 anchors over 32 catalog texts" in logged
    assert "192 mined (judgments, index, BM25), 0 uniform" in logged


def test_catalog_queries_are_shuffled_into_the_logged_pairs(ray_cluster, recsys_home, tiny_model_dir):
    """The pair stream run_training feeds the workers: catalog_queries.pairs pairs made from the catalog's
    own titles join the logged pairs through a seeded global shuffle (not a block at the end), each one
    some of its own item's title words; and the logged pairs lose their stored query-by-query order.
    (No training run of its own, to keep the suite's time: the other training tests run this stream,
    and the Home Depot runs in the README trained on it.)"""
    import ray

    from recsys.train.trainer import training_pair_stream

    data_version = make_pair_data(recsys_home, catalog_items=32)
    data_dir = recsys_home / "artifacts" / "data" / data_version
    stored = ray.data.read_parquet(str(data_dir / "train_pairs"))
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), num_workers=2, zero_stage=2, micro_batch_size=8,
                      max_steps=None, epochs=1.0, lr=5e-3, warmup_steps=2, temperature=0.1, query_max_length=16,
                      item_max_length=16, eval_every=0, checkpoint_every=0,
                      catalog_queries={"pairs": 64, "min_words": 1, "max_words": 2})
    stream, n_pairs = training_pair_stream(data_dir / "train_pairs", data_dir, cfg)
    mixed = stream.take_all()
    kinds = [row["kind"] for row in mixed]
    assert n_pairs == len(mixed) == 256 and kinds.count("catalog_query") == 64
    assert 16 <= kinds[:128].count("catalog_query") <= 48, kinds      # spread over the stream
    logged = [row["anchor_text"] for row in mixed if row["kind"] != "catalog_query"]
    stored_order = [row["anchor_text"] for row in stored.take_all()]
    assert sorted(logged) == sorted(stored_order) and logged != stored_order    # all kept, reordered
    same_order, _ = training_pair_stream(data_dir / "train_pairs", data_dir, cfg)
    assert [row["anchor_text"] for row in same_order.take_all()] == [row["anchor_text"] for row in mixed]
    unshuffled, _ = training_pair_stream(data_dir / "train_pairs", data_dir, cfg.model_copy(update={
        "global_shuffle": False, "catalog_queries": cfg.catalog_queries.model_copy(update={"pairs": 0})}))
    assert [row["anchor_text"] for row in unshuffled.take_all()] == stored_order
    titles = {f"{c}-{t}": f"{c} {t}" for c in COLOURS for t in THINGS}
    for row in mixed:
        if row["kind"] == "catalog_query":
            assert set(row["anchor_text"].split()) <= set(titles[row["positive_item_id"]].split()), row
