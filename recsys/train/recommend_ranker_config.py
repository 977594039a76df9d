"""RecommendRankerConfig: the one config of jobs/train_recommend_ranker.py (LambdaMART over /v1/recommend)."""

from __future__ import annotations

from pydantic import Field

from recsys.serve.candidate_sources import SourcesConfig
from recsys.train.ltr_fit import LTRSettings


class RecommendRankerConfig(LTRSettings):
    data: str = Field("latest", description="data version: its sequences/ give each user's history and next item")
    index: str = Field("latest", description="index version whose model proposes candidates; serve the ranker "
                                             "with it")
    sources: SourcesConfig = Field(default_factory=SourcesConfig,
                                   description="the Retriever's user_config `sources` the ranker will be served with")
    retrieval_k: int = Field(100, ge=10, le=1000, description="candidates per user, as serve args retrieval_k")
    min_history: int = Field(2, ge=1, description="users need this many items before their last one")
    # Not further back: leave-last-out trains the towers on every step before the valid item, so the ANN has
    # memorised those (70% of third-from-last targets were among its candidates, against 33% of the last two).
    targets_per_user: int = Field(2, ge=1, le=2, description="training targets per user: 1 = the last item, 2 = also "
                                                             "the one before it (with the sources rebuilt from the "
                                                             "log cut before it): twice the positives")
    max_users: int | None = Field(None, ge=10, description="a seeded sample of users (null = all)")
    # Small trees: one positive per user leaves few positives (2-3k on Amazon Scientific), and 31-leaf trees
    # overfit them within a dozen rounds; these lost nothing on validation and gained on served users
    # (docs/results.md, "Learned item-to-item weights").
    learning_rate: float = Field(0.03, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(200, ge=1)
    # One positive per user makes a 10% validation split too noisy to stop on (it stopped at 13 trees);
    # 5-fold CV over the training users finds where the curve really peaks (docs/results.md, "Recent popularity").
    cv_folds: int = Field(5, ge=0, le=10)
    # Five bagged members averaged: the trees fitted on so few positives vary with the sample, and the mean
    # of five lifted the served answer on the cut targets (docs/results.md, "Recent popularity").
    ensemble: int = Field(5, ge=1, le=16)
