"""Contrastive loss, pooling, two-tower model, encoder loading and LoRA on real (tiny / MiniLM) models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.models.encoder import (
    TextEmbedder,
    TextEncoder,
    load_hf_encoder,
    mean_pool,
    resolve_model_path,
    zero3_partitioned_loading,
)
from recsys.models.lora import apply_lora, merge_lora
from recsys.models.losses import in_batch_softmax_loss, judged_pair_weights, log_sampling_probability
from recsys.models.towers import TwoTowerModel, tokenize_pairs


# ---------------------------------------------------------------- loss
def test_aligned_unit_vectors_give_near_zero_loss() -> None:
    vecs = torch.eye(8)
    loss = in_batch_softmax_loss(vecs, vecs.clone(), torch.arange(8), temperature=0.01)
    assert loss.item() < 1e-6


def test_misaligned_vectors_give_high_loss() -> None:
    vecs = torch.eye(8)
    shifted = vecs.roll(1, dims=0)
    loss = in_batch_softmax_loss(vecs, shifted, torch.arange(8), temperature=0.05)
    assert loss.item() > 10.0


def test_uniform_scores_give_log_batch_size() -> None:
    q = torch.ones(4, 3) / math.sqrt(3)
    loss = in_batch_softmax_loss(q, q.clone(), torch.arange(4), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-5)


def manual_loss(q: torch.Tensor, i: torch.Tensor, keys: torch.Tensor, t: float) -> torch.Tensor:
    """Row-by-row InfoNCE where other rows with the same item are removed from the denominator."""
    losses = []
    for r in range(len(q)):
        negatives = [c for c in range(len(i)) if c == r or keys[c] != keys[r]]
        logits = torch.stack([q[r] @ i[c] / t for c in negatives])
        losses.append(-(logits[negatives.index(r)] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_duplicate_item_is_not_a_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    i = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    i[3] = i[1]                                   # the same item twice in the batch
    keys = torch.tensor([10, 11, 12, 11, 13])
    t = 0.1
    loss = in_batch_softmax_loss(q, i, keys, temperature=t)
    assert loss.item() == pytest.approx(manual_loss(q, i, keys, t).item(), rel=1e-5)
    unmasked = F.cross_entropy(q @ i.T / t, torch.arange(5))
    assert abs(loss.item() - unmasked.item()) > 1e-3   # masking changes the loss
    # with distinct keys the loss is the plain InfoNCE
    plain = in_batch_softmax_loss(q, i, torch.arange(5), temperature=t)
    assert plain.item() == pytest.approx(unmasked.item(), rel=1e-5)


def test_duplicate_positive_pair_has_finite_loss_and_gradients() -> None:
    # two rows that are the identical (query, item) pair: neither should push the other away
    q = torch.eye(4)[[0, 0, 1, 2]].clone().requires_grad_(True)
    i = torch.eye(4)[[0, 0, 1, 2]].clone().requires_grad_(True)
    loss = in_batch_softmax_loss(q, i, torch.tensor([7, 7, 8, 9]), temperature=0.01)
    loss.backward()
    assert loss.item() < 1e-6
    assert torch.isfinite(q.grad).all() and torch.isfinite(i.grad).all()


def test_symmetric_loss_adds_the_item_to_query_direction_with_twins_masked() -> None:
    gen = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    cands = F.normalize(torch.randn(6, 16, generator=gen), dim=-1)   # 4 positives, then 2 hard negatives
    keys = torch.tensor([10, 11, 12, 11, 20, 21])        # positives 1 and 3: the same item
    anchors = torch.tensor([0, 1, 2, 3, -1, -1])
    t = 0.1
    one_way = in_batch_softmax_loss(q, cands, keys, t, anchor_keys=anchors)
    both = in_batch_softmax_loss(q, cands, keys, t, anchor_keys=anchors, symmetric=True)
    # item -> query by hand: row i = positive i against the 4 queries; query 3 is a true match for item 1 (and
    # query 1 for item 3), so each leaves the other's row; hard negatives take no part in this direction.
    terms = []
    for i in range(4):
        logits = (cands[i] @ q.T) / t
        allowed = [j for j in range(4) if j == i or keys[j] != keys[i]]
        terms.append(-(logits[i] - torch.logsumexp(logits[allowed], 0)))
    assert both.item() == pytest.approx(((one_way + torch.stack(terms).mean()) / 2).item(), rel=1e-5)
    assert abs(both.item() - one_way.item()) > 1e-3


def test_weighted_loss_is_the_weighted_mean_of_each_pairs_loss() -> None:
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    cands = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    keys, t = torch.arange(4), 0.1
    per_pair = [F.cross_entropy((q[i:i + 1] @ cands.T) / t, torch.tensor([i])) for i in range(4)]
    w = torch.tensor([1.0, 0.5, 0.25, 1.0])
    weighted = in_batch_softmax_loss(q, cands, keys, t, weights=w)
    assert weighted.item() == pytest.approx((sum(wi * li for wi, li in zip(w, per_pair)) / w.sum()).item(), rel=1e-5)
    assert in_batch_softmax_loss(q, cands, keys, t, weights=torch.ones(4)).item() == pytest.approx(
        in_batch_softmax_loss(q, cands, keys, t).item(), rel=1e-6)
    # both directions take the same weights: pair 1 at weight 0 drops out of each
    zero = torch.tensor([1.0, 0.0, 1.0, 1.0])
    both = in_batch_softmax_loss(q, cands, keys, t, symmetric=True, weights=zero)
    back = [F.cross_entropy((cands[i:i + 1] @ q.T) / t, torch.tensor([i])) for i in (0, 2, 3)]
    forward = sum(per_pair[i] for i in (0, 2, 3)) / 3
    assert both.item() == pytest.approx(((forward + sum(back) / 3) / 2).item(), rel=1e-5)


def test_judged_pair_weights_scale_gain_to_the_largest() -> None:
    import pandas as pd

    judged = pd.DataFrame({"query": ["drill", "drill", "drill", "saw"], "item_id": ["a", "b", "c", "a"],
                           "relevance": [3.0, 2.0, 1.0, 2.5]})
    weights = judged_pair_weights(judged, floor=1.0)
    assert weights == {("drill", "a"): 1.0, ("drill", "b"): 0.5, ("drill", "c"): 0.0, ("saw", "a"): 0.75}
    with pytest.raises(ValueError, match="floor=3.0"):
        judged_pair_weights(judged, floor=3.0)


def test_gradient_flows_to_both_towers() -> None:
    gen = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(6, 8, generator=gen), dim=-1).requires_grad_(True)
    i = F.normalize(torch.randn(6, 8, generator=gen), dim=-1).requires_grad_(True)
    in_batch_softmax_loss(q, i, torch.arange(6)).backward()
    assert q.grad is not None and i.grad is not None
    assert q.grad.abs().sum() > 0 and i.grad.abs().sum() > 0
    assert torch.isfinite(q.grad).all() and torch.isfinite(i.grad).all()


# ---------------------------------------------------------------- pooling
def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [-50.0, 9.0], [7.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    pooled = mean_pool(hidden, mask)
    assert pooled.shape == (2, 2)
    assert torch.allclose(pooled, torch.tensor([[2.0, 3.0], [6.0, 3.0]]))


def test_mean_pool_all_padding_is_zero_not_nan() -> None:
    pooled = mean_pool(torch.ones(1, 3, 4), torch.zeros(1, 3, dtype=torch.long))
    assert torch.equal(pooled, torch.zeros(1, 4))


# ---------------------------------------------------------------- towers on the tiny model
@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    backbone, tokenizer = load_hf_encoder(str(tiny_model_dir))
    return backbone, tokenizer


def test_tokenize_pairs_truncates_each_side_to_its_own_length(tiny) -> None:
    _, tokenizer = tiny
    long_text = " ".join(["hammer"] * 100)
    batch = tokenize_pairs(tokenizer, [long_text, "saw"], [long_text, "drill", 42],
                           query_max_length=20, item_max_length=10)
    assert batch["input_ids"].shape == (5, 20)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] == 20 and lengths[2] == 10
    assert lengths[1] < 10 and lengths[3] < 10 and lengths[4] < 10
    assert set(batch) >= {"input_ids", "attention_mask"}


def test_two_tower_forward_shapes_and_unit_norms(tiny) -> None:
    backbone, tokenizer = tiny
    model = TwoTowerModel(TextEncoder(backbone)).eval()
    batch = tokenize_pairs(tokenizer, ["red boots", "camping gear for kids", "x"], ["boots", "tent"],
                           query_max_length=16, item_max_length=8)
    with torch.no_grad():
        queries, items = model(batch["input_ids"], batch["attention_mask"], n_queries=3)
    assert queries.shape == (3, 32) and items.shape == (2, 32)
    assert model.encoder.dim == 32
    assert torch.allclose(queries.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(items.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_padding_does_not_change_an_embedding(tiny) -> None:
    backbone, tokenizer = tiny
    encoder = TextEncoder(backbone).eval()
    alone = tokenizer(["boots"], return_tensors="pt")
    padded = tokenize_pairs(tokenizer, ["boots"], ["a much longer item description text"], 16, 16)
    with torch.no_grad():
        v1 = encoder(alone["input_ids"], alone["attention_mask"])
        v2 = encoder(padded["input_ids"], padded["attention_mask"])[:1]
    assert torch.allclose(v1, v2, atol=1e-5)


def test_two_tower_loss_backpropagates_into_the_encoder(tiny_model_dir: Path) -> None:
    backbone, tokenizer = load_hf_encoder(str(tiny_model_dir))
    model = TwoTowerModel(TextEncoder(backbone))
    batch = tokenize_pairs(tokenizer, ["a", "b", "c"], ["x", "y", "z"], 8, 8)
    q, i = model(batch["input_ids"], batch["attention_mask"], n_queries=3)
    in_batch_softmax_loss(q, i, torch.arange(3)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)   # no unused parameters (DDP/ZeRO need this)


# ---------------------------------------------------------------- model paths
def test_resolve_model_path_default_is_minilm() -> None:
    path = Path(resolve_model_path("default"))
    assert (path / "config.json").is_file()


def test_resolve_model_path_rejects_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory") as err:
        resolve_model_path(str(tmp_path))
    assert repr(str(tmp_path)) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")   # hub names are never fetched


def test_resolve_model_path_local_dir(tiny_model_dir: Path) -> None:
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


# ---------------------------------------------------------------- real MiniLM
@pytest.fixture(scope="module")
def minilm() -> TextEmbedder:
    return TextEmbedder("default", max_length=64, batch_size=2, device="cpu")


def test_minilm_similar_texts_are_closer(minilm: TextEmbedder) -> None:
    texts = ["waterproof hiking boots for men", "men's waterproof trail boots",
             "stainless steel chef knife", "chocolate chip cookies recipe"]
    vecs = minilm.embed(texts)
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32 and minilm.dim == 384
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[0, 3] + 0.2


def test_minilm_embed_is_batch_independent(minilm: TextEmbedder) -> None:
    texts = ["garden hose", "a very long description of a lawn mower with many words in it", "tent"]
    together = minilm.embed(texts)                 # batch_size=2: two chunks, padding differs
    alone = np.stack([minilm.embed([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


# ---------------------------------------------------------------- LoRA
def test_apply_lora_trains_only_adapters(tiny_model_dir: Path) -> None:
    backbone, _ = load_hf_encoder(str(tiny_model_dir))
    n_base = sum(p.numel() for p in backbone.parameters())
    wrapped = apply_lora(backbone, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x {query, value} x {A, B}
    assert len(trainable) == 8
    assert all(".query." in n or ".value." in n for n in trainable)
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) < n_base / 10


def test_merge_lora_gives_a_plain_loadable_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    backbone, tokenizer = load_hf_encoder(str(tiny_model_dir))
    wrapped = apply_lora(backbone, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    with torch.no_grad():   # non-zero B so the adapters change the output
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    tok = tokenizer(["red boots", "tent"], padding=True, return_tensors="pt")
    encoder = TextEncoder(wrapped).eval()
    with torch.no_grad():
        expected = encoder(tok["input_ids"], tok["attention_mask"])
    merged = merge_lora(wrapped)
    assert type(merged).__name__ == "BertModel"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert not any("lora" in n for n in reloaded.state_dict())
    with torch.no_grad():
        got = TextEncoder(reloaded).eval()(tok["input_ids"], tok["attention_mask"])
        base = TextEncoder(AutoModel.from_pretrained(tiny_model_dir)).eval()(tok["input_ids"],
                                                                            tok["attention_mask"])
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)    # the adapters really were folded in


def test_merge_lora_on_a_plain_model_is_identity(tiny_model_dir: Path) -> None:
    backbone, _ = load_hf_encoder(str(tiny_model_dir))
    assert merge_lora(backbone) is backbone


def test_apply_lora_bad_target_modules_names_them(tiny_model_dir: Path) -> None:
    backbone, _ = load_hf_encoder(str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"lora\.target_modules=\['q_proj', 'v_proj'\] match nothing") as err:
        apply_lora(backbone, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    assert "'query'" in str(err.value)    # suggests names that do exist


# ---------------------------------------------------------------- ZeRO-3 partitioned loading
@pytest.mark.parametrize("ds_config", [None, {"zero_optimization": {"stage": 2}}])
def test_partitioned_loading_is_a_no_op_below_zero3(ds_config, tiny_model_dir: Path) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    with zero3_partitioned_loading(ds_config):
        assert not is_deepspeed_zero3_enabled()
        backbone, _ = load_hf_encoder(str(tiny_model_dir))   # no process group needed
    assert all(not hasattr(p, "ds_id") for p in backbone.parameters())


def test_partitioned_loading_enables_zero3_only_while_open() -> None:
    """transformers partitions from_pretrained / from_config models while the context is open; afterwards a
    plain load (rank 0's export) must not enter zero.Init's collectives."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with zero3_partitioned_loading(config):
        assert is_deepspeed_zero3_enabled()
    assert not is_deepspeed_zero3_enabled()


# ---------------------------------------------------------------- logQ correction
def test_log_sampling_probability_is_each_items_share_of_the_pairs() -> None:
    log_q = log_sampling_probability({"a": 2, "b": 1, "c": 1, "d": 0})
    assert log_q == pytest.approx({"a": math.log(0.5), "b": math.log(0.25), "c": math.log(0.25)})
    with pytest.raises(ValueError, match="no training pairs"):
        log_sampling_probability({})


def test_logq_correction_subtracts_log_q_from_each_candidate_column() -> None:
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    keys = torch.arange(4)
    log_q = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    logits = query @ item.T / 0.1 - log_q.unsqueeze(0)
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert torch.allclose(in_batch_softmax_loss(query, item, keys, 0.1, log_q), expected)
    # A uniform q shifts every logit equally: the same loss as without the correction.
    uniform = torch.full((4,), math.log(0.25))
    assert torch.allclose(in_batch_softmax_loss(query, item, keys, 0.1, uniform),
                          in_batch_softmax_loss(query, item, keys, 0.1))
    # The popular item (row 0) is pushed down as a negative less: the other rows' loss falls.
    per_row = torch.nn.functional.cross_entropy(logits, torch.arange(4), reduction="none")
    plain = torch.nn.functional.cross_entropy(query @ item.T / 0.1, torch.arange(4), reduction="none")
    assert (per_row[1:] < plain[1:]).all() and per_row[0] > plain[0]


# ---------------------------------------------------------------- hard negatives and other workers' items
def test_hard_negative_candidates_enter_every_querys_softmax() -> None:
    torch.manual_seed(1)
    query = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)   # 3 positives, then 3 hard negatives
    keys = torch.tensor([10, 11, 12, 20, 21, 10])                       # the last negative IS row 0's item
    loss = in_batch_softmax_loss(query, items, keys, 0.1)
    logits = query @ items.T / 0.1
    logits[0, 5] = torch.finfo(logits.dtype).min                       # masked for row 0 only
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.arange(3)))
    # A harder negative (the query's own direction) raises the loss above in-batch negatives alone.
    harder = torch.cat([items[:3], query])
    assert in_batch_softmax_loss(query, harder, torch.arange(6), 0.1) > \
        in_batch_softmax_loss(query, items[:3], torch.arange(3), 0.1)


