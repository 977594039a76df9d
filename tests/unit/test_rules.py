"""Business rules: order of application, category caps, dropped counts, explanations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.serve.rules import (
    DROP_KEYS,
    Candidate,
    RulesConfig,
    apply_rules,
    cap_per_category,
    exclude_items,
    filter_out_of_stock,
)


def cand(item_id: str, category: str, score: float, in_stock: bool = True) -> Candidate:
    return Candidate(item_id=item_id, category=category, in_stock=in_stock,
                     retrieval_score=score, rank_score=score, source="ann")


def ids(cands: list[Candidate]) -> list[str]:
    return [c.item_id for c in cands]


NO_DROPS = dict.fromkeys(DROP_KEYS, 0)

CANDS = [
    cand("a", "shoes", 0.5),
    cand("b", "shoes", 0.9),
    cand("c", "hats", 0.8, in_stock=False),
    cand("d", "shoes", 0.7),
    cand("e", "shoes", 0.6),
    cand("f", "hats", 0.4),
    cand("g", "bags", 0.3),
]


def test_single_rules_keep_order() -> None:
    assert ids(exclude_items(CANDS, {"b", "zzz"})) == ["a", "c", "d", "e", "f", "g"]
    assert ids(filter_out_of_stock(CANDS)) == ["a", "b", "d", "e", "f", "g"]
    assert ids(cap_per_category(CANDS, 2)) == ["a", "b", "c", "f", "g"]
    with pytest.raises(ValueError):
        cap_per_category(CANDS, 0)


def test_apply_rules_order_counts_and_labels() -> None:
    cfg = RulesConfig(max_per_category=2)
    kept, dropped = apply_rules(CANDS, cfg, history_ids=["d"], k=10)
    # Sorted: b .9, c .8, d .7, e .6, a .5, f .4, g .3 -> drop d (history), c (stock),
    # then shoes b, e kept and a capped.
    assert ids(kept) == ["b", "e", "f", "g"]
    assert dropped == {**NO_DROPS, "exclude_history": 1, "in_stock": 1, "category_cap": 1}
    assert all(c.rules_applied == ["exclude_history", "in_stock", "category_cap<=2"] for c in kept)


def test_cap_runs_after_filters_and_truncation_counts() -> None:
    # Had the cap run first, excluded "b" and "d" would have used up the shoes slots.
    kept, dropped = apply_rules(CANDS, RulesConfig(max_per_category=2), history_ids={"b", "d"}, k=2)
    assert ids(kept) == ["e", "a"]
    assert dropped["truncated_to_k"] == 2  # f, g


def test_disabled_rules_do_nothing_and_are_not_recorded() -> None:
    cfg = RulesConfig(exclude_history=False, drop_out_of_stock=False, max_per_category=None)
    kept, dropped = apply_rules(CANDS, cfg, history_ids=["b"], k=3)
    assert ids(kept) == ["b", "c", "d"]
    assert dropped == {**NO_DROPS, "truncated_to_k": 4}
    assert all(c.rules_applied == [] for c in kept)


def test_inputs_are_not_mutated() -> None:
    before = [c.item_id for c in CANDS]
    kept, _ = apply_rules(CANDS, RulesConfig(), history_ids=None, k=5)
    assert [c.item_id for c in CANDS] == before
    assert all(c.rules_applied == [] for c in CANDS)
    assert kept[0] is not CANDS[1]


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        RulesConfig(max_per_category=0)
    with pytest.raises(ValidationError):
        RulesConfig(unknown=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="k must be"):
        apply_rules(CANDS, RulesConfig(), None, k=0)


def test_items_without_a_category_are_each_a_category_of_their_own() -> None:
    # A catalog without categories (Home Depot's has none) must still fill k slots under the cap.
    bare = [cand(f"x{i}", "", 1.0 - i / 100) for i in range(12)] + [cand("s", " ", 0.01)]
    assert ids(cap_per_category(bare, 3)) == ids(bare)
    kept, dropped = apply_rules(bare, RulesConfig(), history_ids=[], k=10)
    assert len(kept) == 10 and dropped["category_cap"] == 0
    # named categories are capped whatever their case or padding
    named = [cand("a", "Shoes", 0.9), cand("b", "shoes ", 0.8), cand("c", "SHOES", 0.7), cand("d", "", 0.6)]
    assert ids(cap_per_category(named, 2)) == ["a", "b", "d"]
