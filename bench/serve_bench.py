"""Serving: POST /v1/recommend over real HTTP through the Ray Serve app vs the same stage code in one process.

FINDINGS: not yet measured on a quiet machine (the first full run, 2026-11-28, shared the 2 cores with the test
suite and was stopped); a run's closing lines give its numbers.

Method. Fresh artifacts in a private temporary RECSYS_HOME: a synthetic shop through `run_preprocess`, a Faiss index
of the base MiniLM (`model: default`) through `run_build_index`. Requests: {"history": the last --history-len item
ids of one of --distinct users, "k": 10}, no user_id, so both paths do the same work whatever the user-state store
holds. Serve: `build_app` (Ingress -> Retriever -> Ranker -> Reranker, one replica each) on a local Ray with
num_cpus=2, over HTTP/1.1 keep-alive (http.client, a connection per client thread) from this process, which shares
the 2 cores (its CPU per request is printed). Reference: the same stage code in one process, wired as the Ingress
wires it (catalog filter, `RetrievalModel.recommend` with the same model, index, query and history lengths,
`rank_candidates`, `rerank_candidates` with the default RankerConfig / RulesConfig that the app runs without a
user_config, the RecsResponse model), torch on 1 thread as in a replica (OMP_NUM_THREADS=1). Latency: p50/p99 of
--requests sequential requests after --warmup. Saturation: the best req/s over --concurrency client threads
(Serve) or 1..4 caller threads plus one caller with torch on 2 threads (reference: the forward releases the GIL,
so threads use both cores). Each path runs alone in its own process (each Serve path with its own Ray); item ids
of the answers are checked against the reference's. The last two lines: latency ratio, then throughput ratio, of
the first --variants entry (default `staged`: the app as shipped).
--breakdown: each stage's compute in the reference process; in the Serve process each deployment awaited through a
DeploymentHandle from the driver, GET /healthz (HTTP + FastAPI + one empty hop) and, under direct ingress, the
request through the proxy. Hop overhead = handle time - compute time.
--variants APP[+FLAG...]: APP staged (repo app), or prototypes defined here over the same stage code: post (Ingress
-> Retriever -> Post = rank + rules: 2 hops), fused (rank + rules in the Ingress: 1 hop), single (all in the
Ingress: 0 hops). FLAG: opt = RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress, gRPC between replicas, user code
and router on the replica's main loop, buffered request logs), optproxy (the same minus direct ingress), direct,
grpc, mainloop (one of them each), nolog (no access log), batch (prototypes: @serve.batch over the encoder).

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

from common import CHILD_ENV, say

K = 10
APPS = ("staged", "post", "fused", "single")
FLAGS = {"opt": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, "nolog": {}, "batch": {}}   # or NAME=VALUE: that env var


def parse_variant(name: str) -> tuple[str, set[str], dict[str, str]]:
    """'fused+opt+RAY_SERVE_ENABLE_DIRECT_INGRESS=0' -> (app, flags, environment of its Serve process)."""
    app, *flags = name.split("+")
    env = {k: v for f in flags for k, v in (FLAGS.get(f) or dict([f.split("=", 1)] if "=" in f else [])).items()}
    if app not in APPS or any(f not in FLAGS and "=" not in f for f in flags) or ("batch" in flags and app == "staged"):
        raise ValueError(f"variant {name!r}: want APP[+FLAG...] with APP in {APPS}, FLAG in {list(FLAGS)} or "
                         f"NAME=VALUE (batch: prototype apps only)")
    return app, set(flags), env


# ---------------------------------------------------------------- the stage code, in one process


class Stages:
    """The stage code wired as Ingress.recommend wires it, without Serve. Also the body of the prototypes."""

    def __init__(self, art: dict, retrieval: bool = True):
        from recsys.models.ranker import RankerConfig
        from recsys.serve.catalog import CatalogLookup, load_popularity
        from recsys.serve.retrieve import RetrievalModel
        from recsys.serve.rules_config import RulesConfig

        data = Path(art["data_dir"])
        self.art = art
        self.catalog = CatalogLookup.from_parquet(data / "catalog.parquet", rule_facts=True)
        _, self.counts = load_popularity(data / "popularity.parquet")
        self.max_popularity = float(max(self.counts.values(), default=0))
        self.ranker_cfg, self.rules = RankerConfig(), RulesConfig()
        self.model = RetrievalModel(art["index_dir"], data / "catalog.parquet", art["query_max_length"],
                                    art["max_history_items"]) if retrieval else None

    def usable(self, history: list[str]) -> list[str]:
        return [i for i in history if self.catalog.known(i)]

    def k_retrieve(self, k: int) -> int:
        return max(self.art["retrieval_k"], k)

    def rank(self, retrieved: list) -> list[dict]:
        from recsys.serve.rank import rank_candidates

        cands = [{"item_id": i, "retrieval_score": s, "source": "ann"} for i, s in retrieved]
        return rank_candidates(cands, self.counts, self.ranker_cfg, self.max_popularity)

    def rerank(self, ranked: list[dict], usable: list[str], k: int) -> dict:
        from recsys.serve.rerank import rerank_candidates

        return rerank_candidates(ranked, usable, k, self.rules, self.catalog, now=datetime.now(timezone.utc))

    def response(self, out: dict):
        from recsys.schema import RecsResponse, ScoredItem

        return RecsResponse(items=[ScoredItem.model_validate(i) for i in out["items"]], cold_start=False,
                            model_version=self.art["model_version"], index_version=self.art["index_version"])

    def recommend(self, history: list[str], k: int = K):
        usable = self.usable(history)
        retrieved = self.model.recommend(usable, self.k_retrieve(k))
        return self.response(self.rerank(self.rank(retrieved), usable, k))


def run_reference(args, art: dict, requests: list[list[str]]) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    stages = Stages(art)
    ids = [[i.item_id for i in stages.recommend(h).items] for h in requests]
    out = {"ids": ids}
    say(f"reference: latency, {args.requests} requests after {args.warmup}")
    out["c1"] = run_load(lambda: stages.recommend, requests, 1, args.requests, args.warmup)
    sat = {}
    for threads in args.ref_threads:
        sat[f"{threads} thread(s) x torch 1"] = run_load(lambda: stages.recommend, requests, threads,
                                                         args.sat_requests, 2)
    torch.set_num_threads(2)
    sat["1 thread x torch 2"] = run_load(lambda: stages.recommend, requests, 1, args.sat_requests, 2)
    if not args.quick:
        out["c1_torch2"] = run_load(lambda: stages.recommend, requests, 1, args.requests // 2, args.warmup)
    torch.set_num_threads(1)
    for name, r in sat.items():
        say(f"reference saturation {name}: {r['rps']:.1f} req/s")
    out["sat"] = sat
    if args.breakdown:   # each stage on its own, as the Serve path splits them
        m, t = stages.model, {k: [] for k in ("filter+text", "encode", "faiss", "rank", "rerank", "response")}
        for h in (requests * (1 + 200 // len(requests)))[:200]:
            c = [time.perf_counter()]
            usable = stages.usable(h)
            text = m.history_text(usable)
            c.append(time.perf_counter())
            vec = m.embedder.embed([text])
            c.append(time.perf_counter())
            scores, item_ids = m.index.search(vec, stages.k_retrieve(K))
            retrieved = list(zip(item_ids[0], map(float, scores[0])))
            c.append(time.perf_counter())
            ranked = stages.rank(retrieved)
            c.append(time.perf_counter())
            reranked = stages.rerank(ranked, usable, K)
            c.append(time.perf_counter())
            stages.response(reranked)
            c.append(time.perf_counter())
            for name, a, b in zip(t, c, c[1:]):
                t[name].append(b - a)
        out["stages_ms"] = {name: 1000 * float(np.median(v[20:])) for name, v in t.items()}
    return out


# ---------------------------------------------------------------- load generation


def run_load(make_call, requests: list, concurrency: int, total: int, warm_per_thread: int) -> dict:
    """`concurrency` threads, each with its own make_call() client, share `total` timed requests after a few
    untimed ones each: {"rps", "p50_ms", "p99_ms", "cpu_ms_per_req" (this process)}."""
    import numpy as np

    counter, lat, errors = itertools.count(), [], []
    ready = threading.Barrier(concurrency + 1)

    def worker(w: int) -> None:
        try:
            call = make_call()
            for j in range(warm_per_thread):
                call(requests[(w + j * concurrency) % len(requests)])
        except BaseException as exc:   # noqa: BLE001 - reported below, after the barrier
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
    return {"rps": total / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "concurrency": concurrency, "cpu_ms_per_req": 1000 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system)
            / total}


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


# ---------------------------------------------------------------- Serve: the app as shipped, and the cut prototypes


def proto_app(art: dict, app: str, batch: bool):
    """post / fused / single: the cuts, as thin Serve shells over Stages (the same stage code)."""
    from fastapi import FastAPI
    from ray import serve

    from recsys.schema import RecommendRequest, RecsResponse

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Retriever:
        def __init__(self, art: dict, batch: bool):
            self.stages, self.batch = Stages(art), batch

        async def recommend(self, usable: list[str], k: int) -> list:
            if self.batch:
                return await self.recommend_batched((usable, k))
            return await asyncio.to_thread(self.stages.model.recommend, usable, k)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
        async def recommend_batched(self, reqs: list) -> list:
            model = self.stages.model
            texts = [model.history_text(h) for h, _ in reqs]   # one encoder forward for the whole batch
            found = await asyncio.to_thread(model.retrieve, [t or "-" for t in texts], max(k for _, k in reqs))
            return [f[:k] if t else [] for f, t, (_, k) in zip(found, texts, reqs)]

        def info(self) -> dict:
            return {}

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Post:
        def __init__(self, art: dict):
            self.stages = Stages(art, retrieval=False)

        def run(self, retrieved: list, usable: list[str], k: int) -> dict:
            return self.stages.rerank(self.stages.rank(retrieved), usable, k)

    @serve.deployment(ray_actor_options={"num_cpus": 0.25 if app != "single" else 0.75})
    @serve.ingress(api)
    class Ingress:
        def __init__(self, art: dict, retriever, post):
            self.stages = Stages(art, retrieval=retriever is None)
            self.retriever, self.post = retriever, post
            self.local = Retriever.func_or_class(art, batch) if retriever is None else None

        @api.post("/v1/recommend", response_model=RecsResponse)
        async def recommend(self, req: RecommendRequest) -> RecsResponse:
            usable = self.stages.usable(req.history or [])
            k_retrieve = self.stages.k_retrieve(req.k)
            if self.retriever is not None:
                retrieved = await self.retriever.recommend.remote(usable, k_retrieve)
            else:
                retrieved = await self.local.recommend(usable, k_retrieve)
            if self.post is not None:
                out = await self.post.run.remote(retrieved, usable, req.k)
            else:
                out = self.stages.rerank(self.stages.rank(retrieved), usable, req.k)
            return self.stages.response(out)

        @api.get("/healthz")
        async def healthz(self) -> dict:   # as the app's: the first hop answers (none in `single`)
            return await self.retriever.info.remote() if self.retriever is not None else {}

    retriever = None if app == "single" else Retriever.options(name="Retriever").bind(art, batch)
    post = Post.options(name="Post").bind(art) if app == "post" else None
    return Ingress.options(name="Ingress").bind(art, retriever, post)


def direct_ingress_port() -> int | None:
    """The Ingress replica's own HTTP port under direct ingress (the proxy still listens on the usual one)."""
    import ray
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote())
    ports = [t.port for g in groups if str(g.protocol).endswith("HTTP") for t in g.targets]
    return ports[0] if ports else None


