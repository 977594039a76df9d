"""Training sets from sequences: two-tower retrieval pairs and CTR/ranking examples.

Only the training part of each sequence (items[:n_train]) is used, so validation and test
targets never leak. Negative sampling is a pure function of (seed, user, step, draw): the
same user gets the same negatives whichever partition or process builds them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.text import format_history_text
from recsys.schema import RANKING_COLUMNS, TRAIN_PAIR_COLUMNS


def make_training_pairs(sequences: pa.Table, item_texts: Mapping[str, str], item_titles: Mapping[str, str],
                        max_history_items: int = 8, max_pairs_per_user: int = 50) -> pd.DataFrame:
    """Users -> (anchor text, positive item) pairs: history prefix -> next item, and query -> clicked item.

    The most recent `max_pairs_per_user` next-item pairs are kept per user so that a few heavy
    users do not dominate an epoch.
    """
    rows: list[tuple[str, str, str, str]] = []
    columns = ["items", "n_train", "valid_item", "test_item", "search_queries", "search_items"]
    for seq in sequences.select(columns).to_pylist():
        visible = seq["items"][:seq["n_train"]]
        titles = [item_titles.get(i, "") for i in visible]
        for t in range(max(1, len(visible) - max_pairs_per_user), len(visible)):
            anchor = format_history_text(titles[:t], max_history_items)
            if anchor and visible[t] in item_texts:
                rows.append(("next_item", anchor, visible[t], item_texts[visible[t]]))
        held_out = {seq["valid_item"], seq["test_item"]}
        for query, item in zip(seq["search_queries"], seq["search_items"]):
            if item in item_texts and item not in held_out:
                rows.append(("search", query, item, item_texts[item]))
    return pd.DataFrame(rows, columns=list(TRAIN_PAIR_COLUMNS))


def negative_distribution(item_ids: np.ndarray, counts: Mapping[str, int], method: str,
                          alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Catalog items (sorted) -> (item ids, sampling probabilities).

    popularity: q ∝ (count + 1) ** alpha — add-one so items nobody touched in training can still
    be negatives; alpha < 1 flattens the head (word2vec's 0.75). uniform: q = 1 / n.
    """
    ids = np.sort(np.asarray(item_ids, dtype=object))
    if method == "uniform":
        return ids, np.full(len(ids), 1.0 / max(len(ids), 1))
    mass = (np.array([counts.get(i, 0) for i in ids], dtype=np.float64) + 1.0) ** alpha
    return ids, mass / mass.sum()


