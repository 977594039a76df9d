"""build_index stage: catalog -> item-tower vectors (Ray Data) -> Faiss index artifact."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact
from recsys.data.text import catalog_texts
from recsys.index.bm25 import BM25Index
from recsys.index.config import IndexConfig
from recsys.index.embed import embed_texts, embeds_in_process
from recsys.index.faiss_index import build_faiss_index, save_item_index
from recsys.models.encoder import resolve_model_path
from recsys.models.sequence_tower import USER_TOWER_DIR, item_matrix_for_catalog, load_user_tower
from recsys.runtime import log

JOB = "build_index"


def resolve_model(ref: str) -> tuple[str, str, dict]:
    """(model path, model version, manifest) for a model artifact ref or 'default' (base encoder)."""
    if ref == "default":
        return resolve_model_path("default"), "base-minilm", {}
    path = resolve_artifact("models", ref)
    manifest = read_manifest(path)
    return str(path), manifest["version"], manifest


def load_item_texts(data_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(item ids, titles, item-tower texts) of a data version's catalog."""
    return catalog_texts(pq.read_table(data_dir / "catalog.parquet").to_pandas())


def run_build_index(cfg: IndexConfig) -> dict:
    started = time.perf_counter()
    model_path, model_version, model_manifest = resolve_model(cfg.model)
    data_dir = resolve_artifact("data", cfg.data)
    data_version = read_manifest(data_dir)["version"]
    item_max_length = int(model_manifest.get("item_max_length", 48))
    item_ids, _, texts = load_item_texts(data_dir)
    num_gpus = 1 if cfg.use_gpu else 0
    where = ("in this process: a small CPU job" if embeds_in_process(len(item_ids), num_gpus)
             else f"{cfg.embed_concurrency} actor(s)")
    log(JOB, f"embedding {len(item_ids)} items with model {model_version} ({where}, batch {cfg.embed_batch_size})")
    vectors = embed_texts(item_ids, texts, model_path, item_max_length, cfg.embed_batch_size,
                          cfg.embed_concurrency, num_gpus=num_gpus)
    log(JOB, f"embedded in {time.perf_counter() - started:.1f}s; building Faiss '{cfg.factory}'")
    index = build_faiss_index(vectors, cfg.factory)
    user_tower = str(model_manifest.get("user_tower", {}).get("kind", "text"))
    recommend_index = None
    if user_tower == "sequence":
        tower, vocabulary, _ = load_user_tower(Path(model_path) / USER_TOWER_DIR)
        recommend_index = build_faiss_index(item_matrix_for_catalog(tower, vocabulary, item_ids, vectors), cfg.factory)
        log(JOB, f"sequence user tower: recommendation index over its item vectors ({len(vocabulary)} trained items)")
    lexical = None
    if cfg.bm25 is not None:   # seconds even for 50k items: no Ray needed
        lexical = BM25Index(texts, **cfg.bm25.model_dump())
        log(JOB, f"BM25 index over the same {len(texts)} item texts ({cfg.bm25.model_dump()})")
    version, out = new_version_dir("indexes")
    save_item_index(out, index, item_ids, {
        "kind": "index", "version": version, "model_path": model_path, "model_version": model_version,
        "data_version": data_version, "factory": cfg.factory, "item_max_length": item_max_length,
        "query_max_length": int(model_manifest.get("query_max_length", 96)), "user_tower": user_tower,
        "bm25": cfg.bm25.model_dump() if cfg.bm25 is not None else None,
    }, recommend_index, lexical)
    mark_latest("indexes", version)
    seconds = round(time.perf_counter() - started, 1)
    log(JOB, f"index {version} -> {out}: {index.ntotal} items, dim {index.d}, {seconds}s")
    return {"version": version, "path": str(out), "items": int(index.ntotal), "dim": int(index.d),
            "model_version": model_version, "data_version": data_version, "seconds": seconds}
