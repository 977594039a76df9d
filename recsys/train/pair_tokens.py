"""Training pairs tokenised before they reach the workers: the text columns become fixed-width token id
and mask columns, the id columns the int64 keys the loss masks with. No Ray: jobs/train.py runs
`PairTokens` in Ray Data's map_batches (recsys/train/trainer.py), and the worker's step only stacks tensors.
jobs/train_ranker.py does the same with the cross-encoder's (context, item) pairs: `RankingPairTokens`.

Why: tokenising inside train_step ran serially before every forward pass, 31% of a plain GPU step at
BERT-large size and 80% at MiniLM size (../shared/gpu/README.md). In Ray Data it runs on the data CPUs
while the workers compute, and iter_torch_batches prefetches the numeric columns onto the device.

Each side is padded to its own max_length (a Ray Data tensor column has one width); the model trims each
group it encodes to its longest real row (recsys/models/towers.py), so the fixed width computes nothing.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from recsys.models.cross_encoder import tokenize_ranking_pairs
from recsys.train.hard_negatives import negative_column_pairs, negative_columns

TOKENIZE_BATCH_ROWS = 256   # rows per tokenizer call in Ray Data: big enough to amortise the call, small blocks
QUERY_SIDE = "anchor"
ANCHOR_KEY = "anchor_key"     # crc32 of the anchor text: two pairs of one anchor never count as negatives
# The loss's per-pair float columns, passed through as they are when present.
PAIR_FLOAT_COLUMNS = ("positive_log_q", "positive_weight")


def item_keys(values: Iterable[Any]) -> np.ndarray:
    """Stable int64 keys of item ids (or anchor texts) for the loss's masks; crc32 is the same on every worker."""
    return np.array([zlib.crc32(str(v).encode()) for v in values], dtype=np.int64)


def item_sides(columns: Sequence[str]) -> list[tuple[str, str]]:
    """(id column, text column) of every item a pair carries: the positive, then each mined negative."""
    return [("positive_item_id", "positive_text"), *negative_column_pairs(columns)]


def token_columns(side: str) -> tuple[str, str]:
    """(input ids, attention mask) columns of one side: 'anchor', 'positive', 'negative', 'negative_1' ..."""
    return f"{side}_input_ids", f"{side}_attention_mask"


def side_name(text_column: str) -> str:
    return text_column.replace("_text", "")


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model_path: str):
    """One tokenizer per data worker process and model (Ray reuses its worker processes across tasks)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def tokenize_side(tokenizer, texts: Sequence[Any], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (input ids int32 [B, max_length], attention mask int8 [B, max_length]), right-padded."""
    enc = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int8)


class PairTokens:
    """map_batches function: a batch of pairs (numpy columns) -> the numeric columns train_step needs."""

    def __init__(self, model_path: str, query_max_length: int, item_max_length: int):
        self.model_path, self.query_max_length, self.item_max_length = model_path, query_max_length, item_max_length

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokenizer = cached_tokenizer(self.model_path)
        out: dict[str, np.ndarray] = {ANCHOR_KEY: item_keys(batch["anchor_text"])}
        ids, mask = token_columns(QUERY_SIDE)
        out[ids], out[mask] = tokenize_side(tokenizer, batch["anchor_text"], self.query_max_length)
        for id_column, text_column in item_sides(list(batch)):
            ids, mask = token_columns(side_name(text_column))
            out[ids], out[mask] = tokenize_side(tokenizer, batch[text_column], self.item_max_length)
            out[f"{side_name(text_column)}_key"] = item_keys(batch[id_column])
        out |= {c: np.asarray(batch[c], dtype=np.float32) for c in PAIR_FLOAT_COLUMNS if c in batch}
        return out


def token_sides(columns: Iterable[str]) -> list[str]:
    """The item sides a tokenised batch carries: 'positive', then 'negative', 'negative_1' ... in mining order."""
    present = set(columns)
    sides = ["positive"]
    while token_columns(side_name(negative_columns(len(sides) - 1)[1]))[0] in present:
        sides.append(side_name(negative_columns(len(sides) - 1)[1]))
    return sides


def stacked_tokens(batch: Mapping[str, torch.Tensor], sides: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor rows, then each item side's rows, as one [Q + I, T] (ids, mask) pair: the wider side's width,
    the narrower one right-padded with zeros (trimmed off again per encoder call)."""
    parts = [token_columns(QUERY_SIDE), *(token_columns(s) for s in sides)]
    return (_stacked(batch, [ids for ids, _ in parts]), _stacked(batch, [mask for _, mask in parts]))


def stacked_masks(batch: Mapping[str, torch.Tensor], sides: Sequence[str]) -> torch.Tensor:
    """The mask half of stacked_tokens alone (counting tokens needs no ids)."""
    return _stacked(batch, [token_columns(s)[1] for s in (QUERY_SIDE, *sides)])


def _stacked(batch: Mapping[str, torch.Tensor], columns: Sequence[str]) -> torch.Tensor:
    width = max(batch[c].shape[1] for c in columns)
    return torch.cat([torch.nn.functional.pad(batch[c].long(), (0, width - batch[c].shape[1])) for c in columns])


PAIR_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def trim_to_longest(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fixed-width token columns (right-padded) -> the same cut to the batch's longest real row: the padding
    Ray Data's fixed width adds computes nothing."""
    width = max(int(batch["attention_mask"].sum(dim=1).max()), 1)
    return {k: batch[k][:, :width].long() for k in PAIR_INPUTS if k in batch}


class RankingPairTokens:
    """map_batches function of ranker training: (context_text, item_text) rows -> fixed-width token columns
    (int32 ids, int8 mask / segment ids) plus the loss's float columns, so the worker's step holds no
    tokenizer (as PairTokens above)."""

    FLOAT_COLUMNS = ("label", "weight", "offset")

    def __init__(self, model_path: str, max_length: int, item_max_length: int):
        self.model_path, self.max_length, self.item_max_length = model_path, max_length, item_max_length

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        enc = tokenize_ranking_pairs(cached_tokenizer(self.model_path), list(batch["context_text"]),
                                     list(batch["item_text"]), self.max_length, self.item_max_length,
                                     padding="max_length", return_tensors="np")
        out = {"input_ids": enc["input_ids"].astype(np.int32)}
        out |= {k: enc[k].astype(np.int8) for k in PAIR_INPUTS[1:] if k in enc}
        return out | {c: np.asarray(batch[c], dtype=np.float32) for c in self.FLOAT_COLUMNS}
