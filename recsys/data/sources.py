"""Readers for the generic event / catalog schema in Parquet, CSV and JSONL.

Parsing never raises on bad rows: every input line becomes one raw record (strings),
and a line that cannot be decoded or split carries a `_error` reason so validation can
quarantine it. This is why CSV/JSONL are parsed here line by line instead of with
pyarrow.csv / pandas: those abort the whole file on one non-UTF-8 byte or ragged row.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
               ".json": "jsonl", ".ndjson": "jsonl"}
META_COLUMNS = ("_source", "_line", "_error", "_raw")


class SourceError(ValueError):
    """An input path or format the pipeline cannot read at all."""


def detect_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise SourceError(f"cannot tell the format of {str(path)!r}: use one of {sorted(_EXTENSIONS)}")
    return _EXTENSIONS[suffix]


def list_input_files(path: str | Path) -> list[str]:
    """A file, a directory (all readable files inside, sorted) or a glob -> file paths."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p.resolve())]
    if p.is_dir():
        files = sorted(str(f.resolve()) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _EXTENSIONS)
    else:
        files = sorted(str(Path(f).resolve()) for f in glob.glob(str(p)))
    if not files:
        raise SourceError(f"no input files found at {str(path)!r}")
    return files


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
    """A fully decodable CSV through the csv module, so quoted fields may contain newlines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    rows: list[dict] = []
    start = reader.line_num + 1
    for values in reader:
        if values:
            fields, error = _split_values(values, header)
            rows.append(_record(source, start, {c: _to_text(fields.get(c)) for c in columns}, error,
                                ",".join(values)))
        start = reader.line_num + 1
    return _frame(rows, columns)


def _parquet_records(table: pa.Table, source: str, columns: tuple[str, ...]) -> pd.DataFrame:
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
    frame["_source"], frame["_line"], frame["_error"], frame["_raw"] = source, range(1, n + 1), None, None
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


def read_raw_table(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """In-process read of every file at `path` (used for catalogs, which fit in memory)."""
    frames = [parse_raw_records(Path(f).read_bytes(), f, columns) for f in list_input_files(path)]
    return pd.concat(frames, ignore_index=True)
