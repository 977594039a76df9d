"""Assemble and run the Ray Train TorchTrainer; turn its checkpoint into a model artifact.

Fault tolerance is Ray Train's: the loop reports DeepSpeed checkpoints, RunConfig keeps
`checkpoints_to_keep` of them under $RECSYS_HOME/ray_results/train-<version>/ and restarts a
failed worker group from the latest one up to `max_failures` times. A run that still stops
(Ctrl-C, killed driver, lost cluster) keeps its model version directory; `resume` re-runs it
under the same Ray run name, so Ray Train restores the same checkpoints (recsys/train/runs.py).
"""

from __future__ import annotations

import json
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
    new_version_dir,
    read_manifest,
    resolve_artifact,
    write_manifest,
)
from recsys.config import recsys_home
from recsys.data.text import catalog_texts
from recsys.eval.search import read_judgments
from recsys.models.encoder import resolve_model_path
from recsys.models.losses import judged_pair_weights, log_sampling_probability
from recsys.runtime import log
from recsys.train.catalog_queries import catalog_query_pairs
from recsys.train.checkpoints import TRAIN_STATE_FILE, read_train_state
from recsys.train.config import TrainConfig
from recsys.train.curves import METRICS_FILE, plot_training_curves, read_metrics
from recsys.train.deepspeed_config import plan_total_steps
from recsys.train.loop import train_loop_per_worker
from recsys.train.retriever import mine_pair_hard_negatives
from recsys.train.runs import (
    config_for_resume,
    find_run_to_resume,
    has_checkpoint,
    remove_unregistered_checkpoints,
    write_run_record,
)
from recsys.train.user_tower_stage import train_user_tower
from recsys.train.validation import load_validation_set

JOB = "train"


def start_or_resume_run(cfg: TrainConfig) -> tuple[TrainConfig, str, Path, dict]:
    """A new model version + run record, or the stopped run named by cfg.resume -> (cfg, version, dir, record)."""
    if cfg.resume is None:
        data_dir = resolve_artifact("data", cfg.data)
        version, model_dir = new_version_dir("models")
        record = {"version": version, "run_name": f"train-{version}",
                  "storage_path": str(recsys_home() / "ray_results"),
                  "data_version": read_manifest(data_dir)["version"], "data_path": str(data_dir),
                  "config": cfg.model_dump(exclude={"resume"})}
        write_run_record(model_dir, record)
        return cfg, version, model_dir, record
    version, model_dir, record = find_run_to_resume(cfg.resume)
    cfg = config_for_resume(cfg, record["config"])
    remove_unregistered_checkpoints(record)
    where = "its latest checkpoint" if has_checkpoint(record) else \
        "step 0: it stopped before its first checkpoint"
    log(JOB, f"resuming run {record['run_name']} (model {version}) from {where}")
    return cfg, version, model_dir, record


def run_training(cfg: TrainConfig) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg, version, model_dir, record = start_or_resume_run(cfg)
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
    # Ray Train keeps the best checkpoints by `checkpoint_score` (set only on a new best) and always the latest.
    keep = CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                            checkpoint_score_attribute="checkpoint_score" if validation is not None else None,
                            checkpoint_score_order="max")
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "total_steps": total_steps,
                           "log_dir": str(model_dir / "logs"), "validation": validation},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": pairs},
        run_config=RunConfig(name=record["run_name"], storage_path=record["storage_path"],
                             failure_config=FailureConfig(max_failures=cfg.max_failures), checkpoint_config=keep),
    )
    log(JOB, f"step metrics -> {model_dir / 'logs' / METRICS_FILE} (tensorboard --logdir {model_dir / 'logs'}); "
             f"checkpoints -> {Path(record['storage_path']) / record['run_name']}")
    started = time.perf_counter()
    stopped = f"run {record['run_name']} stopped; continue it with: python jobs/train.py --resume {version}"
    try:
        result = trainer.fit()
    except BaseException:
        log(JOB, stopped)
        raise
    if result.checkpoint is None or result.error is not None:
        raise RuntimeError(f"training finished without a checkpoint (error: {result.error}); {stopped}")
    with result.checkpoint.as_directory() as last:
        if not read_train_state(last).finished:   # e.g. aborted between a DeepSpeed checkpoint and the export
            raise RuntimeError(f"the run's last checkpoint is not an exported model; {stopped}")
    result.checkpoint.to_directory(str(model_dir))   # next to logs/, which rank 0 wrote while training
    orphans = remove_unregistered_checkpoints(record)
    if orphans:
        log(JOB, f"removed {len(orphans)} checkpoint(s) of failed attempts that Ray Train never registered")
    (model_dir / TRAIN_STATE_FILE).unlink(missing_ok=True)
    user_tower = train_user_tower(cfg, model_dir, data_dir)   # stage 2, on the exported item tower
    return finish_model(cfg, version, model_dir, data_version, base_model, n_pairs, result.metrics or {},
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
    records = read_metrics(model_dir / "logs" / METRICS_FILE) if (model_dir / "logs" / METRICS_FILE).exists() else []
    curve = [round(r["loss"], 4) for r in records if "loss" in r]
    window = max(1, min(10, len(curve) // 4))
    metrics = dict(run_metrics)
    if curve:
        metrics |= {"loss_first": round(sum(curve[:window]) / window, 4),
                    "loss_last": round(sum(curve[-window:]) / window, 4)}
        plot_training_curves(records, model_dir / "training_curves.png", title=f"train {version} ({data_version})")
    metrics.pop("checkpoint_score", None)
    write_manifest(model_dir, {
        "kind": "model", "version": version, "data_version": data_version, "base_model": base_model,
        "config": cfg.model_dump(), "metrics": metrics, "n_pairs": n_pairs,
        "query_max_length": cfg.query_max_length, "item_max_length": cfg.item_max_length,
        "wall_seconds": round(seconds, 1), "user_tower": user_tower or {"kind": "text"},
    })
    (model_dir / "loss_curve.json").write_text(json.dumps(curve))
    mark_latest("models", version)
    log(JOB, f"model {version} -> {model_dir}: loss {metrics.get('loss_first', float('nan')):.4f} -> "
             f"{metrics.get('loss_last', float('nan')):.4f} in {metrics.get('steps')} steps"
             + (f", best {cfg.eval_metric} {metrics[f'val_{cfg.eval_metric}']:.4f} at step {metrics['best_step']}"
                if f"val_{cfg.eval_metric}" in metrics else ""))
    return {"version": version, "path": str(model_dir), "data_version": data_version, **metrics}
