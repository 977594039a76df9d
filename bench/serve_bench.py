"""Serving: POST /v1/recommend over real HTTP through the Ray Serve app vs the same stage code in one process.

FINDINGS (2026-11-28, 2 cores; README "Measured results" has the table): the app as local.yaml ships it (stages
colocated in the Ingress) 1.40x the in-process p50 at concurrency 1 and 0.69x its saturation throughput; the staged
four-deployment app was 1.9x / 0.39x (~4-12 ms and the candidates' serialisation per hop); Starlette's
BaseHTTPMiddleware cost ~25% of throughput; a prototype with direct ingress (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
reached 1.16x / 0.97x, so Serve's proxy is most of what is left. 2026-11-29: the proxy ~15 ms CPU per request
(py-spy); Serve's logging/gRPC/router/GC switches no better; two Ingress replicas at num_cpus 0.5 (variant
staged+Ingress.autoscaling_config.min_replicas=2+Ingress.autoscaling_config.max_replicas=2+
Ingress.ray_actor_options.num_cpus=0.5) 0.71x vs 0.60x for one replica in the same run. 2026-12-01: Serve's
HAProxy mode (`haproxy`: HAProxy in C instead of the Python proxy, forwarding to the Ingress replica's own port;
what the README's `ray start` and jobs/demo.py now run) 1.16x / 0.75x vs 1.50x / 0.57x for the Python proxy in
the same run.

Method. Fresh artifacts in a private temporary RECSYS_HOME: a synthetic shop through `run_preprocess`, a Faiss index
of the base MiniLM (`model: default`) through `run_build_index`. Requests: {"history": the last --history-len item
ids of one of --distinct users, "k": 10}, no user_id, so both paths do the same work whatever the user-state store
holds. Serve: the app deployed from --serve-config (serve_configs/local.yaml: build_app, Ingress -> Retriever ->
Ranker -> Reranker, one replica each, its user_configs) the way `serve deploy` does, args pointed at the artifacts,
on a local Ray with num_cpus=2; called over HTTP/1.1 keep-alive (http.client, one connection per client thread)
from this process, which shares the 2 cores (its CPU per request is printed). Reference: the same stage code in one
process with the same user_configs, wired as the Ingress wires it: catalog filter, RetrievalModel.candidate_sources
+ merge_candidates (what Retriever.recommend_candidates runs), rank_candidates, rerank_candidates, RecsResponse;
torch on 1 thread as in a replica (OMP_NUM_THREADS=1). Latency: p50/p99 of --requests sequential requests after
--warmup. Saturation: the best req/s over --concurrency client threads (Serve), or over 1..4 caller threads and one
caller with torch on 2 threads (reference: the forward releases the GIL, so threads share both cores). Each path
runs alone in its own process (each Serve path on its own Ray); the answers' item ids are checked against the
reference's, and the CPU other processes used meanwhile is printed. The last two lines are the latency ratio and
the throughput ratio of the first --variants entry (default `staged+haproxy`: the app as configured, on a
cluster started as the README starts one; then `staged`, the same app behind Serve's Python proxy).
--breakdown: each stage's compute in the reference process; in the Serve process each deployment awaited through a
DeploymentHandle from the driver, GET /healthz (HTTP + FastAPI + one empty hop) and, under direct ingress, the
request through the proxy. Hop overhead = handle time - compute time.
--variants APP[+FLAG...]: APP staged (the app), or a prototype over the same stage code and the app's own Retriever
deployment: post (Ingress -> Retriever -> Post = rank + rules: 2 hops), fused (rank + rules in the Ingress: 1 hop),
single (everything in the Ingress: 0 hops). FLAG: opt = RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress, gRPC
between replicas, user code and router on each replica's main loop, buffered request logs), nolog (no access log),
haproxy = Serve's high-throughput mode as the product's clusters run it (recsys.runtime.SERVE_HIGH_THROUGHPUT_ENV:
the `opt` flags plus HAProxy on the proxy's port; the client calls HAProxy, as a storefront would),
NAME=VALUE (that environment variable), Deployment.key...=VALUE (a config override, e.g.
Retriever.user_config.batch_wait_timeout_s=0 or Ingress.max_ongoing_requests=8).

    .venv/bin/python bench/serve_bench.py [--quick] [--breakdown] [--variants staged,fused+opt,...]
        [--requests 300] [--warmup 30] [--concurrency 2,4,8,16] [--sat-requests 300] [--home DIR]
"""

# No `from __future__ import annotations`: FastAPI must see real classes on the prototype endpoints' signatures.
import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common import CHILD_ENV, cpu_by_process, say

from recsys.runtime import SERVE_HIGH_THROUGHPUT_ENV

K = 10
APPS = ("staged", "post", "fused", "single")
FLAGS = {"opt": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, "nolog": {}, "haproxy": SERVE_HIGH_THROUGHPUT_ENV}
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_configs" / "local.yaml"


