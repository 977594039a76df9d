"""Serving lookups: catalog facts, user histories from shards, popularity order."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.schema import CATALOG_SCHEMA
from recsys.serve.catalog import CatalogLookup, load_popularity, load_user_histories


def write_catalog(path: Path) -> Path:
    rows = {
        "item_id": ["a", "b", "c", None],
        "title": ["Pan", None, "Boot", "ghost"],
        "brand": ["x", "y", "z", "w"],
        "category": ["cookware", "cookware", None, "shoes"],
        "description": ["", "", "", ""],
        "price": [1.0, 2.0, 3.0, 4.0],
        "in_stock": [True, False, None, True],
    }
    pq.write_table(pa.table(rows, schema=CATALOG_SCHEMA), path)
    return path


def test_catalog_lookup(tmp_path: Path) -> None:
    cat = CatalogLookup.from_parquet(write_catalog(tmp_path / "catalog.parquet"))
    assert len(cat) == 3  # the null item_id row is not served
    assert cat.known("a") and not cat.known("zzz")
    assert cat.title("a") == "Pan" and cat.title("b") == "" and cat.title("zzz") == ""
    assert cat.category("a") == "cookware" and cat.category("c") == ""
    assert cat.in_stock("a") and not cat.in_stock("b")
    assert not cat.in_stock("c"), "null in_stock must count as out of stock"
    assert not cat.in_stock("zzz")
    assert cat.titles == {"a": "Pan", "b": "", "c": "Boot"}


def test_catalog_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        CatalogLookup.from_parquet(tmp_path / "nope.parquet")
    pq.write_table(pa.table({"item_id": ["a"], "title": ["t"]}), tmp_path / "thin.parquet")
    with pytest.raises(ValueError, match=r"category.*in_stock"):
        CatalogLookup.from_parquet(tmp_path / "thin.parquet")


def test_user_histories_from_shards(tmp_path: Path) -> None:
    seq = tmp_path / "sequences"
    seq.mkdir()
    items = pa.list_(pa.string())
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "items": pa.array([["a", "b"], []], items),
                             "n_sessions": [1, 1]}), seq / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["u3", None], "items": pa.array([["c", None, "a"], ["x"]], items),
                             "n_sessions": [2, 1]}), seq / "part-1.parquet")
    hist = load_user_histories(seq)
    assert hist == {"u1": ["a", "b"], "u2": [], "u3": ["c", "a"]}


def test_user_histories_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sequences"):
        load_user_histories(tmp_path / "sequences")
    seq = tmp_path / "seq"
    seq.mkdir()
    pq.write_table(pa.table({"user_id": ["u1"]}), seq / "part-0.parquet")
    with pytest.raises(ValueError, match="items"):
        load_user_histories(seq)


def test_popularity_order_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "popularity.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "c", "d", "b"],
                             "count": pa.array([5, 7, 5, 0, 1], pa.int64())}), path)
    ordered, counts = load_popularity(path)
    assert ordered == ["b", "a", "c", "d"]  # count desc, ties by id
    assert counts == {"a": 5, "b": 8, "c": 5, "d": 0}


def test_popularity_rejects_negative_counts(tmp_path: Path) -> None:
    path = tmp_path / "popularity.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "count": pa.array([-3], pa.int64())}), path)
    with pytest.raises(ValueError, match=r"item_id='a' has count=-3"):
        load_popularity(path)
