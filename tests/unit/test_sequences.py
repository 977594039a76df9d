"""Sessions, per-user sequences, leave-one-out hold-out and leak-free training pairs."""

from __future__ import annotations

import pandas as pd

from recsys.data.sequences import (
    assign_sessions,
    build_user_sequences,
    drop_duplicate_events,
    item_popularity,
    make_training_pairs,
    training_items,
)
from recsys.schema import EVENT_COLUMNS, SEQUENCE_COLUMNS, TRAIN_PAIR_COLUMNS

T0 = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")


def events(rows: list[tuple]) -> pd.DataFrame:
    """(user, item, type, minutes after T0[, query[, session]]) -> typed events as validate_events gives."""
    records = []
    for row in rows:
        user, item, etype, minutes, *rest = row
        query = rest[0] if rest else None
        session = rest[1] if len(rest) > 1 else None
        records.append({"user_id": user, "item_id": item, "event_type": etype,
                        "timestamp": T0 + pd.Timedelta(minutes=minutes), "query": query, "session_id": session})
    frame = pd.DataFrame(records, columns=list(EVENT_COLUMNS))
    frame["timestamp"] = frame["timestamp"].astype("datetime64[us, UTC]")
    return frame


def micros(minutes: float) -> int:
    return int((T0 + pd.Timedelta(minutes=minutes)).value // 1000)


def sequences_of(rows: list[tuple], max_length: int = 200) -> dict[str, dict]:
    seqs = build_user_sequences(assign_sessions(events(rows)), max_length=max_length)
    return {r["user_id"]: r for r in seqs.to_dict(orient="records")}


# ---------------------------------------------------------------- duplicates and sessions
def test_drop_duplicate_events_keeps_one_exact_repeat() -> None:
    frame = events([
        ("u1", "a", "view", 0), ("u1", "a", "view", 0),                 # exact repeat
        ("u1", "a", "view", 0, None, "other-session"),                  # same event, session differs
        ("u1", "a", "view", 1),                                         # different time
        ("u1", "a", "click", 0),                                        # different type
        ("u1", None, "search", 0, "boots"), ("u1", None, "search", 0, "boots"),
        ("u1", None, "search", 0, "shoes"),                             # different query
        ("u2", "a", "view", 0),                                         # different user
    ])
    out = drop_duplicate_events(frame)
    assert len(out) == 6
    assert out.index.tolist() == list(range(6))
    assert pd.isna(out.iloc[0]["session_id"])   # first occurrence wins


def test_assign_sessions_splits_at_gap_and_sorts() -> None:
    frame = events([
        ("u1", "c", "view", 40),      # 35 min after 'b' -> new session
        ("u1", "a", "view", 0),
        ("u1", "d", "view", 70),      # exactly 30 min after 'c' -> same session
        ("u1", "b", "view", 5),
        ("u2", "x", "view", 5),
        ("u1", "e", "view", 100.5),   # 30.5 min -> new session
    ])
    out = assign_sessions(frame)
    assert out["user_id"].tolist() == ["u1"] * 5 + ["u2"]
    assert out["item_id"].tolist() == ["a", "b", "c", "d", "e", "x"]
    assert out["session_id"].tolist() == ["u1-s1", "u1-s1", "u1-s2", "u1-s2", "u1-s3", "u2-s1"]
    assert out.index.tolist() == list(range(6))


def test_assign_sessions_custom_gap() -> None:
    frame = events([("u1", "a", "view", 0), ("u1", "b", "view", 10), ("u1", "c", "view", 15)])
    assert assign_sessions(frame, gap_minutes=5)["session_id"].tolist() == ["u1-s1", "u1-s2", "u1-s2"]


def test_assign_sessions_keeps_given_session_ids() -> None:
    frame = events([
        ("u1", "a", "view", 0, None, "web-1"),
        ("u1", "b", "view", 500, None, "web-1"),     # long gap but the log says same session
        ("u2", "x", "view", 0), ("u2", "y", "view", 90),
    ])
    out = assign_sessions(frame)
    assert out["session_id"].tolist() == ["web-1", "web-1", "u2-s1", "u2-s2"]


# ---------------------------------------------------------------- sequences
def test_build_user_sequences_collapse_and_holdout() -> None:
    seqs = sequences_of([
        # session 1: a viewed, clicked, carted -> one step labelled add_to_cart
        ("u1", "a", "view", 0), ("u1", "a", "click", 1), ("u1", "a", "add_to_cart", 2), ("u1", "a", "view", 3),
        ("u1", "b", "view", 5),
        # session 2 (gap > 30 min): a purchased again -> its own step
        ("u1", "a", "purchase", 60), ("u1", "c", "view", 61),
    ])
    u1 = seqs["u1"]
    assert list(u1["items"]) == ["a", "b", "a", "c"]
    assert list(u1["event_types"]) == ["add_to_cart", "view", "purchase", "view"]
    assert list(u1["timestamps"]) == [micros(0), micros(5), micros(60), micros(61)]  # first event of a step
    assert u1["n_sessions"] == 2
    assert (u1["valid_item"], u1["test_item"]) == ("a", "c")


def test_build_user_sequences_is_chronological_for_shuffled_input() -> None:
    rows = [("u1", item, "view", minute) for minute, item in enumerate("pqrstu")]
    shuffled = [rows[i] for i in (3, 0, 5, 1, 4, 2)]
    assert list(sequences_of(shuffled)["u1"]["items"]) == list("pqrstu")


def test_repeat_separated_by_another_item_is_not_collapsed() -> None:
    seqs = sequences_of([("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u1", "a", "view", 2)])
    assert list(seqs["u1"]["items"]) == ["a", "b", "a"]


def test_stronger_event_first_keeps_its_label() -> None:
    seqs = sequences_of([("u1", "a", "purchase", 0), ("u1", "a", "view", 1), ("u1", "b", "click", 2)])
    assert list(seqs["u1"]["event_types"]) == ["purchase", "click"]


def test_holdout_needs_three_items() -> None:
    seqs = sequences_of([
        ("u2", "a", "view", 0), ("u2", "b", "view", 1),
        ("u3", "a", "view", 0), ("u3", "b", "view", 1), ("u3", "c", "view", 2),
        ("u4", "a", "view", 0), ("u4", "a", "click", 1), ("u4", "b", "view", 2),   # 2 items after collapse
    ])
    assert pd.isna(seqs["u2"]["valid_item"]) and pd.isna(seqs["u2"]["test_item"])
    assert (seqs["u3"]["valid_item"], seqs["u3"]["test_item"]) == ("b", "c")
    assert pd.isna(seqs["u4"]["test_item"])


def test_max_length_keeps_most_recent() -> None:
    seqs = sequences_of([("u1", f"i{n}", "view", n) for n in range(6)], max_length=4)
    u1 = seqs["u1"]
    assert list(u1["items"]) == ["i2", "i3", "i4", "i5"]
    assert list(u1["timestamps"]) == [micros(n) for n in range(2, 6)]
    assert (u1["valid_item"], u1["test_item"]) == ("i4", "i5")


def test_searches_are_listed_but_not_sequence_steps() -> None:
    seqs = build_user_sequences(assign_sessions(events([
        ("u1", None, "search", 0, "boots"),             # no click: not a training search
        ("u1", "b", "search", 1, "red boots"),
        ("u1", "b", "click", 2),
        ("u2", "x", "view", 0),
    ])))
    assert list(seqs.columns) == [*SEQUENCE_COLUMNS, "search_queries", "search_items"]
    by_user = seqs.set_index("user_id")
    assert list(by_user.loc["u1", "items"]) == ["b"]
    assert list(by_user.loc["u1", "search_queries"]) == ["red boots"]
    assert list(by_user.loc["u1", "search_items"]) == ["b"]
    assert list(by_user.loc["u2", "search_queries"]) == []


def test_user_with_only_searches_has_no_sequence() -> None:
    seqs = sequences_of([("u1", "a", "search", 0, "q"), ("u2", "x", "view", 0)])
    assert set(seqs) == {"u2"}


# ---------------------------------------------------------------- training pairs
ITEMS = list("abcdefgh")
TITLES = {i: i.upper() for i in ITEMS}
TEXTS = {i: f"{i.upper()}. brand. category" for i in ITEMS}


def seq_frame(users: list[dict]) -> pd.DataFrame:
    rows = []
    for u in users:
        items = u["items"]
        hold = len(items) >= 3
        rows.append({"user_id": u["user_id"], "items": items, "event_types": ["view"] * len(items),
                     "timestamps": list(range(len(items))), "n_sessions": 1,
                     "valid_item": items[-2] if hold else None, "test_item": items[-1] if hold else None,
                     "search_queries": u.get("queries", []), "search_items": u.get("search_items", [])})
    frame = pd.DataFrame(rows, columns=[*SEQUENCE_COLUMNS, "search_queries", "search_items"])
    for col in ("valid_item", "test_item"):   # keep None (pandas would turn it into NaN in a str column)
        frame[col] = pd.Series([r[col] for r in rows], index=frame.index, dtype=object)
    return frame


def test_training_items() -> None:
    assert training_items(["a", "b", "c", "d"], has_holdout=True) == ["a", "b"]
    assert training_items(["a", "b"], has_holdout=False) == ["a", "b"]


def test_next_item_pairs_never_see_held_out_items() -> None:
    seqs = seq_frame([{"user_id": "u1", "items": list("abcde")}])
    pairs = make_training_pairs(seqs, TEXTS, TITLES, max_history_items=8)
    assert list(pairs.columns) == list(TRAIN_PAIR_COLUMNS)
    assert pairs.values.tolist() == [
        ["next_item", "A", "b", TEXTS["b"]],
        ["next_item", "B | A", "c", TEXTS["c"]],      # most recent first
    ]
    held_out = {"d", "e"}
    assert not set(pairs["positive_item_id"]) & held_out
    for anchor in pairs["anchor_text"]:
        assert not {"D", "E"} & set(anchor.split(" | "))


def test_search_pairs_skip_held_out_and_unknown_items() -> None:
    seqs = seq_frame([{"user_id": "u1", "items": list("abcde"),
                       "queries": ["red boots", "blue hat", "green cup", "mystery"],
                       "search_items": ["b", "e", "d", "zzz"]}])
    pairs = make_training_pairs(seqs, TEXTS, TITLES)
    search = pairs[pairs["kind"] == "search"]
    assert search[["anchor_text", "positive_item_id"]].values.tolist() == [["red boots", "b"]]
    assert search["positive_text"].tolist() == [TEXTS["b"]]


def test_user_without_holdout_trains_on_everything() -> None:
    pairs = make_training_pairs(seq_frame([{"user_id": "u1", "items": ["a", "b"]}]), TEXTS, TITLES)
    assert pairs[["anchor_text", "positive_item_id"]].values.tolist() == [["A", "b"]]


def test_max_pairs_per_user_keeps_the_most_recent() -> None:
    seqs = seq_frame([{"user_id": "u1", "items": list("abcdefgh")}])   # visible a..f
    pairs = make_training_pairs(seqs, TEXTS, TITLES, max_history_items=2, max_pairs_per_user=2)
    assert pairs["positive_item_id"].tolist() == ["e", "f"]
    assert pairs["anchor_text"].tolist() == ["D | C", "E | D"]        # max_history_items=2
    all_pairs = make_training_pairs(seqs, TEXTS, TITLES, max_pairs_per_user=50)
    assert all_pairs["positive_item_id"].tolist() == list("bcdef")


def test_pairs_skip_positives_without_text_and_empty_anchors() -> None:
    texts = {k: v for k, v in TEXTS.items() if k != "c"}
    titles = {**TITLES, "a": ""}
    pairs = make_training_pairs(seq_frame([{"user_id": "u1", "items": list("abcdfg")}]), texts, titles)
    # t=1: anchor from 'a' is empty -> skipped; t=2: 'c' has no text -> skipped
    assert pairs[["anchor_text", "positive_item_id"]].values.tolist() == [["C | B", "d"]]


def test_pairs_accept_numpy_item_arrays() -> None:
    seqs = seq_frame([{"user_id": "u1", "items": list("abcde")}])
    seqs["items"] = seqs["items"].map(lambda x: pd.array(x, dtype=object).to_numpy())
    assert make_training_pairs(seqs, TEXTS, TITLES)["positive_item_id"].tolist() == ["b", "c"]


def test_end_to_end_from_events() -> None:
    frame = events([("u1", i, "view", n * 60) for n, i in enumerate("abcd")] +
                   [("u1", "b", "search", 1, "bee"), ("u1", "d", "search", 181, "dee")])
    seqs = build_user_sequences(assign_sessions(frame))
    pairs = make_training_pairs(seqs, TEXTS, TITLES)
    assert pairs[["kind", "positive_item_id"]].values.tolist() == [["next_item", "b"], ["search", "b"]]


# ---------------------------------------------------------------- popularity
def test_item_popularity_excludes_held_out_items() -> None:
    seqs = seq_frame([
        {"user_id": "u1", "items": list("abcd")},    # counts a, b
        {"user_id": "u2", "items": list("bce")},     # counts b
        {"user_id": "u3", "items": ["a", "h"]},      # no hold-out: counts a, h
    ])
    pop = item_popularity(seqs)
    assert list(pop.columns) == ["item_id", "count"]
    assert dict(zip(pop["item_id"], pop["count"])) == {"a": 2, "b": 2, "h": 1}
    assert pop["count"].dtype == "int64"


def test_item_popularity_empty() -> None:
    assert len(item_popularity(seq_frame([]))) == 0


# ---------------------------------------------------------------- real build_user_sequences output
def two_and_three_item_users() -> pd.DataFrame:
    return build_user_sequences(assign_sessions(events([
        ("u1", "a", "view", 0), ("u1", "b", "view", 1),                           # no hold-out
        ("u2", "a", "view", 0), ("u2", "b", "view", 1), ("u2", "c", "view", 2),  # a | b, c held out
    ])))


def test_pairs_from_built_sequences_keep_users_without_holdout() -> None:
    pairs = make_training_pairs(two_and_three_item_users(), TEXTS, TITLES)
    assert pairs[["anchor_text", "positive_item_id"]].values.tolist() == [["A", "b"]]


def test_popularity_from_built_sequences_counts_users_without_holdout() -> None:
    pop = item_popularity(two_and_three_item_users())
    assert dict(zip(pop["item_id"], pop["count"])) == {"a": 2, "b": 1}
