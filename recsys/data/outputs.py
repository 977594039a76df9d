"""What a data version holds, and the start/finish steps both preprocess runners share.

  catalog.parquet, events/, sequences/, windows/, train_pairs/, ranking_examples/,
  popularity.parquet, quarantine/{events/, catalog.parquet}, dropped/ (cleaning removals,
  with reason), summary.json, report.png, manifest.json
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.artifacts import mark_latest, new_version_dir, write_json, write_manifest
from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.report import write_report_chart
from recsys.data.stages import QUARANTINE_SCHEMA, ReadOptions, prepare_catalog, to_table
from recsys.schema import CATALOG_SCHEMA

OUTPUTS = ("events", "dropped", "sequences", "windows", "train_pairs", "ranking_examples")


def materialize_source(source: SourceConfig, input_dir: Path) -> tuple[str, str, str, bool]:
    """Synthetic data and public data sets become generic Parquet files, so every source
    goes through the same validation path. Returns (events path, catalog path, description,
    whether these are the user's own files, read with source.columns / timestamp_unit)."""
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
            return source.path, source.catalog, f"files({source.path})", True
        options = {}
        if source.min_relevance is not None:
            if dataset != "homedepot":
                raise ValueError(f"source.min_relevance={source.min_relevance} applies to graded search judgments "
                                 f"(homedepot), not to the {dataset} data set at {source.path!r}")
            options["min_relevance"] = source.min_relevance
        events, catalog = ADAPTERS[dataset](source.path, **options)
        described = f"{dataset}({Path(source.path).resolve()})"
    input_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, input_dir / "events.parquet")
    pq.write_table(catalog, input_dir / "catalog.parquet")
    return str(input_dir / "events.parquet"), str(input_dir / "catalog.parquet"), described, False


def write_catalog(catalog_src: str, out: Path, names: Mapping[str, str]) -> tuple[pd.DataFrame, dict]:
    """Validated catalog -> catalog.parquet (+ quarantine/catalog.parquet); returns it and its stats."""
    catalog, bad, stats = prepare_catalog(catalog_src, names)
    pq.write_table(to_table(catalog, CATALOG_SCHEMA), out / "catalog.parquet")
    (out / "quarantine").mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(bad, QUARANTINE_SCHEMA), out / "quarantine" / "catalog.parquet")
    return catalog, stats


@dataclass
class Run:
    """What both runners know once the source is read in: the version being written and its catalog."""

    version: str
    out: Path
    events_src: str
    described: str
    read: ReadOptions
    catalog: pd.DataFrame
    catalog_stats: dict
    started: float


def start_run(cfg: PreprocessConfig) -> Run:
    """New data version; source materialised; catalog validated and written."""
    started = time.perf_counter()
    version, out = new_version_dir("data")
    events_src, catalog_src, described, own_files = materialize_source(cfg.source, out / "input")
    s = cfg.source
    read = ReadOptions(dict(s.columns), dict(s.catalog_columns), s.timestamp_unit) if own_files else ReadOptions()
    catalog, catalog_stats = write_catalog(catalog_src, out, read.catalog_columns)
    return Run(version, out, events_src, described, read, catalog, catalog_stats, started)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


class RowsLost(RuntimeError):
    """Events in != events kept + dropped + quarantined: some rows went missing without a reason."""


def check_row_accounting(events: dict) -> None:
    """Every event row read is kept, dropped by a cleaning rule, or quarantined; anything else is a bug
    that would lose data silently, so the run fails before it publishes a data version."""
    accounted = events["rows_kept"] + events["rows_dropped"] + events["rows_quarantined"]
    if events["rows_in"] != accounted:
        raise RowsLost(f"{events['rows_in']} event rows were read but {accounted} are accounted for "
                       f"(kept {events['rows_kept']} + dropped {events['rows_dropped']} + quarantined "
                       f"{events['rows_quarantined']}): {events['rows_in'] - accounted:+d} rows unexplained; "
                       "no data version was published")


def finish(run: Run, cfg: PreprocessConfig, read_stats: dict, user_stats: dict, example_stats: dict,
           popularity: pd.DataFrame, cutoffs: tuple[int, int] | None) -> dict:
    """Write popularity, summary.json, report.png and the manifest; mark the version latest."""
    out, version, described = run.out, run.version, run.described
    pq.write_table(pa.Table.from_pandas(popularity, preserve_index=False), out / "popularity.parquet")
    quarantined = dict(sorted(read_stats.get("quarantined_by_reason", {}).items()))
    dropped = dict(sorted(user_stats.get("dropped_by_reason", {}).items()))
    ranking = example_stats.get("ranking_examples", {})
    k = cfg.ranking
    summary = {
        "version": version, "source": described,
        "events": {"rows_in": read_stats.get("rows_in", 0), "rows_valid": read_stats.get("rows_valid", 0),
                   "rows_quarantined": sum(quarantined.values()), "quarantined_by_reason": quarantined,
                   "rows_dropped": sum(dropped.values()), "dropped_by_reason": dropped,
                   "rows_kept": user_stats.get("rows_kept", 0), "event_mix": user_stats.get("event_mix", {})},
        "catalog": run.catalog_stats,
        "split": {"method": cfg.split.method,
                  **({"valid_from": _iso(cutoffs[0]), "test_from": _iso(cutoffs[1])} if cutoffs else {})},
        "users": user_stats.get("users", 0), "users_with_valid": user_stats.get("users_with_valid", 0),
        "users_with_test": user_stats.get("users_with_test", 0), "windows": user_stats.get("windows", 0),
        "items_in_catalog": len(run.catalog), "items_with_interactions": len(popularity),
        "train_pairs": example_stats.get("train_pairs", {}),
        "ranking_examples": {**ranking, "negative_sampling": k.negative_sampling,
                             "negatives_per_positive": k.negatives_per_positive, "imbalance": k.imbalance,
                             "positive_weight": float(k.negatives_per_positive) if k.imbalance == "reweight" else 1.0,
                             "positive_repeats": k.negatives_per_positive if k.imbalance == "resample" else 1}
        if k.enabled else {"enabled": False},
        "sequence_length_histogram": user_stats.get("length_histogram", {"edges": [], "counts": []}),
        "seconds": round(time.perf_counter() - run.started, 1),
    }
    check_row_accounting(summary["events"])
    write_report_chart({"title": f"preprocess {version} — {described}", "event_mix": summary["events"]["event_mix"],
                        "rejected_by_reason": {**quarantined, **dropped},
                        "sequence_length_histogram": summary["sequence_length_histogram"],
                        "item_popularity": popularity["count"].tolist()}, out / "report.png")
    write_json(out / "summary.json", summary)
    write_manifest(out, {"kind": "data", "version": version, "source": described, "config": cfg.model_dump(),
                         "outputs": [o for o in OUTPUTS if (out / o).exists()]})
    mark_latest("data", version)
    return {**summary, "path": str(out)}
