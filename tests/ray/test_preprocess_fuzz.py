"""Property test: malformed rows of every kind, mixed with valid ones, never crash the Ray job,
and rows in = kept + dropped + quarantined exactly (and equals the lines we wrote)."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest
from fuzz_corpus import COLUMNS, CSV_ONLY, ITEMS, JSONL_ONLY, MALFORMED, T0, render, write_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.pipeline import run_preprocess

pytestmark = pytest.mark.timeout(900)

# Text that breaks naive parsers: separators, quotes, newlines, unicode, control characters.
nasty_text = st.text(alphabet=st.sampled_from(list("ab ,\"'\n\r\t;{}[]é漢🙂\\\x00")), max_size=12)
field = st.one_of(st.none(), nasty_text, st.sampled_from(ITEMS), st.integers(-10**15, 10**15).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(str))
valid = st.builds(
    lambda user, item, event, dt, query: {"user_id": user, "item_id": item if event != "search" else None,
                                          "event_type": event, "timestamp": str(T0 + dt),
                                          "query": query if event == "search" else None, "session_id": None},
    st.sampled_from(["u1", "u2", "u3", "ü4"]), st.sampled_from(ITEMS),
    st.sampled_from(["view", "click", "add_to_cart", "purchase", "search", "Cart", "TRANSACTION"]),
    st.integers(0, 10**6), st.text(min_size=1, max_size=10).filter(str.strip))
random_row = st.fixed_dictionaries({c: field for c in COLUMNS})


def rows_for(fmt: str):
    raw_lines = st.sampled_from([MALFORMED[k] for k in (CSV_ONLY if fmt == "csv" else JSONL_ONLY)])
    structured = st.sampled_from([v for v in MALFORMED.values() if isinstance(v, dict)])
    garbage = st.binary(min_size=1, max_size=30).filter(lambda b: b.strip() and b"\n" not in b and b"\r" not in b)
    kinds = [valid, valid, structured, random_row, raw_lines]
    if fmt == "jsonl":
        kinds.append(garbage)   # one line of bytes is one row in JSONL; CSV quoting could merge lines
    return st.lists(st.one_of(*kinds), min_size=1, max_size=60)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(csv_rows=rows_for("csv"), jsonl_rows=rows_for("jsonl"))
def test_malformed_rows_never_crash_and_every_row_is_accounted_for(ray_cluster, tmp_path_factory, csv_rows,
                                                                   jsonl_rows, monkeypatch):
    root = tmp_path_factory.mktemp("fuzz")
    monkeypatch.setenv("RECSYS_HOME", str(root / "home"))
    (root / "events").mkdir()
    (root / "events" / "a.csv").write_bytes(render(csv_rows, "csv"))
    jsonl = render(jsonl_rows, "jsonl")
    (root / "events" / "b.jsonl").write_bytes(jsonl)
    cfg = PreprocessConfig(source=SourceConfig(path=str(root / "events"), catalog=str(write_catalog(
        root / "catalog.csv"))), num_partitions=3)

    summary = run_preprocess(cfg)

    ev = summary["events"]
    assert ev["rows_in"] == ev["rows_valid"] + ev["rows_quarantined"]
    assert ev["rows_valid"] == ev["rows_kept"] + ev["rows_dropped"]
    jsonl_lines = sum(1 for line in jsonl.splitlines() if line.strip())
    assert ev["rows_in"] >= jsonl_lines   # every JSONL line is a row; CSV adds at least zero
    out = root / "home" / "artifacts" / "data" / summary["version"]

    def count(name: str) -> int:
        return pads.dataset(out / name).count_rows() if (out / name).exists() else 0

    assert count("quarantine/events") == ev["rows_quarantined"]
    assert count("events") == ev["rows_kept"] and count("dropped") == ev["rows_dropped"]
    assert json.loads((out / "summary.json").read_text())["events"] == ev
