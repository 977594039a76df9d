"""`ranker_train_loop`: DeepSpeed fine-tuning of the cross-encoder ranker inside a Ray Train worker.

Rows arrive as (context_text, item_text, label, weight); the loss is BCE with logits weighted
by `weight`. Every worker runs the same number of steps (equal shards, one shared step budget)
so ZeRO's collectives never wait on a rank that has stopped. After training the same workers
score the validation pairs the driver wrote (their model is loaded and warm; no extra actors).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
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
from recsys.train.curves import MetricsWriter
from recsys.train.deepspeed_config import build_deepspeed_config
from recsys.train.loop import limit_cpu_heap_growth
from recsys.train.ranker_config import RankerTrainConfig

logger = logging.getLogger("recsys.train")


def export_ranker(engine, cfg: RankerTrainConfig, tokenizer, out_dir: str, rank: int) -> bool:
    """Write the trained ranker as a plain HF directory on rank 0.

    ZeRO-3 shards parameters, so every rank must join the gather before rank 0 saves; rank 0 alone then
    loads a plain (unpartitioned) model to hold the gathered weights.
    """
    model = engine.module
    if cfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        if rank != 0:
            return False
        model, _ = load_cross_encoder(cfg.model_name_or_path)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    if rank != 0:
        return False
    save_cross_encoder(model, tokenizer, out_dir)
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


def ranker_train_loop(config: dict) -> None:
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    cfg = RankerTrainConfig.model_validate(config["cfg"])
    total_steps: int = config["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    # Reuses the process group Ray Train already set up (gloo on CPU, NCCL on GPU).
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    limit_cpu_heap_growth(cfg.zero_stage, cfg.use_gpu)

    ds_config = build_deepspeed_config(cfg, world, total_steps)
    with zero3_partitioned_loading(ds_config):   # ZeRO-3: each rank holds only its part from the load on
        model, tokenizer = load_cross_encoder(cfg.model_name_or_path)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    device = engine.device
    shard = ray.train.get_dataset_shard("train")
    micro_steps = total_steps * cfg.grad_accum_steps
    losses: list[float] = []
    writer = MetricsWriter(config["log_dir"]) if rank == 0 and config.get("log_dir") else None
    started = last = time.perf_counter()
    step = 0
    while step < micro_steps:
        seen_in_epoch = 0
        for batch in shard.iter_batches(batch_size=cfg.micro_batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                        local_shuffle_seed=cfg.seed + step + rank):
            tok = tokenize_ranking_pairs(tokenizer, list(batch["context_text"]), list(batch["item_text"]),
                                         cfg.max_length, cfg.item_max_length)
            logits = pair_logits(engine, tok, device)
            loss = weighted_bce_loss(logits, torch.tensor(batch["label"], device=device),
                                     torch.tensor(batch["weight"], device=device))
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            step += 1
            seen_in_epoch += 1
            if writer is not None:
                now = time.perf_counter()
                writer.write(step, {"loss": losses[-1], "lr": float(engine.get_lr()[0]),
                                    "samples_per_s": cfg.micro_batch_size * world / max(now - last, 1e-9),
                                    "elapsed_s": now - started})
                last = now
            if rank == 0 and (step % cfg.log_every == 0 or step == micro_steps):
                elapsed = time.perf_counter() - started
                # A logger, not print: Ray Train patches print() to log AND echo, doubling lines.
                logger.info(f"[train_ranker] step {step}/{micro_steps} bce {np.mean(losses[-cfg.log_every:]):.4f} "
                            f"{step / elapsed:.2f} steps/s eta {(micro_steps - step) * elapsed / step:.0f}s")
            if step >= micro_steps:
                break
        if seen_in_epoch == 0:
            raise RuntimeError(f"worker {rank} got no full batch of {cfg.micro_batch_size} rows")

    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - started
    window = max(1, min(10, len(losses) // 4))
    metrics = {"steps": total_steps, "loss_first": float(np.mean(losses[:window])),
               "loss_last": float(np.mean(losses[-window:])), "train_seconds": round(elapsed, 1),
               "rows_per_second": round(step * cfg.micro_batch_size * world / elapsed, 2),
               "loss_curve": [round(x, 4) for x in losses]}
    if config.get("validation_pairs"):
        started = time.perf_counter()
        score_validation_pairs(engine, tokenizer, cfg, config["validation_pairs"], config["validation_scores"],
                               rank, world)
        metrics["validation_scoring_seconds"] = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_ranker(engine, cfg, tokenizer, tmp, rank)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if saved else None)