def test_first_positive_offsets_the_targets_into_gathered_candidates() -> None:
    torch.manual_seed(2)
    query = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    mine = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)   # another worker's block, gathered first
    gathered = torch.cat([other, mine])
    loss = in_batch_softmax_loss(query, gathered, torch.arange(4), 0.1, first_positive=2)
    expected = torch.nn.functional.cross_entropy(query @ gathered.T / 0.1, torch.tensor([2, 3]))
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="2 queries from candidate 3 need that many candidates"):
        in_batch_softmax_loss(query, gathered, torch.arange(4), 0.1, first_positive=3)


def test_other_positives_of_the_same_anchor_are_not_negatives() -> None:
    """A query with two clicked products in one batch: neither product is a negative for the other row."""
    torch.manual_seed(3)
    query = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)   # 3 positives + 1 hard negative
    keys, anchors = torch.tensor([1, 2, 3, 4]), torch.tensor([7, 7, 8, -1])   # rows 0 and 1: same query
    logits = query @ items.T / 0.1
    logits[0, 1] = logits[1, 0] = torch.finfo(logits.dtype).min
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert torch.allclose(in_batch_softmax_loss(query, items, keys, 0.1, anchor_keys=anchors), expected)
    assert not torch.allclose(in_batch_softmax_loss(query, items, keys, 0.1), expected)
