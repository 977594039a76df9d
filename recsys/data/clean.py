"""Cleaning of validated events: noise that is well-formed but is not shopper behaviour.

Every function takes the events of *whole users* (the pipeline hash-partitions by user
first) and returns (kept, dropped) where dropped carries a `reason`, so the job can count
and keep every removed row. All of it is vectorised pandas: no Python loop per user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.schema import EVENT_COLUMNS, EVENT_STRENGTH

DEDUP_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "query"]
_US_PER_MINUTE = 60_000_000


def canonical_order(events: pd.DataFrame) -> pd.DataFrame:
    """Sort by user and time with a total tie-break on every column.

    The order of rows inside a partition depends on how the input was split; a total
    order makes every later step (first-of-duplicates, sessions, sequences) independent
    of it, so the distributed job and the single-process reference agree row for row.
    """
    strength = events["event_type"].map(EVENT_STRENGTH).fillna(0).astype("int8")
    keyed = events.assign(_strength=strength)
    keyed = keyed.sort_values(["user_id", "timestamp", "_strength", "event_type", "item_id", "query",
                               "session_id"],
                              kind="stable", na_position="first")
    return keyed.drop(columns="_strength").reset_index(drop=True)


def _split(events: pd.DataFrame, drop: np.ndarray, reason: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    dropped = events[drop].assign(reason=reason)
    return events[~drop].reset_index(drop=True), dropped.reset_index(drop=True)


def drop_exact_duplicates(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact repeats of (user, item, type, time, query) are logging artefacts: keep the first."""
    return _split(events, events.duplicated(subset=DEDUP_COLUMNS, keep="first").to_numpy(), "duplicate")


def drop_rapid_repeats(events: pd.DataFrame, window_seconds: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same user/item/event again within `window_seconds` of the previous one is a double
    click or a reload; a burst collapses to its first event."""
    if window_seconds <= 0 or events.empty:
        return _split(events, np.zeros(len(events), dtype=bool), "rapid_repeat")
    events = events.reset_index(drop=True)
    key_cols = ["user_id", "item_id", "event_type", "query"]
    keyed = events[key_cols].fillna("\x00").assign(_ts=events["timestamp"].astype("int64"))
    keyed = keyed.sort_values([*key_cols, "_ts"], kind="stable")
    same_key = np.ones(len(keyed), dtype=bool)
    for col in key_cols:
        values = keyed[col].to_numpy()
        same_key[1:] &= values[1:] == values[:-1]
    same_key[0] = False
    ts = keyed["_ts"].to_numpy()
    gap = np.diff(ts, prepend=ts[0])
    repeat = np.zeros(len(keyed), dtype=bool)
    repeat[keyed.index.to_numpy()] = same_key & (gap <= window_seconds * 1_000_000)
    return _split(events, repeat, "rapid_repeat")


def drop_bot_users(events: pd.DataFrame, max_events_per_minute: int,
                   max_session_events: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users whose peak rate or longest session is beyond human are dropped with all their events.

    Needs session_id (run after assign_sessions).
    """
    if events.empty:
        return _split(events, np.zeros(0, dtype=bool), "bot_user")
    minute = events["timestamp"].astype("int64") // _US_PER_MINUTE
    per_minute = events.groupby([events["user_id"], minute], sort=False).size()
    fast = per_minute[per_minute > max_events_per_minute].index.get_level_values(0)
    per_session = events.groupby(["user_id", "session_id"], sort=False).size()
    long = per_session[per_session > max_session_events].index.get_level_values(0)
    bots = set(fast) | set(long)
    return _split(events, events["user_id"].isin(bots).to_numpy(), "bot_user")


def assign_sessions(events: pd.DataFrame, gap_minutes: float = 30.0) -> pd.DataFrame:
    """Fill missing session_id with '<user>-s<k>', a new session after `gap_minutes` of inactivity.

    Expects canonical_order (user, time) already.
    """
    missing = events["session_id"].isna()
    if missing.any():
        user = events["user_id"].to_numpy()
        ts = events["timestamp"].astype("int64").to_numpy()
        first_of_user = np.ones(len(events), dtype=bool)
        first_of_user[1:] = user[1:] != user[:-1]
        new_session = first_of_user.copy()
        new_session[1:] |= (ts[1:] - ts[:-1]) > gap_minutes * _US_PER_MINUTE
        # k restarts at 1 for every user: cumulative count minus the count before the user began.
        total = np.cumsum(new_session)
        before_user = np.maximum.accumulate(np.where(first_of_user, total - 1, 0))
        k = total - before_user
        derived = events["user_id"] + "-s" + pd.Series(k, index=events.index).astype(str)
        events = events.assign(session_id=events["session_id"].where(~missing, derived))
    return events


def clean_user_events(events: pd.DataFrame, rapid_repeat_seconds: float, gap_minutes: float,
                      max_events_per_minute: int, max_session_events: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated events of whole users -> (sessionised kept events in canonical order, dropped with reason)."""
    events = canonical_order(events[list(EVENT_COLUMNS)])
    events, duplicates = drop_exact_duplicates(events)
    events, repeats = drop_rapid_repeats(events, rapid_repeat_seconds)
    events = assign_sessions(events, gap_minutes)
    events, bots = drop_bot_users(events, max_events_per_minute, max_session_events)
    dropped = pd.concat([duplicates, repeats, bots], ignore_index=True)
    return events, dropped
