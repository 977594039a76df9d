"""The preprocess stage on Ray Data: files -> validated events -> sequences -> training pairs.

Ray shells only: every transformation is a pure function from recsys.data.* applied with
`map_batches`. Output (one data version directory):
  catalog.parquet, events/, sequences/, train_pairs/, popularity.parquet,
  quarantine/{events,catalog}.jsonl, summary.json, manifest.json
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from recsys.artifacts import mark_latest, new_version_dir, write_json, write_manifest
from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.sequences import (
    assign_sessions,
    build_user_sequences,
    drop_duplicate_events,
    item_popularity,
    make_training_pairs,
)
from recsys.data.sources import list_input_files, parse_raw_records, read_raw_table
from recsys.data.text import catalog_texts
from recsys.data.validate import validate_catalog, validate_events
from recsys.runtime import log
from recsys.schema import CATALOG_COLUMNS, CATALOG_SCHEMA, EVENT_COLUMNS, EVENTS_SCHEMA

JOB = "preprocess"


def materialize_source(source: SourceConfig, input_dir: Path) -> tuple[str, str, str]:
    """Synthetic data and public data sets become generic Parquet files, so every source
    goes through the same validation path. Returns (events path, catalog path, description)."""
    from recsys.data.adapters import ADAPTERS, detect_dataset
    from recsys.data.synthetic import generate_synthetic

    if source.path is None:
        s = source.synthetic
        events, catalog = generate_synthetic(n_users=s.n_users, n_items=s.n_items, seed=s.seed)
        described = f"synthetic(n_users={s.n_users}, n_items={s.n_items}, seed={s.seed})"
    else:
        dataset = detect_dataset(source.path) if Path(source.path).is_dir() else None
        if dataset is None:
            if source.catalog is None:
                raise ValueError(f"source.catalog is required with generic events at source.path={source.path!r}")
            return source.path, source.catalog, f"files({source.path})"
        events, catalog = ADAPTERS[dataset](source.path)
        described = f"{dataset}({Path(source.path).resolve()})"
    input_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, input_dir / "events.parquet")
    pq.write_table(catalog, input_dir / "catalog.parquet")
    return str(input_dir / "events.parquet"), str(input_dir / "catalog.parquet"), described


class ParseAndValidate:
    """Actor: one raw file (bytes) -> typed events + quarantine rows in one frame.

    Rows carry `reason` (null when valid) so one pass serves both outputs.
    """

    def __init__(self, catalog_path: str):
        self.known_items = set(pq.read_table(catalog_path, columns=["item_id"]).column(0).to_pylist())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        frames = []
        for data, path in zip(batch["bytes"], batch["path"]):
            raw = parse_raw_records(bytes(data), path, EVENT_COLUMNS)
            clean, quarantine = validate_events(raw, self.known_items)
            frames += [clean.assign(reason=None), quarantine]
        out = pd.concat(frames, ignore_index=True)
        out["line"] = out["line"].astype("Int64")
        return out


def _valid_rows(frame: pd.DataFrame) -> pa.Table:
    ok = frame[frame["reason"].isna()][list(EVENT_COLUMNS)]
    return pa.Table.from_pandas(ok, schema=EVENTS_SCHEMA, preserve_index=False)


def _quarantined_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["reason"].notna()][["source", "line", "reason", "detail", "raw"]]


def _write_quarantine(rows, path: Path) -> Counter:
    """Stream quarantine rows to one JSONL file (a user greps one file) and count reasons."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reasons: Counter = Counter()
    with path.open("w", encoding="utf-8") as fh:
        for frame in rows:
            for rec in frame.to_dict(orient="records"):
                rec["line"] = None if pd.isna(rec["line"]) else int(rec["line"])
                reasons[rec["reason"]] += 1
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return reasons


def _sessionize(frame: pd.DataFrame, gap_minutes: float) -> pd.DataFrame:
    return assign_sessions(drop_duplicate_events(frame), gap_minutes)


