"""Per-user behaviour sequences, leave-one-out hold-out and training pairs (pure pandas).

The Ray pipeline hash-partitions events by user_id first, so each call here sees
every event of the users it gets; nothing in this module needs Ray.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from recsys.data.text import format_history_text
from recsys.schema import EVENT_STRENGTH, ITEM_EVENT_TYPES, SEQUENCE_COLUMNS, TRAIN_PAIR_COLUMNS

DEDUP_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "query"]


def drop_duplicate_events(events: pd.DataFrame) -> pd.DataFrame:
    """Exact repeats of (user, item, type, time, query) are logging artefacts: keep one."""
    return events.drop_duplicates(subset=DEDUP_COLUMNS, keep="first").reset_index(drop=True)


def assign_sessions(events: pd.DataFrame, gap_minutes: float = 30.0) -> pd.DataFrame:
    """Sort by user and time; fill missing session_id with '<user>-s<k>' split at inactivity gaps."""
    events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    missing = events["session_id"].isna()
    if missing.any():
        gap = events.groupby("user_id", sort=False)["timestamp"].diff()
        new_session = gap.isna() | (gap > pd.Timedelta(minutes=gap_minutes))
        k = new_session.astype(int).groupby(events["user_id"], sort=False).cumsum()
        derived = events["user_id"].astype(str) + "-s" + k.astype(str)
        events["session_id"] = events["session_id"].where(~missing, derived)
    return events


def _collapse_repeats(items: list[str], types: list[str], times: list[int],
                      sessions: list[str]) -> tuple[list, list, list]:
    """view→click→cart of one item in one session is one step, labelled by its strongest event.

    A repeat in a later session (a re-purchase) stays a step of its own.
    """
    out_i: list[str] = []
    out_t: list[str] = []
    out_ts: list[int] = []
    last_session = None
    for item, etype, ts, session in zip(items, types, times, sessions):
        same_step = bool(out_i) and out_i[-1] == item and session == last_session
        last_session = session
        if same_step:
            if EVENT_STRENGTH[etype] > EVENT_STRENGTH[out_t[-1]]:
                out_t[-1] = etype
            continue
        out_i.append(item)
        out_t.append(etype)
        out_ts.append(ts)
    return out_i, out_t, out_ts


def build_user_sequences(events: pd.DataFrame, max_length: int = 200) -> pd.DataFrame:
    """Sessionised events of whole users -> one row per user (SEQUENCE_COLUMNS + search lists).

    The last item is the test target and the second-to-last the validation target when a
    user has at least 3 items (leave-one-out, as in the published benchmarks).
    """
    item_events = events[events["event_type"].isin(ITEM_EVENT_TYPES)]
    searches = events[(events["event_type"] == "search") & events["item_id"].notna()]
    micros = item_events["timestamp"].astype("int64")
    rows = []
    search_groups = dict(tuple(searches.groupby("user_id", sort=False)))
    for user_id, group in item_events.assign(_us=micros).groupby("user_id", sort=False):
        items, types, times = _collapse_repeats(group["item_id"].tolist(), group["event_type"].tolist(),
                                                group["_us"].tolist(), group["session_id"].tolist())
        items, types, times = items[-max_length:], types[-max_length:], times[-max_length:]
        user_searches = search_groups.get(user_id)
        holdout = len(items) >= 3
        rows.append({
            "user_id": user_id, "items": items, "event_types": types, "timestamps": times,
            "n_sessions": int(group["session_id"].nunique()),
            "valid_item": items[-2] if holdout else None,
            "test_item": items[-1] if holdout else None,
            "search_queries": [] if user_searches is None else user_searches["query"].astype(str).tolist(),
            "search_items": [] if user_searches is None else user_searches["item_id"].astype(str).tolist(),
        })
    columns = [*SEQUENCE_COLUMNS, "search_queries", "search_items"]
    return pd.DataFrame(rows, columns=columns)


def has_holdout(test_item) -> bool:
    """A sequence row holds out its last items when test_item is set (null reads back as None or NaN)."""
    return isinstance(test_item, str)


def training_items(items: list[str] | np.ndarray, has_holdout: bool) -> list[str]:
    """The part of a sequence training may see: everything but the held-out last two items."""
    items = list(items)
    return items[:-2] if has_holdout else items


def make_training_pairs(sequences: pd.DataFrame, item_texts: Mapping[str, str], item_titles: Mapping[str, str],
                        max_history_items: int = 8, max_pairs_per_user: int = 50) -> pd.DataFrame:
    """Users -> (anchor text, positive item) pairs: history prefix → next item, and query → clicked item.

    Only pre-hold-out items are used, so validation/test targets never leak into training.
    The most recent `max_pairs_per_user` next-item pairs are kept per user so that a few
    heavy users do not dominate an epoch.
    """
    rows: list[tuple[str, str, str, str]] = []
    for seq in sequences.itertuples(index=False):
        visible = training_items(seq.items, has_holdout(seq.test_item))
        titles = [item_titles.get(i, "") for i in visible]
        start = max(1, len(visible) - max_pairs_per_user)
        for t in range(start, len(visible)):
            anchor = format_history_text(titles[:t], max_history_items)
            if anchor and visible[t] in item_texts:
                rows.append(("next_item", anchor, visible[t], item_texts[visible[t]]))
        held_out = {i for i in (seq.valid_item, seq.test_item) if isinstance(i, str)}
        for query, item in zip(seq.search_queries, seq.search_items):
            if item in item_texts and item not in held_out:
                rows.append(("search", query, item, item_texts[item]))
    return pd.DataFrame(rows, columns=list(TRAIN_PAIR_COLUMNS))


def item_popularity(sequences: pd.DataFrame) -> pd.DataFrame:
    """Interaction counts per item over the training part of every sequence (no test leakage)."""
    counts: dict[str, int] = {}
    for seq in sequences.itertuples(index=False):
        for item in training_items(seq.items, has_holdout(seq.test_item)):
            counts[item] = counts.get(item, 0) + 1
    return pd.DataFrame({"item_id": list(counts), "count": np.array(list(counts.values()), dtype="int64")})
