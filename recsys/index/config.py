"""IndexConfig: the one config of jobs/build_index.py."""

from __future__ import annotations

from pydantic import Field

from recsys.config import JobConfig


class IndexConfig(JobConfig):
    model: str = Field("latest", description="model version from jobs/train.py, or 'default' (zero-shot MiniLM)")
    data: str = Field("latest", description="data version whose catalog gets indexed")
    factory: str = Field("Flat", description="Faiss index_factory string: Flat (exact), HNSW32, "
                                             "IVF1024,PQ32, ... (inner product on unit vectors)")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward pass")
    embed_concurrency: int = Field(2, ge=1, description="embedding actors (one per GPU on GPU clusters)")
    use_gpu: bool = Field(False, description="give each embedding actor a GPU")
