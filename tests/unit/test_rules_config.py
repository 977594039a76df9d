"""The declarative rules config: defaults, validation errors that name field and value, and
the commented examples in serve_configs/*.yaml staying valid."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from recsys.serve.colocated import stage_user_config
from recsys.serve.rerank import parse_rules_config
from recsys.serve.rules_config import BoostCampaign, RulesConfig

REPO = Path(__file__).resolve().parents[2]
UTC = timezone.utc


def campaign(**overrides: object) -> dict:
    return {"name": "spring_sale", "categories": ["Garden"], "start": "2026-03-20T00:00:00Z",
            "end": "2026-04-10T00:00:00+00:00", "multiply": 1.5, **overrides}


def test_defaults_are_the_three_original_rules() -> None:
    cfg = parse_rules_config(None)
    assert (cfg.exclude_history, cfg.drop_out_of_stock, cfg.max_per_category) == (True, True, 3)
    assert cfg.price_range is None and cfg.min_score is None and cfg.mmr is None
    assert cfg.blocked_brands == cfg.blocked_categories == cfg.boosts == cfg.pins == []
    assert cfg.dedupe_by_product_group is False


def test_a_full_config_parses() -> None:
    cfg = parse_rules_config({
        "price_range": {"min": 5, "max": 50}, "blocked_brands": [" NoName "], "blocked_categories": ["Gifts"],
        "boosts": [campaign(), campaign(name="clearance", item_ids=["a"], categories=[], multiply=None, add=-0.1)],
        "min_score": 0.1, "dedupe_by_product_group": True, "max_per_category": None,
        "mmr": {"lambda": 0.7}, "pins": [{"item_id": "a", "slot": 1, "only_if_candidate": False}],
    })
    assert cfg.blocked_brands == ["NoName"], "names are stripped"
    assert cfg.boosts[0].start == datetime(2026, 3, 20, tzinfo=UTC)
    assert [b.label for b in cfg.boosts] == ["boost:spring_sale x1.5", "boost:clearance -0.1"]
    assert cfg.mmr is not None and cfg.mmr.lambda_ == 0.7
    assert cfg.model_dump(mode="json", by_alias=True)["mmr"]["lambda"] == 0.7
    # What the Reranker logs validates back to the same config.
    assert RulesConfig.model_validate(cfg.model_dump(by_alias=True)) == cfg


@pytest.mark.parametrize(("raw", "expected"), [
    ({"price_range": {"min": 10, "max": 5}}, r"price_range\.max=5: .*max=5(\.0)? is below min=10"),
    ({"price_range": {}}, r"price_range=\{\}: .*needs min, max or both"),
    ({"price_range": {"min": -1}}, r"price_range\.min=-1: .*greater than or equal to 0"),
    ({"blocked_brands": ["ok", "  "]}, r"blocked_brands\.1='  ': .*at least 1 character"),
    ({"boosts": [campaign(end="2026-03-01T00:00:00Z")]},
     r"boosts\.0\.end='2026-03-01T00:00:00Z': .*end=2026-03-01T00:00:00\+00:00 is not after start=2026-03-20"),
    ({"boosts": [campaign(start="2026-03-20T00:00:00")]}, r"boosts\.0\.start='2026-03-20T00:00:00': .*timezone"),
    ({"boosts": [campaign(start="next tuesday")]}, r"boosts\.0\.start='next tuesday'"),
    ({"boosts": [campaign(add=0.2)]}, r"campaign 'spring_sale': give exactly one of multiply or add, got "
                                      r"multiply=1\.5, add=0\.2"),
    ({"boosts": [campaign(multiply=None)]}, r"exactly one of multiply or add, got multiply=None, add=None"),
    ({"boosts": [campaign(multiply=0)]}, r"boosts\.0\.multiply=0: .*greater than 0"),
    ({"boosts": [campaign(categories=[])]}, r"campaign 'spring_sale' applies to nothing"),
    ({"boosts": [campaign(name="spring sale!")]}, r"boosts\.0\.name='spring sale!'"),
    ({"boosts": [campaign(), campaign()]}, r"boosts=.*campaign names must be unique .*\['spring_sale'\]"),
    ({"boosts": [campaign(multiplier=2)]}, r"unknown field 'boosts\.0\.multiplier' \(value 2\)"),
    ({"pins": [{"item_id": "a", "slot": 0}]}, r"pins\.0\.slot=0: .*greater than or equal to 1"),
    ({"pins": [{"item_id": "a", "slot": 101}]}, r"pins\.0\.slot=101"),
    ({"pins": [{"item_id": "a", "slot": 2}, {"item_id": "b", "slot": 2}]}, r"two pins share slot \[2\]"),
    ({"pins": [{"item_id": "a", "slot": 1}, {"item_id": "a", "slot": 2}]}, r"two pins share item_id \['a'\]"),
    ({"pins": [{"item": "a", "slot": 1}]}, r"pins\.0\.item_id"),
    ({"mmr": {"lambda": 1.5}}, r"mmr\.lambda=1\.5: .*less than or equal to 1"),
    ({"mmr": {"lambda": 0.5, "category_weight": 0, "brand_weight": 0}}, r"mmr=.*both 0"),
    ({"mmr": {"lambda": 0.5}, "max_per_category": 2},
     r"max_per_category=2 and mmr are both set: .*set max_per_category: null to use mmr"),
    ({"min_score": "high"}, r"min_score='high'"),
    ({"max_per_category": 0}, r"max_per_category=0"),
    ({"bogus": True}, r"unknown field 'bogus'"),
])
def test_errors_name_field_and_value(raw: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as err:
        parse_rules_config(raw)
    assert str(err.value).startswith("Reranker user_config: "), err.value


def test_mmr_alone_replaces_the_default_category_cap() -> None:
    cfg = parse_rules_config({"mmr": {"lambda": 0.3}})
    assert cfg.max_per_category is None and cfg.mmr is not None
    assert parse_rules_config({"mmr": None, "max_per_category": 2}).max_per_category == 2


def test_campaign_window_is_start_inclusive_end_exclusive() -> None:
    b = BoostCampaign.model_validate(campaign())
    start, end = datetime(2026, 3, 20, tzinfo=UTC), datetime(2026, 4, 10, tzinfo=UTC)
    assert not b.is_active(start - timedelta(microseconds=1))
    assert b.is_active(start) and b.is_active(end - timedelta(seconds=1))
    assert not b.is_active(end)
    # The same instant written in another zone is the same instant.
    assert b.is_active(datetime(2026, 3, 19, 20, 0, tzinfo=timezone(timedelta(hours=-4))))
    open_ended = BoostCampaign.model_validate(campaign(start=None, end=None))
    assert open_ended.is_active(datetime(1999, 1, 1, tzinfo=UTC))


def uncommented_reranker_config(path: Path) -> dict:
    """The Reranker's user_config with its commented examples switched on."""
    lines = path.read_text().splitlines()
    # Colocated stages: the rules are the Ingress user_config's "Reranker:" block; else the
    # Reranker deployment's own "user_config:" block.
    block_start = next((i for i, line in enumerate(lines) if line.strip() == "Reranker:"), None)
    if block_start is None:
        start = next(i for i, line in enumerate(lines) if line.strip() == "- name: Reranker")
        block_start = next(i for i in range(start, len(lines)) if lines[i].strip() == "user_config:")
    indent = len(lines[block_start]) - len(lines[block_start].lstrip())
    out = lines[:block_start + 1]
    for line in lines[block_start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break   # the block ends at the first line back at the block's own indentation
        out.append(re.sub(r"^(\s*)# ", r"\1", line))
    raw = yaml.safe_load("\n".join(out))
    return stage_user_config(raw["applications"][0], "Reranker")


@pytest.mark.parametrize("name", ["local.yaml", "prod.yaml"])
def test_serve_config_examples_are_valid_and_cover_every_rule(name: str) -> None:
    path = REPO / "serve_configs" / name
    raw = yaml.safe_load(path.read_text())
    live = stage_user_config(raw["applications"][0], "Reranker")
    # The shipped rules: the defaults plus dedupe (no answer lists one product twice), without the category
    # cap (it cost NDCG@10 through the API on Amazon Scientific).
    assert parse_rules_config(live) == RulesConfig(dedupe_by_product_group=True, max_per_category=None)

    examples = uncommented_reranker_config(path)
    assert set(examples) == set(RulesConfig.model_fields), "every rule needs an example in the config"
    with pytest.raises(ValueError, match="both set"):   # mmr and a cap together are refused
        parse_rules_config({**examples, "max_per_category": 3})
    cfg = parse_rules_config({**examples, "max_per_category": None})
    assert cfg.boosts and cfg.pins and cfg.mmr and cfg.price_range and cfg.blocked_brands