class PairBuilder:
    """Actor holding catalog text lookups; users -> training pairs."""

    def __init__(self, catalog_path: str, max_history_items: int, max_pairs_per_user: int):
        ids, titles, texts = catalog_texts(pq.read_table(catalog_path).to_pandas())
        self.titles, self.texts = dict(zip(ids, titles)), dict(zip(ids, texts))
        self.max_history_items, self.max_pairs_per_user = max_history_items, max_pairs_per_user

    def __call__(self, sequences: pd.DataFrame) -> pd.DataFrame:
        return make_training_pairs(sequences, self.texts, self.titles, self.max_history_items,
                                   self.max_pairs_per_user)


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """Run the whole stage; returns the summary (also written as summary.json)."""
    started = time.perf_counter()
    version, out = new_version_dir("data")
    log(JOB, f"data version {version} -> {out}")
    events_path, catalog_src, described = materialize_source(cfg.source, out / "input")
    log(JOB, f"1/5 source: {described}")

    raw_catalog = read_raw_table(catalog_src, CATALOG_COLUMNS)
    catalog, catalog_bad = validate_catalog(raw_catalog)
    catalog_path = out / "catalog.parquet"
    pq.write_table(pa.Table.from_pandas(catalog, schema=CATALOG_SCHEMA, preserve_index=False), catalog_path)
    catalog_reasons = _write_quarantine([catalog_bad], out / "quarantine" / "catalog.jsonl")
    log(JOB, f"2/5 catalog: {len(raw_catalog)} rows in, {len(catalog)} kept, {len(catalog_bad)} quarantined")

    files = list_input_files(events_path)
    mixed = (ray.data.read_binary_files(files, include_paths=True)
             .map_batches(ParseAndValidate, fn_constructor_kwargs={"catalog_path": str(catalog_path)},
                          batch_size=1, batch_format="pandas", num_cpus=0.5,
                          # Half a CPU per actor leaves room for the read tasks feeding them;
                          # whole-CPU actors on a 2-CPU node starve the reader and deadlock.
                          compute=ray.data.ActorPoolStrategy(
                              min_size=1, max_size=min(cfg.parse_concurrency, len(files))))
             .materialize())
    valid = mixed.map_batches(_valid_rows, batch_format="pandas", batch_size=None)
    reasons = _write_quarantine(
        mixed.map_batches(_quarantined_rows, batch_format="pandas", batch_size=None)
        .iter_batches(batch_format="pandas", batch_size=4096),
        out / "quarantine" / "events.jsonl")
    rows_valid = valid.count()
    rows_quarantined = sum(reasons.values())
    log(JOB, f"3/5 events: {rows_valid + rows_quarantined} rows in {len(files)} file(s), {rows_valid} valid, "
             f"{rows_quarantined} quarantined {dict(reasons)}")

    # Hash-partition by user so each block holds whole users; per-block pandas is far
    # faster than groupby().map_groups (see PLATFORM_NOTES).
    events = (valid.repartition(cfg.num_partitions, keys=["user_id"])
              .map_batches(_sessionize, fn_kwargs={"gap_minutes": cfg.session_gap_minutes},
                           batch_size=None, batch_format="pandas")
              .materialize())
    events.write_parquet(str(out / "events"))
    events_kept = events.count()
    sequences = (events.map_batches(build_user_sequences, fn_kwargs={"max_length": cfg.max_sequence_length},
                                    batch_size=None, batch_format="pandas")
                 .materialize())
    sequences.write_parquet(str(out / "sequences"))
    seq_stats = sequences.map_batches(
        lambda df: pd.DataFrame({"users": [len(df)], "holdout": [int(df["test_item"].notna().sum())]}),
        batch_format="pandas", batch_size=None).sum(["users", "holdout"])
    log(JOB, f"4/5 sequences: {events_kept} events after dropping {rows_valid - events_kept} duplicates, "
             f"{seq_stats['sum(users)']} users, {seq_stats['sum(holdout)']} with a held-out last item")

    pairs = sequences.map_batches(
        PairBuilder, fn_constructor_kwargs={"catalog_path": str(catalog_path),
                                            "max_history_items": cfg.max_history_items,
                                            "max_pairs_per_user": cfg.max_pairs_per_user},
        batch_format="pandas", batch_size=512, num_cpus=0.5,
        compute=ray.data.ActorPoolStrategy(size=1)).materialize()
    pairs.write_parquet(str(out / "train_pairs"))
    kind_counts = pairs.map_batches(lambda df: df["kind"].value_counts().rename("n").reset_index(),
                                    batch_format="pandas", batch_size=None).to_pandas()
    pair_kinds = ({k: int(n) for k, n in kind_counts.groupby("kind")["n"].sum().items()}
                  if len(kind_counts) else {})
    # Per-block counts are at most (#items x #blocks) rows: summing them on the driver beats
    # a Ray hash aggregation with hundreds of partitions on a small cluster.
    popularity = (sequences.map_batches(item_popularity, batch_format="pandas", batch_size=None).to_pandas()
                  .groupby("item_id", as_index=False)["count"].sum().sort_values("count", ascending=False))
    pq.write_table(pa.Table.from_pandas(popularity, preserve_index=False), out / "popularity.parquet")
    log(JOB, f"5/5 training pairs: {pair_kinds}; {len(popularity)} items with training interactions")

    summary = {
        "version": version, "source": described,
        "events": {"rows_in": rows_valid + rows_quarantined, "rows_valid": rows_valid,
                   "rows_quarantined": rows_quarantined, "quarantined_by_reason": dict(reasons),
                   "duplicates_dropped": rows_valid - events_kept, "rows_kept": events_kept},
        "catalog": {"rows_in": len(raw_catalog), "rows_kept": len(catalog),
                    "rows_quarantined": len(catalog_bad), "quarantined_by_reason": dict(catalog_reasons)},
        "users": int(seq_stats["sum(users)"]), "users_with_holdout": int(seq_stats["sum(holdout)"]),
        "items_in_catalog": len(catalog), "items_with_interactions": len(popularity),
        "train_pairs": pair_kinds, "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "summary.json", summary)
    write_manifest(out, {"kind": "data", "version": version, "source": described, "config": cfg.model_dump()})
    mark_latest("data", version)
    log(JOB, f"done in {summary['seconds']}s: {out}")
    return {**summary, "path": str(out)}
