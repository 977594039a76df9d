"""Faiss index over unit item vectors: build per factory, search in item ids, save/load with the id map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import ArtifactNotFound
from recsys.index.faiss_index import (
    IDS_FILE,
    INDEX_FILE,
    IndexBuildError,
    ItemIndex,
    build_faiss_index,
    load_item_index,
    save_item_index,
)

N, D = 200, 16


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def item_ids() -> list[str]:
    return [f"sku-{n:04d}" for n in range(N)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_each_vector_finds_its_own_item_first(vectors: np.ndarray, item_ids: list[str], factory: str) -> None:
    index = build_faiss_index(vectors, factory)
    assert index.ntotal == N and index.d == D
    item_index = ItemIndex(index=index, item_ids=np.array(item_ids, dtype=object), manifest={})
    scores, ids = item_index.search(vectors, k=5)
    assert scores.shape == (N, 5)
    assert [row[0] for row in ids] == item_ids
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)            # inner product of unit vectors = cosine
    assert np.all(np.diff(scores, axis=1) <= 1e-6)             # best first


def test_flat_search_matches_brute_force(vectors: np.ndarray, item_ids: list[str]) -> None:
    item_index = ItemIndex(build_faiss_index(vectors, "Flat"), np.array(item_ids, dtype=object), {})
    queries = vectors[:3] + 0.3 * vectors[3:6]
    scores, ids = item_index.search(queries, k=4)
    brute = queries @ vectors.T
    for q in range(3):
        top = np.argsort(-brute[q])[:4]
        assert ids[q] == [item_ids[t] for t in top]
        assert np.allclose(scores[q], brute[q, top], atol=1e-5)


def test_search_k_larger_than_catalog(vectors: np.ndarray) -> None:
    item_index = ItemIndex(build_faiss_index(vectors[:3]), np.array(["a", "b", "c"], dtype=object), {})
    scores, ids = item_index.search(vectors[:1], k=10)
    assert scores.shape == (1, 3) and sorted(ids[0]) == ["a", "b", "c"]


def test_ivf_index_trains_and_finds_items(vectors: np.ndarray) -> None:
    index = build_faiss_index(vectors, "IVF4,Flat")
    assert index.is_trained and index.ntotal == N


def test_save_load_round_trip(tmp_path: Path, vectors: np.ndarray, item_ids: list[str]) -> None:
    index = build_faiss_index(vectors, "HNSW32")
    save_item_index(tmp_path / "idx", index, item_ids, {"version": "v7", "factory": "HNSW32", "model": "m1"})
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {INDEX_FILE, IDS_FILE, "manifest.json"}
    loaded = load_item_index(tmp_path / "idx")
    assert loaded.version == "v7"
    assert loaded.manifest == {"version": "v7", "factory": "HNSW32", "model": "m1", "n_items": N, "dim": D}
    assert list(loaded.item_ids) == item_ids
    assert loaded.index.ntotal == N and loaded.index.d == D
    _, ids = loaded.search(vectors[[5, 77]], k=1)
    assert ids == [["sku-0005"], ["sku-0077"]]


def test_manifest_values_are_overridden_by_the_real_counts(tmp_path: Path, vectors: np.ndarray) -> None:
    save_item_index(tmp_path, build_faiss_index(vectors[:10]), [f"i{n}" for n in range(10)],
                    {"n_items": 999, "dim": 1})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["n_items"], manifest["dim"]) == (10, D)
    assert load_item_index(tmp_path).version == "unknown"


def test_ivf_with_more_lists_than_items(vectors: np.ndarray) -> None:
    with pytest.raises(IndexBuildError) as err:
        build_faiss_index(vectors[:50], "IVF64,Flat")
    msg = str(err.value)
    assert "index.factory='IVF64,Flat'" in msg and "64" in msg and "50" in msg


@pytest.mark.parametrize("factory", ["NotAnIndex", "Flat,Bogus", "IVF,Flat", ""])
def test_bad_factory_string(vectors: np.ndarray, factory: str) -> None:
    with pytest.raises(IndexBuildError, match="is not a valid Faiss factory string") as err:
        build_faiss_index(vectors, factory)
    assert f"index.factory={factory!r}" in str(err.value)


@pytest.mark.parametrize("shape", [(0, D), (D,)])
def test_empty_or_flat_vectors(shape: tuple[int, ...]) -> None:
    with pytest.raises(IndexBuildError, match="non-empty"):
        build_faiss_index(np.zeros(shape, dtype=np.float32))


def test_pq_with_too_few_items_is_an_index_build_error(vectors: np.ndarray) -> None:
    with pytest.raises(IndexBuildError, match="PQ8"):
        build_faiss_index(vectors[:50], "IVF4,PQ8")


def test_id_map_mismatch_on_load(tmp_path: Path, vectors: np.ndarray) -> None:
    save_item_index(tmp_path, build_faiss_index(vectors[:10]), [f"i{n}" for n in range(10)], {})
    pq.write_table(pa.table({"item_id": pa.array(["i0", "i1"], pa.string())}), tmp_path / IDS_FILE)
    with pytest.raises(ValueError, match="id map has 2 rows but the index holds 10"):
        load_item_index(tmp_path)


def test_load_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="manifest.json"):
        load_item_index(tmp_path)
