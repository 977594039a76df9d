"""The served-recommendation protocol really hides the targets: preprocess -> cut -> preprocess of the cut,
and no output of the second data version holds a target interaction.

Synthetic data on purpose: its steps are view -> click -> cart -> purchase funnels inside sessions, and
search clicks on some users' last item are planted, so the cut must hold out a whole step (not just its last
event) and the search click that led to it for the leak checks below to pass. The test fails when the cut
leaves the target's events in the log (tried: whole target kept, only its last event held, search clicks kept).
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.holdout_cut import HoldoutCutConfig, cut_user_events, run_holdout_cut
from recsys.data.text import format_history_text
from recsys.schema import EVENTS_SCHEMA

pytestmark = pytest.mark.timeout(180)

MAX_LENGTH = 20   # small, so the sequences' cap to the most recent items is exercised too


def _read(directory, columns=None) -> pd.DataFrame:
    return pads.dataset(str(directory), format="parquet").to_table(columns=columns).to_pandas()


def _rows(frame: pd.DataFrame) -> Counter:
    """Event rows as a multiset of tuples (query/session may be null)."""
    cols = ["user_id", "item_id", "event_type", "timestamp", "query", "session_id"]
    return Counter(tuple(None if pd.isna(v) else v for v in row) for row in frame[cols].itertuples(index=False))


def _train_part(items: list[str]) -> list[str]:
    """preprocess's leave-last-out: what training and popularity may see of a (capped) sequence."""
    return items[:len(items) - 2] if len(items) >= 3 else items


