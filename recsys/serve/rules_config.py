"""The Reranker's business rules as a declarative config: its Serve `user_config`. No Ray.

Everything is validated here (`extra="forbid"`), so a typo or a bad value fails `serve deploy`
with a message naming the field and the value instead of going live. Three rules are on by
default (exclude_history, drop_out_of_stock, max_per_category=3, where an item without a category
counts as a category of its own); the shipped serve_configs also turn dedupe_by_product_group on.
serve/rules.py applies the rules; it documents the order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from recsys.schema import MAX_K


class _RuleModel(BaseModel):
    # populate_by_name: MMRConfig's `lambda` is a Python keyword, so its attribute is lambda_.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# A brand, category or item id in a rule: an empty one is almost surely a YAML slip.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class PriceRange(_RuleModel):
    """Keep items whose catalog price lies in [min, max] (inclusive)."""

    min: float | None = Field(default=None, ge=0, description="Lowest price kept; null = no lower bound.")
    max: float | None = Field(default=None, ge=0, description="Highest price kept; null = no upper bound.")

    @field_validator("max")
    @classmethod
    def _max_not_below_min(cls, v: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min")
        if v is not None and low is not None and v < low:
            raise ValueError(f"max={v} is below min={low}")
        return v

    @model_validator(mode="after")
    def _some_bound(self) -> PriceRange:
        if self.min is None and self.max is None:
            raise ValueError("price_range needs min, max or both (set price_range: null to switch it off)")
        return self


class BoostCampaign(_RuleModel):
    """A promotion: items matching any of item_ids / categories / brands get their score changed
    while the campaign runs."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Shown in explanations as boost:<name>; letters, digits, _ . -")
    item_ids: list[Name] = Field(default_factory=list, description="Exact item ids the campaign covers.")
    categories: list[Name] = Field(default_factory=list, description="Categories it covers (any case).")
    brands: list[Name] = Field(default_factory=list, description="Brands it covers (any case).")
    start: AwareDatetime | None = Field(
        default=None, description="ISO datetime with a timezone, e.g. '2026-03-01T00:00:00Z'; active "
                                  "from this instant on; null = since ever. Quote it in YAML.")
    end: AwareDatetime | None = Field(
        default=None, description="Active until just before this instant (same format); null = open-ended.")
    # > 0: a zero or negative multiplier would flip the order; hiding items is a filter's job.
    multiply: float | None = Field(default=None, gt=0, description="Score x this (e.g. 1.5).")
    add: float | None = Field(default=None, description="Score + this (e.g. 0.2; negative demotes).")

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if v is not None and start is not None and v <= start:
            raise ValueError(f"end={v.isoformat()} is not after start={start.isoformat()}")
        return v

    @model_validator(mode="after")
    def _one_effect_some_target(self) -> BoostCampaign:
        if (self.multiply is None) == (self.add is None):
            raise ValueError(f"campaign {self.name!r}: give exactly one of multiply or add, got "
                             f"multiply={self.multiply}, add={self.add}")
        if not (self.item_ids or self.categories or self.brands):
            raise ValueError(f"campaign {self.name!r} applies to nothing: give item_ids, categories "
                             f"and/or brands")
        return self

    def is_active(self, now: datetime) -> bool:
        """start <= now < end, an open end always satisfied."""
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)

    @property
    def label(self) -> str:
        """What an explanation records, e.g. 'boost:spring_sale x1.5' or 'boost:clearance -0.1'."""
        return f"boost:{self.name} x{self.multiply:g}" if self.multiply is not None else \
            f"boost:{self.name} {self.add:+g}"


class Pin(_RuleModel):
    """Put one item at a fixed position of the answer, after all reordering."""

    item_id: Name
    slot: int = Field(ge=1, le=MAX_K, description="1-based position; a pin beyond the request's k is ignored.")
    only_if_candidate: bool = Field(
        default=True, description="true: pin only when retrieval found the item for this request; "
                                  "false: otherwise fetch it from the catalog (source 'pin').")


