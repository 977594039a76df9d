"""Contrastive loss with in-batch negatives for two-tower retrieval."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax_loss(query: torch.Tensor, item: torch.Tensor, item_keys: torch.Tensor,
                          temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE over the batch: query[i] should pick item[i] among all items in the batch.

    query, item: [B, H] unit vectors; item_keys: [B] int64 ids of the positive items.
    Another row with the same item is a true positive, not a negative, so it is masked
    out of the denominator (popular items often appear twice in one batch).
    """
    logits = query @ item.T / temperature                       # [B, B]
    same_item = item_keys.unsqueeze(0) == item_keys.unsqueeze(1)
    off_diagonal = ~torch.eye(len(item_keys), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same_item & off_diagonal, torch.finfo(logits.dtype).min)
    targets = torch.arange(len(item_keys), device=logits.device)
    return F.cross_entropy(logits, targets)
