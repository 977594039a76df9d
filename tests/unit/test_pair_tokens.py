"""Pairs tokenised ahead of the workers (recsys/train/pair_tokens.py): the step's model sees exactly what
tokenising in the step gave, the keys mask what the text ids did, and the batch carries no text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.models.towers import tokenize_pairs
from recsys.train.config import TrainConfig
from recsys.train.loop import build_model, step_tokens
from recsys.train.pair_tokens import ANCHOR_KEY, PairTokens, item_keys, stacked_tokens, token_sides

BATCH = {
    "anchor_text": np.array(["red boots for a long walk in the hills in the rain", "tent"], dtype=object),
    "positive_item_id": np.array(["b1", "t1"], dtype=object),
    "positive_text": np.array(["boots", "a two person tent with a porch"], dtype=object),
    "negative_item_id": np.array(["t1", "s9"], dtype=object),
    "negative_text": np.array(["a two person tent with a porch", "socks"], dtype=object),
    "positive_log_q": np.array([-2.0, -3.0]),
}


def test_tokenised_pairs_encode_as_tokenising_in_the_step_did(tiny_model_dir: Path) -> None:
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), length_buckets=2)
    model, tokenizer = build_model(cfg)
    out = PairTokens(str(tiny_model_dir), query_max_length=12, item_max_length=6)(BATCH)
    assert not any(v.dtype == object for v in out.values()), "only numeric columns reach the workers"
    assert out["anchor_input_ids"].shape == (2, 12) and out["positive_input_ids"].shape == (2, 6)
    assert token_sides(out) == ["positive", "negative"]
    np.testing.assert_array_equal(out["negative_key"][:1], out["positive_key"][1:])   # the same item, one key
    np.testing.assert_array_equal(out[ANCHOR_KEY], item_keys(BATCH["anchor_text"]))
    assert out["positive_log_q"].dtype == np.float32

    batch = {k: torch.as_tensor(v) for k, v in out.items()}
    ids, mask = stacked_tokens(batch, token_sides(batch))
    items = [*BATCH["positive_text"], *BATCH["negative_text"]]
    reference = tokenize_pairs(tokenizer, BATCH["anchor_text"], items, 12, 6)
    model.eval()
    with torch.no_grad():
        q, i = model(ids, mask, n_queries=2)
        q_ref, i_ref = model(reference["input_ids"], reference["attention_mask"], n_queries=2)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i, i_ref, atol=1e-5, rtol=1e-5)
    tokens = step_tokens(batch, cfg)
    assert tokens["real"] == int(reference["attention_mask"].sum()) and tokens["computed"] >= tokens["real"]
    assert tokens["computed"] < mask.numel(), "the fixed width is trimmed away, not computed"