def parse_variant(name: str) -> tuple[str, set[str], dict[str, str], dict[str, str]]:
    """'fused+opt+X=1+Retriever.max_ongoing_requests=4' -> (app, flags, environment, config overrides)."""
    app, *flags = name.split("+")
    pairs = [f.split("=", 1) for f in flags if "=" in f]
    env = {k: v for f in flags for k, v in FLAGS.get(f, {}).items()} | {k: v for k, v in pairs if "." not in k}
    if app not in APPS or any(f not in FLAGS and "=" not in f for f in flags):
        raise ValueError(f"variant {name!r}: want APP[+FLAG...] with APP in {APPS}, FLAG in {list(FLAGS)}, "
                         f"NAME=VALUE or Deployment.key=VALUE")
    return app, set(flags), env, {k: v for k, v in pairs if "." in k}


def serve_config(args, art: dict, overrides: dict[str, str]) -> dict:
    """--serve-config with its app's args pointed at the artifacts and the variant's overrides applied."""
    import yaml

    config = yaml.safe_load(Path(args.serve_config).read_text())
    app = config["applications"][0]
    app["args"].update({k: art[k] for k in ("index", "data", "query_max_length", "max_history_items")})
    app["args"].setdefault("user_state", {})["path"] = str(Path(art["data"]).parents[2] / "user_state.sqlite3")
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    for key, value in overrides.items():
        name, *path, last = key.split(".")
        node = deployments.setdefault(name, {"name": name})
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    app["deployments"] = list(deployments.values())
    return config


def deployment_options(config: dict, name: str) -> dict:
    return {k: v for d in config["applications"][0].get("deployments", []) if d["name"] == name
            for k, v in d.items() if k != "name"}


def colocated(config: dict) -> bool:
    """Whether the config's app runs its stages inside the Ingress (args.colocate_stages)."""
    return bool(config["applications"][0]["args"].get("colocate_stages", False))


def stage_user_configs(config: dict) -> dict:
    """Each stage's user_config: in the Ingress's when colocated, else on the stage's own deployment."""
    import copy

    from recsys.serve.colocated import STAGES, stage_user_config

    app = copy.deepcopy(config["applications"][0])   # stage_user_config adds what is missing
    return {n: stage_user_config(app, n) for n in STAGES}


# ---------------------------------------------------------------- the stage code, in one process


class Stages:
    """The stage code wired as the Ingress wires it for /v1/recommend, without Serve; also the prototypes' body."""

    def __init__(self, art: dict, user_configs: dict, retrieval: bool = True):
        from recsys.serve.catalog import CatalogLookup, load_popularity
        from recsys.serve.rank import parse_ranker_config
        from recsys.serve.rerank import parse_rules_config
        from recsys.serve.retrieve import RetrievalModel, parse_retriever_config

        data = Path(art["data"])
        self.art = art
        self.catalog = CatalogLookup.from_parquet(data / "catalog.parquet", rule_facts=True)
        _, self.counts = load_popularity(data / "popularity.parquet")
        self.max_popularity = float(max(self.counts.values(), default=0))
        self.ranker_cfg = parse_ranker_config(user_configs.get("Ranker"))
        self.rules = parse_rules_config(user_configs.get("Reranker"))
        self.sources = parse_retriever_config(user_configs.get("Retriever")).sources
        self.model = RetrievalModel(art["index"], data / "catalog.parquet", art["query_max_length"],
                                    art["max_history_items"], data_dir=data,
                                    embed_fresh_items=art["embed_fresh_items"]) if retrieval else None

    def usable(self, history: list[str]) -> list[str]:
        return [i for i in history if self.catalog.known(i)]

    def k_retrieve(self, k: int) -> int:
        return max(self.art["retrieval_k"], k)

    def quotas(self) -> dict[str, int]:
        return {name: source.quota for name, source in self.sources}

    def merge(self, by_source: dict, k: int) -> list[dict]:
        """What Retriever.recommend_candidates returns when a personal source found something, else []."""
        from recsys.serve.candidate_sources import PERSONAL_SOURCES, merge_candidates

        personal = any(by_source.get(s) for s in PERSONAL_SOURCES)
        return merge_candidates(by_source, self.sources, k) if personal else []

    def rank(self, cands: list[dict]) -> list[dict]:
        from recsys.serve.rank import rank_candidates

        return rank_candidates(cands, self.counts, self.ranker_cfg, self.max_popularity)

    def rerank(self, ranked: list[dict], usable: list[str], k: int) -> dict:
        from recsys.serve.rerank import rerank_candidates

        return rerank_candidates(ranked, usable, k, self.rules, self.catalog, now=datetime.now(timezone.utc))

    def response(self, out: dict):
        from recsys.schema import RecsResponse, ScoredItem

        return RecsResponse(items=[ScoredItem.model_validate(i) for i in out["items"]], cold_start=False,
                            model_version=self.art["model_version"], index_version=self.art["index_version"])

    def retrieve(self, usable: list[str], k: int) -> list[dict]:
        return self.merge(self.model.candidate_sources(usable, self.quotas()), k)

    def recommend(self, history: list[str], k: int = K):
        usable = self.usable(history)
        return self.response(self.rerank(self.rank(self.retrieve(usable, self.k_retrieve(k))), usable, k))


