"""Two-tower retrieval model: QueryTower (history / search text) and ItemTower (item text).

Shared towers (the default) are one TextEncoder; separate towers are two encoders (same base
model, trained apart). Either way queries and items are encoded in two calls, each padded to its
own longest row: one call over the jointly padded [Q + I, T] batch computed items' padding up to
the queries' length (46% real tokens at q128/i64 on a GPU run). A parameter used by both calls
gets its gradients summed by autograd before its one accumulation hook fires, so ZeRO-2 and
ZeRO-3 reduce each partition once per step (tests/ray train tests run both stages this way).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.models.encoder import TextEncoder


class TwoTowerModel(nn.Module):
    def __init__(self, encoder: TextEncoder, query_encoder: TextEncoder | None = None, length_buckets: int = 1):
        """encoder: the item tower, and the query tower too unless a separate `query_encoder` is given.
        length_buckets: each part's rows are sorted by length and encoded in this many calls, each padded
        to its own longest row (bench/padding_bench.py measures the real-token fraction per setting)."""
        super().__init__()
        self.encoder = encoder
        self.query_encoder = query_encoder
        self.length_buckets = length_buckets

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids/attention_mask: [Q + I, T], queries first -> ([Q, H], [I, H]) unit vectors.

        Each part is trimmed to its own longest row and encoded on its own, so 32-token items are not
        padded to 128-token queries."""
        query_encoder = self.query_encoder if self.query_encoder is not None else self.encoder
        query = encode_by_length(query_encoder, input_ids[:n_queries], attention_mask[:n_queries], self.length_buckets)
        item = encode_by_length(self.encoder, input_ids[n_queries:], attention_mask[n_queries:], self.length_buckets)
        return query, item


def length_groups(attention_mask: torch.Tensor, buckets: int) -> list[torch.Tensor]:
    """Row indices sorted by length, cut into `buckets` groups of near-equal size (fewer for few rows)."""
    order = torch.argsort(attention_mask.sum(dim=1), stable=True)
    return list(order.chunk(min(buckets, len(order)))) if len(order) else []


def encode_by_length(encoder: TextEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     buckets: int) -> torch.Tensor:
    """[N, T] -> [N, H] in input order, encoded group by group of similar length, each at its own width."""
    groups = length_groups(attention_mask, buckets)
    if not groups:
        return torch.zeros(0, encoder.dim, device=input_ids.device)
    vectors = torch.cat([encoder(*_trimmed(input_ids[rows], attention_mask[rows])) for rows in groups])
    return vectors[torch.argsort(torch.cat(groups)).to(vectors.device)]   # back to input order


def _used_width(attention_mask: torch.Tensor) -> int:
    """Columns up to the last one any row uses (1 for an all-padding mask)."""
    used = attention_mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def _trimmed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing padding columns this part of a jointly padded batch does not need."""
    width = _used_width(attention_mask)
    return input_ids[:, :width], attention_mask[:, :width]


def tokenize_pairs(tokenizer, queries: Sequence[str], items: Sequence[str],
                   query_max_length: int, item_max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize queries and items with their own truncation, then pad into one [Q + I, T] batch."""
    q = tokenizer([str(t) for t in queries], truncation=True, max_length=query_max_length)
    i = tokenizer([str(t) for t in items], truncation=True, max_length=item_max_length)
    features = [{"input_ids": ids, "attention_mask": m}
                for enc in (q, i) for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    return tokenizer.pad(features, padding=True, return_tensors="pt")


def padding_stats(attention_mask: torch.Tensor, n_queries: int, length_buckets: int = 1) -> dict[str, int]:
    """Tokens of a tokenize_pairs batch: real ones, and the ones computed when TwoTowerModel encodes it with
    `length_buckets`, or in one call over the jointly padded [Q + I, T] batch."""
    def computed(mask: torch.Tensor) -> int:
        return sum(len(rows) * _used_width(mask[rows]) for rows in length_groups(mask, length_buckets))

    return {"real": int(attention_mask.sum()),
            "computed": computed(attention_mask[:n_queries]) + computed(attention_mask[n_queries:]),
            "computed_joint": int(attention_mask.numel())}