def run_serve(args, art: dict, requests: list[list[str]]) -> dict:
    import ray
    from ray import serve

    app_name, flags, _ = parse_variant(args.variant)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ray_env()})
    proxy_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    if app_name == "staged":
        from recsys.serve.app import build_app

        app = build_app({"index": art["index_dir"], "data": art["data_dir"], "retrieval_k": art["retrieval_k"],
                         "query_max_length": art["query_max_length"], "max_history_items": art["max_history_items"]})
    else:
        app = proto_app(art, app_name, "batch" in flags)
    serve.run(app, name="recsys", route_prefix="/",
              logging_config={"enable_access_log": False} if "nolog" in flags else None)
    port = direct_ingress_port() or proxy_port   # without direct ingress the targets are the proxies
    out = {"startup_s": time.perf_counter() - t0, "via": "direct ingress" if port != proxy_port else "proxy"}
    say(f"serve {args.variant}: up in {out['startup_s']:.0f}s, HTTP via {out['via']} (port {port})")
    bodies = [json.dumps({"history": h, "k": K}).encode() for h in requests]
    call = http_client(port)
    out["ids"] = [[i["item_id"] for i in json.loads(call(b))["items"]] for b in bodies]
    say(f"serve {args.variant}: latency, {args.requests} requests after {args.warmup}")
    out["c1"] = run_load(lambda: http_client(port), bodies, 1, args.requests, args.warmup)
    out["sat"] = {}
    for c in args.concurrency:
        out["sat"][f"c={c}"] = r = run_load(lambda: http_client(port), bodies, c, args.sat_requests, 2)
        say(f"serve {args.variant} concurrency {c}: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms")
    out["reconnects"] = next(RECONNECTS)
    if args.breakdown:
        try:   # it calls stage methods by name: a renamed one costs the breakdown, not the measurement
            out["breakdown"] = serve_breakdown(args, app_name, requests, bodies, port, proxy_port)
        except Exception as exc:   # noqa: BLE001
            say(f"serve {args.variant}: breakdown failed: {exc!r}")
    with contextlib.suppress(Exception):   # handles made on the breakdown's closed loop cannot shut down cleanly
        serve.shutdown()
    ray.shutdown()
    return out