def run_reference(args, art: dict, requests: list[list[str]]) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    stages = Stages(art, art["user_configs"])
    out: dict = {"ids": [[i.item_id for i in stages.recommend(h).items] for h in requests]}
    say(f"reference: latency, {args.requests} requests after {args.warmup}")
    out["c1"] = run_load(lambda: stages.recommend, requests, 1, args.requests, args.warmup)
    out["sat"] = {f"{n} thread(s) x torch 1": run_load(lambda: stages.recommend, requests, n, args.sat_requests, 2)
                  for n in args.ref_threads}
    torch.set_num_threads(2)
    out["sat"]["1 thread x torch 2"] = run_load(lambda: stages.recommend, requests, 1, args.sat_requests, 2)
    if not args.quick:   # for information: the latency one request gets from both cores
        out["c1_torch2"] = run_load(lambda: stages.recommend, requests, 1, args.requests // 2, args.warmup)
    torch.set_num_threads(1)
    say("reference saturation: " + ", ".join(f"{n} {r['rps']:.1f} req/s" for n, r in out["sat"].items()))
    if args.breakdown:   # each stage on its own, split where the Serve path splits them
        m, quotas, kr = stages.model, stages.quotas(), stages.k_retrieve(K)
        times: dict[str, list] = {k: [] for k in ("filter", "encode", "sources", "merge", "rank", "rerank",
                                                  "response")}
        for history in itertools.islice(itertools.cycle(requests), 220):
            marks = [time.perf_counter()]
            usable = stages.usable(history)
            marks.append(time.perf_counter())
            vector = m.embedder.embed([m.history_text(usable)])[0]
            marks.append(time.perf_counter())
            by_source = m.candidate_sources(usable, quotas, vector)
            marks.append(time.perf_counter())
            cands = stages.merge(by_source, kr)
            marks.append(time.perf_counter())
            ranked = stages.rank(cands)
            marks.append(time.perf_counter())
            reranked = stages.rerank(ranked, usable, K)
            marks.append(time.perf_counter())
            stages.response(reranked)
            marks.append(time.perf_counter())
            for name, a, b in zip(times, marks, marks[1:]):
                times[name].append(b - a)
        out["stages_ms"] = {name: 1000 * float(np.median(v[20:])) for name, v in times.items()}
    return out


# ---------------------------------------------------------------- load generation


def run_load(make_call, requests: list, concurrency: int, total: int, warm_per_thread: int) -> dict:
    """`concurrency` threads, each with its own make_call() client, share `total` timed requests after a few
    untimed ones each: {"rps", "p50_ms", "p99_ms", "cpu_ms_per_req" (of this whole process)}."""
    import numpy as np

    counter, lat, errors = itertools.count(), [], []
    ready = threading.Barrier(concurrency + 1)

    def worker(w: int) -> None:
        try:
            call = make_call()
            for j in range(warm_per_thread):
                call(requests[(w + j * concurrency) % len(requests)])
        except BaseException as exc:   # noqa: BLE001 - raised below, after the barrier
            errors.append(exc)
        ready.wait()
        while not errors and (i := next(counter)) < total:
            t = time.perf_counter()
            try:
                call(requests[i % len(requests)])
            except BaseException as exc:   # noqa: BLE001
                errors.append(exc)
            lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for th in threads:
        th.start()
    ready.wait()
    cpu0, t0 = os.times(), time.perf_counter()
    for th in threads:
        th.join()
    elapsed, cpu1 = time.perf_counter() - t0, os.times()
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]!r}")
    ms = 1000 * np.array(lat)
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return {"rps": total / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "cpu_ms_per_req": 1000 * cpu / total}


RECONNECTS = itertools.count()   # keep-alive connections the server dropped (the request was sent again)


