"""Storefront choices around the stages: cart complements, promotions, item vectors. No Ray."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import faiss
import numpy as np
import pytest

from recsys.serve.catalog import CatalogLookup
from recsys.serve.item_vectors import ItemVectors, VectorsUnavailable
from recsys.serve.rules_config import BoostCampaign, RulesConfig
from recsys.serve.storefront import (
    active_promoted_items,
    items_of_campaigns,
    prefer_other_categories,
    promotion_candidates,
    promotion_pool,
    to_candidates,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def catalog() -> CatalogLookup:
    items = {"pan": ("cookware", "Acme"), "wok": ("cookware", "Globex"), "spatula": ("utensils", "Acme"),
             "oil": ("pantry", "Initech"), "boot": ("footwear", "globex")}
    return CatalogLookup(titles={i: i.title() for i in items}, categories={i: c for i, (c, _) in items.items()},
                         in_stock=dict.fromkeys(items, True), brands={i: b for i, (_, b) in items.items()})


def test_to_candidates_leaves_out_and_counts_excluded() -> None:
    cands, left_out = to_candidates([("a", 0.9), ("b", 0.5), ("c", 0.1)], "ann", exclude={"b"})
    assert cands == [{"item_id": "a", "retrieval_score": 0.9, "source": "ann"},
                     {"item_id": "c", "retrieval_score": 0.1, "source": "ann"}]
    assert left_out == 1


def test_cart_same_category_items_are_penalised_and_labelled() -> None:
    cat = catalog()
    cands, _ = to_candidates([("wok", 0.8), ("spatula", 0.5), ("oil", 0.3)], "ann")
    out = prefer_other_categories(cands, {"cookware"}, cat.category, penalty=0.5)
    assert [round(c["retrieval_score"], 6) for c in out] == [0.3, 0.5, 0.3]
    assert out[0]["rules_applied"] == ["cart:same_category-0.5"]
    assert "rules_applied" not in out[1], "other categories are untouched"
    assert cands[0]["retrieval_score"] == 0.8, "inputs are not modified"
    # 2 = the whole cosine range: other categories always first; 0 = plain similarity
    strict = prefer_other_categories(cands, {"cookware"}, cat.category, penalty=2.0)
    assert max(c["retrieval_score"] for c in strict if c["item_id"] == "wok") < -1
    assert prefer_other_categories(cands, {"cookware"}, cat.category, penalty=0) == cands
    # an unknown cart item has category "", which must not match every uncategorised candidate
    assert prefer_other_categories(cands, {""}, lambda _: "", penalty=0.5) == cands
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        prefer_other_categories(cands, set(), cat.category, penalty=-1)


def test_campaign_items_by_id_category_and_brand_in_any_case() -> None:
    campaigns = [BoostCampaign(name="pans", item_ids=["oil", "ghost"], categories=["COOKWARE"], add=0.1),
                 BoostCampaign(name="globex", brands=["Globex"], multiply=1.5)]
    items = items_of_campaigns(campaigns, catalog())
    assert items == {"pans": ["oil", "pan", "wok"], "globex": ["wok", "boot"]}, "own ids first, unknown left out"


def test_only_active_campaigns_promote_each_item_once() -> None:
    campaigns = [BoostCampaign(name="now", item_ids=["a", "b"], add=0.1, start=NOW - timedelta(days=1)),
                 BoostCampaign(name="later", item_ids=["c"], add=0.1, start=NOW + timedelta(days=1)),
                 BoostCampaign(name="over", item_ids=["d"], add=0.1, end=NOW),
                 BoostCampaign(name="also", item_ids=["b", "e"], add=0.1)]
    items = {c.name: c.item_ids for c in campaigns}
    assert active_promoted_items(campaigns, items, NOW) == ["a", "b", "e"]
    assert active_promoted_items([], items, NOW) == []


def test_promotion_pool_keeps_the_most_popular() -> None:
    assert promotion_pool(["a", "b", "c", "b"], {"b": 5, "c": 5, "a": 1}, limit=2) == ["b", "c"]
    assert promotion_pool(["z", "y"], {}, limit=10) == ["y", "z"], "ties by id: same on every replica"
    with pytest.raises(ValueError, match="limit must be >= 1"):
        promotion_pool(["a"], {}, limit=0)


def test_promotion_candidates_scored_first_then_unscored_by_popularity() -> None:
    cands, left_out = promotion_candidates(["a", "b", "c", "d"], [("c", 0.7), ("a", 0.2)], exclude={"d"})
    assert [(c["item_id"], c["source"], c["retrieval_score"]) for c in cands] == [
        ("c", "ann", 0.7), ("a", "ann", 0.2), ("b", "popular", 0.0)]
    assert left_out == 1
    cands, _ = promotion_candidates(["a", "b"], None)
    assert [(c["item_id"], c["source"]) for c in cands] == [("a", "popular"), ("b", "popular")]


def unit_rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_item_vectors_read_back_from_the_index(factory: str) -> None:
    vecs = unit_rows(64)
    index = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vecs)
    index.add(vecs)
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = 4   # exhaustive: the nearest must be exact
    iv = ItemVectors(index, [f"i{n}" for n in range(64)])
    found, got = iv.vectors(["i3", "nope", "i7"])
    assert found == ["i3", "i7"] and np.allclose(got, vecs[[3, 7]], atol=1e-6)
    nearest = iv.search(vecs[3], k=5, exclude=["i3"])
    assert len(nearest) == 5 and "i3" not in dict(nearest)
    assert nearest[0][0] == f"i{int(np.argsort(-(vecs @ vecs[3]))[1])}", "the best other item comes first"
    centre = iv.mean_direction(["i1", "i2", "nope"])
    expected = vecs[1] + vecs[2]
    assert np.allclose(centre, expected / np.linalg.norm(expected), atol=1e-5)
    assert iv.mean_direction(["nope"]) is None
    assert iv.score(vecs[0], ["i0", "i5"])[0] == ("i0", pytest.approx(1.0, abs=1e-5))


def test_item_vectors_say_when_the_index_cannot_give_them_back() -> None:
    index = faiss.IndexIDMap(faiss.IndexFlatIP(8))   # an id map over a flat index: no reconstruct
    index.add_with_ids(unit_rows(300), np.arange(300))
    iv = ItemVectors(index, [str(n) for n in range(300)])
    assert not iv.available
    with pytest.raises(VectorsUnavailable, match="cannot give back item vectors"):
        iv.vectors(["1"])
    with pytest.raises(ValueError, match="2 item ids for an index of 300"):
        ItemVectors(index, ["a", "b"])


def test_reranker_keeps_an_upstream_label_first() -> None:
    from recsys.serve.rerank import rerank_candidates

    cands, _ = to_candidates([("wok", 0.8), ("oil", 0.4)], "ann")
    cands = prefer_other_categories(cands, {"cookware"}, catalog().category, penalty=0.5)
    ranked = [{**c, "rank_score": c["retrieval_score"]} for c in cands]
    out = rerank_candidates(ranked, ["pan"], 2, RulesConfig(), catalog(), NOW)
    by_id = {i["item_id"]: i["explanation"]["rules_applied"] for i in out["items"]}
    assert by_id["wok"][0] == "cart:same_category-0.5" and "in_stock" in by_id["wok"]
    assert by_id["oil"][0] == "exclude_history"
