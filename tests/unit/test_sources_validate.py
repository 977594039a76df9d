"""Raw readers (CSV / JSONL / Parquet) + row validation: nothing is dropped silently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.sources import (
    META_COLUMNS,
    SourceError,
    detect_format,
    list_input_files,
    parse_raw_records,
    read_raw_table,
)
from recsys.data.validate import parse_timestamps, validate_catalog, validate_events
from recsys.schema import CATALOG_COLUMNS, EVENT_COLUMNS, QUARANTINE_COLUMNS

INSTANT = pd.Timestamp("2023-11-14 22:13:20", tz="UTC")          # = epoch 1700000000 s
INSTANT_US = pd.Timestamp("2023-11-14 22:13:20.123456", tz="UTC")  # = epoch 1700000000123456 us

CSV_EVENTS = b"\n".join([
    b"user_id,item_id,event_type,timestamp,query,session_id",      # 1 header
    b"u1,i1,view,1700000000,,",                                     # 2 ok: epoch seconds
    b"u1,i2,click,1700000000000,,s9",                               # 3 ok: epoch ms, given session
    b"u1,i3,purchase,1700000000000000,,",                           # 4 ok: epoch us
    b"",                                                            # 5 blank: not a row
    b"u1,i1,add_to_cart,2023-11-14T22:13:20Z,,",                    # 6 ok: ISO-8601
    b",i1,view,1700000000,,",                                       # 7 missing user_id
    b"u2,i1,teleport,1700000000,,",                                 # 8 unknown event type
    b"u2,i1,view,yesterday,,",                                      # 9 bad timestamp
    b"u2,,view,1700000000,,",                                       # 10 missing item_id
    b"u2,,search,1700000000,,",                                     # 11 missing query
    b"u2,,search,1700000000,red shoes,",                            # 12 ok: search without click
    b"u2,i1,view",                                                  # 13 ragged row
    b"u2,i1,view,1700000000,caf\xe9,",                              # 14 latin-1 byte
    b"u3,i1,view,,,",                                               # 15 missing timestamp
    b"   ",                                                         # 16 whitespace only: not a row
    b" u4 , i4 , Click ,1700000000,,",                              # 17 ok: stripped + lower-cased
])
CSV_EXPECTED_BAD = {
    7: ("missing_user_id", ["user_id"]),
    8: ("unknown_event_type", ["event_type", "'teleport'"]),
    9: ("bad_timestamp", ["timestamp", "'yesterday'"]),
    10: ("missing_item_id", ["item_id", "view"]),
    11: ("missing_query", ["query", "search"]),
    13: ("unparsable_row", ["wrong_field_count", "expected 6", "got 3"]),
    14: ("unparsable_row", ["invalid_utf8", "byte"]),
    15: ("missing_timestamp", ["timestamp"]),
}

JSONL_EVENTS = b"\n".join([
    b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 1700000000}',            # 1 ok
    b'{"user_id": "u1", "item_id": "i2", "event_type": "view", "timestamp": "2023-11-14T23:13:20+01:00"}',
    b'{"user_id": "u1", "item_id": "i3", "event_type": ',                                             # 3 broken
    b'["u1", "i1", "view", 1700000000]',                                                             # 4 array
    b'{"item_id": "i1", "event_type": "view", "timestamp": 1700000000}',                             # 5 no user
    b"",                                                                                             # 6 blank
    b'{"user_id": "u1", "item_id": "i4", "event_type": "VIEW", "timestamp": 1700000000000}',          # 7 ok, ms
    b'{"user_id": "u\xff", "item_id": "i1", "event_type": "view", "timestamp": 1700000000}',         # 8 bad utf-8
    b'{"user_id": 42, "item_id": 7, "event_type": "click", "timestamp": 1700000000.0}',              # 9 ok numbers
    b'{"user_id": "u5", "item_id": "i1", "event_type": "view", "timestamp": "soon"}',                # 10 bad ts
    b'{"user_id": "u5", "item_id": "i1", "event_type": "refund", "timestamp": 1700000000}',          # 11 unknown
    b'"just a string"',                                                                              # 12 scalar
])
JSONL_EXPECTED_BAD = {
    3: ("unparsable_row", ["malformed_json"]),
    4: ("unparsable_row", ["malformed_json", "expected an object", "list"]),
    5: ("missing_user_id", ["user_id"]),
    8: ("unparsable_row", ["invalid_utf8"]),
    10: ("bad_timestamp", ["timestamp", "'soon'"]),
    11: ("unknown_event_type", ["event_type", "'refund'"]),
    12: ("unparsable_row", ["malformed_json", "str"]),
}


def values(series: pd.Series) -> list:
    """Column values with any missing marker (None / NaN / NA) as None."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def check_accounting(raw: pd.DataFrame, clean: pd.DataFrame, bad: pd.DataFrame,
                     expected_bad: dict[int, tuple[str, list[str]]], source: str) -> None:
    """rows in == clean + quarantined, and every quarantined line has the expected reason + detail."""
    assert len(raw) == len(clean) + len(bad)
    assert list(bad.columns) == [*QUARANTINE_COLUMNS[:3], "detail", "raw"]
    assert set(bad["source"]) <= {source}
    got = {int(r.line): r for r in bad.itertuples(index=False)}
    assert set(got) == set(expected_bad), f"quarantined lines {sorted(got)} != {sorted(expected_bad)}"
    for line, (reason, words) in expected_bad.items():
        row = got[line]
        assert row.reason == reason, f"line {line}: {row.reason} ({row.detail})"
        for word in words:
            assert word in row.detail, f"line {line}: {word!r} not in {row.detail!r}"
        assert row.raw and row.raw != "None"


