"""Driver of jobs/train_ranker.py: examples + mined hard negatives -> Ray Train (DeepSpeed) ->
a versioned ranker artifact, validated against the retriever's list it will re-rank.

Hard negatives are mined once, before training: contexts are embedded by Ray Data actors (the
existing embed_texts pool, which scales out with the cluster and runs on GPUs there), and the
Faiss search runs on the driver, where the one index copy already is (a Flat search of thousands
of contexts over the catalog takes seconds; shipping the index to every actor would not pay).
Only as many (user, position) groups as `max_steps` will read are mined.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from recsys.artifacts import mark_latest, new_version_dir, resolve_artifact, write_manifest
from recsys.config import recsys_home
from recsys.index.embed import embed_texts
from recsys.index.faiss_index import ItemIndex, load_item_index
from recsys.models.cross_encoder import CrossEncoderScorer
from recsys.models.encoder import resolve_model_path
from recsys.runtime import log
from recsys.train.curves import METRICS_FILE, plot_training_curves, read_metrics
from recsys.train.deepspeed_config import plan_total_steps
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.ranker_data import (
    RankingInputs,
    build_training_frame,
    load_ranking_inputs,
    pick_hard_negatives,
    read_ranking_examples,
    select_example_groups,
    select_validation_users,
)
from recsys.train.ranker_eval import retrieve_candidates, validate_ranker
from recsys.train.ranker_loop import ranker_train_loop

JOB = "train_ranker"


class ScorePairs:
    """map_batches actor: {'key', 'context', 'item'} -> {'key', 'score'} with one ranker replica."""

    def __init__(self, model_path: str, max_length: int, item_max_length: int, batch_size: int):
        self.scorer = CrossEncoderScorer(model_path, max_length, item_max_length, batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"], "score": self.scorer.score(list(batch["context"]), list(batch["item"]))}


def score_pairs_on_cluster(model_path: str, contexts: list[str], items: list[str],
                           cfg: RankerTrainConfig) -> np.ndarray:
    """Ranker logits [N] for (context, item) pairs, scored by an actor pool; returned in input order."""
    if not contexts:
        return np.zeros(0, dtype=np.float32)
    rows = [{"key": i, "context": c, "item": t} for i, (c, t) in enumerate(zip(contexts, items))]
    blocks = max(1, min(len(rows) // cfg.inference_batch_size, 4 * cfg.inference_concurrency))
    out = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        ScorePairs, fn_constructor_kwargs={"model_path": model_path, "max_length": cfg.max_length,
                                           "item_max_length": cfg.item_max_length,
                                           "batch_size": cfg.inference_batch_size},
        batch_size=cfg.inference_batch_size * 4, batch_format="numpy", num_gpus=1 if cfg.use_gpu else 0,
        compute=ray.data.ActorPoolStrategy(size=cfg.inference_concurrency))
    scores = np.zeros(len(rows), dtype=np.float32)
    for batch in out.iter_batches(batch_format="numpy", batch_size=4096):
        scores[batch["key"].astype(np.int64)] = batch["score"]
    return scores


def load_retriever(cfg: RankerTrainConfig, data_version: str) -> tuple[ItemIndex | None, Any]:
    """(index, embed function for its query side), or (None, None) with retriever_index: null."""
    if cfg.retriever_index is None:
        return None, None
    index = load_item_index(resolve_artifact("indexes", cfg.retriever_index))
    if index.manifest.get("data_version") != data_version:
        raise ValueError(f"retriever_index={cfg.retriever_index!r} (index {index.version}) was built on data "
                         f"{index.manifest.get('data_version')!r}, not on data={data_version!r}: build an index "
                         f"for this data version or set retriever_index: null")
    model_path = str(index.manifest["model_path"])
    query_len = int(index.manifest.get("query_max_length", 96))

    def embed(texts: list[str]) -> np.ndarray:   # the query side must use the index's own model
        return embed_texts([str(i) for i in range(len(texts))], texts, model_path, query_len,
                           cfg.inference_batch_size, cfg.inference_concurrency, num_gpus=1 if cfg.use_gpu else 0)
    return index, embed


def mine_hard_negatives(examples: pd.DataFrame, inputs: RankingInputs, index: ItemIndex, embed,
                        cfg: RankerTrainConfig) -> dict[tuple[str, int], list[str]]:
    """(user, position) of every positive -> hard negatives from the retriever's top-k for its context."""
    positives = examples[examples["label"] > 0][["user_id", "position"]].drop_duplicates()
    keys = [(u, int(p)) for u, p in zip(positives["user_id"], positives["position"])]
    group_items = examples.groupby(["user_id", "position"])["item_id"].agg(set).to_dict()
    # Never a hard negative: any of the user's own items (held-out targets too) or a row already in the group.
    excluded = [set(inputs.user_items[u]) | group_items[(u, p)] for u, p in keys]
    vectors = embed([inputs.context_text(u, p) for u, p in keys])
    candidates = retrieve_candidates(index, vectors, [list(e) for e in excluded], cfg.hard_negative_top_k)
    picked = pick_hard_negatives(candidates, excluded, cfg.hard_negatives_per_positive, cfg.seed)
    return dict(zip(keys, picked))


