"""Online user state: each user's recent behaviour events, behind one interface. No Ray.

The serving path reads a user's history (to build the query) and purchases (to exclude them)
on every /v1/recommend, and /v1/feedback appends events; a write must change the very next
read, so no backend caches reads or buffers writes.

Backends (pick with `UserStateConfig.backend`, open with `open_user_store`):
- "embedded" (default, `EmbeddedUserStore` in user_state_sqlite.py): a SQLite file on local
  disk. It is per node: Serve replicas on one node share the file, replicas on other nodes
  do not see each other's writes. Right for a laptop or a single-node service.
- "redis" (`RedisUserStore` in user_state_redis.py): one Redis server that every replica on
  every node talks to. Use it whenever the service runs on more than one node.

Order: everything a store returns is oldest first, newest last, in the order events were
appended (arrival order); timestamps are kept but never used to reorder, because clients'
clocks differ and feedback can arrive late.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recsys.config import recsys_home

# The event types /v1/feedback accepts, weakest signal first.
FEEDBACK_EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
# The preprocessed data (schema.ITEM_EVENT_TYPES) says "add_to_cart"; it means "cart".
_EVENT_TYPE_ALIASES = {"add_to_cart": "cart"}
MAX_ID_LENGTH = 200  # same bound as user_id in schema.RecommendRequest
DEFAULT_MAX_EVENTS_PER_USER = 200


class UserStoreError(RuntimeError):
    """The store cannot do what was asked (closed, wrong file, server error); says which store."""


class UserStoreUnavailable(UserStoreError):
    """The backend cannot be reached (Redis down, wrong URL); the message names the URL."""


@dataclass(frozen=True)
class UserEvent:
    """One thing a user did to an item; timestamp in epoch seconds (0.0: unknown, e.g. seeded)."""

    item_id: str
    event_type: str
    timestamp: float


class InvalidId(ValueError):
    """An id no store accepts; names the field and the value (HTTP: a 422, see http_errors)."""

    def __init__(self, field: str, value: Any):
        super().__init__(f"{field} must be a non-blank string of at most {MAX_ID_LENGTH} characters, "
                         f"got {value!r}")
        self.field, self.value = field, value


def check_id(field: str, value: Any) -> str:
    """`value` if it is a usable id (non-blank str, at most MAX_ID_LENGTH chars), else InvalidId."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        raise InvalidId(field, value)
    return value


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def to_event(raw: Any, where: str = "event", now: float | None = None) -> UserEvent:
    """A validated UserEvent from a UserEvent or an (item_id, event_type[, timestamp]) tuple.

    A missing or None timestamp becomes `now` (default: the current time). Errors name the
    field as `where.field` and the value, e.g. "events[2].event_type='like' ...".
    """
    item_id: Any
    event_type: Any
    timestamp: Any  # unchecked until below: a UserEvent can be built with anything in it
    if isinstance(raw, UserEvent):
        item_id, event_type, timestamp = raw.item_id, raw.event_type, raw.timestamp
    elif isinstance(raw, (tuple, list)) and len(raw) in (2, 3):
        item_id, event_type = raw[0], raw[1]
        timestamp = raw[2] if len(raw) == 3 else None
    else:
        raise ValueError(f"{where} must be a UserEvent or (item_id, event_type, timestamp), got {raw!r}")
    check_id(f"{where}.item_id", item_id)
    if isinstance(event_type, str):
        event_type = _EVENT_TYPE_ALIASES.get(event_type, event_type)
    if event_type not in FEEDBACK_EVENT_TYPES:
        raise ValueError(f"{where}.event_type={event_type!r} is not one of {list(FEEDBACK_EVENT_TYPES)}")
    if timestamp is None:
        timestamp = time.time() if now is None else now
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
            or not math.isfinite(timestamp) or timestamp < 0:
        raise ValueError(f"{where}.timestamp={timestamp!r} must be a finite number of epoch seconds >= 0")
    return UserEvent(item_id, event_type, float(timestamp))


def to_events(events: Iterable[Any], where: str = "events") -> list[UserEvent]:
    """Validate a whole batch before anything is written: a bad event rejects the batch."""
    if isinstance(events, (str, bytes, UserEvent)):
        raise ValueError(f"{where} must be a list of events, got {events!r}")
    now = time.time()  # one arrival time for the batch's events that carry none
    return [to_event(e, f"{where}[{i}]", now) for i, e in enumerate(events)]


def to_seed_events(items: Iterable[Any], where: str) -> list[UserEvent]:
    """A seeded history: plain item ids (as `catalog.load_user_histories` gives them) become
    views with timestamp 0.0 ("unknown"); UserEvents and tuples are validated as they are."""
    if isinstance(items, (str, bytes)):
        raise ValueError(f"{where} must be a list of item ids or events, got {items!r}")
    return [to_event((e, "view", 0.0) if isinstance(e, str) else e, f"{where}[{i}]")
            for i, e in enumerate(items)]


