"""Stage 2 of jobs/train.py: fit the sequence user tower, compare it with the text tower, pick one.

Runs after the encoder is exported: the catalog is embedded with the fine-tuned item tower
(Ray Data actors), the tower is fitted in one Ray task (it is small: one worker trains it in
minutes, where DDP over gloo would only add traffic), and both user towers are scored on the
same validation users. The winner is what the model serves (manifest `user_tower.kind`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import ray

from recsys.artifacts import read_manifest
from recsys.data.text import history_text_for_items
from recsys.eval.metrics import summarize_ranks, target_ranks
from recsys.index.build import load_item_texts
from recsys.index.embed import embed_texts
from recsys.models.encoder import query_tower_path
from recsys.models.sequence_tower import USER_TOWER_DIR, save_user_tower
from recsys.runtime import log
from recsys.train.config import TrainConfig
from recsys.train.user_tower import UserTowerSettings, fit_sequence_tower
from recsys.train.user_tower_data import held_out_histories, held_out_rows, read_sequences, training_windows

JOB = "train"


@ray.remote
def _fit_remote(settings: UserTowerSettings, text_vectors, train, valid, seed: int):
    # Progress lines go through the task's stdout, which Ray forwards to the driver.
    tower, history = fit_sequence_tower(settings, text_vectors, train, valid, seed,
                                        log=lambda line: print(line, flush=True))
    return tower, history


def text_tower_validation(model_dir: Path, cfg: TrainConfig, histories: list[list[str]], titles: dict[str, str],
                          max_items: int, item_vectors: np.ndarray, position: dict[str, int],
                          targets: np.ndarray) -> dict[str, float]:
    """Validation recall/NDCG@10 of the fine-tuned encoder over the history text, for the same users."""
    texts = [history_text_for_items(h, titles, max_items) for h in histories]
    queries = embed_texts([str(i) for i in range(len(texts))], texts, query_tower_path(model_dir),
                          cfg.query_max_length)
    masks = [np.asarray([position[i] for i in h], dtype=np.int64) for h in histories]
    ranks = target_ranks(queries @ item_vectors.T, targets, masks)
    metrics = summarize_ranks(ranks, (10,))
    return {"val_recall@10": metrics["recall@10"], "val_ndcg@10": metrics["ndcg@10"]}


def train_user_tower(cfg: TrainConfig, model_dir: Path, data_dir: Path) -> dict:
    """Fit + compare; writes model_dir/user_tower/ and returns the manifest's `user_tower` entry."""
    settings: UserTowerSettings = cfg.user_tower
    if settings.kind == "text":
        return {"kind": "text", "reason": "user_tower.kind=text"}
    if not (data_dir / "sequences").is_dir() or not (data_dir / "catalog.parquet").is_file():
        log(JOB, f"user tower: data {data_dir.name} has no sequences/catalog; serving the text user tower")
        return {"kind": "text", "reason": "no behaviour sequences"}
    item_ids, titles, texts = load_item_texts(data_dir)
    position = {item: k for k, item in enumerate(item_ids)}
    sequences = read_sequences(data_dir)
    spec = settings.tower
    train = training_windows(sequences, position, spec.max_length, settings.reversed_windows)
    valid = held_out_rows(sequences, position, spec.max_length, "valid")
    if len(valid) == 0 or len(train) == 0:
        log(JOB, "user tower: the data has no behaviour sequences with validation targets "
                 "(e.g. search-only data); serving the text user tower")
        return {"kind": "text", "reason": "no validation targets"}
    log(JOB, f"user tower: embedding {len(item_ids)} catalog items with the fine-tuned item tower")
    vectors = embed_texts(item_ids, texts, str(model_dir), cfg.item_max_length)
    log(JOB, f"user tower: fitting the sequence tower on {len(train)} windows "
             f"({int((train.targets > 0).sum())} next-item targets), {len(valid)} validation users")
    tower, history = ray.get(_fit_remote.options(num_cpus=min(settings.threads, 1)).remote(
        settings, vectors, train, valid, cfg.seed))
    best = max(history, key=lambda r: r["val_ndcg@10"])
    sequence_metrics = {k: best[k] for k in ("val_recall@10", "val_ndcg@10")}

    max_items = int(read_manifest(data_dir).get("config", {}).get("retrieval_pairs", {}).get("max_history_items", 8))
    text_metrics = text_tower_validation(model_dir, cfg, held_out_histories(sequences, position, "valid"),
                                         dict(zip(item_ids, titles)), max_items, vectors, position,
                                         valid.targets - 1)
    if settings.kind == "auto":
        kind = "sequence" if sequence_metrics["val_ndcg@10"] > text_metrics["val_ndcg@10"] else "text"
    else:
        kind = settings.kind
    events = Counter(e for seq in sequences for e in seq["event_types"])
    entry = {"kind": kind, "validation": {"sequence": sequence_metrics, "text": text_metrics},
             "best_epoch": best["epoch"], "epochs_run": len(history), "history": history,
             "default_event": events.most_common(1)[0][0] if events else "purchase",
             "default_gap_bucket": int(np.bincount(train.gaps[train.items > 0]).argmax()),
             "max_history_items": max_items}
    save_user_tower(model_dir / USER_TOWER_DIR, tower, item_ids, entry)
    log(JOB, f"user tower: validation ndcg@10 sequence {sequence_metrics['val_ndcg@10']:.4f} vs text "
             f"{text_metrics['val_ndcg@10']:.4f} -> serving the {kind} tower")
    return {k: v for k, v in entry.items() if k != "history"}
