"""Contrastive loss with in-batch negatives for two-tower retrieval."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def log_sampling_probability(pair_counts: Mapping[str, int]) -> dict[str, float]:
    """item id -> log(share of training pairs whose positive is that item), from pairs per item.

    In-batch negatives are the batch's positives, so an item turns up as a negative as often as it
    is a positive: this share is its sampling probability q for the logQ correction. Counts, not the
    pairs' ids, so the caller can count them where the pairs are (a Ray Data groupby)."""
    total = sum(pair_counts.values())
    if not total:
        raise ValueError("no training pairs to count item frequencies over")
    return {str(item): math.log(n / total) for item, n in pair_counts.items() if n > 0}


def judged_pair_weights(judgments: pd.DataFrame, floor: float) -> dict[tuple[str, str], float]:
    """(query, item_id) -> max(relevance - floor, 0) / the largest such gain, for every judged pair.

    Graded NDCG credits a loosely relevant product with part of an exact match's gain; weighting each
    pair's softmax loss by that share trains towards the same trade-off (a softmax loss with
    gain-weighted labels bounds NDCG: Bruch et al., "An analysis of the softmax cross entropy loss for
    learning-to-rank with binary relevance", ICTIR 2019). A pair judged at or below the floor weighs 0."""
    gain = np.clip(judgments["relevance"].to_numpy(float) - floor, 0.0, None)
    if not (gain > 0).any():
        raise ValueError(f"no judged pair has relevance above floor={floor}: every weight would be 0")
    weights = gain / gain.max()
    return {(str(q), str(i)): float(w) for q, i, w in
            zip(judgments["query"].to_numpy(), judgments["item_id"].to_numpy(), weights)}


def in_batch_softmax_loss(query: torch.Tensor, item: torch.Tensor, item_keys: torch.Tensor,
                          temperature: float = 0.05, log_q: torch.Tensor | None = None,
                          first_positive: int = 0, anchor_keys: torch.Tensor | None = None,
                          symmetric: bool = False, weights: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over the batch: query[i] should pick item[first_positive + i] among all candidate items.

    query: [B, H]; item: [C, H] candidates, C >= B (the batch's positives, and optionally hard negatives
    and other workers' items); item_keys: [C] int64 item ids. Query i's positive is candidate
    first_positive + i. Another candidate with the same item as that positive is a true positive, not a
    negative, so it is masked out of the denominator (popular items often appear twice in one batch).
    log_q: [C] log sampling probability of each candidate's item (log_sampling_probability; 0 for
    candidates that were not sampled as positives). Popular items are over-represented among in-batch
    negatives, which pushes them down; subtracting log q from every logit of that item's column corrects
    the sampled softmax towards the full one (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019).
    symmetric: also the item -> query direction (CLIP; sentence-transformers' MultipleNegativesSymmetricRankingLoss):
    positive i should pick query i among the batch's queries, and the loss is the mean of the two directions.
    A query whose positive is the same item, or whose text is the same anchor, is a true match there and masked.
    weights: [B] per pair (judged_pair_weights); the loss is then the weighted mean over the pairs.
    """
    n_queries = query.shape[0]
    if item.shape[0] < first_positive + n_queries or item_keys.shape[0] != item.shape[0]:
        raise ValueError(f"{n_queries} queries from candidate {first_positive} need that many candidates: got "
                         f"{item.shape[0]} candidates and {item_keys.shape[0]} keys")
    logits = query @ item.T / temperature                       # [B, C]
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)   # column j = candidate item j
    targets = torch.arange(n_queries, device=logits.device) + first_positive
    same_item = item_keys.unsqueeze(0) == item_keys[targets].unsqueeze(1)
    if anchor_keys is not None:
        same_item = same_item | (anchor_keys.unsqueeze(0) == anchor_keys[targets].unsqueeze(1))
    not_own = torch.arange(item.shape[0], device=logits.device).unsqueeze(0) != targets.unsqueeze(1)
    drop = same_item & not_own
    loss = _mean(F.cross_entropy(logits.masked_fill(drop, torch.finfo(logits.dtype).min), targets,
                                 reduction="none"), weights)
    if not symmetric:
        return loss
    # Row i: positive candidate first_positive + i against every query. Its twins are the same mask read the
    # other way round, and log q is constant along a row here, so the correction cancels in this softmax.
    cols = slice(first_positive, first_positive + n_queries)
    by_item = logits[:, cols].T.masked_fill(drop[:, cols].T, torch.finfo(logits.dtype).min)   # [B items, B queries]
    own = torch.arange(n_queries, device=logits.device)
    return (loss + _mean(F.cross_entropy(by_item, own, reduction="none"), weights)) / 2


def _mean(per_pair: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_pair.mean()
    weights = weights.to(per_pair.dtype)
    return (per_pair * weights).sum() / weights.sum().clamp_min(torch.finfo(per_pair.dtype).tiny)
