"""Storefront endpoints over real HTTP: feedback, similar items, cart, promotions, readiness, the
API key and metrics, on the real app (MiniLM, Faiss, Ray Serve) deployed once from
serve_configs/local.yaml for the module; then the same app on the Redis user-state backend.

Tests run in file order and share the app: the feedback tests change user state, so each test
uses its own users unless it says otherwise.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from test_serve_http import GIFT_CARD, HISTORIES, OUT_OF_STOCK, REPO, category_of, write_artifacts

from recsys.serve.colocated import stage_user_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

API_KEY = "test-key-" + uuid.uuid4().hex
KEY = {"X-API-Key": API_KEY}
ENDPOINTS = {"/v1/recommend", "/v1/search", "/v1/similar/{item_id}", "/v1/cart", "/v1/promotions",
             "/v1/feedback", "/v1/users/{user_id}", "/healthz", "/readyz"}


def storefront_config(home: Path, user_state: dict) -> dict:
    """serve_configs/local.yaml as shipped, with this user state, an API key and two campaigns."""
    config = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    app = config["applications"][0]
    app["runtime_env"]["env_vars"].update(RECSYS_HOME=str(home), TOKENIZERS_PARALLELISM="false",
                                          RECSYS_TEST_API_KEY=API_KEY)
    app["args"].update(retrieval_k=40, user_state={**app["args"]["user_state"], **user_state},
                       api_key_env="RECSYS_TEST_API_KEY")
    now = datetime.now(timezone.utc)
    stage_user_config(app, "Reranker")["boosts"] = [
        {"name": "book_week", "categories": ["Books"], "item_ids": [GIFT_CARD["item_id"]], "add": 0.05,
         "start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()},
        {"name": "shoe_sale", "categories": ["footwear"], "multiply": 2.0,
         "start": (now - timedelta(days=9)).isoformat(), "end": (now - timedelta(days=8)).isoformat()},
    ]
    return config


@pytest.fixture(scope="module")
def storefront(serve_config_deploy_module, tmp_path_factory):
    """(deploy, home, http client) with the embedded-backend app running."""
    home = tmp_path_factory.mktemp("storefront_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_HOME", str(home))
        write_artifacts(unindexed=[GIFT_CARD])
        base_url = serve_config_deploy_module(storefront_config(
            home, {"backend": "embedded", "path": str(home / "state" / "users.sqlite3")}))
        with httpx.Client(base_url=base_url, timeout=60) as http:
            yield serve_config_deploy_module, home, http


def ids_of(r: httpx.Response) -> list[str]:
    """The item ids of a 200 answer, after checking each item's score and explanation."""
    assert r.status_code == 200, r.text
    for item in r.json()["items"]:
        exp = item["explanation"]
        boost = 0.05 if "boost:book_week +0.05" in exp["rules_applied"] else 0.0   # the one active campaign
        assert item["score"] == pytest.approx(exp["rank_score"] + boost), item
        assert item["category"] == (category_of(item["item_id"]) if item["item_id"] != GIFT_CARD["item_id"]
                                    else GIFT_CARD["category"]), item
    return [item["item_id"] for item in r.json()["items"]]


def first_error(r: httpx.Response, status: int = 422) -> dict:
    assert r.status_code == status, r.text
    return r.json()["detail"][0]


def test_docs_openapi_readyz(storefront) -> None:
    _, _, http = storefront
    assert http.get("/docs").status_code == 200
    paths = set(http.get("/openapi.json").json()["paths"])
    assert ENDPOINTS <= paths, f"missing from OpenAPI: {ENDPOINTS - paths}"
    r = http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "stages": dict.fromkeys(
        ("retriever", "ranker", "reranker", "user_store"), "ok")}


VIEWED = ("e03", "e04", "e05", "e06", "e07")


def category_of_any(item_id: str) -> str:
    """category_of, knowing the unindexed gift card too: /v1/recommend may propose it as a fresh item."""
    return GIFT_CARD["category"] if item_id == GIFT_CARD["item_id"] else category_of(item_id)


