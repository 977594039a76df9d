"""Driver of jobs/train.py: training pairs (+ mined hard negatives, catalog queries, loss columns) ->
the shared DeepSpeed run (recsys/train/run_driver.py: checkpoints, restarts, resume) -> a model artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from recsys.artifacts import (
    ArtifactNotFound,
    mark_latest,
    read_manifest,
    write_manifest,
)
from recsys.data.text import catalog_texts
from recsys.eval.search import read_judgments
from recsys.models.encoder import resolve_model_path
from recsys.models.losses import judged_pair_weights, log_sampling_probability
from recsys.runtime import log
from recsys.train.catalog_queries import catalog_query_pairs
from recsys.train.config import TrainConfig
from recsys.train.curves import METRICS_FILE, summarise_run_losses
from recsys.train.deepspeed_config import plan_total_steps
from recsys.train.loop import train_loop_per_worker
from recsys.train.pair_tokens import TOKENIZE_BATCH_ROWS, PairTokens
from recsys.train.retriever import mine_pair_hard_negatives
from recsys.train.run_driver import fit_run, start_or_resume_run
from recsys.train.user_tower_stage import train_user_tower
from recsys.train.validation import load_validation_set

JOB = "train"


def run_training(cfg: TrainConfig) -> dict:
    cfg, version, model_dir, record = start_or_resume_run(cfg, cfg.data, "models", JOB)
    base_model = resolve_model_path(cfg.model_name_or_path)   # fail fast, before workers start
    data_dir, data_version = Path(record["data_path"]), record["data_version"]
    if not (data_dir / "train_pairs").is_dir():
        raise ArtifactNotFound(f"data {data_version} of run {record['run_name']} is gone: {data_dir / 'train_pairs'}")
    pairs_dir = data_dir / "train_pairs"
    hn = cfg.hard_negatives
    # Each judgments file is parsed once, though both the hard negatives and the weights may name it.
    paths = {path for path in (hn.judgments, cfg.graded_positives.judgments) if path is not None}
    judged = {path: read_judgments(path)[0] for path in paths}
    if hn.enabled:
        pairs_dir = mine_pair_hard_negatives(hn, data_dir, data_version, model_dir, cfg.use_gpu, cfg.seed, JOB,
                                             judged.get(hn.judgments or ""))
    pairs, n_pairs = training_pair_stream(pairs_dir, data_dir, cfg, judged)
    pairs = tokenized(pairs, base_model, cfg)
    total_steps = plan_total_steps(cfg, n_pairs, cfg.num_workers)
    log(JOB, f"data {data_version}: {n_pairs} pairs; {total_steps} steps x {cfg.num_workers} workers x "
             f"{cfg.micro_batch_size} pairs"
             f"{f' + {hn.per_pair} hard negative(s) each' if hn.enabled else ''}"
             f"{', negatives shared across workers' if cfg.negatives_across_workers else ''}; "
             f"ZeRO-{cfg.zero_stage}{' + LoRA' if cfg.lora.enabled else ''}, "
             f"{'GPU/NCCL' if cfg.use_gpu else 'CPU/gloo'}, bf16={cfg.use_bf16}")
    validation = None
    if cfg.eval_every:
        vset, why_not = load_validation_set(data_dir, read_manifest(data_dir), cfg.eval_max_users, cfg.seed)
        if vset is None:
            log(JOB, f"no validation during training: data {data_version} has no validation targets ({why_not})")
        else:
            log(JOB, f"validation every {cfg.eval_every} steps: {len(vset)} users x {len(vset.item_ids)} items, "
                     f"best {cfg.eval_metric} is exported"
                     + (f", early stop after {cfg.early_stopping_patience} evals without a better one"
                        if cfg.early_stopping_patience else ""))
            validation = ray.put(vset)
    log(JOB, f"step metrics -> {model_dir / 'logs' / METRICS_FILE} (tensorboard --logdir {model_dir / 'logs'})")
    started = time.perf_counter()
    loop_config = {"cfg": cfg.model_dump(), "total_steps": total_steps, "log_dir": str(model_dir / "logs"),
                   "validation": validation}
    run_metrics = fit_run(train_loop_per_worker, loop_config, cfg, record, {"train": pairs}, model_dir, JOB,
                          scored=validation is not None)
    user_tower = train_user_tower(cfg, model_dir, data_dir)   # stage 2, on the exported item tower
    return finish_model(cfg, version, model_dir, data_version, base_model, n_pairs, run_metrics,
                        time.perf_counter() - started, user_tower)


def training_pair_stream(pairs_dir: Path, data_dir: Path, cfg: TrainConfig,
                         judged: Mapping[str, pd.DataFrame] | None = None):
    """(pairs, their count): the pairs in pairs_dir, plus cfg.catalog_queries.pairs catalog-query pairs,
    globally shuffled (seeded) when cfg.global_shuffle or catalog pairs are on, then the loss's
    per-pair columns (log q, judged weight) when those options are on. `judged`: judgments path ->
    frame already read (read_judgments); a path not in it is read here.

    Preprocessing stores pairs query by query and each worker only shuffles a local buffer, so the
    global shuffle is what lets max_steps < an epoch see every part of the data, and what mixes the
    catalog pairs in (unshuffled they would arrive as a block of their own)."""
    pairs = ray.data.read_parquet(str(pairs_dir))
    n_pairs = pairs.count()
    if cfg.catalog_queries.pairs:
        pairs = pairs.union(catalog_query_dataset(pairs, data_dir, cfg, n_pairs))
        n_pairs += cfg.catalog_queries.pairs
    if cfg.global_shuffle or cfg.catalog_queries.pairs:
        log(JOB, f"shuffling all {n_pairs} training pairs (seed {cfg.seed})")
        pairs = pairs.random_shuffle(seed=cfg.seed)
    if cfg.logq_correction:
        pairs = with_log_q(pairs, data_dir)
    if cfg.graded_positives.judgments is not None:
        path = cfg.graded_positives.judgments
        table = judged[path] if judged and path in judged else read_judgments(path)[0]
        pairs = with_positive_weights(pairs, pairs_dir, path, cfg.graded_positives.floor, table)
    return pairs, n_pairs


def tokenized(pairs, tokenizer_path: str, cfg: TrainConfig):
    """The pairs as token ids, masks and keys (recsys/train/pair_tokens.py), tokenised by Ray Data tasks on
    the CPUs the workers leave free, so no worker step waits on a tokenizer."""
    log(JOB, f"pairs are tokenised in Ray Data (queries to {cfg.query_max_length}, items to {cfg.item_max_length} "
             f"tokens) ahead of the workers")
    return pairs.map_batches(PairTokens(tokenizer_path, cfg.query_max_length, cfg.item_max_length),
                             batch_format="numpy", batch_size=TOKENIZE_BATCH_ROWS)


def catalog_query_dataset(pairs, data_dir: Path, cfg: TrainConfig, n_logged: int):
    """cfg.catalog_queries.pairs pairs of a few catalog title words -> their item, as a Ray dataset with
    the stored pairs' schema."""
    settings = cfg.catalog_queries
    ids, titles, texts = catalog_texts(pq.read_table(data_dir / "catalog.parquet").to_pandas())
    extra = catalog_query_pairs(ids, titles, texts, settings.pairs, settings.min_words, settings.max_words, cfg.seed)
    schema = pairs.schema().base_schema   # the stored pairs' arrow schema, so the union's dtypes agree
    table = pa.Table.from_pandas(extra[schema.names], schema=schema, preserve_index=False)
    log(JOB, f"catalog queries: {len(extra)} pairs of {settings.min_words}-{settings.max_words} title words -> "
             f"their item (e.g. {extra['anchor_text'].iloc[0]!r} -> {extra['positive_text'].iloc[0][:60]!r}), "
             f"shuffled in with the {n_logged} logged pairs")
    return ray.data.from_arrow(table)


