"""Driver of jobs/train_search_ranker.py: training queries -> the served hybrid search's candidates and
features -> LambdaMART (recsys.models.ltr) -> a versioned search ranker artifact.

Candidates and features come from the serving code itself (RetrievalModel.search_candidates, the
Ranker's popularity column), so the ranker learns from exactly what it will see. Only queries the data
version did not hold out are read (split.search_holdout_fraction): evaluation and the served-quality
bench score the held-out ones. Everything runs in this process: one encoder pass over the queries
(~10k short texts) and a LightGBM fit take minutes on 2 cores, less than a Ray start-up would save.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact, write_manifest
from recsys.data.holdout import held_out_mask
from recsys.eval.search import holdout_fraction, read_judgments
from recsys.models.search_features import SEARCH_FEATURES, SEARCH_RANKER_TYPE
from recsys.runtime import log
from recsys.serve.catalog import CATALOG_FILE, POPULARITY_FILE, load_popularity
from recsys.serve.retrieval_model import RetrievalModel
from recsys.train.ltr_fit import fit_and_report, with_popularity
from recsys.train.search_ranker_config import SearchRankerConfig

JOB = "train_search_ranker"


def training_gains(cfg: SearchRankerConfig, data_dir: Path, fraction: float) -> pd.DataFrame:
    """(query, item_id, gain) of the queries the data version did not hold out, gain > 0 or judged 0."""
    if cfg.judgments is not None:
        frame, _ = read_judgments(cfg.judgments)
        frame["gain"] = (frame["relevance"] - cfg.relevance_floor).clip(lower=0.0)
    else:   # search clicks: every clicked (query, item) gains 1, everything else 0
        pairs = pads.dataset(data_dir / "train_pairs").to_table(columns=["kind", "anchor_text", "positive_item_id"])
        clicks = pairs.to_pandas()
        clicks = clicks[clicks["kind"] == "search"]
        frame = pd.DataFrame({"query": clicks["anchor_text"], "item_id": clicks["positive_item_id"], "gain": 1.0})
        frame = frame.drop_duplicates(["query", "item_id"])
    frame = frame[~held_out_mask(frame["query"], fraction)] if fraction > 0 else frame
    if frame.empty:
        raise ValueError(f"judgments={cfg.judgments!r}: no (query, item) pair outside the held-out queries")
    return frame[["query", "item_id", "gain"]]


def candidate_rows(model: RetrievalModel, queries: list[str], cfg: SearchRankerConfig,
                   counts: dict[str, int]) -> tuple[np.ndarray, list[list[str]]]:
    """Per query the served candidates -> (features [R, len(SEARCH_FEATURES)], candidate ids per query)."""
    max_count = float(max(counts.values(), default=0))
    rows, ids = [], []
    started = time.perf_counter()
    vectors = model.embedder.embed(queries)   # [Q, D]
    log(JOB, f"embedded {len(queries)} queries in {time.perf_counter() - started:.0f}s")
    for n, (query, vector) in enumerate(zip(queries, vectors), start=1):
        row, items = with_popularity(model.search_candidates(vector, query, cfg.retrieval_k, 0, cfg.hybrid),
                                     counts, max_count)
        rows.append(row)
        ids.append(items)
        if n % 2000 == 0:
            log(JOB, f"candidates of {n}/{len(queries)} queries")
    return np.concatenate(rows) if rows else np.zeros((0, len(SEARCH_FEATURES)), np.float32), ids


def run_search_ranker_training(cfg: SearchRankerConfig) -> dict:
    started = time.perf_counter()
    data_dir, index_dir = resolve_artifact("data", cfg.data), resolve_artifact("indexes", cfg.index)
    data_manifest, index_manifest = read_manifest(data_dir), read_manifest(index_dir)
    gains = training_gains(cfg, data_dir, holdout_fraction(data_manifest))
    gains = gains[gains.groupby("query")["gain"].transform("max") > 0]   # a query with no gain teaches nothing
    queries = sorted(gains["query"].unique())
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_queries is not None and cfg.max_queries < len(queries):
        queries = sorted(rng.choice(queries, cfg.max_queries, replace=False).tolist())
    model = RetrievalModel(index_dir, data_dir / CATALOG_FILE, embed_fresh_items=False)
    if model.lexical is None:
        raise ValueError(f"index={cfg.index!r} ({index_dir.name}) has no BM25 index: rebuild it with build_index "
                         "(bm25 on, the default) to train a search ranker over hybrid candidates")
    model.embedder.batch_size = cfg.embed_batch_size
    _, counts = load_popularity(data_dir / POPULARITY_FILE)
    log(JOB, f"{len(queries)} training queries, {len(gains)} judged pairs; index {index_dir.name} "
             f"(model {index_manifest.get('model_version')}), {cfg.retrieval_k} candidates each")
    features, ids = candidate_rows(model, queries, cfg, counts)
    valid = rng.random(len(queries)) < cfg.validation_fraction
    fitted, report = fit_and_report(features, ids, queries, valid, gains, SEARCH_FEATURES, cfg, JOB)

    version, out = new_version_dir("rankers")
    fitted.save(out)
    write_manifest(out, {
        "kind": "ranker", "type": SEARCH_RANKER_TYPE, "version": version, "features": list(SEARCH_FEATURES),
        "index_version": index_dir.name, "model_version": index_manifest.get("model_version"),
        "data_version": data_manifest["version"], "hybrid": cfg.hybrid.model_dump(), "retrieval_k": cfg.retrieval_k,
        "config": cfg.model_dump(), "validation": report, "wall_seconds": round(time.perf_counter() - started, 1)})
    mark_latest("rankers", version)
    log(JOB, f"search ranker {version} -> {out}")
    return {"version": version, "path": str(out), "validation": report}
