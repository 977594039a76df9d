"""Per-user behaviour sequences, train/valid/test splits and training windows (vectorised).

Input: sessionised events of whole users in canonical order (clean.clean_user_events).
Everything is numpy over flat arrays plus list offsets; there is no Python loop per event,
which is what makes 5M-event logs cheap per partition.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.holdout import held_out_mask
from recsys.schema import EVENT_STRENGTH, ITEM_EVENT_TYPES


def _list_column(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _steps(item_events: pd.DataFrame) -> dict[str, np.ndarray]:
    """Consecutive events on one item in one session are one step, labelled by its strongest
    event (view -> click -> cart of the same product); a re-purchase in a later session is a new step."""
    user = item_events["user_id"].to_numpy(dtype=object)
    item = item_events["item_id"].to_numpy(dtype=object)
    session = item_events["session_id"].to_numpy(dtype=object)
    strength = item_events["event_type"].map(EVENT_STRENGTH).to_numpy(dtype=np.int8)
    new = np.ones(len(item), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (item[1:] != item[:-1]) | (session[1:] != session[:-1])
    starts = np.flatnonzero(new)
    return {"user": user[starts], "item": item[starts],
            "ts": item_events["timestamp"].astype("int64").to_numpy()[starts],
            "strength": np.maximum.reduceat(strength, starts) if len(starts) else strength[:0]}


def _split_indexes(n: np.ndarray, step_ts: np.ndarray,
                   cutoffs: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (n_train, valid_index, test_index); -1 means no target for that user.

    Leave-last-out (cutoffs None): the last item is test, the one before valid, for users with
    at least 3 items. Time split (epoch-us cut-offs t_valid <= t_test): training sees items before
    t_valid; the first item in [t_valid, t_test) is valid and the first at or after t_test is test,
    each only when there is at least one item before it to predict from.
    """
    if cutoffs is None:
        hold = n >= 3
        return np.where(hold, n - 2, n), np.where(hold, n - 2, -1), np.where(hold, n - 1, -1)
    t_valid, t_test = cutoffs
    # Per-user counts by owner (bincount), not reduceat: users with no items have empty segments.
    owner = np.repeat(np.arange(len(n)), n)
    before_valid = np.bincount(owner, weights=step_ts < t_valid, minlength=len(n)).astype(np.int64)
    before_test = np.bincount(owner, weights=step_ts < t_test, minlength=len(n)).astype(np.int64)
    test_index = np.where((before_test < n) & (before_test >= 1), before_test, -1)
    valid_index = np.where((before_valid < before_test) & (before_valid >= 1), before_valid, -1)
    return before_valid, valid_index, test_index


def training_searches(events: pd.DataFrame, cutoffs: tuple[int, int] | None = None,
                      search_holdout_fraction: float = 0.0) -> pd.DataFrame:
    """Searches that led to a click and that training may see: before the valid window of a time
    split, and not a held-out query string (holdout.is_held_out_query; search evaluation uses those)."""
    searches = events[(events["event_type"] == "search") & events["item_id"].notna()]
    if cutoffs is not None:
        searches = searches[searches["timestamp"].astype("int64") < cutoffs[0]]
    if search_holdout_fraction > 0 and len(searches):
        searches = searches[~held_out_mask(searches["query"].fillna(""), search_holdout_fraction)]
    return searches


