"""Adapters for the real data sets in ../shared/data (skipped when that folder is absent).

The `shared_data` fixture (tests/conftest.py) locates ../shared/data beside the repo root, or
$RECSYS_SHARED_DATA, and skips with a clear message when it is missing.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.adapters import (
    ADAPTERS,
    detect_dataset,
    load_amazon_scientific,
    load_homedepot,
    load_instacart,
    read_amazon_inter,
    split_amazon_text,
)
from recsys.schema import CATALOG_SCHEMA, EVENTS_SCHEMA


def _dataset(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"data set {name} not found at {path}")
    return path


def _sequences(events) -> dict[str, list[str]]:
    """user -> item ids in event order (adapters emit each user's events contiguously)."""
    users = events["user_id"].to_numpy(zero_copy_only=False)
    items = events["item_id"].to_pylist()
    starts = [0, *(np.flatnonzero(users[1:] != users[:-1]) + 1), len(users)]
    return {users[a]: items[a:b] for a, b in pairwise(starts)}


def _check_common(events, catalog) -> tuple[pd.DataFrame, pd.DataFrame]:
    assert events.schema.equals(EVENTS_SCHEMA)
    assert catalog.schema.equals(CATALOG_SCHEMA)
    ev, cat = events.to_pandas(), catalog.to_pandas()
    assert cat.item_id.is_unique and cat.title.str.len().gt(0).all()
    assert cat.price.isna().all() and cat.in_stock.all()
    assert ev.item_id.dropna().isin(set(cat.item_id)).all()
    assert ev.session_id.notna().all()
    # events come grouped by user and in time order within a user
    assert ev.user_id.ne(ev.user_id.shift()).sum() == ev.user_id.nunique()
    same_user = ev.user_id.eq(ev.user_id.shift())
    assert (ev.timestamp.diff()[same_user] >= pd.Timedelta(0)).all()
    return ev, cat


@pytest.fixture(scope="module")
def amazon(shared_data):
    path = _dataset(shared_data, "amazon_scientific")
    return path, *load_amazon_scientific(path)


def test_amazon_counts_and_schema(amazon):
    _, events, catalog = amazon
    ev, cat = _check_common(events, catalog)
    assert ev.user_id.nunique() == 8442
    assert len(cat) == 4385
    assert len(ev) == 59384
    assert set(ev.event_type) == {"purchase"}
    sizes = ev.groupby("user_id").size()
    assert sizes.min() == 5 and sizes.max() == 51


def test_amazon_sequence_ends_with_valid_then_test_target(amazon):
    path, events, _ = amazon
    users = pd.read_csv(path / "Scientific.user2index", sep="\t", header=None, names=["uid", "idx"])
    items = pd.read_csv(path / "Scientific.item2index", sep="\t", header=None, names=["asin", "idx"])
    user_of, asin_of = dict(zip(users.idx, users.uid)), dict(zip(items.idx, items.asin))
    seqs = _sequences(events)
    full = _sequences(load_amazon_scientific(path, full_history=True)[0])
    test = read_amazon_inter(path / "Scientific.test.inter")
    valid = read_amazon_inter(path / "Scientific.valid.inter")
    assert len(seqs) == len(test) == len(valid)
    for frame, offset in ((test, -1), (valid, -2)):
        for u, target, history in zip(frame.user_index, frame.target, frame.history):
            uid = user_of[u]
            assert seqs[uid][offset] == full[uid][offset] == asin_of[target]
            # the files' histories are the newest <= 50 items before the target
            assert full[uid][: len(full[uid]) + offset][-50:] == [asin_of[i] for i in history]


def test_amazon_full_history_restores_capped_users(amazon):
    path, events, _ = amazon
    full_events, _ = load_amazon_scientific(path, full_history=True)
    assert full_events.schema.equals(EVENTS_SCHEMA)
    full, capped = _sequences(full_events), _sequences(events)
    longer = [u for u in full if len(full[u]) > len(capped[u])]
    assert len(longer) == 3 and len(full_events) == 59384 + 43
    for u in full:  # the published sequence is always the tail of the full one
        assert full[u][-len(capped[u]):] == capped[u]


def test_amazon_text_split():
    text = ("PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Sanding Roll. Industrial & Scientific "
            "Abrasive & Finishing Products Sanding Rolls. PORTER-CABLE. ")
    assert split_amazon_text(text) == (
        "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Sanding Roll",
        "Industrial & Scientific Abrasive & Finishing Products Sanding Rolls", "PORTER-CABLE")
    assert split_amazon_text("Fan, 120 Volt. . TPI. ") == ("Fan, 120 Volt", "", "TPI")
    assert split_amazon_text("Lugs 8 AWG. Industrial & Scientific Terminals. . ") == (
        "Lugs 8 AWG", "Industrial & Scientific Terminals", "")
    assert split_amazon_text("No. 2 Pencil. Industrial & Scientific Pens. Acme. ")[0] == "No. 2 Pencil"
    assert split_amazon_text(" Industrial & Scientific />. Industrial & Scientific Lab. Dykem. ")[0] == "Dykem"
    assert split_amazon_text("just some text") == ("just some text", "", "")


def test_amazon_catalog_fields(amazon):
    _, _, catalog = amazon
    cat = catalog.to_pandas()
    has_category = cat.category != ""
    assert has_category.mean() > 0.95
    assert cat.category[has_category].str.startswith("Industrial & Scientific").all()
    assert (cat.brand != "").mean() > 0.99
    assert not cat.title.str.contains("/>").any()


def test_homedepot(shared_data):
    path = _dataset(shared_data, "homedepot")
    ev, cat = _check_common(*load_homedepot(path))
    raw = pd.read_csv(path / "train.csv", encoding="latin-1")
    assert len(raw) == 74067 and raw.search_term.nunique() == 11795
    assert len(cat) == 54667
    assert len(ev) == int((raw.relevance >= 2.5).sum())
    assert set(ev.event_type) == {"search"} and ev["query"].notna().all() and ev.item_id.notna().all()
    assert ev.user_id.str.fullmatch(r"hd-q\d+").all()
    assert (ev.groupby("user_id")["query"].nunique() == 1).all()  # one pseudo-user per query
    assert ev["query"].nunique() == ev.user_id.nunique() == raw[raw.relevance >= 2.5].search_term.nunique()
    first = ev.iloc[0]
    assert (first.user_id, first["query"], first.item_id) == ("hd-q0", "angle bracket", "100001")


def test_instacart(shared_data):
    path = _dataset(shared_data, "instacart")
    ev, cat = _check_common(*load_instacart(path))
    assert len(cat) == 49688
    assert len(ev) == 150000
    assert ev.user_id.nunique() == 593
    assert ev.session_id.nunique() == 15183
    assert ev.item_id.nunique() == 14190
    assert set(ev.event_type) == {"add_to_cart"}
    assert cat.category.str.fullmatch(r"[^>]+ > [^>]+").all()
    assert cat.set_index("item_id").loc["1", "category"] == "snacks > cookies cakes"
    # one order is one session, and orders never interleave in time
    spans = ev.groupby(["user_id", "session_id"]).timestamp.agg(["min", "max"]).sort_values("min")
    for _, user_spans in spans.groupby(level=0):
        assert (user_spans["min"].iloc[1:].to_numpy() > user_spans["max"].iloc[:-1].to_numpy()).all()


def test_detect_dataset(shared_data, tmp_path):
    for name in ADAPTERS:
        if (shared_data / name).is_dir():
            assert detect_dataset(shared_data / name) == name
    assert detect_dataset(tmp_path) is None
    assert detect_dataset(tmp_path / "missing") is None
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    assert detect_dataset(tmp_path) is None
    assert set(ADAPTERS) == {"amazon_scientific", "homedepot", "instacart"}
    assert ADAPTERS["instacart"] is load_instacart


def test_source_min_relevance_reaches_the_homedepot_adapter_only(shared_data, tmp_path):
    from recsys.data.config import SourceConfig
    from recsys.data.outputs import materialize_source

    path = _dataset(shared_data, "homedepot")
    events_path, _, _, _ = materialize_source(SourceConfig(path=str(path), min_relevance=2.0), tmp_path / "hd")
    raw = pd.read_csv(path / "train.csv", encoding="latin-1")
    assert len(pd.read_parquet(events_path)) == int((raw.relevance >= 2.0).sum())
    with pytest.raises(ValueError, match="source.min_relevance=2.0 applies to graded search judgments"):
        materialize_source(SourceConfig(path=str(_dataset(shared_data, "instacart")), min_relevance=2.0),
                           tmp_path / "ic")
