"""The vocabulary every stage shares: event and catalog columns, stage outputs, HTTP models.

Stage contracts:
- sources -> validate: raw rows with the EVENT_COLUMNS / CATALOG_COLUMNS as strings.
- validate -> preprocess: EVENTS_SCHEMA / CATALOG_SCHEMA (typed), quarantine rows QUARANTINE_COLUMNS.
- preprocess -> train: TRAIN_PAIR_COLUMNS (anchor text -> positive item text), WINDOW_COLUMNS
  (sequence windows), RANKING_COLUMNS (labelled CTR examples with sampled negatives).
- preprocess -> evaluate/serve: SEQUENCE_COLUMNS (one row per user), POPULARITY_COLUMNS.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "search")
# Events that name an item the user engaged with; they make up behaviour sequences.
ITEM_EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
# How strong a signal each event is, used when consecutive events hit the same item.
EVENT_STRENGTH: dict[str, int] = {"view": 1, "click": 2, "search": 2, "add_to_cart": 3, "purchase": 4}

EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "timestamp", "query", "session_id")
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "event_type", "timestamp")

EVENTS_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.string()),          # null only for a search with no click
    ("event_type", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("query", pa.string()),            # set for search events
    ("session_id", pa.string()),       # derived from 30-min inactivity gaps when absent
])

CATALOG_COLUMNS: tuple[str, ...] = ("item_id", "title", "brand", "category", "description", "price", "in_stock")
CATALOG_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("brand", pa.string()),
    ("category", pa.string()),
    ("description", pa.string()),
    ("price", pa.float64()),
    ("in_stock", pa.bool_()),
])

QUARANTINE_COLUMNS: tuple[str, ...] = ("source", "line", "reason", "raw")

SEQUENCE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "items",          # list<string>: chronological item ids; view->click->cart of one item in a session is one step
    "event_types",    # list<string>: strongest event per step
    "weights",        # list<float>: event weight per step (purchase > cart > click > view)
    "timestamps",     # list<int64>: epoch microseconds
    "n_sessions",
    "n_train",        # items[:n_train] is what training may see
    "valid_index",    # position of the validation target in items (-1: none)
    "test_index",     # position of the test target in items (-1: none); items[:test_index] is its history
    "valid_item",     # items[valid_index] or null
    "test_item",      # items[test_index] or null
    "search_queries",  # list<string>: training searches that led to a click
    "search_items",   # list<string>: the clicked item of each search
)
WINDOW_COLUMNS: tuple[str, ...] = ("user_id", "start", "items", "event_types", "weights")

TRAIN_PAIR_COLUMNS: tuple[str, ...] = ("kind", "anchor_text", "positive_item_id", "positive_text")
# CTR/ranking examples: the context is items[:position] of the user's sequence row.
RANKING_COLUMNS: tuple[str, ...] = ("user_id", "position", "item_id", "label", "weight", "sample_prob")
PAIR_KINDS: tuple[str, ...] = ("next_item", "search")

POPULARITY_COLUMNS: tuple[str, ...] = ("item_id", "count")


# ---------------------------------------------------------------- HTTP request/response models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_K = 100


class RecommendRequest(_Strict):
    """Recommendations from a known user's history and/or an explicit history (most recent last)."""

    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    history: list[str] | None = Field(default=None, max_length=200,
                                      description="item ids the user browsed, oldest first")
    k: int = Field(default=10, ge=1, le=MAX_K)


class SearchRequest(_Strict):
    """Free-text product search, optionally personalised for a user."""

    query: str = Field(min_length=1, max_length=500)
    k: int = Field(default=10, ge=1, le=MAX_K)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _query_not_blank(self) -> SearchRequest:
        if not self.query.strip():
            raise ValueError("query must contain non-space characters")
        return self


class Explanation(BaseModel):
    """Why an item is in the answer."""

    # "pin": a business rule placed an item retrieval did not propose (its scores are then 0).
    source: Literal["ann", "popular", "pin"]
    retrieval_score: float
    rank_score: float   # the Ranker's score; ScoredItem.score is this after rule boosts
    rules_applied: list[str] = Field(
        default_factory=list,
        description="Each business rule that checked or changed the item, in the order they ran, "
                    "e.g. 'in_stock', 'filter:price_range', 'boost:spring_sale x1.5', 'pin:slot1'.")


class ScoredItem(BaseModel):
    item_id: str
    title: str
    category: str
    score: float   # what the answer is ordered by (pins aside): rank_score after boosts
    explanation: Explanation


class RecsResponse(BaseModel):
    items: list[ScoredItem]
    cold_start: bool = False
    model_version: str
    index_version: str
