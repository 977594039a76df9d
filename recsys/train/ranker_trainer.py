"""Driver of jobs/train_ranker.py: examples + mined hard negatives -> Ray Train (DeepSpeed) ->
a versioned ranker artifact, validated against the retriever's list it will re-rank.

Hard negatives are mined once, before training: contexts are embedded by Ray Data actors (the
existing embed_texts pool, which scales out with the cluster and runs on GPUs there), and the
Faiss search runs on the driver, where the one index copy already is (a Flat search of thousands
of contexts over the catalog takes seconds; shipping the index to every actor would not pay).
Only as many (user, position) groups as `max_steps` will read are mined, and the same embedding
pass gives the validation users' retrieval lists. After training, the Train workers score the
validation pairs with the model they hold, and the driver turns the scores into metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from recsys.artifacts import mark_latest, write_manifest
from recsys.index.faiss_index import ItemIndex
from recsys.models.cross_encoder import CROSS_ENCODER_TYPE
from recsys.models.encoder import resolve_model_path
from recsys.models.retriever_offset import RetrieverOffset, fit_retriever_offset, pair_scores
from recsys.runtime import log
from recsys.train.curves import METRICS_FILE, summarise_run_losses
from recsys.train.deepspeed_config import plan_total_steps
from recsys.train.hard_negatives import pick_hard_negatives, retrieve_candidates, retrieve_scored_candidates
from recsys.train.pair_tokens import TOKENIZE_BATCH_ROWS, RankingPairTokens
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.ranker_data import (
    RankingInputs,
    ValidationUsers,
    build_training_frame,
    load_ranking_inputs,
    read_ranking_examples,
    select_example_groups,
    select_validation_users,
)
from recsys.train.ranker_eval import (
    build_validation_pairs,
    format_validation_table,
    validation_metrics,
)
from recsys.train.ranker_loop import ranker_train_loop
from recsys.train.retriever import embed_with_retriever, load_retriever
from recsys.train.run_driver import fit_run, start_or_resume_run

JOB = "train_ranker"
VALIDATION_PAIRS = "validation_pairs.parquet"     # written by the driver before training
VALIDATION_SCORES = "validation_scores.parquet"   # the same rows + `score`, written by rank 0 after it


def load_ranker_retriever(cfg: RankerTrainConfig, data_version: str) -> ItemIndex | None:
    """The index that mines hard negatives and gives the lists to re-rank; None with retriever_index: null."""
    return None if cfg.retriever_index is None else load_retriever(cfg.retriever_index, "retriever_index",
                                                                   data_version)


def select_training_examples(cfg: RankerTrainConfig, data_dir: Path, with_hard: bool) -> tuple[pd.DataFrame, int]:
    """(the ranking examples training will read, groups available). max_steps reads a fixed number of
    rows, so only that many (user, position) groups are kept, and mined."""
    examples = read_ranking_examples(data_dir)
    n_groups = len(examples[["user_id", "position"]].drop_duplicates())
    max_groups = None
    if cfg.max_steps is not None and n_groups:
        rows_needed = cfg.max_steps * cfg.micro_batch_size * cfg.grad_accum_steps * cfg.num_workers
        rows_per_group = len(examples) / n_groups + (cfg.hard_negatives_per_positive if with_hard else 0)
        max_groups = math.ceil(rows_needed / rows_per_group)
    return select_example_groups(examples, max_groups, cfg.seed), n_groups


def hard_negatives_for(examples: pd.DataFrame, inputs: RankingInputs, index: ItemIndex, vectors: np.ndarray,
                       keys: list[tuple[str, int]], cfg: RankerTrainConfig) -> dict[tuple[str, int], list[str]]:
    """(user, position) of each positive -> hard negatives from the retriever's top-k for its context."""
    group_items = examples.groupby(["user_id", "position"])["item_id"].agg(set).to_dict()
    # Never a hard negative: any of the user's own items (held-out targets too) or a row already in the group.
    excluded = [set(inputs.user_items[u]) | group_items[(u, p)] for u, p in keys]
    candidates = retrieve_candidates(index, vectors, [list(e) for e in excluded], cfg.hard_negative_top_k)
    return dict(zip(keys, pick_hard_negatives(candidates, excluded, cfg.hard_negatives_per_positive, cfg.seed)))


