"""DeepSpeedRunConfig: the fields every Ray Train + DeepSpeed job shares (jobs/train.py's two towers,
jobs/train_ranker.py's cross-encoder): workers, ZeRO, precision, optimizer, and the fault tolerance
of the shared worker loop (recsys/train/worker_loop.py). Each job's config subclasses it, adds what
it trains, and sets its own defaults for batch size, steps, warm-up and shuffling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import JobConfig


class DeepSpeedRunConfig(JobConfig):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU clusters)")
    use_gpu: bool = Field(False, description="GPU workers with NCCL; false = CPU workers with gloo")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per worker; below 1 leaves "
                                                          "Ray Data CPUs to feed training on small machines")
    pin_cpu_cores: bool = Field(True, description="CPU workers (use_gpu false): pin each worker's threads to its "
                                                  "own share of its node's cores (11% less CPU per step measured "
                                                  "on 2 workers x 2 cores)")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = plain data parallel)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer states to CPU memory")
    offload_param: bool = Field(False, description="ZeRO-3 only: offload parameters to CPU memory")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 mixed precision; auto = on with GPUs")
    export_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the exported model's files: the fp32 master weights as they are, "
                               "or cast to bfloat16 (half the size; what a GPU server loads anyway)")
    micro_batch_size: int = Field(16, ge=1, description="rows per worker per step")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(100, ge=1, description="optimizer steps; null = run `epochs` full epochs")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows when max_steps is null")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps, then lr_schedule "
                                                    "(0 acts as 1: DeepSpeed needs one)")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="after warm-up: linear decay to 0, cosine decay, or constant lr")
    shuffle_buffer: int = Field(1024, ge=0, description="rows in each worker's local shuffle buffer")
    log_every: int = Field(10, ge=1, description="print loss every N steps")
    seed: int = Field(0, description="torch seed on every worker (and the job's seeded draws)")
    # Fault tolerance: DeepSpeed checkpoints persisted by Ray Train; a failed worker group restarts from the latest.
    checkpoint_every: int | None = Field(50, ge=0, description="save a DeepSpeed checkpoint (model, optimizer, "
                                                              "lr schedule) every N optimizer steps; 0/null = "
                                                              "only the exported model at the end")
    checkpoints_to_keep: int = Field(2, ge=1, description="checkpoints Ray Train keeps (the latest and, with "
                                                          "evaluation, the best are always among them)")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the latest checkpoint after a "
                                                    "failure (-1 = unlimited)")
    resume: str | None = Field(None, description="continue a stopped run: 'latest' or its version "
                                                 "(--resume [VERSION])")

    @model_validator(mode="after")
    def _check_offload(self) -> DeepSpeedRunConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage=3, got zero_stage={self.zero_stage}")
        return self

    @property
    def use_bf16(self) -> bool:
        return self.use_gpu if self.bf16 == "auto" else bool(self.bf16)
