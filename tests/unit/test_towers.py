"""Pooling choices and separate query / item towers on a tiny real BERT: the exported directories carry
their pooling, and every reader (TextEmbedder via query_tower_path) encodes as training did."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from recsys.models.encoder import (
    POOLING_ATTRIBUTE,
    QUERY_TOWER_DIR,
    TextEmbedder,
    TextEncoder,
    load_hf_encoder,
    pool,
    query_tower_path,
)
from recsys.models.losses import in_batch_softmax_loss
from recsys.models.towers import tokenize_pairs
from recsys.train.config import TrainConfig
from recsys.train.loop import build_model, export_encoder


def test_cls_and_max_pooling_read_only_real_tokens() -> None:
    hidden = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]]])   # third token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 5.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 5.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    with pytest.raises(ValueError, match="pooling='sum': expected one of mean, cls, max"):
        pool(hidden, mask, "sum")


def test_separate_towers_encode_queries_and_items_with_their_own_weights(tiny_model_dir: Path) -> None:
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), towers="separate")
    model, tokenizer = build_model(cfg)
    assert model.query_encoder is not None and model.query_encoder is not model.encoder
    batch = tokenize_pairs(tokenizer, ["red boots", "tent"], ["boots for hiking in the rain", "a tent"], 16, 16)
    model.eval()
    with torch.no_grad():
        q1, i1 = model(batch["input_ids"], batch["attention_mask"], n_queries=2)
        alone = tokenizer(["red boots", "tent"], padding=True, return_tensors="pt")   # no joint padding
        assert torch.allclose(q1, model.encoder(alone["input_ids"], alone["attention_mask"]), atol=1e-5)
        for p in model.query_encoder.parameters():
            p.add_(0.05)
        q2, i2 = model(batch["input_ids"], batch["attention_mask"], n_queries=2)
    assert torch.allclose(i1, i2) and not torch.allclose(q1, q2)       # only the query tower moved
    model.train()
    q, i = model(batch["input_ids"], batch["attention_mask"], n_queries=2)
    in_batch_softmax_loss(q, i, torch.arange(2)).backward()
    assert all(p.grad is not None for p in model.parameters())        # both towers train, none unused


def test_export_writes_both_towers_with_their_pooling_and_readers_use_them(tiny_model_dir: Path, tmp_path) -> None:
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), towers="separate", pooling="cls", zero_stage=2)
    model, tokenizer = build_model(cfg)
    # Seeded noise, not a uniform scale: LayerNorm undoes scaling every weight, and a tiny random
    # model's near-uniform attention then left the normalised vectors within 1e-3 of the item tower's.
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=noise))
    assert export_encoder(SimpleNamespace(module=model), cfg, tokenizer, str(tmp_path), rank=0)
    for directory in (tmp_path, tmp_path / QUERY_TOWER_DIR):
        assert json.loads((directory / "config.json").read_text())[POOLING_ATTRIBUTE] == "cls"
    assert query_tower_path(tmp_path) == str(tmp_path / QUERY_TOWER_DIR)
    assert query_tower_path(tiny_model_dir) == str(tiny_model_dir)      # shared towers: the model itself
    texts = ["red boots", "a tent for four"]
    tok = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        want_query = model.query_encoder(tok["input_ids"], tok["attention_mask"]).numpy()
        want_item = model.encoder(tok["input_ids"], tok["attention_mask"]).numpy()
    got_query = TextEmbedder(query_tower_path(tmp_path), max_length=16).embed(texts)
    got_item = TextEmbedder(str(tmp_path), max_length=16).embed(texts)
    assert got_query == pytest.approx(want_query, abs=1e-5) and got_item == pytest.approx(want_item, abs=1e-5)
    assert TextEmbedder(str(tmp_path)).encoder.pooling == "cls"
    assert not (got_query == pytest.approx(got_item, abs=1e-3))


def test_a_model_without_a_pooling_attribute_pools_by_mean(tiny_model_dir: Path) -> None:
    backbone, _ = load_hf_encoder(str(tiny_model_dir))
    assert TextEncoder(backbone).pooling == "mean"
    with pytest.raises(ValueError, match="pooling='first'"):
        TextEncoder(backbone, "first")
    with pytest.raises(ValueError, match="pooling"):
        TrainConfig(pooling="first")


def test_length_buckets_give_the_joint_vectors_and_gradients_with_less_padding(tiny_model_dir: Path) -> None:
    """Encoding each part in groups of similar length is only a different batching: the same vectors (pooling
    ignores padding) and the same gradients as one call over the jointly padded batch, fewer tokens computed."""
    from recsys.models.towers import encode_by_length, padding_stats

    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), length_buckets=3)
    model, tokenizer = build_model(cfg)
    model.eval()   # no dropout: the two paths must see the same network
    queries = ["a", "red boots for hiking in the rain and snow all winter long", "tent", "blue mug", "x y z w"]
    items = ["boots", "a tent for four people with a porch", "mug"]
    batch = tokenize_pairs(tokenizer, queries, items, 32, 16)
    q, i = model(batch["input_ids"], batch["attention_mask"], n_queries=len(queries))
    joint = model.encoder(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(torch.cat([q, i]), joint, rtol=1e-4, atol=1e-5)

    grads = []
    for encode in (lambda: torch.cat(model(batch["input_ids"], batch["attention_mask"], n_queries=len(queries))),
                   lambda: model.encoder(batch["input_ids"], batch["attention_mask"])):
        model.zero_grad()
        (encode() * torch.arange(1.0, 9.0).unsqueeze(1)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)

    stats = padding_stats(batch["attention_mask"], len(queries), length_buckets=3)
    assert stats["real"] < stats["computed"] < stats["computed_joint"], stats
    assert encode_by_length(model.encoder, batch["input_ids"][:0], batch["attention_mask"][:0], 3).shape == (0, 32)


def test_length_buckets_are_off_at_zero3() -> None:
    assert TrainConfig().length_buckets == 4
    assert TrainConfig(zero_stage=3).length_buckets == 1                   # the default adjusts
    with pytest.raises(ValueError, match="length_buckets=4 with zero_stage=3"):
        TrainConfig(zero_stage=3, towers="separate", length_buckets=4)   # an explicit choice is refused