def http_client(port: int, path: str = "/v1/recommend", method: str = "POST"):
    """A keep-alive HTTP/1.1 connection -> call(body bytes) -> response bytes (raises on non-200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"content-type": "application/json"}

    def call(body: bytes | None, retry: bool = True) -> bytes:
        try:
            conn.request(method, path, body, headers)   # headers + body go out in one send: no Nagle delay
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            conn.close()
            if not retry:
                raise
            next(RECONNECTS)
            return call(body, retry=False)
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {data[:300]!r}")
        return data

    return call


# ---------------------------------------------------------------- Serve: the app, and the cut prototypes


def proto_app(art: dict, config: dict, app: str):
    """post / fused / single over Stages and the app's own Retriever deployment, with the config's options."""
    from fastapi import FastAPI
    from ray import serve

    from recsys.schema import RecommendRequest, RecsResponse
    from recsys.serve.retrieve import Retriever

    api, user_configs = FastAPI(), art["user_configs"]

    @serve.deployment
    class Post:
        def __init__(self):
            self.stages = Stages(art, user_configs, retrieval=False)

        def run(self, cands: list, usable: list[str], k: int) -> dict:
            return self.stages.rerank(self.stages.rank(cands), usable, k)

    @serve.deployment
    @serve.ingress(api)
    class Ingress:
        def __init__(self, retriever, post):
            self.stages = Stages(art, user_configs, retrieval=retriever is None)
            self.retriever, self.post = retriever, post

        @api.post("/v1/recommend", response_model=RecsResponse)
        async def recommend(self, req: RecommendRequest) -> RecsResponse:
            usable = self.stages.usable(req.history or [])
            kr = self.stages.k_retrieve(req.k)
            if self.retriever is not None:
                found = await self.retriever.recommend_candidates.remote(usable, kr)
                cands = found["candidates"] if found["personal"] else []
            else:
                cands = await asyncio.to_thread(self.stages.retrieve, usable, kr)
            if self.post is not None:
                out = await self.post.run.remote(cands, usable, req.k)
            else:
                out = self.stages.rerank(self.stages.rank(cands), usable, req.k)
            return self.stages.response(out)

        @api.get("/healthz")
        async def healthz(self) -> dict:   # as the app's: the first hop answers (none in `single`)
            return await self.retriever.info.remote() if self.retriever is not None else {}

    def named(deployment, name: str, like: str):   # the options the config gives deployment `like`
        opts = deployment_options(config, like)
        if like != name or name == "Ingress":   # the prototypes take the stages' configs through Stages
            opts.pop("user_config", None)
        return deployment.options(name=name, **opts)

    retriever = None if app == "single" else named(Retriever, "Retriever", "Retriever").bind(
        art["index"], str(Path(art["data"]) / "catalog.parquet"), art["query_max_length"], art["max_history_items"],
        data_dir=art["data"], embed_fresh_items=art["embed_fresh_items"])
    post = named(Post, "Post", "Ranker").bind() if app == "post" else None
    return named(Ingress, "Ingress", "Ingress").bind(retriever, post)


def deploy_config(config: dict, timeout_s: float = 300) -> None:
    """Hand a Serve config to the controller as `serve deploy` does (no dashboard here); wait until it runs."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while (status := serve.status().applications.get("recsys")) is None or status.status != "RUNNING":
        if status is not None and status.status == "DEPLOY_FAILED" or time.monotonic() > deadline:
            raise RuntimeError(f"Serve app not running: {status}")
        time.sleep(0.5)


def direct_ingress_port() -> int | None:
    """The Ingress replica's own HTTP port under direct ingress, else the proxy's."""
    import ray
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote())
    ports = [t.port for g in groups if str(g.protocol).endswith("HTTP") for t in g.targets]
    return ports[0] if ports else None


def run_serve(args, art: dict, requests: list[list[str]]) -> dict:
    import ray
    from ray import serve

    app_name, flags, _, overrides = parse_variant(args.variant)
    config = serve_config(args, art, overrides)
    logging_config = {"enable_access_log": False} if "nolog" in flags else None
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ray_env()})
    proxy_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    if app_name == "staged":
        if logging_config:
            config["applications"][0]["logging_config"] = logging_config
        deploy_config({"applications": config["applications"]})   # http_options: serve.start's above
    else:
        serve.run(proto_app(art, config, app_name), name="recsys", route_prefix="/", logging_config=logging_config)
    # Under HAProxy the client calls HAProxy on the proxy's port, as a storefront would; it forwards to the replica.
    port = proxy_port if "haproxy" in flags else direct_ingress_port() or proxy_port
    out = {"startup_s": time.perf_counter() - t0, "via": "direct ingress" if port != proxy_port else "proxy",
           # the shipped app with colocated stages has the hops of the `single` prototype: none
           "topology": "single" if app_name == "staged" and colocated(config) else app_name}
    settle = time.perf_counter()   # the controller keeps a core busy for a while after a deploy: let it finish
    while idle_cores(1.0) > 0.3 and time.perf_counter() - settle < 60:
        pass
    say(f"serve {args.variant}: up in {out['startup_s']:.0f}s, idle after {time.perf_counter() - settle:.0f}s more, "
        f"HTTP via {out['via']} (port {port})")
    bodies = [json.dumps({"history": h, "k": K}).encode() for h in requests]
    call = http_client(port)
    out["ids"] = [[i["item_id"] for i in json.loads(call(b))["items"]] for b in bodies]
    say(f"serve {args.variant}: latency, {args.requests} requests after {args.warmup}")
    cpu0 = cpu_by_process()
    out["c1"] = run_load(lambda: http_client(port), bodies, 1, args.requests, args.warmup)
    out["c1"]["cpu_ms"] = cpu_per_request(cpu0, cpu_by_process(), args.requests + args.warmup)
    if args.breakdown:
        out["c1"]["replica_ms"] = replica_times(args.requests)
    out["sat"] = {}
    for c in args.concurrency:
        cpu0 = cpu_by_process()
        out["sat"][f"c={c}"] = run_load(lambda: http_client(port), bodies, c, args.sat_requests, 2)
        out["sat"][f"c={c}"]["cpu_ms"] = cpu_per_request(cpu0, cpu_by_process(), args.sat_requests + 2 * c)
    say(f"serve {args.variant} saturation: " + ", ".join(f"{c} {r['rps']:.1f} req/s (p50 {r['p50_ms']:.0f} ms)"
                                                          for c, r in out["sat"].items()))
    out["reconnects"] = next(RECONNECTS)
    if args.breakdown:
        try:   # it calls stage methods by name: a renamed one costs the breakdown, not the measurement
            out["breakdown"] = serve_breakdown(args, out["topology"], art, requests, bodies, port, proxy_port)
        except Exception as exc:   # noqa: BLE001
            say(f"serve {args.variant}: breakdown failed: {exc!r}")
    with contextlib.suppress(Exception):   # handles made on the breakdown's closed loop cannot shut down cleanly
        serve.shutdown()
    ray.shutdown()
    return out


def cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    return {role: 1000 * (t - before.get(role, 0.0)) / requests for role, t in after.items()}


def replica_times(n: int) -> dict[str, float]:
    """Median ms of the last n /v1/recommend requests as Serve's access logs time them in the proxy and in each
    replica (joined by request id), and of per-request differences: proxy - Ingress, Ingress - its callees."""
    import re

    import numpy as np
    import ray

    line = re.compile(r"(?:proxy|recsys_(\w+)) \S+ (\S+) -- (?:POST /v1/recommend 200|CALL (\w+) OK) ([\d.]+)ms")
    by_request: dict[str, dict[str, float]] = {}
    for log in sorted(Path(ray._private.worker._global_node.get_logs_dir_path(), "serve").glob("*.log")):
        for m in line.finditer(log.read_text(errors="replace")):
            where = f"{m[1]}.{m[3]}" if m[3] else (m[1] or "proxy")
            by_request.setdefault(m[2], {})[where] = float(m[4])
    recent = [t for t in by_request.values() if "Ingress" in t][-n:]
    out = {k: float(np.median([t[k] for t in recent if k in t])) for k in {k for t in recent for k in t}}
    if recent and all("proxy" in t for t in recent):
        out["proxy - Ingress"] = float(np.median([t["proxy"] - t["Ingress"] for t in recent]))
    out["Ingress - callees"] = float(np.median([t["Ingress"] - sum(v for k, v in t.items() if "." in k)
                                                for t in recent])) if recent else 0.0
    out["requests"] = len(recent)
    return out


def serve_breakdown(args, app_name: str, art: dict, requests, bodies, port: int, proxy_port: int) -> dict:
    """Median ms at concurrency 1 of the HTTP paths and of each deployment called through a handle."""
    import numpy as np

    async def median_ms(fn) -> float:   # fn(i) -> an awaitable or a plain result
        times = []
        for i in range(10 + args.breakdown_requests):
            t = time.perf_counter()
            if hasattr(r := fn(i), "__await__"):
                await r
            times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times[10:]))

    async def measure() -> dict:
        # Awaited inside a loop: under RAY_SERVE_THROUGHPUT_OPTIMIZED the router runs on the caller's loop and
        # a blocking .result() outside one is refused.
        from ray import serve

        res = {"idle_cluster_cores": idle_cores(3.0)}
        if port != proxy_port:
            via_proxy = http_client(proxy_port)
            res["http_recommend_via_proxy"] = await median_ms(lambda i: via_proxy(bodies[i % len(bodies)]))
        health = http_client(port, "/healthz", "GET")
        res["http_healthz"] = await median_ms(lambda i: health(None))
        if app_name == "single":
            return res
        names = {"staged": ("Retriever", "Ranker", "Reranker"), "post": ("Retriever", "Post"), "fused": ("Retriever",)}
        h = {name: serve.get_deployment_handle(name, app_name="recsys") for name in names[app_name]}
        stages = Stages(art, art["user_configs"], retrieval=False)
        usable = [stages.usable(r) for r in requests]
        kr, m = stages.k_retrieve(K), len(requests)
        res["handle_info"] = await median_ms(lambda i: h["Retriever"].info.remote())
        retrieve = h["Retriever"].recommend_candidates
        res["handle_retriever"] = await median_ms(lambda i: retrieve.remote(usable[i % m], kr))
        from recsys.data.text import history_text_for_items

        texts = [history_text_for_items(u, stages.catalog.titles, art["max_history_items"]) for u in usable]
        res["handle_embed"] = await median_ms(lambda i: h["Retriever"].embed.remote(texts[i % m]))
        cands = [(await h["Retriever"].recommend_candidates.remote(u, kr))["candidates"] for u in usable]
        if "Post" in h:
            res["handle_post"] = await median_ms(lambda i: h["Post"].run.remote(cands[i % m], usable[i % m], K))
        if "Ranker" in h:
            ranked = [stages.rank(c) for c in cands]
            res["handle_ranker"] = await median_ms(lambda i: h["Ranker"].rank.remote(cands[i % m]))
            res["handle_reranker"] = await median_ms(
                lambda i: h["Reranker"].rerank.remote(ranked[i % m], usable[i % m], K))
            res["handle_rank_then_rerank"] = await median_ms(
                lambda i: h["Reranker"].rerank.remote(h["Ranker"].rank.remote(cands[i % m]), usable[i % m], K))
        return res

    return asyncio.run(measure())


