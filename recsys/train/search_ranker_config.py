"""SearchRankerConfig: the one config of jobs/train_search_ranker.py (LambdaMART over hybrid search)."""

from __future__ import annotations

from pydantic import Field

from recsys.config import JobConfig
from recsys.index.hybrid import HybridSearchConfig


class SearchRankerConfig(JobConfig):
    data: str = Field("latest", description="data version: its catalog, popularity and held-out query fraction "
                                            "(held-out queries are never trained on)")
    index: str = Field("latest", description="index version (Faiss + BM25, from build_index) whose candidates the "
                                             "ranker learns to order; serve the ranker with this index's model")
    judgments: str | None = Field(
        "../shared/data/homedepot", description="graded (query, item, relevance) judgments: the Home Depot directory "
                                                "or a .csv/.parquet with query, item_id, relevance; null = the data "
                                                "version's search clicks (train_pairs of kind search) as gain 1")
    relevance_floor: float = Field(1.0, description="gain = relevance - relevance_floor (Home Depot: 1 = irrelevant)")
    retrieval_k: int = Field(100, ge=10, le=1000, description="candidates per query, as the service's "
                                                              "args.retrieval_k fetches them")
    hybrid: HybridSearchConfig = Field(default_factory=HybridSearchConfig,
                                       description="the fusion the candidates come from: the Retriever's "
                                                   "user_config `search` the ranker will be served with")
    max_queries: int | None = Field(None, ge=10, description="a seeded sample of the training queries (null = all)")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="training queries kept out of the fit "
                                                                      "for early stopping and the report")
    num_trees: int = Field(500, ge=1, description="most boosting rounds (early stopping on validation)")
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    embed_batch_size: int = Field(128, ge=1, description="queries per encoder forward")
    seed: int = Field(0, description="seed of the query sample, the validation split and LightGBM")
