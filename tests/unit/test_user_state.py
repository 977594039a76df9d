"""Online user state: one behavioural suite run against both backends, then each backend's own
guarantees (embedded: a file that survives restarts; Redis: errors that name the URL)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys.serve.user_state import (
    UserEvent,
    UserStateConfig,
    UserStateStore,
    UserStoreError,
    UserStoreUnavailable,
    open_user_store,
)


@pytest.fixture(params=["embedded", "redis"])
def open_store(request, tmp_path):
    """A function (max_events_per_user) -> store; every call opens another handle on the same
    state, as a second Serve replica would (a second SQLite connection / Redis client)."""
    if request.param == "embedded":
        base = {"backend": "embedded", "path": str(tmp_path / "user_state.sqlite3")}
    else:
        base = {"backend": "redis", "redis_url": request.getfixturevalue("redis_server"),
                "key_prefix": f"test:{uuid.uuid4().hex}:"}
    opened: list[UserStateStore] = []

    def make(max_events_per_user: int = 50) -> UserStateStore:
        store = open_user_store(UserStateConfig(**base, max_events_per_user=max_events_per_user))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture()
def store(open_store) -> UserStateStore:
    return open_store()


# ------------------------------------------------------------------ the same suite on both backends
def test_history_is_oldest_first_in_arrival_order(store) -> None:
    assert store.append("u1", [("a", "view", 30.0), ("b", "click", 10.0)]) == 2
    store.append("u1", [UserEvent("c", "cart", 20.0)])
    assert store.history("u1") == ["a", "b", "c"], "arrival order, not timestamp order"
    assert store.history("u1", limit=2) == ["b", "c"], "limit keeps the most recent"
    assert store.history("u1", limit=0) == []
    assert store.events("u1") == [UserEvent("a", "view", 30.0), UserEvent("b", "click", 10.0),
                                  UserEvent("c", "cart", 20.0)]


def test_unknown_user_is_empty_and_users_are_separate(store) -> None:
    store.append("u1", [("a", "purchase", 1.0)])
    assert store.history("nobody") == [] and store.events("nobody") == []
    assert store.purchased("nobody") == set()
    assert store.history("u2") == [] and store.purchased("u2") == set()


def test_missing_timestamp_is_arrival_time_and_add_to_cart_means_cart(store) -> None:
    before = time.time()
    store.append("u1", [("a", "view"), ("b", "add_to_cart", None)])
    events = store.events("u1")
    assert [e.event_type for e in events] == ["view", "cart"]
    assert all(before <= e.timestamp <= time.time() for e in events)


def test_bound_drops_oldest(open_store) -> None:
    store = open_store(max_events_per_user=5)
    for i in range(4):
        store.append("u1", [(f"i{i}", "view", float(i))])
    store.append("u1", [(f"j{i}", "click", 10.0 + i) for i in range(4)])
    assert store.history("u1") == ["i3", "j0", "j1", "j2", "j3"]
    assert store.history("u1", limit=100) == ["i3", "j0", "j1", "j2", "j3"]
    store.append("u1", [(f"k{i}", "view", 20.0) for i in range(12)])  # one batch beyond the bound
    assert store.history("u1") == [f"k{i}" for i in range(7, 12)]


def test_purchased_set_outlives_the_history_bound(open_store) -> None:
    store = open_store(max_events_per_user=3)
    store.append("u1", [("p1", "purchase", 1.0), ("p1", "purchase", 2.0), ("p2", "purchase", 3.0)])
    store.append("u1", [(f"v{i}", "view", 4.0 + i) for i in range(5)])
    assert store.history("u1") == ["v2", "v3", "v4"]
    assert store.purchased("u1") == {"p1", "p2"}, "views must not push purchases out"
    store.append("u1", [("p3", "purchase", 10.0), ("p4", "purchase", 11.0)])
    assert store.purchased("u1") == {"p2", "p3", "p4"}, "the purchase set keeps the newest 3"


@pytest.mark.parametrize(("user_id", "events", "message"), [
    ("u1", [("a", "like", 1.0)], "events[0].event_type='like' is not one of"),
    ("u1", [("a", "view", 1.0), ("b", "VIEW", 1.0)], "events[1].event_type='VIEW'"),
    ("u1", [("", "view", 1.0)], "events[0].item_id must be a non-blank string"),
    ("u1", [(None, "view", 1.0)], "events[0].item_id must be a non-blank string of at most 200 characters, got None"),
    ("u1", [("x" * 201, "view", 1.0)], "events[0].item_id"),
    ("u1", [("a", "view", float("nan"))], "events[0].timestamp=nan"),
    ("u1", [("a", "view", -1)], "events[0].timestamp=-1"),
    ("u1", [("a", "view", "yesterday")], "events[0].timestamp='yesterday'"),
    ("u1", [("a",)], "events[0] must be a UserEvent or (item_id, event_type, timestamp), got ('a',)"),
    ("u1", "a", "events must be a list of events, got 'a'"),
    ("  ", [("a", "view", 1.0)], "user_id must be a non-blank string of at most 200 characters, got '  '"),
    (7, [("a", "view", 1.0)], "user_id must be a non-blank string of at most 200 characters, got 7"),
])
def test_bad_input_names_field_and_value_and_writes_nothing(store, user_id, events, message) -> None:
    with pytest.raises(ValueError) as info:
        store.append(user_id, events)
    assert message in str(info.value)
    assert store.history("u1") == [], "a rejected batch must write nothing, not its valid part"


def test_bad_read_arguments_are_value_errors(store) -> None:
    with pytest.raises(ValueError, match="limit must be None or an int >= 0, got -1"):
        store.history("u1", limit=-1)
    with pytest.raises(ValueError, match="user_id must be"):
        store.purchased("")


def test_write_is_visible_to_the_next_read_on_another_replica(open_store) -> None:
    """The issue's bar: feedback changes the next /v1/recommend within one second."""
    writer, reader = open_store(), open_store()
    assert reader.history("u1") == []
    for i in range(20):
        start = time.perf_counter()
        writer.append("u1", [(f"i{i}", "purchase" if i % 5 == 0 else "click", float(i))])
        seen = reader.history("u1", limit=1)
        bought = reader.purchased("u1")
        elapsed = time.perf_counter() - start
        assert seen == [f"i{i}"], f"write {i} not visible to the next read"
        assert (f"i{i}" in bought) == (i % 5 == 0)
        assert elapsed < 1.0, f"write+read took {elapsed:.3f}s"


