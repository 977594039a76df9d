"""Baselines every learned model is compared against: global popularity and item co-occurrence.

Items are integer positions in [0, n_items); sequences are chronological (oldest first).
"""

from __future__ import annotations

import numpy as np


def _as_positions(seq: list[int], n_items: int, where: str) -> np.ndarray:
    arr = np.asarray(seq, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_items):
        bad = arr[(arr < 0) | (arr >= n_items)][0]
        raise ValueError(f"{where}: item position {bad} outside [0, {n_items})")
    return arr


def popularity_scores(train_sequences: list[list[int]], n_items: int) -> np.ndarray:
    """Interaction count per item. Returns [N] float64."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    flat = [_as_positions(s, n_items, f"train_sequences[{i}]") for i, s in enumerate(train_sequences)]
    if not flat:
        return np.zeros(n_items, dtype=np.float64)
    return np.bincount(np.concatenate(flat), minlength=n_items).astype(np.float64)


def sum_csr_rows(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, rows: list[np.ndarray],
                 row_weights: list[np.ndarray], n_cols: int) -> np.ndarray:
    """Per user u, sum of the CSR matrix's rows `rows[u]` each times `row_weights[u]` -> dense [U, n_cols]
    float64. Shared by every item-to-item model that scores a history as a weighted sum of its items' rows."""
    n_users = len(rows)
    users = np.repeat(np.arange(n_users), [r.size for r in rows]).astype(np.int64)
    src = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    scale = np.concatenate(row_weights).astype(np.float64) if row_weights else np.zeros(0)
    # Expand each (user, history item) into that item's CSR row entries at once.
    starts, ends = indptr[src], indptr[src + 1]
    row_len = ends - starts
    total = int(row_len.sum())
    owner = np.repeat(np.arange(src.size), row_len)
    offsets = np.arange(total) - np.repeat(np.cumsum(row_len) - row_len, row_len)
    entry = starts[owner] + offsets
    flat = users[owner] * n_cols + indices[entry]
    contrib = scale[owner] * weights[entry]
    # bincount allocates the [U*N] output once; no extra dense temporaries. With no entries
    # at all (only empty histories) it returns int64, hence the (then no-copy) cast.
    dense = np.bincount(flat, weights=contrib, minlength=n_users * n_cols)
    return dense.astype(np.float64, copy=False).reshape(n_users, n_cols)


class CooccurrenceRecommender:
    """Item-to-item co-occurrence within a sliding window, stored as CSR arrays.

    Pairs at distance d (1 <= d <= window) in the same sequence add 1/d in both directions,
    so near neighbours count more than far ones. Self-pairs (an item recurring within the
    window) are skipped: they would only recommend what the user just saw.
    """

    def __init__(self, window: int = 3, last_n: int = 5) -> None:
        self.window, self.last_n = window, last_n   # defaults of fit and score
        self.n_items = 0
        self.indptr = np.zeros(1, dtype=np.int64)   # [N+1]
        self.indices = np.zeros(0, dtype=np.int64)  # [nnz] co-occurring item per entry
        self.weights = np.zeros(0, dtype=np.float64)  # [nnz]
        self.popularity = np.zeros(0, dtype=np.float64)  # [N] counts

    def fit(self, train_sequences: list[list[int]], n_items: int, window: int | None = None) -> CooccurrenceRecommender:
        """Count windowed co-occurrences over all sequences; returns self."""
        window = self.window if window is None else window
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.n_items = n_items
        self.popularity = popularity_scores(train_sequences, n_items)
        seqs = [_as_positions(s, n_items, f"train_sequences[{i}]") for i, s in enumerate(train_sequences)]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        items = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        # Sequence id per position: a pair is valid only when both ends share it, which lets
        # all sequences be processed as one flat array instead of a Python loop per sequence.
        seq_id = np.repeat(np.arange(len(seqs)), lengths)

        src_parts, dst_parts, w_parts = [], [], []
        for d in range(1, window + 1):
            if items.size <= d:
                break
            a, b = items[:-d], items[d:]
            keep = (seq_id[:-d] == seq_id[d:]) & (a != b)
            a, b = a[keep], b[keep]
            w = np.full(a.size, 1.0 / d)
            src_parts += [a, b]  # symmetric: both directions
            dst_parts += [b, a]
            w_parts += [w, w]

        if src_parts:
            src = np.concatenate(src_parts)
            dst = np.concatenate(dst_parts)
            w = np.concatenate(w_parts)
        else:
            src = dst = np.zeros(0, dtype=np.int64)
            w = np.zeros(0, dtype=np.float64)
        # Sum duplicate (src, dst) pairs; unique keys come back sorted, i.e. row-major CSR order.
        keys, inverse = np.unique(src * n_items + dst, return_inverse=True)
        self.weights = np.bincount(inverse.ravel(), weights=w, minlength=keys.size).astype(np.float64)
        rows = keys // n_items
        self.indices = keys % n_items
        self.indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_items), out=self.indptr[1:])
        return self

    def neighbours(self, item: int) -> dict[int, float]:
        """Co-occurrence row of one item as {item: weight}; handy for inspection and tests."""
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return {int(j): float(v) for j, v in zip(self.indices[lo:hi], self.weights[lo:hi])}

    def score(self, histories: list[list[int]], last_n: int | None = None) -> np.ndarray:
        """Scores [U, N] float64 for each user's next item.

        Sum of the co-occurrence rows of the last `last_n` history items, the most recent
        weighted 1, the one before 1/2, then 1/3, ... plus 1e-6 * popularity / max popularity,
        which breaks ties (and ranks users with no history) by popularity without ever
        outweighing a real co-occurrence (the smallest one is 1/window * 1/last_n).
        """
        if self.n_items == 0:
            raise RuntimeError("CooccurrenceRecommender.score called before fit")
        last_n = self.last_n if last_n is None else last_n
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        n_items = self.n_items
        recent = [_as_positions(h, n_items, f"histories[{u}]")[-last_n:][::-1] for u, h in enumerate(histories)]
        out = sum_csr_rows(self.indptr, self.indices, self.weights, recent,
                           [1.0 / np.arange(1, r.size + 1) for r in recent], n_items)

        top = self.popularity.max() if self.popularity.size else 0.0
        if top > 0:
            out += 1e-6 * (self.popularity / top)[None, :]
        return out
