"""Serving's use of the user-state store: seed, read a request's context, record feedback;
plus the API key and readiness checks of the ingress. No Ray cluster."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from recsys.schema import FeedbackEvent, FeedbackEventType, FeedbackRequest
from recsys.serve.api_key import ApiKeyGuard
from recsys.serve.ingress import check_stages
from recsys.serve.user_context import (
    FeedbackNotStored,
    ServingUserStateConfig,
    open_serving_store,
    plan_feedback,
    read_user_context,
    record_feedback,
    seed_user_store,
)
from recsys.serve.user_state import FEEDBACK_EVENT_TYPES, UserStateStore, UserStoreUnavailable

KNOWN = {"a", "b", "c", "d"}.__contains__


@pytest.fixture()
def store(tmp_path: Path):
    with open_serving_store({"path": str(tmp_path / "users.sqlite3")}) as s:
        yield s


def events(*rows: tuple) -> list[FeedbackEvent]:
    return FeedbackRequest.model_validate(
        {"events": [dict(zip(("user_id", "item_id", "event_type", "timestamp"), r)) for r in rows]}).events


def test_http_event_types_are_the_stores() -> None:
    assert get_args(FeedbackEventType) == FEEDBACK_EVENT_TYPES


def test_feedback_schema_names_bad_fields() -> None:
    for bad, field in (({"user_id": " ", "item_id": "a", "event_type": "view"}, "user_id"),
                       ({"user_id": "u", "item_id": "a", "event_type": "like"}, "event_type"),
                       ({"user_id": "u", "item_id": "a", "event_type": "view", "timestamp": "2026-01-01T00:00"},
                        "timestamp"),
                       ({"user_id": "u", "item_id": "a", "event_type": "view", "timestamp": -5}, "timestamp")):
        with pytest.raises(ValidationError) as info:
            FeedbackEvent.model_validate(bad)
        assert info.value.errors()[0]["loc"] == (field,), info.value
    with pytest.raises(ValidationError, match="at least 1 item"):
        FeedbackRequest(events=[])


def test_seed_only_users_without_state_and_skip_bad_ids(store: UserStateStore, tmp_path: Path) -> None:
    seq = tmp_path / "sequences"
    seq.mkdir()
    pq.write_table(pa.table({"user_id": ["u1", "u2", " ", "u3"],
                             "items": pa.array([["a", "b"], ["c"], ["a"], []], pa.list_(pa.string()))}),
                   seq / "part-0.parquet")
    store.append("u2", [("d", "purchase", 5.0)])
    assert seed_user_store(store, seq) == {"users": 4, "seeded": 1, "invalid": 1}
    assert store.history("u1") == ["a", "b"]
    assert store.history("u2") == ["d"], "feedback survives a re-seed (a restart)"
    assert seed_user_store(store, seq)["seeded"] == 0


def test_context_joins_stored_and_explicit_history(store: UserStateStore) -> None:
    store.append("u1", [("a", "view", 1.0), ("zz", "view", 2.0), ("b", "purchase", 3.0)])
    ctx = read_user_context(store, "u1", ["c", "nope"], KNOWN)
    assert ctx.history == ["a", "b", "c"] and ctx.purchased == {"b"}
    assert ctx.unknown_ids == 2 and ctx.store_error is None
    assert read_user_context(store, None, ["d"], KNOWN).history == ["d"]
    assert read_user_context(store, "stranger", None, KNOWN).history == []


def test_context_degrades_to_explicit_history_when_the_store_is_down(store: UserStateStore) -> None:
    class DownStore(UserStateStore):
        def _events(self, user_id, limit):  # type: ignore[no-untyped-def]
            raise UserStoreUnavailable("Redis user store at redis://x:1/0 is unreachable")

        ping = close = _append = _purchased = _seed = _forget = _events  # type: ignore[assignment]

    ctx = read_user_context(DownStore(), "u1", ["a"], KNOWN)
    assert ctx.history == ["a"] and "unreachable" in (ctx.store_error or "")


def test_feedback_stores_known_items_and_names_unknown_ones(store: UserStateStore) -> None:
    batch = events(("u1", "a", "view", None), ("u1", "ghost", "click", None),
                   ("u2", "b", "purchase", "2026-03-01T10:00:00+01:00"), ("u1", "c", "cart", 1_700_000_000))
    before = time.time()
    outcome = record_feedback(store, batch, KNOWN)
    assert (outcome.accepted, outcome.users, outcome.by_event_type) == (3, 2, {"view": 1, "cart": 1, "purchase": 1})
    assert outcome.errors == [{"field": "events.1.item_id", "value": "ghost",
                               "message": "item is not in the serving catalog; event not stored"}]
    assert store.history("u1") == ["a", "c"] and store.purchased("u2") == {"b"}
    ev = store.events("u1")
    assert before <= ev[0].timestamp <= time.time() and ev[1].timestamp == 1_700_000_000
    assert store.events("u2")[0].timestamp == datetime(2026, 3, 1, 9, tzinfo=timezone.utc).timestamp()


def test_feedback_store_failure_says_what_was_stored(store: UserStateStore) -> None:
    by_user, errors = plan_feedback(events(("u1", "a", "view", None), ("u2", "b", "view", None)), KNOWN, now=7.0)
    assert list(by_user) == ["u1", "u2"] and by_user["u1"][0].timestamp == 7.0 and not errors
    calls = []

    def flaky_append(user_id, evs):  # type: ignore[no-untyped-def]
        if calls:
            raise UserStoreUnavailable("Redis user store at redis://x:1/0 is unreachable")
        calls.append(user_id)
        return len(evs)

    store.append = flaky_append  # type: ignore[method-assign]
    with pytest.raises(FeedbackNotStored, match="after storing 1 events of 1 users.*resending the batch is safe"):
        record_feedback(store, events(("u1", "a", "view", None), ("u2", "b", "view", None)), KNOWN)


def test_redis_url_from_an_environment_variable() -> None:
    cfg = ServingUserStateConfig(backend="redis", redis_url_env="RECSYS_REDIS_URL")
    assert cfg.store_config({"RECSYS_REDIS_URL": "redis://h:1/2"}).redis_url == "redis://h:1/2"
    with pytest.raises(ValueError, match="redis_url_env='RECSYS_REDIS_URL' names an environment variable"):
        cfg.store_config({})
    with pytest.raises(ValidationError, match="redis_url_env"):
        ServingUserStateConfig(redis_url_env="not a name")


def test_api_key_guard() -> None:
    assert not ApiKeyGuard(None).enabled
    ApiKeyGuard(None).check(None)   # no key configured: open
    guard = ApiKeyGuard("RECSYS_API_KEY", {"RECSYS_API_KEY": "s3cret"})
    guard.check("s3cret")
    for presented, message in ((None, "missing X-API-Key"), ("", "missing X-API-Key"),
                               ("wrong", "does not match"), ("s3cret ", "does not match"), ("ünï", "does not match")):
        with pytest.raises(HTTPException) as info:
            guard.check(presented)
        assert info.value.status_code == 401 and message in info.value.detail
    with pytest.raises(ValueError, match="api_key_env='RECSYS_API_KEY' names an environment variable"):
        ApiKeyGuard("RECSYS_API_KEY", {})


def test_readiness_reports_each_stage() -> None:
    async def ok() -> str:
        return "fine"

    async def broken() -> None:
        raise ConnectionError("refused")

    async def slow() -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    result = asyncio.run(check_stages({"a": ok, "b": broken, "c": slow}, timeout_s=0.2))
    assert result == {"a": "ok", "b": "ConnectionError: refused", "c": "no answer within 0.2s"}
    assert time.monotonic() - started < 2, "checks run at once and time out"
