"""The vocabulary every stage shares: event and catalog columns, stage outputs, HTTP models.

Stage contracts:
- sources -> validate: raw rows with the EVENT_COLUMNS / CATALOG_COLUMNS as strings.
- validate -> preprocess: EVENTS_SCHEMA / CATALOG_SCHEMA (typed), quarantine rows QUARANTINE_COLUMNS.
- preprocess -> train: TRAIN_PAIR_COLUMNS (anchor text -> positive item text), WINDOW_COLUMNS
  (sequence windows), RANKING_COLUMNS (labelled CTR examples with sampled negatives).
- preprocess -> evaluate/serve: SEQUENCE_COLUMNS (one row per user), POPULARITY_COLUMNS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-space characters")
    return value


# An item or user id in a request: what user_state.check_id accepts, checked at the HTTP edge (a blank
# one used to reach the store, whose ValueError answered 500). Query and path parameters need the same
# checks: Annotated[str | None, Query(min_length=1, max_length=200), NOT_BLANK].
NOT_BLANK = AfterValidator(_not_blank)
RequestId = Annotated[str, Field(min_length=1, max_length=200), NOT_BLANK]
# An id in a history: ids unknown to the catalog (blank ones too) are skipped, not refused, but none may be
# longer than any id the service stores.
HistoryId = Annotated[str, Field(max_length=200)]


class RecommendRequest(_Strict):
    """Recommendations from a known user's history and/or an explicit history (most recent last)."""

    user_id: RequestId | None = None
    history: list[HistoryId] | None = Field(default=None, max_length=200,
                                      description="item ids the user browsed, oldest first")
    k: int = Field(default=10, ge=1, le=MAX_K)


class SearchRequest(_Strict):
    """Free-text product search, optionally personalised for a user."""

    query: str = Field(min_length=1, max_length=500)
    k: int = Field(default=10, ge=1, le=MAX_K)
    user_id: RequestId | None = None

    @model_validator(mode="after")
    def _query_not_blank(self) -> SearchRequest:
        if not self.query.strip():
            raise ValueError("query must contain non-space characters")
        return self


class Explanation(BaseModel):
    """Why an item is in the answer."""

    # Which candidate source proposed the item (recsys/serve/candidate_sources.py): "ann" (embedding
    # neighbours), "cooccurrence" (seen together in sessions), "ease" (learned item-to-item weights),
    # "similar" (text neighbours of the last items), "fresh" (a catalog item newer than the index,
    # embedded at start-up), "popular"; for /v1/search "bm25" (lexical match), "ann+bm25" (both lists
    # of the hybrid search found it: recsys/index/hybrid.py); "pin": a business rule placed an item
    # retrieval did not propose (its scores are then 0).
    source: Literal["ann", "bm25", "ann+bm25", "cooccurrence", "ease", "similar", "fresh", "popular", "pin"]
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
    degraded: list[str] = Field(default_factory=list, description=(
        "What this answer was made without, when a dependency failed (e.g. the user-state store): "
        "empty for a full answer."))
    model_version: str
    index_version: str


# ---------------------------------------------------------------- storefront endpoints
# The event types POST /v1/feedback accepts (user_state.FEEDBACK_EVENT_TYPES, weakest first).
FeedbackEventType = Literal["view", "click", "cart", "purchase"]
MAX_FEEDBACK_EVENTS = 1000
MAX_CART_ITEMS = 100


class FeedbackEvent(_Strict):
    """One thing a user did to an item on the storefront."""

    user_id: RequestId
    item_id: RequestId
    event_type: FeedbackEventType
    timestamp: AwareDatetime | None = Field(
        default=None, description="When it happened: ISO 8601 with a timezone, or epoch seconds; "
                                  "absent = when the service received it. Stored, never used to reorder.")

    @field_validator("timestamp")
    @classmethod
    def _not_before_epoch(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.timestamp() < 0:
            raise ValueError(f"timestamp {v.isoformat()} is before 1970-01-01T00:00:00Z")
        return v


class FeedbackRequest(_Strict):
    """A batch of events, oldest first per user (arrival order is the order the history keeps)."""

    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_FEEDBACK_EVENTS)


class RejectedEvent(BaseModel):
    """An event not stored, in the shape of a 422 error entry."""

    field: str     # e.g. "events.3.item_id"
    message: str
    value: str


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Events stored in the user-state store.")
    rejected: int = Field(description="Events not stored (listed in `errors`).")
    users: int = Field(description="Distinct users whose state changed.")
    by_event_type: dict[str, int] = Field(description="Stored events per event type.")
    errors: list[RejectedEvent] = Field(default_factory=list)


class CartRequest(_Strict):
    """Complements for a cart: items that go with what is in it, not more of the same."""

    items: list[RequestId] = Field(min_length=1, max_length=MAX_CART_ITEMS, description="item ids in the cart")
    user_id: RequestId | None = Field(default=None, description="leaves out what the user bought or saw")
    k: int = Field(default=10, ge=1, le=MAX_K)


class PromotionsRequest(_Strict):
    """The items of the promotion campaigns running now, ordered for a user (or by popularity)."""

    user_id: RequestId | None = None
    history: list[HistoryId] | None = Field(default=None, max_length=200,
                                      description="item ids the user browsed, oldest first")
    k: int = Field(default=10, ge=1, le=MAX_K)


class ReadinessResponse(BaseModel):
    status: Literal["ready", "degraded", "not_ready"] = Field(description=(
        "ready: every stage answers; degraded: this replica's stages answer but a store it shares with "
        "every replica does not (still 200: taking it out of rotation would take out the whole fleet); "
        "not_ready: a stage of this replica does not answer (503)."))
    stages: dict[str, str] = Field(description="Per stage: 'ok', or why it did not answer.")


# The models that validate what a client sent. One of them failing inside endpoint code (built there from
# query parameters, say) is still the client's error: http_errors answers 422, not 500.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (RecommendRequest, SearchRequest, FeedbackEvent, FeedbackRequest,
                                               CartRequest, PromotionsRequest)