# ---------------------------------------------------------------- CSV
def test_csv_events_rows_in_equals_clean_plus_quarantined() -> None:
    raw = parse_raw_records(CSV_EVENTS, "events.csv", EVENT_COLUMNS)
    assert list(raw.columns) == [*EVENT_COLUMNS, *META_COLUMNS]
    assert len(raw) == 14   # 17 lines - header - 2 blank lines
    clean, bad = validate_events(raw)
    check_accounting(raw, clean, bad, CSV_EXPECTED_BAD, "events.csv")
    assert list(clean.columns) == list(EVENT_COLUMNS)
    assert clean["user_id"].tolist() == ["u1", "u1", "u1", "u1", "u2", "u4"]
    assert clean["event_type"].tolist() == ["view", "click", "purchase", "add_to_cart", "search", "click"]
    assert values(clean["item_id"]) == ["i1", "i2", "i3", "i1", None, "i4"]
    assert values(clean["query"]) == [None, None, None, None, "red shoes", None]
    assert values(clean["session_id"]) == [None, "s9", None, None, None, None]
    # seconds, milliseconds, microseconds and ISO-8601 are the same instant
    assert set(clean["timestamp"]) == {INSTANT}
    assert str(clean["timestamp"].dtype) == "datetime64[us, UTC]"


def test_csv_quarantine_keeps_the_raw_line() -> None:
    raw = parse_raw_records(CSV_EVENTS, "events.csv", EVENT_COLUMNS)
    _, bad = validate_events(raw)
    by_line = bad.set_index("line")
    assert by_line.loc[8, "raw"] == "u2,i1,teleport,1700000000,,"
    assert by_line.loc[13, "raw"] == "u2,i1,view"
    assert "caf\\xe9" in by_line.loc[14, "raw"]   # undecodable byte is kept visible, not lost


def test_csv_header_only_and_optional_columns() -> None:
    raw = parse_raw_records(b"user_id,event_type,timestamp\n", "e.csv", EVENT_COLUMNS)
    assert len(raw) == 0
    clean, bad = validate_events(raw)
    assert len(clean) == 0 and len(bad) == 0
    # columns missing from the header are null, not an error for optional fields
    raw = parse_raw_records(b"user_id,event_type,timestamp,query\nu1,search,1700000000,boots\n", "e.csv",
                            EVENT_COLUMNS)
    clean, bad = validate_events(raw)
    assert len(bad) == 0 and clean["query"].tolist() == ["boots"] and values(clean["item_id"]) == [None]


def test_csv_quoted_commas_are_one_field() -> None:
    data = b'item_id,title,price\ni1,"Hammer, claw",3.5\n'
    clean, bad = validate_catalog(parse_raw_records(data, "c.csv", CATALOG_COLUMNS))
    assert len(bad) == 0 and clean["title"].tolist() == ["Hammer, claw"]


def test_csv_quoted_newline_stays_one_row() -> None:
    data = b'item_id,title,description,price\ni1,Hammer,"Steel head.\nWood handle.",3.5\ni2,Saw,,4\n'
    clean, bad = validate_catalog(parse_raw_records(data, "c.csv", CATALOG_COLUMNS))
    assert values(clean["item_id"]) == ["i1", "i2"] and len(bad) == 0


