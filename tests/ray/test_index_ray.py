"""Catalog embedding with a Ray Data actor pool + Faiss index build, load and query."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.index.build import run_build_index
from recsys.index.config import IndexConfig
from recsys.index.embed import embed_texts
from recsys.index.faiss_index import load_item_index
from recsys.models.encoder import TextEmbedder
from recsys.schema import CATALOG_SCHEMA

pytestmark = pytest.mark.timeout(300)

TITLES = ["Stainless steel skillet 12 inch", "Cast iron dutch oven", "Nonstick frying pan",
          "Trail running shoes", "Leather hiking boots", "Wool hiking socks",
          "Cordless power drill", "Impact driver bit set", "Circular saw blade"]


def test_ray_embedding_matches_in_process_embedding(ray_cluster):
    keys = [f"k{i}" for i in range(len(TITLES))]
    # in_process_max=0: these 9 texts would otherwise be embedded in this process (a small job)
    on_ray = embed_texts(keys, TITLES, "default", max_length=32, batch_size=4, concurrency=2, in_process_max=0)
    small_job = embed_texts(keys, TITLES, "default", max_length=32, batch_size=4, concurrency=2)
    local = TextEmbedder("default", max_length=32).embed(TITLES)
    assert on_ray.shape == small_job.shape == (len(TITLES), 384)
    np.testing.assert_allclose(on_ray, local, atol=1e-4)   # same rows, same order
    np.testing.assert_allclose(small_job, local, atol=1e-4)


def test_build_index_job_finds_items_by_meaning(ray_cluster, recsys_home):
    version, out = new_version_dir("data")
    n = len(TITLES)
    catalog = pa.table({"item_id": [f"SKU-{i}" for i in range(n)], "title": TITLES, "brand": ["B"] * n,
                        "category": ["C"] * n, "description": [""] * n, "price": [1.0] * n,
                        "in_stock": [True] * n}, schema=CATALOG_SCHEMA)
    pq.write_table(catalog, out / "catalog.parquet")
    write_manifest(out, {"kind": "data", "version": version})
    mark_latest("data", version)

    result = run_build_index(IndexConfig(model="default", factory="HNSW32", embed_concurrency=1))
    index = load_item_index(recsys_home / "artifacts" / "indexes" / result["version"])
    assert result["items"] == n and index.manifest["data_version"] == version
    assert index.manifest["factory"] == "HNSW32"
    query = TextEmbedder(index.manifest["model_path"], max_length=32).embed(["frying pan for eggs", "socks"])
    scores, ids = index.search(query, 3)
    assert ids[0][0] == "SKU-2" and ids[1][0] == "SKU-5"
    assert scores.shape == (2, 3) and np.all(np.diff(scores, axis=1) <= 1e-6)
