"""Cold-start items: catalog items the index lacks, embedded at serving time. No Ray.

A catalog refresh adds items days before the next index build; without this they could never be
retrieved. The Retriever embeds them once at start-up with the item tower (the model the index
was built with, so their vectors live in the index's space) into a small exact Flat index of
their own. The big index is left alone: it may be IVF/PQ (adding would need its trained
quantiser) and several replicas share its files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from recsys.data.text import format_item_text
from recsys.serve.item_vectors import ItemVectors

logger = logging.getLogger(__name__)

# Embeds item texts -> unit rows [N, D] float32 (TextEmbedder.embed of the item tower).
EmbedTexts = Callable[[Sequence[str]], np.ndarray]


def unindexed_item_texts(catalog_path: str | Path, indexed: Collection[str]) -> tuple[list[str], list[str]]:
    """(ids, item-tower texts) of catalog items not in `indexed`, in catalog order; the text is what
    index building embeds (title. brand. category), so fresh vectors match indexed ones."""
    names = pq.read_schema(catalog_path).names
    cols = [c for c in ("item_id", "title", "brand", "category") if c in names]
    table = pq.read_table(catalog_path, columns=cols).to_pydict()
    ids, texts, seen = [], [], set(indexed)
    for row, item_id in enumerate(table["item_id"]):
        if item_id is None or item_id in seen:
            continue
        seen.add(item_id)
        ids.append(str(item_id))
        title, brand, category = (table[c][row] if c in table else None for c in ("title", "brand", "category"))
        texts.append(format_item_text(title, brand, category))
    return ids, texts


class FreshItems:
    """Vectors of items embedded after the index was built; search answers (item_id, cosine)."""

    def __init__(self, dim: int, embed: EmbedTexts):
        self.dim = dim
        self.embed = embed
        self.vectors: ItemVectors | None = None
        self._ids: list[str] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)   # [N, D]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    def add(self, item_ids: Sequence[str], texts: Sequence[str]) -> int:
        """Embed and add items (an id already held is re-embedded: its text may have changed);
        returns how many were added or replaced."""
        if len(item_ids) != len(texts):
            raise ValueError(f"{len(item_ids)} item ids but {len(texts)} texts")
        if not item_ids:
            return 0
        new = np.asarray(self.embed(list(texts)), dtype=np.float32)   # [M, D]
        if new.shape != (len(item_ids), self.dim):
            raise ValueError(f"item tower gave {new.shape} vectors for {len(item_ids)} items of dim {self.dim}")
        keep = [p for p, i in enumerate(self._ids) if i not in set(item_ids)]
        self._ids = [self._ids[p] for p in keep] + list(item_ids)
        self._matrix = np.concatenate([self._matrix[keep], new])
        # Rebuilt, not appended: a few thousand rows take milliseconds, and ids stay row-aligned.
        index = faiss.IndexFlatIP(self.dim)
        index.add(self._matrix)
        self.vectors = ItemVectors(index, self._ids)
        return len(item_ids)

    def search(self, vector: np.ndarray | None, k: int) -> list[tuple[str, float]]:
        """Query vector [D] (text-tower space) -> up to k (item_id, cosine), best first."""
        if vector is None or self.vectors is None or k < 1:
            return []
        return self.vectors.search(vector, k)


def load_fresh_items(catalog_path: str | Path, indexed: Collection[str], dim: int,
                     embed: EmbedTexts) -> FreshItems:
    """FreshItems holding every catalog item the index lacks."""
    fresh = FreshItems(dim, embed)
    ids, texts = unindexed_item_texts(catalog_path, indexed)
    fresh.add(ids, texts)
    if ids:
        logger.info("embedded %d catalog items the index lacks (e.g. %s)", len(ids), ids[:3])
    return fresh