def serve_breakdown(args, app_name: str, requests, bodies, port: int, proxy_port: int) -> dict:
    """Median ms at concurrency 1 of the HTTP paths and of each deployment called through a handle."""
    import numpy as np

    n = args.breakdown_requests

    async def median_ms(fn) -> float:   # fn(i) -> awaitable or plain result
        times = []
        for i in range(10 + n):
            t = time.perf_counter()
            r = fn(i)
            if asyncio.iscoroutine(r) or hasattr(r, "__await__"):
                await r
            times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times[10:]))

    async def measure() -> dict:
        # Handles are awaited inside a loop: under RAY_SERVE_THROUGHPUT_OPTIMIZED the router runs on the
        # caller's loop and a blocking .result() outside one is refused.
        from ray import serve

        res = {}
        if port != proxy_port:
            via_proxy = http_client(proxy_port)
            res["http_recommend_via_proxy"] = await median_ms(lambda i: via_proxy(bodies[i % len(bodies)]))
        health = http_client(port, "/healthz", "GET")
        res["http_healthz"] = await median_ms(lambda i: health(None))
        if app_name == "single":
            return res
        handle = {name: serve.get_deployment_handle(name, app_name="recsys")
                  for name in {"staged": ("Retriever", "Ranker", "Reranker"), "post": ("Retriever", "Post"),
                               "fused": ("Retriever",)}[app_name]}
        res["handle_info"] = await median_ms(lambda i: handle["Retriever"].info.remote())
        stages = Stages(json.loads(Path(args.artifacts).read_text()), retrieval=False)
        usable = [stages.usable(h) for h in requests]
        kr, m = stages.k_retrieve(K), len(requests)
        res["handle_retriever"] = await median_ms(lambda i: handle["Retriever"].recommend.remote(usable[i % m], kr))
        retrieved = [await handle["Retriever"].recommend.remote(u, kr) for u in usable]
        if "Post" in handle:
            post = handle["Post"]
            res["handle_post"] = await median_ms(lambda i: post.run.remote(retrieved[i % m], usable[i % m], K))
        if "Ranker" in handle:
            ranker, reranker = handle["Ranker"], handle["Reranker"]
            cands = [[{"item_id": i, "retrieval_score": s, "source": "ann"} for i, s in r] for r in retrieved]
            ranked = [stages.rank(r) for r in retrieved]
            res["handle_ranker"] = await median_ms(lambda i: ranker.rank.remote(cands[i % m]))
            res["handle_reranker"] = await median_ms(lambda i: reranker.rerank.remote(ranked[i % m], usable[i % m], K))
            res["handle_rank_then_rerank"] = await median_ms(
                lambda i: reranker.rerank.remote(ranker.rank.remote(cands[i % m]), usable[i % m], K))
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
    users = sorted(u for u, h in histories.items() if h)   # the first --distinct are sent
    return {"index_dir": index["path"], "data_dir": data["path"], "retrieval_k": 100,
            # the app's own defaults for these two (app.resolve_serving_artifacts), passed explicitly to both paths
            "query_max_length": int(manifest.get("query_max_length", 128)),
            "max_history_items": int(data_config.get("retrieval_pairs", {}).get("max_history_items", 8)),
            "index_version": str(manifest.get("version")), "model_version": str(manifest.get("model_version")),
            "requests": [histories[u][-args.history_len:] for u in users]}