def test_concurrent_appends_lose_no_event(open_store) -> None:
    """4 threads on two handles (two replicas) append to one user and their own: nothing lost,
    each thread's events stay in its own order."""
    handles = [open_store(max_events_per_user=1000), open_store(max_events_per_user=1000)]
    n_threads, n_batches = 4, 25
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for b in range(n_batches):
                batch = [(f"t{t}-{b}-{j}", "view", float(b)) for j in range(2)]
                handles[t % 2].append("shared", batch)
                handles[t % 2].append(f"own{t}", batch)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    shared = handles[0].history("shared")
    assert len(shared) == n_threads * n_batches * 2 == len(set(shared))
    for t in range(n_threads):
        expected = [f"t{t}-{b}-{j}" for b in range(n_batches) for j in range(2)]
        assert [i for i in shared if i.startswith(f"t{t}-")] == expected
        assert handles[1].history(f"own{t}") == expected


def test_seed_fills_only_users_without_state(open_store) -> None:
    store = open_store(max_events_per_user=3)
    store.append("live", [("fresh", "click", 5.0)])
    histories = {"new": ["a", "b", "c", "d"], "live": ["old"], "empty": [],
                 "typed": [UserEvent("x", "add_to_cart", 1.0), ("y", "purchase", 2.0)]}
    assert store.seed(histories) == 2, "'new' and 'typed'; 'live' has state and 'empty' has nothing"
    assert store.history("new") == ["b", "c", "d"], "seeding respects the bound"
    assert store.events("new")[0] == UserEvent("b", "view", 0.0), "plain ids become views of unknown time"
    assert store.history("live") == ["fresh"], "live feedback is never overwritten"
    assert [e.event_type for e in store.events("typed")] == ["cart", "purchase"]
    assert store.purchased("typed") == {"y"}
    assert store.seed(histories) == 0 and store.history("new") == ["b", "c", "d"], "re-seeding is a no-op"
    with pytest.raises(ValueError, match=r"histories\['bad'\]\[0\]\.event_type='like'"):
        store.seed({"bad": [("a", "like", 1.0)]})


