"""The preprocess job on Ray Data: read units -> user-hash partitions -> sequences -> training sets.

Ray Data's per-user groupby is its slow path (PLATFORM_NOTES: 29 s vs 1.5 s for 1M events),
and a generic `repartition(keys=...)` moves every row through the object store twice. So the
shuffle is done the way Spark does it: each read task validates its split and writes its
valid events into one Parquet file per user-hash bucket; then one task per bucket has every
event of its users and runs vectorised pandas/numpy on them (stages.process_users). Ray Data
schedules and streams the tasks; the rows travel through files the outputs need anyway.
Every step is a pure function from stages.py, shared with the single-process reference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from recsys.data.config import PreprocessConfig
from recsys.data.outputs import finish, start_run
from recsys.data.sources import ReadUnit, plan_read_units
from recsys.data.stages import (
    ExampleMaker,
    ReadOptions,
    merge_stats,
    negative_sampling_table,
    process_users,
    report_search_holdout,
    sum_item_counts,
    time_cutoffs,
    validate_unit,
    write_part,
)
from recsys.runtime import log

JOB = "preprocess"


def user_buckets(user_ids: pa.Array, num_partitions: int) -> np.ndarray:
    """Stable hash of user_id -> partition: the same in every process (Python's hash() is salted)."""
    hashed = pd.util.hash_array(np.asarray(user_ids.to_numpy(zero_copy_only=False), dtype=object))
    return (hashed % np.uint64(num_partitions)).astype(np.int64)


def _stats_batch(stats: dict) -> dict:
    return {"stats": np.array([json.dumps(stats)])}


def _bucket_dir(staging: Path, bucket: int) -> Path:
    return staging / f"bucket={bucket:05d}"


def validate_and_partition(batch: dict, catalog_path: str, out: str, cfg: PreprocessConfig,
                           read: ReadOptions) -> dict:
    """Read task: one unit -> quarantine part + one staging file per user bucket."""
    n, unit = int(batch["unit"][0]), ReadUnit.from_json(str(batch["spec"][0]))
    known = set(pq.read_table(catalog_path, columns=["item_id"]).column(0).to_pylist())
    valid, bad, stats = validate_unit(unit, known, cfg, read)
    write_part(Path(out), "quarantine/events", n, bad)
    buckets = user_buckets(valid.column("user_id"), cfg.num_partitions)
    order = np.argsort(buckets, kind="stable")
    valid, buckets = valid.take(pa.array(order)), buckets[order]
    edges = np.flatnonzero(np.diff(buckets)) + 1
    for start, stop in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(buckets)]])):
        if stop > start:
            folder = _bucket_dir(Path(out) / "staging", int(buckets[start]))
            folder.mkdir(parents=True, exist_ok=True)
            # Files are named by unit so a bucket reads its users' events in input order.
            pq.write_table(valid.slice(start, stop - start), folder / f"unit-{n:05d}.parquet")
    return _stats_batch(stats)


def process_bucket(batch: dict, out: str, cfg: PreprocessConfig, cutoffs: tuple[int, int] | None) -> dict:
    """Bucket task: every event of its users -> events/dropped/sequences/windows parts + item counts."""
    bucket = int(batch["bucket"][0])
    folder = _bucket_dir(Path(out) / "staging", bucket)
    events = pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob("unit-*.parquet"))])
    result = process_users(events, cfg, cutoffs)
    for name in ("events", "dropped", "sequences", "windows"):
        write_part(Path(out), name, bucket, result[name])
    write_part(Path(out), "staging/item_counts", bucket, pa.Table.from_pandas(result["item_counts"],
                                                                              preserve_index=False))
    return _stats_batch(result["stats"])


def make_examples(batch: dict, out: str, cfg: PreprocessConfig) -> dict:
    """Bucket task: its sequences -> retrieval pairs + ranking examples parts.

    A plain task that loads the catalog itself (~0.3 s for 50k items) measured faster than an
    actor pool here: actor start-up cost ~10 s of wall time on 2 CPUs.
    """
    bucket, root = int(batch["bucket"][0]), Path(out)
    path = root / "sequences" / f"part-{bucket:05d}.parquet"
    if not path.exists():
        return _stats_batch({})
    negatives = pq.read_table(root / "staging" / "negatives.parquet")
    make = ExampleMaker(pq.read_table(root / "catalog.parquet").to_pandas(),
                        negatives.column("item_id").to_numpy(zero_copy_only=False),
                        negatives.column("prob").to_numpy(), cfg)
    result = make(pq.read_table(path))
    for name in ("train_pairs", "ranking_examples"):
        if name in result:
            write_part(root, name, bucket, result[name])
    return _stats_batch(result["stats"])