def prepare_rows(cfg: RankerTrainConfig, data_dir: Path, inputs: RankingInputs, index: ItemIndex | None,
                 users: ValidationUsers) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame, RetrieverOffset | None]:
    """-> (training rows, counts per kind, validation pairs, the retriever offset). One embedding pass of
    every training context and validation user serves the hard negatives, the retriever scores the offset
    is fitted on and the validation users' retrieval lists."""
    with_hard = index is not None and cfg.hard_negatives_per_positive > 0
    examples, n_groups = select_training_examples(cfg, data_dir, with_hard)
    groups = examples[["user_id", "position"]].drop_duplicates()
    keys = [(u, int(p)) for u, p in zip(groups["user_id"], groups["position"])] if index is not None else []
    hard: dict[tuple[str, int], list[str]] = {}
    candidates, score_rows, vectors = None, None, None
    if index is not None:
        vectors = embed_with_retriever(index, [inputs.context_text(u, p) for u, p in keys] + users.contexts,
                                       cfg.embed_batch_size, cfg.embed_concurrency, cfg.use_gpu, JOB)
        if with_hard:
            positive = examples[examples["label"] > 0][["user_id", "position"]].drop_duplicates()
            mined = [(u, int(p)) for u, p in zip(positive["user_id"], positive["position"])]
            row_of = {key: row for row, key in enumerate(keys)}
            hard = hard_negatives_for(examples, inputs, index, vectors[[row_of[k] for k in mined]], mined, cfg)
            log(JOB, f"mined {sum(map(len, hard.values()))} hard negatives for {len(mined)} positives "
                     f"from the retriever's top-{cfg.hard_negative_top_k}")
        candidates = retrieve_scored_candidates(index, vectors[len(keys):], users.histories, cfg.rerank_candidates)
        score_rows = RetrieverScores(index, vectors, keys)
    frame, counts = build_training_frame(examples, inputs, hard, cfg.hard_negative_weight, cfg.seed,
                                         score_rows.of_groups if score_rows else None)
    counts["groups_used"] = len(groups)
    counts["groups_available"] = n_groups
    pairs = build_validation_pairs(inputs, users, cfg.eval_negatives_per_positive, candidates, cfg.seed)
    offset = None
    if score_rows is not None and cfg.retriever_offset:
        pairs.loc[pairs["kind"] == "auc", "retriever_score"] = score_rows.of_users(pairs[pairs["kind"] == "auc"],
                                                                                   len(keys))
        offset = fit_retriever_offset(frame["retriever_score"].to_numpy(), frame["label"].to_numpy(),
                                      frame["weight"].to_numpy())
        frame["offset"] = offset.apply(frame["retriever_score"])
        log(JOB, f"retriever offset {offset.scale:.2f} * score {offset.bias:+.2f} (logistic fit on the training "
                 f"rows); the cross-encoder learns the rest")
    pairs["offset"] = offset.apply(pairs["retriever_score"]) if offset else np.float32(0)
    return frame, counts, pairs, offset


class RetrieverScores:
    """The retriever's inner product of embedded contexts (training groups, then validation users) and
    the index's item vectors; an item the index lacks scores the lowest seen and is counted."""

    def __init__(self, index: ItemIndex, context_vectors: np.ndarray, keys: list[tuple[str, int]]):
        self.item_vectors, self.item_row = index.item_vectors()
        self.context_vectors = context_vectors
        self.group_row = {key: row for row, key in enumerate(keys)}

    def _scores(self, context_rows: np.ndarray, item_ids: pd.Series) -> np.ndarray:
        scores = pair_scores(self.context_vectors, context_rows, self.item_vectors,
                             np.array([self.item_row.get(i, -1) for i in item_ids], dtype=np.int64))
        missing = np.isnan(scores)
        if missing.any():
            log(JOB, f"{int(missing.sum())} of {len(scores)} rows name items the retriever index lacks: "
                     f"they get the lowest retriever score")
            scores[missing] = np.nanmin(scores) if (~missing).any() else 0.0
        return scores

    def of_groups(self, rows: pd.DataFrame) -> np.ndarray:
        """Training rows (user_id, position, item_id) -> scores."""
        context_rows = np.array([self.group_row[(u, int(p))] for u, p in zip(rows["user_id"], rows["position"])])
        return self._scores(context_rows, rows["item_id"])

    def of_users(self, pairs: pd.DataFrame, first_user_row: int) -> np.ndarray:
        """Validation pairs (user = position in ValidationUsers, item_id) -> scores."""
        return self._scores(first_user_row + pairs["user"].to_numpy(), pairs["item_id"])


