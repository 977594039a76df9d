"""Served quality: what the HTTP API answers on data the service never saw, beside the offline numbers of
the same model and index, in one run.

    # search: the data version's held-out queries (preprocess's split.search_holdout_fraction: training,
    # hard negatives and catalog queries never read them), answered by POST /v1/search
    .venv/bin/python bench/served_quality.py search --data <version> --index <version>
    .venv/bin/python bench/served_quality.py search --url http://127.0.0.1:8000 ...   # a running deployment

Without --url the bench starts a local Ray, deploys --serve-config (default serve_configs/local.yaml) with
its args pointed at --data and --index (plus any --set Deployment.key=value), replays the queries over
real HTTP and shuts it down. Each answer is scored as evaluate_search scores a ranking: graded NDCG@K
(gain = relevance - 1, unjudged = 0) and Recall@K over pairs judged >= 2.5, over the index's items.
Offline, the same index answers the same queries in this process: its model's query vectors against the
index's stored item vectors (dense), its stored BM25 (bm25), and both fused as the Retriever fuses them
(hybrid, the served config's `search` settings). The served row is last, with its ratio to BM25.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from common import say  # noqa: E402

NOT_RETURNED = 10 ** 9   # the rank of a judged item the answer left out: beyond every cut-off


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["search"])
    p.add_argument("--data", default="latest", help="data version (its catalog and holdout fraction)")
    p.add_argument("--index", default="latest", help="index version the service serves")
    p.add_argument("--judgments", default=str(REPO.parent / "shared/data/homedepot"),
                   help="graded judgments: the Home Depot directory or a query,item_id,relevance file")
    p.add_argument("--search-ranker", default=None,
                   help="serve args search_ranker: a version from jobs/train_search_ranker.py, or 'latest'")
    p.add_argument("--url", default=None, help="a running deployment instead of deploying one here")
    p.add_argument("--serve-config", default=str(REPO / "serve_configs/local.yaml"))
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="serve args override, e.g. query_quantize=int8")
    p.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                   help="override in the Serve config, e.g. Ingress.user_config.Ranker.search.popularity_weight=0.1")
    p.add_argument("--max-queries", type=int, default=None, help="a seeded sample of the held-out queries")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50])
    return p.parse_args(argv)


def held_out_queries(args: argparse.Namespace, item_ids: list[str]):
    """EvalQueries over the index's item positions, exactly as evaluate_search picks them."""
    from recsys.artifacts import read_manifest, resolve_artifact
    from recsys.eval.search import held_out_judgments, holdout_fraction, read_judgments

    data_dir = resolve_artifact("data", args.data)
    judgments, _ = read_judgments(args.judgments)
    return held_out_judgments(judgments, {item: p for p, item in enumerate(item_ids)},
                              holdout_fraction(read_manifest(data_dir)), max_queries=args.max_queries)


def served_config(args: argparse.Namespace) -> dict:
    """The Serve config file with its app's artifacts set and the --set overrides applied."""
    import yaml

    from recsys.artifacts import resolve_artifact

    config = yaml.safe_load(Path(args.serve_config).read_text())
    app = config["applications"][0]
    app["args"].update({"index": str(resolve_artifact("indexes", args.index)),
                        "data": str(resolve_artifact("data", args.data)), "seed_user_state": False,
                        "search_ranker": args.search_ranker and str(resolve_artifact("rankers", args.search_ranker))})
    for item in args.arg:
        key, value = item.split("=", 1)
        app["args"][key] = yaml.safe_load(value)
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    for item in args.set:
        key, value = item.split("=", 1)
        name, *path, last = key.split(".")
        node = deployments.setdefault(name, {"name": name})
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    app["deployments"] = list(deployments.values())
    return config


def search_settings(config: dict):
    """The Retriever's `search` fusion settings in a Serve config (either topology)."""
    from recsys.index.hybrid import HybridSearchConfig
    from recsys.serve.colocated import stage_user_config

    return HybridSearchConfig.model_validate(stage_user_config(config["applications"][0], "Retriever").get("search")
                                             or {})


def deploy(config: dict) -> str:
    """A local Ray + the app deployed from `config`; returns the base URL."""
    import ray
    from ray import serve
    from serve_bench import deploy_config, free_port, ray_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ray_env()})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    deploy_config({"applications": config["applications"]}, timeout_s=600)
    say(f"deployed {config['applications'][0]['import_path']} in {time.perf_counter() - started:.0f}s")
    return f"http://127.0.0.1:{port}"


async def replay(url: str, path: str, bodies: list[dict], concurrency: int) -> tuple[list[dict], list[float]]:
    """POST every body to `path` over HTTP, `concurrency` at a time; (JSON answers in body order, request
    latencies in s). A 503 (shedding) is retried after its Retry-After; any other non-200 stops the run."""
    import httpx

    answers: list[dict] = [{} for _ in bodies]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for q in range(len(bodies)):
        queue.put_nowait(q)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            q = queue.get_nowait()
            for _attempt in range(5):
                t0 = time.perf_counter()
                r = await client.post(path, json=bodies[q])
                if r.status_code != 503:
                    break
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{path} {bodies[q]!r:.200} answered {r.status_code}: {r.text[:300]}")
            answers[q] = r.json()
            if len(latencies) % 500 == 0:
                say(f"{len(latencies)}/{len(bodies)} requests answered")

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return answers, latencies