def check_feedback_changes_recommendations(http: httpx.Client, user: str) -> None:
    """A purchase and five views change the very next /v1/recommend, well within a second."""
    http.post("/v1/recommend", json={"user_id": user, "k": 10})   # warm the path once
    before = ids_of(http.post("/v1/recommend", json={"user_id": user, "k": 10}))
    assert before and category_of_any(before[0]) == "cookware", before
    bought = before[0]
    events = [{"user_id": user, "item_id": bought, "event_type": "purchase"}] + [
        {"user_id": user, "item_id": i, "event_type": "view"} for i in VIEWED]
    started = time.perf_counter()
    r = http.post("/v1/feedback", json={"events": events}, headers=KEY)
    after = ids_of(http.post("/v1/recommend", json={"user_id": user, "k": 10}))
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 6, "rejected": 0, "users": 1, "by_event_type": {"purchase": 1, "view": 5},
                        "errors": []}
    assert after != before, "feedback did not change the next recommendations"
    assert bought not in after and not set(VIEWED) & set(after), after
    # the history text reads the newest items first: five electronics views now lead it
    n_electronics = [sum(category_of_any(i) == "electronics" for i in ids[:5]) for ids in (before, after)]
    assert n_electronics[1] >= n_electronics[0] + 2, f"views of electronics ignored: {before} -> {after}"
    print(f"{user}: feedback + next recommend {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0, f"feedback + next recommend took {elapsed:.2f}s"
    # the purchase stays out of every answer for that user
    for r in (http.post("/v1/search", json={"query": "stainless steel skillet", "k": 10, "user_id": user}),
              http.get(f"/v1/similar/{HISTORIES['u1'][0]}", params={"k": 10, "user_id": user}),
              http.post("/v1/cart", json={"items": ["c01"], "user_id": user, "k": 10})):
        assert bought not in ids_of(r), f"{r.request.url}: purchased {bought} came back"


def test_feedback_changes_next_recommendation(storefront) -> None:
    check_feedback_changes_recommendations(storefront[2], "u1")


def test_feedback_errors(storefront) -> None:
    _, _, http = storefront
    event = {"user_id": "fb", "item_id": "c00", "event_type": "click"}
    r = http.post("/v1/feedback", json={"events": [event]})
    assert r.status_code == 401 and "missing X-API-Key" in r.json()["detail"], r.text
    r = http.post("/v1/feedback", json={"events": [event]}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "does not match" in r.json()["detail"], r.text
    r = http.post("/v1/feedback", json={"bogus": 1})   # the key is checked before the body
    assert r.status_code == 401, r.text
    err = first_error(http.post("/v1/feedback", json={"events": [{**event, "event_type": "like"}]}, headers=KEY))
    assert err["field"] == "events.0.event_type" and err["value"] == "like", err
    err = first_error(http.post("/v1/feedback", json={"events": [{**event, "timestamp": "2026-01-01T10:00"}]},
                                headers=KEY))
    assert err["field"] == "events.0.timestamp" and "timezone" in err["message"], err
    assert first_error(http.post("/v1/feedback", json={"events": []}, headers=KEY))["field"] == "events"
    # an item the catalog lacks: the rest is stored, the unknown one counted and named
    r = http.post("/v1/feedback", headers=KEY, json={"events": [
        event, {**event, "item_id": "no-such-item"}, {**event, "timestamp": 1_700_000_000}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["by_event_type"]) == (2, 1, {"click": 2}), body
    assert body["errors"] == [{"field": "events.1.item_id", "value": "no-such-item",
                               "message": "item is not in the serving catalog; event not stored"}]


def test_similar_items(storefront) -> None:
    _, _, http = storefront
    ids = ids_of(http.get("/v1/similar/c00", params={"k": 5}))
    assert len(ids) == 5 and "c00" not in ids, ids
    assert category_of(ids[0]) == "cookware" and not set(ids) & OUT_OF_STOCK, ids
    r = http.get("/v1/similar/no-such-item")
    assert r.status_code == 404 and "'no-such-item' is not in index" in r.json()["detail"], r.text
    assert http.get(f"/v1/similar/{GIFT_CARD['item_id']}").status_code == 404, "in the catalog, not the index"
    err = first_error(http.get("/v1/similar/c00", params={"k": 0}))
    assert err["field"] == "k" and err["value"] == "0", err


def test_cart_complements(storefront) -> None:
    _, _, http = storefront
    r = http.post("/v1/cart", json={"items": ["c00", "c04"], "k": 5})
    items = r.json()["items"]
    ids = ids_of(r)
    assert len(ids) == 5 and not {"c00", "c04"} & set(ids), ids
    assert category_of(ids[0]) != "cookware", f"complements should lead with another category: {ids}"
    for item in items:
        same = category_of(item["item_id"]) == "cookware"
        assert ("cart:same_category-0.5" in item["explanation"]["rules_applied"]) == same, item
    # nothing in the cart is indexed: popular items instead, the cart still left out
    r = http.post("/v1/cart", json={"items": [GIFT_CARD["item_id"], "no-such-item"], "k": 3})
    assert r.status_code == 200 and r.json()["cold_start"] is True, r.text
    assert first_error(http.post("/v1/cart", json={"items": []}))["field"] == "items"
    err = first_error(http.post("/v1/cart", json={"items": ["c00", " "]}))
    assert err["field"] == "items.1" and err["value"] == " ", err


def test_promotions(storefront) -> None:
    _, _, http = storefront
    promoted = {f"b{n:02d}" for n in range(10)} | {GIFT_CARD["item_id"]}
    r = http.get("/v1/promotions", params={"k": 5})
    body = r.json()
    ids = ids_of(r)
    assert body["cold_start"] is True and ids and set(ids) <= promoted, ids   # the shoe sale is over
    assert ids[0] == "b03", f"without a history, the most popular promoted item leads: {ids}"
    assert all("boost:book_week +0.05" in i["explanation"]["rules_applied"] for i in body["items"])
    r = http.post("/v1/promotions", json={"user_id": "u2", "k": 5})   # u2: a footwear history
    body = r.json()
    personal = ids_of(r)
    assert body["cold_start"] is False and set(personal) <= promoted, personal
    assert body["items"][0]["explanation"]["source"] == "ann" and personal != ids, personal
    r = http.post("/v1/promotions", json={"history": ["c00", "c02"], "k": 1})
    assert ids_of(r) == ["b01"], "a cookware history should get the cookbook first"
    assert first_error(http.get("/v1/promotions", params={"k": 1000}))["field"] == "k"
    assert first_error(http.post("/v1/promotions", json={"user": "u1"}))["field"] == "user"


def test_forget_user_is_an_admin_action(storefront) -> None:
    _, _, http = storefront
    assert http.post("/v1/recommend", json={"user_id": "u3", "k": 3}).json()["cold_start"] is False
    assert http.delete("/v1/users/u3").status_code == 401
    r = http.delete("/v1/users/u3", headers=KEY)
    assert r.status_code == 200 and r.json() == {"user_id": "u3", "forgotten": True}, r.text
    assert http.post("/v1/recommend", json={"user_id": "u3", "k": 3}).json()["cold_start"] is True


def scrape_until(port: int, ready, what: str, timeout_s: float = 30) -> str:
    """The node's /metrics text once ready(text) holds; replicas push metrics to the node's agent every few
    seconds, so a series shows up there a little after the request that counts it."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if ready(text):
            return text
        serve_series = sorted({line.split("{")[0] for line in text.splitlines() if line.startswith("ray_serve_")})
        assert time.monotonic() < deadline, f"{what} not on the metrics port after {timeout_s:.0f}s; " \
                                            f"its ray_serve_ series: {serve_series}"
        time.sleep(1)


def test_request_counters_reach_the_metrics_port(storefront) -> None:
    import ray

    _, _, http = storefront
    assert http.get("/v1/similar/no-such-item").status_code == 404
    event = {"user_id": "metrics", "item_id": "c00", "event_type": "click"}
    assert http.post("/v1/feedback", json={"events": [event]}, headers=KEY).status_code == 200
    port = ray._private.worker.global_worker.node.metrics_export_port

    def has_similar_404(text: str) -> bool:
        return any(line.startswith("ray_recsys_http_requests") and 'endpoint="/v1/similar/{item_id}"' in line
                   and 'status="404"' in line for line in text.splitlines())

    scrape_until(port, has_similar_404, "a ray_recsys_http_requests series for the similar-items 404")
    scrape_until(port, lambda text: "\nray_recsys_feedback_events" in text, "ray_recsys_feedback_events")
    # Serve's own series, in HAProxy mode too (HAProxy's per-request log feeds the proxy's HTTP families)
    serve_series = ("ray_serve_num_http_requests_total", "ray_serve_deployment_processing_latency_ms_bucket")
    scrape_until(port, lambda text: all(f"\n{name}" in text for name in serve_series), " and ".join(serve_series))


def test_redis_backend_feedback_and_readiness(storefront, redis_server: str) -> None:
    import redis

    deploy, home, http = storefront
    deploy(storefront_config(home, {"backend": "redis", "redis_url": redis_server, "redis_timeout_s": 0.5,
                                    "key_prefix": f"test:{uuid.uuid4().hex}:", "path": None}))
    check_feedback_changes_recommendations(http, "u1")   # seeded afresh into Redis, then changed

    # Redis stops answering: /readyz says which dependency but stays 200 ("degraded": the store is shared, so
    # failing readiness would take every replica out at once), and /v1/recommend answers and says what it lacked
    raw = redis.Redis.from_url(redis_server)
    raw.execute_command("CLIENT", "PAUSE", 4000, "ALL")
    try:
        r = http.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
        stages = r.json()["stages"]
        assert stages["user_store"] != "ok" and {stages[s] for s in ("retriever", "ranker", "reranker")} == {"ok"}
        answer = http.post("/v1/recommend", json={"user_id": "u1", "history": ["f00"], "k": 3})
        assert answer.status_code == 200 and answer.json()["items"], answer.text
        assert [d.split(":")[0] for d in answer.json()["degraded"]] == ["user_state"], answer.json()["degraded"]
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
        raw.close()
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    assert http.post("/v1/recommend", json={"user_id": "u1", "k": 3}).json()["degraded"] == []
