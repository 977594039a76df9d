"""The embedded user-state backend: a SQLite file on local disk. No Ray, no server to run.

Why SQLite (stdlib `sqlite3`) rather than a file format of our own: it gives atomic,
crash-safe writes (a torn append never corrupts a history), locking between processes, and
indexed per-user reads, all tested far beyond anything we would write.

WAL mode lets readers run while a writer commits, so several Serve replicas on one node can
share the file; synchronous=NORMAL keeps every commit across a process crash and may lose
only the last commits on power loss, a fair trade for feedback events. Replicas on other
nodes have their own files and do not see these writes: use the Redis backend there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.serve.user_state import (
    DEFAULT_MAX_EVENTS_PER_USER,
    UserEvent,
    UserStateStore,
    UserStoreError,
)

# Bumped when the tables change; a file with another version is refused, not misread.
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order across all users, never reused
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS purchases (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    seq INTEGER NOT NULL,             -- seq of the latest purchase: the bound drops the oldest
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS purchases_by_user ON purchases (user_id, seq);
-- Users deleted through forget(): seeding never writes their old history back (new events still land).
-- Added without a version bump: older code ignores the table, and this code creates it in older files.
CREATE TABLE IF NOT EXISTS forgotten (
    user_id TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
"""


class EmbeddedUserStore(UserStateStore):
    """User state in one SQLite file; survives restarts. Per node: see the module docstring.

    One connection per store, used under a lock: sqlite3 connections must not be used by two
    threads at once, and a user-state call is a few index lookups, so a lock costs little.
    """

    def __init__(self, path: str | Path, max_events_per_user: int = DEFAULT_MAX_EVENTS_PER_USER,
                 busy_timeout_s: float = 5.0):
        super().__init__(max_events_per_user)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write takes the
            # file's write lock up front instead of failing half-way when another process has it.
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UserStoreError(f"user-state file {self.path} has schema version {version}; "
                                     f"this code reads version {SCHEMA_VERSION}")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise UserStoreError(f"cannot open user-state file {self.path}: {exc}") from exc
        except UserStoreError:
            self.close()
            raise

    @contextmanager
    def _connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a write runs in one transaction, rolled back on error."""
        with self._lock:
            if self._conn is None:
                raise UserStoreError(f"user-state file {self.path}: store is closed")
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if write:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise UserStoreError(f"user-state file {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _insert(self, conn: sqlite3.Connection, user_id: str, events: list[UserEvent]) -> None:
        conn.executemany("INSERT INTO events (user_id, item_id, event_type, ts) VALUES (?, ?, ?, ?)",
                         [(user_id, e.item_id, e.event_type, e.timestamp) for e in events])
        n_bought = sum(e.event_type == "purchase" for e in events)
        if n_bought:
            # The user's newest n_bought purchase rows are the ones just written (same transaction).
            # Each purchase keeps its own event's seq, so a repeat purchase makes the item newest.
            rows = conn.execute("SELECT item_id, seq FROM events WHERE user_id = ? AND event_type = 'purchase' "
                                "ORDER BY seq DESC LIMIT ?", (user_id, n_bought)).fetchall()
            conn.executemany("INSERT INTO purchases (user_id, item_id, seq) VALUES (?, ?, ?) "
                             "ON CONFLICT (user_id, item_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                             [(user_id, item, seq) for item, seq in rows])
        # Keep the newest max_events_per_user rows of each table: delete at and below the
        # (max+1)-th newest seq (a NULL cut-off, i.e. fewer rows, deletes nothing).
        for table in ("events", "purchases"):
            conn.execute(f"DELETE FROM {table} WHERE user_id = ? AND seq <= (SELECT seq FROM {table} "
                         "WHERE user_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                         (user_id, user_id, self.max_events_per_user))

    def _append(self, user_id: str, events: list[UserEvent]) -> None:
        with self._connection(write=True) as conn:
            self._insert(conn, user_id, events)

    def _events(self, user_id: str, limit: int) -> list[UserEvent]:
        with self._connection() as conn:
            rows = conn.execute("SELECT item_id, event_type, ts FROM events WHERE user_id = ? "
                                "ORDER BY seq DESC LIMIT ?", (user_id, limit)).fetchall()
        return [UserEvent(item, kind, ts) for item, kind, ts in reversed(rows)]

    def _purchased(self, user_id: str) -> set[str]:
        with self._connection() as conn:
            rows = conn.execute("SELECT item_id FROM purchases WHERE user_id = ?", (user_id,)).fetchall()
        return {item for (item,) in rows}

    def _seed(self, histories: dict[str, list[UserEvent]]) -> int:
        written = 0
        # One transaction for the whole seed: thousands of users commit in one fsync, and the
        # "is this user empty" check cannot race another replica seeding the same file.
        with self._connection(write=True) as conn:
            for user_id, events in histories.items():
                if conn.execute("SELECT 1 FROM events WHERE user_id = ? UNION ALL "
                                "SELECT 1 FROM forgotten WHERE user_id = ? LIMIT 1", (user_id, user_id)).fetchone():
                    continue
                self._insert(conn, user_id, events)
                written += 1
        return written

    def _forget(self, user_id: str) -> None:
        with self._connection(write=True) as conn:
            conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM purchases WHERE user_id = ?", (user_id,))
            conn.execute("INSERT OR REPLACE INTO forgotten (user_id, at) VALUES (?, ?)", (user_id, time.time()))

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"EmbeddedUserStore({str(self.path)!r}, max_events_per_user={self.max_events_per_user})"
