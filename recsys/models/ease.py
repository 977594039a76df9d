"""EASE item-to-item weights (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019). No Ray.

EASE learns B (items x items) that rebuilds each user's item set from the user's other items:
min ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0, whose closed form is P = (X^T X + l2 I)^-1,
B[i, j] = -P[i, j] / P[j, j]. Unlike co-occurrence counts, a weight is conditional on the rest of the
history (an item that co-occurs with everything gets little), which is why it adds to co-occurrence
on next-item data (docs/results.md, "Learned item-to-item weights"). The closed form is a few lines of
numpy; none of our dependencies ships it, hence this module.

Scale: the inverse is O(M^3) in the items it covers, so only the `max_items` most frequent items get
rows (5,000 items: seconds, 200 MB of float64 while fitting); each row keeps its `neighbours` largest
weights as CSR. Items outside still reach users through the other candidate sources.

Scoring a history weights its items by recency (decay ** steps back, the newest 1), so the next item
leans on the last steps, as next-item behaviour does.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.eval.baselines import _as_positions, popularity_scores, sum_csr_rows


class EaseRecommender:
    """Fit on position sequences [[int]] over n_items; score histories -> [U, N]."""

    def __init__(self, l2: float = 50.0, max_items: int = 5000, neighbours: int = 100,
                 decay: float = 0.7, last_n: int = 50) -> None:
        if l2 <= 0 or max_items < 1 or neighbours < 1 or not 0 < decay <= 1 or last_n < 1:
            raise ValueError(f"EASE needs l2 > 0, max_items >= 1, neighbours >= 1, 0 < decay <= 1, last_n >= 1; got "
                             f"l2={l2}, max_items={max_items}, neighbours={neighbours}, decay={decay}, last_n={last_n}")
        self.l2, self.max_items, self.neighbours, self.decay, self.last_n = l2, max_items, neighbours, decay, last_n
        self.n_items = 0
        self.indptr = np.zeros(1, dtype=np.int64)       # [N+1] CSR over all items (rows of uncovered items empty)
        self.indices = np.zeros(0, dtype=np.int64)      # [nnz]
        self.weights = np.zeros(0, dtype=np.float64)    # [nnz]

    def fit(self, train_sequences: list[list[int]], n_items: int) -> EaseRecommender:
        """Each sequence as a set of items (the user's row of X); returns self."""
        self.n_items = n_items
        counts = popularity_scores(train_sequences, n_items)
        covered = np.argsort(-counts, kind="stable")[:self.max_items]
        covered = np.sort(covered[counts[covered] > 0])
        m = covered.size
        if m < 2:
            self.indptr = np.zeros(n_items + 1, dtype=np.int64)
            return self
        column = np.full(n_items, -1, dtype=np.int64)
        column[covered] = np.arange(m)
        rows, cols = [], []
        for u, seq in enumerate(train_sequences):
            c = np.unique(column[_as_positions(seq, n_items, f"train_sequences[{u}]")])
            c = c[c >= 0]
            rows.append(np.full(c.size, u, dtype=np.int64))
            cols.append(c)
        x = sp.csr_matrix((np.ones(sum(c.size for c in cols)), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(len(train_sequences), m))
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(m)] += self.l2
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices(m)] = 0.0
        self._keep_top(b, covered, n_items)
        return self

    def _keep_top(self, b: np.ndarray, covered: np.ndarray, n_items: int) -> None:
        """Dense B over the covered items -> CSR over all items, each row's `neighbours` largest positive weights."""
        k = min(self.neighbours, b.shape[1] - 1)
        top = np.argpartition(-b, k - 1, axis=1)[:, :k]                 # [M, k]
        w = np.take_along_axis(b, top, axis=1)
        keep = w > 0
        per_row = keep.sum(axis=1)
        self.indices = covered[top[keep]]
        self.weights = w[keep].astype(np.float64)
        row_counts = np.zeros(n_items, dtype=np.int64)
        row_counts[covered] = per_row
        self.indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(row_counts, out=self.indptr[1:])

    def score(self, histories: list[list[int]]) -> np.ndarray:
        """[U, N] float64: per user the sum of the history items' rows, each item weighted decay ** steps back
        from the newest (its most recent occurrence), over the last `last_n` steps."""
        if self.n_items == 0:
            raise RuntimeError("EaseRecommender.score called before fit")
        items, scale = [], []
        for u, h in enumerate(histories):
            recent = _as_positions(h, self.n_items, f"histories[{u}]")[-self.last_n:][::-1]
            _, first = np.unique(recent, return_index=True)   # most recent occurrence of each item
            items.append(recent[first])
            scale.append(self.decay ** first.astype(np.float64))
        return sum_csr_rows(self.indptr, self.indices, self.weights, items, scale, self.n_items)
