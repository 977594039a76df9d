"""End to end over real HTTP: real MiniLM, real Faiss, real Ray Serve on 127.0.0.1.

One Serve start per module is too costly to repeat per check, so the HTTP checks run as
named steps inside one test; each assertion message says which behaviour broke.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recsys.artifacts import mark_latest, new_version_dir
from recsys.data.text import format_item_text
from recsys.index.bm25 import BM25Index
from recsys.index.faiss_index import build_faiss_index, save_item_index
from recsys.models.encoder import TextEmbedder, resolve_model_path
from recsys.schema import CATALOG_SCHEMA
from recsys.serve.app import build_app
from recsys.serve.colocated import stage_user_config
from recsys.serve.rank import parse_ranker_config
from recsys.serve.rerank import parse_rules_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CATEGORIES = {
    "cookware": ["Stainless Steel Skillet 12 inch", "Cast Iron Frying Pan", "Nonstick Saucepan with Lid",
                 "Copper Stock Pot 8 quart", "Carbon Steel Wok", "Enameled Dutch Oven",
                 "Stainless Steel Saute Pan", "Ceramic Baking Dish", "Aluminium Sheet Pan",
                 "Stainless Steel Frying Pan 10 inch"],
    "footwear": ["Trail Running Shoes", "Leather Hiking Boots", "Canvas Sneakers", "Wool Slippers",
                 "Waterproof Rain Boots", "Road Running Shoes", "Suede Chelsea Boots",
                 "Basketball High Tops", "Flip Flops", "Leather Oxford Shoes"],
    "electronics": ["Wireless Noise Cancelling Headphones", "Bluetooth Speaker", "USB-C Charger 65W",
                    "Mechanical Keyboard", "Wireless Mouse", "4K Computer Monitor", "Smartphone Tripod",
                    "Portable Power Bank", "Wireless Earbuds", "HDMI Cable 2m"],
    "books": ["Mystery Novel Paperback", "Cookbook of Italian Recipes", "Science Fiction Anthology",
              "History of Rome Hardcover", "Poetry Collection", "Children's Picture Book",
              "Fantasy Epic Trilogy", "Biography of a Scientist", "Travel Guide to Japan",
              "Self Help Productivity Book"],
}
PREFIX = {"cookware": "c", "footwear": "f", "electronics": "e", "books": "b"}
OUT_OF_STOCK = {"c09", "e00"}   # a skillet-like pan, and the most popular item overall
HISTORIES = {"u1": ["c01", "c02", "c00"], "u2": ["f00", "f05", "f01"], "u3": ["e01", "e08", "e00"]}


def catalog_rows(brand_of: Callable[[str], str] = lambda item_id: "Acme") -> list[dict]:
    rows = []
    for cat, titles in CATEGORIES.items():
        for n, title in enumerate(titles):
            item_id = f"{PREFIX[cat]}{n:02d}"
            rows.append({"item_id": item_id, "title": title, "brand": brand_of(item_id), "category": cat,
                         "description": f"{title} from the {cat} department",
                         "price": 10.0 + n, "in_stock": item_id not in OUT_OF_STOCK})
    return rows


def popularity(rows: list[dict]) -> dict[str, int]:
    counts = {r["item_id"]: 1 + (7 * i) % 13 for i, r in enumerate(rows)}
    counts.update({"e00": 500, "b03": 400, "f02": 300, "c04": 200, "e02": 150})
    return counts


def write_artifacts(rows: list[dict] | None = None, unindexed: Sequence[dict] = ()) -> dict[str, str]:
    """A data version and an index version (real MiniLM vectors), both marked latest.

    `unindexed` rows go into the catalog only: retrieval can never propose them."""
    rows = rows if rows is not None else catalog_rows()
    data_version, data_dir = new_version_dir("data")
    pq.write_table(pa.Table.from_pylist(rows + list(unindexed), schema=CATALOG_SCHEMA),
                   data_dir / "catalog.parquet")
    (data_dir / "sequences").mkdir()
    pq.write_table(pa.table({"user_id": list(HISTORIES),
                             "items": pa.array(list(HISTORIES.values()), pa.list_(pa.string()))}),
                   data_dir / "sequences" / "part-00000.parquet")
    counts = popularity(rows)
    pq.write_table(pa.table({"item_id": list(counts), "count": pa.array(list(counts.values()), pa.int64())}),
                   data_dir / "popularity.parquet")
    mark_latest("data", data_version)

    embedder = TextEmbedder("default", max_length=64)
    texts = [format_item_text(r["title"], r["brand"], r["category"], r["description"]) for r in rows]
    index_version, index_dir = new_version_dir("indexes")
    save_item_index(index_dir, build_faiss_index(embedder.embed(texts)), [r["item_id"] for r in rows],
                    {"version": index_version, "model_path": resolve_model_path("default"),
                     "model_version": "minilm-test", "data_version": data_version,
                     "item_max_length": 64}, lexical=BM25Index(texts))   # as build_index saves them
    mark_latest("indexes", index_version)
    return {"data_version": data_version, "index_version": index_version}


def category_of(item_id: str) -> str:
    return {v: k for k, v in PREFIX.items()}[item_id[0]]


def check_items(body: dict, seen: set[str]) -> list[str]:
    """Every item carries a score and a full explanation; returns the item ids."""
    for item in body["items"]:
        assert {"item_id", "title", "category", "score", "explanation"} <= set(item), item
        exp = item["explanation"]
        assert {"source", "retrieval_score", "rank_score", "rules_applied"} <= set(exp), item
        assert item["score"] == pytest.approx(exp["rank_score"])
        assert item["category"] == category_of(item["item_id"])
    ids = [i["item_id"] for i in body["items"]]
    seen.update(ids)
    return ids


def test_serve_http_end_to_end(serve_app, recsys_home: Path) -> None:
    versions = write_artifacts()
    base_url = serve_app(build_app({"index": "latest", "data": "latest", "retrieval_k": 40}))
    with httpx.Client(base_url=base_url, timeout=60) as http:
        run_http_checks(http, versions)


def run_http_checks(http: httpx.Client, versions: dict[str, str]) -> None:
    seen: set[str] = set()

    health = http.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "model_version": "minilm-test",
                             "index_version": versions["index_version"], "items": 40}

    # search: the skillet query finds cookware first, with explanations
    r = http.post("/v1/search", json={"query": "stainless steel skillet", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = check_items(body, seen)
    assert ids and body["items"][0]["category"] == "cookware", body
    assert ids[0] == "c00", f"the skillet itself should rank first: {ids}"
    assert body["items"][0]["explanation"]["source"] == "ann+bm25", "hybrid: both lists found it"
    assert body["items"][0]["explanation"]["retrieval_score"] > 0.9, "first in both lists: fused score near 1"
    assert body["cold_start"] is False and body["index_version"] == versions["index_version"]
    assert len(ids) == 5, "k items"

    # hybrid search: an exact product token is BM25's; only stopwords or punctuation: dense alone, never a 500
    r = http.post("/v1/search", json={"query": "65W", "k": 5})
    assert r.status_code == 200 and r.json()["items"][0]["item_id"] == "e02", r.text
    assert "bm25" in r.json()["items"][0]["explanation"]["source"], r.text
    for query in ("the of and", "?!...", "the"):
        r = http.post("/v1/search", json={"query": query, "k": 5})
        assert r.status_code == 200, (query, r.text)
        assert len(r.json()["items"]) == 5, (query, r.text)
        assert {i["explanation"]["source"] for i in r.json()["items"]} == {"ann"}, (query, r.text)

    # search for a known user leaves its history out
    r = http.post("/v1/search", json={"query": "stainless steel skillet", "k": 5, "user_id": "u1"})
    assert r.status_code == 200, r.text
    ids = check_items(r.json(), seen)
    assert ids and not set(ids) & set(HISTORIES["u1"]), f"search for u1 returned its history: {ids}"

    # recommend for a known user: history excluded, at most 3 per category
    r = http.post("/v1/recommend", json={"user_id": "u1", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = check_items(body, seen)
    assert len(ids) == 10 and body["cold_start"] is False, body
    assert not set(ids) & set(HISTORIES["u1"]), f"recommendations repeat u1's history: {ids}"
    per_cat = Counter(category_of(i) for i in ids)
    assert max(per_cat.values()) <= 3, f"category cap broken: {per_cat}"
    assert "category_cap<=3" in body["items"][0]["explanation"]["rules_applied"]
    assert body["items"][0]["category"] == "cookware", "a cookware history should lead with cookware"

    # explicit history: unknown ids ignored, known ones used and excluded
    r = http.post("/v1/recommend", json={"history": ["no-such-item", "f03"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = check_items(body, seen)
    assert body["cold_start"] is False and ids and "f03" not in ids, body

    # cold start: unknown user, no history -> popular in-stock items
    for payload in ({"user_id": "stranger", "k": 4}, {"history": ["no-such-item"], "k": 4}):
        r = http.post("/v1/recommend", json=payload)
        assert r.status_code == 200, r.text
        body = r.json()
        ids = check_items(body, seen)
        assert body["cold_start"] is True, body
        assert ids == ["b03", "f02", "c04", "e02"], f"expected popular in-stock items, got {ids}"
        assert {i["explanation"]["source"] for i in body["items"]} == {"popular"}

    assert not seen & OUT_OF_STOCK, f"out-of-stock items were served: {seen & OUT_OF_STOCK}"

    # bad requests: 4xx bodies that name the problem
    r = http.post("/v1/search", content=b'{"query": "pan", ', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "not valid JSON" in r.json()["detail"][0]["message"], r.text

    r = http.post("/v1/search", json={"query": "pan", "colour": "red"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == "colour" and "colour" in r.json()["detail"][0]["message"]

    for k in (0, 1000):
        r = http.post("/v1/recommend", json={"user_id": "u1", "k": k})
        assert r.status_code == 422, r.text
        err = r.json()["detail"][0]
        assert err["field"] == "k" and err["value"] == k and err["message"], r.text

    r = http.post("/v1/recommend", json={"k": 3})
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["field"] == "user_id" and "neither user_id nor history" in err["message"], r.text


def test_build_app_rejects_bad_args_by_name(recsys_home: Path) -> None:
    with pytest.raises(ValueError, match=r"retrieval_k=0"):
        build_app({"retrieval_k": 0})
    with pytest.raises(ValueError, match=r"serve args: unknown field 'indx'"):
        build_app({"indx": "latest"})
    with pytest.raises(FileNotFoundError, match="no indexes artifact yet"):
        build_app({})


def test_user_config_errors_name_field_and_value() -> None:
    assert parse_ranker_config(None).popularity_weight == 0.1
    with pytest.raises(ValueError, match=r"popularity_weight='lots'"):
        parse_ranker_config({"popularity_weight": "lots"})
    with pytest.raises(ValueError, match=r"Reranker user_config: max_per_category=0"):
        parse_rules_config({"max_per_category": 0})
    with pytest.raises(ValueError, match=r"bogus"):
        parse_rules_config({"bogus": True})


# Rules test catalog: odd-numbered items are Globex, the rest Acme; price is 10 + n; a gift card
# that is in the catalog but not in the index.
GIFT_CARD = {"item_id": "x00", "title": "Store Gift Card", "brand": "Acme", "category": "gifts",
             "description": "A gift card", "price": 12.0, "in_stock": True}
REPO = Path(__file__).resolve().parents[2]


def serve_config(recsys_home: Path, reranker_rules: dict) -> dict:
    """serve_configs/local.yaml as shipped, pointed at the test's RECSYS_HOME, with these rules."""
    config = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    app = config["applications"][0]
    app["runtime_env"]["env_vars"].update(RECSYS_HOME=str(recsys_home), TOKENIZERS_PARALLELISM="false")
    app["args"]["retrieval_k"] = 40   # every indexed item is a candidate: pins of candidates are sure to apply
    stage_user_config(app, "Reranker").update(reranker_rules)
    # Search would find the unindexed gift card as a fresh item; off, so pinning it exercises the
    # catalog fetch of a pin that is no candidate (only_if_candidate: false).
    stage_user_config(app, "Retriever")["sources"]["fresh"]["quota"] = 0
    return config


