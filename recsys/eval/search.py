"""Search evaluation logic (no Ray): graded judgments, the held-out queries, metrics per method.

A method is anything that scores every catalog item for a block of queries; each judged
item's rank in that full ranking gives graded NDCG@K (gain = relevance - relevance_floor,
unjudged items gain 0) and Recall@K of the clearly relevant pairs. Only queries that the
preprocess holdout kept out of training are evaluated (recsys.data.holdout).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.data.adapters import detect_dataset
from recsys.data.holdout import held_out_mask
from recsys.eval.metrics import graded_ndcg_at_k, judged_ranks, relevant_recall_at_k

JUDGMENT_COLUMNS = ("query", "item_id", "relevance")
HOMEDEPOT_COLUMNS = {"search_term": "query", "product_uid": "item_id", "relevance": "relevance"}
QUERY_CHUNK = 256   # queries scored at once: [256, N] float32 is 56 MB for N = 54,667


def _read_table(path: Path) -> pd.DataFrame:
    if path.is_dir():
        if detect_dataset(path) != "homedepot":
            raise ValueError(f"judgments={str(path)!r} is a directory but not the Home Depot data set (train.csv "
                             f"with search_term, product_uid, relevance); give a .csv or .parquet file with "
                             f"columns {list(JUDGMENT_COLUMNS)}")
        raw = pd.read_csv(path / "train.csv", encoding="latin-1", dtype=str, keep_default_na=False,
                          usecols=list(HOMEDEPOT_COLUMNS))
        return raw.rename(columns=HOMEDEPOT_COLUMNS)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).to_pandas()
    raise ValueError(f"judgments={str(path)!r}: expected the Home Depot directory, a .csv or a .parquet file")


def _stripped(column: pd.Series) -> pd.Series:
    """Text with surrounding space removed; missing values become "" (reported as empty)."""
    return column.astype("string").fillna("").str.strip().astype(object)


def read_judgments(path: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Graded judgments -> (frame with query, item_id, relevance; stats).

    Queries are stripped the way preprocessing validates search events, so the holdout sees
    the same strings. A (query, item) judged twice gets the mean relevance (counted in stats).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"judgments={str(path)!r} does not exist")
    raw = _read_table(p)
    missing = [c for c in JUDGMENT_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"judgments {p} lacks columns {missing}; found columns {list(raw.columns)}")
    frame = pd.DataFrame({"query": _stripped(raw["query"]), "item_id": _stripped(raw["item_id"]),
                          "relevance": pd.to_numeric(raw["relevance"], errors="coerce")})
    for column in ("query", "item_id"):
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if empty.size:
            raise ValueError(f"judgments {p}: {column} is empty in data row {int(empty[0]) + 1} "
                             f"({empty.size} row(s) in all)")
    bad = np.flatnonzero(frame["relevance"].isna().to_numpy())
    if bad.size:
        raise ValueError(f"judgments {p}: relevance={raw['relevance'].iloc[bad[0]]!r} in data row {int(bad[0]) + 1} "
                         f"is not a number ({bad.size} row(s) in all)")
    merged = frame.groupby(["query", "item_id"], as_index=False, sort=True)["relevance"].mean()
    return merged, {"rows": len(frame), "duplicate_pairs_averaged": len(frame) - len(merged)}


def holdout_fraction(data_manifest: dict) -> float:
    """The split.search_holdout_fraction the data version was preprocessed with."""
    fraction = data_manifest.get("config", {}).get("split", {}).get("search_holdout_fraction")
    if fraction is None:
        raise ValueError(f"data version {data_manifest.get('version')} has no split.search_holdout_fraction in its "
                         "manifest (preprocessed before the search holdout existed): its training pairs may hold "
                         "every query, so re-run jobs/preprocess.py and evaluate the new version")
    return float(fraction)


@dataclass
class EvalQueries:
    """The evaluated queries and their judged pairs, sorted by query then catalog position."""

    queries: list[str]                 # [Q] query texts
    query: np.ndarray                  # [P] index into queries
    item: np.ndarray                   # [P] catalog position of the judged item
    gain: np.ndarray                   # [P] max(relevance - floor, 0)
    relevant: np.ndarray               # [P] relevance >= relevant_threshold
    counts: dict[str, int] = field(default_factory=dict)


def held_out_judgments(judgments: pd.DataFrame, item_position: Mapping[str, int], holdout_fraction: float,
                       relevance_floor: float = 1.0, relevant_threshold: float = 2.5,
                       max_queries: int | None = None, seed: int = 0) -> EvalQueries:
    """Judged pairs of the queries training never saw, restricted to catalog items, as arrays.

    Queries whose judged catalog items all gain 0 have no ideal ranking and are skipped; pairs
    whose item is not in the catalog cannot be retrieved by any method and are left out; both
    are counted. max_queries draws a seeded sample of the remaining queries.
    """
    if holdout_fraction <= 0:
        raise ValueError(f"search_holdout_fraction={holdout_fraction!r}: no query is held out of training, "
                         "so there is nothing to evaluate (re-run preprocess with a fraction > 0)")
    held = judgments[held_out_mask(judgments["query"], holdout_fraction)]
    position = held["item_id"].map(item_position)
    in_catalog = held[position.notna()].assign(item=position.dropna().astype(np.int64))
    gain = np.maximum(in_catalog["relevance"].to_numpy(np.float64) - relevance_floor, 0.0)
    in_catalog = in_catalog.assign(gain=gain)
    useful = in_catalog.groupby("query")["gain"].max()
    queries = sorted(useful.index[useful > 0])
    counts = {"judged_queries": int(judgments["query"].nunique()), "held_out_queries": int(held["query"].nunique()),
              "held_out_pairs_not_in_catalog": int(len(held) - len(in_catalog)),
              "queries_skipped_no_gain": int(held["query"].nunique() - len(queries))}
    if not queries:
        raise ValueError(f"no held-out query has a judged catalog item with relevance above "
                         f"relevance_floor={relevance_floor}: {counts}")
    if max_queries is not None and len(queries) > max_queries:
        rng = np.random.default_rng(seed)
        queries = [queries[i] for i in sorted(rng.choice(len(queries), max_queries, replace=False))]
    counts["evaluated_queries"] = len(queries)
    index = {q: i for i, q in enumerate(queries)}
    pairs = in_catalog[in_catalog["query"].isin(index)].assign(q=lambda f: f["query"].map(index))
    pairs = pairs.sort_values(["q", "item"], kind="stable")
    counts["evaluated_pairs"] = len(pairs)
    return EvalQueries(queries, pairs["q"].to_numpy(np.int64), pairs["item"].to_numpy(np.int64),
                       pairs["gain"].to_numpy(np.float64),
                       (pairs["relevance"] >= relevant_threshold).to_numpy(), counts)


def rank_judged_items(score_block: Callable[[int, int], np.ndarray], ev: EvalQueries, n_items: int,
                      chunk: int = QUERY_CHUNK) -> np.ndarray:
    """Rank of every judged pair in its query's full ranking. score_block(a, b) -> [b - a, n_items]."""
    ranks = np.empty(len(ev.query), dtype=np.int64)
    for start in range(0, len(ev.queries), chunk):
        stop = min(start + chunk, len(ev.queries))
        block = np.asarray(score_block(start, stop))
        if block.shape != (stop - start, n_items):
            raise ValueError(f"score block for queries [{start}, {stop}) has shape {block.shape}, "
                             f"expected {(stop - start, n_items)}")
        a, b = np.searchsorted(ev.query, [start, stop])
        ranks[a:b] = judged_ranks(block, ev.query[a:b] - start, ev.item[a:b])
    return ranks


def summarize_search(ev: EvalQueries, ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """ndcg@k (mean over queries) and recall@k (mean over queries with a relevant pair) for every k."""
    n = len(ev.queries)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = float(graded_ndcg_at_k(ev.query, ev.gain, ranks, k, n).mean())
    recalls = {k: relevant_recall_at_k(ev.query, ev.relevant, ranks, k, n) for k in ks}
    with_relevant = int(np.isfinite(recalls[ks[0]]).sum()) if ks else 0
    for k in ks:
        out[f"recall@{k}"] = float(np.nanmean(recalls[k])) if with_relevant else float("nan")
    out["queries"] = n
    out["queries_with_relevant"] = with_relevant
    return out