def test_csv_with_utf8_bom() -> None:
    data = "\ufeffuser_id,item_id,event_type,timestamp\nu1,i1,view,1700000000\n".encode()
    clean, bad = validate_events(parse_raw_records(data, "e.csv", EVENT_COLUMNS))
    assert len(bad) == 0 and clean["user_id"].tolist() == ["u1"]


# ---------------------------------------------------------------- JSONL
def test_jsonl_events_rows_in_equals_clean_plus_quarantined() -> None:
    raw = parse_raw_records(JSONL_EVENTS, "events.jsonl", EVENT_COLUMNS)
    assert len(raw) == 11
    clean, bad = validate_events(raw)
    check_accounting(raw, clean, bad, JSONL_EXPECTED_BAD, "events.jsonl")
    assert clean["user_id"].tolist() == ["u1", "u1", "u1", "42"]
    assert values(clean["item_id"]) == ["i1", "i2", "i4", "7"]
    assert clean["event_type"].tolist() == ["view", "view", "view", "click"]
    assert set(clean["timestamp"]) == {INSTANT}


def test_jsonl_quarantine_row_for_malformed_json_names_the_column() -> None:
    raw = parse_raw_records(b'{"user_id": "u1",, }\n', "e.ndjson", EVENT_COLUMNS)
    _, bad = validate_events(raw)
    assert bad["reason"].tolist() == ["unparsable_row"]
    assert "column" in bad["detail"][0] and bad["raw"][0] == '{"user_id": "u1",, }'


def test_item_not_in_catalog() -> None:
    data = b"\n".join([
        b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 1700000000}',
        b'{"user_id": "u1", "item_id": "i9", "event_type": "view", "timestamp": 1700000000}',
        b'{"user_id": "u1", "event_type": "search", "query": "boots", "timestamp": 1700000000}',
    ])
    raw = parse_raw_records(data, "e.jsonl", EVENT_COLUMNS)
    clean, bad = validate_events(raw, known_items={"i1"})
    assert values(clean["item_id"]) == ["i1", None]   # a search with no click needs no catalog item
    assert bad["reason"].tolist() == ["item_not_in_catalog"]
    assert "item_id='i9'" in bad["detail"][0] and int(bad["line"][0]) == 2
    # without a catalog the same row is fine
    assert len(validate_events(raw)[0]) == 3


def test_first_failing_check_wins() -> None:
    data = b'{"event_type": "teleport", "timestamp": "never", "item_id": "i9"}\n'
    _, bad = validate_events(parse_raw_records(data, "e.jsonl", EVENT_COLUMNS), known_items=set())
    assert bad["reason"].tolist() == ["missing_user_id"]


