"""Readers for the generic event / catalog schema in Parquet, CSV and JSONL.

Parsing never raises on bad rows: every input line becomes one raw record (strings),
and a line that cannot be decoded or split carries a `_error` reason so validation can
quarantine it. This is why CSV/JSONL are parsed here line by line instead of with
pyarrow.csv / pandas: those abort the whole file on one non-UTF-8 byte or ragged row.

Large inputs are read as `ReadUnit`s: a CSV/JSONL file, or a run of Parquet row groups planned from
the footer alone, so workers can stream a data set that does not fit in memory.
"""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.filesystems import SourceError, hive_partition, list_files, open_input_file, read_input_bytes

__all__ = ["META_COLUMNS", "ReadUnit", "SourceError", "detect_format", "list_input_files", "open_input_file",
           "parse_raw_records", "plan_read_units", "read_raw_table", "read_unit"]

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
               ".json": "jsonl", ".ndjson": "jsonl"}
META_COLUMNS = ("_source", "_line", "_error", "_raw")


def detect_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise SourceError(f"cannot tell the format of {str(path)!r}: use one of {sorted(_EXTENSIONS)}")
    return _EXTENSIONS[suffix]


def list_input_files(path: str | Path) -> list[str]:
    """A file, a directory or a glob, local or any pyarrow filesystem URI -> sorted readable file paths."""
    return list_files(path, _EXTENSIONS)


def _record(source: str, line: int, fields: dict[str, str | None], error: str | None, raw: str) -> dict:
    return {**fields, "_source": source, "_line": line, "_error": error, "_raw": raw[:2000]}