def run_ranker_training(cfg: RankerTrainConfig) -> dict:
    started = time.perf_counter()
    cfg, version, out, record = start_or_resume_run(cfg, cfg.data, "rankers", JOB)
    data_dir = Path(record["data_path"])
    base_model = resolve_model_path(cfg.model_name_or_path)   # fail fast, before workers start
    inputs = load_ranking_inputs(data_dir)
    index = load_ranker_retriever(cfg, inputs.data_version)
    index_version = index.version if index else None
    log(JOB, f"data {inputs.data_version}; retriever index {index_version}"
             + ("" if index else " (no hard negatives, AUC-only validation)"))
    users = select_validation_users(inputs, cfg.eval_max_users, cfg.seed)
    if not users.user_ids:
        raise ValueError(f"data {inputs.data_version} has no user with a validation target in the catalog")
    # Seeded: a resumed run rebuilds the same rows, so its step budget and shards match the checkpoints'.
    frame, counts, pairs, offset = prepare_rows(cfg, data_dir, inputs, index, users)
    total_steps = plan_total_steps(cfg, len(frame), cfg.num_workers)
    log(JOB, f"{len(frame)} rows {counts}; {total_steps} steps x {cfg.num_workers} workers x "
             f"{cfg.micro_batch_size} rows; ZeRO-{cfg.zero_stage}, {'GPU/NCCL' if cfg.use_gpu else 'CPU/gloo'}; "
             f"then {len(pairs)} validation pairs for {len(users.user_ids)} users")
    # Workers read the pairs and rank 0 writes the scores here: RECSYS_HOME is storage every node sees.
    pairs.to_parquet(out / VALIDATION_PAIRS, index=False)
    log(JOB, f"step metrics -> {out / 'logs' / METRICS_FILE} (tensorboard --logdir {out / 'logs'})")
    loop_config = {"cfg": cfg.model_dump(), "total_steps": total_steps, "log_dir": str(out / "logs"),
                   "validation_pairs": str(out / VALIDATION_PAIRS), "validation_scores": str(out / VALIDATION_SCORES)}
    # Tokenised by Ray Data tasks ahead of the workers (recsys/train/pair_tokens.py): no step waits on a tokenizer.
    train = ray.data.from_pandas(frame).map_batches(
        RankingPairTokens(base_model, cfg.max_length, cfg.item_max_length), batch_format="numpy",
        batch_size=TOKENIZE_BATCH_ROWS)
    metrics = fit_run(ranker_train_loop, loop_config, cfg, record, {"train": train}, out, JOB,
                      scored=False)
    metrics |= summarise_run_losses(out, f"ranker {version} ({inputs.data_version})")

    scored = pd.read_parquet(out / VALIDATION_SCORES)
    scored["score"] += scored["offset"]   # the ranker's logit is offset + transformer (retriever_offset.py)
    validation = validation_metrics(scored, inputs.popularity,
                                    len(users.user_ids), cfg.rerank_candidates, cfg.eval_k, index is not None,
                                    cfg.eval_rerank_depth, cfg.eval_blend_weights)
    table = format_validation_table(validation, cfg.eval_k, cfg.rerank_candidates)
    log(JOB, f"bce {metrics.get('loss_first', float('nan')):.4f} -> {metrics.get('loss_last', float('nan')):.4f}; "
             f"validation on {len(users.user_ids)} users:\n{table}")
    (out / "report.md").write_text(f"# Ranker {version}\n\ndata {inputs.data_version}, retriever index "
                                   f"{index_version}, base model {base_model}\n\n{table}\n")
    write_manifest(out, {
        "kind": "ranker", "type": CROSS_ENCODER_TYPE, "version": version, "data_version": inputs.data_version,
        "index_version": index_version,
        "retriever_model_version": index.manifest.get("model_version") if index else None,
        "base_model": base_model, "config": cfg.model_dump(), "metrics": metrics, "validation": validation,
        "rows": counts, "retriever_offset": offset.to_dict() if offset else None,
        "max_length": cfg.max_length, "item_max_length": cfg.item_max_length,
        "max_history_items": inputs.max_history_items, "wall_seconds": round(time.perf_counter() - started, 1),
    })
    mark_latest("rankers", version)
    log(JOB, f"ranker {version} -> {out}")
    return {"version": version, "path": str(out), "data_version": inputs.data_version,
            "index_version": index_version, **metrics, "validation": validation}