def test_forget_ping_and_close(store) -> None:
    store.append("u1", [("a", "purchase", 1.0)])
    store.forget("u1")
    assert store.history("u1") == [] and store.purchased("u1") == set()
    store.ping()
    store.close()
    store.close()  # idempotent
    with pytest.raises(UserStoreError, match="closed"):
        store.history("u1")


def test_a_forgotten_user_is_never_seeded_again(open_store) -> None:
    """Regression (issue 24): DELETE /v1/users/{id} emptied the state, and the next replica start, scale-up
    or swap seeded the user's old history straight back (seed_user_state fills users without state)."""
    store = open_store()
    histories = {"gone": ["a", "b"], "kept": ["c"]}
    assert store.seed(histories) == 2
    store.forget("gone")
    restarted = open_store()                         # another replica, or this one after a restart
    assert restarted.seed(histories) == 0 and restarted.history("gone") == []
    restarted.append("gone", [("z", "click", 9.0)])  # the user comes back: new activity is stored
    assert restarted.seed(histories) == 0 and restarted.history("gone") == ["z"]
    assert restarted.history("kept") == ["c"]


# ------------------------------------------------------------------ embedded backend
def test_embedded_keeps_histories_across_restart(tmp_path: Path) -> None:
    cfg = UserStateConfig(path=str(tmp_path / "state" / "users.sqlite3"), max_events_per_user=10)
    with open_user_store(cfg) as store:
        store.append("u1", [("a", "view", 1.0), ("b", "purchase", 2.0)])
    with open_user_store(cfg) as reopened:
        assert reopened.events("u1") == [UserEvent("a", "view", 1.0), UserEvent("b", "purchase", 2.0)]
        assert reopened.purchased("u1") == {"b"}


def test_embedded_default_file_is_under_recsys_home(recsys_home: Path) -> None:
    with open_user_store({}) as store:
        store.append("u1", [("a", "view", 1.0)])
    assert (recsys_home / "user_state" / "user_state.sqlite3").is_file()


def test_embedded_refuses_a_file_that_is_not_its_own(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database, just bytes" * 100)
    with pytest.raises(UserStoreError, match=f"cannot open user-state file {junk}"):
        open_user_store({"path": str(junk)})
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(UserStoreError, match="schema version 99"):
        open_user_store({"path": str(newer)})


# ------------------------------------------------------------------ redis backend and config
def test_redis_keys_live_under_the_prefix(redis_server: str) -> None:
    import redis

    prefix = f"test:{uuid.uuid4().hex}:"
    with open_user_store({"backend": "redis", "redis_url": redis_server, "key_prefix": prefix}) as store:
        store.append("u:1", [("a", "purchase", 1.0)])
    raw = redis.Redis.from_url(redis_server, decode_responses=True)
    assert sorted(raw.keys(f"{prefix}*")) == [f"{prefix}events:u:1", f"{prefix}purchased:u:1"]
    with open_user_store({"backend": "redis", "redis_url": redis_server, "key_prefix": prefix}) as store:
        store.forget("u:1")
    assert sorted(raw.keys(f"{prefix}*")) == [f"{prefix}forgotten:u:1"]
    raw.close()


def test_redis_unreachable_error_names_url_without_password() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:secret@127.0.0.1:{port}/0"
    start = time.perf_counter()
    with pytest.raises(UserStoreUnavailable) as info:
        open_user_store({"backend": "redis", "redis_url": url, "redis_timeout_s": 0.5})
    assert f"redis://:***@127.0.0.1:{port}/0" in str(info.value)
    assert "secret" not in str(info.value)
    assert time.perf_counter() - start < 5, "a dead server must fail fast"
    with pytest.raises(ValueError, match="redis_url='http://x' is not a Redis URL"):
        open_user_store({"backend": "redis", "redis_url": "http://x"})


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        UserStateConfig.model_validate({"backend": "embedded", "max_events": 5})
    with pytest.raises(ValidationError, match="backend"):
        UserStateConfig(backend="memcached")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_events_per_user"):
        UserStateConfig(max_events_per_user=0)
