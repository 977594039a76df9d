"""Training config -> DeepSpeed config dict (pure; unit-tested without DeepSpeed or Ray).

Any config with the fields of `DeepSpeedSettings` works: the two-tower TrainConfig and the
ranker's RankerTrainConfig share this one translation.
"""

from __future__ import annotations

from typing import Any, Protocol

CPU_BUCKET = 10_000_000
# ZeRO-3 on CPU: every stage3 buffer is host memory, and nothing overlaps communication with compute on CPU
# workers (overlap_comm is off), so small buffers cost no speed worth having. Measured on a 110M BERT, 2 ranks
# (bench/train_bench.py): 2e6-element sub-groups / buckets, no prefetch and no reuse window take the peak from
# 2.25 to 1.87 GiB per worker (with recsys.train.worker_loop.limit_cpu_heap_growth).
CPU_STAGE3_BUCKET = 2_000_000


class DeepSpeedSettings(Protocol):
    """The fields build_deepspeed_config / plan_total_steps read (read-only, so pydantic fields match)."""

    @property
    def zero_stage(self) -> int: ...
    @property
    def use_gpu(self) -> bool: ...
    @property
    def use_bf16(self) -> bool: ...
    @property
    def offload_optimizer(self) -> bool: ...
    @property
    def offload_param(self) -> bool: ...
    @property
    def micro_batch_size(self) -> int: ...
    @property
    def grad_accum_steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def lr_schedule(self) -> str: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def epochs(self) -> float: ...


def build_deepspeed_config(cfg: DeepSpeedSettings, world_size: int, total_steps: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 2:
        zero.update({"overlap_comm": cfg.use_gpu, "contiguous_gradients": True})
    if not cfg.use_gpu and cfg.zero_stage >= 1:
        # DeepSpeed's defaults (5e8-element buckets) are sized for GPU links; on CPU workers they are
        # just extra host memory (~0.6 GiB per worker on a 110M BERT, bench/train_bench.py).
        reduce_bucket = CPU_STAGE3_BUCKET if cfg.zero_stage == 3 else CPU_BUCKET
        zero.update({"reduce_bucket_size": reduce_bucket, "allgather_bucket_size": CPU_BUCKET})
        if cfg.zero_stage == 3:
            zero.update({
                "stage3_max_live_parameters": CPU_STAGE3_BUCKET,
                # Prefetching only pays when a GPU computes while the next layer's weights arrive.
                "stage3_prefetch_bucket_size": 0,
                # The default (1e9) keeps every gathered weight between forward and backward: the whole
                # model, per rank, from the second step on.
                "stage3_max_reuse_distance": 0,
                # The optimizer step flattens each sub-group's gradients and AdamW makes temporaries of its
                # size: the default (1e9) makes that the whole partition at once.
                "sub_group_size": CPU_STAGE3_BUCKET,
            })
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        # Lets rank 0 gather full weights to export a plain HF model directory.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # DeepSpeed rejects warmup_num_steps=0, so warmup_steps=0 becomes one warm-up step (the first step
    # runs at lr 0). Raising warmup_min_lr instead would also stop the decay, which decays towards it.
    warmup = max(1, min(cfg.warmup_steps, total_steps - 1))
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        # torch's AdamW: DeepSpeed's FusedAdam would JIT-compile a CUDA/CPU op first (~40 s). torch's own fused
        # kernel (CPU and CUDA, nothing to compile) instead of its default per-tensor loop: one step over a ZeRO-2
        # rank's MiniLM partition (11.35M fp32 values, 1 thread) takes 14 ms instead of 79 ms, ~5% of a CPU step.
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                  "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True,
                                                  "fused": True}},
        "scheduler": lr_scheduler(cfg.lr_schedule, cfg.lr, warmup, max(total_steps, 1)),
        "gradient_clipping": 1.0,
        "bf16": {"enabled": cfg.use_bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,   # our own progress lines instead of DeepSpeed's
        "wall_clock_breakdown": False,
    }


def lr_scheduler(schedule: str, lr: float, warmup: int, total_steps: int) -> dict[str, Any]:
    """Linear warm-up to `lr`, then: linear decay to 0, cosine decay (to 1e-4 x lr), or constant."""
    if schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                    "warmup_num_steps": warmup, "total_num_steps": total_steps,
                                                    "warmup_type": "linear"}}
    if schedule == "cosine":
        # A ratio schedule: the optimizer's own lr is the peak; the floor keeps the last steps from being wasted.
        return {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0.0, "warmup_num_steps": warmup,
                                                     "total_num_steps": total_steps, "cos_min_ratio": 1e-4,
                                                     "warmup_type": "linear"}}
    if schedule == "constant":
        return {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                               "warmup_num_steps": warmup, "warmup_type": "linear"}}
    raise ValueError(f"lr_schedule={schedule!r}: expected linear, cosine or constant")


def plan_total_steps(cfg: DeepSpeedSettings, n_pairs: int, world_size: int) -> int:
    """Optimizer steps to run: max_steps, or `epochs` passes over the pairs."""
    per_step = cfg.micro_batch_size * cfg.grad_accum_steps * world_size
    if n_pairs < per_step:
        raise ValueError(f"only {n_pairs} training pairs: fewer than one global batch "
                         f"(micro_batch_size={cfg.micro_batch_size} x workers={world_size} x grad_accum)")
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, int(cfg.epochs * n_pairs // per_step))
