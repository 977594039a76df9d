"""The cross-encoder in the Rank stage: the blend into the top of a list, the real (tiny) cross-encoder
re-scoring /v1/recommend's top rerank_depth against the history text, int8, and the deploy-time checks."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.models.cross_encoder import CROSS_ENCODER_TYPE, CrossEncoderScorer, load_cross_encoder, save_cross_encoder
from recsys.models.ranker import RankerConfig, blend_cross_encoder, top_positions
from recsys.serve.app import resolve_cross_encoder
from recsys.serve.rank import Ranker

TITLES = ["red shoe", "blue sock", "green jacket", "black bottle", "white shoe", "pink sock"]


def test_blend_rescored_top_and_scaled_rest() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    top = top_positions(scores, 2)
    assert list(top) == [1, 3]
    final = blend_cross_encoder(scores, top, np.array([-10.0, 10.0]), 0.5)
    sig = 1 / (1 + np.exp(-np.array([-10.0, 10.0])))
    assert final == pytest.approx([0.1, 0.45 + 0.5 * sig[0], 0.25, 0.35 + 0.5 * sig[1]])
    assert np.argmax(final) == 3, "a confident cross-encoder lifts the second item over the first"
    assert blend_cross_encoder(scores, top, np.array([3.0, -3.0]), 0.0) == pytest.approx(scores)
    with pytest.raises(ValueError, match="2 re-scored positions but 1 logits"):
        blend_cross_encoder(scores, top, np.array([1.0]), 0.5)


@pytest.fixture
def served(recsys_home, tiny_model_dir, tmp_path):
    """A cross-encoder ranker artifact (the tiny BERT with a fresh head) and a catalog file."""
    version, out = new_version_dir("rankers")
    model, tokenizer = load_cross_encoder(str(tiny_model_dir))
    save_cross_encoder(model, tokenizer, out)
    write_manifest(out, {"kind": "ranker", "type": CROSS_ENCODER_TYPE, "version": version, "max_length": 48,
                         "item_max_length": 12, "max_history_items": 4})
    mark_latest("rankers", version)
    ids = [f"i{n}" for n in range(len(TITLES))]
    catalog = tmp_path / "catalog.parquet"
    pd.DataFrame({"item_id": ids, "title": TITLES, "category": [""] * 6, "brand": [""] * 6,
                  "description": [""] * 6}).to_parquet(catalog)
    popularity = tmp_path / "popularity.parquet"
    pd.DataFrame({"item_id": ids, "count": [1] * 6}).to_parquet(popularity)
    return out, catalog, popularity, ids


def test_the_ranker_rescores_the_top_of_recommend_lists_with_the_cross_encoder(served) -> None:
    out, catalog, popularity, ids = served
    ranker = Ranker.func_or_class(str(popularity), None, None,
                                  cross_encoder={"path": str(out), "catalog_path": str(catalog)})
    ranker.reconfigure({"rerank_depth": 3, "cross_encoder_weight": 0.4, "popularity_weight": 0.0})
    cands = [{"item_id": i, "retrieval_score": s, "source": "ann"}
             for i, s in zip(ids[2:], [0.9, 0.8, 0.7, 0.6])]
    history = ["i0", "i1"]
    ranked = asyncio.run(ranker.rank(cands, "recommend", None, history))
    # An independent scorer gives the logits the Rank stage must have blended into the top 3.
    scorer = CrossEncoderScorer(str(out), max_length=48, item_max_length=12)
    context = "blue sock | red shoe"   # newest first, as in training
    logits = scorer.score([context] * 3, ["green jacket", "black bottle", "white shoe"])
    expected = [0.6 * s + 0.4 / (1 + np.exp(-x)) for s, x in zip([0.9, 0.8, 0.7], logits)] + [0.6 * 0.6]
    assert [c["rank_score"] for c in ranked] == pytest.approx(expected, rel=1e-5)
    # Other kinds of list, or no history, keep the first pass.
    for kind, hist in (("search", history), ("items", history), ("recommend", None)):
        plain = asyncio.run(ranker.rank(cands, kind, None, hist))
        assert [c["rank_score"] for c in plain] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert ranker.ready()["cross_encoder"] == out.name


def test_int8_cross_encoder_stays_close_to_fp32(served) -> None:
    out, _, _, _ = served
    contexts, items = ["blue sock | red shoe"] * 6, TITLES
    fp32 = CrossEncoderScorer(str(out), max_length=48, item_max_length=12, device="cpu").score(contexts, items)
    int8 = CrossEncoderScorer(str(out), max_length=48, item_max_length=12, quantize="int8").score(contexts, items)
    # A random head gives logits near 0 for every pair, so the bar is absolute: int8 stays within 0.01 of fp32.
    assert np.all(np.isfinite(int8)) and np.abs(int8 - fp32).max() < 0.01, (fp32, int8)
    quantized = CrossEncoderScorer(str(out), max_length=48, item_max_length=12, quantize="int8").model
    assert any("quantized" in type(m).__module__ for m in quantized.modules()), "no Linear was quantised"
    with pytest.raises(ValueError, match="quantize='int8' needs device='cpu'"):
        CrossEncoderScorer(str(out), quantize="int8", device="cuda")


def test_a_wrong_cross_encoder_fails_the_deploy_naming_the_field(recsys_home, served) -> None:
    out, _, _, _ = served
    assert resolve_cross_encoder("latest") == str(out) and resolve_cross_encoder(None) is None
    with pytest.raises(ValueError, match=r"serve args cross_encoder='nope': .*nope"):
        resolve_cross_encoder("nope")
    version, ltr = new_version_dir("rankers")
    write_manifest(ltr, {"kind": "ranker", "type": "recommend_ltr", "version": version})
    with pytest.raises(ValueError, match=r"cross_encoder=.* is a 'recommend_ltr' ranker, not a cross-encoder"):
        resolve_cross_encoder(version)
    assert RankerConfig(rerank_depth=0).rerank_depth == 0