async def replay_search(url: str, queries: list[str], k: int, concurrency: int) -> tuple[list[list[str]], list]:
    """Every query through POST /v1/search; (item ids per query, request latencies in s)."""
    answers, latencies = await replay(url, "/v1/search", [{"query": q, "k": k} for q in queries], concurrency)
    return [[i["item_id"] for i in a["items"]] for a in answers], latencies


def ranks_from_answers(ev, answers: list[list[str]], item_ids: list[str]) -> np.ndarray:
    """Rank of every judged pair in its query's served answer (NOT_RETURNED when left out)."""
    position = [{item: r for r, item in enumerate(a)} for a in answers]
    return np.array([position[q].get(item_ids[i], NOT_RETURNED) for q, i in zip(ev.query, ev.item)], dtype=np.int64)


def offline_search(ev, index, cfg) -> dict[str, np.ndarray]:
    """Ranks of the judged pairs under the index's own dense vectors, its BM25, and both fused."""
    from recsys.eval.search import rank_judged_items
    from recsys.index.hybrid import fuse_score_rows
    from recsys.models.encoder import TextEmbedder, query_tower_path

    n = len(index.item_ids)
    items = index.index.reconstruct_n(0, n)   # [N, D] the vectors the service searches (Flat, HNSW: exact copies)
    embedder = TextEmbedder(query_tower_path(index.manifest["model_path"]),
                            max_length=int(index.manifest.get("query_max_length", 96)))
    queries = embedder.embed(ev.queries)   # [Q, D]
    lexical = index.lexical
    out = {"dense (offline)": rank_judged_items(lambda a, b: queries[a:b] @ items.T, ev, n)}
    if lexical is not None:
        out["bm25 (offline)"] = rank_judged_items(lambda a, b: lexical.scores(ev.queries[a:b]), ev, n)
        out["hybrid (offline)"] = rank_judged_items(
            lambda a, b: fuse_score_rows(queries[a:b] @ items.T, lexical.scores(ev.queries[a:b]), cfg), ev, n)
    return out


def summarize_ranks(ev, ranks: dict[str, np.ndarray], ks: list[int]) -> dict[str, dict[str, float]]:
    """{name: judged pairs' ranks} -> {name: ndcg@k, recall@k, queries} (recsys.eval.search.summarize_search)."""
    from recsys.eval.search import summarize_search

    return {name: summarize_search(ev, r, ks) for name, r in ranks.items()}


def run_search(args: argparse.Namespace) -> int:
    from recsys.artifacts import resolve_artifact
    from recsys.eval.metrics import format_markdown_table
    from recsys.index.faiss_index import load_item_index

    if not Path(args.judgments).exists():
        say(f"skipped: no judgments at {args.judgments} (the Home Depot data lives in ../shared/data)")
        return 0
    index = load_item_index(resolve_artifact("indexes", args.index))
    item_ids = [str(i) for i in index.item_ids]
    ev = held_out_queries(args, item_ids)
    config = served_config(args)
    say(f"{len(ev.queries)} held-out queries ({ev.counts}) over {len(item_ids)} items of index {index.version}")
    started = time.perf_counter()
    ranks = offline_search(ev, index, search_settings(config))
    say(f"offline rankings in {time.perf_counter() - started:.0f}s")

    url = args.url or deploy(config)
    try:
        started = time.perf_counter()
        answers, latencies = asyncio.run(replay_search(url, ev.queries, max(args.ks), args.concurrency))
        wall = time.perf_counter() - started
    finally:
        if args.url is None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    ranks["served: /v1/search over HTTP"] = ranks_from_answers(ev, answers, item_ids)
    results = summarize_ranks(ev, ranks, args.ks)
    columns = [f"ndcg@{k}" for k in args.ks] + [f"recall@{k}" for k in args.ks] + ["queries"]
    print(format_markdown_table(results, columns))
    lat = np.array(latencies) * 1000
    say(f"{len(latencies)} requests in {wall:.0f}s at concurrency {args.concurrency}: p50 {np.median(lat):.0f} ms, "
        f"p99 {np.percentile(lat, 99):.0f} ms")
    served = results["served: /v1/search over HTTP"]["ndcg@10"]
    if "bm25 (offline)" in results:
        bm25 = results["bm25 (offline)"]["ndcg@10"]
        print(f"served NDCG@10 {served:.4f} / BM25 {bm25:.4f} = {served / bm25:.3f}")
    else:
        print(f"served NDCG@10 {served:.4f} (index {index.version} has no BM25: rebuild it with build_index)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_search(args)


if __name__ == "__main__":
    sys.exit(main())
