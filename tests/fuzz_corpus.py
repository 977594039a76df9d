"""Dirty behaviour logs for preprocess tests: every kind of malformed row, in Parquet, CSV and JSONL.

`MALFORMED` lists the row kinds; `dirty_rows` mixes them with valid behaviour (sessions, funnels,
searches, duplicates, rapid repeats, a bot); `write_corpus` writes a multi-file input set.
Hypothesis strategies in the fuzz tests draw from the same kinds.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "query", "session_id"]
ITEMS = [f"i{n}" for n in range(40)]
T0 = 1_704_067_200  # 2024-01-01, epoch seconds

# kind -> a row (dict of strings/None) that validation must quarantine (CSV/JSONL), or raw text.
MALFORMED: dict[str, dict | str | bytes] = {
    "missing_user": {"user_id": "", "item_id": "i1", "event_type": "view", "timestamp": str(T0)},
    "blank_user": {"user_id": "   ", "item_id": "i1", "event_type": "view", "timestamp": str(T0)},
    "missing_event_type": {"user_id": "u1", "item_id": "i1", "event_type": "", "timestamp": str(T0)},
    "unknown_event_type": {"user_id": "u1", "item_id": "i1", "event_type": "hover", "timestamp": str(T0)},
    "missing_timestamp": {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": ""},
    "bad_timestamp": {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "yesterday"},
    "epoch_zero": {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "0"},
    "year_3000": {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "32503680000000"},
    "view_without_item": {"user_id": "u1", "item_id": "", "event_type": "view", "timestamp": str(T0)},
    "search_without_query": {"user_id": "u1", "item_id": "", "event_type": "search", "timestamp": str(T0)},
    "item_not_in_catalog": {"user_id": "u1", "item_id": "nope", "event_type": "click", "timestamp": str(T0)},
    "ragged": "u1,i1,view",
    "too_many_fields": "u1,i1,view,1704067200,,,extra,more",
    "not_utf8": b"u1,\xff\xfei1,view,1704067200,,",
    "broken_json": "{\"user_id\": \"u1\", ",
    "json_array": "[1, 2, 3]",
    "json_scalar": "42",
}
CSV_ONLY = ("ragged", "too_many_fields", "not_utf8")
JSONL_ONLY = ("broken_json", "json_array", "json_scalar", "not_utf8")


def valid_row(user: str, item: str | None, event: str, ts: float, query: str | None = None) -> dict:
    return {"user_id": user, "item_id": item, "event_type": event, "timestamp": str(int(ts)), "query": query,
            "session_id": None}


def dirty_rows(rng: random.Random, n_users: int) -> list[dict]:
    """Plausible shoppers (sessions, funnels, searches) with duplicates, double clicks, aliases and a bot."""
    rows: list[dict] = []
    for u in range(n_users):
        ts = T0 + rng.randint(0, 86_400 * 60)
        for _ in range(rng.randint(1, 4)):                      # sessions
            for _ in range(rng.randint(1, 6)):                  # steps
                item = rng.choice(ITEMS)
                if rng.random() < 0.1:
                    rows.append(valid_row(f"u{u}", item, "search", ts, f"query {item}"))
                for event in ("view", "click", rng.choice(["cart", "add_to_cart"]), "transaction")[
                        :rng.choice([1, 1, 2, 3, 4])]:
                    rows.append(valid_row(f"u{u}", item, event, ts))
                    if rng.random() < 0.05:
                        rows.append(dict(rows[-1]))                                   # exact duplicate
                    if rng.random() < 0.05:
                        rows.append(valid_row(f"u{u}", item, event, ts + 1))         # double click
                    ts += rng.randint(5, 300)
            ts += rng.randint(3600, 86_400 * 5)
    rows += [valid_row("bot", rng.choice(ITEMS), "view", T0 + 100 + s / 4) for s in range(200)]
    rng.shuffle(rows)   # real logs interleave users
    return rows


def _csv_line(row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow([row.get(c) or "" for c in COLUMNS])
    return buf.getvalue()


def render(rows: list[dict | str | bytes], fmt: str) -> bytes:
    """Rows (dicts, or raw lines for malformed text) -> CSV or JSONL bytes."""
    out = [(",".join(COLUMNS) + "\n").encode()] if fmt == "csv" else []
    for row in rows:
        if isinstance(row, bytes):
            out.append(row + b"\n")
        elif isinstance(row, str):
            out.append((row + "\n").encode())
        else:
            out.append((_csv_line(row) if fmt == "csv" else json.dumps(row) + "\n").encode())
    return b"".join(out)


def write_catalog(path: Path) -> Path:
    rows = [f"{i},Item {i} title,Brand{n % 3},Cat > Sub{n % 4},desc {i},{n}.5,true" for n, i in enumerate(ITEMS)]
    rows += ["i0,Duplicate row,B,C,,1,true", "x1,,,,,1,true"]        # duplicate id; no text at all
    path.write_text("item_id,title,brand,category,description,price,in_stock\n" + "\n".join(rows) + "\n")
    return path


def write_corpus(root: Path, seed: int = 0, n_users: int = 100) -> tuple[Path, Path]:
    """-> (events dir with part-0.parquet (small row groups), part-1.csv, part-2.jsonl; catalog.csv)."""
    rng = random.Random(seed)
    rows = dirty_rows(rng, n_users)
    third = len(rows) // 3
    events = root / "events"
    events.mkdir(parents=True, exist_ok=True)
    parquet_rows = rows[:third]
    pq.write_table(pa.table({c: pa.array([r[c] for r in parquet_rows], pa.string()) for c in COLUMNS}),
                   events / "part-0.parquet", row_group_size=max(len(parquet_rows) // 4, 1))
    bad_rows = [v for v in MALFORMED.values() if isinstance(v, dict)]
    csv_rows: list = rows[third:2 * third] + bad_rows + [MALFORMED[k] for k in CSV_ONLY]
    jsonl_rows: list = rows[2 * third:] + bad_rows + [MALFORMED[k] for k in JSONL_ONLY]
    rng.shuffle(csv_rows)
    rng.shuffle(jsonl_rows)
    (events / "part-1.csv").write_bytes(render(csv_rows, "csv"))
    (events / "part-2.jsonl").write_bytes(render(jsonl_rows, "jsonl"))
    return events, write_catalog(root / "catalog.csv")
