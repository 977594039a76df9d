"""The three steps of preprocessing as plain functions over frames (no Ray).

  validate_unit   one input split        -> typed events + quarantine rows     (per read unit)
  process_users   events of whole users  -> cleaned events, sequences, windows (per user partition)
  make_examples   sequences              -> retrieval pairs + ranking examples (per user partition)

The Ray job (pipeline.py) runs them in parallel over read units and user-hash partitions;
the single-process reference (reference.py) runs them once over everything. Every step is
per-user, so both produce the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.clean import clean_user_events
from recsys.data.config import PreprocessConfig
from recsys.data.examples import make_training_pairs, negative_distribution, ranking_examples
from recsys.data.histograms import merge_histograms, sequence_length_histogram
from recsys.data.holdout import held_out_mask
from recsys.data.sequences import build_user_sequences, item_counts, training_windows
from recsys.data.sources import ReadUnit, read_raw_table, read_unit
from recsys.data.text import catalog_texts
from recsys.data.validate import validate_catalog, validate_events
from recsys.schema import CATALOG_COLUMNS, EVENT_COLUMNS, EVENTS_SCHEMA

DROPPED_SCHEMA = pa.schema([*EVENTS_SCHEMA, ("reason", pa.string())])
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
                               ("detail", pa.string()), ("raw", pa.string())])


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def write_part(out: Path, name: str, part: int, table: pa.Table) -> None:
    """One Parquet file per partition and output; empty outputs write nothing."""
    if table.num_rows:
        (out / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / name / f"part-{part:05d}.parquet")


def read_renamed(read, source, columns: tuple[str, ...], names: Mapping[str, str]) -> pd.DataFrame:
    """Read the user's column names (source.columns) and hand back ours."""
    theirs = tuple(names.get(c, c) for c in columns)
    raw = read(source, theirs)
    return raw.rename(columns={t: c for t, c in zip(theirs, columns) if t != c})


@dataclass(frozen=True)
class ReadOptions:
    """How to read the input: the user's column names and timestamp unit. Synthetic data and data
    set adapters are written in our schema, so they read with the defaults."""

    event_columns: Mapping[str, str] = field(default_factory=dict)
    catalog_columns: Mapping[str, str] = field(default_factory=dict)
    timestamp_unit: str = "auto"