class MMRConfig(_RuleModel):
    """Maximal marginal relevance: each next slot goes to the item maximising
    lambda * relevance - (1 - lambda) * (its highest similarity to the items already chosen)."""

    lambda_: float = Field(alias="lambda", ge=0, le=1,
                           description="1 = pure relevance (no reordering), 0 = pure diversity.")
    # Similarity from catalog facts, not embeddings: the Reranker holds no vectors, and for
    # "not ten pans in a row" same-category / same-brand is the similarity shoppers notice.
    category_weight: float = Field(default=0.5, ge=0, description="Weight of same category in similarity.")
    brand_weight: float = Field(default=0.5, ge=0, description="Weight of same brand in similarity.")

    @model_validator(mode="after")
    def _some_similarity(self) -> MMRConfig:
        if self.category_weight + self.brand_weight <= 0:
            raise ValueError("mmr needs category_weight or brand_weight above 0, got both 0")
        return self


class RulesConfig(_RuleModel):
    """Which business rules the Reranker applies (order: see serve/rules.py apply_rules)."""

    exclude_history: bool = Field(
        default=True, description="Drop items the user already interacted with (request history).")
    drop_out_of_stock: bool = Field(
        default=True, description="Drop items whose catalog row says in_stock = false.")
    price_range: PriceRange | None = Field(
        default=None, description="Keep only items priced within; items without a price are dropped. "
                                  "null = off.")
    blocked_brands: list[Name] = Field(default_factory=list, description="Drop items of these brands (any case).")
    blocked_categories: list[Name] = Field(
        default_factory=list, description="Drop items of these categories (any case).")
    boosts: list[BoostCampaign] = Field(
        default_factory=list, description="Promotion campaigns; several matching one item apply in list order.")
    min_score: float | None = Field(
        default=None, description="Drop candidates whose score after boosts is below this; null = off.")
    dedupe_by_product_group: bool = Field(
        default=False, description="Keep only the best-scored item of each product group (catalog "
                                   "product_group column, else the normalised title), so one answer never lists "
                                   "the same product twice under two ids. Off here, on in every shipped config.")
    max_per_category: int | None = Field(
        default=3, ge=1,
        description="Keep at most this many items per category (highest ranked first); null = no cap. "
                    "Gives way to mmr when mmr is set and this is not.")
    mmr: MMRConfig | None = Field(default=None, description="Diversify by MMR instead of the category cap.")
    pins: list[Pin] = Field(default_factory=list, description="Items at fixed slots, placed last.")

    @model_validator(mode="before")
    @classmethod
    def _one_diversity_rule(cls, raw: Any) -> Any:
        # Done on the raw mapping: only there can we tell a written max_per_category from the default.
        if isinstance(raw, dict) and raw.get("mmr") is not None:
            if raw.get("max_per_category") is not None:
                raise ValueError(f"max_per_category={raw['max_per_category']!r} and mmr are both set: diversity "
                                 f"is one or the other (set max_per_category: null to use mmr)")
            raw = {**raw, "max_per_category": None}
        return raw

    @field_validator("boosts")
    @classmethod
    def _unique_campaign_names(cls, v: list[BoostCampaign]) -> list[BoostCampaign]:
        names = [b.name for b in v]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"campaign names must be unique (they label explanations): {repeated} repeat")
        return v

    @field_validator("pins")
    @classmethod
    def _unique_pins(cls, v: list[Pin]) -> list[Pin]:
        slots = [p.slot for p in v]
        items = [p.item_id for p in v]
        for what, repeated in (("slot", sorted({s for s in slots if slots.count(s) > 1})),
                               ("item_id", sorted({i for i in items if items.count(i) > 1}))):
            if repeated:
                raise ValueError(f"two pins share {what} {repeated}: one item per slot, one slot per item")
        return v