# ---------------------------------------------------------------- Parquet
def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.mark.parametrize("ts_type", [
    pa.timestamp("us"), pa.timestamp("ns"), pa.timestamp("us", tz="UTC"), pa.timestamp("ns", tz="UTC"),
    pa.timestamp("us", tz="America/New_York"), pa.timestamp("ms", tz="Asia/Kolkata"),
])
def test_parquet_typed_timestamps_keep_the_instant(ts_type: pa.DataType) -> None:
    micros = 1700000000123456 if ts_type.unit in ("us", "ns") else 1700000000123000
    stored = micros * 1000 if ts_type.unit == "ns" else (micros // 1000 if ts_type.unit == "ms" else micros)
    table = pa.table({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["view", "click"],
        "timestamp": pa.array([stored, None], pa.int64()).cast(ts_type),
    })
    raw = parse_raw_records(parquet_bytes(table), "events.parquet", EVENT_COLUMNS)
    assert len(raw) == 2 and raw["_line"].tolist() == [1, 2]
    clean, bad = validate_events(raw)
    assert len(clean) + len(bad) == 2
    # naive timestamps are read as UTC; tz-aware ones keep their instant
    assert clean["timestamp"].tolist() == [pd.Timestamp(micros, unit="us", tz="UTC")]
    assert bad["reason"].tolist() == ["missing_timestamp"]
    rebuilt = json.loads(bad["raw"][0])   # Parquet has no line text: the fields are rebuilt
    assert rebuilt == {"user_id": "u2", "item_id": "i2", "event_type": "click"}


def test_parquet_string_and_integer_timestamps() -> None:
    table = pa.table({
        "user_id": pa.array([1, 2, 3], pa.int64()), "item_id": ["i1", "i1", "i1"],
        "event_type": ["view", "view", "view"],
        "timestamp": ["1700000000", "2023-11-14T22:13:20+00:00", "garbage"],
        "extra_column": [1, 2, 3],
    })
    raw = parse_raw_records(parquet_bytes(table), "events.pq", EVENT_COLUMNS)
    clean, bad = validate_events(raw)
    assert clean["user_id"].tolist() == ["1", "2"]
    assert set(clean["timestamp"]) == {INSTANT}
    assert bad["reason"].tolist() == ["bad_timestamp"] and "'garbage'" in bad["detail"][0]
    assert int(bad["line"][0]) == 3


def test_parquet_ns_timestamps_with_nanoseconds() -> None:
    table = pa.table({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"],
                      "timestamp": pa.array([1700000000123456789], pa.timestamp("ns"))})
    clean, _ = validate_events(parse_raw_records(parquet_bytes(table), "e.parquet", EVENT_COLUMNS))
    assert clean["timestamp"].tolist() == [INSTANT_US]


# ---------------------------------------------------------------- timestamps
@pytest.mark.parametrize("text", [
    "1700000000.123456", "1700000000123.456", "1700000000123456",
    "2023-11-14T22:13:20.123456Z", "2023-11-14 22:13:20.123456+00:00", "2023-11-14T23:13:20.123456+01:00",
    "2023-11-14T17:13:20.123456-05:00", "2023-11-14T22:13:20.123456",
])
def test_parse_timestamps_all_units_same_instant(text: str) -> None:
    assert parse_timestamps(pd.Series([text], dtype=object)).tolist() == [INSTANT_US]


def test_parse_timestamps_mixed_column_and_failures() -> None:
    values = pd.Series(["1700000000", "2023-11-14T22:13:20Z", None, "", "  ", "tomorrow", "2023-13-40",
                        "inf", "1e30", "1700000000000"], dtype=object)
    out = parse_timestamps(values)
    assert str(out.dtype) == "datetime64[us, UTC]"
    assert out.tolist()[:2] == [INSTANT, INSTANT] and out.tolist()[-1] == INSTANT
    assert out[2:9].isna().all()


# ---------------------------------------------------------------- catalog
CATALOG_CSV = b"\n".join([
    b"item_id,title,brand,category,description,price,in_stock",   # 1
    b"i1,Hammer,Acme,tools,Steel,9.99,true",                       # 2 ok
    b"i2,Saw,,tools,,,",                                           # 3 ok: blank price, blank in_stock
    b"i1,Hammer again,Acme,tools,,5,true",                         # 4 duplicate
    b"i3,Drill,Acme,tools,,-1,true",                               # 5 negative price
    b"i4,Nail,Acme,tools,,cheap,true",                             # 6 non-numeric price
    b"i5,Glue,Acme,tools,,2,maybe",                                # 7 bad in_stock
    b"i6,,Acme,tools,,2,true",                                     # 8 no title: filled "Acme tools"
    b",Tape,Acme,tools,,2,true",                                   # 9 missing item_id
    b"i7,Level,Acme,tools,,0,No",                                  # 10 ok: out of stock
    b"i8,Clamp",                                                   # 11 ragged
    b" i9 ,  Vise  ,Acme,tools,,1e1,0",                            # 12 ok: stripped, 10.0, False
])


def test_validate_catalog() -> None:
    raw = parse_raw_records(CATALOG_CSV, "catalog.csv", CATALOG_COLUMNS)
    clean, bad = validate_catalog(raw)
    check_accounting(raw, clean, bad, {
        4: ("duplicate_item_id", ["item_id", "'i1'"]),
        5: ("bad_price", ["price", "'-1'"]),
        6: ("bad_price", ["price", "'cheap'"]),
        7: ("bad_in_stock", ["in_stock", "'maybe'"]),
        9: ("missing_item_id", ["item_id"]),
        11: ("unparsable_row", ["wrong_field_count"]),
    }, "catalog.csv")
    assert list(clean.columns) == list(CATALOG_COLUMNS)
    assert values(clean["item_id"]) == ["i1", "i2", "i6", "i7", "i9"]
    assert clean["title"].tolist() == ["Hammer", "Saw", "Acme tools", "Level", "Vise"]  # first row of i1 wins
    assert clean["brand"].tolist() == ["Acme", "", "Acme", "Acme", "Acme"]
    assert clean["in_stock"].tolist() == [True, True, True, False, False]   # blank in_stock = in stock
    prices = clean["price"].tolist()
    assert prices[0] == 9.99 and pd.isna(prices[1]) and prices[2:] == [2.0, 0.0, 10.0]
    assert clean["price"].dtype == "float64" and clean["in_stock"].dtype == bool


def test_validate_catalog_from_jsonl_with_typed_values() -> None:
    data = b"\n".join([
        b'{"item_id": "a", "title": "A", "price": 3, "in_stock": false}',
        b'{"item_id": "b", "title": "B", "price": null, "in_stock": true}',
        b'{"item_id": "c", "title": "C", "price": "free", "in_stock": true}',
    ])
    clean, bad = validate_catalog(parse_raw_records(data, "catalog.jsonl", CATALOG_COLUMNS))
    assert values(clean["item_id"]) == ["a", "b"]
    assert clean["in_stock"].tolist() == [False, True]
    assert bad["reason"].tolist() == ["bad_price"] and "price='free'" in bad["detail"][0]


# ---------------------------------------------------------------- files and formats
@pytest.mark.parametrize(("name", "fmt"), [
    ("a.parquet", "parquet"), ("a.PQ", "parquet"), ("a.csv", "csv"), ("a.jsonl", "jsonl"),
    ("a.json", "jsonl"), ("dir/a.NDJSON", "jsonl"),
])
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["events.txt", "events.csv.gz", "events", "events.xlsx"])
def test_detect_format_unknown(name: str) -> None:
    with pytest.raises(SourceError, match="cannot tell the format") as err:
        detect_format(name)
    assert repr(name) in str(err.value) and ".csv" in str(err.value)


