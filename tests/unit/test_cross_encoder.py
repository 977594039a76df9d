"""Cross-encoder ranker on a real tiny BERT: pair tokenization, scores, weighted BCE, export round
trip, and the AUC / re-ranking metrics on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from recsys.config import ConfigError, load_config
from recsys.data.text import format_history_text
from recsys.models.cross_encoder import (
    CrossEncoderScorer,
    cap_item_texts,
    load_cross_encoder,
    pair_logits,
    save_cross_encoder,
    tokenize_ranking_pairs,
    weighted_bce_loss,
)
from recsys.train.pair_tokens import RankingPairTokens, trim_to_longest
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.ranker_eval import list_metrics, rerank_lists, roc_auc, target_positions

CONTEXTS = ["red shoe | blue sock", "", "green jacket"]
ITEMS = ["red shoe. Brand. Shoes", "a very plain bottle", "green jacket. Outdoor"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_cross_encoder(str(tiny_model_dir))


# ---------------------------------------------------------------- tokenization
def test_long_history_loses_its_oldest_items_and_the_item_stays_whole(tiny) -> None:
    _, tok = tiny
    titles = [f"oldest{i} thing" for i in range(30)] + ["newest gadget"]   # oldest first, as in a sequence
    context = format_history_text(titles, max_items=31)                    # newest first
    batch = tokenize_ranking_pairs(tok, [context], ["blue sock. Brand"], max_length=24, item_max_length=8)
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 24
    first_sep = ids.index(tok.sep_token_id)
    kept_context = tok.decode(ids[1:first_sep])
    assert kept_context.startswith("newest gadget | oldest29")
    assert "oldest0 " not in kept_context + " "
    assert tok.decode(ids[first_sep + 1:-1]) == "blue sock. brand"   # item untouched
    assert batch["token_type_ids"][0, first_sep + 1:].eq(1).all()


def test_long_item_is_capped_to_item_max_length_tokens(tiny) -> None:
    _, tok = tiny
    item = " ".join(f"word{i}" for i in range(40))
    capped = cap_item_texts(tok, [item, "short"], item_max_length=6)
    assert capped[1] == "short"
    assert len(tok(capped[0], add_special_tokens=False)["input_ids"]) == 6 and item.startswith(capped[0])
    batch = tokenize_ranking_pairs(tok, ["shoe"], [item], max_length=32, item_max_length=6)
    assert batch["input_ids"].shape == (1, 1 + 1 + 1 + 6 + 1)   # [CLS] shoe [SEP] 6 item tokens [SEP]


def test_bad_lengths_are_errors(tiny) -> None:
    _, tok = tiny
    with pytest.raises(ValueError, match="item_max_length=30 leaves no room"):
        tokenize_ranking_pairs(tok, ["a"], ["b"], max_length=32, item_max_length=30)
    with pytest.raises(ValueError, match="2 contexts but 1 items"):
        tokenize_ranking_pairs(tok, ["a", "b"], ["c"], max_length=32, item_max_length=8)
    with pytest.raises(ConfigError, match="item_max_length=126 leaves no room"):
        load_config(RankerTrainConfig, None, ["item_max_length=126"])
    with pytest.raises(ConfigError, match="rerank_candidates=5 is smaller than eval_k=10"):
        load_config(RankerTrainConfig, None, ["rerank_candidates=5"])


# ---------------------------------------------------------------- scores, loss, export
def test_scores_have_one_logit_per_pair_whatever_the_batching(tiny_model_dir) -> None:
    scorer = CrossEncoderScorer(str(tiny_model_dir), max_length=32, item_max_length=8, batch_size=2, device="cpu")
    scores = scorer.score(CONTEXTS, ITEMS)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert len(set(np.round(scores, 7))) == 3                  # distinct pairs, distinct logits
    # Padding to a longer batch must not change a pair's logit.
    scorer.batch_size = 64
    np.testing.assert_allclose(scorer.score(CONTEXTS, ITEMS), scores, atol=1e-6)
    assert scorer.score([], []).shape == (0,)


def test_weighted_bce_is_the_weight_normalised_mean() -> None:
    assert weighted_bce_loss(torch.zeros(4), torch.tensor([1, 0, 1, 0]), torch.ones(4)).item() == pytest.approx(
        math.log(2))
    logits, labels, weights = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([4.0, 1, 1])
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    assert weighted_bce_loss(logits, labels, weights).item() == pytest.approx(((per * weights).sum() / 6).item())
    # Scaling every weight leaves the loss unchanged: reweighting shifts balance, not the scale.
    assert weighted_bce_loss(logits, labels, weights * 10).item() == pytest.approx(
        weighted_bce_loss(logits, labels, weights).item(), rel=1e-6)


def test_export_reloads_as_a_plain_hf_model_with_the_same_scores(tiny, tmp_path) -> None:
    model, tok = tiny
    model.eval()
    save_cross_encoder(model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_labels == 1
    batch = tokenize_ranking_pairs(tok, CONTEXTS, ITEMS, max_length=32, item_max_length=8)
    with torch.inference_mode():
        before, after = pair_logits(model, batch, "cpu"), pair_logits(reloaded, batch, "cpu")
    assert before.shape == (3,)
    torch.testing.assert_close(before, after)
    scorer = CrossEncoderScorer(str(tmp_path), max_length=32, item_max_length=8, device="cpu")
    np.testing.assert_allclose(scorer.score(CONTEXTS, ITEMS), before.numpy(), atol=1e-5)


def test_pairs_tokenised_ahead_score_as_pairs_tokenised_in_the_step(tiny, tiny_model_dir) -> None:
    """Ray Data's RankingPairTokens pads to max_length; the step trims to the longest row, so the logits equal
    those of the pairs tokenised (and padded to their longest) in the step, and the loss columns pass through."""
    model, tok = tiny
    model.eval()
    columns = RankingPairTokens(str(tiny_model_dir), 32, 8)(
        {"context_text": np.array(CONTEXTS, dtype=object), "item_text": np.array(ITEMS, dtype=object),
         "label": np.array([1, 0, 0]), "weight": np.array([2.0, 1.0, 1.0]), "offset": np.array([0.5, -1.0, 0.0])})
    assert columns["input_ids"].shape == (3, 32) and columns["input_ids"].dtype == np.int32
    assert columns["attention_mask"].dtype == np.int8 and columns["offset"].tolist() == [0.5, -1.0, 0.0]
    trimmed = trim_to_longest({k: torch.as_tensor(v) for k, v in columns.items()})
    in_step = tokenize_ranking_pairs(tok, CONTEXTS, ITEMS, max_length=32, item_max_length=8)
    assert trimmed["input_ids"].shape == in_step["input_ids"].shape
    with torch.inference_mode():
        torch.testing.assert_close(pair_logits(model, trimmed, "cpu"), pair_logits(model, in_step, "cpu"))


# ---------------------------------------------------------------- AUC and re-ranking metrics
@pytest.mark.parametrize(("labels", "scores", "expected"), [
    ([1, 0, 1, 0], [0.9, 0.2, 0.7, 0.1], 1.0),
    ([1, 0, 1, 0], [0.1, 0.8, 0.2, 0.9], 0.0),
    ([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], 0.75),    # 3 of 4 positive/negative pairs in order
    ([1, 0, 0], [0.5, 0.5, 0.2], 0.75),            # a tie counts one half
])
def test_auc_hand_cases(labels, scores, expected) -> None:
    assert roc_auc(labels, scores) == pytest.approx(expected)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match=r"both labels 0 and 1, got \[1\]"):
        roc_auc([1, 1], [0.2, 0.3])


def test_reranking_moves_the_target_up_and_keeps_the_candidate_set() -> None:
    lists = [["a", "b", "c", "d"], ["x", "y"], ["p", "q", "r"]]
    targets = ["c", "z", "p"]                    # user 2's target was not retrieved at all
    scores = [np.array([0.1, 0.2, 0.9, 0.3]), np.array([1.0, 2.0]), np.array([0.5, 0.5, 0.5])]
    reranked = rerank_lists(lists, scores)
    assert reranked == [["c", "d", "b", "a"], ["y", "x"], ["p", "q", "r"]]   # ties keep retriever order
    before, after = target_positions(lists, targets, 4), target_positions(reranked, targets, 4)
    assert before.tolist() == [2, 4, 0] and after.tolist() == [0, 4, 0]
    m_before, m_after = list_metrics(before, 2, 4), list_metrics(after, 2, 4)
    assert m_before["ndcg@2"] == pytest.approx(1 / 3)                        # only user 3 hits, gain 1
    assert m_after["ndcg@2"] == pytest.approx(2 / 3)
    assert m_before["recall@2"] == pytest.approx(1 / 3) and m_after["recall@2"] == pytest.approx(2 / 3)
    assert m_before["recall@4"] == m_after["recall@4"] == pytest.approx(2 / 3)   # the ceiling never moves
    with pytest.raises(ValueError, match="2 candidates but 3 scores"):
        rerank_lists([["a", "b"]], [np.zeros(3)])
