"""Served recommendation quality on interactions the service never saw, beside offline numbers of the same
index, in one run (the recommend counterpart of bench/served_quality.py).

    python jobs/holdout_cut.py --config jobs/configs/holdout_cut.default.yaml --set data=<data version>
    python jobs/preprocess.py --config jobs/configs/preprocess.default.yaml \\
        --set source.path=<cut>/events --set source.catalog=<cut>/catalog.parquet
    python jobs/build_index.py ...                # (and train) from that second data version
    .venv/bin/python bench/served_recommend.py --cut <cut version> --data <second data version> --index <version>

Without --url the bench starts a local Ray, deploys --serve-config (default serve_configs/local.yaml) with its
args pointed at --data and --index (plus any --set Deployment.key=value), and replays every target of the cut
(or a seeded --max-users sample) to POST /v1/recommend as {"history": <the user's 50 most recent items>,
"k": 10}: the whole served path, candidate sources, Ranker and business rules. Recall@10 and NDCG@10 against
the one held-out item per user. Offline, in this process, the same index and data version answer the same
histories: its model's ANN alone, the candidate sources merged as the Retriever merges them (before ranking
and rules), item co-occurrence alone, EASE alone and popularity alone; every method leaves the history's items
out, as the served rule exclude_history does. The served row is last, with its ratio to co-occurrence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from common import say  # noqa: E402
from served_quality import NOT_RETURNED, deploy, replay, served_config  # noqa: E402

K = 10
HISTORY_CAP = 50   # most recent items sent per request (RecommendRequest allows up to 200)
SERVED = "served: /v1/recommend over HTTP"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cut", default="latest", help="cut version from jobs/holdout_cut.py (its targets.parquet)")
    p.add_argument("--data", default="latest", help="data version preprocessed from the cut (what is served)")
    p.add_argument("--index", default="latest", help="index version the service serves")
    p.add_argument("--url", default=None, help="a running deployment instead of deploying one here")
    p.add_argument("--serve-config", default=str(REPO / "serve_configs/local.yaml"))
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="serve args override (served_quality.served_config), e.g. retrieval_k=200")
    p.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                   help="override in the Serve config, e.g. Ingress.user_config.Reranker.max_per_category=null")
    p.add_argument("--max-users", type=int, default=None, help="a seeded sample of the cut's target users")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.search_ranker = None   # served_config's search-only argument
    return args


# ---------------------------------------------------------------- pure parts (tests/unit/test_served_recommend.py)
def cap_history(history: Sequence[str], cap: int = HISTORY_CAP) -> list[str]:
    """The `cap` most recent items (oldest first), within what RecommendRequest accepts."""
    from recsys.schema import RecommendRequest

    limit = next(m.max_length for m in RecommendRequest.model_fields["history"].metadata if hasattr(m, "max_length"))
    if not 1 <= cap <= limit:
        raise ValueError(f"history cap {cap} must be in [1, {limit}] (RecommendRequest.history max_length)")
    return list(history)[-cap:]


def top_k_unseen(item_ids: Iterable[str], history: Iterable[str], k: int = K) -> list[str]:
    """The first k distinct ids not in the history: what exclude_history leaves of a ranked list."""
    seen, out = set(history), []
    for item in item_ids:
        if item not in seen:
            out.append(item)
            seen.add(item)
            if len(out) == k:
                break
    return out


def target_rank(answer: Sequence[str], target: str) -> int:
    """0-based position of the target in an answer, NOT_RETURNED when left out."""
    return answer.index(target) if target in answer else NOT_RETURNED


def answer_ranks(answers: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """[U] 0-based rank of each user's target in their answer (NOT_RETURNED when left out)."""
    if len(answers) != len(targets):
        raise ValueError(f"{len(answers)} answers for {len(targets)} targets")
    return np.array([target_rank(list(a), t) for a, t in zip(answers, targets)], dtype=np.int64)


def interval_line(served: np.ndarray, cooccurrence: np.ndarray, k: int = K) -> str:
    """95% bootstrap intervals over the users: served NDCG@k, recall@k and served / co-occurrence NDCG@k
    (paired: the same users resampled for both), so a bar is read against the sampling noise."""
    from recsys.eval.metrics import bootstrap_interval, ndcg_per_user

    s_gain, c_gain = ndcg_per_user(served, k), ndcg_per_user(cooccurrence, k)
    ndcg = bootstrap_interval(s_gain)
    recall = bootstrap_interval((served < k).astype(np.float64))
    ratio = bootstrap_interval(s_gain, c_gain, statistic=lambda a, b, axis: a.mean(axis) / b.mean(axis))
    return (f"95% intervals over users: served NDCG@{k} [{ndcg[0]:.4f}, {ndcg[1]:.4f}], recall@{k} "
            f"[{recall[0]:.4f}, {recall[1]:.4f}], served / co-occurrence [{ratio[0]:.3f}, {ratio[1]:.3f}]")


def score_answers(answers: Sequence[Sequence[str]], targets: Sequence[str], k: int = K) -> dict[str, float]:
    """One ranked answer and one relevant item per user -> recall@k, ndcg@k (recsys.eval.metrics), users."""
    return score_ranks(answer_ranks(answers, targets), k)


def score_ranks(ranks: np.ndarray, k: int = K) -> dict[str, float]:
    """[U] target ranks (answer_ranks) -> recall@k, ndcg@k, users."""
    from recsys.eval.metrics import ndcg_at_k, recall_at_k

    return {f"recall@{k}": recall_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "users": int(ranks.size)}


def ratio_line(served: float, cooccurrence: float, k: int = K) -> str:
    ratio = f"{served / cooccurrence:.3f}" if cooccurrence > 0 else "n/a (co-occurrence scored 0)"
    return f"served NDCG@{k} {served:.4f} / co-occurrence {cooccurrence:.4f} = {ratio}"