def test_cut_holds_whole_last_step_and_its_search_click():
    """Pure: ties at the latest time go to the strongest event; a step's view/click/purchase leave together
    with the search click that led to it; users with fewer than min_history steps are skipped."""
    rows = [  # user, item, event type, minute, query, session
        ("a", "i1", "view", 0, None, "a1"), ("a", "i2", "view", 60, None, "a2"),
        ("a", "i4", "view", 120, None, "a3"), ("a", "i3", "purchase", 120, None, "a3"),
        ("c", "x1", "view", 0, None, "c1"), ("c", "x2", "view", 60, None, "c2"),
        ("c", "x3", "search", 120, "x three", "c3"), ("c", "x3", "view", 121, None, "c3"),
        ("c", "x3", "click", 122, None, "c3"), ("c", "x3", "purchase", 123, None, "c3"),
        ("b", "i1", "view", 0, None, "b1"), ("b", "i2", "view", 5, None, "b1")]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "query", "session_id"])
    events["timestamp"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(events["timestamp"], unit="m")
    cut = cut_user_events(events.iloc[::-1], min_history=3)   # any input order
    # a: at minute 120 the purchase of i3 ties with a view of i4; the purchase is stronger, so it is last.
    assert cut.targets.to_pylist() == [{"user_id": "a", "item_id": "i3", "history": ["i1", "i2", "i4"]},
                                       {"user_id": "c", "item_id": "x3", "history": ["x1", "x2"]}]
    assert sorted(zip(cut.held["user_id"], cut.held["event_type"])) == [
        ("a", "purchase"), ("c", "click"), ("c", "purchase"), ("c", "search"), ("c", "view")]
    assert list(cut.kept["item_id"]) == ["i2", "i1", "x2", "x1", "i4", "i2", "i1"]   # input order kept
    assert cut.stats == {"users": 3, "users_with_items": 3, "targets": 2, "users_skipped": 1, "events_in": 12,
                         "events_kept": 7, "events_held": 5, "search_clicks_held": 1}


def _planted_log(tmp_path, n_planted: int = 20) -> tuple[str, str, dict[str, tuple[str, str]]]:
    """Synthetic events and catalog as files, plus a search click on each of the first n_planted users'
    last item, just before that item's last event (the synthetic shop's own searches open sessions, so
    they never click a user's final item). Query texts are unique so a leaked pair names its user."""
    from recsys.data.synthetic import generate_synthetic

    events, catalog = generate_synthetic(n_users=300, n_items=200, seed=3)
    frame = events.to_pandas()
    last = frame[frame["item_id"].notna() & (frame["event_type"] != "search")].groupby("user_id").tail(1)
    planted = last.head(n_planted).assign(event_type="search", query=lambda f: "planted query " + f["user_id"],
                                          timestamp=lambda f: f["timestamp"] - pd.Timedelta(seconds=1))
    pq.write_table(pa.Table.from_pandas(pd.concat([frame, planted], ignore_index=True), schema=EVENTS_SCHEMA,
                                        preserve_index=False), tmp_path / "events.parquet")
    pq.write_table(catalog, tmp_path / "catalog.parquet")
    clicks = {u: (q, i) for u, q, i in zip(planted["user_id"], planted["query"], planted["item_id"])}
    return str(tmp_path / "events.parquet"), str(tmp_path / "catalog.parquet"), clicks


def test_second_data_version_never_sees_a_target(ray_cluster, recsys_home, tmp_path):
    from recsys.data.pipeline import run_preprocess

    base = {"sequences": {"max_length": MAX_LENGTH}, "num_partitions": 4}
    events_path, catalog_path, planted = _planted_log(tmp_path)
    v1 = run_preprocess(PreprocessConfig(source=SourceConfig(path=events_path, catalog=catalog_path), **base))
    cut = run_holdout_cut(HoldoutCutConfig(data=v1["path"]))
    counts = cut["counts"]
    cut_dir = recsys_home / "artifacts" / "cuts" / cut["version"]
    v2 = run_preprocess(PreprocessConfig(source=SourceConfig(path=str(cut_dir / "events"),
                                                             catalog=str(cut_dir / "catalog.parquet")), **base))

    # Counts survive the round trip: the cut's events are already valid and cleaned, and taking a user's
    # final events away cannot create a duplicate, a rapid repeat or a bot, so nothing is dropped.
    assert counts["targets"] > 200 and counts["events_in"] == v1["events"]["rows_kept"]
    assert counts["search_clicks_held"] >= 20   # the planted ones, at least
    assert counts["events_in"] == counts["events_kept"] + counts["events_held"]
    ev2 = v2["events"]
    assert (ev2["rows_in"], ev2["rows_quarantined"], ev2["rows_dropped"]) == (counts["events_kept"], 0, 0)

    targets = pq.read_table(cut_dir / "targets.parquet").to_pandas()
    target_of = dict(zip(targets["user_id"], targets["item_id"]))
    history_of = {u: list(h) for u, h in zip(targets["user_id"], targets["history"])}

    # events/: exactly the cut's events, none of the held-out rows.
    events2 = _read(v2["path"] + "/events")
    assert _rows(events2) == _rows(_read(cut_dir / "events"))
    assert not set(_rows(events2)) & set(_rows(pq.read_table(cut_dir / "target_events.parquet").to_pandas()))

    # sequences/: a target user's sequence is their history (capped as preprocess caps it), so the
    # co-occurrence source and the service's user-state seed, which read whole sequences, never see the
    # target. The first version agrees on what the target is: its leave-last-out test item.
    seq1 = _read(v1["path"] + "/sequences").set_index("user_id")
    seq2 = _read(v2["path"] + "/sequences").set_index("user_id")
    assert set(seq2.index) == set(seq1.index)
    for user, target in target_of.items():
        history = history_of[user]
        assert list(seq2.at[user, "items"]) == history[-MAX_LENGTH:], user
        assert seq1.at[user, "test_item"] == target and list(seq1.at[user, "items"]) == (history + [target])[
            -MAX_LENGTH:], user
    for user in set(seq1.index) - set(target_of):     # skipped users: untouched
        assert list(seq2.at[user, "items"]) == list(seq1.at[user, "items"]), user

    # popularity.parquet: preprocess counts the training part of each sequence (items[:n-2] when n >= 3), so
    # the second version must count exactly the training part of the histories. A leaked target would make
    # the sequence one longer and count history[-2] once more.
    expected: Counter = Counter()
    for user in seq1.index:
        items = history_of[user][-MAX_LENGTH:] if user in target_of else list(seq1.at[user, "items"])
        expected.update(_train_part(items))
    popularity = pq.read_table(v2["path"] + "/popularity.parquet").to_pandas()
    assert dict(zip(popularity["item_id"], popularity["count"])) == dict(expected)

    # ranking_examples: a target user's positives are their own history items at their positions.
    ranking = _read(v2["path"] + "/ranking_examples")
    positives = ranking[(ranking["label"] == 1) & ranking["user_id"].isin(target_of)]
    assert len(positives) > 0
    for user, position, item in zip(positives["user_id"], positives["position"], positives["item_id"]):
        capped = history_of[user][-MAX_LENGTH:]
        assert position < len(capped) and capped[position] == item, (user, position, item)

    # train_pairs (no user column): the pair "this user's history -> the target" and the search pairs of
    # held-out search clicks are absent, unless the first version has them too (another user's pair: the
    # first version never trained on a user's own test item).
    catalog = pq.read_table(cut_dir / "catalog.parquet").to_pandas()
    titles = dict(zip(catalog["item_id"], catalog["title"]))
    pairs1 = _read(v1["path"] + "/train_pairs")
    pairs2 = _read(v2["path"] + "/train_pairs")
    seen1 = set(zip(pairs1["kind"], pairs1["anchor_text"], pairs1["positive_item_id"]))
    seen2 = set(zip(pairs2["kind"], pairs2["anchor_text"], pairs2["positive_item_id"]))
    leaks = {("next_item", format_history_text([titles[i] for i in history_of[u][-MAX_LENGTH:]]), t)
             for u, t in target_of.items()}
    assert all(target_of[u] == item for u, (_, item) in planted.items())   # planted on the target
    leaks |= {("search", query, item) for query, item in planted.values()}
    assert not (leaks & seen2) - seen1