def _uniform_draws(users: np.ndarray, positions: np.ndarray, draw: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic U[0,1) per (seed, user, position, draw) from pandas' stable 64-bit hashing."""
    keys = pd.DataFrame({"u": users, "p": positions, "d": draw, "s": np.full(len(draw), seed, dtype=np.int64)})
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
    return (hashed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


REDRAWS = 8


def _draw_negatives(users: np.ndarray, flat_items: np.ndarray, lengths: np.ndarray, neg_owner: np.ndarray,
                    neg_position: np.ndarray, draw: np.ndarray, item_ids: np.ndarray, probs: np.ndarray,
                    seed: int) -> np.ndarray:
    """Catalog index of each negative, or -1 when every redraw hit the user's own items.

    A negative must be an item the user never interacted with — anywhere in their sequence,
    held-out targets included: labelling the test item "not clicked" would teach the ranker
    to bury exactly what evaluation asks for. Clashes are redrawn (draw number shifted per
    round, so the result stays a pure function of seed, user, step and draw).
    """
    own = pd.Index(pd.Series(np.repeat(users, lengths), dtype=object) + "\x1f"
                   + pd.Series(flat_items, dtype=object)).unique()
    cdf = np.cumsum(probs)
    idx = np.full(len(neg_owner), -1, dtype=np.int64)
    pending = np.arange(len(neg_owner))
    picked = np.zeros(0, dtype=np.int64)

    def settle(candidates: np.ndarray) -> np.ndarray:
        """Accept candidates that are not the user's own items; return the still-pending positions."""
        nonlocal pending
        who = users[neg_owner[pending]]
        keys = pd.Series(who, dtype=object) + "\x1f" + pd.Series(item_ids[candidates], dtype=object)
        clash = own.get_indexer(keys) >= 0 if len(own) else np.zeros(len(candidates), dtype=bool)
        idx[pending[~clash]] = candidates[~clash]
        pending = pending[clash]
        return candidates[clash]

    for redraw in range(REDRAWS):
        if not len(pending):
            break
        u = _uniform_draws(users[neg_owner[pending]], neg_position[pending], draw[pending] + redraw * 1_000_003, seed)
        picked = settle(np.minimum(np.searchsorted(cdf, u, side="right"), len(item_ids) - 1))
    # Distributions concentrated on a user's own items (tiny catalogs, extreme skew): walk on
    # from the last draw to the next catalog item the user has not touched.
    for _ in range(1, len(item_ids)):
        if not len(pending):
            break
        picked = settle((picked + 1) % len(item_ids))
    return idx


def ranking_examples(sequences: pa.Table, item_ids: np.ndarray, probs: np.ndarray, max_positives_per_user: int,
                     negatives_per_positive: int, imbalance: str, seed: int) -> pa.Table:
    """Labelled CTR examples: the most recent training steps are positives (context = items before
    them), each with `negatives_per_positive` sampled items the user never interacted with as
    negatives (fewer only for a user who touched every catalog item).

    imbalance: none (weight 1), reweight (positives weigh negatives_per_positive so both classes
    carry equal mass), resample (positives repeated negatives_per_positive times).
    """
    n_train = sequences.column("n_train").to_numpy()
    lengths = pc.list_value_length(sequences.column("items")).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    first = np.maximum(1, n_train - max_positives_per_user)
    n_pos = np.maximum(n_train - first, 0)
    owner = np.repeat(np.arange(len(n_train)), n_pos)
    position = np.repeat(first, n_pos) + (np.arange(n_pos.sum()) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos))
    flat_items = pc.list_flatten(sequences.column("items")).to_numpy(zero_copy_only=False)
    users = sequences.column("user_id").to_numpy(zero_copy_only=False)
    pos_items = flat_items[offsets[owner] + position] if len(owner) else np.array([], dtype=object)

    # A one-item catalog has no item that can be a negative for its only positive.
    k = negatives_per_positive if len(item_ids) > 1 else 0
    neg_owner, neg_position = np.repeat(owner, k), np.repeat(position, k)
    draw = np.tile(np.arange(k), len(owner))
    idx = _draw_negatives(users, flat_items, lengths, neg_owner, neg_position, draw, item_ids, probs, seed)
    kept = idx >= 0
    neg_owner, neg_position, idx = neg_owner[kept], neg_position[kept], idx[kept]

    pos_weight, pos_repeat = {"none": (1.0, 1), "reweight": (float(max(k, 1)), 1),
                               "resample": (1.0, max(k, 1))}[imbalance]
    pos_owner, pos_position = np.repeat(owner, pos_repeat), np.repeat(position, pos_repeat)
    pos_items_out = np.repeat(pos_items, pos_repeat)
    frame = pd.DataFrame({
        "user_id": np.concatenate([users[pos_owner], users[neg_owner]]),
        "position": np.concatenate([pos_position, neg_position]).astype(np.int64),
        "item_id": np.concatenate([pos_items_out, item_ids[idx]]),
        "label": np.concatenate([np.ones(len(pos_owner), np.int8), np.zeros(len(idx), np.int8)]),
        "weight": np.concatenate([np.full(len(pos_owner), pos_weight), np.ones(len(idx))]).astype(np.float32),
    })
    # Negatives carry their draw's probability; positives look theirs up (0 if not in the catalog).
    prob_of = pd.Series(np.asarray(probs, dtype=np.float64), index=item_ids)
    pos_prob = prob_of.reindex(pos_items_out).fillna(0.0).to_numpy()
    frame["sample_prob"] = np.concatenate([pos_prob, prob_of.to_numpy()[idx]])
    frame = frame.sort_values(["user_id", "position", "label", "item_id"], ascending=[True, True, False, True],
                              kind="stable")
    return pa.Table.from_pandas(frame[list(RANKING_COLUMNS)], preserve_index=False)