class UserStateStore(ABC):
    """A bounded, ordered event history per user plus the set of items they bought.

    Public methods validate; backends implement the `_`-methods on validated input only.
    All methods are safe to call from several threads at once.
    """

    def __init__(self, max_events_per_user: int = DEFAULT_MAX_EVENTS_PER_USER):
        if isinstance(max_events_per_user, bool) or not isinstance(max_events_per_user, int) \
                or max_events_per_user < 1:
            raise ValueError(f"max_events_per_user must be an int >= 1, got {max_events_per_user!r}")
        self.max_events_per_user = max_events_per_user

    def append(self, user_id: str, events: Iterable[Any]) -> int:
        """Record events (UserEvent or (item_id, event_type[, timestamp]), oldest first) for a user,
        atomically; returns how many. Beyond max_events_per_user the oldest events are dropped;
        purchases also go into the purchase set, which keeps the newest max_events_per_user."""
        user = check_id("user_id", user_id)
        checked = to_events(events)
        if checked:
            self._append(user, checked)
        return len(checked)

    def events(self, user_id: str, limit: int | None = None) -> list[UserEvent]:
        """The user's newest `limit` events (all kept ones when None), oldest first; [] if unknown."""
        user = check_id("user_id", user_id)
        limit = check_limit(limit)
        n = self.max_events_per_user if limit is None else min(limit, self.max_events_per_user)
        return self._events(user, n) if n > 0 else []

    def history(self, user_id: str, limit: int | None = None) -> list[str]:
        """Item ids of `events(user_id, limit)`, oldest first: the query for retrieval."""
        return [e.item_id for e in self.events(user_id, limit)]

    def purchased(self, user_id: str) -> set[str]:
        """Item ids the user bought (the newest max_events_per_user of them), for exclusion."""
        return self._purchased(check_id("user_id", user_id))

    def seed(self, histories: Mapping[str, Iterable[Any]]) -> int:
        """Load histories from a data version ({user_id: item ids or events, oldest first}) for
        users the store knows nothing about; returns how many users were written.

        Users with any state are left alone, so re-seeding after a restart neither duplicates a
        history nor overwrites live feedback. Each user is checked and written atomically.
        """
        checked = {check_id("user_id", u): to_seed_events(items, f"histories[{u!r}]")
                   for u, items in histories.items()}
        return self._seed({u: evs[-self.max_events_per_user:] for u, evs in checked.items() if evs})

    def forget(self, user_id: str) -> None:
        """Delete everything stored about a user (privacy requests, tests)."""
        self._forget(check_id("user_id", user_id))

    @abstractmethod
    def ping(self) -> None:
        """Return if the backend answers, else raise UserStoreError / UserStoreUnavailable."""

    @abstractmethod
    def close(self) -> None:
        """Release files / connections; idempotent. Later calls raise UserStoreError."""

    @abstractmethod
    def _append(self, user_id: str, events: list[UserEvent]) -> None: ...

    @abstractmethod
    def _events(self, user_id: str, limit: int) -> list[UserEvent]: ...

    @abstractmethod
    def _purchased(self, user_id: str) -> set[str]: ...

    @abstractmethod
    def _seed(self, histories: dict[str, list[UserEvent]]) -> int: ...

    @abstractmethod
    def _forget(self, user_id: str) -> None: ...

    def __enter__(self) -> UserStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UserStateConfig(BaseModel):
    """Where serving keeps online user state (a block of the Serve app's args)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["embedded", "redis"] = Field(
        default="embedded",
        description="embedded: SQLite file per node (single-node services); redis: shared by all nodes.")
    path: str | None = Field(
        default=None,
        description="embedded: the SQLite file; null = $RECSYS_HOME/user_state/user_state.sqlite3. "
                    "Must be on local disk (SQLite locking is unreliable on network filesystems).")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="redis: redis://[:password@]host:port/db.")
    redis_timeout_s: float = Field(
        default=1.0, gt=0,
        description="redis: connect/read timeout; a request fails fast rather than hang on a dead server.")
    max_events_per_user: int = Field(
        default=DEFAULT_MAX_EVENTS_PER_USER, ge=1, le=100_000,
        description="Events kept per user (oldest dropped); also the size of the purchase set.")
    key_prefix: str = Field(
        default="recsys:user:", description="redis: prefix of every key, so services can share a server.")

    def resolved_path(self) -> Path:
        """The embedded file; the default is resolved now, so RECSYS_HOME set on a replica applies."""
        if self.path is not None:
            return Path(self.path).expanduser()
        return recsys_home() / "user_state" / "user_state.sqlite3"


def open_user_store(cfg: UserStateConfig | Mapping[str, Any] | None = None) -> UserStateStore:
    """The configured store, checked with ping() so a bad path or URL fails at start-up."""
    if cfg is None or isinstance(cfg, Mapping):
        cfg = UserStateConfig.model_validate(dict(cfg or {}))
    # Imported here: each backend pulls in its own library only when it is chosen.
    store: UserStateStore
    if cfg.backend == "redis":
        from recsys.serve.user_state_redis import RedisUserStore

        store = RedisUserStore(cfg.redis_url, cfg.max_events_per_user, cfg.key_prefix, cfg.redis_timeout_s)
    else:
        from recsys.serve.user_state_sqlite import EmbeddedUserStore

        store = EmbeddedUserStore(cfg.resolved_path(), cfg.max_events_per_user)
    try:
        store.ping()
    except BaseException:
        store.close()
        raise
    return store
