"""PreprocessConfig: the one config of jobs/preprocess.py."""

from __future__ import annotations

from pydantic import Field

from recsys.config import JobConfig


class SyntheticConfig(JobConfig):
    n_users: int = Field(1500, ge=10, description="synthetic shoppers")
    n_items: int = Field(1000, ge=20, description="synthetic catalog size")
    seed: int = Field(0, description="same seed, same data")


class SourceConfig(JobConfig):
    path: str | None = Field(
        None, description="null: synthetic data; a public data set directory (amazon_scientific, homedepot, "
                          "instacart: detected from its files); or events in the generic schema "
                          "(a .parquet/.csv/.jsonl file, a directory of them, or a glob)")
    catalog: str | None = Field(None, description="catalog file/dir/glob; required with generic events")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig,
                                       description="used when path is null")


class PreprocessConfig(JobConfig):
    source: SourceConfig = Field(default_factory=SourceConfig, description="where the logs and catalog come from")
    session_gap_minutes: float = Field(30.0, gt=0, description="inactivity that starts a new session")
    max_sequence_length: int = Field(200, ge=3, description="keep each user's most recent N items")
    max_history_items: int = Field(8, ge=1, description="items in a history text (query-tower input)")
    max_pairs_per_user: int = Field(50, ge=1, description="cap on next-item training pairs per user")
    num_partitions: int = Field(8, ge=1, description="user-hash partitions for sequence building")
    parse_concurrency: int = Field(2, ge=1, description="parallel parse/validate actors")
