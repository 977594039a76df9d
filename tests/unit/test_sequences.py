"""Per-user sequences: collapsed steps, weights, leave-last-out and time splits, search lists,
training windows and leak-free item counts."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from event_frames import T0, build

from recsys.data.sequences import (
    item_counts,
    training_items,
    training_windows,
)
from recsys.schema import SEQUENCE_COLUMNS, WINDOW_COLUMNS

WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def micros(minutes: float) -> int:
    return int((T0 + pd.Timedelta(minutes=minutes)).value // 1000)


def sequences_of(rows: list[tuple], **kwargs) -> dict[str, dict]:
    return {r["user_id"]: r for r in build(rows, **kwargs).to_pylist()}


def split_of(seq: dict) -> tuple:
    return seq["n_train"], seq["valid_index"], seq["test_index"], seq["valid_item"], seq["test_item"]


# ---------------------------------------------------------------- steps
def test_columns_and_types() -> None:
    table = build([("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u1", "c", "view", 2)])
    assert table.column_names == list(SEQUENCE_COLUMNS)
    types = {f.name: f.type for f in table.schema}
    assert types["items"] == pa.list_(pa.string()) and types["weights"] == pa.list_(pa.float32())
    assert types["timestamps"] == pa.list_(pa.int64())
    assert all(types[c] == pa.int64() for c in ("n_sessions", "n_train", "valid_index", "test_index"))
    assert types["valid_item"] == pa.string() and types["test_item"] == pa.string()


def test_collapse_weights_and_holdout() -> None:
    seqs = sequences_of([
        # session 1: a viewed, clicked, carted -> one step labelled add_to_cart
        ("u1", "a", "view", 0), ("u1", "a", "click", 1), ("u1", "a", "add_to_cart", 2), ("u1", "a", "view", 3),
        ("u1", "b", "view", 5),
        # session 2 (gap > 30 min): a purchased again -> its own step
        ("u1", "a", "purchase", 60), ("u1", "c", "view", 61),
    ], event_weights=WEIGHTS)
    u1 = seqs["u1"]
    assert u1["items"] == ["a", "b", "a", "c"]
    assert u1["event_types"] == ["add_to_cart", "view", "purchase", "view"]
    assert u1["weights"] == [3.0, 1.0, 5.0, 1.0]
    assert u1["timestamps"] == [micros(0), micros(5), micros(60), micros(61)]  # first event of a step
    assert u1["n_sessions"] == 2
    assert split_of(u1) == (2, 2, 3, "a", "c")


def test_weights_default_to_one() -> None:
    u1 = sequences_of([("u1", "a", "purchase", 0), ("u1", "b", "click", 1), ("u1", "c", "view", 2)])["u1"]
    assert u1["weights"] == [1.0, 1.0, 1.0]


def test_collapse_needs_same_session() -> None:
    # The same item clicked twice with a 40 minute gap is two steps; 20 minutes apart it is one.
    seqs = sequences_of([("u1", "a", "view", 0), ("u1", "a", "click", 40),
                         ("u2", "a", "view", 0), ("u2", "a", "click", 20)])
    assert seqs["u1"]["items"] == ["a", "a"] and seqs["u1"]["event_types"] == ["view", "click"]
    assert seqs["u2"]["items"] == ["a"] and seqs["u2"]["event_types"] == ["click"]
    assert (seqs["u1"]["n_sessions"], seqs["u2"]["n_sessions"]) == (2, 1)


def test_collapse_respects_given_session_ids() -> None:
    seqs = sequences_of([("u1", "a", "view", 0, None, "s1"), ("u1", "a", "purchase", 1, None, "s2")])
    assert seqs["u1"]["items"] == ["a", "a"] and seqs["u1"]["event_types"] == ["view", "purchase"]


@pytest.mark.parametrize("order", [(3, 0, 5, 1, 4, 2), (5, 4, 3, 2, 1, 0)])
def test_sequence_is_chronological_for_shuffled_input(order: tuple[int, ...]) -> None:
    rows = [("u1", item, "view", minute) for minute, item in enumerate("pqrstu")]
    u1 = sequences_of([rows[i] for i in order])["u1"]
    assert u1["items"] == list("pqrstu")
    assert u1["timestamps"] == [micros(m) for m in range(6)]


def test_repeat_separated_by_another_item_is_not_collapsed() -> None:
    seqs = sequences_of([("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u1", "a", "view", 2)])
    assert seqs["u1"]["items"] == ["a", "b", "a"]


def test_stronger_event_first_keeps_its_label() -> None:
    seqs = sequences_of([("u1", "a", "purchase", 0), ("u1", "a", "view", 1), ("u1", "b", "click", 2)],
                        event_weights=WEIGHTS)
    assert seqs["u1"]["event_types"] == ["purchase", "click"]
    assert seqs["u1"]["weights"] == [5.0, 2.0]


def test_users_are_separate() -> None:
    # u1's last item and u2's first item are the same: still two users, nothing collapsed across them.
    seqs = sequences_of([("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u2", "b", "click", 2)])
    assert (seqs["u1"]["items"], seqs["u2"]["items"]) == (["a", "b"], ["b"])


# ---------------------------------------------------------------- leave-last-out
def test_holdout_needs_three_items() -> None:
    seqs = sequences_of([
        ("u2", "a", "view", 0), ("u2", "b", "view", 1),
        ("u3", "a", "view", 0), ("u3", "b", "view", 1), ("u3", "c", "view", 2),
        ("u4", "a", "view", 0), ("u4", "a", "click", 1), ("u4", "b", "view", 2),   # 2 items after collapse
        ("u5", "a", "view", 0),
    ])
    assert split_of(seqs["u2"]) == (2, -1, -1, None, None)
    assert split_of(seqs["u3"]) == (1, 1, 2, "b", "c")
    assert split_of(seqs["u4"]) == (2, -1, -1, None, None)
    assert split_of(seqs["u5"]) == (1, -1, -1, None, None)


def test_max_length_keeps_most_recent() -> None:
    u1 = sequences_of([("u1", f"i{n}", "view", n) for n in range(6)], max_length=4)["u1"]
    assert u1["items"] == ["i2", "i3", "i4", "i5"]
    assert u1["timestamps"] == [micros(n) for n in range(2, 6)]
    assert split_of(u1) == (2, 2, 3, "i4", "i5")


def test_max_length_per_user() -> None:
    seqs = sequences_of([("u1", f"i{n}", "view", n) for n in range(5)] + [("u2", "x", "view", 0)], max_length=2)
    assert (seqs["u1"]["items"], seqs["u2"]["items"]) == (["i3", "i4"], ["x"])


# ---------------------------------------------------------------- time split
T_VALID, T_TEST = 10, 20
CUTOFFS = (micros(T_VALID), micros(T_TEST))
TIMED = [
    # before t_valid: a b c | valid window [10, 20): d (exactly at t_valid), e | test: f (exactly at t_test), g
    ("A", "a", "view", 0), ("A", "b", "view", 1), ("A", "c", "view", 2), ("A", "d", "view", 10),
    ("A", "e", "view", 12), ("A", "f", "view", 20), ("A", "g", "view", 25),
    ("A", "a", "search", 5, "early"), ("A", "d", "search", 15, "late"),
    ("B", "a", "view", 0), ("B", "b", "view", 1),                          # all training
    ("C", "x", "view", 11), ("C", "y", "view", 21),                        # nothing before t_valid
    ("D", "a", "view", 0), ("D", "b", "view", 30),                         # empty valid window
    ("E", "a", "view", 15),                                                # one item, nothing before it
    ("F", "a", "view", 0), ("F", "b", "view", 5), ("F", "c", "view", 15),  # no test item
    ("G", "a", "view", 20),                                                # one item in the test window
    ("H", "a", "view", 0), ("H", "b", "view", 10), ("H", "c", "view", 11),  # first of the window is valid
]


def test_time_split_indexes() -> None:
    seqs = sequences_of(TIMED, cutoffs=CUTOFFS)
    assert seqs["A"]["items"] == list("abcdefg")          # sequences keep every item; the split is by index
    assert split_of(seqs["A"]) == (3, 3, 5, "d", "f")
    assert split_of(seqs["B"]) == (2, -1, -1, None, None)
    assert split_of(seqs["C"]) == (0, -1, 1, None, "y")
    assert split_of(seqs["D"]) == (1, -1, 1, None, "b")
    assert split_of(seqs["E"]) == (0, -1, -1, None, None)
    assert split_of(seqs["F"]) == (2, 2, -1, "c", None)
    assert split_of(seqs["G"]) == (0, -1, -1, None, None)
    assert split_of(seqs["H"]) == (1, 1, -1, "b", None)


def test_time_split_targets_come_after_training() -> None:
    for seq in sequences_of(TIMED, cutoffs=CUTOFFS).values():
        train_times = seq["timestamps"][:seq["n_train"]]
        assert all(t < CUTOFFS[0] for t in train_times)
        if seq["valid_index"] >= 0:
            assert CUTOFFS[0] <= seq["timestamps"][seq["valid_index"]] < CUTOFFS[1]
            assert seq["valid_index"] == seq["n_train"]
        if seq["test_index"] >= 0:
            assert seq["timestamps"][seq["test_index"]] >= CUTOFFS[1]
            assert all(t < CUTOFFS[1] for t in seq["timestamps"][:seq["test_index"]])


def test_time_split_applies_after_max_length() -> None:
    rows = [("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u1", "c", "view", 2), ("u1", "d", "view", 10),
            ("u1", "e", "view", 20)]
    u1 = sequences_of(rows, cutoffs=CUTOFFS, max_length=3)["u1"]
    assert u1["items"] == ["c", "d", "e"]
    assert split_of(u1) == (1, 1, 2, "d", "e")


def test_time_split_drops_searches_after_t_valid() -> None:
    timed = sequences_of(TIMED, cutoffs=CUTOFFS)["A"]
    assert (timed["search_queries"], timed["search_items"]) == (["early"], ["a"])
    leave_last_out = sequences_of(TIMED)["A"]
    assert (leave_last_out["search_queries"], leave_last_out["search_items"]) == (["early", "late"], ["a", "d"])


# ---------------------------------------------------------------- searches
def test_searches_are_listed_but_not_sequence_steps() -> None:
    seqs = sequences_of([
        ("u1", None, "search", 0, "boots"),             # no click: not a training search
        ("u1", "b", "search", 1, "red boots"),
        ("u1", "b", "click", 2),
        ("u2", "x", "view", 0),
    ])
    assert seqs["u1"]["items"] == ["b"]
    assert (seqs["u1"]["search_queries"], seqs["u1"]["search_items"]) == (["red boots"], ["b"])
    assert (seqs["u2"]["search_queries"], seqs["u2"]["search_items"]) == ([], [])


def test_search_lists_are_aligned_to_users() -> None:
    table = build([
        ("u0", "z", "search", 0, "zero"),                                       # searches only: empty items
        ("u1", "c", "search", 3, "blue hat"), ("u1", "b", "search", 1, "red boots"), ("u1", "a", "view", 0),
        ("u2", "x", "view", 0),                                                 # no searches
        ("u3", "y", "search", 0, "three"), ("u3", "y", "click", 1),
        ("u4", "w", "search", 0, "four"),                                       # searches only
        ("u5", None, "search", 0, "no click"),                                  # search without click: no row
    ])
    rows = table.to_pylist()
    assert [r["user_id"] for r in rows] == ["u0", "u1", "u2", "u3", "u4"]
    assert [r["search_queries"] for r in rows] == [["zero"], ["red boots", "blue hat"], [], ["three"], ["four"]]
    assert [r["search_items"] for r in rows] == [["z"], ["b", "c"], [], ["y"], ["w"]]
    assert [r["items"] for r in rows] == [[], ["a"], ["x"], ["y"], []]


def test_user_with_only_searches_has_an_empty_sequence_and_no_targets() -> None:
    """Search logs (e.g. Home Depot) have users who only search: their searches still train the query tower."""
    seqs = sequences_of([("u1", "a", "search", 0, "q"), ("u2", "x", "view", 0)])
    assert set(seqs) == {"u1", "u2"}
    u1 = seqs["u1"]
    assert (u1["items"], u1["n_train"], u1["test_index"], u1["test_item"], u1["n_sessions"]) == ([], 0, -1, None, 0)
    assert u1["search_queries"] == ["q"]


def test_empty_events() -> None:
    table = build([])
    assert table.num_rows == 0 and table.column_names == list(SEQUENCE_COLUMNS)
    table = build([], cutoffs=CUTOFFS)
    assert table.num_rows == 0


# ---------------------------------------------------------------- helpers
def test_training_items() -> None:
    assert training_items(["a", "b", "c", "d"], 2) == ["a", "b"]
    assert training_items(["a", "b"], 2) == ["a", "b"]
    assert training_items(["a", "b"], 0) == []
    assert training_items(pd.array(["a", "b", "c"], dtype=object).to_numpy(), 1) == ["a"]


# ---------------------------------------------------------------- training windows
def window_rows(n_items: dict[str, int]) -> list[tuple]:
    """Users with n items each (leave-last-out: n_train = n - 2 from 3 items on)."""
    kinds = ["view", "click", "add_to_cart", "purchase"]
    return [(user, f"{user}-{i}", kinds[i % 4], i) for user, n in n_items.items() for i in range(n)]


def windows_of(table: pa.Table, length: int, stride: int) -> dict[tuple[str, int], list[str]]:
    windows = training_windows(table, length, stride)
    assert windows.column_names == list(WINDOW_COLUMNS)
    return {(w["user_id"], w["start"]): w["items"] for w in windows.to_pylist()}


def test_training_windows_starts() -> None:
    # n_train: w9 -> 7, w10 -> 8, w1 -> 1, w2 -> 2, w4 -> 2
    table = build(window_rows({"w9": 9, "w10": 10, "w1": 1, "w2": 2, "w4": 4}))
    got = windows_of(table, length=3, stride=2)
    assert sorted(got) == sorted([("w9", 0), ("w9", 2), ("w9", 4), ("w10", 0), ("w10", 2), ("w10", 4), ("w10", 5),
                                  ("w2", 0), ("w4", 0)])
    assert got[("w9", 4)] == ["w9-4", "w9-5", "w9-6"]       # ends at the last training item
    assert got[("w10", 5)] == ["w10-5", "w10-6", "w10-7"]
    assert got[("w10", 2)] == ["w10-2", "w10-3", "w10-4"]
    assert got[("w2", 0)] == ["w2-0", "w2-1"]
    assert got[("w4", 0)] == ["w4-0", "w4-1"]               # never the held-out w4-2, w4-3


def test_training_windows_carry_types_and_weights() -> None:
    table = build(window_rows({"w9": 9}), event_weights=WEIGHTS)
    windows = training_windows(table, 3, 2).to_pylist()
    assert [w["start"] for w in windows] == [0, 2, 4]
    assert windows[1]["event_types"] == ["add_to_cart", "purchase", "view"]
    assert windows[1]["weights"] == [3.0, 5.0, 1.0]


def test_training_windows_longer_than_sequence() -> None:
    got = windows_of(build(window_rows({"w9": 9})), length=10, stride=4)
    assert got == {("w9", 0): [f"w9-{i}" for i in range(7)]}


def test_training_windows_time_split_uses_training_part() -> None:
    got = windows_of(build(TIMED, cutoffs=CUTOFFS), length=2, stride=1)
    assert got == {("A", 0): ["a", "b"], ("A", 1): ["b", "c"], ("B", 0): ["a", "b"], ("F", 0): ["a", "b"]}


def test_training_windows_chunked_and_sliced_tables() -> None:
    first = build(window_rows({"w2": 2, "w9": 9}))
    second = build(window_rows({"x5": 5, "x10": 10}))
    expected = {**windows_of(first, 3, 2), **windows_of(second, 3, 2)}
    assert windows_of(pa.concat_tables([first, second]), 3, 2) == expected       # two chunks
    both = pa.concat_tables([first, second]).combine_chunks()
    assert windows_of(both.slice(1), 3, 2) == {k: v for k, v in expected.items() if k[0] != "w2"}


def test_training_windows_none() -> None:
    assert training_windows(build(window_rows({"w1": 1, "w3": 3})), 3, 2).num_rows == 0   # n_train 1 and 1
    empty = training_windows(build([]), 3, 2)
    assert empty.num_rows == 0 and empty.column_names == list(WINDOW_COLUMNS)


# ---------------------------------------------------------------- item counts
def test_item_counts_exclude_held_out_items() -> None:
    table = build([
        *[("u1", i, "view", n) for n, i in enumerate("abcd")],   # counts a, b
        *[("u2", i, "view", n) for n, i in enumerate("bce")],    # counts b
        ("u3", "a", "view", 0), ("u3", "h", "view", 1),          # no hold-out: counts a, h
    ])
    counts = item_counts(table)
    assert list(counts.columns) == ["item_id", "count"]
    assert dict(zip(counts["item_id"], counts["count"])) == {"a": 2, "b": 2, "h": 1}
    assert counts["count"].dtype == "int64"


def test_item_counts_count_repeated_steps() -> None:
    table = build([("u1", "a", "view", 0), ("u1", "b", "view", 1), ("u1", "a", "view", 2),
                   ("u1", "c", "view", 3), ("u1", "d", "view", 4)])      # training part a, b, a
    counts = item_counts(table)
    assert dict(zip(counts["item_id"], counts["count"])) == {"a": 2, "b": 1}


def test_item_counts_time_split() -> None:
    counts = item_counts(build(TIMED, cutoffs=CUTOFFS))
    # training parts: A a b c, B a b, D a, F a b, H a
    assert dict(zip(counts["item_id"], counts["count"])) == {"a": 5, "b": 3, "c": 1}


def test_item_counts_empty() -> None:
    counts = item_counts(build([]))
    assert len(counts) == 0 and list(counts.columns) == ["item_id", "count"]
