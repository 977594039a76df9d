"""IndexConfig: the one config of jobs/build_index.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recsys.config import JobConfig


class BM25Config(JobConfig):
    k1: float = Field(1.5, gt=0, description="term-frequency saturation (Lucene default 1.2-2.0)")
    b: float = Field(0.75, ge=0, le=1, description="document-length normalisation")
    stopwords: Literal["en"] | None = Field("en", description="drop English stopwords from titles and queries")
    stemmer: Literal["english"] | None = Field(
        "english", description="Snowball stemmer for titles and queries (Anserini/Lucene's BM25 baselines stem too); "
                               "null: exact tokens")


class IndexConfig(JobConfig):
    model: str = Field("latest", description="model version from jobs/train.py, or 'default' (zero-shot MiniLM)")
    data: str = Field("latest", description="data version whose catalog gets indexed")
    factory: str = Field("Flat", description="Faiss index_factory string: Flat (exact), HNSW32, "
                                             "IVF1024,PQ32, ... (inner product on unit vectors)")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward pass")
    embed_concurrency: int = Field(2, ge=1, description="embedding actors (one per GPU on GPU clusters)")
    use_gpu: bool = Field(False, description="give each embedding actor a GPU")
    bm25: BM25Config | None = Field(default_factory=BM25Config,
                                    description="also index the item texts for BM25 (hybrid /v1/search); null = off")