def test_parse_raw_records_rejects_unknown_format() -> None:
    with pytest.raises(SourceError):
        parse_raw_records(b"a,b\n", "events.tsv", EVENT_COLUMNS)


def test_list_input_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.csv", "a.jsonl", "sub/c.parquet", "notes.txt", "sub/README"):
        (tmp_path / name).write_bytes(b"")
    expected = [str((tmp_path / n).resolve()) for n in ("a.jsonl", "b.csv", "sub/c.parquet")]
    assert list_input_files(tmp_path) == expected
    assert list_input_files(tmp_path / "b.csv") == [str((tmp_path / "b.csv").resolve())]
    assert list_input_files(str(tmp_path / "*.csv")) == [str((tmp_path / "b.csv").resolve())]


def test_list_input_files_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no input files found"):
        list_input_files(tmp_path / "missing.csv")
    with pytest.raises(SourceError, match="no input files found"):
        list_input_files(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="empty"):
        list_input_files(tmp_path / "empty")


def test_read_raw_table_concatenates_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"item_id,title\ni1,A\ni2,B\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"item_id": "i3", "title": "C"}\n')
    raw = read_raw_table(tmp_path, CATALOG_COLUMNS)
    assert raw["item_id"].tolist() == ["i1", "i2", "i3"]
    assert raw["_line"].tolist() == [2, 3, 1]
    assert [Path(s).name for s in raw["_source"]] == ["a.csv", "a.csv", "b.jsonl"]


def test_catalog_title_filled_from_brand_category_or_description_and_empty_rows_quarantined() -> None:
    data = b"""item_id,title,brand,category,description,price,in_stock
a,,Acme,Tools > Hand Tools > Hammers,,1,true
b,,,,"A long description of a very useful product",1,true
c,,,,,1,true
"""
    raw = parse_raw_records(data, "c.csv", CATALOG_COLUMNS)
    clean, bad = validate_catalog(raw)
    assert clean["title"].tolist() == ["Acme Hammers", "A long description of a very useful product"]
    assert bad["reason"].tolist() == ["missing_text"] and "all empty" in bad["detail"].iloc[0]


def test_event_type_aliases_and_out_of_range_timestamps() -> None:
    data = b"""user_id,item_id,event_type,timestamp
u,i,Cart,1704103200
u,i,transaction,1704103201
u,i,view,0
u,i,view,32503680000000
u,i,hover,1704103200
"""
    raw = parse_raw_records(data, "e.csv", EVENT_COLUMNS)
    clean, bad = validate_events(raw, aliases={"cart": "add_to_cart", "transaction": "purchase"})
    assert clean["event_type"].tolist() == ["add_to_cart", "purchase"]
    assert bad["reason"].tolist() == ["timestamp_out_of_range", "timestamp_out_of_range", "unknown_event_type"]
    assert "timestamp='0'" in bad["detail"].iloc[0]
