"""Serving under load, on a real local Ray Serve over real HTTP: multi-source candidates with a
cold-start item, the Retriever's dynamic batching, and load shedding (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from ray import cloudpickle, serve
from ray.serve.config import BackpressureConfig
from test_serve_http import HISTORIES, write_artifacts

from recsys.artifacts import resolve_artifact
from recsys.index.hybrid import HybridSearchConfig
from recsys.models.recommend_features import RECOMMEND_RETRIEVER_FEATURES
from recsys.serve.app import build_app
from recsys.serve.candidate_sources import SOURCE_NAMES, SourcesConfig, merge_candidates
from recsys.serve.http_errors import install_error_handlers
from recsys.serve.retrieval_model import RetrievalModel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Serve pickles the test deployments below; by value, since replicas cannot import a test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Its own category, so the Reranker's per-category cap cannot hide it behind indexed cookware.
FRESH = {"item_id": "c99", "title": "Titanium Camping Frying Pan", "brand": "Acme", "category": "camping",
         "description": "a pan newer than the index", "price": 30.0, "in_stock": True}
TEXTS = [f"{adjective} {noun}" for adjective in ("red", "steel", "wireless", "leather")
         for noun in ("pan", "boots", "speaker")]


def test_sources_and_batching(serve_app, recsys_home: Path) -> None:
    write_artifacts(unindexed=[FRESH])
    index_dir, data_dir = resolve_artifact("indexes", "latest"), resolve_artifact("data", "latest")

    # The Retriever's core, in this process: which source proposes what.
    model = RetrievalModel(index_dir, data_dir / "catalog.parquet", data_dir=data_dir)
    assert model.fresh.item_ids == ["c99"] and model.size == 40, "the unindexed item is embedded at start"
    by_source = model.candidate_sources(["c01"], {"ann": 20, "cooccurrence": 20, "ease": 20, "fresh": 5, "popular": 5})
    assert by_source["ease"] and "c01" not in dict(by_source["ease"]), by_source["ease"]
    assert [i for i, _ in by_source["cooccurrence"]] == ["c02", "c00"], by_source["cooccurrence"]
    assert by_source["fresh"][0][0] == "c99" and by_source["fresh"][0][1] > 0.3, by_source["fresh"]
    assert by_source["popular"][0][0] == "b03", "e00 is out of stock"
    query = "titanium camping frying pan"
    searched = model.search_candidates(model.embedder.embed([query])[0], query, 5, fresh_quota=3)
    assert searched[0]["item_id"] == "c99" and searched[0]["source"] == "fresh", searched
    assert [c["source"] for c in model.search_candidates(model.embedder.embed(["pan"])[0], "pan", 5, 0)] == ["ann"] * 5
    # hybrid: BM25 over the whole catalog (the fresh pan included) fused with the dense list
    assert "c99" in model.lexical_ids and [i for i, _ in model.lexical_search(query, 1)] == ["c99"]
    fused = model.search_candidates(model.embedder.embed([query])[0], query, 5, 3, HybridSearchConfig())
    assert (fused[0]["item_id"], fused[0]["source"]) == ("c99", "fresh"), fused
    assert {c["source"] for c in fused[1:]} <= {"ann", "bm25", "ann+bm25", "fresh"}, fused
    merged = merge_candidates(by_source, SourcesConfig(), k=100)
    # what the Retriever serves: the same merge, each candidate with every source's view for a learned ranker
    served, personal = model.recommend_candidates(["c01"], SourcesConfig(), 100)
    quotas = {name: getattr(SourcesConfig(), name).quota for name in SOURCE_NAMES}
    same = merge_candidates(model.candidate_sources(["c01"], quotas), SourcesConfig(), k=100)
    assert personal and [c["item_id"] for c in served] == [c["item_id"] for c in same]
    assert all(len(c["features"]) == len(RECOMMEND_RETRIEVER_FEATURES) for c in served)
    # c02/c00 may come back as "ann" (ANN finds them too, with a higher weighted score); the others
    # are proposed by one source only.
    assert {c["source"] for c in merged} >= {"ann", "fresh", "popular"}, merged
    assert {c["item_id"] for c in merged} >= {"c02", "c00", "c99", "b03"}

    base_url = serve_app(build_app({"index": "latest", "data": "latest", "retrieval_k": 40}))
    retriever = serve.get_deployment_handle("Retriever", app_name="recsys")

    # Dynamic batching: concurrent calls share forwards, and give the vectors of unbatched calls.
    started = time.monotonic()
    responses = [retriever.embed.remote(t) for t in TEXTS]
    vectors = np.array([r.result(timeout_s=120) for r in responses], dtype=np.float32)
    stats = retriever.batch_stats.remote().result(timeout_s=30)
    alone = np.concatenate([model.embedder.embed([t]) for t in TEXTS])
    assert max(stats["batch_sizes"]) > 1, f"no batch held more than one text: {stats}"
    assert sum(stats["batch_sizes"]) >= len(TEXTS), stats
    np.testing.assert_allclose(vectors, alone, atol=1e-4, err_msg="batched vectors differ from unbatched")
    print(f"batch sizes {Counter(stats['batch_sizes'])}, {len(TEXTS)} texts in {time.monotonic() - started:.2f}s")

    with httpx.Client(base_url=base_url, timeout=60) as http:
        assert http.get("/healthz").json()["items"] == 40
        r = http.post("/v1/recommend", json={"history": ["c01"], "k": 40})
        assert r.status_code == 200, r.text
        why = {i["item_id"]: i["explanation"]["source"] for i in r.json()["items"]}
        assert why.get("c99") == "fresh", f"the fresh pan is not recommended as fresh: {why}"
        assert set(why.values()) <= set(SOURCE_NAMES), why
        r = http.post("/v1/recommend", json={"user_id": "u1", "k": 10})
        assert r.status_code == 200 and not {i["item_id"] for i in r.json()["items"]} & set(HISTORIES["u1"])
        # Search finds the fresh pan by its text (its vector and its words).
        r = http.post("/v1/search", json={"query": "titanium camping frying pan", "k": 5})
        assert r.status_code == 200, r.text
        top = r.json()["items"][0]
        assert (top["item_id"], top["explanation"]["source"]) == ("c99", "fresh"), r.json()["items"]


# ------------------------------------------------------------------------------ load shedding

SLOW_S = 0.4
shed_app = FastAPI()
install_error_handlers(shed_app)   # the Ingress's own error mapping


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1, ray_actor_options={"num_cpus": 0})
class SlowStage:
    async def __call__(self) -> str:
        await asyncio.sleep(SLOW_S)
        return "done"


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0})
@serve.ingress(shed_app)
class FrontDoor:
    """Takes everything; its downstream stage sheds (the handle raises BackPressureError)."""

    def __init__(self, stage) -> None:  # type: ignore[no-untyped-def]
        self.stage = stage

    @shed_app.get("/work")
    async def work(self) -> dict:
        return {"answer": await self.stage.remote()}


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1, ray_actor_options={"num_cpus": 0},
                  backpressure_config=BackpressureConfig(retry_after_s=1))
class FullDoor:
    """Sheds itself: Serve's proxy answers 503 before any replica code runs."""

    async def __call__(self) -> str:
        await asyncio.sleep(SLOW_S)
        return "done"


async def _burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(client.get(url) for _ in range(n))))


def _check_shed(responses: list[httpx.Response], where: str) -> None:
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, f"{where}: only 200 and 503 expected, got {codes}"
    assert codes[200] >= 1 and codes[503] >= 1, f"{where}: expected some served and some shed, got {codes}"
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers.get("retry-after", 0)) >= 1, f"{where}: 503 without Retry-After: {r.headers} {r.text}"


def test_load_shedding_gives_503_with_retry_after(serve_app) -> None:
    base_url = serve_app(FrontDoor.bind(SlowStage.bind()))
    serve.run(FullDoor.bind(), name="full", route_prefix="/full")
    assert httpx.get(f"{base_url}/work", timeout=30).status_code == 200   # warm

    downstream = asyncio.run(_burst(f"{base_url}/work", 12))
    _check_shed(downstream, "downstream stage full")
    shed = [r.json() for r in downstream if r.status_code == 503]
    assert all("overloaded" in b["detail"] and b["retry_after_s"] >= 1 for b in shed), shed

    _check_shed(asyncio.run(_burst(f"{base_url}/full", 12)), "ingress full (proxy)")