def with_log_q(pairs, data_dir: Path):
    """Add `positive_log_q` (log of the positive item's share of all pairs) for the loss's logQ correction.

    Counted by a Ray Data groupby over the stored pairs' id column, so the driver holds one count per
    distinct item rather than every pair's id; the lookup then travels with the map function."""
    counts = (ray.data.read_parquet(str(data_dir / "train_pairs"), columns=["positive_item_id"])
              .groupby("positive_item_id").count().to_pandas())
    log_q = log_sampling_probability(dict(zip(counts["positive_item_id"].astype(str), counts["count()"])))
    log(JOB, f"logQ correction: {len(log_q)} distinct positive items, log q from {min(log_q.values()):.2f} "
             f"to {max(log_q.values()):.2f}")

    return with_pair_column(pairs, "positive_log_q", lambda _anchor, item: log_q[item])


def with_positive_weights(pairs, pairs_dir: Path, judgments: str, floor: float,
                          table: pd.DataFrame):
    """Add `positive_weight` (judged_pair_weights of the pair's query and item) for the weighted loss.

    A pair without a judgment of its own weighs 1 (a click is a click); judged pairs weigh gain / max gain.
    The lookup is one dict on the driver (74k pairs for Home Depot), shipped with the map function.
    `table`: those judgments as read_judgments returned them.
    How many pairs are judged is summed by Ray Data where the pairs are, not read onto the driver."""
    weights = judged_pair_weights(table, floor)

    def judged(batch: dict) -> dict:
        found = [weights[key] for key in zip(map(str, batch["anchor_text"]), map(str, batch["positive_item_id"]))
                 if key in weights]
        return {"pairs": [len(batch["anchor_text"])], "judged": [len(found)], "weight": [float(sum(found))]}

    sums = (ray.data.read_parquet(str(pairs_dir), columns=["anchor_text", "positive_item_id"])
            .map_batches(judged, batch_format="numpy").sum(["pairs", "judged", "weight"]))
    n_pairs, n_judged, weight = (sums[f"sum({name})"] for name in ("pairs", "judged", "weight"))
    mean = weight / n_judged if n_judged else float("nan")
    log(JOB, f"graded positives: {n_judged} of {n_pairs} pairs judged in {judgments} "
             f"(mean weight {mean:.3f}, gain = relevance - {floor}); the others weigh 1")

    return with_pair_column(pairs, "positive_weight", lambda anchor, item: weights.get((anchor, item), 1.0))


