"""A retriever index on the training driver: load it, embed anchors with its model, mine hard negatives.

Both trainers mine hard negatives this way (recsys/train/hard_negatives.py holds the pure part).
Faiss search runs on the driver, where the one index copy already is: a Flat search of thousands
of anchors over the catalog takes seconds; shipping the index to every actor would not pay.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.artifacts import resolve_artifact
from recsys.data.text import catalog_texts
from recsys.index.bm25 import BM25Index
from recsys.index.embed import embed_texts
from recsys.index.faiss_index import ItemIndex, load_item_index
from recsys.models.encoder import query_tower_path
from recsys.runtime import log
from recsys.train.config import HardNegativeSettings
from recsys.train.hard_negatives import (
    bm25_candidates,
    judged_negative_candidates,
    pairs_with_hard_negatives,
    retrieve_candidates,
)

HARD_NEGATIVE_PAIRS = "hard_negative_pairs"   # in the model version directory: a resumed run reuses it


def load_retriever(ref: str, field: str, data_version: str) -> ItemIndex:
    """The index artifact `ref` ('latest', a version or a path), checked against the training data."""
    index = load_item_index(resolve_artifact("indexes", ref))
    if index.manifest.get("data_version") != data_version:
        raise ValueError(f"{field}={ref!r} (index {index.version}) was built on data "
                         f"{index.manifest.get('data_version')!r}, not on data={data_version!r}: build an index "
                         f"for this data version (jobs/build_index.py --set data={data_version}) or set {field}: null")
    if not index.manifest.get("model_path"):
        raise ValueError(f"index {index.version} has no model_path in its manifest: cannot embed queries for it")
    return index


def embed_with_retriever(index: ItemIndex, texts: list[str], batch_size: int, concurrency: int, use_gpu: bool,
                         job: str) -> np.ndarray:
    """Query / history texts -> vectors [N, D] with the index's own model (Ray Data actor pool; in process
    for a small CPU job)."""
    started = time.perf_counter()
    vectors = embed_texts([str(i) for i in range(len(texts))], texts, query_tower_path(index.manifest["model_path"]),
                          int(index.manifest.get("query_max_length", 96)), batch_size, concurrency,
                          num_gpus=1 if use_gpu else 0)
    log(job, f"embedded {len(texts)} texts with the retriever's model in {time.perf_counter() - started:.1f}s")
    return vectors


def mine_pair_hard_negatives(hn: HardNegativeSettings, data_dir: Path, data_version: str, out_dir: Path,
                             use_gpu: bool, seed: int, job: str, judgments: pd.DataFrame | None) -> Path:
    """train_pairs + hn.per_pair hard negatives per pair -> parquet under out_dir. They come from the
    pair's query's judged-irrelevant items (hn.judgments), else from index hn.index's top-k and BM25's
    top-(hn.bm25_top_k) together; a pair with too few of those gets uniform catalog items for the rest.

    Written once per run: a resumed run (or a restarted worker group) trains on the same negatives.
    `judgments`: hn.judgments as read_judgments returned it (None when off); the caller reads it, once
    for the weights too."""
    target = out_dir / HARD_NEGATIVE_PAIRS
    if target.is_dir() and any(target.glob("*.parquet")):
        log(job, f"hard negatives: reusing {target}")
        return target
    pairs = pq.read_table(data_dir / "train_pairs").to_pandas()
    anchors = list(dict.fromkeys(pairs["anchor_text"].tolist()))
    candidates: dict[str, list[str]] = {}
    if judgments is not None:
        candidates = judged_negative_candidates(judgments, anchors, hn.max_relevance)
        log(job, f"hard negatives: {len(candidates)} of {len(anchors)} distinct anchors have items judged "
                 f"<= {hn.max_relevance} in {hn.judgments}")
    rest = [a for a in anchors if a not in candidates]
    if hn.index is not None and rest:
        index = load_retriever(hn.index, "hard_negatives.index", data_version)
        log(job, f"hard negatives: {len(rest)} anchors from the top-{hn.top_k} of index {index.version} "
                 f"(model {index.manifest.get('model_version')})")
        vectors = embed_with_retriever(index, rest, hn.embed_batch_size, hn.embed_concurrency, use_gpu, job)
        positives = pairs.groupby("anchor_text")["positive_item_id"].agg(lambda s: sorted(set(map(str, s))))
        candidates.update(zip(rest, retrieve_candidates(index, vectors, [positives[a] for a in rest], hn.top_k)))
    ids, _, texts = catalog_texts(pq.read_table(data_dir / "catalog.parquet").to_pandas())
    if hn.bm25_top_k and rest:
        started = time.perf_counter()
        lexical = bm25_candidates(BM25Index(texts), ids, rest, hn.bm25_top_k)
        for anchor, items in zip(rest, lexical):   # after the index's: pick_hard_negatives drops repeats
            candidates[anchor] = candidates.get(anchor, []) + items
        log(job, f"hard negatives: BM25 top-{hn.bm25_top_k} of {len(rest)} anchors over {len(ids)} catalog texts "
                 f"in {time.perf_counter() - started:.1f}s")
    candidates.update((a, []) for a in anchors if a not in candidates)   # -> a uniform catalog item
    mined, counts = pairs_with_hard_negatives(pairs, candidates, dict(zip(ids, texts)), seed, hn.per_pair)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "part-0.parquet.tmp"
    mined.to_parquet(tmp, index=False)
    tmp.rename(target / "part-0.parquet")
    log(job, f"hard negatives: {len(pairs)} pairs x {hn.per_pair}: {counts['mined']} mined (judgments, index, BM25), "
             f"{counts['uniform_fallback']} uniform (too few eligible candidates) -> {target}")
    return target
