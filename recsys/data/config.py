"""PreprocessConfig: the one config of jobs/preprocess.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import JobConfig
from recsys.schema import CATALOG_COLUMNS, EVENT_COLUMNS, EVENT_TYPES


class SyntheticConfig(JobConfig):
    n_users: int = Field(1500, ge=10, description="synthetic shoppers")
    n_items: int = Field(1000, ge=20, description="synthetic catalog size")
    seed: int = Field(0, description="same seed, same data")


class SourceConfig(JobConfig):
    path: str | None = Field(
        None, description="null: synthetic data; a public data set directory (amazon_scientific, homedepot, "
                          "instacart: detected from its files); or events in the generic schema "
                          "(a .parquet/.csv/.jsonl file, a directory of them incl. hive partitions, a glob, "
                          "or any pyarrow filesystem URI such as s3://bucket/logs/)")
    catalog: str | None = Field(None, description="catalog file/dir/glob/URI; required with generic events")
    columns: dict[str, str] = Field(
        default_factory=dict, description="our event column -> its name in your event files, e.g. "
                                          "{user_id: visitorid, item_id: itemid, event_type: event}; "
                                          "columns not listed are read by their own name")
    catalog_columns: dict[str, str] = Field(
        default_factory=dict, description="our catalog column -> its name in your catalog files, e.g. "
                                          "{item_id: sku, title: name}")
    min_relevance: float | None = Field(
        None, description="graded search judgments (homedepot): a judged (query, product) pair at or above this "
                          "relevance becomes a search click; null = the adapter's 2.5 (on Home Depot's 1-3 scale)")
    timestamp_unit: Literal["auto", "s", "ms", "us", "iso"] = Field(
        "auto", description="epoch unit of numeric timestamps (auto: by magnitude), or iso for ISO-8601 only")

    @model_validator(mode="after")
    def _columns_are_ours(self) -> SourceConfig:
        for field, ours in (("columns", EVENT_COLUMNS), ("catalog_columns", CATALOG_COLUMNS)):
            unknown = sorted(set(getattr(self, field)) - set(ours))
            if unknown:
                raise ValueError(f"{field} has unknown keys {unknown}; keys are our column names: {list(ours)}")
        return self

    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig,
                                       description="used when path is null")


DEFAULT_ALIASES = {"cart": "add_to_cart", "addtocart": "add_to_cart", "add-to-cart": "add_to_cart",
                   "transaction": "purchase", "order": "purchase", "buy": "purchase",
                   "pageview": "view", "detail": "view", "impression_click": "click"}


class CleaningConfig(JobConfig):
    event_type_aliases: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ALIASES),
        description="raw event type (lower-case) -> one of the known types; anything else is quarantined")
    rapid_repeat_seconds: float = Field(
        2.0, ge=0, description="same user, item and event type again within this many seconds is one event "
                               "(double clicks, page reloads); 0 disables")
    bot_max_events_per_minute: int = Field(
        60, ge=1, description="a user with more events than this in any one clock minute is a bot: all of "
                              "their events are dropped")
    bot_max_session_events: int = Field(
        1000, ge=1, description="a user with a session longer than this many events is a bot")

    @model_validator(mode="after")
    def _aliases_name_known_types(self) -> CleaningConfig:
        bad = {k: v for k, v in self.event_type_aliases.items() if v not in EVENT_TYPES}
        if bad:
            raise ValueError(f"event_type_aliases map to unknown event types {bad}; use one of {list(EVENT_TYPES)}")
        return self


class SequenceConfig(JobConfig):
    session_gap_minutes: float = Field(30.0, gt=0, description="inactivity that starts a new session")
    max_length: int = Field(200, ge=3, description="keep each user's most recent N items")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0},
        description="weight of a sequence step by its strongest event (purchase > cart > click > view)")
    window_length: int = Field(50, ge=2, description="training windows: at most this many items each")
    window_stride: int = Field(25, ge=1, description="step between the starts of consecutive windows")


class SplitConfig(JobConfig):
    method: Literal["leave_last_out", "time"] = Field(
        "leave_last_out", description="leave_last_out: each user's last item is test, the one before valid; "
                                      "time: global cut-offs at quantiles of event time")
    valid_fraction: float = Field(0.05, gt=0, lt=0.5, description="time split: share of events in the valid window")
    test_fraction: float = Field(0.05, gt=0, lt=0.5, description="time split: share of events in the test window")
    search_holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of distinct query strings held out of training (a stable hash of the "
                                     "exact query, recsys.data.holdout) for search evaluation; 0 keeps every query")


class RetrievalPairsConfig(JobConfig):
    max_history_items: int = Field(8, ge=1, description="items in a history text (query-tower input)")
    max_pairs_per_user: int = Field(50, ge=1, description="cap on next-item training pairs per user (most recent)")


class RankingConfig(JobConfig):
    enabled: bool = Field(True, description="write CTR/ranking examples (ranking_examples/)")
    max_positives_per_user: int = Field(5, ge=1, description="most recent training steps per user used as positives")
    negatives_per_positive: int = Field(4, ge=1, description="sampled negatives for every positive")
    negative_sampling: Literal["uniform", "popularity"] = Field(
        "popularity", description="uniform over items, or proportional to count**popularity_alpha "
                                  "(the sampling probability is stored for logQ correction)")
    popularity_alpha: float = Field(0.75, ge=0, le=1, description="flattening of the popularity distribution")
    imbalance: Literal["none", "reweight", "resample"] = Field(
        "reweight", description="none; reweight: positives weigh negatives_per_positive; resample: each positive "
                                "is repeated negatives_per_positive times")
    seed: int = Field(0, description="negative sampling is a pure function of (seed, user, step)")


class PreprocessConfig(JobConfig):
    source: SourceConfig = Field(default_factory=SourceConfig, description="where the logs and catalog come from")
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig, description="what counts as noise")
    sequences: SequenceConfig = Field(default_factory=SequenceConfig, description="sessions and sequences")
    split: SplitConfig = Field(default_factory=SplitConfig, description="how validation/test targets are chosen")
    retrieval_pairs: RetrievalPairsConfig = Field(default_factory=RetrievalPairsConfig,
                                                  description="two-tower training pairs")
    ranking: RankingConfig = Field(default_factory=RankingConfig, description="CTR/ranking examples")
    num_partitions: int = Field(16, ge=1, description="user-hash partitions (the shuffle fan-out)")
    rows_per_read_task: int = Field(500_000, ge=1000, description="Parquet row groups are grouped into read tasks "
                                                                  "of about this many rows")