# ---------------------------------------------------------------- artifacts, child processes, report


def ray_env() -> dict[str, str]:
    """Worker environment: the product's, plus PYTHONPATH when set (to bench another checkout of recsys)."""
    from recsys.runtime import worker_env

    return {**worker_env(), **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_artifacts(args) -> dict:
    """Synthetic shop -> preprocess -> MiniLM index, in $RECSYS_HOME; what both paths load, and the requests."""
    import ray

    from recsys.artifacts import read_manifest
    from recsys.data.config import PreprocessConfig
    from recsys.data.pipeline import run_preprocess
    from recsys.index.build import run_build_index
    from recsys.index.config import IndexConfig
    from recsys.serve.catalog import load_user_histories

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ray_env()})
    data = run_preprocess(PreprocessConfig.model_validate({
        "source": {"synthetic": {"n_users": args.users, "n_items": args.items, "seed": 0}},
        "ranking": {"enabled": False}, "num_partitions": 2}))
    index = run_build_index(IndexConfig(model="default", data=data["version"]))
    ray.shutdown()
    manifest = read_manifest(Path(index["path"]))
    data_config = read_manifest(Path(data["path"])).get("config", {})
    histories = load_user_histories(Path(data["path"]) / "sequences")
    return {"index": index["path"], "data": data["path"],
            # the app's own defaults for these two (app.resolve_serving_artifacts), given to both paths explicitly
            "query_max_length": int(manifest.get("query_max_length", 128)),
            "max_history_items": int(data_config.get("retrieval_pairs", {}).get("max_history_items", 8)),
            "index_version": str(manifest.get("version")), "model_version": str(manifest.get("model_version")),
            "requests": [histories[u][-args.history_len:] for u in sorted(histories) if histories[u]]}


