"""Two-tower retrieval model: QueryTower (history / search text) and ItemTower (item text).

Shared towers (the default) are one TextEncoder, and queries and items are encoded in ONE
forward pass (concatenated batch): calling the encoder twice per step makes DDP / ZeRO reduce
a gradient partition twice, which DeepSpeed rejects. Separate towers are two encoders (same
base model, trained apart), each called once per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.models.encoder import TextEncoder


class TwoTowerModel(nn.Module):
    def __init__(self, encoder: TextEncoder, query_encoder: TextEncoder | None = None):
        """encoder: the item tower, and the query tower too unless a separate `query_encoder` is given."""
        super().__init__()
        self.encoder = encoder
        self.query_encoder = query_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids/attention_mask: [Q + I, T], queries first -> ([Q, H], [I, H]) unit vectors."""
        if self.query_encoder is None:
            vectors = self.encoder(input_ids, attention_mask)
            return vectors[:n_queries], vectors[n_queries:]
        empty = torch.zeros(0, self.encoder.dim, device=input_ids.device)
        query = self.query_encoder(*_trimmed(input_ids[:n_queries], attention_mask[:n_queries])) if n_queries \
            else empty
        item = self.encoder(*_trimmed(input_ids[n_queries:], attention_mask[n_queries:])) \
            if n_queries < len(input_ids) else empty
        return query, item


def _trimmed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing padding columns this part of a jointly padded batch does not need."""
    used = attention_mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return input_ids[:, :width], attention_mask[:, :width]


def tokenize_pairs(tokenizer, queries: Sequence[str], items: Sequence[str],
                   query_max_length: int, item_max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize queries and items with their own truncation, then pad into one [Q + I, T] batch."""
    q = tokenizer([str(t) for t in queries], truncation=True, max_length=query_max_length)
    i = tokenizer([str(t) for t in items], truncation=True, max_length=item_max_length)
    features = [{"input_ids": ids, "attention_mask": m}
                for enc in (q, i) for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    return tokenizer.pad(features, padding=True, return_tensors="pt")