def spawn(args, name: str, child_args: list[str], extra_env: dict) -> dict:
    """Run one child mode of this script in its own process; echo its progress lines; return its result."""
    import psutil

    home = Path(os.environ["RECSYS_HOME"])
    result, log_path = home / f"{name}.json", home / f"{name}.log"
    result.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", *child_args,
                             "--result", str(result)], env={**os.environ, **CHILD_ENV, **extra_env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")

    def kill_tree() -> None:   # the child and what it started (raylet, workers): only ours
        with contextlib.suppress(psutil.Error):
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()

    ours: dict[int, float] = {}   # CPU seconds of each process of the child's tree, sampled until it exits

    def sample_our_cpu() -> None:
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        ours[p.pid] = sum(p.cpu_times()[:2])
            time.sleep(0.5)

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


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have run (/proc/stat: all but idle and iowait)."""
    import psutil

    t = psutil.cpu_times()   # guest time is already inside user; steal is time this VM did not run at all
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def best(sat: dict) -> tuple[str, dict]:
    return max(sat.items(), key=lambda kv: kv[1]["rps"])


def report(args, art: dict, ref: dict, serve: dict[str, dict], wall: float) -> None:
    print(f"\n/v1/recommend, k={K}, {len(ref['ids'])} distinct histories of <= {args.history_len} items, "
          f"retrieval_k {art['retrieval_k']}, query_max_length {art['query_max_length']}; {os.cpu_count()} CPUs; "
          f"latency: {args.requests} sequential requests after {args.warmup}; saturation: best of the sweep, "
          f"{args.sat_requests} requests each; others = cores kept busy by other processes while the path ran")
    rows = [("in-process stage code, torch 1 thread", ref, "")]
    if "c1_torch2" in ref:   # for information: a lower latency bought with both cores
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
    compute = {"Retriever": st["filter+text"] + st["encode"] + st["faiss"], "Ranker": st["rank"],
               "Reranker": st["rerank"], "Post": st["rank"] + st["rerank"]}
    for variant, r in serve.items():
        b, app, http_ms = r.get("breakdown"), parse_variant(variant)[0], r["c1"]["p50_ms"]
        if not b:
            continue
        print(f"  Serve {variant}: POST /v1/recommend {http_ms:.2f} = in-process {ref['c1']['p50_ms']:.2f} "
              f"{http_ms - ref['c1']['p50_ms']:+.2f}")
        if "http_recommend_via_proxy" in b:
            print(f"    the same through the proxy: {b['http_recommend_via_proxy']:.2f} (proxy "
                  f"{b['http_recommend_via_proxy'] - http_ms:+.2f})")
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
                  "single": ("filter+text", "encode", "faiss", "rank", "rerank")}[app]
        path.update({f"{stage} in Ingress": st[stage] for stage in (*inline, "response")})
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
    add("--variants", default="staged", help="Serve paths, comma-separated (see above); the first one's ratios "
        "are printed last")
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
    if args.child:
        if args.child == "build":
            result = build_artifacts(args)
        else:
            art = json.loads(Path(args.artifacts).read_text())
            result = (run_reference if args.child == "ref" else run_serve)(args, art, art["requests"][:args.distinct])
        Path(args.result).write_text(json.dumps(result))
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
        art = json.loads(art_path.read_text())
        say("reference: the stage code in one process")
        ref = spawn(args, "ref", ["ref", "--artifacts", str(art_path)], {})
        serve = {}
        for v in args.variants:
            say(f"serve {v}: starting Ray + Serve, environment {parse_variant(v)[2]}")
            serve[v] = spawn(args, f"serve-{v}", ["serve", "--variant", v, "--artifacts", str(art_path)],
                             parse_variant(v)[2])
    report(args, art, ref, serve, time.perf_counter() - wall0)


if __name__ == "__main__":
    main()
