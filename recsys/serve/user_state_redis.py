"""The shared user-state backend: one Redis server for every Serve replica on every node. No Ray.

Keys (the prefix lets several services share a server; each user id follows a fixed
namespace, so no user's key can collide with another user's):
- `{prefix}events:{user_id}`: a list of JSON entries `[item_id, event_type, timestamp]`,
  oldest first, trimmed with LTRIM to the newest max_events_per_user;
- `{prefix}purchased:{user_id}`: a sorted set of bought item ids scored by purchase
  timestamp, trimmed to the newest max_events_per_user, so views never push a purchase out.

An append is one MULTI/EXEC pipeline (one round trip; readers never see the push without
the trim). A lost connection is retried once, so an append is at-least-once: a feedback event
counted twice is harmless, one lost is not. Needs Redis >= 5 (or Valkey).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from recsys.serve.user_state import (
    DEFAULT_MAX_EVENTS_PER_USER,
    UserEvent,
    UserStateStore,
    UserStoreError,
    UserStoreUnavailable,
)

T = TypeVar("T")

# Seeding must not race live feedback or another replica's seed: check-and-write runs in
# Redis as one script. ARGV: max, n_events, n_events entries, then (score, item) per purchase.
_SEED_IF_EMPTY = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local max, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, n + 2 do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -max, -1)
for i = n + 3, #ARGV, 2 do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -max - 1)
return 1
"""


# Query parameters that carry credentials in Redis URLs (redis-py reads ?password=...) and their kin.
SECRET_QUERY_KEYS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token", "auth", "key",
                               "access_key", "secret_key", "api_key"})


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ***, safe for error messages, logs and /readyz: the
    password of `user:pass@` (or `:pass@`) and the value of any query parameter named like a secret
    (`?password=...`, which redis-py also accepts)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            netloc = f"{parts.username or ''}:***@{host}"
        query = "&".join(
            f"{name}=***" if name.lower() in SECRET_QUERY_KEYS else piece
            for piece in parts.query.split("&") if piece
            for name in [piece.split("=", 1)[0]])
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparseable redis url>"


def _encode(event: UserEvent) -> str:
    return json.dumps([event.item_id, event.event_type, event.timestamp], separators=(",", ":"))


class RedisUserStore(UserStateStore):
    """User state in Redis, shared by all replicas; see the module docstring for the key layout."""

    def __init__(self, url: str, max_events_per_user: int = DEFAULT_MAX_EVENTS_PER_USER,
                 key_prefix: str = "recsys:user:", timeout_s: float = 1.0):
        super().__init__(max_events_per_user)
        self.url = redact_url(url)
        self.key_prefix = key_prefix
        try:
            # One quick retry covers a pooled connection the server has since dropped; longer
            # back-off would hold a recommend request hostage to a dead server.
            self._client: redis.Redis | None = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
        except ValueError as exc:
            raise ValueError(f"redis_url={self.url!r} is not a Redis URL: {exc}") from exc
        self._seed_script = self._client.register_script(_SEED_IF_EMPTY)

    def events_key(self, user_id: str) -> str:
        return f"{self.key_prefix}events:{user_id}"

    def purchased_key(self, user_id: str) -> str:
        return f"{self.key_prefix}purchased:{user_id}"

    @contextmanager
    def _client_errors(self) -> Iterator[redis.Redis]:
        """The client, with redis-py errors turned into ours, naming the (redacted) URL."""
        if self._client is None:
            raise UserStoreError(f"Redis user store at {self.url}: store is closed")
        try:
            yield self._client
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise UserStoreUnavailable(f"Redis user store at {self.url} is unreachable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise UserStoreError(f"Redis user store at {self.url}: {exc}") from exc

    def _call(self, fn: Callable[[redis.Redis], Any], result_type: type[T]) -> T:
        with self._client_errors() as client:
            return cast(T, fn(client))

    def _append(self, user_id: str, events: list[UserEvent]) -> None:
        key, bought = self.events_key(user_id), self.purchased_key(user_id)
        purchases = {e.item_id: e.timestamp for e in events if e.event_type == "purchase"}
        with self._client_errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.rpush(key, *[_encode(e) for e in events])
            pipe.ltrim(key, -self.max_events_per_user, -1)
            if purchases:
                pipe.zadd(bought, purchases)
                pipe.zremrangebyrank(bought, 0, -self.max_events_per_user - 1)
            pipe.execute()

    def _events(self, user_id: str, limit: int) -> list[UserEvent]:
        key = self.events_key(user_id)
        raw = self._call(lambda c: c.lrange(key, -limit, -1), list)
        try:
            return [UserEvent(str(item), str(kind), float(ts)) for item, kind, ts in map(json.loads, raw)]
        except (ValueError, TypeError) as exc:
            raise UserStoreError(f"Redis user store at {self.url}: key {key!r} holds an entry "
                                 f"that is not [item_id, event_type, timestamp]: {exc}") from exc

    def _purchased(self, user_id: str) -> set[str]:
        key = self.purchased_key(user_id)
        return set(self._call(lambda c: c.zrange(key, 0, -1), list))

    def _seed(self, histories: dict[str, list[UserEvent]]) -> int:
        written = 0
        users = list(histories)
        batch = 500  # users per round trip: bounded request size, few round trips
        for start in range(0, len(users), batch):
            with self._client_errors() as client:
                pipe = client.pipeline(transaction=False)
                for user_id in users[start:start + batch]:
                    events = histories[user_id]
                    purchases = {e.item_id: e.timestamp for e in events if e.event_type == "purchase"}
                    args: list[Any] = [self.max_events_per_user, len(events), *map(_encode, events)]
                    for item, score in purchases.items():
                        args += [score, item]
                    self._seed_script(keys=[self.events_key(user_id), self.purchased_key(user_id),
                                            self.forgotten_key(user_id)],
                                      args=args, client=pipe)
                written += sum(int(r) for r in pipe.execute())
        return written

    def forgotten_key(self, user_id: str) -> str:
        """Set by forget(): seeding never writes the user's old history back (new events still land)."""
        return f"{self.key_prefix}forgotten:{user_id}"

    def _forget(self, user_id: str) -> None:
        keys = (self.events_key(user_id), self.purchased_key(user_id))
        forgotten = self.forgotten_key(user_id)

        def forget(client: redis.Redis) -> list:
            pipe = client.pipeline(transaction=True)   # the delete and the tombstone land together
            pipe.delete(*keys)
            pipe.set(forgotten, repr(time.time()))
            return pipe.execute()

        self._call(forget, list)

    def ping(self) -> None:
        self._call(lambda c: c.ping(), bool)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return (f"RedisUserStore({self.url!r}, max_events_per_user={self.max_events_per_user}, "
                f"key_prefix={self.key_prefix!r})")
