"""Hard negatives mined from a retriever's index or BM25 (pure numpy/pandas/faiss/bm25s; no Ray).

Shared by both trainers: the ranker adds retrieved items as BCE negatives, the two-tower trainer
gives each training pair `per_pair` retrieved items as extra softmax candidates. The driver embeds the
anchors with the index's own model (recsys/train/retriever.py); everything after that is here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.index.bm25 import BM25Index
from recsys.index.faiss_index import ItemIndex


def negative_columns(k: int) -> tuple[str, str]:
    """(item id, text) columns of a pair's k-th mined negative (0-based). The first keeps the plain names,
    so a one-negative run writes the same table it always did; extras are numbered (negative_text_1 ...)."""
    suffix = f"_{k}" if k else ""
    return f"negative_item_id{suffix}", f"negative_text{suffix}"


def negative_column_pairs(columns: Sequence[str]) -> list[tuple[str, str]]:
    """The negative (id, text) column pairs a table or batch with these columns carries, in order."""
    present = set(columns)
    out: list[tuple[str, str]] = []
    while all(c in present for c in negative_columns(len(out))):
        out.append(negative_columns(len(out)))
    return out


def retrieve_candidates(index: ItemIndex, query_vectors: np.ndarray, histories: Sequence[Sequence[str]],
                        n: int) -> list[list[str]]:
    """Top-n item ids per query, the user's history items excluded (as the Retrieve stage would)."""
    return [[i for i, _ in row] for row in retrieve_scored_candidates(index, query_vectors, histories, n)]


def retrieve_scored_candidates(index: ItemIndex, query_vectors: np.ndarray, histories: Sequence[Sequence[str]],
                               n: int) -> list[list[tuple[str, float]]]:
    """Top-n (item id, retrieval score) per query, the user's history items excluded."""
    extra = max((len(set(h)) for h in histories), default=0)
    scores, ids = index.search(query_vectors, n + extra)
    skips = [set(history) for history in histories]   # once per query, not once per retrieved item
    return [[(i, float(s)) for i, s in zip(row, row_scores) if i not in skip][:n]
            for row, row_scores, skip in zip(ids, scores, skips)]


def bm25_candidates(bm25: BM25Index, item_ids: Sequence[str], anchors: Sequence[str], n: int) -> list[list[str]]:
    """Top-n item ids per anchor under BM25 (`bm25` indexes the texts of `item_ids`, in that order). Only
    items sharing a word with the anchor: lexical look-alikes the tower must learn to tell apart."""
    return [[str(item_ids[i]) for i in row] for row in bm25.top_items(anchors, n)]


def pick_hard_negatives(candidates: Sequence[Sequence[str]], excluded: Sequence[set[str]], per_positive: int,
                        seed: int) -> list[list[str]]:
    """Per context, `per_positive` items drawn uniformly without replacement from its retrieved
    candidates that are not in `excluded` (the user's own items, the group's other rows).

    Uniform over the top-k rather than the very top: the top few are the likeliest unlabelled
    positives, and a spread of hard negatives teaches more than the same near-duplicates.
    """
    if len(candidates) != len(excluded):
        raise ValueError(f"{len(candidates)} candidate lists but {len(excluded)} exclusion sets")
    rng = np.random.default_rng(seed)
    picked = []
    for items, skip in zip(candidates, excluded):
        eligible = [i for i in dict.fromkeys(items) if i not in skip]
        take = min(per_positive, len(eligible))
        picked.append([eligible[j] for j in sorted(rng.choice(len(eligible), take, replace=False))] if take else [])
    return picked


def judged_negative_candidates(judgments: pd.DataFrame, anchors: Sequence[str],
                               max_relevance: float) -> dict[str, list[str]]:
    """Anchor (query) text -> the items judged at most `max_relevance` for exactly that query.

    Human judgments of shown results are true negatives, unlike an index's unjudged top-k, which holds
    relevant items nobody labelled (other sizes and colours of the product): those taught the tower to
    push relevant items away (README, Home Depot experiments). Anchors without such items are left out.
    """
    wanted = set(anchors)
    low = judgments[(judgments["relevance"] <= max_relevance) & judgments["query"].isin(wanted)]
    return {str(q): [str(i) for i in items] for q, items in low.groupby("query", sort=False)["item_id"]}


def pairs_with_hard_negatives(pairs: pd.DataFrame, candidates: Mapping[str, Sequence[str]],
                              item_texts: Mapping[str, str], seed: int,
                              per_pair: int = 1) -> tuple[pd.DataFrame, dict[str, int]]:
    """Training pairs + `per_pair` distinct hard negatives each (negative_columns(0 .. per_pair-1))
    -> (pairs, counts).

    `candidates`: anchor text -> the retriever's top-k for it. A pair's negative is never a positive of
    any pair with the same anchor. Where a pair's top-k holds fewer than `per_pair` eligible items (with
    item text), uniformly drawn catalog items fill the rest, so every batch has the same shape; counts
    says how many negatives came from each.
    """
    if per_pair < 1:
        raise ValueError(f"per_pair={per_pair}: need at least one negative per pair")
    positives = pairs.groupby("anchor_text")["positive_item_id"].agg(lambda s: set(map(str, s))).to_dict()
    anchors = pairs["anchor_text"].tolist()
    missing = sorted({a for a in anchors if a not in candidates})
    if missing:
        raise ValueError(f"no retrieved candidates for {len(missing)} anchors, e.g. {missing[0]!r}")
    excluded = [positives[a] for a in anchors]
    lists = [[i for i in candidates[a] if i in item_texts] for a in anchors]
    picked = pick_hard_negatives(lists, excluded, per_pair, seed)
    catalog = np.array(sorted(item_texts), dtype=object)
    rng = np.random.default_rng(seed + 1)
    rows, fallback = [], 0
    for chosen, skip in zip(picked, excluded):
        row = list(chosen)
        taken = skip | set(row)
        while len(row) < per_pair:
            fallback += 1
            draw = str(catalog[rng.integers(len(catalog))])
            while draw in taken and len(taken) < len(catalog):
                draw = str(catalog[rng.integers(len(catalog))])
            row.append(draw)
            taken.add(draw)
        rows.append(row)
    out = pairs.copy()
    for k in range(per_pair):
        id_column, text_column = negative_columns(k)
        out[id_column] = [row[k] for row in rows]
        out[text_column] = [item_texts[row[k]] for row in rows]
    return out, {"mined": len(out) * per_pair - fallback, "uniform_fallback": fallback, "anchors": len(positives)}
