"""Contrastive loss with in-batch negatives for two-tower retrieval."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def log_sampling_probability(item_ids: Iterable[str]) -> dict[str, float]:
    """item id -> log(share of training pairs whose positive is that item).

    In-batch negatives are the batch's positives, so an item turns up as a negative as often as it
    is a positive: this share is its sampling probability q for the logQ correction."""
    counts = Counter(str(i) for i in item_ids)
    if not counts:
        raise ValueError("no training pairs to count item frequencies over")
    total = sum(counts.values())
    return {item: math.log(n / total) for item, n in counts.items()}


def in_batch_softmax_loss(query: torch.Tensor, item: torch.Tensor, item_keys: torch.Tensor,
                          temperature: float = 0.05, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over the batch: query[i] should pick item[i] among all items in the batch.

    query, item: [B, H] unit vectors; item_keys: [B] int64 ids of the positive items.
    Another row with the same item is a true positive, not a negative, so it is masked
    out of the denominator (popular items often appear twice in one batch).
    log_q: [B] log sampling probability of each row's item (log_sampling_probability). Popular
    items are over-represented among in-batch negatives, which pushes them down; subtracting
    log q from every logit of that item's column corrects the sampled softmax towards the full
    one (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019).
    """
    logits = query @ item.T / temperature                       # [B, B]
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)   # column j = candidate item j
    same_item = item_keys.unsqueeze(0) == item_keys.unsqueeze(1)
    off_diagonal = ~torch.eye(len(item_keys), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same_item & off_diagonal, torch.finfo(logits.dtype).min)
    targets = torch.arange(len(item_keys), device=logits.device)
    return F.cross_entropy(logits, targets)
