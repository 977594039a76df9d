"""`train_loop_per_worker`: DeepSpeed two-tower fine-tuning inside a Ray Train worker.

Every worker runs the same number of steps (equal dataset shards, one shared step
budget) so ZeRO's collectives never wait on a rank that has stopped; evaluation, early
stopping and checkpoints happen at the same optimizer steps on every rank for the same reason.
After a failure Ray Train restarts the workers and the loop continues from the latest
checkpoint (recsys/train/checkpoints.py) to the same step budget.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any

import numpy as np
import torch

from recsys.models.encoder import (
    POOLING_ATTRIBUTE,
    QUERY_TOWER_DIR,
    TextEncoder,
    load_hf_encoder,
    zero3_partitioned_loading,
)
from recsys.models.lora import apply_lora, merge_lora
from recsys.models.losses import in_batch_softmax_loss
from recsys.models.towers import TwoTowerModel, tokenize_pairs
from recsys.runtime import pin_threads_to_cores
from recsys.train.checkpoints import TrainState, load_best_weights, report_checkpoint, report_final, restore_checkpoint
from recsys.train.config import TrainConfig
from recsys.train.curves import MetricsWriter
from recsys.train.deepspeed_config import build_deepspeed_config
from recsys.train.evaluator import agree_any, evaluate_retrieval
from recsys.train.hard_negatives import negative_column_pairs
from recsys.train.validation import EarlyStopping, ValidationSet, is_due

logger = logging.getLogger("recsys.train")


# glibc's mallopt parameter number (malloc.h)
M_MMAP_THRESHOLD = -3


def build_model(cfg: TrainConfig, ds_config: dict | None = None) -> tuple[TwoTowerModel, object]:
    """The two-tower model; with a ZeRO-3 `ds_config` the backbones are partitioned while they load (collective).

    LoRA adapters are added after the partitioned load, outside zero.Init: peft initialises them after their
    layers are built, which zero.Init would have partitioned already; deepspeed.initialize partitions them.
    """
    towers = 2 if cfg.towers == "separate" else 1
    with zero3_partitioned_loading(ds_config):
        loaded = [load_hf_encoder(cfg.model_name_or_path) for _ in range(towers)]
    encoders = []
    for backbone, _ in loaded:
        if cfg.lora.enabled:
            backbone = apply_lora(backbone, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
        encoders.append(TextEncoder(backbone, cfg.pooling))
    return TwoTowerModel(encoders[0], encoders[1] if towers == 2 else None), loaded[0][1]


def build_engine(cfg: TrainConfig, world: int, total_steps: int):
    """The DeepSpeed engine over the two-tower model, and the tokenizer, once the process group is up (collective).

    One place for the worker's set-up, so bench/train_bench.py times the same engine without Ray."""
    import deepspeed

    ds_config = build_deepspeed_config(cfg, world, total_steps)
    model, tokenizer = build_model(cfg, ds_config)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine, tokenizer


def limit_cpu_heap_growth(zero_stage: int, use_gpu: bool) -> None:
    """CPU ZeRO-3 workers: let glibc hand freed tensors of 128 KiB and up straight back to the OS.

    ZeRO-3 gathers each layer's full weights, frees them, and does the same for gradients, every step. glibc
    raises its mmap threshold each time such a block is freed (up to 32 MiB), so these blocks then come from
    its heaps, which fragment and keep the freed memory: +0.4 GiB RSS per step on a 110M BERT, 3.4 instead of
    2.2 GiB peak per worker after 3 steps (bench/train_bench.py). A fixed threshold turns that off. Not for the
    lower stages: they free no such blocks every step, and each mmap'd tensor costs fresh page faults.
    """
    if use_gpu or zero_stage != 3:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):   # not glibc (musl, macOS): its allocator, its behaviour
        logger.debug("no glibc mallopt here; the heap keeps its default thresholds")


def item_keys(item_ids) -> torch.Tensor:
    """Stable int ids (item ids or anchor texts) for the masks of the loss (crc32 is the same on every worker)."""
    return torch.tensor([zlib.crc32(str(i).encode()) for i in item_ids], dtype=torch.int64)


def export_encoder(engine, cfg: TrainConfig, tokenizer, out_dir: str, rank: int) -> bool:
    """Write the trained item tower as a plain HF directory (safetensors) on rank 0, and a separate query
    tower as another one in its QUERY_TOWER_DIR; each config.json records the pooling.

    ZeRO-3 shards parameters, so every rank must join the gather before rank 0 saves; rank 0 alone then
    loads a plain (unpartitioned: no ds_config) model to hold the gathered weights.
    """
    model = engine.module
    if cfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        if rank != 0:
            return False
        model, _ = build_model(cfg)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    if rank != 0:
        return False
    towers = [(model.encoder, out_dir)]
    if model.query_encoder is not None:
        towers.append((model.query_encoder, os.path.join(out_dir, QUERY_TOWER_DIR)))
    for encoder, directory in towers:
        backbone: Any = merge_lora(encoder.backbone)
        setattr(backbone.config, POOLING_ATTRIBUTE, encoder.pooling)
        backbone.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    return True