def latency_line(latencies_s: Sequence[float], wall_s: float, concurrency: int) -> str:
    ms = np.asarray(latencies_s) * 1000
    return (f"{len(ms)} requests in {wall_s:.0f}s at concurrency {concurrency}: p50 {np.median(ms):.0f} ms, "
            f"p99 {np.percentile(ms, 99):.0f} ms")


# ---------------------------------------------------------------- targets, offline methods, HTTP replay
def load_targets(cut: str, max_users: int | None, seed: int) -> tuple[list[str], list[str], list[list[str]]]:
    """(user ids, target items, capped histories) of the cut, a seeded sample of max_users when given."""
    import pyarrow.parquet as pq

    from recsys.data.holdout_cut import resolve_cut

    table = pq.read_table(resolve_cut(cut) / "targets.parquet")
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    histories = [cap_history(h) for h in table.column("history").to_pylist()]
    keep = range(len(users))
    if max_users is not None and max_users < len(users):
        keep = sorted(np.random.default_rng(seed).choice(len(users), max_users, replace=False).tolist())
    return [users[i] for i in keep], [items[i] for i in keep], [histories[i] for i in keep]


def offline_answers(config: dict, histories: list[list[str]]) -> dict[str, list[list[str]]]:
    """Top-K lists per method from the served index and data version, loaded in this process."""
    from recsys.serve.app import parse_serve_args, resolve_serving_artifacts
    from recsys.serve.candidate_sources import PERSONAL_SOURCES, SOURCE_NAMES, SourcesConfig, merge_candidates
    from recsys.serve.colocated import stage_user_config
    from recsys.serve.retrieval_model import RetrievalModel

    app = config["applications"][0]
    serve_args = parse_serve_args(app["args"])
    paths = resolve_serving_artifacts(serve_args)
    model = RetrievalModel(paths["index_dir"], f"{paths['data_dir']}/catalog.parquet", paths["query_max_length"],
                           paths["max_history_items"], data_dir=paths["data_dir"],
                           embed_fresh_items=serve_args.embed_fresh_items)
    sources = SourcesConfig.model_validate(stage_user_config(app, "Retriever").get("sources") or {})
    merge_k = max(serve_args.retrieval_k, K)   # what the Ingress asks the Retriever for
    out: dict[str, list[list[str]]] = {"popular (offline)": [], "co-occurrence (offline)": [], "ease (offline)": [],
                                       "ann (offline)": [], "sources merged (offline)": []}
    for n, history in enumerate(histories):
        quotas = {name: getattr(sources, name).quota for name in SOURCE_NAMES}
        quotas["ann"] = max(quotas["ann"], K + len(set(history)))   # ANN alone needs K unseen; merge re-cuts it
        by_source = model.candidate_sources(history, quotas)
        popular = top_k_unseen(model.popular, history)
        out["popular (offline)"].append(popular)
        out["co-occurrence (offline)"].append(top_k_unseen(
            (i for i, _ in model.cooccurrence.neighbours(history, K + len(set(history)))), history))
        out["ease (offline)"].append(top_k_unseen(
            (i for i, _ in model.ease.neighbours(history, K + len(set(history)))), history))
        out["ann (offline)"].append(top_k_unseen((i for i, _ in by_source.get("ann", [])), history))
        personal = any(by_source.get(s) for s in PERSONAL_SOURCES)
        merged = [c["item_id"] for c in merge_candidates(by_source, sources, merge_k)] if personal else popular
        out["sources merged (offline)"].append(top_k_unseen(merged, history))
        if (n + 1) % 500 == 0:
            say(f"offline: {n + 1}/{len(histories)} histories")
    return out


async def replay_recommend(url: str, histories: list[list[str]], concurrency: int) -> tuple[list[list[str]],
                                                                                              list[float], int]:
    """Every history through POST /v1/recommend; (item ids per request, latencies in s, cold-start answers)."""
    bodies = [{"history": h, "k": K} for h in histories]
    answers, latencies = await replay(url, "/v1/recommend", bodies, concurrency)
    cold = sum(bool(a.get("cold_start")) for a in answers)
    return [[i["item_id"] for i in a["items"]] for a in answers], latencies, cold


def main(argv: list[str] | None = None) -> int:
    from recsys.eval.metrics import format_markdown_table

    args = parse_args(argv)
    users, targets, histories = load_targets(args.cut, args.max_users, args.seed)
    config = served_config(args)
    say(f"{len(users)} target users of cut {args.cut}; data {Path(config['applications'][0]['args']['data']).name}, "
        f"index {Path(config['applications'][0]['args']['index']).name}; "
        f"{sum(t in h for t, h in zip(targets, histories))} targets are in their own (capped) history "
        f"(exclude_history makes them unreachable)")
    started = time.perf_counter()
    answers = offline_answers(config, histories)
    say(f"offline answers in {time.perf_counter() - started:.0f}s")

    url = args.url or deploy(config)
    try:
        started = time.perf_counter()
        answers[SERVED], latencies, cold = asyncio.run(replay_recommend(url, histories, args.concurrency))
        wall = time.perf_counter() - started
    finally:
        if args.url is None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    ranks = {name: answer_ranks(a, targets) for name, a in answers.items()}
    results = {name: score_ranks(r) for name, r in ranks.items()}
    print(format_markdown_table(results, [f"recall@{K}", f"ndcg@{K}", "users"]))
    print(interval_line(ranks[SERVED], ranks["co-occurrence (offline)"]))
    print(ratio_line(results[SERVED][f"ndcg@{K}"], results["co-occurrence (offline)"][f"ndcg@{K}"]))
    say(latency_line(latencies, wall, args.concurrency) + f"; {cold} cold-start answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
