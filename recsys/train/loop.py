"""`train_loop_per_worker`: DeepSpeed two-tower fine-tuning inside a Ray Train worker.

The loop itself (steps, validation, early stopping, checkpoints, restart, resume, export) is the
shared recsys/train/worker_loop.py; this module is the two-tower task it runs: the model, one
contrastive step, the retrieval validation and the export of the towers as HF directories.
"""

from __future__ import annotations

import os
from typing import Any

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
from recsys.models.towers import TwoTowerModel, padding_stats
from recsys.train.config import TrainConfig
from recsys.train.deepspeed_config import build_deepspeed_config
from recsys.train.evaluator import evaluate_retrieval
from recsys.train.export_weights import full_fp32_state_dict, load_exported_weights
from recsys.train.pair_tokens import ANCHOR_KEY, stacked_masks, stacked_tokens, token_sides
from recsys.train.validation import ValidationSet
from recsys.train.worker_loop import PeriodicValidation, WorkerTask, run_worker_loop


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
    return TwoTowerModel(encoders[0], encoders[1] if towers == 2 else None, cfg.length_buckets), loaded[0][1]


def build_engine(cfg: TrainConfig, world: int, total_steps: int):
    """The DeepSpeed engine over the two-tower model, and the tokenizer, once the process group is up (collective).

    One place for the worker's set-up, so bench/train_bench.py times the same engine without Ray."""
    import deepspeed

    ds_config = build_deepspeed_config(cfg, world, total_steps)
    model, tokenizer = build_model(cfg, ds_config)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine, tokenizer


def export_encoder(engine, cfg: TrainConfig, tokenizer, out_dir: str, rank: int) -> bool:
    """Write the trained item tower as a plain HF directory (safetensors) on rank 0, and a separate query
    tower as another one in its QUERY_TOWER_DIR; each config.json records the pooling.

    The weights are the optimizer's fp32 master copy at every ZeRO stage (export_weights.py), saved in
    cfg.export_dtype; every rank joins the gather, then rank 0 alone loads them into a plain model.
    """
    state = full_fp32_state_dict(engine, rank)
    if rank != 0 or state is None:
        return False
    model, _ = build_model(cfg)
    model = load_exported_weights(model, state, cfg.export_dtype)
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


def train_step(engine, batch: dict, cfg: TrainConfig, rank: int = 0, world: int = 1) -> float:
    """One micro-batch of tokenised pairs (recsys/train/pair_tokens.py): forward both towers, softmax over the
    candidates, backward, step. No tokenisation here: Ray Data did it before the batch arrived.

    Candidates are the batch's positives, then its mined hard negatives (when the pairs carry them: every
    pair's first, then every pair's second ...), then with negatives_across_workers the same from every
    other worker."""
    device = engine.device
    sides = token_sides(batch)
    n = len(batch[ANCHOR_KEY])
    n_hard = n * (len(sides) - 1)
    input_ids, attention_mask = stacked_tokens(batch, sides)
    query, item = engine(input_ids.to(device), attention_mask.to(device), n_queries=n)
    keys = torch.cat([torch.as_tensor(batch[f"{side}_key"]) for side in sides]).to(device)
    # -1: a hard negative is no row's positive, so no anchor's other positive either
    anchors = torch.cat([torch.as_tensor(batch[ANCHOR_KEY]).to(device),
                         torch.full((n_hard,), -1, dtype=torch.int64, device=device)])
    log_q = None
    if cfg.logq_correction:   # only in-batch positives were sampled by frequency; hard negatives get no correction
        log_q = torch.cat([torch.as_tensor(batch["positive_log_q"]).float().to(device),
                           torch.zeros(n_hard, device=device)])
    item, first = item.float(), 0
    if cfg.negatives_across_workers and world > 1:
        first = rank * len(keys)
        item, keys = gather_candidates(item, rank, world), gather_candidates(keys, rank, world)
        anchors = gather_candidates(anchors, rank, world)
        log_q = gather_candidates(log_q, rank, world) if log_q is not None else None
    weights = torch.as_tensor(batch["positive_weight"]).float().to(device) if "positive_weight" in batch else None
    loss = in_batch_softmax_loss(query.float(), item, keys, cfg.temperature, log_q, first, anchors,
                                 symmetric=cfg.symmetric_loss, weights=weights)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def step_tokens(batch: dict, cfg: TrainConfig) -> dict[str, int]:
    """Real and computed tokens of one tokenised micro-batch, as TwoTowerModel encodes it (the run's summary)."""
    attention_mask = stacked_masks(batch, token_sides(batch))
    stats = padding_stats(attention_mask, len(batch[ANCHOR_KEY]), cfg.length_buckets)
    return {"real": stats["real"], "computed": stats["computed"]}


def retrieval_validation(cfg: TrainConfig, vset: ValidationSet) -> PeriodicValidation:
    def evaluate(engine, tokenizer, rank: int, world: int) -> dict[str, float]:
        return evaluate_retrieval(engine, tokenizer, vset, cfg.query_max_length, cfg.item_max_length,
                                  cfg.eval_batch_size, rank, world)

    def describe(val: dict[str, float]) -> str:
        return f"({val['val_users']} users): recall@10 {val['val_recall@10']:.4f} ndcg@10 {val['val_ndcg@10']:.4f}"

    return PeriodicValidation(every=cfg.eval_every, metric=cfg.eval_metric, patience=cfg.early_stopping_patience,
                              evaluate=evaluate, describe=describe)


def two_tower_task(cfg: TrainConfig, vset: ValidationSet | None) -> WorkerTask:
    return WorkerTask(
        job="train",
        build_engine=lambda world, total_steps: build_engine(cfg, world, total_steps),
        step=lambda engine, _tokenizer, batch, rank, world: train_step(engine, batch, cfg, rank, world),
        torch_batches=True,
        count_tokens=lambda batch: step_tokens(batch, cfg),
        export=lambda engine, tokenizer, out_dir, rank: export_encoder(engine, cfg, tokenizer, out_dir, rank),
        validation=retrieval_validation(cfg, vset) if vset is not None else None)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: config = {"cfg", "total_steps", "log_dir", "validation": ObjectRef | None}."""
    import ray

    cfg = TrainConfig.model_validate(config["cfg"])
    vset = ray.get(config["validation"]) if config.get("validation") is not None else None
    run_worker_loop(two_tower_task(cfg, vset), cfg, config)
