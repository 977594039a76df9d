"""Training sets from sequences: leak-free retrieval pairs, negative sampling and CTR/ranking examples."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from event_frames import build

from recsys.data.examples import make_training_pairs, negative_distribution, ranking_examples
from recsys.schema import RANKING_COLUMNS, SEQUENCE_COLUMNS, TRAIN_PAIR_COLUMNS

ITEMS = list("abcdefgh")
TITLES = {i: i.upper() for i in ITEMS}
TEXTS = {i: f"{i.upper()}. brand. category" for i in ITEMS}

SEQUENCE_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("items", pa.list_(pa.string())), ("event_types", pa.list_(pa.string())),
    ("weights", pa.list_(pa.float32())), ("timestamps", pa.list_(pa.int64())), ("n_sessions", pa.int64()),
    ("n_train", pa.int64()), ("valid_index", pa.int64()), ("test_index", pa.int64()),
    ("valid_item", pa.string()), ("test_item", pa.string()),
    ("search_queries", pa.list_(pa.string())), ("search_items", pa.list_(pa.string())),
])


def seq_table(users: list[dict]) -> pa.Table:
    """Hand-built sequence rows; leave-last-out split unless n_train/valid_index/test_index are given."""
    rows = []
    for u in users:
        items = u["items"]
        n, hold = len(items), len(items) >= 3
        n_train = u.get("n_train", n - 2 if hold else n)
        valid_index = u.get("valid_index", n - 2 if hold else -1)
        test_index = u.get("test_index", n - 1 if hold else -1)
        rows.append({"user_id": u["user_id"], "items": items, "event_types": ["view"] * n, "weights": [1.0] * n,
                     "timestamps": list(range(n)), "n_sessions": 1, "n_train": n_train,
                     "valid_index": valid_index, "test_index": test_index,
                     "valid_item": items[valid_index] if valid_index >= 0 else None,
                     "test_item": items[test_index] if test_index >= 0 else None,
                     "search_queries": u.get("queries", []), "search_items": u.get("search_items", [])})
    assert list(SEQUENCE_SCHEMA.names) == list(SEQUENCE_COLUMNS)
    return pa.Table.from_pylist(rows, schema=SEQUENCE_SCHEMA)


def pair_values(pairs: pd.DataFrame, *columns: str) -> list[list]:
    return pairs[list(columns)].values.tolist()


# ---------------------------------------------------------------- training pairs
def test_next_item_pairs_never_see_held_out_items() -> None:
    pairs = make_training_pairs(seq_table([{"user_id": "u1", "items": list("abcde")}]), TEXTS, TITLES,
                                max_history_items=8)
    assert list(pairs.columns) == list(TRAIN_PAIR_COLUMNS)
    assert pairs.values.tolist() == [
        ["next_item", "A", "b", TEXTS["b"]],
        ["next_item", "B | A", "c", TEXTS["c"]],      # most recent first
    ]
    assert not set(pairs["positive_item_id"]) & {"d", "e"}
    for anchor in pairs["anchor_text"]:
        assert not {"D", "E"} & set(anchor.split(" | "))


def test_pairs_use_n_train_of_a_time_split() -> None:
    # Time split: only a, b are before t_valid; c is the valid target, d the test target.
    seqs = seq_table([{"user_id": "u1", "items": list("abcd"), "n_train": 2, "valid_index": 2, "test_index": 3}])
    assert pair_values(make_training_pairs(seqs, TEXTS, TITLES), "anchor_text", "positive_item_id") == [["A", "b"]]
    seqs = seq_table([{"user_id": "u1", "items": list("abcd"), "n_train": 0, "valid_index": -1, "test_index": 1}])
    assert len(make_training_pairs(seqs, TEXTS, TITLES)) == 0


def test_search_pairs_skip_held_out_and_unknown_items() -> None:
    seqs = seq_table([{"user_id": "u1", "items": list("abcde"),
                       "queries": ["red boots", "blue hat", "green cup", "mystery"],
                       "search_items": ["b", "e", "d", "zzz"]}])
    pairs = make_training_pairs(seqs, TEXTS, TITLES)
    search = pairs[pairs["kind"] == "search"]
    assert pair_values(search, "anchor_text", "positive_item_id") == [["red boots", "b"]]
    assert search["positive_text"].tolist() == [TEXTS["b"]]


def test_user_without_holdout_trains_on_everything() -> None:
    pairs = make_training_pairs(seq_table([{"user_id": "u1", "items": ["a", "b"]}]), TEXTS, TITLES)
    assert pair_values(pairs, "anchor_text", "positive_item_id") == [["A", "b"]]


def test_max_pairs_per_user_keeps_the_most_recent() -> None:
    seqs = seq_table([{"user_id": "u1", "items": list("abcdefgh")}])   # visible a..f
    pairs = make_training_pairs(seqs, TEXTS, TITLES, max_history_items=2, max_pairs_per_user=2)
    assert pairs["positive_item_id"].tolist() == ["e", "f"]
    assert pairs["anchor_text"].tolist() == ["D | C", "E | D"]        # max_history_items=2
    all_pairs = make_training_pairs(seqs, TEXTS, TITLES, max_pairs_per_user=50)
    assert all_pairs["positive_item_id"].tolist() == list("bcdef")


def test_pairs_skip_positives_without_text_and_empty_anchors() -> None:
    texts = {k: v for k, v in TEXTS.items() if k != "c"}
    titles = {**TITLES, "a": ""}
    pairs = make_training_pairs(seq_table([{"user_id": "u1", "items": list("abcdfg")}]), texts, titles)
    # t=1: anchor from 'a' is empty -> skipped; t=2: 'c' has no text -> skipped
    assert pair_values(pairs, "anchor_text", "positive_item_id") == [["C | B", "d"]]


def test_pairs_end_to_end_from_events() -> None:
    seqs = build([("u1", i, "view", n * 60) for n, i in enumerate("abcd")] +
                 [("u1", "b", "search", 1, "bee"), ("u1", "d", "search", 181, "dee")])
    pairs = make_training_pairs(seqs, TEXTS, TITLES)
    assert pair_values(pairs, "kind", "positive_item_id") == [["next_item", "b"], ["search", "b"]]


def test_held_out_queries_make_no_training_pairs_and_are_counted() -> None:
    """search_holdout_fraction=0.2: "bee" and "dee" are held-out query strings, "red boots" and "blue shoe"
    are not (pinned in test_search_eval). A user whose only searches are held out has no sequence row."""
    from recsys.data.config import PreprocessConfig
    from recsys.data.stages import process_users
    from recsys.schema import EVENTS_SCHEMA
    from tests.event_frames import events

    rows = [("u1", i, "view", n * 60) for n, i in enumerate("abcd")] + [
        ("u1", "a", "search", 1, "red boots"), ("u1", "c", "search", 121, "bee"),
        ("u2", "b", "search", 0, "bee"), ("u2", "c", "search", 5, "dee"), ("u2", "a", "search", 9, "dee"),
        ("u3", "b", "search", 0, "blue shoe"), ("u3", None, "search", 1, "dee")]       # no click: not counted
    everything = build(rows)
    assert sorted(q for qs in everything.column("search_queries").to_pylist() for q in qs) == [
        "bee", "bee", "blue shoe", "dee", "dee", "red boots"]
    seqs = build(rows, search_holdout_fraction=0.2)
    assert {r["user_id"]: r["search_queries"] for r in seqs.to_pylist()} == {"u1": ["red boots"], "u3": ["blue shoe"]}
    search = make_training_pairs(seqs, TEXTS, TITLES).query("kind == 'search'")
    assert sorted(search["anchor_text"]) == ["blue shoe", "red boots"]

    cfg = PreprocessConfig(split={"search_holdout_fraction": 0.2})
    table = pa.Table.from_pandas(events(rows), schema=EVENTS_SCHEMA, preserve_index=False)
    stats = process_users(table, cfg, None)["stats"]
    assert stats["search_holdout"] == {"held_out_search_clicks": 4, "held_out_user_queries": 3}
    assert stats["users"] == 2


def test_pairs_from_built_sequences_keep_users_without_holdout() -> None:
    seqs = build([
        ("u1", "a", "view", 0), ("u1", "b", "view", 1),                           # no hold-out
        ("u2", "a", "view", 0), ("u2", "b", "view", 1), ("u2", "c", "view", 2),  # a | b, c held out
    ])
    pairs = make_training_pairs(seqs, TEXTS, TITLES)
    assert pair_values(pairs, "anchor_text", "positive_item_id") == [["A", "b"]]


def test_pairs_empty() -> None:
    pairs = make_training_pairs(seq_table([]), TEXTS, TITLES)
    assert len(pairs) == 0 and list(pairs.columns) == list(TRAIN_PAIR_COLUMNS)


# ---------------------------------------------------------------- negative distribution
def test_uniform_distribution() -> None:
    ids, probs = negative_distribution(np.array(["c", "a", "b"], dtype=object), {"a": 9}, "uniform", 0.75)
    assert ids.tolist() == ["a", "b", "c"]
    assert probs.tolist() == pytest.approx([1 / 3] * 3)


def test_popularity_distribution_add_one() -> None:
    ids, probs = negative_distribution(np.array(["c", "a", "b"], dtype=object), {"a": 3, "c": 1, "zzz": 50},
                                       "popularity", 1.0)
    assert ids.tolist() == ["a", "b", "c"]
    assert probs.tolist() == pytest.approx([4 / 7, 1 / 7, 2 / 7])   # (count + 1) ** 1, items off-catalog ignored


def test_popularity_distribution_properties() -> None:
    counts = {"a": 1000, "b": 100, "c": 10, "d": 1}
    catalog = np.array(["e", "d", "c", "b", "a"], dtype=object)
    ids, probs = negative_distribution(catalog, counts, "popularity", 0.75)
    assert probs.sum() == pytest.approx(1.0)
    assert (probs > 0).all()                                  # 'e' was never seen in training
    by_id = dict(zip(ids, probs))
    assert by_id["a"] > by_id["b"] > by_id["c"] > by_id["d"] > by_id["e"]
    _, sharp = negative_distribution(catalog, counts, "popularity", 1.0)
    assert probs.max() < sharp.max()                          # alpha < 1 flattens the head


def test_negative_distribution_empty_catalog() -> None:
    for method in ("uniform", "popularity"):
        ids, probs = negative_distribution(np.array([], dtype=object), {}, method, 0.75)
        assert len(ids) == 0 and len(probs) == 0


# ---------------------------------------------------------------- ranking examples
CATALOG = np.array([f"i{n:02d}" for n in range(20)], dtype=object)


def uniform() -> tuple[np.ndarray, np.ndarray]:
    return negative_distribution(CATALOG, {}, "uniform", 1.0)


def ranking(seqs: pa.Table, item_ids: np.ndarray | None = None, probs: np.ndarray | None = None,
            max_positives: int = 10, k: int = 3, imbalance: str = "none", seed: int = 0) -> list[dict]:
    if item_ids is None:
        item_ids, probs = uniform()
    table = ranking_examples(seqs, item_ids, probs, max_positives, k, imbalance, seed)
    assert table.column_names == list(RANKING_COLUMNS)
    return table.to_pylist()


def user_items(n: int, offset: int = 0) -> list[str]:
    return [str(CATALOG[(offset + i) % len(CATALOG)]) for i in range(n)]


def groups(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """(user, position) -> {'pos': [positive rows], 'neg': [negative rows]}."""
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
        g = out.setdefault((r["user_id"], r["position"]), {"pos": [], "neg": []})
        g["pos" if r["label"] == 1 else "neg"].append(r)
    return out


def test_ranking_positives_are_recent_training_steps() -> None:
    seqs = seq_table([{"user_id": "u1", "items": user_items(6)}])          # n_train 4: i00..i03
    rows = ranking(seqs, max_positives=2, k=3)
    assert [(r["position"], r["item_id"]) for r in rows if r["label"] == 1] == [(2, "i02"), (3, "i03")]
    assert len(rows) == 2 * (1 + 3)
    rows = ranking(seqs, max_positives=10, k=3)
    # position 0 has no context, positions 4 and 5 are the held-out valid/test targets
    assert [(r["position"], r["item_id"]) for r in rows if r["label"] == 1] == [(1, "i01"), (2, "i02"), (3, "i03")]


def test_ranking_uses_n_train_of_a_time_split() -> None:
    seqs = seq_table([{"user_id": "u1", "items": user_items(6), "n_train": 2, "valid_index": 2, "test_index": 5}])
    rows = ranking(seqs)
    assert [(r["position"], r["item_id"]) for r in rows if r["label"] == 1] == [(1, "i01")]


def test_ranking_users_without_context_have_no_examples() -> None:
    seqs = seq_table([{"user_id": "u1", "items": ["i00"]},
                      {"user_id": "u2", "items": user_items(3)},            # n_train 1
                      {"user_id": "u3", "items": user_items(4), "n_train": 0, "valid_index": -1, "test_index": 1}])
    assert ranking(seqs) == []


def test_ranking_each_positive_has_k_negatives_from_the_catalog() -> None:
    seqs = seq_table([{"user_id": f"u{n}", "items": user_items(8, offset=n)} for n in range(12)])
    rows = ranking(seqs, max_positives=4, k=5)
    by_step = groups(rows)
    assert len(by_step) == 12 * 4
    for g in by_step.values():
        assert len(g["pos"]) == 1 and len(g["neg"]) == 5
        positive = g["pos"][0]["item_id"]
        assert all(r["item_id"] != positive for r in g["neg"])
        assert all(r["item_id"] in set(CATALOG) for r in g["neg"])


def test_ranking_negative_never_equals_positive_under_heavy_skew() -> None:
    # Almost all probability mass on i05, which is also the positive at positions 1..5.
    item_ids, probs = negative_distribution(CATALOG, {"i05": 10**9}, "popularity", 1.0)
    seqs = seq_table([{"user_id": f"u{n}", "items": ["i00"] + ["i05"] * 5 + ["i01", "i02"]} for n in range(10)])
    rows = ranking(seqs, item_ids, probs, max_positives=10, k=4)
    negatives = [r for r in rows if r["label"] == 0]
    assert len(negatives) == 10 * 5 * 4
    assert all(r["item_id"] != "i05" for r in negatives)
    assert all(r["label"] == 1 for r in rows if r["item_id"] == "i05")


@pytest.mark.parametrize("imbalance,pos_weight,pos_repeat", [("none", 1.0, 1), ("reweight", 3.0, 1),
                                                              ("resample", 1.0, 3)])
def test_ranking_imbalance(imbalance: str, pos_weight: float, pos_repeat: int) -> None:
    seqs = seq_table([{"user_id": "u1", "items": user_items(6)}, {"user_id": "u2", "items": user_items(5, 7)}])
    rows = ranking(seqs, max_positives=10, k=3, imbalance=imbalance)
    positives = [r for r in rows if r["label"] == 1]
    negatives = [r for r in rows if r["label"] == 0]
    n_pos = 3 + 2                                                  # u1: positions 1..3, u2: 1..2
    assert len(positives) == n_pos * pos_repeat
    assert len(negatives) == n_pos * 3
    assert {r["weight"] for r in positives} == {pos_weight}
    assert {r["weight"] for r in negatives} == {1.0}
    for g in groups(rows).values():
        assert len(g["pos"]) == pos_repeat and len({r["item_id"] for r in g["pos"]}) == 1
    # Class mass: reweight and resample both balance positives against their negatives.
    if imbalance != "none":
        assert sum(r["weight"] for r in positives) == sum(r["weight"] for r in negatives)
    # The negatives do not depend on how the imbalance is handled.
    baseline = [r for r in ranking(seqs, max_positives=10, k=3, imbalance="none") if r["label"] == 0]
    assert [(r["user_id"], r["position"], r["item_id"]) for r in negatives] == \
        [(r["user_id"], r["position"], r["item_id"]) for r in baseline]


def test_ranking_is_deterministic() -> None:
    seqs = seq_table([{"user_id": f"u{n}", "items": user_items(7, offset=3 * n)} for n in range(5)])
    item_ids, probs = uniform()
    first = ranking_examples(seqs, item_ids, probs, 10, 4, "reweight", 7)
    again = ranking_examples(seqs, item_ids, probs, 10, 4, "reweight", 7)
    assert first.equals(again)
    other_seed = ranking_examples(seqs, item_ids, probs, 10, 4, "reweight", 8)
    assert first.column("item_id").to_pylist() != other_seed.column("item_id").to_pylist()


def test_ranking_user_rows_do_not_depend_on_other_users() -> None:
    u1 = {"user_id": "u1", "items": user_items(9, offset=2)}
    alone = seq_table([u1])
    together = seq_table([{"user_id": "u0", "items": user_items(6)}, u1,
                          {"user_id": "u2", "items": user_items(12, offset=5)}])
    rows_alone = ranking(alone, max_positives=5, k=4, seed=3)
    rows_together = [r for r in ranking(together, max_positives=5, k=4, seed=3) if r["user_id"] == "u1"]
    assert rows_alone and rows_alone == rows_together
    # ... and on the order of the users in the table
    reordered = seq_table([{"user_id": "u2", "items": user_items(12, offset=5)}, u1,
                           {"user_id": "u0", "items": user_items(6)}])
    assert [r for r in ranking(reordered, max_positives=5, k=4, seed=3) if r["user_id"] == "u1"] == rows_alone


def test_ranking_from_built_sequences_matches_hand_built() -> None:
    built = build([("u1", item, "view", n) for n, item in enumerate(user_items(6))])
    hand = seq_table([{"user_id": "u1", "items": user_items(6)}])
    assert ranking(built) == ranking(hand)


def test_ranking_uniform_draws_cover_the_catalog_evenly() -> None:
    seqs = seq_table([{"user_id": f"user-{n}", "items": user_items(7, offset=n)} for n in range(100)])
    rows = ranking(seqs, max_positives=5, k=8)
    drawn = Counter(r["item_id"] for r in rows if r["label"] == 0)
    assert sum(drawn.values()) == 100 * 4 * 8                      # n_train 5 -> positions 1..4
    assert set(drawn) == set(CATALOG)
    mean = sum(drawn.values()) / len(CATALOG)
    assert all(0.6 * mean < c < 1.4 * mean for c in drawn.values()), drawn


def test_ranking_popularity_draws_favour_popular_items() -> None:
    counts = {"i19": 5000, "i18": 500, "i17": 50}
    item_ids, probs = negative_distribution(CATALOG, counts, "popularity", 1.0)
    seqs = seq_table([{"user_id": f"user-{n}", "items": user_items(7, offset=n % 10)} for n in range(100)])
    rows = ranking(seqs, item_ids, probs, max_positives=5, k=8)                # positives are i00..i15
    drawn = Counter(r["item_id"] for r in rows if r["label"] == 0)
    assert [item for item, _ in drawn.most_common(3)] == ["i19", "i18", "i17"]
    assert drawn["i19"] > 0.8 * sum(drawn.values())


def test_ranking_sample_prob_is_the_item_probability() -> None:
    counts = {"i01": 40, "i02": 10, "i03": 3}
    item_ids, probs = negative_distribution(CATALOG, counts, "popularity", 0.75)
    prob_of = dict(zip(item_ids, probs))
    seqs = seq_table([{"user_id": "u1", "items": user_items(8)},
                      {"user_id": "u2", "items": ["i00", "zzz", "i04", "i05", "i06"]}])    # zzz: not in the catalog
    rows = ranking(seqs, item_ids, probs, max_positives=10, k=3)
    for r in rows:
        assert r["sample_prob"] == pytest.approx(prob_of.get(r["item_id"], 0.0), rel=1e-12)
    assert [r["sample_prob"] for r in rows if r["item_id"] == "zzz"] == [0.0]


def test_ranking_empty_inputs() -> None:
    assert ranking(seq_table([])) == []
    assert ranking(build([])) == []
    seqs = seq_table([{"user_id": "u1", "items": user_items(5)}])
    rows = ranking(seqs, np.array([], dtype=object), np.array([], dtype=np.float64), k=3)
    assert [(r["position"], r["item_id"], r["label"], r["weight"]) for r in rows] == [
        (1, "i01", 1, 1.0), (2, "i02", 1, 1.0)]


def test_negatives_are_never_any_of_the_users_own_items_including_held_out_targets() -> None:
    """Labelling the user's test item 'not clicked' would teach the ranker to bury the answer."""
    item_ids, probs = negative_distribution(CATALOG, {}, "uniform", 0.75)
    seqs = seq_table([{"user_id": f"u{n}", "items": list(CATALOG[n % 5: n % 5 + 12])} for n in range(30)])
    rows = ranking(seqs, item_ids, probs, max_positives=10, k=6)
    own = {r["user_id"]: set(r["items"]) for r in seqs.to_pylist()}
    negatives = [r for r in rows if r["label"] == 0]
    assert negatives and all(r["item_id"] not in own[r["user_id"]] for r in negatives)
    positives = [r for r in rows if r["label"] == 1]
    assert len(negatives) == 6 * len(positives)
