"""SearchEvalConfig: the one config of jobs/evaluate_search.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from recsys.config import JobConfig
from recsys.index.config import BM25Config
from recsys.index.hybrid import HybridSearchConfig

SearchMethod = Literal["fine_tuned", "zero_shot", "bm25", "hybrid"]
# hybrid: the fine-tuned model and BM25 fused as /v1/search fuses them (recsys.index.hybrid).
SEARCH_METHODS: tuple[SearchMethod, ...] = ("fine_tuned", "zero_shot", "bm25", "hybrid")


class SearchEvalConfig(JobConfig):
    model: str = Field("latest", description="fine-tuned model version from jobs/train.py; zero_shot uses its "
                                             "base_model. 'default' = the packaged MiniLM (for zero_shot/bm25 runs "
                                             "before any fine-tuning)")
    data: str = Field("latest", description="data version: its catalog is ranked and its manifest's "
                                            "split.search_holdout_fraction says which queries training never saw")
    judgments: str = Field(
        "../shared/data/homedepot", description="graded (query, item, relevance) judgments: the Home Depot data set "
                                                "directory (train.csv: search_term, product_uid, relevance), or a "
                                                ".csv/.parquet file with columns query, item_id, relevance; relative "
                                                "paths are from the working directory")
    methods: list[SearchMethod] = Field(default_factory=lambda: list(SEARCH_METHODS),
                                        description="what to rank with, all in the same run over the same queries")
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50], description="cut-offs for NDCG@K and Recall@K")
    relevance_floor: float = Field(1.0, description="gain = relevance - relevance_floor for judged pairs (Home "
                                                    "Depot: 1 = irrelevant -> gain 0); unjudged items gain 0")
    relevant_threshold: float = Field(2.5, description="judged pairs at or above this relevance count for Recall@K "
                                                       "(the same cut preprocessing uses for a click)")
    max_queries: int | None = Field(None, ge=1, description="evaluate a seeded sample of held-out queries "
                                                            "(null = all)")
    seed: int = Field(0, description="sampling seed for max_queries")
    bm25: BM25Config = Field(default_factory=BM25Config, description="BM25 baseline (bm25s) settings")
    hybrid: HybridSearchConfig = Field(default_factory=HybridSearchConfig,
                                       description="hybrid: the fine-tuned model's and BM25's lists fused as the "
                                                   "Retriever's user_config `search` fuses them for /v1/search")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward pass")
    embed_concurrency: int = Field(2, ge=1, description="embedding actors")

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be a non-empty list of cut-offs >= 1, got {ks}")
        return sorted(set(ks))

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, methods: list[SearchMethod]) -> list[SearchMethod]:
        if not methods:
            raise ValueError("methods must name at least one of " + ", ".join(SEARCH_METHODS))
        return list(dict.fromkeys(methods))
