"""Faiss ANN index over unit item vectors (inner product == cosine), saved with its id map.

On disk: index.faiss (Faiss' own format), item_ids.parquet (row position -> item_id)
and manifest.json. Positions are the Faiss ids, so any factory string works (HNSW
cannot take custom ids without an IDMap wrapper). bm25/ (when built) is a BM25 index over the
same items in the same row order: hybrid search's lexical half, swapped with the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.artifacts import read_manifest, write_manifest
from recsys.index.bm25 import BM25Index

INDEX_FILE = "index.faiss"
# Item vectors of the sequence user tower (text vector + learned residual), same rows as INDEX_FILE;
# only when the model serves that tower. Search and similar-items keep the pure text vectors.
RECOMMEND_FILE = "recommend.faiss"
IDS_FILE = "item_ids.parquet"
BM25_DIR = "bm25"


class IndexBuildError(ValueError):
    """A factory string that does not fit the data (e.g. more IVF lists than items)."""


def build_faiss_index(vectors: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """vectors [N, D] float32 unit rows -> trained, filled inner-product index."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexBuildError(f"need a non-empty [N, D] matrix, got shape {vectors.shape}")
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"index.factory={factory!r} is not a valid Faiss factory string: {exc}") from None
    if not index.is_trained:
        nlist = getattr(faiss.extract_index_ivf(index), "nlist", 0) if "IVF" in factory else 0
        if nlist and len(vectors) < nlist:
            raise IndexBuildError(
                f"index.factory={factory!r} needs at least {nlist} items to train, catalog has {len(vectors)}")
        try:
            index.train(vectors)
        except RuntimeError as exc:  # e.g. PQ codebooks need more training points than items
            raise IndexBuildError(f"index.factory={factory!r} cannot be trained on {len(vectors)} items: "
                                  f"{str(exc).splitlines()[-1] if str(exc) else exc}") from None
    index.add(vectors)
    return index


@dataclass
class ItemIndex:
    """A loaded index plus its id map; `search` answers in item ids."""

    index: faiss.Index
    item_ids: np.ndarray          # [N] object array of str
    manifest: dict[str, Any]
    recommend_index: faiss.Index | None = None
    lexical: BM25Index | None = None   # BM25 over the same rows; None for an index built without it

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    def search(self, queries: np.ndarray, k: int, recommend: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """queries [Q, D] -> (scores [Q, k'], ids per query) with k' = min(k, N); -1 slots dropped.

        recommend=True searches the sequence user tower's item vectors (user vectors from that tower)."""
        k = min(k, len(self.item_ids))
        index = self.recommend_index if recommend and self.recommend_index is not None else self.index
        scores, positions = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = [[str(self.item_ids[p]) for p in row if p >= 0] for row in positions]
        return scores, ids

    def item_vectors(self) -> tuple[np.ndarray, dict[str, int]]:
        """(the search index's item vectors [N, D], item id -> row). Read back with faiss reconstruct_n, which
        Flat and HNSW indexes answer; a compressed index (IVF-PQ ...) keeps no exact vectors and says so."""
        try:
            vectors = self.index.reconstruct_n(0, self.index.ntotal)
        except RuntimeError as err:
            raise ValueError(f"index {self.version} ({type(self.index).__name__}) cannot give back its item "
                             f"vectors: {err}") from err
        return vectors, {str(i): row for row, i in enumerate(self.item_ids)}


def save_item_index(directory: Path, index: faiss.Index, item_ids: list[str],
                    manifest: dict[str, Any], recommend_index: faiss.Index | None = None,
                    lexical: BM25Index | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(directory / INDEX_FILE))
    if recommend_index is not None:
        faiss.write_index(recommend_index, str(directory / RECOMMEND_FILE))
    if lexical is not None:
        if lexical.n_items != len(item_ids):
            raise ValueError(f"BM25 index holds {lexical.n_items} items, the id map {len(item_ids)}")
        lexical.save(directory / BM25_DIR)
    pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.string())}), directory / IDS_FILE)
    write_manifest(directory, {**manifest, "n_items": len(item_ids), "dim": index.d})


def load_item_index(directory: Path) -> ItemIndex:
    directory = Path(directory)
    manifest = read_manifest(directory)
    index = faiss.read_index(str(directory / INDEX_FILE))
    ids = pq.read_table(directory / IDS_FILE).column("item_id").to_numpy(zero_copy_only=False)
    if len(ids) != index.ntotal:
        raise ValueError(f"{directory}: id map has {len(ids)} rows but the index holds {index.ntotal}")
    recommend = faiss.read_index(str(directory / RECOMMEND_FILE)) if (directory / RECOMMEND_FILE).is_file() else None
    if recommend is not None and recommend.ntotal != index.ntotal:
        raise ValueError(f"{directory}: {RECOMMEND_FILE} holds {recommend.ntotal} items, {INDEX_FILE} {index.ntotal}")
    lexical = BM25Index.load(directory / BM25_DIR) if (directory / BM25_DIR).is_dir() else None
    if lexical is not None and lexical.n_items != index.ntotal:
        raise ValueError(f"{directory}: {BM25_DIR}/ holds {lexical.n_items} items, {INDEX_FILE} {index.ntotal}")
    return ItemIndex(index=index, item_ids=ids, manifest=manifest, recommend_index=recommend, lexical=lexical)