def spawn(args, name: str, child_args: list[str], extra_env: dict) -> dict:
    """Run one child mode of this script in its own process; echo its progress lines; return its result plus
    `others_cores`: the CPU that processes outside its tree used meanwhile, in cores."""
    import psutil

    home = Path(os.environ["RECSYS_HOME"])
    result, log_path = home / f"{name}.json", home / f"{name}.log"
    result.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", *child_args,
                             "--result", str(result)], env={**os.environ, **CHILD_ENV, **extra_env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    ours: dict[int, float] = {}   # CPU seconds of each process of the child's tree, sampled until it exits

    def tree() -> list:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]

    def sample_our_cpu() -> None:
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for p in tree():
                    with contextlib.suppress(psutil.Error):
                        ours[p.pid] = sum(p.cpu_times()[:2])
            time.sleep(0.5)

    def kill_tree() -> None:   # the child and what it started (raylet, workers): only ours
        with contextlib.suppress(psutil.Error):
            for p in tree():
                with contextlib.suppress(psutil.Error):
                    p.kill()

    timer, sampler = threading.Timer(args.timeout, kill_tree), threading.Thread(target=sample_our_cpu, daemon=True)
    busy0, t0 = busy_cpu_seconds(), time.perf_counter()
    timer.start()
    sampler.start()
    try:
        with log_path.open("w") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if any(tag in line for tag in ("[bench]", "[build_index]", "[preprocess]")):
                    print(f"    {name} | {line.rstrip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:   # once reaped, its pid may be someone else's
            kill_tree()
    others = max(0.0, busy_cpu_seconds() - busy0 - sum(ours.values())) / (time.perf_counter() - t0)
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        say(f"{name} FAILED (exit code {proc.returncode}); last lines of {log_path}:\n{tail}")
        sys.exit(2)
    say(f"{name}: other processes kept {others:.2f} of {os.cpu_count()} cores busy meanwhile")
    return {**json.loads(result.read_text()), "others_cores": others}


def idle_cores(seconds: float) -> float:
    """Cores this machine keeps busy over `seconds` while nothing is asked of it (a Serve cluster's idle cost)."""
    busy0 = busy_cpu_seconds()
    time.sleep(seconds)
    return (busy_cpu_seconds() - busy0) / seconds


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have run (/proc/stat, guest time being inside user)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def best(sat: dict) -> tuple[str, dict]:
    return max(sat.items(), key=lambda kv: kv[1]["rps"])


def report(args, ref: dict, serve: dict[str, dict], wall: float) -> None:
    print(f"\n/v1/recommend, k={K}, {len(ref['ids'])} distinct histories of <= {args.history_len} items; "
          f"{os.cpu_count()} CPUs; latency: {args.requests} sequential requests after {args.warmup}; saturation: best "
          f"of the sweep, {args.sat_requests} requests each; others = cores other processes kept busy meanwhile")
    rows = [("in-process stage code, torch 1 thread", ref, "")]
    if "c1_torch2" in ref:
        rows.append(("  (c=1 with torch on 2 threads)", {"c1": ref["c1_torch2"]}, ""))
    rows += [(f"Serve {v} ({r['via']})", r, v) for v, r in serve.items()]
    ref_sat, w = best(ref["sat"])[1]["rps"], max(len(row[0]) for row in rows)
    print(f"{'path':<{w}} {'p50 ms':>7} {'p99 ms':>7} {'sat req/s':>9}  {'at':<21} {'others':>6}  ratios p50/p99/sat")
    for label, r, variant in rows:
        line = f"{label:<{w}} {r['c1']['p50_ms']:>7.1f} {r['c1']['p99_ms']:>7.1f}"
        if "sat" in r:
            at, sat = best(r["sat"])
            line += f" {sat['rps']:>9.1f}  {at:<21} {r['others_cores']:>6.2f}"
        if variant:
            line += (f"  {r['c1']['p50_ms'] / ref['c1']['p50_ms']:.2f}/{r['c1']['p99_ms'] / ref['c1']['p99_ms']:.2f}"
                     f"/{sat['rps'] / ref_sat:.2f}")
        print(line)
    for variant, r in serve.items():
        same = sum(a == b for a, b in zip(r["ids"], ref["ids"]))
        print(f"  Serve {variant}: {same}/{len(ref['ids'])} answers with the reference's item ids; client CPU "
              f"{r['c1']['cpu_ms_per_req']:.2f} ms/request at c=1, {best(r['sat'])[1]['cpu_ms_per_req']:.2f} at "
              f"saturation; Ray + app start {r['startup_s']:.0f}s; {r['reconnects']} dropped connections")
    if args.breakdown:
        report_breakdown(ref, serve)
    first, name = serve[args.variants[0]], args.variants[0]
    print(f"bench wall time {wall:.0f}s")
    print(f"latency ratio serve_{name}_p50 / in_process_p50 at concurrency 1 = "
          f"{first['c1']['p50_ms'] / ref['c1']['p50_ms']:.2f} (goal <= 1.5)")
    print(f"throughput ratio serve_{name} / in_process at saturation = {best(first['sat'])[1]['rps'] / ref_sat:.2f} "
          f"(goal >= 0.7)")


def report_breakdown(ref: dict, serve: dict[str, dict]) -> None:
    st = ref["stages_ms"]
    print("\nwhere the time goes at concurrency 1 (medians, ms); stage compute in the reference process: "
          + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))
    print(f"  reference CPU ms per request: {ref['c1']['cpu_ms_per_req']:.1f} at c=1, "
          f"{best(ref['sat'])[1]['cpu_ms_per_req']:.1f} at saturation ({best(ref['sat'])[0]})")
    compute = {"Retriever": st["encode"] + st["sources"] + st["merge"], "Ranker": st["rank"],
               "Reranker": st["rerank"], "Post": st["rank"] + st["rerank"]}
    for variant, r in serve.items():
        b, app, http_ms = r.get("breakdown"), r.get("topology", parse_variant(variant)[0]), r["c1"]["p50_ms"]
        if not b:
            continue
        print(f"  Serve {variant}: POST /v1/recommend {http_ms:.2f} = in-process {ref['c1']['p50_ms']:.2f} "
              f"{http_ms - ref['c1']['p50_ms']:+.2f}")
        if "http_recommend_via_proxy" in b:
            print(f"    the same through the proxy: {b['http_recommend_via_proxy']:.2f} (proxy "
                  f"{b['http_recommend_via_proxy'] - http_ms:+.2f})")
        print(f"    idle, the cluster (and anything else running) kept {b['idle_cluster_cores']:.2f} cores busy")
        if rt := r["c1"].get("replica_ms"):
            print(f"    Serve's access logs, medians over {rt.pop('requests')} requests: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(rt.items())))
        for label, run in (("c=1", r["c1"]), (f"saturation ({best(r['sat'])[0]})", best(r["sat"])[1])):
            cpu = {k.removeprefix("ray::").removeprefix("ServeReplica:recsys:"): v for k, v in run["cpu_ms"].items()}
            print(f"    CPU ms per request at {label}: total {sum(cpu.values()):.1f} = "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05))
        if "handle_embed" in b:
            print(f"    Retriever.embed (the batched encoder alone) handle {b['handle_embed']:.2f} - compute "
                  f"{st['encode']:.2f} = {b['handle_embed'] - st['encode']:.2f}")
        hop = b.get("handle_info", 0.0)
        path = {"HTTP+FastAPI": b["http_healthz"] - hop}
        print(f"    GET /healthz {b['http_healthz']:.2f} = HTTP + FastAPI ingress {path['HTTP+FastAPI']:.2f}"
              + (f" + an empty hop (Retriever.info) {hop:.2f}" if hop else ""))
        for stage in ("Retriever", "Ranker", "Reranker", "Post"):
            if (t := b.get(f"handle_{stage.lower()}")) is not None:
                print(f"    {stage:<9} handle {t:6.2f} - compute {compute[stage]:6.2f} = hop {t - compute[stage]:5.2f}")
                path[stage] = t
        if "handle_rank_then_rerank" in b:
            print(f"    Ranker -> Reranker, the Ranker's response passed on (as the Ingress does) "
                  f"{b['handle_rank_then_rerank']:.2f} vs {path.pop('Ranker') + path.pop('Reranker'):.2f} apart")
            path["rank->rerank"] = b["handle_rank_then_rerank"]
        inline = {"staged": (), "post": (), "fused": ("rank", "rerank"),
                  "single": ("encode", "sources", "merge", "rank", "rerank")}[app]
        path.update({f"{stage} in Ingress": st[stage] for stage in ("filter", *inline, "response")})
        print("    = " + " + ".join(f"{k} {v:.2f}" for k, v in path.items())
              + f" + rest {http_ms - sum(path.values()):+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--requests", type=int, default=300, help="timed sequential requests (latency at concurrency 1)")
    add("--warmup", type=int, default=30, help="untimed requests before them")
    add("--concurrency", default="2,4,8,16", help="HTTP client threads, one saturation level each")
    add("--ref-threads", default="1,2,3,4", help="reference caller threads, one saturation level each")
    add("--sat-requests", type=int, default=300, help="timed requests per saturation level")
    add("--variants", default="staged+haproxy,staged",
        help="Serve paths, comma-separated (see above); the first one's ratios are printed last")
    add("--serve-config", default=str(DEFAULT_CONFIG), help="Serve config file whose first app is measured")
    add("--breakdown", action="store_true", help="per-stage and per-hop times at concurrency 1")
    add("--breakdown-requests", type=int, default=100)
    add("--distinct", type=int, default=64, help="distinct users' histories cycled as requests")
    add("--history-len", type=int, default=20, help="most recent items sent per request")
    add("--users", type=int, default=300, help="synthetic users (preprocess)")
    add("--items", type=int, default=1000, help="synthetic catalog items (= index size)")
    add("--home", help="build the artifacts in this RECSYS_HOME once and reuse them on later runs")
    add("--timeout", type=float, default=900, help="seconds per child process")
    add("--quick", action="store_true", help="smoke run: few requests, one saturation level each")
    for hidden in ("--child", "--variant", "--artifacts", "--result"):
        add(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup, args.sat_requests, args.breakdown_requests = 40, 10, 40, 20
        args.concurrency, args.ref_threads, args.distinct = "8", "2", 16
    args.concurrency, args.ref_threads = ([int(c) for c in a.split(",")] for a in (args.concurrency, args.ref_threads))
    args.variants = args.variants.split(",")
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as exc:
            parser.error(str(exc))
    if args.child == "build":
        Path(args.result).write_text(json.dumps(build_artifacts(args)))
        return
    if args.child:
        art = json.loads(Path(args.artifacts).read_text())
        # The stages' user_configs and retrieval_k as the measured config sets them (each variant's overrides).
        config = serve_config(args, art, parse_variant(args.variant or args.variants[0])[3])
        app_args = config["applications"][0]["args"]
        art["retrieval_k"] = int(app_args.get("retrieval_k", 100))
        art["embed_fresh_items"] = bool(app_args.get("embed_fresh_items", True))
        art["user_configs"] = stage_user_configs(config)
        run = run_reference if args.child == "ref" else run_serve
        Path(args.result).write_text(json.dumps(run(args, art, art["requests"][:args.distinct])))
        return

    wall0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        home = args.home or stack.enter_context(tempfile.TemporaryDirectory(prefix="serve_bench_"))
        Path(home).mkdir(parents=True, exist_ok=True)
        os.environ["RECSYS_HOME"] = home   # private: the user's artifacts are never read or written
        art_path = Path(home) / "serve_bench_artifacts.json"
        say(f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if not art_path.is_file():
            say(f"artifacts: {args.users} synthetic users, {args.items} items, MiniLM index in {home}")
            art_path.write_text(json.dumps(spawn(args, "build", ["build"], {})))
        say("reference: the stage code in one process")
        ref = spawn(args, "ref", ["ref", "--artifacts", str(art_path)], {})
        serve = {}
        for v in args.variants:
            say(f"serve {v}: starting Ray + Serve, environment {parse_variant(v)[2]}, overrides {parse_variant(v)[3]}")
            serve[v] = spawn(args, f"serve-{v}", ["serve", "--variant", v, "--artifacts", str(art_path)],
                             parse_variant(v)[2])
    report(args, ref, serve, time.perf_counter() - wall0)


if __name__ == "__main__":
    main()
