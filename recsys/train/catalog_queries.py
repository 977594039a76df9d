"""Catalog queries: training pairs whose query is a few words of a catalog item's own title (no Ray).

Logged searches name a small part of the catalog. Held-out Home Depot queries name brands and product
words ("amertac") that no training query has: BM25 matches them exactly, and the fine-tuned tower,
never shown them paired with their products, ranks unrelated items above them (README, Home Depot).
A pair (some words of item X's title -> X), for items across the whole catalog, teaches the tower to
match the catalog's own tokens to their products. This is the cropping of Contriever (Izacard et al.,
2022) shaped like a typed query: 2-4 words, kept in title order, lower-cased.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from recsys.schema import TRAIN_PAIR_COLUMNS

CATALOG_QUERY_KIND = "catalog_query"
EDGE_PUNCTUATION = "()[]{},;:!?\"'"
# Words a typed query leaves out of a title: dimension glue ("12 in. x 12 in."), joiners.
FILLER_WORDS = frozenset({"x", "in", "in.", "and", "&", "with", "for", "of", "the", "-", "/", "per"})


def query_words(title: str) -> list[str]:
    """A title's words a query could hold: HTML entities decoded, edge punctuation cut, fillers left out."""
    words = (w.strip(EDGE_PUNCTUATION).lower() for w in html.unescape(title).split())
    return [w for w in words if w and w not in FILLER_WORDS]


def title_words_query(words: Sequence[str], min_words: int, max_words: int, rng: np.random.Generator) -> str:
    """Between min_words and max_words of a title's query_words (fewer if it has fewer), in title order."""
    if not words:
        raise ValueError("a title without query words cannot give a query")
    k = min(len(words), int(rng.integers(min_words, max_words + 1)))
    keep = np.sort(rng.choice(len(words), k, replace=False))
    return " ".join(words[i] for i in keep)


def catalog_query_pairs(item_ids: Sequence[str], titles: Sequence[str], item_texts: Sequence[str], n: int,
                        min_words: int, max_words: int, seed: int) -> pd.DataFrame:
    """`n` pairs (TRAIN_PAIR_COLUMNS): query = title_words_query of an item's title, positive = that item.

    Items are drawn without replacement (a fresh permutation each time the catalog is used up), so
    n <= catalog size gives n distinct items; items whose title has no query_words are never drawn.
    """
    if not (len(item_ids) == len(titles) == len(item_texts)):
        raise ValueError(f"{len(item_ids)} item ids, {len(titles)} titles and {len(item_texts)} item texts: "
                         "expected one of each per catalog item")
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"min_words={min_words}, max_words={max_words}: need 1 <= min_words <= max_words")
    words = [query_words(str(t)) for t in titles]   # once per item: items repeat when n > catalog size
    usable = np.array([i for i, w in enumerate(words) if w], dtype=np.int64)
    if n > 0 and usable.size == 0:
        raise ValueError(f"catalog_queries.pairs={n} but none of the {len(titles)} catalog items "
                         "has a title with words")
    rng = np.random.default_rng(seed)
    rounds = -(-n // usable.size) if n > 0 else 0
    order = np.concatenate([rng.permutation(usable) for _ in range(rounds)])[:n] if rounds else usable[:0]
    return pd.DataFrame({
        "kind": [CATALOG_QUERY_KIND] * len(order),
        "anchor_text": [title_words_query(words[i], min_words, max_words, rng) for i in order],
        "positive_item_id": [str(item_ids[i]) for i in order],
        "positive_text": [str(item_texts[i]) for i in order],
    }, columns=list(TRAIN_PAIR_COLUMNS))
