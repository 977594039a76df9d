"""Business-rule re-ranking: pure functions over candidate lists, no Ray.

The Reranker deployment is a thin shell around `apply_rules`; `RulesConfig` arrives through
its `user_config`, so rules can be changed on a live service without a redeploy.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

# Names recorded on each kept candidate and used as keys of the dropped-count dict.
RULE_EXCLUDE_HISTORY = "exclude_history"
RULE_IN_STOCK = "in_stock"
RULE_CATEGORY_CAP = "category_cap"
TRUNCATED = "truncated_to_k"


class RulesConfig(BaseModel, extra="forbid"):
    """Which business rules the Reranker applies, in this order."""

    exclude_history: bool = Field(
        default=True, description="Drop items the user already interacted with (request history)."
    )
    drop_out_of_stock: bool = Field(
        default=True, description="Drop items whose catalog row says in_stock = false."
    )
    max_per_category: int | None = Field(
        default=3, ge=1,
        description="Keep at most this many items per category (highest ranked first); null = no cap.",
    )


@dataclass
class Candidate:
    """One item on its way through rank and rerank; feeds schema.Explanation."""

    item_id: str
    category: str
    in_stock: bool
    retrieval_score: float
    rank_score: float
    source: str  # "ann" or "popular"
    rules_applied: list[str] = field(default_factory=list)


def exclude_items(cands: list[Candidate], exclude_ids: Iterable[str]) -> list[Candidate]:
    """Candidates whose item_id is not in exclude_ids, order kept."""
    banned = set(exclude_ids)
    return [c for c in cands if c.item_id not in banned]


def filter_out_of_stock(cands: list[Candidate]) -> list[Candidate]:
    """Candidates that are in stock, order kept."""
    return [c for c in cands if c.in_stock]


def cap_per_category(cands: list[Candidate], max_per_category: int) -> list[Candidate]:
    """The first `max_per_category` candidates of each category, order kept.

    Callers sort by score first, so "first" means "best": diversity without reordering.
    """
    if max_per_category < 1:
        raise ValueError(f"max_per_category must be >= 1, got {max_per_category}")
    seen: Counter[str] = Counter()
    kept = []
    for c in cands:
        if seen[c.category] < max_per_category:
            seen[c.category] += 1
            kept.append(c)
    return kept


def apply_rules(
    cands: list[Candidate],
    cfg: RulesConfig,
    history_ids: Iterable[str] | None,
    k: int,
) -> tuple[list[Candidate], dict[str, int]]:
    """Sort by rank_score (desc), apply the enabled rules, keep the top k.

    Order: exclude_history -> in_stock -> category_cap -> truncate to k. The cap runs after
    the filters so dropped items do not use up a category's slots. Each kept candidate gets
    the names of the rules it passed appended to `rules_applied` (on copies: the input list
    and its candidates are left untouched). Returns (kept, dropped) where dropped maps
    "exclude_history", "in_stock", "category_cap" and "truncated_to_k" to counts (0 for a
    disabled rule), so nothing disappears from a response unaccounted.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # sorted() is stable: equal scores keep the upstream (retrieval) order.
    current = sorted(
        (dataclasses.replace(c, rules_applied=list(c.rules_applied)) for c in cands),
        key=lambda c: -c.rank_score,
    )
    dropped = {RULE_EXCLUDE_HISTORY: 0, RULE_IN_STOCK: 0, RULE_CATEGORY_CAP: 0, TRUNCATED: 0}
    passed: list[str] = []

    if cfg.exclude_history:
        before = len(current)
        current = exclude_items(current, history_ids or ())
        dropped[RULE_EXCLUDE_HISTORY] = before - len(current)
        passed.append(RULE_EXCLUDE_HISTORY)
    if cfg.drop_out_of_stock:
        before = len(current)
        current = filter_out_of_stock(current)
        dropped[RULE_IN_STOCK] = before - len(current)
        passed.append(RULE_IN_STOCK)
    if cfg.max_per_category is not None:
        before = len(current)
        current = cap_per_category(current, cfg.max_per_category)
        dropped[RULE_CATEGORY_CAP] = before - len(current)
        passed.append(f"{RULE_CATEGORY_CAP}<={cfg.max_per_category}")

    dropped[TRUNCATED] = max(0, len(current) - k)
    kept = current[:k]
    for c in kept:
        c.rules_applied.extend(passed)
    return kept, dropped