def gather_candidates(local: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Every worker's rows of `local`, in rank order; only this worker's block keeps its gradient.

    The other workers' items serve as extra negatives; their gradients stay with the worker that
    encoded them (as in OpenCLIP without gather_with_grad): all_gather has no backward on gloo."""
    import torch.distributed as dist

    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[rank] = local
    return torch.cat(parts)


def train_step(engine, tokenizer, batch: dict, cfg: TrainConfig, rank: int = 0, world: int = 1) -> float:
    """One micro-batch: forward both towers in one pass, softmax over the candidates, backward, step.

    Candidates are the batch's positives, then its mined hard negatives (when the pairs carry them: every
    pair's first, then every pair's second ...), then with negatives_across_workers the same from every
    other worker."""
    n = len(batch["anchor_text"])
    items, ids = list(batch["positive_text"]), list(batch["positive_item_id"])
    negatives = negative_column_pairs(list(batch))
    for id_column, text_column in negatives:
        items += list(batch[text_column])
        ids += list(batch[id_column])
    n_hard = n * len(negatives)
    tok = tokenize_pairs(tokenizer, batch["anchor_text"], items, cfg.query_max_length, cfg.item_max_length)
    query, item = engine(tok["input_ids"].to(engine.device), tok["attention_mask"].to(engine.device), n_queries=n)
    keys = item_keys(ids).to(engine.device)
    anchors = item_keys(batch["anchor_text"]).to(engine.device)
    # -1: a hard negative is no row's positive, so no anchor's other positive either
    anchors = torch.cat([anchors, torch.full((n_hard,), -1, dtype=torch.int64, device=engine.device)])
    log_q = None
    if cfg.logq_correction:   # only in-batch positives were sampled by frequency; hard negatives get no correction
        log_q = torch.tensor(batch["positive_log_q"], dtype=torch.float32, device=engine.device)
        log_q = torch.cat([log_q, torch.zeros(n_hard, device=engine.device)])
    item, first = item.float(), 0
    if cfg.negatives_across_workers and world > 1:
        first = rank * len(ids)
        item, keys = gather_candidates(item, rank, world), gather_candidates(keys, rank, world)
        anchors = gather_candidates(anchors, rank, world)
        log_q = gather_candidates(log_q, rank, world) if log_q is not None else None
    # torch.tensor copies: Ray Data hands read-only numpy arrays, which torch.as_tensor warns about.
    weights = torch.tensor(batch["positive_weight"], dtype=torch.float32, device=engine.device) \
        if "positive_weight" in batch else None
    loss = in_batch_softmax_loss(query.float(), item, keys, cfg.temperature, log_q, first, anchors,
                                 symmetric=cfg.symmetric_loss, weights=weights)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray
    import ray.train

    cfg = TrainConfig.model_validate(config["cfg"])
    total_steps: int = config["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if cfg.pin_cpu_cores:
            cores = pin_threads_to_cores(ctx.get_local_rank(), ctx.get_local_world_size())
            logger.info(f"[train] rank {rank}: threads pinned to cores {sorted(cores) if cores else 'none (too few)'}")
    # Reuses the process group Ray Train already set up (gloo on CPU, NCCL on GPU).
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    limit_cpu_heap_growth(cfg.zero_stage, cfg.use_gpu)

    engine, tokenizer = build_engine(cfg, world, total_steps)
    restored = ray.train.get_checkpoint()    # set after a worker-group restart or a resumed run
    state = restore_checkpoint(engine, restored) if restored is not None else TrainState()
    if state.finished:
        logger.info("[train] this run already exported its model; nothing left to train")
        return
    micro_steps = total_steps * cfg.grad_accum_steps
    if rank == 0 and state.step:
        logger.info(f"[train] resumed from the checkpoint at step {state.step}/{micro_steps}")
    vset = ray.get(config["validation"]) if config.get("validation") is not None else None
    stopper = EarlyStopping(**{**state.early_stopping, "patience": cfg.early_stopping_patience or 0})
    if restored is not None and stopper.best_step == state.step // cfg.grad_accum_steps:
        state.best_checkpoint = restored.path   # saved as the new best: its own path was not known yet
    shard = ray.train.get_dataset_shard("train")
    writer = MetricsWriter(config["log_dir"], resume_step=state.step) if rank == 0 and config.get("log_dir") else None
    losses: list[float] = []
    prior_elapsed, start_step = state.elapsed_s, state.step
    started = last = time.perf_counter()
    stop = stopper.should_stop
    while state.step < micro_steps and not stop:
        seen_in_epoch = 0
        for batch in shard.iter_batches(batch_size=cfg.micro_batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                        local_shuffle_seed=cfg.seed + state.step + rank):
            losses.append(train_step(engine, tokenizer, batch, cfg, rank, world))
            state.step += 1
            seen_in_epoch += 1
            now = time.perf_counter()
            state.elapsed_s = prior_elapsed + now - started
            scalars = {"loss": losses[-1], "lr": float(engine.get_lr()[0]),
                       "samples_per_s": cfg.micro_batch_size * world / max(now - last, 1e-9),
                       "elapsed_s": state.elapsed_s}
            last_step = state.step >= micro_steps
            if state.step % cfg.grad_accum_steps == 0:
                stop = after_optimizer_step(engine, tokenizer, cfg, state, stopper, vset, scalars, writer,
                                            last_step, rank, world)
            elif writer is not None:
                writer.write(state.step, scalars)
            last = time.perf_counter()
            if rank == 0 and (state.step % cfg.log_every == 0 or last_step):
                done = state.step - start_step
                # A logger, not print: Ray Train patches print() to log AND echo, doubling lines.
                logger.info(f"[train] step {state.step}/{micro_steps} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                            f"{done / (now - started):.2f} steps/s "
                            f"eta {(micro_steps - state.step) * (now - started) / done:.0f}s")
            if last_step or stop:
                break
        if seen_in_epoch == 0:
            raise RuntimeError(f"worker {rank} got no full batch of {cfg.micro_batch_size} pairs")

    if writer is not None:
        writer.close()
    steps_done = state.step // cfg.grad_accum_steps
    if stopper.best_step is not None and stopper.best_step != steps_done:
        if state.best_checkpoint is None:
            raise RuntimeError(f"the best model (step {stopper.best_step}) has no checkpoint to export it from")
        if rank == 0:
            logger.info(f"[train] exporting the best model: step {stopper.best_step} "
                        f"({cfg.eval_metric} {stopper.best:.4f})")
        load_best_weights(engine, state.best_checkpoint)
    seconds = time.perf_counter() - started
    metrics = {"steps": steps_done, "stopped_early": steps_done < total_steps,
               "resumed_from_step": state.resumed_from // cfg.grad_accum_steps,
               "train_seconds": round(state.elapsed_s, 1),
               "pairs_per_second": round((state.step - start_step) * cfg.micro_batch_size * world / seconds, 2),
               **({"best_step": stopper.best_step, **state.best_metrics,
                   "checkpoint_score": stopper.best if stopper.best is not None else -1.0} if vset else {})}
    report_final(state, metrics, rank, lambda out_dir: export_encoder(engine, cfg, tokenizer, out_dir, rank))


def after_optimizer_step(engine, tokenizer, cfg: TrainConfig, state: TrainState, stopper: EarlyStopping,
                         vset: ValidationSet | None, scalars: dict[str, float], writer: MetricsWriter | None,
                         last_step: bool, rank: int, world: int) -> bool:
    """Evaluate, log, checkpoint and report as due after an optimizer step; True = stop early (all ranks)."""
    import ray.train

    step = state.step // cfg.grad_accum_steps
    evaluate = vset is not None and (is_due(step, cfg.eval_every) or last_step)
    improved = stop = False
    if evaluate:
        assert vset is not None
        val = evaluate_retrieval(engine, tokenizer, vset, cfg.query_max_length, cfg.item_max_length,
                                 cfg.eval_batch_size, rank, world)
        improved = stopper.update(val[f"val_{cfg.eval_metric}"], step)
        if improved:
            state.best_metrics = val
        stop = agree_any(stopper.should_stop, engine.device)
        state.early_stopping = stopper.to_dict()
        scalars = {**scalars, **{k: v for k, v in val.items() if k != "val_users"}}
        if rank == 0:
            logger.info(f"[train] step {step} validation ({val['val_users']} users): "
                        f"recall@10 {val['val_recall@10']:.4f} ndcg@10 {val['val_ndcg@10']:.4f}"
                        f"{' (best)' if improved else ''}{' -> early stop' if stop else ''}")
    if writer is not None:
        writer.write(state.step, scalars)     # before the checkpoint: a resume keeps steps <= its step
    if last_step or stop:
        return stop                           # the final report exports the model
    metrics = {"step": step, "loss": scalars["loss"], **{k: v for k, v in scalars.items() if k.startswith("val_")}}
    if is_due(step, cfg.checkpoint_every) or improved:
        if vset is not None:
            # Ray Train keeps the top checkpoints by this score: only a new best carries its metric (others,
            # evaluated or not, get -1), so ties with an older best can never push the best checkpoint out.
            metrics["checkpoint_score"] = scalars[f"val_{cfg.eval_metric}"] if improved else -1.0
        persisted = report_checkpoint(engine, state, metrics, rank)
        if improved:
            state.best_checkpoint = persisted.path
    elif evaluate:
        ray.train.report(metrics)
    return stop
