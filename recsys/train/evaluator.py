"""Validation inside the training workers: the model being trained ranks the whole catalog.

Every rank embeds one slice of the catalog and one slice of the validation users, then
all_gather gives every rank all item vectors and, after ranking its own users, all target
ranks; so every rank computes the same metrics and takes the same early-stopping decision.
Every rank runs the SAME number of forward passes (a short last slice is padded with a
dummy batch): under ZeRO-3 each forward gathers parameters collectively.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from recsys.eval.metrics import summarize_ranks, target_ranks
from recsys.train.validation import ValidationSet

USER_CHUNK = 1024      # users scored at once: a [1024, N] score block
K = 10


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start, stop, per_rank) of rank's contiguous slice of n rows; per_rank = ceil(n / world)."""
    per = math.ceil(n / world) if n else 0
    start = min(n, rank * per)
    return start, min(n, start + per), per


def _gather_rows(local: torch.Tensor, per: int, n: int) -> torch.Tensor:
    """Each rank's [<= per, ...] rows -> all ranks' rows in rank order, [n, ...]."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local[:n]
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n]


@torch.no_grad()
def _embed_slice(model, device, tokenizer, texts: Sequence[str], per: int, max_length: int,
                 batch_size: int, items: bool) -> torch.Tensor:
    """This rank's texts -> [len(texts), H] unit vectors from the item (or query) tower, in
    ceil(per / batch_size) forward passes."""
    vectors = []
    for start in range(0, per, batch_size):
        chunk = [str(t) for t in texts[start:start + batch_size]]
        tok = tokenizer(chunk or [""], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        query, item = model(tok["input_ids"].to(device), tok["attention_mask"].to(device),
                            n_queries=0 if items else len(chunk or [""]))
        # An empty chunk ran a dummy forward only to keep ZeRO-3's collectives in step: keep 0 of its rows.
        vectors.append((item if items else query).float()[:len(chunk)])
    return torch.cat(vectors)


def evaluate_retrieval(model, tokenizer, vset: ValidationSet, query_max_length: int, item_max_length: int,
                       batch_size: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Full-catalog ranking of the validation users -> {'val_recall@10', 'val_ndcg@10', 'val_mrr', 'val_users'},
    identical on every rank. `model`: the DeepSpeed engine (collective) or a plain TwoTowerModel."""
    module = getattr(model, "module", model)
    device = getattr(model, "device", None) or next(module.parameters()).device
    was_training = module.training
    model.eval()
    try:
        n_items, n_users = len(vset.item_ids), len(vset)
        i0, i1, items_per = slice_bounds(n_items, rank, world)
        local_items = _embed_slice(model, device, tokenizer, vset.item_texts[i0:i1], items_per, item_max_length,
                                   batch_size, items=True)
        items = _gather_rows(local_items, items_per, n_items).cpu().numpy()        # [N, H]
        u0, u1, users_per = slice_bounds(n_users, rank, world)
        queries = _embed_slice(model, device, tokenizer, vset.query_texts[u0:u1], users_per, query_max_length,
                               batch_size, items=False).cpu().numpy()                           # [u1 - u0, H]
    finally:
        model.train(was_training)
    local_ranks = []
    for start in range(0, len(queries), USER_CHUNK):
        stop = min(start + USER_CHUNK, len(queries))
        hidden = [np.asarray(h, dtype=np.int64) for h in vset.histories[u0 + start:u0 + stop]]
        local_ranks.append(target_ranks(queries[start:stop] @ items.T, vset.targets[u0 + start:u0 + stop], hidden))
    mine = torch.as_tensor(np.concatenate(local_ranks) if local_ranks else np.zeros(0, np.int64))
    ranks = _gather_rows(mine.to(device), users_per, n_users).cpu().numpy()
    summary = summarize_ranks(ranks, ks=(K,))
    return {f"val_{name}": value for name, value in summary.items()}


def agree_any(flag: bool, device) -> bool:
    """True on every rank when any rank says True (one all_reduce), so all ranks stop together."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
