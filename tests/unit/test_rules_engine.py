"""The rule engine: each rule type, the order they run in, explanations, dropped counts,
campaign windows at an injected time, and the accounting invariant under random configs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.serve.diversity import catalog_similarity, rerank_by_mmr
from recsys.serve.rules import DROP_KEYS, SOURCE_PIN, Candidate, apply_rules
from recsys.serve.rules_config import MMRConfig, RulesConfig

UTC = timezone.utc
NOW = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)
NO_DROPS = dict.fromkeys(DROP_KEYS, 0)
# Only what each test switches on: the defaults' history/stock/cap rules off.
BARE = {"exclude_history": False, "drop_out_of_stock": False, "max_per_category": None}


def cand(item_id: str, score: float, category: str = "pans", brand: str = "acme", price: float | None = 10.0,
         in_stock: bool = True, group: str = "") -> Candidate:
    return Candidate(item_id=item_id, category=category, in_stock=in_stock, retrieval_score=score,
                     rank_score=score, source="ann", brand=brand, price=price, product_group=group)


def rules(**raw: object) -> RulesConfig:
    return RulesConfig.model_validate({**BARE, **raw})


def run(cands: list[Candidate], k: int = 10, history: list[str] | None = None, now: datetime = NOW,
        lookup=None, **raw: object) -> tuple[list[Candidate], dict[str, int]]:
    return apply_rules(cands, rules(**raw), history, k, now=now, lookup_item=lookup)


def ids(cands: list[Candidate]) -> list[str]:
    return [c.item_id for c in cands]


def by_id(cands: list[Candidate]) -> dict[str, Candidate]:
    return {c.item_id: c for c in cands}


def test_price_range_drops_out_of_range_and_unpriced_items() -> None:
    cands = [cand("cheap", 0.9, price=2.0), cand("mid", 0.8, price=20.0), cand("edge", 0.7, price=50.0),
             cand("dear", 0.6, price=51.0), cand("unpriced", 0.5, price=None)]
    kept, dropped = run(cands, price_range={"min": 5, "max": 50})
    assert ids(kept) == ["mid", "edge"], "bounds are inclusive; no price means no match"
    assert dropped == {**NO_DROPS, "price_range": 3}
    assert all(c.rules_applied == ["filter:price_range"] for c in kept)
    kept, _ = run(cands, price_range={"max": 20})
    assert ids(kept) == ["cheap", "mid"]


def test_blocked_brands_and_categories_ignore_case() -> None:
    cands = [cand("a", 0.9, brand="NoName"), cand("b", 0.8, category="Gift Cards"), cand("c", 0.7),
             cand("d", 0.6, brand="")]
    kept, dropped = run(cands, blocked_brands=["noname"], blocked_categories=["gift cards "])
    assert ids(kept) == ["c", "d"]
    assert dropped == {**NO_DROPS, "blocked_brands": 1, "blocked_categories": 1}
    assert kept[0].rules_applied == ["filter:blocked_brands", "filter:blocked_categories"]


def test_exclude_history_still_drops_seen_items() -> None:
    kept, dropped = run([cand("a", 0.9), cand("b", 0.8)], history=["a"], exclude_history=True)
    assert ids(kept) == ["b"] and dropped["exclude_history"] == 1
    assert kept[0].rules_applied == ["exclude_history"]


def campaign(name: str, start: datetime | None = None, end: datetime | None = None, **rest: object) -> dict:
    return {"name": name, "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None, **rest}


def test_boosts_reorder_and_explain_only_while_active() -> None:
    cands = [cand("a", 0.9), cand("b", 0.5, category="garden"), cand("c", 0.4, brand="Sunny")]
    boosts = [campaign("spring_sale", NOW - timedelta(days=1), NOW + timedelta(days=1), categories=["Garden"],
                       multiply=2.0),
              campaign("sunny_week", NOW, NOW + timedelta(hours=1), brands=["sunny"], add=0.3),
              campaign("old_promo", NOW - timedelta(days=9), NOW - timedelta(days=2), item_ids=["c"], add=5.0)]
    kept, dropped = run(cands, boosts=boosts)
    assert ids(kept) == ["b", "a", "c"], "b: 0.5 x2 = 1.0 beats a; c: 0.4 + 0.3 = 0.7 below a"
    got = by_id(kept)
    assert got["b"].score == pytest.approx(1.0) and got["b"].rank_score == 0.5, "rank_score stays the Ranker's"
    assert got["c"].score == pytest.approx(0.7)
    assert got["b"].rules_applied == ["boost:spring_sale x2"]
    assert got["c"].rules_applied == ["boost:sunny_week +0.3"], "the expired campaign leaves no trace"
    assert got["a"].rules_applied == [] and dropped == NO_DROPS

    # An hour later sunny_week has ended (end is exclusive) and c falls back.
    kept, _ = run(cands, now=NOW + timedelta(hours=1), boosts=boosts)
    assert by_id(kept)["c"].score == pytest.approx(0.4) and by_id(kept)["c"].rules_applied == []
    # Two days later nothing runs: the Ranker's order comes back.
    assert ids(run(cands, now=NOW + timedelta(days=2), boosts=boosts)[0]) == ["a", "b", "c"]


def test_several_campaigns_compose_in_config_order() -> None:
    both = [campaign("x2", item_ids=["a"], multiply=2.0), campaign("plus", categories=["pans"], add=1.0)]
    kept, _ = run([cand("a", 0.5)], boosts=both)
    assert kept[0].score == pytest.approx(2.0) and kept[0].rules_applied == ["boost:x2 x2", "boost:plus +1"]
    kept, _ = run([cand("a", 0.5)], boosts=list(reversed(both)))
    assert kept[0].score == pytest.approx(3.0)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_rules([cand("a", 1.0)], rules(), None, 3, now=datetime(2026, 1, 1))


def test_min_score_applies_after_boosts() -> None:
    cands = [cand("a", 0.9), cand("b", 0.2, category="garden"), cand("c", 0.1)]
    kept, dropped = run(cands, min_score=0.3, boosts=[campaign("g", categories=["garden"], add=0.5)])
    assert ids(kept) == ["a", "b"], "b is only above the bar thanks to its boost"
    assert dropped == {**NO_DROPS, "min_score": 1}
    assert by_id(kept)["b"].rules_applied == ["boost:g +0.5", "filter:min_score>=0.3"]


def test_dedupe_keeps_the_best_scored_item_of_each_group() -> None:
    cands = [cand("a1", 0.5, group="A"), cand("b1", 0.9, group="B"), cand("a2", 0.8, group="A"),
             cand("b2", 0.3, group="B"), cand("solo1", 0.2), cand("solo2", 0.1)]
    kept, dropped = run(cands, dedupe_by_product_group=True)
    assert ids(kept) == ["b1", "a2", "solo1", "solo2"], "an empty group is a group of its own"
    assert dropped == {**NO_DROPS, "dedupe_product_group": 2}
    assert all(c.rules_applied == ["dedupe:product_group"] for c in kept)
    # A boost decides which listing of a group survives: dedupe runs on the boosted score.
    kept, _ = run(cands, dedupe_by_product_group=True, boosts=[campaign("p", item_ids=["a1"], multiply=2.0)])
    assert "a1" in ids(kept) and "a2" not in ids(kept)


def test_mmr_lambda_one_keeps_relevance_order_lower_lambda_interleaves() -> None:
    cands = [cand("p1", 0.90, "pans", "acme"), cand("p2", 0.89, "pans", "acme"), cand("p3", 0.88, "pans", "acme"),
             cand("s1", 0.50, "shoes", "zed"), cand("b1", 0.40, "bags", "acme")]
    kept, dropped = run(cands, mmr={"lambda": 1.0})
    assert ids(kept) == ["p1", "p2", "p3", "s1", "b1"] and dropped == NO_DROPS
    kept, _ = run(cands, k=3, mmr={"lambda": 0.5})
    assert ids(kept) == ["p1", "s1", "p2"], "one pan, then the best unlike item, nothing dropped but the cut"
    assert all(c.rules_applied == ["mmr:lambda=0.5"] for c in kept)
    # Brand alone as similarity: b1 shares acme with p1, s1 does not.
    kept, _ = run(cands, k=2, mmr={"lambda": 0.5, "category_weight": 0, "brand_weight": 1})
    assert ids(kept) == ["p1", "s1"]


def test_mmr_helpers() -> None:
    cfg = MMRConfig.model_validate({"lambda": 0.5, "category_weight": 3, "brand_weight": 1})
    a, b, c = cand("a", 1, "pans", "Acme"), cand("b", 1, "pans", "acme"), cand("c", 1, "shoes", "")
    assert catalog_similarity(a, b, cfg) == 1.0
    assert catalog_similarity(a, c, cfg) == 0.0
    assert catalog_similarity(c, cand("d", 1, "other", ""), cfg) == 0.0, "unknown brands are not alike"
    equal = [cand(str(i), 0.5, "pans") for i in range(4)]
    assert ids(rerank_by_mmr(equal, cfg, 2)) == ["0", "1", "2", "3"], "equal scores: ties keep order"


def test_category_cap_and_mmr_are_exclusive() -> None:
    assert rules(mmr={"lambda": 0.5}).max_per_category is None
    with pytest.raises(ValueError, match="both set"):
        rules(mmr={"lambda": 0.5}, max_per_category=2)


def test_pins_move_candidates_to_their_slots_after_reordering() -> None:
    cands = [cand(x, s) for x, s in (("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5))]
    kept, dropped = run(cands, k=4, pins=[{"item_id": "e", "slot": 1}, {"item_id": "a", "slot": 3}])
    assert ids(kept) == ["e", "b", "a", "c"]
    assert by_id(kept)["e"].rules_applied == ["pin:slot1"] and by_id(kept)["a"].rules_applied == ["pin:slot3"]
    assert dropped == {**NO_DROPS, "truncated_to_k": 1}, "d is cut: the pins took two of the four slots"


def test_pins_that_cannot_apply_do_nothing() -> None:
    cands = [cand("a", 0.9), cand("b", 0.8)]
    kept, _ = run(cands, k=2, pins=[{"item_id": "zz", "slot": 1}, {"item_id": "b", "slot": 5}])
    assert ids(kept) == ["a", "b"], "zz is not a candidate (only_if_candidate), slot 5 is beyond k"
    assert all(c.rules_applied == [] for c in kept)
    kept, _ = run(cands, k=5, pins=[{"item_id": "a", "slot": 4}])
    assert ids(kept) == ["b", "a"], "a slot past the end of a short list moves up"


def catalog_lookup(item_id: str) -> Candidate | None:
    items = {"new": cand("new", 0.0, "gadgets"), "gone": cand("gone", 0.0, in_stock=False)}
    item = items.get(item_id)
    if item is not None:
        item.source = SOURCE_PIN
    return item


def test_pins_of_non_candidates_fetch_from_the_catalog_through_the_filters() -> None:
    pins = [{"item_id": "new", "slot": 1, "only_if_candidate": False},
            {"item_id": "gone", "slot": 2, "only_if_candidate": False},
            {"item_id": "unknown", "slot": 3, "only_if_candidate": False}]
    kept, dropped = run([cand("a", 0.9), cand("b", 0.8)], k=3, lookup=catalog_lookup, pins=pins,
                        drop_out_of_stock=True, boosts=[campaign("g", categories=["gadgets"], add=0.1)])
    assert ids(kept) == ["new", "a", "b"], "out-of-stock 'gone' and uncatalogued 'unknown' are not pinned"
    new = kept[0]
    assert new.source == "pin" and new.rank_score == 0.0 and new.score == pytest.approx(0.1)
    assert new.rules_applied == ["in_stock", "boost:g +0.1", "pin:slot1"]
    assert dropped == NO_DROPS, "fetched items were never candidates: nothing to count"


def test_a_pin_never_brings_back_a_filtered_candidate_but_overrides_soft_rules() -> None:
    cands = [cand("a", 0.9, group="G"), cand("b", 0.8, group="G"), cand("low", 0.01), cand("seen", 0.5)]
    pins = [{"item_id": "seen", "slot": 1, "only_if_candidate": False}, {"item_id": "low", "slot": 2},
            {"item_id": "b", "slot": 3}]
    kept, dropped = run(cands, history=["seen"], lookup=lambda i: cand(i, 0.0), pins=pins,
                        exclude_history=True, min_score=0.1, dedupe_by_product_group=True, max_per_category=1)
    assert ids(kept) == ["low", "b"], "seen stays out; low beats min_score, b wins its group, cap ignores pins"
    assert dropped == {**NO_DROPS, "exclude_history": 1, "dedupe_product_group": 1}, "a lost to pinned b's group"


def test_full_order_of_application_and_explanations() -> None:
    cands = [cand("seen", 0.99), cand("oos", 0.95, in_stock=False), cand("dear", 0.93, price=99.0),
             cand("nn", 0.92, brand="NoName"), cand("gift", 0.91, category="gifts"),
             cand("p1", 0.90, group="P"), cand("p2", 0.89, group="P"), cand("p3", 0.70),
             cand("s1", 0.40, "shoes", "zed"), cand("s2", 0.30, "shoes", "zed"),
             cand("weak", 0.05, "bags"), cand("promo", 0.20, "bags", "sunny")]
    cfg = dict(exclude_history=True, drop_out_of_stock=True, price_range={"max": 50}, blocked_brands=["noname"],
               blocked_categories=["Gifts"], min_score=0.1, dedupe_by_product_group=True, max_per_category=1,
               boosts=[campaign("sunny", NOW, NOW + timedelta(days=7), brands=["Sunny"], multiply=5.0)],
               pins=[{"item_id": "s2", "slot": 1}])
    kept, dropped = run(cands, k=4, history=["seen"], **cfg)
    # filters leave p1 p2 p3 s1 s2 weak promo; promo 0.2 x5 = 1.0 goes first; s2 pinned aside;
    # weak < 0.1 dropped; p2 deduped under p1; cap 1 per category drops p3; 3 free slots: promo p1 s1.
    assert ids(kept) == ["s2", "promo", "p1", "s1"]
    filters = ["exclude_history", "in_stock", "filter:price_range", "filter:blocked_brands",
               "filter:blocked_categories"]
    soft = ["filter:min_score>=0.1", "dedupe:product_group", "category_cap<=1"]
    got = by_id(kept)
    assert got["s2"].rules_applied == [*filters, "pin:slot1"]
    assert got["promo"].rules_applied == [*filters, "boost:sunny x5", *soft]
    assert got["p1"].rules_applied == got["s1"].rules_applied == [*filters, *soft]
    assert dropped == {"exclude_history": 1, "in_stock": 1, "price_range": 1, "blocked_brands": 1,
                       "blocked_categories": 1, "min_score": 1, "dedupe_product_group": 1, "category_cap": 1,
                       "truncated_to_k": 0}
    assert sum(dropped.values()) + len(kept) == len(cands), "every candidate is kept or counted once"


def fetch_any(item_id: str) -> Candidate:
    item = cand(item_id, 0.0, "pans")
    item.source = SOURCE_PIN
    return item


names = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"])


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(st.tuples(names, st.floats(-1, 1), st.sampled_from(["pans", "shoes", "bags"]),
                             st.sampled_from(["acme", "zed", ""]), st.one_of(st.none(), st.floats(0, 100)),
                             st.booleans(), st.sampled_from(["", "G1", "G2"])),
                   max_size=8, unique_by=lambda t: t[0]),
    history=st.lists(names, max_size=3),
    k=st.integers(1, 6),
    pins=st.lists(st.tuples(names, st.integers(1, 6), st.booleans()), max_size=3,
                  unique_by=(lambda t: t[0], lambda t: t[1])),
    diversity=st.sampled_from([{"max_per_category": 1}, {"mmr": {"lambda": 0.4}}, {}]),
    extra=st.fixed_dictionaries({}, optional={
        "price_range": st.just({"min": 10, "max": 80}), "min_score": st.floats(-1, 1),
        "blocked_brands": st.just(["zed"]), "dedupe_by_product_group": st.booleans(),
        "boosts": st.just([{"name": "x", "categories": ["bags"], "multiply": 3.0}])}),
)
def test_every_candidate_is_kept_or_counted(items, history, k, pins, diversity, extra) -> None:
    cands = [cand(i, s, c, b, p, stock, g) for i, s, c, b, p, stock, g in items]
    cfg = {"exclude_history": True, "drop_out_of_stock": True, **diversity, **extra,
           "pins": [{"item_id": i, "slot": s, "only_if_candidate": o} for i, s, o in pins]}
    kept, dropped = run(cands, k=k, history=history, lookup=fetch_any, **cfg)
    from_input = [c for c in kept if c.source == "ann"]
    assert sum(dropped.values()) + len(from_input) == len(cands)
    assert len(kept) <= k and len(set(ids(kept))) == len(kept)
    assert not set(ids(kept)) & set(history), "a seen item is never shown, pinned or not"
    for pin in cfg["pins"]:
        if pin["item_id"] in ids(kept) and pin["slot"] <= k:   # a pin beyond k does nothing
            pos = ids(kept).index(pin["item_id"]) + 1
            assert pos <= pin["slot"] and f"pin:slot{pin['slot']}" in kept[pos - 1].rules_applied
