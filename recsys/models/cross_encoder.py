"""Cross-encoder CTR ranker: one transformer over the pair [user context ; item text] -> one logit.

The model is a plain `AutoModelForSequenceClassification` with `num_labels=1` on any local HF
encoder directory (MiniLM by default), so a trained ranker is an ordinary HF directory
(safetensors + tokenizer) that `from_pretrained` loads, with no DeepSpeed or custom classes.
The context is a behaviour history formatted newest-first (recsys.data.text), so truncating its
end drops the OLDEST items first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.encoder import resolve_model_path
from recsys.models.quantize import Quantize, check_quantize, quantize_int8

CROSS_ENCODER_TYPE = "cross_encoder"   # a cross-encoder ranker manifest's `type` (train writes it, serve checks it)


def load_cross_encoder(name_or_path: str, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(AutoModelForSequenceClassification with one output, AutoTokenizer) from a local directory.

    A plain encoder checkpoint (e.g. MiniLM) gets a freshly initialised classification head;
    a trained ranker directory loads its own head.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name_or_path)
    kwargs: dict = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


def save_cross_encoder(model: nn.Module, tokenizer, out_dir: str | Path) -> None:
    """Write the ranker as a plain HF directory (model.safetensors, config.json, tokenizer files)."""
    model.save_pretrained(str(out_dir), safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(str(out_dir))


def cap_item_texts(tokenizer, items: Sequence[str], item_max_length: int) -> list[str]:
    """Cut each item text after its first `item_max_length` tokens (character offsets of a fast
    tokenizer, so the cut text re-tokenizes to the same tokens)."""
    items = [str(t) for t in items]
    enc = tokenizer(items, add_special_tokens=False, truncation=True, max_length=item_max_length,
                    return_offsets_mapping=True)
    return [text[:offsets[-1][1]] if offsets else text for text, offsets in zip(items, enc["offset_mapping"])]


def tokenize_ranking_pairs(tokenizer, contexts: Sequence[str], items: Sequence[str], max_length: int,
                           item_max_length: int, padding: bool | str = True, return_tensors: str = "pt") -> dict:
    """[CLS] context [SEP] item [SEP], padded to the longest pair (or padding="max_length"), at most
    `max_length` tokens.

    The item keeps up to `item_max_length` tokens; the context gets what is left and loses tokens
    from its end, which is the oldest part of a newest-first history.
    """
    if len(contexts) != len(items):
        raise ValueError(f"{len(contexts)} contexts but {len(items)} items")
    if item_max_length + tokenizer.num_special_tokens_to_add(pair=True) >= max_length:
        raise ValueError(f"item_max_length={item_max_length} leaves no room for the context in "
                         f"max_length={max_length}")
    capped = cap_item_texts(tokenizer, items, item_max_length)
    # An empty context (no history in the catalog) is still a valid first segment: [CLS] [SEP] item [SEP].
    return tokenizer([str(c) for c in contexts], capped, truncation="only_first", max_length=max_length,
                     padding=padding, return_tensors=return_tensors)



def pair_logits(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """Tokenized pairs -> logits [B] (the classification head's single output)."""
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**inputs).logits.squeeze(-1)


def weighted_bce_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, weighted mean: sum(w * bce) / sum(w).

    logits, labels (0/1), weights: [B]. Dividing by the weight sum (not B) keeps the loss scale
    the same whatever the positive/negative reweighting of the data version.
    """
    per_example = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    weights = weights.float()
    return (per_example * weights).sum() / weights.sum().clamp(min=1e-12)


class CrossEncoderScorer:
    """Inference wrapper of the Rank stage and validation: (contexts, items) -> logits [N], batched, on the
    GPU when there is one. quantize="int8": the same dynamic int8 recipe as the query encoder's
    (recsys.models.quantize), CPU only."""

    def __init__(self, model_path: str, max_length: int = 128, item_max_length: int = 48,
                 batch_size: int = 64, device: str | None = None, quantize: Quantize = "none"):
        if device is None:
            device = "cpu" if quantize != "none" else ("cuda" if torch.cuda.is_available() else "cpu")
        check_quantize(quantize, device)         # before the model load, so a bad config fails fast
        model, self.tokenizer = load_cross_encoder(model_path)
        self.device = device
        model = model.to(self.device).eval()
        self.model = quantize_int8(model) if quantize == "int8" else model
        self.max_length = max_length
        self.item_max_length = item_max_length
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, contexts: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """contexts [N], items [N] -> float32 logits [N] (higher = more likely clicked)."""
        if len(contexts) != len(items):
            raise ValueError(f"{len(contexts)} contexts but {len(items)} items")
        out = np.zeros(len(items), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            stop = start + self.batch_size
            batch = tokenize_ranking_pairs(self.tokenizer, contexts[start:stop], items[start:stop],
                                           self.max_length, self.item_max_length)
            out[start:start + len(batch["input_ids"])] = pair_logits(self.model, batch, self.device).float().cpu()
        return out
