"""The Reranker's catalog facts (brand, price, product group) and the rules over a real
catalog.parquet, down to ScoredItem-shaped output. No Ray cluster: the pure stage functions."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.schema import CATALOG_SCHEMA, ScoredItem
from recsys.serve.catalog import CatalogLookup, normalise_title
from recsys.serve.rerank import check_rules_fit_catalog, parse_rules_config, rerank_candidates

NOW = datetime(2026, 3, 25, tzinfo=timezone.utc)

ROWS = [
    # item_id, title, brand, category, price, in_stock, product_group
    ("pan10", "Cast-Iron Pan, 10 inch", "Acme", "cookware", 20.0, True, "PAN"),
    ("pan12", "Cast Iron Pan 12 inch", "Acme", "cookware", 25.0, True, "PAN"),
    ("wok", "Carbon Steel Wok", "Globex", "cookware", 30.0, True, None),
    ("wok_relist", "carbon  steel WOK!", "Globex", "cookware", 29.0, True, None),
    ("boot", "Hiking Boot", "Initech", "footwear", 90.0, True, None),
    ("gift", "Gift Card", "Acme", "gifts", None, True, None),
]


def write_catalog(path: Path, product_group: bool = True) -> Path:
    cols = list(zip(*ROWS))
    table = pa.table({"item_id": cols[0], "title": cols[1], "brand": cols[2], "category": cols[3],
                      "description": [""] * len(ROWS), "price": cols[4], "in_stock": cols[5]},
                     schema=CATALOG_SCHEMA)
    if product_group:
        table = table.append_column("product_group", pa.array(cols[6], pa.string()))
    pq.write_table(table, path)
    return path


def test_normalise_title() -> None:
    assert normalise_title("Cast-Iron  Pan!") == "cast iron pan"
    assert normalise_title("carbon  steel WOK!") == normalise_title("Carbon Steel Wok")
    assert normalise_title("  --  ") == ""


def test_rule_facts_and_product_group_fallback(tmp_path: Path) -> None:
    cat = CatalogLookup.from_parquet(write_catalog(tmp_path / "catalog.parquet"), rule_facts=True)
    assert cat.brand("wok") == "Globex" and cat.price("pan12") == 25.0 and cat.price("gift") is None
    assert cat.product_group("pan10") == cat.product_group("pan12") == "group:PAN"
    # A null product_group falls back to the normalised title, so the re-listed wok collapses.
    assert cat.product_group("wok") == cat.product_group("wok_relist") == "title:carbon steel wok"
    no_groups = CatalogLookup.from_parquet(write_catalog(tmp_path / "plain.parquet", False), rule_facts=True)
    assert no_groups.product_group("pan10") != no_groups.product_group("pan12"), "titles differ by size"
    lean = CatalogLookup.from_parquet(tmp_path / "catalog.parquet")
    assert lean.brands == {} and lean.prices is None, "other stages do not hold the rule facts"
    assert lean.category("wok") == "cookware"


def test_price_rules_need_a_price_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"item_id": ["a"], "title": ["t"], "category": ["c"], "in_stock": [True]}),
                   tmp_path / "thin.parquet")
    cat = CatalogLookup.from_parquet(tmp_path / "thin.parquet", rule_facts=True)
    assert cat.brand("a") == "" and cat.price("a") is None
    with pytest.raises(ValueError, match=r"price_range=\{'min': None, 'max': 10.0\} needs a price column"):
        check_rules_fit_catalog(parse_rules_config({"price_range": {"max": 10}}), cat)
    check_rules_fit_catalog(parse_rules_config({"blocked_brands": ["x"]}), cat)


def test_rerank_candidates_over_a_real_catalog(tmp_path: Path) -> None:
    cat = CatalogLookup.from_parquet(write_catalog(tmp_path / "catalog.parquet"), rule_facts=True)
    ranked = [{"item_id": i, "retrieval_score": s, "rank_score": s, "source": "ann"}
              for i, s in (("pan10", 0.9), ("pan12", 0.95), ("wok", 0.7), ("wok_relist", 0.8), ("boot", 0.6),
                           ("ghost", 0.99))]
    cfg = parse_rules_config({
        "max_per_category": None, "dedupe_by_product_group": True, "price_range": {"max": 100},
        "blocked_brands": ["initech"],
        "boosts": [{"name": "wok_week", "item_ids": ["wok"], "add": 0.5, "start": "2026-03-20T00:00:00Z",
                    "end": "2026-03-27T00:00:00Z"}],
        "pins": [{"item_id": "gift", "slot": 1, "only_if_candidate": False}],
    })
    out = rerank_candidates(ranked, history_ids=None, k=3, cfg=cfg, catalog=cat, now=NOW)
    items = [ScoredItem.model_validate(i) for i in out["items"]]
    # gift has no price, so the price filter keeps it out even though it is pinned.
    assert [i.item_id for i in items] == ["wok", "pan12"]
    wok = items[0]
    assert wok.score == pytest.approx(1.2) and wok.explanation.rank_score == pytest.approx(0.7)
    assert wok.explanation.rules_applied == ["exclude_history", "in_stock", "filter:price_range",
                                             "filter:blocked_brands", "boost:wok_week +0.5",
                                             "dedupe:product_group"]
    assert out["dropped"]["not_in_catalog"] == 1 and out["dropped"]["blocked_brands"] == 1
    assert out["dropped"]["dedupe_product_group"] == 2, "pan10 under pan12, wok_relist under boosted wok"

    # Without a price filter the pin is fetched from the catalog and shows as source "pin".
    cfg = cfg.model_copy(update={"price_range": None})
    items = [ScoredItem.model_validate(i) for i in rerank_candidates(ranked, None, 3, cfg, cat, NOW)["items"]]
    assert [i.item_id for i in items] == ["gift", "wok", "pan12"]
    assert items[0].explanation.source == "pin" and items[0].explanation.rules_applied[-1] == "pin:slot1"
    assert items[0].title == "Gift Card" and items[0].explanation.retrieval_score == 0.0
