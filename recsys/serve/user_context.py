"""How serving uses the online user-state store: open it from the Serve args, seed it from a data
version, read a user's context for a request, record feedback. No Ray.

The store (serve/user_state.py) is the one source of a user's history: /v1/feedback writes it
and the very next request reads it, so no copy of a history is kept in a replica.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from recsys.schema import FeedbackEvent
from recsys.serve.catalog import load_user_histories
from recsys.serve.user_state import (
    UserEvent,
    UserStateConfig,
    UserStateStore,
    UserStoreError,
    check_id,
    open_user_store,
    to_seed_events,
)

logger = logging.getLogger("ray.serve")


class ServingUserStateConfig(UserStateConfig):
    """The Serve app's `user_state:` block: UserStateConfig plus where a secret URL comes from."""

    redis_url_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="redis: name of an environment variable holding the URL (it wins over redis_url). "
                    "Read on the replica, so a password never sits in the Serve config, which the "
                    "dashboard and `serve status` show.")

    def store_config(self, environ: Mapping[str, str] = os.environ) -> UserStateConfig:
        """The plain UserStateConfig, the URL taken from `redis_url_env` when that is set."""
        values = self.model_dump(exclude={"redis_url_env"})
        if self.backend == "redis" and self.redis_url_env is not None:
            url = environ.get(self.redis_url_env, "")
            if not url:
                raise ValueError(f"user_state.redis_url_env={self.redis_url_env!r} names an environment "
                                 f"variable that is unset or empty on this replica")
            values["redis_url"] = url
        return UserStateConfig(**values)


def open_serving_store(cfg: ServingUserStateConfig | Mapping | None) -> UserStateStore:
    """The configured store, pinged (open_user_store), so a bad path or URL fails the replica's start."""
    if not isinstance(cfg, ServingUserStateConfig):
        cfg = ServingUserStateConfig.model_validate(dict(cfg or {}))
    return open_user_store(cfg.store_config())


def seed_user_store(store: UserStateStore, sequences_dir: str | Path) -> dict[str, int]:
    """Give every user of a data version's sequences/ who has no state yet their history.

    Users with state keep it, so a restart (or a second replica) never undoes feedback. A user
    whose id or items the store cannot hold is skipped and counted, not allowed to stop the rest.
    Returns {"users": in the data, "seeded": written now, "invalid": skipped}.
    """
    histories = load_user_histories(sequences_dir)
    usable: dict[str, list[UserEvent]] = {}
    invalid = 0
    for user, items in histories.items():
        try:
            usable[check_id("user_id", user)] = to_seed_events(items, f"histories[{user!r}]")
        except ValueError as exc:
            invalid += 1
            if invalid <= 3:
                logger.warning("not seeding user state: %s", exc)
    seeded = store.seed(usable)
    return {"users": len(histories), "seeded": seeded, "invalid": invalid}


@dataclass(frozen=True)
class UserContext:
    """What a request knows about its user."""

    history: list[str]              # catalog item ids, oldest first: stored history, then the request's
    purchased: frozenset[str] = frozenset()   # never recommended again
    unknown_ids: int = 0            # ids the catalog lacks, left out of history
    store_error: str | None = None  # the store could not be read: the request's own history only


def read_user_context(store: UserStateStore, user_id: str | None, explicit: Iterable[str] | None,
                      known: Callable[[str], bool]) -> UserContext:
    """The user's stored history and purchases plus the request's explicit history.

    A store that cannot be read (Redis down) degrades the answer, not the request: the context
    then holds the explicit history only and says why in store_error.
    """
    stored: list[str] = []
    purchased: set[str] = set()
    error = None
    if user_id is not None:
        try:
            stored = store.history(user_id)
            purchased = store.purchased(user_id)
        except UserStoreError as exc:
            error = str(exc)
    raw = stored + list(explicit or [])
    history = [i for i in raw if known(i)]
    return UserContext(history, frozenset(purchased), len(raw) - len(history), error)


class FeedbackNotStored(RuntimeError):
    """The store failed part-way: says how much of the batch was stored before it did."""

    def __init__(self, stored_users: int, stored_events: int, cause: Exception):
        super().__init__(f"user store failed after storing {stored_events} events of {stored_users} users: "
                         f"{cause}; resending the batch is safe (a repeated event does no harm)")
        self.stored_users, self.stored_events = stored_users, stored_events


@dataclass
class FeedbackOutcome:
    accepted: int = 0
    users: int = 0
    by_event_type: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)   # [{"field", "message", "value"}]


def plan_feedback(events: Sequence[FeedbackEvent], known: Callable[[str], bool],
                  now: float | None = None) -> tuple[dict[str, list[UserEvent]], list[dict[str, str]]]:
    """Validated events -> ({user_id: store events in batch order}, rejected ones).

    An item the catalog does not know is rejected and named, while the rest of the batch is
    stored: the storefront's catalog can run ahead of the serving data version, and one new item
    must not cost a batch of good events. Events without a timestamp get one arrival time.
    """
    now = time.time() if now is None else now
    by_user: dict[str, list[UserEvent]] = {}
    errors = []
    for n, event in enumerate(events):
        if not known(event.item_id):
            errors.append({"field": f"events.{n}.item_id", "value": event.item_id,
                           "message": "item is not in the serving catalog; event not stored"})
            continue
        ts = event.timestamp.timestamp() if event.timestamp is not None else now
        by_user.setdefault(event.user_id, []).append(UserEvent(event.item_id, event.event_type, ts))
    return by_user, errors


def record_feedback(store: UserStateStore, events: Sequence[FeedbackEvent],
                    known: Callable[[str], bool]) -> FeedbackOutcome:
    """Store a feedback batch, one atomic append per user; FeedbackNotStored if the store fails."""
    by_user, errors = plan_feedback(events, known)
    outcome = FeedbackOutcome(errors=errors)
    for user_id, user_events in by_user.items():
        try:
            store.append(user_id, user_events)
        except UserStoreError as exc:
            raise FeedbackNotStored(outcome.users, outcome.accepted, exc) from exc
        outcome.users += 1
        outcome.accepted += len(user_events)
        for e in user_events:
            outcome.by_event_type[e.event_type] = outcome.by_event_type.get(e.event_type, 0) + 1
    return outcome