def with_pair_column(pairs, column: str, value_of: Callable[[str, str], float]):
    """Add a float32 column, value_of(anchor_text, positive_item_id) per pair, in one map over the pairs
    (the driver builds the lookup once; it travels with the function)."""
    def add(batch: dict) -> dict:
        batch[column] = np.array([value_of(str(a), str(i)) for a, i in
                                  zip(batch["anchor_text"], batch["positive_item_id"])], dtype=np.float32)
        return batch

    return pairs.map_batches(add, batch_format="numpy")


def finish_model(cfg: TrainConfig, version: str, model_dir: Path, data_version: str, base_model: str,
                 n_pairs: int, run_metrics: dict, seconds: float, user_tower: dict | None = None) -> dict:
    """Curves, loss summary (from the whole run's metrics.jsonl, resumed attempts included), manifest."""
    metrics = dict(run_metrics) | summarise_run_losses(model_dir, f"train {version} ({data_version})")
    metrics.pop("checkpoint_score", None)
    write_manifest(model_dir, {
        "kind": "model", "version": version, "data_version": data_version, "base_model": base_model,
        "config": cfg.model_dump(), "metrics": metrics, "n_pairs": n_pairs,
        "query_max_length": cfg.query_max_length, "item_max_length": cfg.item_max_length,
        "wall_seconds": round(seconds, 1), "user_tower": user_tower or {"kind": "text"},
    })
    mark_latest("models", version)
    log(JOB, f"model {version} -> {model_dir}: loss {metrics.get('loss_first', float('nan')):.4f} -> "
             f"{metrics.get('loss_last', float('nan')):.4f} in {metrics.get('steps')} steps"
             + (f", best {cfg.eval_metric} {metrics[f'val_{cfg.eval_metric}']:.4f} at step {metrics['best_step']}"
                if f"val_{cfg.eval_metric}" in metrics else ""))
    return {"version": version, "path": str(model_dir), "data_version": data_version, **metrics}