def build_user_sequences(events: pd.DataFrame, max_length: int = 200,
                         event_weights: Mapping[str, float] | None = None,
                         cutoffs: tuple[int, int] | None = None, search_holdout_fraction: float = 0.0) -> pa.Table:
    """Sessionised events -> one row per user with an item event or a training search that led to a
    click (SEQUENCE_COLUMNS + search lists; a search-only user has an empty item sequence)."""
    weights_by_type = dict(event_weights or {t: 1.0 for t in ITEM_EVENT_TYPES})
    item_events = events[events["event_type"].isin(ITEM_EVENT_TYPES)]
    searches = training_searches(events, cutoffs, search_holdout_fraction)
    steps = _steps(item_events)
    users = np.unique(np.concatenate([steps["user"], searches["user_id"].to_numpy(dtype=object)]).astype(object))
    counts = np.bincount(pd.Index(users).get_indexer(steps["user"]), minlength=len(users))
    user_starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    # Keep each user's most recent max_length steps.
    rank_from_end = np.repeat(counts, counts) - (np.arange(len(steps["user"])) - np.repeat(user_starts, counts))
    keep = rank_from_end <= max_length
    n = np.minimum(counts, max_length)
    offsets = np.concatenate([[0], np.cumsum(n)])
    item, ts, strength = steps["item"][keep], steps["ts"][keep], steps["strength"][keep]
    # Lookup tables indexed by event strength: strongest event of a step -> its type and weight.
    codes = [EVENT_STRENGTH[t] for t in ITEM_EVENT_TYPES]
    type_of = np.full(max(codes) + 1, "view", dtype=object)
    type_of[codes] = list(ITEM_EVENT_TYPES)
    weight_of = np.zeros(max(codes) + 1, dtype=np.float32)
    weight_of[codes] = [weights_by_type.get(t, 1.0) for t in ITEM_EVENT_TYPES]
    step_types = type_of[strength]

    n_train, valid_index, test_index = _split_indexes(n, ts, cutoffs)
    start = offsets[:-1]
    valid_item = np.where(valid_index >= 0, item[np.maximum(start + valid_index, 0)] if len(item) else None, None)
    test_item = np.where(test_index >= 0, item[np.maximum(start + test_index, 0)] if len(item) else None, None)
    n_sessions = item_events.groupby("user_id")["session_id"].nunique().reindex(users, fill_value=0).to_numpy()

    owner = pd.Index(users).get_indexer(searches["user_id"])
    searches = searches[owner >= 0]
    search_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[owner >= 0], minlength=len(users)))])

    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "items": _list_column(offsets, pa.array(item, pa.string())),
        "event_types": _list_column(offsets, pa.array(step_types, pa.string())),
        "weights": _list_column(offsets, pa.array(weight_of[strength], pa.float32())),
        "timestamps": _list_column(offsets, pa.array(ts, pa.int64())),
        "n_sessions": pa.array(n_sessions, pa.int64()),
        "n_train": pa.array(n_train, pa.int64()),
        "valid_index": pa.array(valid_index, pa.int64()),
        "test_index": pa.array(test_index, pa.int64()),
        "valid_item": pa.array(valid_item, pa.string()),
        "test_item": pa.array(test_item, pa.string()),
        "search_queries": _list_column(search_offsets, pa.array(searches["query"].to_numpy(dtype=object),
                                                                pa.string())),
        "search_items": _list_column(search_offsets, pa.array(searches["item_id"].to_numpy(dtype=object),
                                                              pa.string())),
    })


def training_items(items: list[str] | np.ndarray, n_train: int) -> list[str]:
    """The part of a sequence training may see (before the valid/test targets)."""
    return list(items)[:n_train]


def training_windows(sequences: pa.Table, length: int, stride: int) -> pa.Table:
    """Training part of every sequence cut into windows of at most `length` items, `stride` apart;
    the last window always ends at the last training item. Users with < 2 training items have none."""
    n_train = sequences.column("n_train").to_numpy()
    lengths = pc.list_value_length(sequences.column("items")).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1].astype(np.int64)
    win_user, win_start, win_len = [], [], []
    for u, n in enumerate(n_train):
        if n < 2:
            continue
        starts = list(range(0, max(n - length, 0), stride)) + [max(n - length, 0)]
        win_user += [u] * len(starts)
        win_start += starts
        win_len += [min(length, n)] * len(starts)
    lens = np.asarray(win_len, dtype=np.int64)
    base = offsets[np.asarray(win_user, dtype=np.int64)] + np.asarray(win_start, dtype=np.int64)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    take = pa.array(np.repeat(base, lens) + within)
    win_offsets = np.concatenate([[0], np.cumsum(lens)])
    flat = {c: pc.list_flatten(sequences.column(c)) for c in ("items", "event_types", "weights")}
    return pa.table({
        "user_id": sequences.column("user_id").take(pa.array(np.asarray(win_user, dtype=np.int64))),
        "start": pa.array(np.asarray(win_start, dtype=np.int64)),
        **{c: _list_column(win_offsets, flat[c].take(take).combine_chunks()) for c in flat},
    })


def item_counts(sequences: pa.Table) -> pd.DataFrame:
    """Interaction counts per item over the training part of every sequence (no test leakage)."""
    lengths = pc.list_value_length(sequences.column("items")).to_numpy()
    position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    in_train = position < np.repeat(sequences.column("n_train").to_numpy(), lengths)
    flat = pc.list_flatten(sequences.column("items")).to_numpy(zero_copy_only=False)[in_train]
    counts = pd.Series(flat, dtype=object).value_counts(sort=False)
    return pd.DataFrame({"item_id": counts.index.astype(object), "count": counts.to_numpy(dtype=np.int64)})

