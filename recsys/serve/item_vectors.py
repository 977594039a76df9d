"""Item vectors read back from a Faiss index, by item id: the query side of item-to-item
endpoints (similar items, cart complements, promotions for a user). No Ray.

Why reconstruct from the index rather than keep an [N, D] matrix: the index already holds
the vectors (a Flat index exactly, HNSW exactly, IVF once it has a direct map), so a replica
pays no second copy, which at 1M items x 384-d would be another 1.5 GB. Quantised indexes
(PQ, SQ) give back their decoded approximation, which is what their searches use anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

logger = logging.getLogger(__name__)


class VectorsUnavailable(RuntimeError):
    """The index cannot give back stored vectors (a type without reconstruction)."""


def enable_reconstruction(index: faiss.Index) -> bool:
    """Make `index.reconstruct` work where Faiss can (IVF indexes need a direct map); True if it does."""
    if index.ntotal == 0:
        return False
    try:
        index.reconstruct(0)
        return True
    except RuntimeError:
        pass
    try:
        faiss.extract_index_ivf(index).make_direct_map()
        index.reconstruct(0)
        return True
    except RuntimeError as exc:   # neither reconstructable nor IVF
        logger.warning("index %s cannot reconstruct item vectors: %s", type(index).__name__, exc)
        return False


class ItemVectors:
    """item_id -> the index's vector for it; `search` answers in (item_id, score) pairs."""

    def __init__(self, index: faiss.Index, item_ids: Iterable[str]):
        self.item_ids = [str(i) for i in item_ids]
        if len(self.item_ids) != index.ntotal:
            raise ValueError(f"{len(self.item_ids)} item ids for an index of {index.ntotal} vectors")
        self.index = index
        self.position = {item: pos for pos, item in enumerate(self.item_ids)}
        self.available = enable_reconstruction(index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.position

    def vectors(self, item_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(the ids the index holds, in the given order; their vectors [M, D] float32)."""
        if not self.available:
            raise VectorsUnavailable(f"a {type(self.index).__name__} index cannot give back item vectors; "
                                     f"rebuild it with a Flat, HNSW or IVF factory")
        found = [i for i in item_ids if i in self.position]
        out = np.empty((len(found), self.index.d), dtype=np.float32)
        for row, item in enumerate(found):
            out[row] = self.index.reconstruct(self.position[item])
        return found, out

    def mean_direction(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """Unit-length mean of the items' vectors [D]; None when the index holds none of them
        (or they cancel out). Unit rows averaged point between them: the cart's "centre"."""
        _, vecs = self.vectors(item_ids)
        if len(vecs) == 0:
            return None
        mean = vecs.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 1e-6 else None

    def recent_direction(self, history: Sequence[str], last_n: int = 5, decay: float = 0.5) -> np.ndarray | None:
        """Unit-length sum of the last `last_n` known history items' vectors, the newest weighted 1, the one
        before `decay`, then decay**2, ...: where the user's recent taste points. None when none is known."""
        found, vecs = self.vectors(list(reversed(history)))
        if len(vecs) == 0:
            return None
        _, first = np.unique(found[:last_n], return_index=True)   # each item once, at its newest step
        weights = np.zeros(min(last_n, len(found)), dtype=np.float32)
        weights[first] = decay ** first.astype(np.float32)
        mean = weights @ vecs[:weights.size]
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 1e-6 else None

    def search(self, vector: np.ndarray, k: int, exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        """Vector [D] -> up to k (item_id, inner product), best first, skipping `exclude`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        banned = set(exclude)
        # Ask for the excluded ones on top, so removing them still leaves k.
        n = min(k + len(banned & self.position.keys()), self.index.ntotal)
        scores, positions = self.index.search(np.ascontiguousarray(vector[None], dtype=np.float32), n)
        out = [(self.item_ids[p], float(s)) for p, s in zip(positions[0], scores[0])
               if p >= 0 and self.item_ids[p] not in banned]
        return out[:k]

    def score(self, vector: np.ndarray, item_ids: Sequence[str]) -> list[tuple[str, float]]:
        """Inner product of `vector` [D] with each held item's vector, in the given order."""
        found, vecs = self.vectors(item_ids)
        return [(i, float(s)) for i, s in zip(found, vecs @ np.asarray(vector, dtype=np.float32))]
