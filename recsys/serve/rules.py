"""Business-rule re-ranking: pure functions over candidate lists, no Ray.

The Reranker deployment is a thin shell around `apply_rules`; `RulesConfig` (serve/rules_config.py)
arrives through its `user_config`, so rules change on a live service without a redeploy.
Diversity (category cap, MMR) lives in serve/diversity.py.

Every kept item lists the rules that changed or checked it in `rules_applied`, and every dropped
candidate is counted under the rule that dropped it, so nothing leaves a response unaccounted:
len(input) == sum(dropped.values()) + kept items that came from the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from recsys.serve.diversity import cap_per_category, rerank_by_mmr
from recsys.serve.rules_config import BoostCampaign, Pin, RulesConfig

__all__ = ["Candidate", "RulesConfig", "apply_rules", "cap_per_category", "exclude_items",
           "filter_out_of_stock"]

# Keys of the dropped-count dict. The first three rules keep their original explanation labels
# too ("exclude_history", "in_stock", "category_cap<=N"), so existing answers read as before.
RULE_EXCLUDE_HISTORY = "exclude_history"
RULE_IN_STOCK = "in_stock"
RULE_PRICE_RANGE = "price_range"
RULE_BLOCKED_BRANDS = "blocked_brands"
RULE_BLOCKED_CATEGORIES = "blocked_categories"
RULE_MIN_SCORE = "min_score"
RULE_DEDUPE = "dedupe_product_group"
RULE_CATEGORY_CAP = "category_cap"
TRUNCATED = "truncated_to_k"
DROP_KEYS = (RULE_EXCLUDE_HISTORY, RULE_IN_STOCK, RULE_PRICE_RANGE, RULE_BLOCKED_BRANDS,
             RULE_BLOCKED_CATEGORIES, RULE_MIN_SCORE, RULE_DEDUPE, RULE_CATEGORY_CAP, TRUNCATED)

SOURCE_PIN = "pin"  # an item a pin fetched from the catalog: retrieval never proposed it


@dataclass
class Candidate:
    """One item on its way through rank and rerank; feeds schema.ScoredItem / Explanation."""

    item_id: str
    category: str
    in_stock: bool
    retrieval_score: float
    rank_score: float
    source: str  # a candidate source (candidate_sources.SOURCE_NAMES) or "pin"
    brand: str = ""
    price: float | None = None  # None: the catalog has no price for it
    product_group: str = ""     # dedupe key; "" = a group of its own
    # The ordering score: apply_rules sets it to rank_score and then applies the boosts.
    score: float = 0.0
    rules_applied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CandidateFilter:
    """One filter rule: its dropped-count key, its explanation label, and what it keeps."""

    name: str
    label: str
    keep: Callable[[Candidate], bool]


def _folded(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n.strip().casefold() for n in names)


def build_filters(cfg: RulesConfig, history_ids: Iterable[str] | None) -> list[CandidateFilter]:
    """The enabled filters, in the order they run."""
    filters = []
    if cfg.exclude_history:
        seen = frozenset(history_ids or ())
        filters.append(CandidateFilter(RULE_EXCLUDE_HISTORY, RULE_EXCLUDE_HISTORY, lambda c: c.item_id not in seen))
    if cfg.drop_out_of_stock:
        filters.append(CandidateFilter(RULE_IN_STOCK, RULE_IN_STOCK, lambda c: c.in_stock))
    if cfg.price_range is not None:
        low = cfg.price_range.min if cfg.price_range.min is not None else float("-inf")
        high = cfg.price_range.max if cfg.price_range.max is not None else float("inf")
        # An unpriced item cannot be shown to satisfy a price range, so it goes.
        filters.append(CandidateFilter(RULE_PRICE_RANGE, "filter:price_range",
                                       lambda c: c.price is not None and low <= c.price <= high))
    if cfg.blocked_brands:
        brands = _folded(cfg.blocked_brands)
        filters.append(CandidateFilter(RULE_BLOCKED_BRANDS, "filter:blocked_brands",
                                       lambda c: c.brand.strip().casefold() not in brands))
    if cfg.blocked_categories:
        cats = _folded(cfg.blocked_categories)
        filters.append(CandidateFilter(RULE_BLOCKED_CATEGORIES, "filter:blocked_categories",
                                       lambda c: c.category.strip().casefold() not in cats))
    return filters


def exclude_items(cands: list[Candidate], exclude_ids: Iterable[str]) -> list[Candidate]:
    """Candidates whose item_id is not in exclude_ids, order kept."""
    banned = set(exclude_ids)
    return [c for c in cands if c.item_id not in banned]


def filter_out_of_stock(cands: list[Candidate]) -> list[Candidate]:
    """Candidates that are in stock, order kept."""
    return [c for c in cands if c.in_stock]


@dataclass(frozen=True)
class ActiveBoost:
    """A campaign running at request time, its names folded once for matching."""

    campaign: BoostCampaign
    item_ids: frozenset[str]
    categories: frozenset[str]
    brands: frozenset[str]

    @classmethod
    def of(cls, campaign: BoostCampaign) -> ActiveBoost:
        return cls(campaign, frozenset(campaign.item_ids), _folded(campaign.categories), _folded(campaign.brands))

    def matches(self, c: Candidate) -> bool:
        """Covered by id, category or brand (names in any case)."""
        return (c.item_id in self.item_ids or c.category.strip().casefold() in self.categories
                or c.brand.strip().casefold() in self.brands)


def active_boosts(campaigns: list[BoostCampaign], now: datetime) -> list[ActiveBoost]:
    """The campaigns whose [start, end) window holds `now`, in config order."""
    return [ActiveBoost.of(b) for b in campaigns if b.is_active(now)]


def boost_candidate(c: Candidate, boosts: list[ActiveBoost]) -> None:
    """Apply every matching campaign to c.score, in list order, recording each (in place)."""
    for boost in boosts:
        if boost.matches(c):
            b = boost.campaign
            c.score = c.score * b.multiply if b.multiply is not None else c.score + (b.add or 0.0)
            c.rules_applied.append(b.label)


def drop_below_min_score(cands: list[Candidate], min_score: float) -> list[Candidate]:
    """Candidates scoring at least min_score (after boosts), order kept."""
    return [c for c in cands if c.score >= min_score]


def dedupe_by_product_group(cands: list[Candidate], taken_groups: Iterable[str] = ()) -> list[Candidate]:
    """The first (= best-scored: callers sort first) candidate of each product group, order kept.

    Groups in `taken_groups` (those of pinned items) keep none: the pin already shows the product.
    An empty product_group makes the item a group of its own.
    """
    seen = set(taken_groups)
    kept = []
    for c in cands:
        group = c.product_group or f"item:{c.item_id}"
        if group not in seen:
            seen.add(group)
            kept.append(c)
    return kept


def take_pinned(cands: list[Candidate], pins: list[Pin], k: int, passes_filters: Callable[[Candidate], bool],
                lookup_item: Callable[[str], Candidate | None]) -> tuple[list[Candidate], list[tuple[Pin, Candidate]]]:
    """Pull the pinned items out of the (filtered, boosted) candidates: (the rest, [(pin, item)]).

    A pin beyond k, or for a non-candidate when only_if_candidate, does nothing. A non-candidate is
    fetched with lookup_item and must pass the same filters: a pin never shows an out-of-stock,
    blocked or already-bought item. A candidate the filters dropped is not fetched back either.
    """
    by_id: dict[str, Candidate] = {}
    for c in cands:
        by_id.setdefault(c.item_id, c)   # a repeated id: the better-scored copy is the one pinned
    pinned: list[tuple[Pin, Candidate]] = []
    for pin in sorted(pins, key=lambda p: p.slot):
        if pin.slot > k:
            continue
        item = by_id.pop(pin.item_id, None)
        if item is None and not pin.only_if_candidate:
            fetched = lookup_item(pin.item_id)
            if fetched is not None and passes_filters(fetched):
                item = fetched
        if item is not None:
            item.rules_applied.append(f"pin:slot{pin.slot}")
            pinned.append((pin, item))
    taken = {id(c) for _, c in pinned}
    return [c for c in cands if id(c) not in taken], pinned


def place_pinned(ranked: list[Candidate], pinned: list[tuple[Pin, Candidate]]) -> list[Candidate]:
    """Insert pinned items at their slots; a slot past the end of a short list moves up to it."""
    out = list(ranked)
    for pin, item in sorted(pinned, key=lambda pair: pair[0].slot):
        out.insert(min(pin.slot - 1, len(out)), item)
    return out


def apply_rules(
    cands: list[Candidate],
    cfg: RulesConfig,
    history_ids: Iterable[str] | None,
    k: int,
    now: datetime | None = None,
    lookup_item: Callable[[str], Candidate | None] | None = None,
) -> tuple[list[Candidate], dict[str, int]]:
    """Sort by rank_score (desc), apply the configured rules, keep the top k.

    Order, and why:
      1. filters: exclude_history, in_stock, price_range, blocked_brands, blocked_categories --
         hard constraints first, so dropped items use up no slot, group or category quota;
      2. boosts of the campaigns active at `now` (timezone-aware; None = the current UTC time),
         then a stable re-sort by the boosted score;
      3. pins taken aside: they went through 1-2 but skip 4-6 and the cut to k, being the
         merchandiser's explicit choice; their slots are reserved;
      4. min_score on the boosted score;  5. dedupe by product group (best score wins);
      6. diversity: category cap (drops) or MMR (reorders);
      7. cut to k minus the pins;  8. pins placed at their slots, after all reordering.
    Works on copies (inputs untouched). `lookup_item` fetches a pinned item that is not a candidate
    (pins with only_if_candidate: false). Returns (kept, dropped) where dropped maps every key in
    DROP_KEYS to a count (0 for a rule that is off).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    now = now if now is not None else datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (campaign windows are), got {now.isoformat()}")
    # sorted() is stable: equal scores keep the upstream (retrieval) order.
    current = sorted((dataclasses.replace(c, rules_applied=list(c.rules_applied), score=c.rank_score)
                      for c in cands), key=lambda c: -c.rank_score)
    dropped = dict.fromkeys(DROP_KEYS, 0)

    filters = build_filters(cfg, history_ids)
    for f in filters:
        before = len(current)
        current = [c for c in current if f.keep(c)]
        dropped[f.name] = before - len(current)
        for c in current:
            c.rules_applied.append(f.label)

    boosts = active_boosts(cfg.boosts, now)
    if boosts:
        for c in current:
            boost_candidate(c, boosts)
        current.sort(key=lambda c: -c.score)

    def fetch_pinned(item_id: str) -> Candidate | None:
        # A fetched item goes through the same filters and boosts as a candidate would have.
        item = lookup_item(item_id) if lookup_item is not None else None
        if item is None:
            return None
        item = dataclasses.replace(item, rules_applied=list(item.rules_applied), score=item.rank_score)
        item.rules_applied.extend(f.label for f in filters)
        boost_candidate(item, boosts)
        return item

    current, pinned = take_pinned(current, cfg.pins, k, lambda c: all(f.keep(c) for f in filters), fetch_pinned)

    if cfg.min_score is not None:
        before = len(current)
        current = drop_below_min_score(current, cfg.min_score)
        dropped[RULE_MIN_SCORE] = before - len(current)
        for c in current:
            c.rules_applied.append(f"filter:min_score>={cfg.min_score:g}")
    if cfg.dedupe_by_product_group:
        before = len(current)
        current = dedupe_by_product_group(current, [c.product_group for _, c in pinned if c.product_group])
        dropped[RULE_DEDUPE] = before - len(current)
        for c in current:
            c.rules_applied.append("dedupe:product_group")

    free_slots = k - len(pinned)
    if cfg.max_per_category is not None:
        before = len(current)
        current = cap_per_category(current, cfg.max_per_category)
        dropped[RULE_CATEGORY_CAP] = before - len(current)
        for c in current:
            c.rules_applied.append(f"{RULE_CATEGORY_CAP}<={cfg.max_per_category}")
    elif cfg.mmr is not None:
        current = rerank_by_mmr(current, cfg.mmr, free_slots)
        for c in current[:free_slots]:
            c.rules_applied.append(f"mmr:lambda={cfg.mmr.lambda_:g}")

    dropped[TRUNCATED] = max(0, len(current) - free_slots)
    return place_pinned(current[:free_slots], pinned), dropped
