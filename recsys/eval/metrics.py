"""Full-ranking metrics: next-item evaluation with one relevant item per user, and search
evaluation with graded (query, item, relevance) judgments.

Every target is ranked against the whole catalog (no sampled negatives), because sampled
metrics reorder methods relative to the full ranking. Ranks are 0-based.
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


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each user with one relevant item: 1/log2(rank+2) when rank < k, else 0 (IDCG = 1)."""
    ranks = _check(ranks, k)
    return np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item."""
    return float(ndcg_per_user(ranks, k).mean())


def bootstrap_interval(*per_user: np.ndarray, statistic=None, level: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Confidence interval of a statistic of per-user values (the mean of one array by default; arrays are
    resampled as pairs, so `statistic=lambda a, b, axis: a.mean(axis) / b.mean(axis)` gives a ratio of two
    methods on the same users). scipy's BCa bootstrap: a metric on a few thousand users moves by more than
    the gaps between close methods, and a bar read without its interval over-claims."""
    from scipy.stats import bootstrap

    stat = statistic or (lambda a, axis: a.mean(axis=axis))
    res = bootstrap(tuple(np.asarray(v, np.float64) for v in per_user), stat, paired=len(per_user) > 1,
                    vectorized=True, confidence_level=level, n_resamples=n_resamples,
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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


# ---------------------------------------------------------------- graded judgments (search)
def judged_ranks(scores: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based rank of judged item items[p] among all items of score row rows[p].

    scores: [Q, N] float, higher is better; rows, items: [P] int. Ties are broken by item
    position (the lower position ranks first, as a stable sort would), so a rank never depends
    on which items are judged. Pessimistic ties (as target_ranks) would sink every judged item
    that ties with unjudged ones; BM25 ties constantly and neural scores almost never, so that
    convention would favour the encoders. Returns [P] int64.
    """
    scores, rows, items = np.asarray(scores), np.asarray(rows, dtype=np.int64), np.asarray(items, dtype=np.int64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [queries, items], got shape {scores.shape}")
    n_rows, n_items = scores.shape
    if rows.shape != items.shape or rows.ndim != 1:
        raise ValueError(f"rows and items must be 1-D of one length, got {rows.shape} and {items.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows or items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"rows must lie in [0, {n_rows}) and items in [0, {n_items})")
    own = scores[rows, items]
    if np.isnan(own).any():
        raise ValueError(f"score of a judged item is NaN in score row {int(rows[np.isnan(own)][0])}")
    ranks = np.empty(rows.size, dtype=np.int64)
    position = np.arange(n_items)
    step = max(1, _CHUNK_ELEMENTS // max(n_items, 1))
    for start in range(0, rows.size, step):
        block, s = scores[rows[start:start + step]], own[start:start + step, None]
        before = position[None, :] < items[start:start + step, None]
        ranks[start:start + step] = (block > s).sum(axis=1) + ((block == s) & before).sum(axis=1)
    return ranks


def _by_query(query: np.ndarray, n_queries: int, *arrays: np.ndarray) -> list[np.ndarray]:
    query = np.asarray(query, dtype=np.int64)
    if query.ndim != 1 or any(np.shape(a) != query.shape for a in arrays):
        raise ValueError("query and the per-pair arrays must be 1-D of one length")
    if query.size and (query.min() < 0 or query.max() >= n_queries):
        raise ValueError(f"query indexes must lie in [0, {n_queries})")
    return [query, *(np.asarray(a) for a in arrays)]


def graded_ndcg_at_k(query: np.ndarray, gain: np.ndarray, rank: np.ndarray, k: int, n_queries: int) -> np.ndarray:
    """Per-query NDCG@k with graded gains -> [n_queries] float.

    One entry per judged pair p: its query index, gain (>= 0) and 0-based rank in that query's
    ranking of the whole catalog. DCG@k = sum of gain / log2(rank + 2) over judged items ranked
    below k (unjudged items gain 0); IDCG@k = the same sum with the query's judged gains sorted
    best first. A query whose judged gains are all 0 has no ideal ranking: leave it out (it raises).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query, gain, rank = _by_query(query, n_queries, gain, rank)
    gain = gain.astype(np.float64)
    if (gain < 0).any() or np.isnan(gain).any():
        raise ValueError(f"gains must be >= 0, got {gain[(gain < 0) | np.isnan(gain)][0]}")
    dcg = np.bincount(query, weights=np.where(rank < k, gain / np.log2(rank + 2.0), 0.0), minlength=n_queries)
    order = np.lexsort((-gain, query))        # per query, best gain first
    counts = np.bincount(query, minlength=n_queries)
    ideal_rank = np.arange(query.size) - np.repeat(np.cumsum(counts) - counts, counts)
    sorted_gain = gain[order]
    idcg = np.bincount(query[order], weights=np.where(ideal_rank < k, sorted_gain / np.log2(ideal_rank + 2.0), 0.0),
                       minlength=n_queries)
    if (idcg <= 0).any():
        raise ValueError(f"query {int(np.flatnonzero(idcg <= 0)[0])} has no judged item with a gain > 0: "
                         "leave such queries out before computing NDCG")
    return dcg / idcg


def relevant_recall_at_k(query: np.ndarray, relevant: np.ndarray, rank: np.ndarray, k: int,
                         n_queries: int) -> np.ndarray:
    """Per query: share of its relevant judged items ranked below k -> [n_queries]; NaN for a
    query with no relevant item (average with np.nanmean and report how many had one)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query, relevant, rank = _by_query(query, n_queries, relevant, rank)
    relevant = relevant.astype(bool)
    found = np.bincount(query, weights=relevant & (rank < k), minlength=n_queries)
    total = np.bincount(query, weights=relevant, minlength=n_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, found / np.maximum(total, 1), np.nan)
