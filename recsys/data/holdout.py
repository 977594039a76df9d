"""Which search queries are held out of training, decided by the query string alone.

Preprocessing drops held-out queries from everything training reads; search evaluation
asks the same function which judged queries training never saw. The decision must be the
same in every process, on every machine and in every Python/pandas version, so it is a
unkeyed BLAKE2b digest of the exact UTF-8 query text (Python's hash() is salted per
process). Splitting by query string rather than by event keeps one query's clicks on one
side: "deck screws" typed by a thousand users is either all training or all evaluation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

_SCALE = float(1 << 64)


def query_bucket(query: str) -> float:
    """A query string -> a stable number in [0, 1), uniform over distinct queries."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}: {query!r}")
    digest = hashlib.blake2b(query.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def check_fraction(fraction: float) -> float:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"search_holdout_fraction must be in [0, 1), got {fraction!r}")
    return float(fraction)


def is_held_out_query(query: str, fraction: float) -> bool:
    """True when `query` belongs to the held-out share `fraction` of all query strings."""
    return query_bucket(query) < check_fraction(fraction)


def held_out_mask(queries: Iterable[str], fraction: float) -> np.ndarray:
    """is_held_out_query over many queries -> bool [N]; each distinct string is hashed once."""
    fraction = check_fraction(fraction)
    codes, uniques = pd.factorize(pd.Series(list(queries), dtype=object), sort=False)
    if (codes < 0).any():
        raise TypeError(f"queries must be strings, got a missing value at position {int(np.argmax(codes < 0))}")
    if fraction == 0.0:
        return np.zeros(len(codes), dtype=bool)
    held = np.fromiter((query_bucket(q) < fraction for q in uniques), dtype=bool, count=len(uniques))
    return held[codes]
