"""File listing on pyarrow filesystems, and read units: split Parquet by row group, hive partitions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from recsys.data.sources import (
    META_COLUMNS,
    ReadUnit,
    SourceError,
    list_input_files,
    open_input_file,
    parse_raw_records,
    plan_read_units,
    read_raw_table,
    read_unit,
)

COLUMNS = ("user_id", "item_id", "event_type", "timestamp")


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def resolved(root: Path, *names: str) -> list[str]:
    return [str((root / n).resolve()) for n in names]


def values(series: pd.Series) -> list:
    """Column values with any missing marker (None / NaN / NA) as None."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def events_table(n: int) -> pa.Table:
    return pa.table({
        "user_id": [f"u{i % 3}" for i in range(n)],
        "item_id": pa.array([i if i % 4 else None for i in range(n)], pa.int64()),
        "event_type": ["view"] * n,
        "timestamp": pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
    })


# ---------------------------------------------------------------- listing
def test_directory_listing_skips_junk_and_unknown_extensions(tmp_path: Path) -> None:
    touch(tmp_path, "b.csv", "a.jsonl", "sub/c.parquet", "sub/d.PQ", "_SUCCESS", "sub/_SUCCESS",
          "sub/.c.parquet.crc", "_metadata", "_temporary/0/part-9.parquet", ".hidden/x.csv", "notes.txt", "README")
    assert list_input_files(tmp_path) == resolved(tmp_path, "a.jsonl", "b.csv", "sub/c.parquet", "sub/d.PQ")


def test_a_file_named_directly_is_returned_as_is(tmp_path: Path) -> None:
    touch(tmp_path, "_part.csv")
    assert list_input_files(tmp_path / "_part.csv") == resolved(tmp_path, "_part.csv")


def test_globs(tmp_path: Path) -> None:
    touch(tmp_path, "a.csv", "b.csv", "c.jsonl", "x/d.csv", "x/y/e.csv", "x/y/f.jsonl", "x/_tmp/g.csv",
          "day=1/p.parquet", "day=2/p.parquet", "day=10/p.parquet")
    assert list_input_files(tmp_path / "*.csv") == resolved(tmp_path, "a.csv", "b.csv")   # * stays in one directory
    assert list_input_files(tmp_path / "?.jsonl") == resolved(tmp_path, "c.jsonl")
    assert list_input_files(tmp_path / "[ab].csv") == resolved(tmp_path, "a.csv", "b.csv")
    assert list_input_files(tmp_path / "x" / "**" / "*.csv") == resolved(tmp_path, "x/d.csv", "x/y/e.csv")
    assert list_input_files(tmp_path / "**" / "*.jsonl") == resolved(tmp_path, "c.jsonl", "x/y/f.jsonl")
    # a glob that matches directories takes the readable files below them
    assert list_input_files(tmp_path / "day=?") == resolved(tmp_path, "day=1/p.parquet", "day=2/p.parquet")
    assert list_input_files(tmp_path / "x" / "*") == resolved(tmp_path, "x/d.csv", "x/y/e.csv", "x/y/f.jsonl")


def test_relative_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "in/a.csv", "in/b.csv")
    monkeypatch.chdir(tmp_path)
    assert list_input_files("in/*.csv") == resolved(tmp_path, "in/a.csv", "in/b.csv")


def test_file_uri(tmp_path: Path) -> None:
    touch(tmp_path, "a b/x.csv", "a b/y.jsonl", "a b/_SUCCESS")
    uri = (tmp_path / "a b").as_uri()                       # file:///.../a%20b
    assert uri.startswith("file://") and "%20" in uri
    expected = resolved(tmp_path, "a b/x.csv", "a b/y.jsonl")
    assert list_input_files(uri) == expected                # local files come back as plain absolute paths
    assert list_input_files(uri + "/*.csv") == expected[:1]
    fs, inner = open_input_file(uri + "/x.csv")
    assert isinstance(fs, pafs.LocalFileSystem) and inner == expected[0]


