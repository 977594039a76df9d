"""`ranker_train_loop`: DeepSpeed fine-tuning of the cross-encoder ranker inside a Ray Train worker.

Rows arrive as (context_text, item_text, label, weight, offset); the loss is BCE with logits weighted
by `weight`, on the transformer's logit plus the row's frozen retriever offset. The loop (steps,
checkpoints, killed-worker restart, resume, export) is the one the two towers use,
recsys/train/worker_loop.py; this module is the ranker's task on it. After
training the same workers score the validation pairs the driver wrote (their model is loaded and
warm; no extra actors).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd
import torch

from recsys.models.cross_encoder import (
    load_cross_encoder,
    pair_logits,
    save_cross_encoder,
    tokenize_ranking_pairs,
    weighted_bce_loss,
)
from recsys.models.encoder import zero3_partitioned_loading
from recsys.train.deepspeed_config import build_deepspeed_config
from recsys.train.export_weights import full_fp32_state_dict, load_exported_weights
from recsys.train.pair_tokens import trim_to_longest
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.worker_loop import WorkerTask, run_worker_loop

logger = logging.getLogger("recsys.train")


def export_ranker(engine, cfg: RankerTrainConfig, tokenizer, out_dir: str, rank: int) -> bool:
    """Write the trained ranker as a plain HF directory on rank 0: the fp32 master weights at every ZeRO
    stage (export_weights.py), saved in cfg.export_dtype."""
    state = full_fp32_state_dict(engine, rank)
    if rank != 0 or state is None:
        return False
    model, _ = load_cross_encoder(cfg.model_name_or_path)
    save_cross_encoder(load_exported_weights(model, state, cfg.export_dtype), tokenizer, out_dir)
    return True


@torch.no_grad()
def score_validation_pairs(engine, tokenizer, cfg: RankerTrainConfig, pairs_path: str, scores_path: str,
                           rank: int, world: int) -> None:
    """Rank r scores rows r, r + world, ...; rank 0 gathers every score and writes pairs + `score`."""
    import torch.distributed as dist

    pairs = pd.read_parquet(pairs_path)
    contexts, items = pairs["context_text"].to_numpy(), pairs["item_text"].to_numpy()
    mine = np.arange(rank, len(pairs), world)
    # ZeRO-3 gathers parameters inside forward, so every rank runs the same number of forwards;
    # a rank out of rows scores row 0 again and drops the result.
    n_batches = math.ceil(math.ceil(len(pairs) / world) / cfg.eval_batch_size)
    engine.eval()
    local: list[np.ndarray] = []
    started = time.perf_counter()
    for b in range(n_batches):
        if rank == 0 and b and b % max(1, n_batches // 10) == 0:
            elapsed = time.perf_counter() - started
            logger.info(f"[train_ranker] validation batch {b}/{n_batches}, eta {(n_batches - b) * elapsed / b:.0f}s")
        rows = mine[b * cfg.eval_batch_size:(b + 1) * cfg.eval_batch_size]
        take = rows if len(rows) else np.zeros(1, dtype=np.int64)
        tok = tokenize_ranking_pairs(tokenizer, list(contexts[take]), list(items[take]), cfg.max_length,
                                     cfg.item_max_length)
        logits = pair_logits(engine, tok, engine.device).float().cpu().numpy()
        if len(rows):
            local.append(logits)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (mine, np.concatenate(local) if local else np.zeros(0, np.float32)))
    if rank == 0:
        scores = np.full(len(pairs), np.nan, dtype=np.float32)
        for positions, values in gathered:
            scores[positions] = values
        pairs.assign(score=scores).to_parquet(scores_path, index=False)


def build_ranker_engine(cfg: RankerTrainConfig, world: int, total_steps: int):
    """The DeepSpeed engine over the cross-encoder, and its tokenizer (collective under ZeRO-3)."""
    import deepspeed

    ds_config = build_deepspeed_config(cfg, world, total_steps)
    with zero3_partitioned_loading(ds_config):   # ZeRO-3: each rank holds only its part from the load on
        model, tokenizer = load_cross_encoder(cfg.model_name_or_path)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine, tokenizer


def ranker_step(engine, batch: dict, cfg: RankerTrainConfig) -> float:
    """One micro-batch of tokenised (context, item) pairs (RankingPairTokens, in Ray Data) with label, weight
    and offset: weighted BCE on the pair logits plus the frozen retriever offset, backward, step."""
    device = engine.device
    logits = pair_logits(engine, trim_to_longest(batch), device)
    # + the frozen retriever offset (0 without one): the transformer learns the residual (retriever_offset.py)
    loss = weighted_bce_loss(logits + batch["offset"].to(device), batch["label"].to(device),
                             batch["weight"].to(device))
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def ranker_tokens(batch: dict) -> dict[str, int]:
    """Real and computed tokens of one micro-batch (the run summary): trimmed to its longest row."""
    mask = batch["attention_mask"]
    return {"real": int(mask.sum()), "computed": int(mask.shape[0] * max(int(mask.sum(dim=1).max()), 1))}


def ranker_task(cfg: RankerTrainConfig, config: dict) -> WorkerTask:
    """The cross-encoder on the shared worker loop; after training the same workers score the
    validation pairs the driver wrote (config["validation_pairs"] -> config["validation_scores"])."""
    def score_validation(engine, tokenizer, rank: int, world: int) -> dict:
        if not config.get("validation_pairs"):
            return {}
        started = time.perf_counter()
        score_validation_pairs(engine, tokenizer, cfg, config["validation_pairs"], config["validation_scores"],
                               rank, world)
        return {"validation_scoring_seconds": round(time.perf_counter() - started, 1)}

    return WorkerTask(
        job="train_ranker",
        build_engine=lambda world, total_steps: build_ranker_engine(cfg, world, total_steps),
        step=lambda engine, _tokenizer, batch, rank, world: ranker_step(engine, batch, cfg),
        torch_batches=True,
        count_tokens=ranker_tokens,
        export=lambda engine, tokenizer, out_dir, rank: export_ranker(engine, cfg, tokenizer, out_dir, rank),
        after_training=score_validation)


def ranker_train_loop(config: dict) -> None:
    """Ray Train's entry point: config = {"cfg", "total_steps", "log_dir", "validation_pairs", "validation_scores"}."""
    cfg = RankerTrainConfig.model_validate(config["cfg"])
    run_worker_loop(ranker_task(cfg, config), cfg, config)
