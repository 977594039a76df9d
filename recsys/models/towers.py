"""Two-tower retrieval model: QueryTower (history / search text) and ItemTower (item text).

Both towers share one TextEncoder. Queries and items are encoded in ONE forward pass
(concatenated batch): calling the encoder twice per step makes DDP / ZeRO reduce a
gradient partition twice, which DeepSpeed rejects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.models.encoder import TextEncoder


class TwoTowerModel(nn.Module):
    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids/attention_mask: [Q + I, T], queries first -> ([Q, H], [I, H]) unit vectors."""
        vectors = self.encoder(input_ids, attention_mask)
        return vectors[:n_queries], vectors[n_queries:]


def tokenize_pairs(tokenizer, queries: Sequence[str], items: Sequence[str],
                   query_max_length: int, item_max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize queries and items with their own truncation, then pad into one [Q + I, T] batch."""
    q = tokenizer([str(t) for t in queries], truncation=True, max_length=query_max_length)
    i = tokenizer([str(t) for t in items], truncation=True, max_length=item_max_length)
    features = [{"input_ids": ids, "attention_mask": m}
                for enc in (q, i) for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    return tokenizer.pad(features, padding=True, return_tensors="pt")
