"""The synthetic default data: schema, determinism, and the structure the encoders should learn."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from recsys.data.synthetic import CATEGORIES, generate_synthetic
from recsys.schema import CATALOG_SCHEMA, EVENT_TYPES, EVENTS_SCHEMA, ITEM_EVENT_TYPES


@pytest.fixture(scope="module")
def default_data():
    started = time.perf_counter()
    events, catalog = generate_synthetic()
    return events, catalog, time.perf_counter() - started


@pytest.fixture(scope="module")
def frames(default_data):
    events, catalog, _ = default_data
    return events.to_pandas(), catalog.to_pandas()


def test_schema_matches_contract(default_data):
    events, catalog, _ = default_data
    assert events.schema.equals(EVENTS_SCHEMA)
    assert catalog.schema.equals(CATALOG_SCHEMA)


def test_default_sizes_ids_and_speed(default_data, frames):
    _, _, seconds = default_data
    ev, cat = frames
    assert seconds < 3.0
    assert len(cat) == 1000 and cat.item_id.is_unique
    assert cat.item_id.str.fullmatch(r"SKU-\d{6}").all()
    assert ev.user_id.nunique() == 1500 and ev.user_id.str.fullmatch(r"u\d{5}").all()
    assert 20 <= ev.groupby("user_id").size().mean() <= 40
    assert set(ev.event_type) <= set(EVENT_TYPES)
    assert ev.item_id.dropna().isin(set(cat.item_id)).all()


def test_catalog_text_price_and_stock(frames):
    _, cat = frames
    assert cat.title.is_unique and (cat.title.str.split().str.len() >= 4).all()
    assert set(cat.category) <= {c[0] for c in CATEGORIES}
    assert cat.category.nunique() == len(CATEGORIES)
    assert (cat.description.str.len() > 20).all()
    assert cat.price.notna().all() and (cat.price > 0).all()
    assert 0.02 <= 1 - cat.in_stock.mean() <= 0.09
    # prices follow the category's range
    for name, *_, (lo, hi), _ in CATEGORIES:
        prices = cat.price[cat.category == name]
        assert prices.min() >= lo - 1 and prices.max() <= hi + 1


def test_same_seed_same_data_and_different_seed_differs():
    start = datetime(2023, 5, 1, tzinfo=timezone.utc)
    a_events, a_catalog = generate_synthetic(n_users=200, n_items=150, seed=7, start=start)
    b_events, b_catalog = generate_synthetic(n_users=200, n_items=150, seed=7, start=start)
    c_events, c_catalog = generate_synthetic(n_users=200, n_items=150, seed=8, start=start)
    assert a_events.equals(b_events) and a_catalog.equals(b_catalog)
    assert not a_events.equals(c_events)
    assert not a_catalog.equals(c_catalog)
    assert a_events["timestamp"][0].as_py() >= start


def test_rejects_too_few_items():
    with pytest.raises(ValueError, match="n_items"):
        generate_synthetic(n_users=10, n_items=5)


def test_popularity_is_skewed(frames):
    ev, _ = frames
    counts = ev[ev.event_type.isin(ITEM_EVENT_TYPES)].item_id.value_counts()
    top_decile = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.25  # uniform popularity would give ~0.10


def test_sessions_are_filled_and_separated(frames):
    ev, _ = frames
    assert ev.session_id.notna().all()
    assert (ev.session_id.str.split("-s").str[0] == ev.user_id).all()
    ev = ev.sort_values(["user_id", "timestamp"], kind="stable")
    gap = ev.timestamp.diff().dt.total_seconds()
    same_user = ev.user_id.eq(ev.user_id.shift())
    new_session = ev.session_id.ne(ev.session_id.shift())
    # a new session starts exactly where the 30-minute inactivity rule would start one
    assert ((gap[same_user] > 1800) == new_session[same_user]).all()
    assert (gap[same_user] >= 0).all()
    per_user = ev.groupby("user_id").session_id.nunique()
    assert per_user.min() >= 1 and per_user.mean() > 2


def test_search_events_carry_queries_from_the_clicked_item(frames):
    ev, cat = frames
    search = ev[ev.event_type == "search"]
    sessions = ev.session_id.nunique()
    assert 0.05 < search.session_id.nunique() / sessions < 0.15
    assert search["query"].notna().all() and (search["query"].str.len() > 2).all()
    assert ev.loc[ev.event_type != "search", "query"].isna().all()
    assert ev.loc[ev.event_type != "search", "item_id"].notna().all()
    clicked = search.dropna(subset=["item_id"])
    assert 0 < len(clicked) < len(search)  # some searches end without a click
    text = cat.set_index("item_id")
    words = (text.title + " " + text.category).str.lower()
    overlap = [any(w in words[i] for w in q.split()) for q, i in zip(clicked["query"], clicked.item_id)]
    assert np.mean(overlap) == 1.0
    # a search opens its session
    first = ev.sort_values("timestamp", kind="stable").groupby("session_id").event_type.first()
    assert (first[search.session_id.unique()] == "search").all()


def test_funnel_narrows(frames):
    ev, _ = frames
    n = ev.event_type.value_counts()
    assert n["view"] > n["click"] > n["add_to_cart"] > n["purchase"] > 0


def test_users_concentrate_on_few_categories(frames):
    ev, cat = frames
    items = ev[ev.event_type.isin(ITEM_EVENT_TYPES)].merge(cat[["item_id", "category"]], on="item_id")
    counts = items.groupby(["user_id", "category"]).size().sort_values(ascending=False)
    share = counts.groupby("user_id").head(3).groupby("user_id").sum() / counts.groupby("user_id").sum()
    # uniform interest over 12 categories would put ~25% in the top 3
    assert share.mean() > 0.85
    # sessions stay mostly in one category, which makes the next item predictable from history text
    in_session = items.groupby(["session_id", "category"]).size()
    per_session = in_session.groupby("session_id").max() / in_session.groupby("session_id").sum()
    assert per_session.mean() > 0.8


def test_next_item_shares_words_with_previous(frames):
    ev, cat = frames
    views = ev[ev.event_type == "view"].merge(cat[["item_id", "title"]], on="item_id")
    views = views.sort_values(["session_id", "timestamp"], kind="stable")
    prev = views.groupby("session_id").title.shift()
    pairs = pd.DataFrame({"a": prev, "b": views.title}).dropna()
    shared = [len(set(a.split()) & set(b.split())) for a, b in zip(pairs.a, pairs.b)]
    assert np.mean(shared) > 1.5  # neighbours share noun words (and often attribute/brand)
