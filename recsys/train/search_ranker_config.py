"""SearchRankerConfig: the one config of jobs/train_search_ranker.py (LambdaMART over hybrid search)."""

from __future__ import annotations

from pydantic import Field

from recsys.index.hybrid import HybridSearchConfig
from recsys.train.ltr_fit import LTRSettings


class SearchRankerConfig(LTRSettings):
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
    embed_batch_size: int = Field(128, ge=1, description="queries per encoder forward")
