"""Sequence-length histograms with fixed integer edges, so partial histograms computed by
parallel workers can be summed bin by bin (merge_histograms). Kept apart from report.py so
workers that only count do not import matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Fine bins where short histories matter (cold users), coarse ones in the tail; the
# huge last edge makes the final bin an open-ended "1000+".
DEFAULT_LENGTH_EDGES: list[int] = [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000,
                                   10**9]

def sequence_length_histogram(lengths: np.ndarray | Sequence[int], max_bins: int = 30,
                              edges: Sequence[int] | None = None) -> dict:
    """Users per sequence-length bin; bin i is [edges[i], edges[i+1]), the last bin also takes edges[-1].

    Out-of-range lengths are clipped into the first/last bin rather than dropped, so the
    counts always sum to the number of users. With edges=None the default edges are used,
    thinned to at most max_bins bins; thinning depends only on max_bins, never on the
    data, so histograms from different workers stay mergeable.
    """
    values = np.asarray(lengths, dtype=np.int64).ravel()
    if values.size == 0:
        return {"edges": [], "counts": []}
    if edges is None:
        edges = _thin_edges(DEFAULT_LENGTH_EDGES, max_bins)
    edge_arr = _check_edges(edges)
    bins = np.searchsorted(edge_arr, values, side="right") - 1
    bins = np.clip(bins, 0, len(edge_arr) - 2)
    counts = np.bincount(bins, minlength=len(edge_arr) - 1)
    return {"edges": [int(e) for e in edge_arr], "counts": [int(c) for c in counts]}


def merge_histograms(hists: Sequence[Mapping]) -> dict:
    """Sum histograms built on identical edges; empty ones (from workers with no users) are skipped."""
    merged: dict = {"edges": [], "counts": []}
    for hist in hists:
        if not hist.get("edges"):
            continue
        if not merged["edges"]:
            merged = {"edges": [int(e) for e in hist["edges"]], "counts": [int(c) for c in hist["counts"]]}
        elif list(hist["edges"]) != merged["edges"]:
            raise ValueError(f"cannot merge histograms with different edges: {merged['edges']} vs {hist['edges']}")
        else:
            merged["counts"] = [a + int(b) for a, b in zip(merged["counts"], hist["counts"])]
    return merged


def _check_edges(edges: Sequence[int]) -> np.ndarray:
    arr = np.asarray(edges, dtype=np.int64)
    if arr.ndim != 1 or arr.size < 2 or np.any(np.diff(arr) <= 0):
        raise ValueError(f"edges must be at least two strictly increasing integers, got {list(edges)}")
    return arr


def _thin_edges(edges: Sequence[int], max_bins: int) -> list[int]:
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    if len(edges) - 1 <= max_bins:
        return list(edges)
    # Evenly spaced positions in the edge list, always keeping the first and last edge.
    pos = np.unique(np.linspace(0, len(edges) - 1, max_bins + 1).round().astype(int))
    return [int(edges[p]) for p in pos]
