"""Single-process preprocess: the same steps as the Ray job, run once over everything in memory.

It exists to check the Ray job (same input -> same rows) and to measure it against
(bench/preprocess_bench.py). It is also handy for debugging a data set on a laptop, but it
holds every event in one process, so it does not scale past memory.
"""

from __future__ import annotations

import time

import pyarrow as pa

from recsys.data.config import PreprocessConfig
from recsys.data.outputs import finish, start_run
from recsys.data.sources import plan_read_units
from recsys.data.stages import (
    ExampleMaker,
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

JOB = "preprocess-reference"


def run_reference(cfg: PreprocessConfig) -> dict:
    run = start_run(cfg)
    out = run.out
    known = set(run.catalog["item_id"])
    log(JOB, f"source {run.described}; catalog {run.catalog_stats['rows_kept']} items")

    valid_parts, read_parts = [], []
    for n, unit in enumerate(plan_read_units(run.events_src, cfg.rows_per_read_task)):
        valid, bad, stats = validate_unit(unit, known, cfg, run.read)
        write_part(out, "quarantine/events", n, bad)
        valid_parts.append(valid)
        read_parts.append(stats)
    events = pa.concat_tables(valid_parts) if valid_parts else pa.table({})
    read_stats = merge_stats(read_parts)
    log(JOB, f"validated {read_stats['rows_in']} rows in {time.perf_counter() - run.started:.1f}s")

    cutoffs = time_cutoffs(events.column("timestamp").cast(pa.int64()).to_numpy(), cfg)
    users = process_users(events, cfg, cutoffs)
    del events
    for name in ("events", "dropped", "sequences", "windows"):
        write_part(out, name, 0, users[name])
    popularity = sum_item_counts([users["item_counts"]])
    log(JOB, f"sequences for {users['stats']['users']} users in {time.perf_counter() - run.started:.1f}s")

    item_ids, probs = negative_sampling_table(run.catalog, popularity, cfg)
    examples = ExampleMaker(run.catalog, item_ids, probs, cfg)(users["sequences"])
    for name in ("train_pairs", "ranking_examples"):
        if name in examples:
            write_part(out, name, 0, examples[name])
    summary = finish(run, cfg, read_stats, users["stats"], report_search_holdout(examples["stats"], users["stats"]),
                     popularity, cutoffs)
    log(JOB, f"done in {summary['seconds']}s: {out}")
    return summary
