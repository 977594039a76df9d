"""Cleaning of validated events: exact duplicates, rapid repeats, bot users, sessions, canonical order."""

from __future__ import annotations

import pandas as pd
import pytest
from event_frames import T0, events

from recsys.data.clean import (
    assign_sessions,
    canonical_order,
    clean_user_events,
    drop_bot_users,
    drop_exact_duplicates,
    drop_rapid_repeats,
)
from recsys.schema import EVENT_COLUMNS


def seconds(rows: list[tuple]) -> pd.DataFrame:
    return canonical_order(events(rows, unit="seconds"))


def shuffled(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def rows_of(frame: pd.DataFrame, columns: tuple[str, ...] = ("user_id", "item_id", "event_type")) -> list[tuple]:
    """Rows as tuples with missing values as None (pandas may hold them as NaN)."""
    return [tuple(None if pd.isna(v) else v for v in r) for r in frame[list(columns)].itertuples(index=False)]


def offsets_s(frame: pd.DataFrame) -> list[float]:
    return [(t - T0).total_seconds() for t in frame["timestamp"]]


# ---------------------------------------------------------------- canonical order
def test_canonical_order_sorts_by_user_time_strength_item_query() -> None:
    frame = events([
        ("u2", "a", "view", 0),
        ("u1", "a", "view", 1),
        ("u1", "a", "click", 0),
        ("u1", None, "search", 0, "shoes"),
        ("u1", "a", "view", 0),
        ("u1", None, "search", 0, "boots"),
    ])
    out = canonical_order(frame)
    # Same instant: weaker event first (view < click = search), then event type, item (null first), query.
    assert rows_of(out, ("user_id", "item_id", "event_type", "query")) == [
        ("u1", "a", "view", None),
        ("u1", "a", "click", None),
        ("u1", None, "search", "boots"),
        ("u1", None, "search", "shoes"),
        ("u1", "a", "view", None),
        ("u2", "a", "view", None),
    ]
    assert out.index.tolist() == list(range(6))
    assert list(out.columns) == list(EVENT_COLUMNS)


TIES = [
    ("u1", "a", "view", 0), ("u1", "a", "view", 0, None, "s-2"), ("u1", "a", "view", 0, None, "s-1"),
    ("u1", "b", "view", 0), ("u1", "a", "purchase", 0), ("u1", "a", "add_to_cart", 0),
    ("u1", None, "search", 0, "q2"), ("u1", None, "search", 0, "q1"), ("u1", "b", "search", 0, "q1"),
    ("u1", "c", "view", 3), ("u2", "a", "view", 0), ("u2", "a", "view", 0), ("u0", "z", "click", 9),
]


@pytest.mark.parametrize("seed", range(5))
def test_canonical_order_is_independent_of_input_order(seed: int) -> None:
    frame = events(TIES)
    pd.testing.assert_frame_equal(canonical_order(shuffled(frame, seed)), canonical_order(frame))


def test_canonical_order_breaks_click_search_tie() -> None:
    # click and search share a strength (2): with equal user, time, item, query and session only
    # event_type tells the rows apart, and it must, or the row order depends on the input order.
    frame = events([("u1", "a", "click", 0, "boots"), ("u1", "a", "search", 0, "boots")])
    pd.testing.assert_frame_equal(canonical_order(frame.iloc[::-1].reset_index(drop=True)), canonical_order(frame))


# ---------------------------------------------------------------- exact duplicates
def test_drop_exact_duplicates_keeps_one_exact_repeat() -> None:
    frame = canonical_order(events([
        ("u1", "a", "view", 0), ("u1", "a", "view", 0),                 # exact repeat
        ("u1", "a", "view", 0, None, "other-session"),                  # same event, session differs
        ("u1", "a", "view", 1),                                         # different time
        ("u1", "a", "click", 0),                                        # different type
        ("u1", None, "search", 0, "boots"), ("u1", None, "search", 0, "boots"),
        ("u1", None, "search", 0, "shoes"),                             # different query
        ("u2", "a", "view", 0),                                         # different user
    ]))
    kept, dropped = drop_exact_duplicates(frame)
    assert len(kept) == 6 and len(dropped) == 3
    assert kept.index.tolist() == list(range(6)) and dropped.index.tolist() == list(range(3))
    assert kept["session_id"].isna().all()                      # the first occurrence (null session) wins
    assert dropped["reason"].tolist() == ["duplicate"] * 3
    assert sorted(dropped["session_id"].dropna()) == ["other-session"]
    assert sorted(rows_of(dropped, ("item_id", "event_type", "query")), key=str) == sorted(
        [("a", "view", None), ("a", "view", None), (None, "search", "boots")], key=str)
    assert set(rows_of(kept, ("user_id", "item_id", "event_type", "query"))) == {
        ("u1", "a", "view", None), ("u1", "a", "click", None), ("u1", None, "search", "boots"),
        ("u1", None, "search", "shoes"), ("u2", "a", "view", None)}


def test_drop_exact_duplicates_without_duplicates() -> None:
    kept, dropped = drop_exact_duplicates(canonical_order(events([("u1", "a", "view", 0), ("u1", "a", "view", 1)])))
    assert len(kept) == 2 and len(dropped) == 0 and "reason" in dropped.columns


# ---------------------------------------------------------------- rapid repeats
def test_rapid_repeat_burst_collapses_to_first() -> None:
    kept, dropped = drop_rapid_repeats(seconds([
        ("u1", "a", "view", 0), ("u1", "a", "view", 1.5), ("u1", "a", "view", 3),
    ]), window_seconds=2)
    assert offsets_s(kept) == [0.0]
    assert offsets_s(dropped) == [1.5, 3.0]
    assert dropped["reason"].tolist() == ["rapid_repeat"] * 2
    assert kept.index.tolist() == [0]


def test_rapid_repeat_key_is_user_item_event_query() -> None:
    frame = seconds([
        ("u1", "a", "view", 0),
        ("u1", "b", "view", 0.5),                    # another item in between does not matter
        ("u1", "a", "click", 1),                     # another event type on the same item: its own key
        ("u1", "a", "view", 1.5),                    # repeat of the view at 0
        ("u1", "a", "click", 4),                     # 3 s after the click: kept
        ("u2", "a", "view", 1),                      # another user: kept
        ("u1", None, "search", 10, "boots"),
        ("u1", None, "search", 11, "shoes"),         # another query: kept
        ("u1", None, "search", 11.5, "boots"),       # repeat of 'boots' at 10
    ])
    kept, dropped = drop_rapid_repeats(frame, window_seconds=2)
    assert [(u, i, e, s) for (u, i, e), s in zip(rows_of(dropped), offsets_s(dropped))] == [
        ("u1", "a", "view", 1.5), ("u1", None, "search", 11.5)]
    assert len(kept) == len(frame) - 2
    assert set(zip(rows_of(kept), offsets_s(kept))) == {
        (("u1", "a", "view"), 0.0), (("u1", "b", "view"), 0.5), (("u1", "a", "click"), 1.0),
        (("u1", "a", "click"), 4.0), (("u2", "a", "view"), 1.0), (("u1", None, "search"), 10.0),
        (("u1", None, "search"), 11.0)}


def test_rapid_repeat_outside_window_is_kept() -> None:
    kept, dropped = drop_rapid_repeats(seconds([("u1", "a", "view", 0), ("u1", "a", "view", 2.5)]), 2)
    assert offsets_s(kept) == [0.0, 2.5] and len(dropped) == 0


def test_rapid_repeat_keeps_order_of_survivors() -> None:
    frame = seconds([("u1", "b", "view", 1), ("u1", "a", "view", 0), ("u1", "a", "view", 1.5), ("u1", "c", "view", 2)])
    kept, _ = drop_rapid_repeats(frame, 2)
    assert kept["item_id"].tolist() == ["a", "b", "c"]


def test_rapid_repeat_window_zero_disables() -> None:
    frame = seconds([("u1", "a", "view", 0), ("u1", "a", "view", 0.5), ("u1", "a", "view", 1)])
    kept, dropped = drop_rapid_repeats(frame, window_seconds=0)
    pd.testing.assert_frame_equal(kept, frame)
    assert len(dropped) == 0 and "reason" in dropped.columns


def test_rapid_repeat_empty() -> None:
    kept, dropped = drop_rapid_repeats(canonical_order(events([])), 2)
    assert len(kept) == 0 and len(dropped) == 0


# ---------------------------------------------------------------- sessions
def sessions(rows: list[tuple], **kwargs) -> pd.DataFrame:
    return assign_sessions(canonical_order(events(rows)), **kwargs)


def test_assign_sessions_splits_at_gap() -> None:
    out = sessions([
        ("u1", "c", "view", 40),      # 35 min after 'b' -> new session
        ("u1", "a", "view", 0),
        ("u1", "d", "view", 70),      # exactly 30 min after 'c' -> same session
        ("u1", "b", "view", 5),
        ("u2", "x", "view", 5),
        ("u1", "e", "view", 100.5),   # 30.5 min -> new session
    ])
    assert out["user_id"].tolist() == ["u1"] * 5 + ["u2"]
    assert out["item_id"].tolist() == ["a", "b", "c", "d", "e", "x"]
    assert out["session_id"].tolist() == ["u1-s1", "u1-s1", "u1-s2", "u1-s2", "u1-s3", "u2-s1"]
    assert out.index.tolist() == list(range(6))


def test_assign_sessions_numbering_restarts_per_user() -> None:
    out = sessions([("u1", "a", "view", 0), ("u1", "b", "view", 60), ("u1", "c", "view", 120),
                    ("u2", "a", "view", 0), ("u2", "b", "view", 60), ("u3", "a", "view", 500)])
    assert out["session_id"].tolist() == ["u1-s1", "u1-s2", "u1-s3", "u2-s1", "u2-s2", "u3-s1"]


def test_assign_sessions_custom_gap() -> None:
    out = sessions([("u1", "a", "view", 0), ("u1", "b", "view", 10), ("u1", "c", "view", 15)], gap_minutes=5)
    assert out["session_id"].tolist() == ["u1-s1", "u1-s2", "u1-s2"]


def test_assign_sessions_keeps_given_session_ids() -> None:
    out = sessions([
        ("u1", "a", "view", 0, None, "web-1"),
        ("u1", "b", "view", 500, None, "web-1"),     # long gap but the log says same session
        ("u2", "x", "view", 0), ("u2", "y", "view", 90),
    ])
    assert out["session_id"].tolist() == ["web-1", "web-1", "u2-s1", "u2-s2"]


def test_assign_sessions_empty() -> None:
    assert len(assign_sessions(canonical_order(events([])))) == 0


# ---------------------------------------------------------------- bot users
def test_bot_by_events_per_clock_minute() -> None:
    frame = assign_sessions(seconds(
        [("bot", f"i{n}", "view", n) for n in range(5)]                    # 5 events in minute 12:00
        + [("bot", "late", "view", 3600)]                                  # even its later events go
        + [("human", f"i{n}", "view", n) for n in range(4)]                # 4 in one minute: at the limit
        + [("edge", f"i{n}", "view", 56 + 2 * n) for n in range(6)]        # 6 within 12 s but 2 + 4 per minute
    ))
    kept, dropped = drop_bot_users(frame, max_events_per_minute=4, max_session_events=100)
    assert set(dropped["user_id"]) == {"bot"} and len(dropped) == 6
    assert dropped["reason"].tolist() == ["bot_user"] * 6
    assert kept["user_id"].tolist() == ["edge"] * 6 + ["human"] * 4
    assert kept.index.tolist() == list(range(10))


def test_bot_by_session_length() -> None:
    frame = assign_sessions(canonical_order(events(
        [("bot", f"i{n}", "view", n) for n in range(4)]                     # one session of 4 events
        + [("bot", "x", "view", 300)]                                       # another session
        + [("human", f"i{n}", "view", n) for n in range(3)]                 # 3 + 3 in two sessions
        + [("human", f"j{n}", "view", 100 + n) for n in range(3)]
    )))
    kept, dropped = drop_bot_users(frame, max_events_per_minute=100, max_session_events=3)
    assert set(dropped["user_id"]) == {"bot"} and len(dropped) == 5
    assert set(dropped["reason"]) == {"bot_user"}
    assert set(kept["user_id"]) == {"human"} and len(kept) == 6


def test_no_bots_and_empty() -> None:
    frame = assign_sessions(canonical_order(events([("u1", "a", "view", 0), ("u1", "b", "view", 1)])))
    kept, dropped = drop_bot_users(frame, 60, 1000)
    pd.testing.assert_frame_equal(kept, frame)
    assert len(dropped) == 0
    kept, dropped = drop_bot_users(assign_sessions(canonical_order(events([]))), 60, 1000)
    assert len(kept) == 0 and len(dropped) == 0


# ---------------------------------------------------------------- the whole cleaning step
NOISY = [
    ("u1", "a", "view", 0), ("u1", "a", "view", 0),                 # duplicate
    ("u1", "a", "view", 1),                                         # rapid repeat of the view at 0
    ("u1", "a", "click", 1.5), ("u1", "b", "view", 5),
    ("u1", "c", "view", 3600),                                      # an hour later: new session
    ("u2", "x", "view", 0, None, "web-7"), ("u2", "y", "purchase", 4000, None, "web-7"),
    *[("bot", f"i{n}", "view", 10 * n) for n in range(8)],          # 6 + 1 below in minute 12:00, 2 in 12:01
    ("bot", "i0", "view", 10), ("bot", "i0", "view", 10),           # bot row that is also a duplicate
]


def clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return clean_user_events(frame, rapid_repeat_seconds=2, gap_minutes=30, max_events_per_minute=5,
                             max_session_events=1000)


def test_clean_user_events_reasons_and_row_accounting() -> None:
    frame = events(NOISY, unit="seconds")
    kept, dropped = clean(frame)
    assert len(kept) + len(dropped) == len(frame)
    assert dropped["reason"].value_counts().to_dict() == {"duplicate": 2, "rapid_repeat": 1, "bot_user": 9}
    assert set(dropped.loc[dropped["reason"] == "bot_user", "user_id"]) == {"bot"}
    assert rows_of(kept) == [("u1", "a", "view"), ("u1", "a", "click"), ("u1", "b", "view"), ("u1", "c", "view"),
                             ("u2", "x", "view"), ("u2", "y", "purchase")]
    assert kept["session_id"].tolist() == ["u1-s1", "u1-s1", "u1-s1", "u1-s2", "web-7", "web-7"]
    assert list(kept.columns) == list(EVENT_COLUMNS)
    assert kept.index.tolist() == list(range(6))


def test_clean_user_events_ignores_extra_columns() -> None:
    frame = events(NOISY, unit="seconds").assign(extra=1)
    kept, _ = clean(frame)
    assert list(kept.columns) == list(EVENT_COLUMNS)


@pytest.mark.parametrize("seed", range(4))
def test_clean_user_events_is_independent_of_input_order(seed: int) -> None:
    frame = events(NOISY, unit="seconds")
    kept, dropped = clean(frame)
    kept2, dropped2 = clean(shuffled(frame, seed))
    pd.testing.assert_frame_equal(kept2, kept)
    pd.testing.assert_frame_equal(dropped2, dropped)


def test_clean_user_events_empty() -> None:
    kept, dropped = clean(events([]))
    assert len(kept) == 0 and len(dropped) == 0
