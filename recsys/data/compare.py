"""Compare two data versions row for row (Ray job vs single-process reference, or two runs).

Partitioning changes file layout and row order, never content: every dataset is sorted by
its key before comparing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

SORT_KEYS: dict[str, list[str]] = {
    "catalog.parquet": ["item_id"],
    "popularity.parquet": ["item_id"],
    "events": ["user_id", "timestamp", "event_type", "item_id", "query", "session_id"],
    "dropped": ["user_id", "timestamp", "event_type", "item_id", "query", "session_id", "reason"],
    "sequences": ["user_id"],
    "windows": ["user_id", "start"],
    "train_pairs": ["kind", "anchor_text", "positive_item_id", "positive_text"],
    "ranking_examples": ["user_id", "position", "label", "item_id"],
    "quarantine/events": ["source", "line"],
    "quarantine/catalog.parquet": ["source", "line"],
}
# Run-specific fields of summary.json.
_VOLATILE = {"version", "seconds", "path"}


def _load(path: Path) -> pa.Table | None:
    if not path.exists():
        return None
    return pads.dataset(str(path), format="parquet").to_table()


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys])
    return table.take(order).combine_chunks()


def _first_difference(a: pa.Table, b: pa.Table, name: str) -> str:
    for column in a.column_names:
        x, y = a.column(column).to_pylist(), b.column(column).to_pylist()
        for i, (u, v) in enumerate(zip(x, y)):
            if u != v:
                return f"{name}: row {i} column {column!r}: {u!r} != {v!r}"
    return f"{name}: tables differ (types or metadata)"


def compare_outputs(dir_a: str | Path, dir_b: str | Path) -> list[str]:
    """-> differences as readable lines; an empty list means the two versions hold the same data."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    problems: list[str] = []
    for name, keys in SORT_KEYS.items():
        a, b = _load(dir_a / name), _load(dir_b / name)
        if a is None or b is None:
            if (a is None) != (b is None):
                problems.append(f"{name}: present in only one of {dir_a} / {dir_b}")
            continue
        if a.num_rows != b.num_rows:
            problems.append(f"{name}: {a.num_rows} rows != {b.num_rows} rows")
            continue
        if a.schema.remove_metadata() != b.schema.remove_metadata():
            problems.append(f"{name}: schema {a.schema.remove_metadata()} != {b.schema.remove_metadata()}")
            continue
        a, b = _sorted(a.replace_schema_metadata(), keys), _sorted(b.replace_schema_metadata(), keys)
        if not a.equals(b):
            problems.append(_first_difference(a, b, name))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (dir_a, dir_b)]
    for key in sorted((set(summaries[0]) | set(summaries[1])) - _VOLATILE):
        if summaries[0].get(key) != summaries[1].get(key):
            problems.append(f"summary.json[{key!r}]: {summaries[0].get(key)!r} != {summaries[1].get(key)!r}")
    return problems