def test_serve_rules_from_user_config_and_live_update(serve_config_deploy, recsys_home: Path) -> None:
    write_artifacts(catalog_rows(lambda i: "Globex" if int(i[1:]) % 2 else "Acme"), unindexed=[GIFT_CARD])
    now = datetime.now(timezone.utc)   # the Reranker judges campaign windows by the real clock
    rules = {
        "price_range": {"max": 15.5},       # n <= 5
        "blocked_brands": ["globex"],       # odd n
        "boosts": [
            {"name": "wok_week", "item_ids": ["c04"], "add": 1.0,
             "start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()},
            {"name": "old_sale", "categories": ["books"], "multiply": 10.0,
             "start": (now - timedelta(days=10)).isoformat(), "end": (now - timedelta(days=9)).isoformat()},
        ],
        "pins": [{"item_id": "x00", "slot": 1, "only_if_candidate": False}, {"item_id": "c02", "slot": 3}],
    }
    base_url = serve_config_deploy(serve_config(recsys_home, rules))
    with httpx.Client(base_url=base_url, timeout=60) as http:
        r = http.post("/v1/search", json={"query": "stainless steel skillet", "k": 5})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        ids = [i["item_id"] for i in items]
        why = {i["item_id"]: i["explanation"] for i in items}
        assert ids[:3] == ["x00", "c04", "c02"], f"pin, boosted wok, pin expected first: {ids}"
        assert why["x00"]["source"] == "pin" and why["x00"]["rules_applied"][-1] == "pin:slot1", why["x00"]
        assert items[0]["title"] == "Store Gift Card" and items[0]["category"] == "gifts"
        assert "pin:slot3" in why["c02"]["rules_applied"] and why["c02"]["source"] == "ann"
        assert "boost:wok_week +1" in why["c04"]["rules_applied"], why["c04"]
        assert items[1]["score"] == pytest.approx(why["c04"]["rank_score"] + 1.0)
        assert "c00" in ids[3:], f"the skillet itself follows the rules' picks: {ids}"
        for item in items:
            rules_applied = item["explanation"]["rules_applied"]
            assert {"filter:price_range", "filter:blocked_brands"} <= set(rules_applied), item
            assert not any("old_sale" in rule for rule in rules_applied), f"expired campaign applied: {item}"
            if item["item_id"] != "x00":
                assert int(item["item_id"][1:]) in (0, 2, 4), f"price or brand filter let through {item}"

        # A changed user_config reaches the running replica through reconfigure: same actor after.
        from ray import serve

        # local.yaml colocates the stages in the Ingress: its call_stage reaches the Reranker object.
        ingress = serve.get_deployment_handle("Ingress", app_name="recsys")
        before = ingress.call_stage.remote("Reranker", "info").result()
        assert before["rules"]["pins"][0]["item_id"] == "x00"
        # local.yaml runs two Ingress replicas: the actors before the change, from enough calls to reach both.
        actors_before = {ingress.call_stage.remote("Reranker", "info").result()["actor_id"] for _ in range(30)}
        serve_config_deploy(serve_config(recsys_home, {"blocked_categories": ["Cookware"]}))
        deadline = time.monotonic() + 60
        while (after := ingress.call_stage.remote("Reranker", "info").result())["rules"]["blocked_categories"] \
                != ["Cookware"]:
            assert time.monotonic() < deadline, f"the new rules never reached the Reranker: {after}"
            time.sleep(0.5)
        assert after["actor_id"] in actors_before, "the Reranker replica restarted for a rules change"
        r = http.post("/v1/search", json={"query": "stainless steel skillet", "k": 5})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == 5 and not any(i["category"] == "cookware" for i in items), items
        assert all("filter:blocked_categories" in i["explanation"]["rules_applied"] for i in items)
        assert not any(i["explanation"]["source"] == "pin" for i in items), "the pins were removed"