def test_file_uri_reads(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(b"item_id,title\ni1,A\n")
    raw = read_raw_table((tmp_path / "c.csv").as_uri(), ("item_id", "title"))
    assert raw["title"].tolist() == ["A"] and raw["_source"].tolist() == resolved(tmp_path, "c.csv")


def test_unknown_scheme_names_the_path() -> None:
    with pytest.raises(SourceError, match="foo://x"):
        list_input_files("foo://x")
    with pytest.raises(SourceError, match="foo://bucket/a.csv"):
        open_input_file("foo://bucket/a.csv")


def test_nothing_found_names_the_path(tmp_path: Path) -> None:
    touch(tmp_path, "only/_SUCCESS", "only/notes.txt")
    for path in (tmp_path / "only", tmp_path / "nope", tmp_path / "nope" / "*.csv", tmp_path / "only" / "**"):
        with pytest.raises(SourceError, match="no input files found") as err:
            list_input_files(path)
        assert str(path) in str(err.value)


# ---------------------------------------------------------------- read units
def test_parquet_split_by_row_groups_reads_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(events_table(10), path, row_group_size=3)      # row groups of 3, 3, 3, 1 rows
    units = plan_read_units(str(tmp_path), target_rows=5)
    assert [(u.row_groups, u.first_row) for u in units] == [((0,), 1), ((1,), 4), ((2, 3), 7)]
    assert {(u.path, u.fmt, u.partition) for u in units} == {(str(path.resolve()), "parquet", ())}

    whole = parse_raw_records(path.read_bytes(), str(path.resolve()), COLUMNS)
    split = pd.concat([read_unit(u, COLUMNS) for u in units], ignore_index=True)
    pd.testing.assert_frame_equal(split, whole)
    assert split["_line"].tolist() == list(range(1, 11))
    assert list(split.columns) == [*COLUMNS, *META_COLUMNS]

    # one unit for the whole file when it fits; a row group larger than the target is never split
    assert [u.row_groups for u in plan_read_units(str(path), target_rows=100)] == [None]
    assert [u.row_groups for u in plan_read_units(str(path), target_rows=1)] == [(0,), (1,), (2,), (3,)]


def test_text_files_are_one_unit(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_bytes(b"user_id,item_id,event_type,timestamp\nu1,i1,view,1\n\nu2,i2,click,2\n")
    (tmp_path / "e.jsonl").write_bytes(b'{"user_id": "u3"}\n')
    units = plan_read_units(tmp_path, target_rows=1)
    assert [(Path(u.path).name, u.fmt, u.row_groups, u.first_row) for u in units] == [
        ("e.csv", "csv", None, 1), ("e.jsonl", "jsonl", None, 1)]
    frame = read_unit(units[0], COLUMNS)
    assert frame["user_id"].tolist() == ["u1", "u2"] and frame["_line"].tolist() == [2, 4]


def test_hive_partition_fills_a_missing_column(tmp_path: Path) -> None:
    (tmp_path / "event_type=add%20to%20cart").mkdir()    # hive escapes values in directory names
    pq.write_table(events_table(4).drop_columns(["event_type"]), tmp_path / "event_type=add%20to%20cart" / "p.parquet",
                   row_group_size=2)
    (tmp_path / "event_type=click" / "day=2").mkdir(parents=True)
    (tmp_path / "event_type=click" / "day=2" / "e.jsonl").write_bytes(
        b'{"user_id": "u1", "item_id": "i1"}\n{"user_id": "u2", "item_id": "i2", "event_type": null}\n')
    (tmp_path / "event_type=view").mkdir()
    (tmp_path / "event_type=view" / "e.csv").write_bytes(b"user_id,event_type\nu3,click\nu4,\n")

    units = plan_read_units(tmp_path, target_rows=2)
    assert [(Path(u.path).name, u.partition) for u in units] == [
        ("p.parquet", (("event_type", "add to cart"),)), ("p.parquet", (("event_type", "add to cart"),)),
        ("e.jsonl", (("event_type", "click"), ("day", "2"))), ("e.csv", (("event_type", "view"),))]
    frames = [read_unit(u, COLUMNS) for u in units]
    assert [values(f["event_type"]) for f in frames] == [
        ["add to cart"] * 2, ["add to cart"] * 2,
        ["click", "click"],         # the column is absent from every row of the file
        ["click", None]]            # the file has the column: its values win
    assert frames[0]["event_type"].dtype == object
    assert frames[1]["_line"].tolist() == [3, 4]
    assert "day" not in frames[2].columns                        # keys that are not requested columns are ignored
    raw = read_raw_table(tmp_path, COLUMNS)
    assert values(raw["event_type"]) == ["add to cart"] * 4 + ["click", "click", "click", None]


def test_hive_null_partition_stays_null(tmp_path: Path) -> None:
    (tmp_path / "event_type=__HIVE_DEFAULT_PARTITION__").mkdir()
    (tmp_path / "event_type=__HIVE_DEFAULT_PARTITION__" / "e.jsonl").write_bytes(b'{"user_id": "u1"}\n')
    (unit,) = plan_read_units(tmp_path)
    assert unit.partition == () and values(read_unit(unit, COLUMNS)["event_type"]) == [None]


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    pq.write_table(events_table(3), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(SourceError, match="bad.parquet") as err:
        plan_read_units(tmp_path)
    assert "good.parquet" not in str(err.value)
    unit = ReadUnit(str(tmp_path / "bad.parquet"), "parquet", None, 1, ())
    with pytest.raises(SourceError, match="bad.parquet"):
        read_unit(unit, COLUMNS)


def test_empty_parquet_is_one_empty_unit(tmp_path: Path) -> None:
    pq.write_table(events_table(0), tmp_path / "e.parquet")
    (unit,) = plan_read_units(tmp_path)
    frame = read_unit(unit, COLUMNS)
    assert len(frame) == 0 and list(frame.columns) == [*COLUMNS, *META_COLUMNS]


def test_read_units_are_hashable_and_picklable(tmp_path: Path) -> None:
    import pickle

    pq.write_table(events_table(6), tmp_path / "e.parquet", row_group_size=2)
    units = plan_read_units(tmp_path, target_rows=2)
    assert pickle.loads(pickle.dumps(units)) == units and len(set(units)) == 3


def test_non_local_uris_round_trip() -> None:
    # pyarrow's in-memory mock:// filesystem stands in for s3:// / gs://: the filesystem is cached per
    # scheme://authority, so files written through open_input_file are visible to the listing.
    fs, inner = open_input_file("mock://bucket/data")
    assert not isinstance(fs, pafs.LocalFileSystem)
    fs.create_dir(inner + "/event_type=a b%3Ac")
    with fs.open_output_stream(inner + "/event_type=a b%3Ac/x 1.csv") as out:
        out.write(b"user_id\nu1\n")
    with fs.open_output_stream(inner + "/_SUCCESS") as out:
        out.write(b"")
    with fs.open_output_stream(inner + "/t.parquet") as out:
        pq.write_table(events_table(3), out, row_group_size=1)

    csv_uri = "mock://bucket/data/event_type=a%20b%253Ac/x%201.csv"   # percent-encoded, so from_uri decodes it back
    assert list_input_files("mock://bucket/data") == [csv_uri, "mock://bucket/data/t.parquet"]
    assert list_input_files("mock://bucket/data/**/*.csv") == [csv_uri]
    units = plan_read_units("mock://bucket/data", target_rows=2)
    assert [(u.path, u.row_groups, u.partition) for u in units] == [
        (csv_uri, None, (("event_type", "a b:c"),)),
        ("mock://bucket/data/t.parquet", (0, 1), ()), ("mock://bucket/data/t.parquet", (2,), ())]
    raw = read_raw_table("mock://bucket/data", COLUMNS)
    assert values(raw["event_type"]) == ["a b:c", "view", "view", "view"]
    assert raw["_source"].tolist() == [csv_uri] + ["mock://bucket/data/t.parquet"] * 3


def test_read_units_round_trip_through_json() -> None:
    """Units ride inside Ray Data work items as JSON text."""
    for unit in (ReadUnit("s3://bucket/event=view/a%20b.parquet", "parquet", (2, 3), 7, (("event", "view"),)),
                 ReadUnit("/data/a.csv", "csv", None, 1, ())):
        assert ReadUnit.from_json(unit.to_json()) == unit


def test_an_unmatched_quote_loses_only_its_own_line() -> None:
    """Regression (issue 24): one unmatched quote made the csv module read every following line into one
    record: 1,001 data lines became 1 quarantined row and 1,000 events were gone."""
    from recsys.data.sources import parse_raw_records

    rows = [f"u{i},i{i},view,2024-01-01T00:00:{i % 60:02d}" for i in range(1001)]
    rows[0] = 'u0,"i0,view,2024-01-01T00:00:00'                     # the quote never closes
    data = ("user_id,item_id,event_type,timestamp\n" + "\n".join(rows) + "\n").encode()
    frame = parse_raw_records(data, "events.csv", ("user_id", "item_id", "event_type", "timestamp"))
    assert len(frame) == 1001
    bad = frame[frame["_error"].notna()]
    assert bad["_line"].tolist() == [2] and bad["_error"].iloc[0].startswith("unbalanced_quote")
    assert bad["_raw"].iloc[0] == rows[0]
    good = frame[frame["_error"].isna()]
    assert good["user_id"].tolist() == [f"u{i}" for i in range(1, 1001)]
    assert good["_line"].tolist() == list(range(3, 1003))


def test_quoted_fields_with_line_breaks_are_still_one_row() -> None:
    from recsys.data.sources import parse_raw_records

    data = b'item_id,title,description\ni1,Pan,"two\nlines"\ni2,"Pot, 5"" deep",plain\ni3,Lid,"a\nb\nc"\n'
    frame = parse_raw_records(data, "catalog.csv", ("item_id", "title", "description"))
    assert frame["_error"].isna().all(), frame
    assert frame["description"].tolist() == ["two\nlines", "plain", "a\nb\nc"]
    assert frame["title"].tolist() == ["Pan", 'Pot, 5" deep', "Lid"] and frame["_line"].tolist() == [2, 4, 5]


def test_the_run_fails_when_rows_go_unaccounted() -> None:
    from recsys.data.outputs import RowsLost, check_row_accounting

    check_row_accounting({"rows_in": 10, "rows_kept": 7, "rows_dropped": 2, "rows_quarantined": 1})
    with pytest.raises(RowsLost, match=r"1001 event rows were read but 2 are accounted for .* \+999 rows"):
        check_row_accounting({"rows_in": 1001, "rows_kept": 0, "rows_dropped": 1, "rows_quarantined": 1})
