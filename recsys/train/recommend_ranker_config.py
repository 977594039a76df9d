"""RecommendRankerConfig: the one config of jobs/train_recommend_ranker.py (LambdaMART over /v1/recommend)."""

from __future__ import annotations

from pydantic import Field

from recsys.config import JobConfig
from recsys.serve.candidate_sources import SourcesConfig


class RecommendRankerConfig(JobConfig):
    data: str = Field("latest", description="data version: its sequences/ give each user's history and next item")
    index: str = Field("latest", description="index version whose model proposes candidates; serve the ranker "
                                             "with it")
    sources: SourcesConfig = Field(default_factory=SourcesConfig,
                                   description="the Retriever's user_config `sources` the ranker will be served with")
    retrieval_k: int = Field(100, ge=10, le=1000, description="candidates per user, as serve args retrieval_k")
    min_history: int = Field(2, ge=1, description="users need this many items before their last one")
    max_users: int | None = Field(None, ge=10, description="a seeded sample of users (null = all)")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="users kept out of the fit for early "
                                                                      "stopping and the report")
    num_trees: int = Field(500, ge=1, description="most boosting rounds (early stopping on validation)")
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    seed: int = Field(0, description="seed of the user sample, the validation split and LightGBM")
