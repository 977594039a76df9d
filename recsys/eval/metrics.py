"""Full-ranking metrics for next-item evaluation with one relevant item per user.

Every user's target is ranked against the whole catalog (no sampled negatives), because
sampled metrics reorder methods relative to the full ranking. Ranks are 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Elements per chunk when comparing a user block against its target scores: bounds the
# temporary boolean matrix to ~16 MiB whatever U and N are.
_CHUNK_ELEMENTS = 1 << 24


def target_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """0-based rank of each user's target item among all items.

    scores: [U, N] float, higher is better. targets: [U] int item positions.
    exclude[u]: item positions hidden for user u (e.g. history); the target itself is never
    hidden even when it appears there. Ties count against the target (pessimistic): rank =
    #{items with score >= target score} - 1. Returns [U] int64.

    `scores` is never copied or modified: excluded items are handled by subtracting how many
    of them beat the target, which costs O(len(exclude[u])) instead of an [U, N] copy.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {scores.shape}")
    n_users, n_items = scores.shape
    if targets.shape != (n_users,):
        raise ValueError(f"targets must have shape ({n_users},), got {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer item positions, got dtype {targets.dtype}")
    if n_users and (targets.min() < 0 or targets.max() >= n_items):
        bad = targets[(targets < 0) | (targets >= n_items)][0]
        raise ValueError(f"targets must lie in [0, {n_items}), got {bad}")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"exclude must have one entry per user ({n_users}), got {len(exclude)}")

    user_idx = np.arange(n_users)
    target_scores = scores[user_idx, targets]
    if np.isnan(target_scores).any():
        bad_user = int(np.flatnonzero(np.isnan(target_scores))[0])
        raise ValueError(f"score of the target is NaN for user row {bad_user}")

    ranks = np.empty(n_users, dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(n_items, 1))
    for start in range(0, n_users, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_users)
        block = scores[start:stop]
        at_least = (block >= target_scores[start:stop, None]).sum(axis=1)
        # The target always ties with itself, hence the -1.
        ranks[start:stop] = at_least - 1

    if exclude is not None:
        for u, items in enumerate(exclude):
            hidden = np.unique(np.asarray(items, dtype=np.int64))
            if hidden.size == 0:
                continue
            if hidden[0] < 0 or hidden[-1] >= n_items:
                raise ValueError(f"exclude[{u}] holds item positions outside [0, {n_items})")
            hidden = hidden[hidden != targets[u]]
            ranks[u] -= int((scores[u, hidden] >= target_scores[u]).sum())
    return ranks


def _check(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if (ranks < 0).any():
        raise ValueError(f"ranks must be >= 0, got {ranks.min()}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is in the top k. ranks: [U] 0-based."""
    ranks = _check(ranks, k)
    return float((ranks < k).mean())


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: 1/log2(rank+2) when rank < k, else 0 (IDCG = 1)."""
    ranks = _check(ranks, k)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking (no cutoff). ranks: [U] 0-based."""
    ranks = _check(ranks)
    return float((1.0 / (ranks.astype(np.float64) + 1.0)).mean())


def summarize_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20, 50)) -> dict[str, float]:
    """recall@k and ndcg@k for every k, plus "mrr" and "users" (the count, kept as an int)."""
    ranks = _check(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    out["users"] = int(ranks.size)
    return out


def format_markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Markdown table, one row per method, floats to 4 decimals; a missing metric shows "-".

    Integers (such as "users") print without decimals so counts stay readable.
    """
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method, metrics in rows.items():
        cells = []
        for col in columns:
            value = metrics.get(col)
            if value is None:
                cells.append("-")
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                cells.append(str(int(value)))
            else:
                cells.append(f"{float(value):.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