def _decode(line: bytes) -> tuple[str, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return line.decode("utf-8", errors="backslashreplace"), f"invalid_utf8: byte {exc.start}"


def _to_text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def parse_raw_records(data: bytes, source: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """One input file's bytes -> DataFrame of string columns `columns` + META_COLUMNS, one row per line."""
    fmt = detect_format(source)
    rows: list[dict] = []
    if fmt == "parquet":
        return _parquet_records(pq.read_table(io.BytesIO(data)), source, columns)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Excel exports) is not part of the header
        data = data[3:]
    if fmt == "csv":
        try:
            return _csv_records(data.decode("utf-8"), source, columns)
        except UnicodeDecodeError:
            pass  # some bytes are not UTF-8: fall back to line by line so only those rows fail
    lines = data.splitlines()
    header: list[str] | None = None
    for n, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        text, error = _decode(raw_line)
        if fmt == "csv" and header is None:
            header = [h.strip() for h in next(csv.reader([text]))]
            continue
        fields: dict[str, str | None] = {c: None for c in columns}
        if error is None:
            fields, error = (_split_csv(text, header or []) if fmt == "csv" else _split_json(text))
            fields = {c: _to_text(fields.get(c)) for c in columns}
        rows.append(_record(source, n, fields, error, text))
    return _frame(rows, columns)


def _csv_records(text: str, source: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A fully decodable CSV through the csv module, so quoted fields may contain newlines.

    One unmatched quote makes the csv module read every following line into one field, up to the
    next quote or the end of the file. A record over several lines that looks like that
    (is_runaway_quote) is not kept: its first line alone is quarantined (`unbalanced_quote`) and
    reading starts again on the next line, so no other row is lost with it.
    """
    lines = text.splitlines(keepends=True)
    header: list[str] | None = None
    rows: list[dict] = []
    first = 0   # 0-based index of the physical line the current reader started at
    while first < len(lines):
        reader = csv.reader(lines[first:])
        restart, done = None, 0
        for values in reader:
            start, end = first + done + 1, first + reader.line_num   # 1-based physical lines of this record
            done = reader.line_num
            if header is None:
                header = [h.strip() for h in values]
                continue
            if not values:
                continue
            if end > start and is_runaway_quote(lines[start - 1:end], values, len(header)):
                raw = lines[start - 1].rstrip("\r\n")
                rows.append(_record(source, start, {c: None for c in columns},
                                    "unbalanced_quote: a quote opened on this line is never closed where the "
                                    f"row ends; lines {start + 1}-{end} are read again on their own", raw))
                restart = start
                break
            fields, error = _split_values(values, header)
            rows.append(_record(source, start, {c: _to_text(fields.get(c)) for c in columns}, error,
                                ",".join(values)))
        if restart is None:
            break
        first = restart
    return _frame(rows, columns)


def is_runaway_quote(record_lines: list[str], values: list[str], n_fields: int) -> bool:
    """Whether a record that spans several physical lines is an unmatched quote swallowing rows rather
    than a quoted field with line breaks: it has the wrong number of fields, or its quotes do not close
    (the csv module's strict mode fails on it), or every line after its first is itself a whole row."""
    if len(values) != n_fields:
        return True
    try:
        list(csv.reader(record_lines, strict=True))
    except csv.Error:
        return True
    return all(len(next(csv.reader([line]), [])) == n_fields for line in record_lines[1:] if line.strip())


def _parquet_records(table: pa.Table, source: str, columns: tuple[str, ...], first_line: int = 1) -> pd.DataFrame:
    """Typed Parquet columns -> the same string records, vectorised (no per-row Python).

    `_raw` stays empty: validation rebuilds it from the fields for quarantined rows only.
    """
    n = table.num_rows
    out = {}
    for col in columns:
        if col not in table.column_names:
            out[col] = pa.nulls(n, pa.string())
        elif pa.types.is_timestamp(table.schema.field(col).type):
            # Epoch microseconds keep full precision and need no format guessing downstream.
            # safe=False truncates nanoseconds instead of failing the whole file.
            as_us = table.column(col).cast(pa.timestamp("us", tz=table.schema.field(col).type.tz), safe=False)
            out[col] = pc.cast(pc.cast(as_us, pa.int64()), pa.string())
        else:
            out[col] = pc.cast(table.column(col), pa.string())
    frame = pa.table(out).to_pandas()
    frame["_source"], frame["_error"], frame["_raw"] = source, None, None
    frame["_line"] = range(first_line, first_line + n)
    return _frame_types(frame, columns)


def _split_csv(text: str, header: list[str]) -> tuple[dict, str | None]:
    return _split_values(next(csv.reader([text]), []), header)


def _split_values(values: list[str], header: list[str]) -> tuple[dict, str | None]:
    if len(values) != len(header):
        return {}, f"wrong_field_count: expected {len(header)} fields, got {len(values)}"
    return {h: (v if v != "" else None) for h, v in zip(header, values)}, None


def _split_json(text: str) -> tuple[dict, str | None]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"malformed_json: {exc.msg} at column {exc.colno}"
    if not isinstance(obj, dict):
        return {}, f"malformed_json: expected an object, got {type(obj).__name__}"
    return obj, None


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    return _frame_types(pd.DataFrame(rows, columns=[*columns, *META_COLUMNS]), columns)


def _frame_types(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = frame[[*columns, *META_COLUMNS]].copy()
    frame["_line"] = frame["_line"].astype("int64")
    for col in (*columns, "_source", "_error", "_raw"):
        frame[col] = frame[col].astype(object)
    return frame


@dataclass(frozen=True)
class ReadUnit:
    """One task's share of the input: a whole CSV/JSONL file or consecutive row groups of a Parquet file."""

    path: str                               # as returned by list_input_files
    fmt: str                                # "parquet" | "csv" | "jsonl"
    row_groups: tuple[int, ...] | None      # Parquet row groups to read; None = the whole file
    first_row: int                          # 1-based row number within the file of the unit's first row
    partition: tuple[tuple[str, str], ...]  # hive keys from the directories, e.g. (("event_type", "view"),)

    def to_json(self) -> str:
        """Units travel inside the work items of a Ray Data stage (one row each), so a job with
        100k input files does not ship the whole plan to every task."""
        return json.dumps([self.path, self.fmt, self.row_groups, self.first_row, self.partition])

    @classmethod
    def from_json(cls, text: str) -> ReadUnit:
        path, fmt, row_groups, first_row, partition = json.loads(text)
        return cls(path, fmt, None if row_groups is None else tuple(row_groups), first_row,
                   tuple((k, v) for k, v in partition))


def _parquet_footer(path: str) -> pq.FileMetaData:
    fs, inner = open_input_file(path)
    try:
        with fs.open_input_file(inner) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"cannot read the Parquet file {path!r}: {exc}") from exc


def _row_group_runs(meta: pq.FileMetaData, target_rows: int) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive row groups of at most ~target_rows rows (a larger row group stays whole) -> (groups, first row)."""
    runs: list[tuple[list[int], int]] = []
    rows_in_run, next_row = 0, 1
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if not runs or rows_in_run + n > target_rows:
            runs.append(([], next_row))
            rows_in_run = 0
        runs[-1][0].append(i)
        rows_in_run, next_row = rows_in_run + n, next_row + n
    return [(tuple(groups), first) for groups, first in runs]


def plan_read_units(path: str | Path, target_rows: int = 500_000) -> list[ReadUnit]:
    """Every file at `path` -> read units of about `target_rows` rows; Parquet files are split by row group.

    Only Parquet footers are read here. Raises SourceError for a file whose footer is unreadable.
    """
    files = [(f, detect_format(f)) for f in list_input_files(path)]
    parquet = [f for f, fmt in files if fmt == "parquet"]
    # Footers of remote files are latency-bound: fetch them concurrently.
    with ThreadPoolExecutor(max_workers=min(16, len(parquet) or 1)) as pool:
        footers = dict(zip(parquet, pool.map(_parquet_footer, parquet)))
    units = []
    for f, fmt in files:
        part = hive_partition(f)
        runs = _row_group_runs(footers[f], target_rows) if fmt == "parquet" else []
        if len(runs) <= 1:
            units.append(ReadUnit(f, fmt, None, 1, part))
        else:
            units += [ReadUnit(f, fmt, groups, first, part) for groups, first in runs]
    return units


def read_unit(unit: ReadUnit, columns: tuple[str, ...]) -> pd.DataFrame:
    """The raw records of one unit: the same frame parse_raw_records gives for those rows of the file,
    with a requested column that the file lacks filled from the unit's hive partition key."""
    if unit.fmt == "parquet":
        fs, inner = open_input_file(unit.path)
        try:
            with fs.open_input_file(inner) as f:
                pfile = pq.ParquetFile(f)
                in_file = set(pfile.schema_arrow.names)
                wanted = [c for c in columns if c in in_file]
                table = (pfile.read(columns=wanted) if unit.row_groups is None
                         else pfile.read_row_groups(list(unit.row_groups), columns=wanted))
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"cannot read the Parquet file {unit.path!r}: {exc}") from exc
        frame = _parquet_records(table, unit.path, columns, first_line=unit.first_row)
        missing = set(columns) - in_file
    else:
        frame = parse_raw_records(read_input_bytes(unit.path), unit.path, columns)
        # Text files have no schema: a column that is null in every row counts as absent.
        missing = {c for c in columns if frame[c].isna().all()}
    for key, value in unit.partition:
        if key in missing:
            frame[key] = pd.Series([value] * len(frame), index=frame.index, dtype=object)
    return frame


def read_raw_table(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """In-process read of every file at `path` (used for catalogs, which fit in memory)."""
    units = plan_read_units(path, target_rows=2**62)   # whole files: nothing to parallelise here
    return pd.concat([read_unit(u, columns) for u in units], ignore_index=True)
