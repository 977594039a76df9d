"""Storefront choices the Ingress makes around the stages: which candidates a cart, an item page or
a promotions slot hands to the Ranker. Pure functions, no Ray.

Candidates are the dicts the Ranker reads ({item_id, retrieval_score, source}, optionally
rules_applied: labels of what was done here, which the Reranker's explanation keeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from recsys.serve.catalog import CatalogLookup
from recsys.serve.rules import ActiveBoost
from recsys.serve.rules_config import BoostCampaign

# How far a cart complement from one of the cart's own categories is pushed down, in cosine
# units of the retrieval score. Embedding neighbours of a cart are mostly substitutes (another
# skillet for a skillet); complements (a spatula, oil) tend to sit in other categories. Measured
# on the MiniLM test catalog, a cart's same-category neighbours score 0.61-0.83 and the nearest
# other-category items 0.34-0.40, so 0.5 lifts most related other-category items above the
# substitutes while a much closer same-category item can still show. 0 turns the preference
# off; 2 (the whole cosine range) makes it strict: other categories always first.
DEFAULT_SAME_CATEGORY_PENALTY = 0.5


def to_candidates(retrieved: Iterable[tuple[str, float]], source: str,
                  exclude: Iterable[str] = ()) -> tuple[list[dict[str, Any]], int]:
    """(item_id, score) pairs -> Ranker candidates, leaving out `exclude` (e.g. items the user
    bought); returns (candidates, how many were left out)."""
    banned = set(exclude)
    cands, left_out = [], 0
    for item_id, score in retrieved:
        if item_id in banned:
            left_out += 1
            continue
        cands.append({"item_id": item_id, "retrieval_score": float(score), "source": source})
    return cands, left_out


def prefer_other_categories(cands: list[dict[str, Any]], cart_categories: Iterable[str],
                            category_of: Callable[[str], str], penalty: float) -> list[dict[str, Any]]:
    """Cart complements: candidates in one of the cart's categories lose `penalty` from their
    retrieval score (and say so in rules_applied); others are unchanged. Copies, order kept.

    A penalty rather than a filter: a narrow catalog (or a cart spanning every category) must
    still fill the answer, and an accessory filed under the cart's own category is still a
    good complement when it is much closer than anything else.
    """
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0, got {penalty}")
    cats = {c for c in cart_categories if c}
    label = f"cart:same_category-{penalty:g}"
    out = []
    for c in cands:
        if penalty > 0 and category_of(c["item_id"]) in cats:
            c = {**c, "retrieval_score": c["retrieval_score"] - penalty,
                 "rules_applied": [*c.get("rules_applied", ()), label]}
        out.append(c)
    return out


def items_of_campaigns(campaigns: Sequence[BoostCampaign], catalog: CatalogLookup) -> dict[str, list[str]]:
    """Campaign name -> the catalog items it covers (by id, category or brand, names in any case),
    its own item_ids first, then catalog order. Ids the catalog lacks are left out: they cannot
    be shown."""
    out = {}
    for campaign in campaigns:
        boost = ActiveBoost.of(campaign)
        by_id = [i for i in campaign.item_ids if catalog.known(i)]
        by_facts = [i for i in catalog.titles if i not in boost.item_ids and (
            catalog.category(i).strip().casefold() in boost.categories
            or catalog.brand(i).strip().casefold() in boost.brands)]
        out[campaign.name] = list(dict.fromkeys(by_id + by_facts))
    return out


def active_promoted_items(campaigns: Sequence[BoostCampaign], campaign_items: Mapping[str, Sequence[str]],
                          now: datetime) -> list[str]:
    """Items of the campaigns whose window holds `now`, in config order, each once."""
    seen: dict[str, None] = {}
    for campaign in campaigns:
        if campaign.is_active(now):
            seen.update(dict.fromkeys(campaign_items.get(campaign.name, ())))
    return list(seen)


def promotion_pool(promoted: Iterable[str], popularity: Mapping[str, int], limit: int) -> list[str]:
    """The promoted items worth scoring for a user: at most `limit`, most popular first (ties by
    id, so every replica picks the same). A category-wide campaign can cover thousands of items;
    scoring them all per request would cost more than the slot is worth."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return sorted(dict.fromkeys(promoted), key=lambda i: (-popularity.get(i, 0), i))[:limit]


def promotion_candidates(pool: Sequence[str], scored: Sequence[tuple[str, float]] | None,
                         exclude: Iterable[str] = ()) -> tuple[list[dict[str, Any]], int]:
    """Ranker candidates for the promotions slot; returns (candidates, how many `exclude` left out).

    With `scored` (the user's retrieval score of each pool item the index holds) those items come
    as "ann" candidates and the rest of the pool as "popular" ones at score 0, so the Ranker's
    popularity term orders them. Without it (no history) the whole pool is "popular".
    """
    scored = list(scored or [])
    known = {item for item, _ in scored}
    ann, left_ann = to_candidates(scored, "ann", exclude)
    rest, left_rest = to_candidates(((i, 0.0) for i in pool if i not in known), "popular", exclude)
    return ann + rest, left_ann + left_rest