def prepare_training_rows(cfg: RankerTrainConfig, data_dir: Path, inputs: RankingInputs,
                          index: ItemIndex | None, embed) -> tuple[pd.DataFrame, dict[str, int]]:
    examples = read_ranking_examples(data_dir)
    n_groups = len(examples[["user_id", "position"]].drop_duplicates())
    hard_per_group = cfg.hard_negatives_per_positive if index is not None else 0
    max_groups = None
    if cfg.max_steps is not None and n_groups:
        # max_steps reads a fixed number of rows: select (and mine) only that many groups.
        rows_needed = cfg.max_steps * cfg.micro_batch_size * cfg.grad_accum_steps * cfg.num_workers
        max_groups = math.ceil(rows_needed / (len(examples) / n_groups + hard_per_group))
    examples = select_example_groups(examples, max_groups, cfg.seed)
    hard: dict[tuple[str, int], list[str]] = {}
    if hard_per_group:
        started = time.perf_counter()
        hard = mine_hard_negatives(examples, inputs, index, embed, cfg)   # type: ignore[arg-type]
        log(JOB, f"mined {sum(map(len, hard.values()))} hard negatives for {len(hard)} contexts "
                 f"from the top-{cfg.hard_negative_top_k} ({time.perf_counter() - started:.1f}s)")
    frame, counts = build_training_frame(examples, inputs, hard, cfg.hard_negative_weight, cfg.seed)
    counts["groups_used"] = len(examples[["user_id", "position"]].drop_duplicates())
    counts["groups_available"] = n_groups
    return frame, counts


def run_ranker_training(cfg: RankerTrainConfig) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    data_dir = resolve_artifact("data", cfg.data)
    base_model = resolve_model_path(cfg.model_name_or_path)   # fail fast, before workers start
    inputs = load_ranking_inputs(data_dir)
    index, embed = load_retriever(cfg, inputs.data_version)
    log(JOB, f"data {inputs.data_version}; retriever index {index.version if index else None}"
             + ("" if index else " (no hard negatives, AUC-only validation)"))
    frame, counts = prepare_training_rows(cfg, data_dir, inputs, index, embed)
    total_steps = plan_total_steps(cfg, len(frame), cfg.num_workers)
    log(JOB, f"{len(frame)} rows {counts}; {total_steps} steps x {cfg.num_workers} workers x "
             f"{cfg.micro_batch_size} rows; ZeRO-{cfg.zero_stage}, {'GPU/NCCL' if cfg.use_gpu else 'CPU/gloo'}")

    version, out = new_version_dir("rankers")
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        ranker_train_loop,
        train_loop_config={"cfg": cfg.model_dump(), "total_steps": total_steps, "log_dir": str(out / "logs")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": ray.data.from_pandas(frame)},
        run_config=RunConfig(name=f"ranker-{version}", storage_path=str(recsys_home() / "ray_results")),
    )
    log(JOB, f"step metrics -> {out / 'logs' / METRICS_FILE} (tensorboard --logdir {out / 'logs'})")
    result = trainer.fit()
    if result.checkpoint is None:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f"ranker training finished without a checkpoint (error: {result.error})")
    result.checkpoint.to_directory(str(out))   # next to logs/, which rank 0 wrote while training
    if (out / "logs" / METRICS_FILE).exists():
        plot_training_curves(read_metrics(out / "logs" / METRICS_FILE), out / "training_curves.png",
                             title=f"ranker {version} ({inputs.data_version})")
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "loss_curve"}
    (out / "loss_curve.json").write_text(json.dumps((result.metrics or {}).get("loss_curve", [])))
    log(JOB, f"trained: bce {metrics.get('loss_first', float('nan')):.4f} -> "
             f"{metrics.get('loss_last', float('nan')):.4f}")

    t0 = time.perf_counter()
    users = select_validation_users(inputs, cfg.eval_max_users, cfg.seed)
    validation = validate_ranker(
        inputs, users, lambda c, i: score_pairs_on_cluster(str(out), c, i, cfg), index, embed,
        cfg.eval_negatives_per_positive, cfg.rerank_candidates, cfg.eval_k, cfg.seed)
    table = validation.pop("table")
    log(JOB, f"validation on {len(users.user_ids)} users ({time.perf_counter() - t0:.1f}s):\n{table}")
    (out / "report.md").write_text(f"# Ranker {version}\n\ndata {inputs.data_version}, retriever index "
                                   f"{index.version if index else None}\n\n{table}\n")
    write_manifest(out, {
        "kind": "ranker", "version": version, "data_version": inputs.data_version,
        "index_version": index.version if index else None,
        "retriever_model_version": index.manifest.get("model_version") if index else None,
        "base_model": base_model, "config": cfg.model_dump(), "metrics": metrics, "validation": validation,
        "rows": counts, "max_length": cfg.max_length, "item_max_length": cfg.item_max_length,
        "max_history_items": inputs.max_history_items, "wall_seconds": round(time.perf_counter() - started, 1),
    })
    mark_latest("rankers", version)
    log(JOB, f"ranker {version} -> {out}")
    return {"version": version, "path": str(out), "data_version": inputs.data_version,
            "index_version": index.version if index else None, **metrics, "validation": validation}