def _run_stage(items: list[dict], fn, **kwargs) -> dict:
    """One Ray Data stage over small work items (unit or bucket numbers); returns merged stats."""
    ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
    rows = ds.map_batches(fn, batch_size=1, batch_format="numpy", **kwargs).take_all()
    return merge_stats([json.loads(r["stats"]) for r in rows])


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """Run the whole job; returns the summary (also written as summary.json) plus "path"."""
    run = start_run(cfg)
    out, started, catalog_stats = run.out, run.started, run.catalog_stats
    log(JOB, f"data version {run.version} -> {out}")
    log(JOB, f"1/4 source {run.described}; catalog: {catalog_stats['rows_in']} rows in, "
             f"{catalog_stats['rows_kept']} kept, {catalog_stats['rows_quarantined']} quarantined, "
             f"{catalog_stats['titles_filled']} titles filled")

    units = plan_read_units(run.events_src, cfg.rows_per_read_task)
    read_stats = _run_stage([{"unit": n, "spec": u.to_json()} for n, u in enumerate(units)],
                            validate_and_partition, num_cpus=1,
                            fn_kwargs={"catalog_path": str(out / "catalog.parquet"), "out": str(out), "cfg": cfg,
                                       "read": run.read})
    quarantined = sum(read_stats.get("quarantined_by_reason", {}).values())
    log(JOB, f"2/4 events: {read_stats.get('rows_in', 0)} rows in {len(units)} read task(s), "
             f"{read_stats.get('rows_valid', 0)} valid, {quarantined} quarantined "
             f"{read_stats.get('quarantined_by_reason', {})} ({time.perf_counter() - started:.0f}s)")

    staging = out / "staging"
    buckets = sorted(int(p.name.split("=")[1]) for p in staging.glob("bucket=*")) if staging.exists() else []
    cutoffs = None
    if cfg.split.method == "time" and buckets:
        stamps = pads.dataset(str(staging), format="parquet", exclude_invalid_files=True).to_table(
            columns=["timestamp"]).column(0).cast(pa.int64()).to_numpy()
        cutoffs = time_cutoffs(stamps, cfg)
    user_stats = _run_stage([{"bucket": b} for b in buckets], process_bucket, num_cpus=1,
                            fn_kwargs={"out": str(out), "cfg": cfg, "cutoffs": cutoffs})
    counts_dir = staging / "item_counts"
    popularity = sum_item_counts([pq.read_table(f).to_pandas() for f in sorted(counts_dir.glob("*.parquet"))]
                                 if counts_dir.exists() else [])
    log(JOB, f"3/4 users: {user_stats.get('rows_kept', 0)} events kept, dropped "
             f"{user_stats.get('dropped_by_reason', {})}; {user_stats.get('users', 0)} users, "
             f"{user_stats.get('users_with_test', 0)} with a test target ({time.perf_counter() - started:.0f}s)")

    item_ids, probs = negative_sampling_table(run.catalog, popularity, cfg)
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.string()), "prob": pa.array(probs)}),
                   staging / "negatives.parquet")
    example_stats = _run_stage([{"bucket": b} for b in buckets], make_examples, num_cpus=1,
                               fn_kwargs={"out": str(out), "cfg": cfg})
    example_stats = report_search_holdout(example_stats, user_stats)
    log(JOB, f"4/4 training sets: pairs {example_stats.get('train_pairs', {})}, ranking "
             f"{example_stats.get('ranking_examples', {})} ({time.perf_counter() - started:.0f}s)")

    shutil.rmtree(staging, ignore_errors=True)
    summary = finish(run, cfg, read_stats, user_stats, example_stats, popularity, cutoffs)
    log(JOB, f"done in {summary['seconds']}s: {out}")
    return summary
