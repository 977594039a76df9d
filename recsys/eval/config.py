"""EvalConfig: the one config of jobs/evaluate.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recsys.config import JobConfig

Method = Literal["fine_tuned", "zero_shot", "popularity", "cooccurrence"]
METHODS: tuple[Method, ...] = ("fine_tuned", "zero_shot", "popularity", "cooccurrence")


class EvalConfig(JobConfig):
    model: str = Field("latest", description="fine-tuned model version from jobs/train.py")
    data: str = Field("latest", description="data version whose held-out items are ranked")
    split: Literal["test", "valid"] = Field("test", description="test = last item, valid = second-to-last")
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50], description="cut-offs for Recall/NDCG@K")
    methods: list[Method] = Field(
        default_factory=lambda: list(METHODS), description="what to rank with, all in the same run")
    exclude_history: bool = Field(True, description="never rank items the user already has (as serving does)")
    max_users: int | None = Field(None, ge=1, description="evaluate a seeded sample of users (null = all)")
    seed: int = Field(0, description="sampling seed for max_users")
    embed_batch_size: int = Field(64, ge=1, description="texts per forward pass")
    embed_concurrency: int = Field(2, ge=1, description="embedding actors")
