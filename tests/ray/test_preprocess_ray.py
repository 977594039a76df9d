"""Preprocess on a real local Ray cluster: malformed input is counted and quarantined, nothing lost."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.pipeline import run_preprocess

pytestmark = pytest.mark.timeout(300)

CATALOG = """item_id,title,brand,category,description,price,in_stock
i1,Red running shoe,Acme,Shoes,Light shoe,59.9,true
i2,Blue running shoe,Acme,Shoes,Light shoe,59.9,true
i3,Trail sock,Acme,Socks,Wool sock,9.5,true
i4,Rain jacket,Storm,Jackets,Waterproof,120,false
i5,Water bottle,Hydro,Accessories,Steel,15,yes
i5,Duplicate bottle,Hydro,Accessories,Steel,15,true
i6,Bad price,Hydro,Accessories,Steel,cheap,true
"""

# 12 good rows (one exact duplicate) and 7 bad ones.
EVENTS = (
    b"user_id,item_id,event_type,timestamp,query,session_id\n"
    b"u1,i1,view,2024-01-01T10:00:00Z,,\n"
    b"u1,i1,click,2024-01-01T10:01:00Z,,\n"
    b"u1,i2,view,2024-01-01T10:05:00Z,,\n"
    b"u1,i3,purchase,2024-01-02T10:00:00Z,,\n"
    b"u1,i4,view,2024-01-03T10:00:00Z,,\n"
    b"u1,i4,view,2024-01-03T10:00:00Z,,\n"                    # exact duplicate
    b"u2,,search,1704103200,running shoe,\n"                  # search without click: valid
    b"u2,i2,search,1704103260000,blue shoe,\n"               # search with click (epoch ms)
    b"u2,i2,add_to_cart,1704103300,,\n"
    b"u2,i1,view,1704200000,,\n"
    b"u2,i5,purchase,1704300000,,\n"
    b"u3,i1,view,2024-01-05 08:00:00,,\n"
    b"u4,i1,hover,2024-01-05T08:00:00Z,,\n"                   # unknown event type
    b"u4,i1,view,yesterday,,\n"                               # bad timestamp
    b",i1,view,2024-01-05T08:00:00Z,,\n"                      # missing user
    b"u4,i1,view\n"                                           # ragged row
    b"u5,\xff\xfe,view,2024-01-05T08:00:00Z,,\n"              # not UTF-8
    b"u4,i9,view,2024-01-05T08:00:00Z,,\n"                    # item not in catalog
    b"u4,,click,2024-01-05T08:00:00Z,,\n"                     # click without item
)


def test_preprocess_counts_and_quarantines_every_row(ray_cluster, recsys_home, tmp_path):
    (tmp_path / "catalog.csv").write_text(CATALOG)
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    (events_dir / "part-0.csv").write_bytes(EVENTS)
    (events_dir / "part-1.jsonl").write_text(
        json.dumps({"user_id": "u3", "item_id": "i2", "event_type": "click", "timestamp": 1704500000}) + "\n"
        + "{not json\n")

    cfg = PreprocessConfig(source=SourceConfig(path=str(events_dir), catalog=str(tmp_path / "catalog.csv")),
                           num_partitions=2)
    summary = run_preprocess(cfg)
    ev = summary["events"]
    assert ev["rows_in"] == 21
    assert ev["rows_in"] == ev["rows_valid"] + ev["rows_quarantined"]
    assert ev["rows_quarantined"] == 8
    assert ev["quarantined_by_reason"] == {
        "unknown_event_type": 1, "bad_timestamp": 1, "missing_user_id": 1, "unparsable_row": 3,
        "item_not_in_catalog": 1, "missing_item_id": 1}
    assert ev["dropped_by_reason"] == {"duplicate": 1} and ev["rows_kept"] == ev["rows_valid"] - 1
    assert summary["catalog"] == {"rows_in": 7, "rows_kept": 5, "rows_quarantined": 2, "titles_filled": 0,
                                  "quarantined_by_reason": {"duplicate_item_id": 1, "bad_price": 1}}

    out = recsys_home / "artifacts" / "data" / summary["version"]
    quarantine = pads.dataset(out / "quarantine" / "events").to_table().to_pylist()
    assert len(quarantine) == 8
    assert all(q["reason"] and q["detail"] and q["source"].endswith((".csv", ".jsonl")) for q in quarantine)
    by_reason = {q["reason"]: q for q in quarantine}
    assert "'hover'" in by_reason["unknown_event_type"]["detail"]
    assert "'yesterday'" in by_reason["bad_timestamp"]["detail"]
    assert by_reason["bad_timestamp"]["line"] == 15

    seqs = {r["user_id"]: r for r in pads.dataset(out / "sequences").to_table().to_pylist()}
    # u1: view+click of i1 in one session collapse to one step labelled 'click'.
    assert seqs["u1"]["items"] == ["i1", "i2", "i3", "i4"]
    assert seqs["u1"]["event_types"][0] == "click"
    assert (seqs["u1"]["valid_item"], seqs["u1"]["test_item"]) == ("i3", "i4")
    assert seqs["u2"]["items"] == ["i2", "i1", "i5"] and seqs["u2"]["test_item"] == "i5"
    assert seqs["u3"]["test_item"] is None                     # 2 items: no hold-out

    pairs = pads.dataset(out / "train_pairs").to_table().to_pandas()
    assert set(pairs["kind"]) == {"next_item", "search"}
    held_out = {"i3", "i4", "i1", "i5"} & {s["valid_item"] for s in seqs.values()} | {
        s["test_item"] for s in seqs.values() if s["test_item"]}
    u1_pairs = pairs[pairs["anchor_text"].str.contains("Red running shoe")]
    assert not set(u1_pairs["positive_item_id"]) & {"i3", "i4"}
    assert held_out  # the hold-out set is not empty, so the leak check above means something
    popularity = pq.read_table(out / "popularity.parquet").to_pandas()
    assert "i4" not in set(popularity["item_id"])              # test item of u1 is not counted
    assert json.loads((out / "summary.json").read_text())["users"] == 3
    dropped = pads.dataset(out / "dropped").to_table().to_pylist()
    assert [(d["user_id"], d["item_id"], d["reason"]) for d in dropped] == [("u1", "i4", "duplicate")]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("split", ["leave_last_out", "time"])
def test_ray_job_equals_single_process_reference(ray_cluster, recsys_home, tmp_path, split):
    """Same dirty multi-file input (Parquet split into several read units, CSV, JSONL): the Ray job and
    the single-process reference write the same rows: events, drops, sequences, splits, windows,
    retrieval pairs, ranking examples, quarantine."""
    from recsys.data.compare import compare_outputs
    from recsys.data.reference import run_reference
    from tests.fuzz_corpus import write_corpus

    events_dir, catalog = write_corpus(tmp_path, seed=7, n_users=120)
    cfg = PreprocessConfig(source=SourceConfig(path=str(events_dir), catalog=str(catalog)), num_partitions=5,
                           rows_per_read_task=1000, split={"method": split})
    ray_summary = run_preprocess(cfg)
    ref_summary = run_reference(cfg)
    assert compare_outputs(ray_summary["path"], ref_summary["path"]) == []
    ev = ray_summary["events"]
    assert ev["rows_in"] == ev["rows_valid"] + ev["rows_quarantined"] > 0
    assert ev["rows_valid"] == ev["rows_kept"] + ev["rows_dropped"]
    assert {"duplicate", "rapid_repeat", "bot_user"} <= set(ev["dropped_by_reason"])
    # A global time split only gives test targets to users active in the last 5% of the log.
    assert ray_summary["users_with_test"] > (50 if split == "leave_last_out" else 0)
    assert ray_summary["ranking_examples"]["negatives"] > 0
    if split == "time":
        assert ray_summary["split"]["valid_from"] < ray_summary["split"]["test_from"]


def test_declared_columns_hive_partitions_and_timestamp_unit(ray_cluster, recsys_home, tmp_path):
    """A shop's own log layout: other column names, the event type as a hive partition directory,
    epoch seconds declared as such, and a catalog keyed by `sku` with `name` for the title."""
    import pyarrow as pa

    for event_type, rows in {"view": [("v1", "s1", 700000000), ("v1", "s2", 700000100), ("v1", "s3", 700000200)],
                             "transaction": [("v1", "s3", 700000300), ("v2", "s1", 700000000)]}.items():
        folder = tmp_path / "logs" / f"event={event_type}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"visitor": [r[0] for r in rows], "sku": [r[1] for r in rows],
                                 "ts": [r[2] for r in rows]}), folder / "part-0.parquet")
    (tmp_path / "catalog.csv").write_text("sku,name,brand,category,description,price,in_stock\n"
                                          "s1,Hammer,Acme,Tools,,9,true\ns2,Saw,Acme,Tools,,19,true\n"
                                          "s3,Drill,Acme,Tools,,99,true\n")
    cfg = PreprocessConfig(source=SourceConfig(
        path=str(tmp_path / "logs"), catalog=str(tmp_path / "catalog.csv"), timestamp_unit="s",
        columns={"user_id": "visitor", "item_id": "sku", "event_type": "event", "timestamp": "ts"},
        catalog_columns={"item_id": "sku", "title": "name"}), num_partitions=2)
    summary = run_preprocess(cfg)
    assert summary["events"]["rows_in"] == 5 and summary["events"]["rows_quarantined"] == 0
    assert summary["events"]["event_mix"] == {"view": 3, "purchase": 2}       # alias transaction -> purchase
    out = recsys_home / "artifacts" / "data" / summary["version"]
    seqs = {r["user_id"]: r for r in pads.dataset(out / "sequences").to_table().to_pylist()}
    assert seqs["v1"]["items"] == ["s1", "s2", "s3"] and seqs["v1"]["event_types"][-1] == "purchase"
    assert seqs["v1"]["timestamps"][0] == 700000000 * 1_000_000                   # seconds, as declared
    assert pq.read_table(out / "catalog.parquet").column("title").to_pylist() == ["Hammer", "Saw", "Drill"]
