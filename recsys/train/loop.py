"""`train_loop_per_worker`: DeepSpeed two-tower fine-tuning inside a Ray Train worker.

Every worker runs the same number of steps (equal dataset shards, one shared step
budget) so ZeRO's collectives never wait on a rank that has stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import zlib
from typing import Any

import numpy as np
import torch

from recsys.models.encoder import TextEncoder, load_hf_encoder
from recsys.models.lora import apply_lora, merge_lora
from recsys.models.losses import in_batch_softmax_loss
from recsys.models.towers import TwoTowerModel, tokenize_pairs
from recsys.train.config import TrainConfig
from recsys.train.curves import MetricsWriter
from recsys.train.deepspeed_config import build_deepspeed_config

logger = logging.getLogger("recsys.train")


def build_model(cfg: TrainConfig) -> tuple[TwoTowerModel, object]:
    backbone, tokenizer = load_hf_encoder(cfg.model_name_or_path)
    if cfg.lora.enabled:
        backbone = apply_lora(backbone, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    return TwoTowerModel(TextEncoder(backbone)), tokenizer


def item_keys(item_ids) -> torch.Tensor:
    """Stable int ids for the same-item mask of the loss (crc32 is the same on every worker)."""
    return torch.tensor([zlib.crc32(str(i).encode()) for i in item_ids], dtype=torch.int64)


def export_encoder(engine, cfg: TrainConfig, tokenizer, out_dir: str, rank: int) -> bool:
    """Write the trained encoder as a plain HF directory (safetensors) on rank 0.

    ZeRO-3 shards parameters, so every rank must join the gather before rank 0 saves.
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
    backbone: Any = merge_lora(model.encoder.backbone)
    backbone.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return True


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    cfg = TrainConfig.model_validate(config["cfg"])
    total_steps: int = config["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    # Reuses the process group Ray Train already set up (gloo on CPU, NCCL on GPU).
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")

    model, tokenizer = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params,
                                           config=build_deepspeed_config(cfg, world, total_steps))
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
            tok = tokenize_pairs(tokenizer, batch["anchor_text"], batch["positive_text"],
                                 cfg.query_max_length, cfg.item_max_length)
            query, item = engine(tok["input_ids"].to(device), tok["attention_mask"].to(device),
                                 n_queries=len(batch["anchor_text"]))
            loss = in_batch_softmax_loss(query.float(), item.float(),
                                         item_keys(batch["positive_item_id"]).to(device), cfg.temperature)
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
                logger.info(f"[train] step {step}/{micro_steps} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                            f"{step / elapsed:.2f} steps/s eta {(micro_steps - step) * elapsed / step:.0f}s")
            if step >= micro_steps:
                break
        if seen_in_epoch == 0:
            raise RuntimeError(f"worker {rank} got no full batch of {cfg.micro_batch_size} pairs")

    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - started
    window = max(1, min(10, len(losses) // 4))
    metrics = {"steps": total_steps, "loss_first": float(np.mean(losses[:window])),
               "loss_last": float(np.mean(losses[-window:])), "train_seconds": round(elapsed, 1),
               "pairs_per_second": round(step * cfg.micro_batch_size * world / elapsed, 2),
               "loss_curve": [round(x, 4) for x in losses]}
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_encoder(engine, cfg, tokenizer, tmp, rank)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if saved else None)
