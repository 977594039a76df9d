"""Diversity rules over a score-sorted candidate list: a per-category cap or MMR. No Ray.

Both take any objects with `category`, `brand` and `score` attributes (serve.rules.Candidate),
so this module needs nothing from rules.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol, TypeVar

from recsys.serve.rules_config import MMRConfig


class Diversifiable(Protocol):
    category: str
    brand: str
    score: float


T = TypeVar("T", bound=Diversifiable)


def cap_per_category(cands: list[T], max_per_category: int) -> list[T]:
    """The first `max_per_category` candidates of each category, order kept.

    Callers sort by score first, so "first" means "best": diversity without reordering. An item with
    no category (blank) is a category of its own: many catalogs leave the field empty, and one shared
    "" bucket would cut every answer on such a catalog to max_per_category items.
    """
    if max_per_category < 1:
        raise ValueError(f"max_per_category must be >= 1, got {max_per_category}")
    seen: Counter[str] = Counter()
    kept = []
    for c in cands:
        category = c.category.strip().casefold()
        if not category:
            kept.append(c)
            continue
        if seen[category] < max_per_category:
            seen[category] += 1
            kept.append(c)
    return kept


def catalog_similarity(a: Diversifiable, b: Diversifiable, cfg: MMRConfig) -> float:
    """Weighted share of catalog facts two items have in common, in [0, 1].

    An empty brand or category matches nothing: two items with unknown brands are not alike.
    """
    same_category = bool(a.category) and a.category == b.category
    same_brand = bool(a.brand) and a.brand.casefold() == b.brand.casefold()
    total = cfg.category_weight + cfg.brand_weight
    return (cfg.category_weight * same_category + cfg.brand_weight * same_brand) / total


def rerank_by_mmr(cands: list[T], cfg: MMRConfig, n: int) -> list[T]:
    """Greedy maximal marginal relevance for the first n positions; the rest follow by score.

    Each step picks the candidate maximising lambda * relevance - (1 - lambda) * max similarity
    to the ones already picked (ties: the better-scored one). Relevance is the score min-max
    scaled to [0, 1] over the candidates, so lambda means the same whatever the ranker's score
    scale (cosine, logits, boosted sums). O(n x len(cands)); nothing is dropped.
    """
    if n < 1 or len(cands) < 2:
        return list(cands)
    low = min(c.score for c in cands)
    spread = max(c.score for c in cands) - low
    relevance = [(c.score - low) / spread if spread > 0 else 1.0 for c in cands]
    lam = cfg.lambda_
    remaining = list(range(len(cands)))   # indices in score order, so ties go to the better score
    max_sim = [0.0] * len(cands)          # each candidate's highest similarity to the picked ones
    picked: list[int] = []
    while remaining and len(picked) < n:
        best = max(remaining, key=lambda i: (lam * relevance[i] - (1 - lam) * max_sim[i], -i))
        remaining.remove(best)
        picked.append(best)
        for i in remaining:
            max_sim[i] = max(max_sim[i], catalog_similarity(cands[i], cands[best], cfg))
    return [cands[i] for i in picked] + [cands[i] for i in remaining]