def prepare_catalog(catalog_src: str, names: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Catalog files -> (typed catalog, quarantine rows, stats). Catalogs fit in one process."""
    raw = read_renamed(read_raw_table, catalog_src, CATALOG_COLUMNS, names)
    catalog, bad = validate_catalog(raw)
    filled = int((raw["title"].isna() | (raw["title"].astype(str).str.strip() == "")).sum()) - int(
        (bad["reason"] == "missing_text").sum())
    return catalog, bad, {"rows_in": len(raw), "rows_kept": len(catalog), "rows_quarantined": len(bad),
                          "quarantined_by_reason": dict(Counter(bad["reason"])), "titles_filled": filled}


def validate_unit(unit: ReadUnit, known_items: set[str], cfg: PreprocessConfig,
                  read: ReadOptions) -> tuple[pa.Table, pa.Table, dict]:
    """One read unit -> (valid events, quarantine rows, stats)."""
    raw = read_renamed(read_unit, unit, EVENT_COLUMNS, read.event_columns)
    clean, bad = validate_events(raw, known_items, cfg.cleaning.event_type_aliases, read.timestamp_unit)
    stats = {"rows_in": len(raw), "rows_valid": len(clean), "quarantined_by_reason": dict(Counter(bad["reason"]))}
    return to_table(clean, EVENTS_SCHEMA), to_table(bad, QUARANTINE_SCHEMA), stats


def time_cutoffs(timestamps: np.ndarray, cfg: PreprocessConfig) -> tuple[int, int] | None:
    """Global time split: epoch-us cut-offs at quantiles of all valid event times ("lower" picks an
    actual event time, so any process computing it over the same events gets the same value)."""
    if cfg.split.method != "time" or len(timestamps) == 0:
        return None
    t_valid = np.quantile(timestamps, 1 - cfg.split.test_fraction - cfg.split.valid_fraction, method="lower")
    t_test = np.quantile(timestamps, 1 - cfg.split.test_fraction, method="lower")
    return int(t_valid), int(t_test)


def process_users(events: pa.Table, cfg: PreprocessConfig, cutoffs: tuple[int, int] | None) -> dict:
    """Valid events of whole users -> cleaned events, dropped rows, sequences, windows, item counts, stats."""
    c, s = cfg.cleaning, cfg.sequences
    kept, dropped = clean_user_events(events.to_pandas(), c.rapid_repeat_seconds, s.session_gap_minutes,
                                      c.bot_max_events_per_minute, c.bot_max_session_events)
    sequences = build_user_sequences(kept, s.max_length, s.event_weights, cutoffs, cfg.split.search_holdout_fraction)
    windows = training_windows(sequences, s.window_length, s.window_stride)
    counts = item_counts(sequences)
    lengths = pc.list_value_length(sequences.column("items")).to_numpy()
    stats = {
        "rows_kept": len(kept), "event_mix": {k: int(v) for k, v in kept["event_type"].value_counts().items()},
        "dropped_by_reason": dict(Counter(dropped["reason"])), "users": sequences.num_rows,
        "users_with_valid": int((sequences.column("valid_index").to_numpy() >= 0).sum()),
        "users_with_test": int((sequences.column("test_index").to_numpy() >= 0).sum()),
        "windows": windows.num_rows, "length_histogram": sequence_length_histogram(lengths),
        "search_holdout": search_holdout_counts(kept, cfg.split.search_holdout_fraction),
    }
    return {"events": to_table(kept, EVENTS_SCHEMA), "dropped": to_table(dropped, DROPPED_SCHEMA),
            "sequences": sequences, "windows": windows, "item_counts": counts, "stats": stats}


def search_holdout_counts(events: pd.DataFrame, fraction: float) -> dict[str, int]:
    """Searches with a click whose query is held out: events, and distinct (user, query) pairs.
    Both add up over user partitions, unlike distinct query strings."""
    searches = events[(events["event_type"] == "search") & events["item_id"].notna()]
    held = searches[held_out_mask(searches["query"].fillna(""), fraction)]
    return {"held_out_search_clicks": len(held),
            "held_out_user_queries": int(len(held.drop_duplicates(["user_id", "query"])))}


def report_search_holdout(example_stats: dict, user_stats: dict) -> dict:
    """summary.json lists held-out searches beside the training pairs by kind ("search" = pairs
    written; held_out_* = clicks whose query training must not see, kept for search evaluation)."""
    pairs = {**example_stats.get("train_pairs", {}), **user_stats.get("search_holdout", {})}
    return {**example_stats, "train_pairs": pairs}


def negative_sampling_table(catalog: pd.DataFrame, popularity: pd.DataFrame,
                            cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(catalog item ids, sampling probabilities) from the training popularity, as cfg.ranking says."""
    counts = dict(zip(popularity["item_id"], popularity["count"]))
    return negative_distribution(catalog["item_id"].to_numpy(), counts, cfg.ranking.negative_sampling,
                                 cfg.ranking.popularity_alpha)


class ExampleMaker:
    """Holds the catalog lookups and the negative-sampling distribution; sequences -> training sets."""

    def __init__(self, catalog: pd.DataFrame, item_ids: np.ndarray, probs: np.ndarray, cfg: PreprocessConfig):
        ids, titles, texts = catalog_texts(catalog)
        self.titles, self.texts = dict(zip(ids, titles)), dict(zip(ids, texts))
        self.item_ids, self.probs, self.cfg = item_ids, probs, cfg

    def __call__(self, sequences: pa.Table) -> dict:
        r, k = self.cfg.retrieval_pairs, self.cfg.ranking
        pairs = make_training_pairs(sequences, self.texts, self.titles, r.max_history_items, r.max_pairs_per_user)
        out = {"train_pairs": pa.Table.from_pandas(pairs, preserve_index=False),
               "stats": {"train_pairs": {kk: int(v) for kk, v in pairs["kind"].value_counts().items()}}}
        if k.enabled:
            ranking = ranking_examples(sequences, self.item_ids, self.probs, k.max_positives_per_user,
                                       k.negatives_per_positive, k.imbalance, k.seed)
            labels = ranking.column("label").to_numpy()
            out["ranking_examples"] = ranking
            out["stats"]["ranking_examples"] = {"positives": int((labels == 1).sum()),
                                                "negatives": int((labels == 0).sum())}
        return out


def merge_stats(parts: list[dict]) -> dict:
    """Sum per-partition stats (counts, nested count dicts, histograms) into one."""
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if key == "length_histogram":
                merged[key] = merge_histograms([merged[key], value]) if key in merged else value
            elif isinstance(value, dict):
                merged[key] = merge_stats([merged.get(key, {}), value])
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def sum_item_counts(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-partition item counts -> popularity.parquet rows (count desc, then item id)."""
    if not frames or all(f.empty for f in frames):
        return pd.DataFrame({"item_id": pd.Series([], dtype=object), "count": pd.Series([], dtype="int64")})
    total = pd.concat(frames).groupby("item_id", as_index=False)["count"].sum()
    return total.sort_values(["count", "item_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
