"""int8 query encoder on CPU: batch-1 latency and search quality against fp32, in one run.

Reference: the fp32 encoder (TextEmbedder quantize="none"). Variants (recsys.models.quantize):
  int8             TextEmbedder(quantize="int8"): per-channel int8 weights, FFN down-projections fp16
  int8-plain       plain `quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8)`
  int8-perchannel  per-channel int8 weights in every Linear
  int8-down-fp32   as int8, with the FFN down-projections left fp32
Everything runs with one torch/OMP thread, as a serving replica does. The catalog-embedding times
printed on the way are not interleaved and so only indicative on a shared machine.

(a) latency: the encoder forward of one query at a time (tokenised beforehand), the variants
    interleaved query by query so load from other processes hits them alike; p50 / p99.
(b) quality: Home Depot search (../shared/data/homedepot/train.csv). A seeded sample of queries
    that have a judged product with relevance > 1; a sub-catalog of every product judged for
    them plus random other products; each query ranks the whole sub-catalog by cosine. Graded
    NDCG@10, gain = relevance - 1, unjudged = 0 (recsys.eval.metrics.graded_ndcg_at_k). Rows:
    query and item vectors from the same variant, and the variant's queries against fp32 items
    (an index built in fp32, e.g. on a GPU, served by an int8 query replica).

Prints sizes, a table, and LAST the ratios: speed-up fp32/int8 p50 and NDCG@10 loss (fp32 - int8),
one line per variant, `int8` first. The loss's 95% CI is over the paired per-query differences:
at 300 queries it is about +-0.01, wider than a 0.005 bar, so use --queries 800 --catalog 8000
(about 7 min) to tighten it.

    .venv/bin/python bench/bench_int8.py [--queries 300] [--catalog 5000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _name, _value in {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                      "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(_name, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
K = 10
# Recipes compared with TextEmbedder(quantize="int8"): name, per-channel weights, what FFN down-projections become.
VARIANTS = [("int8-plain", False, "int8"), ("int8-perchannel", True, "int8"), ("int8-down-fp32", True, "fp32")]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [bench] {message}", flush=True)


def sample_search_task(data_dir: Path, n_queries: int, n_catalog: int, seed: int):
    """-> (queries [Q], item texts [N], EvalQueries over them). Products' text is their title."""
    import numpy as np
    import pandas as pd

    from recsys.eval.search import EvalQueries, read_judgments

    judgments, _ = read_judgments(data_dir)                  # stripped, duplicate pairs averaged
    raw = pd.read_csv(data_dir / "train.csv", encoding="latin-1", dtype=str, keep_default_na=False,
                      usecols=["product_uid", "product_title"])
    titles = raw.assign(product_uid=raw["product_uid"].str.strip()).drop_duplicates("product_uid")
    title_of = dict(zip(titles["product_uid"], titles["product_title"]))
    rng = np.random.default_rng(seed)
    best = judgments.groupby("query")["relevance"].max()
    candidates = sorted(best.index[best > 1.0])              # a query needs a gain > 0 to have an ideal ranking
    queries = [candidates[i] for i in sorted(rng.choice(len(candidates), min(n_queries, len(candidates)),
                                                        replace=False))]
    pairs = judgments[judgments["query"].isin(set(queries))]
    judged = sorted(set(pairs["item_id"]))
    others = sorted(set(title_of) - set(judged))
    fill = max(0, n_catalog - len(judged))
    extra = [others[i] for i in rng.choice(len(others), min(fill, len(others)), replace=False)]
    items = judged + sorted(extra)
    position = {item: i for i, item in enumerate(items)}
    index = {q: i for i, q in enumerate(queries)}
    pairs = pairs.assign(q=pairs["query"].map(index), item=pairs["item_id"].map(position))
    pairs = pairs.sort_values(["q", "item"], kind="stable")
    gain = np.maximum(pairs["relevance"].to_numpy(np.float64) - 1.0, 0.0)
    ev = EvalQueries(queries, pairs["q"].to_numpy(np.int64), pairs["item"].to_numpy(np.int64), gain,
                     (pairs["relevance"] >= 2.5).to_numpy(), {"judged_pairs": len(pairs), "judged_items": len(judged)})
    return queries, [title_of[i] for i in items], ev


def batch1_latency(encoders: dict, tokens: list) -> dict:
    """Seconds per forward, per variant: [len(tokens)] each. The order of the variants rotates per query."""
    import torch

    names = list(encoders)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:                                   # warm-up: first-call allocations, fbgemm packing
            for ids, mask in tokens[:10]:
                encoders[name](ids, mask)
        for i, (ids, mask) in enumerate(tokens):
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                encoders[name](ids, mask)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300, help="sampled Home Depot queries (latency and quality)")
    parser.add_argument("--catalog", type=int, default=5000, help="sub-catalog size (judged products + random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="'default' MiniLM or a local HF model dir")
    parser.add_argument("--query-max-length", type=int, default=96)
    parser.add_argument("--item-max-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64, help="batch size for embedding the catalog")
    args = parser.parse_args()

    data_dir = Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data")) / "homedepot"
    if not (data_dir / "train.csv").is_file():
        print(f"SKIP: {data_dir / 'train.csv'} not found (the Home Depot data set lives in ../shared/data; "
              "set RECSYS_SHARED_DATA to point elsewhere)")
        return

    import copy

    import numpy as np
    import torch

    from recsys.eval.metrics import graded_ndcg_at_k
    from recsys.eval.search import rank_judged_items
    from recsys.models.encoder import TextEmbedder
    from recsys.models.quantize import quantize_int8

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    queries, item_texts, ev = sample_search_task(data_dir, args.queries, args.catalog, args.seed)
    say(f"sizes: {len(queries)} queries (latency and quality), catalog {len(item_texts)} products "
        f"({ev.counts['judged_items']} judged for those queries), {ev.counts['judged_pairs']} judged pairs; "
        f"seed {args.seed}; torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']}, torch {torch.__version__}, quantized engine "
        f"{torch.backends.quantized.engine}")

    fp32 = TextEmbedder(args.model, max_length=args.item_max_length, batch_size=args.batch_size, device="cpu")
    int8 = TextEmbedder(args.model, max_length=args.item_max_length, batch_size=args.batch_size, quantize="int8")
    embedders = {"fp32": fp32, "int8": int8}
    for name, per_channel, ffn_down in VARIANTS:
        embedders[name] = copy.copy(fp32)
        embedders[name].encoder = quantize_int8(fp32.encoder, per_channel=per_channel, ffn_down=ffn_down)

    tokens = []
    for q in queries:
        tok = fp32.tokenizer([q], truncation=True, max_length=args.query_max_length, return_tensors="pt")
        tokens.append((tok["input_ids"], tok["attention_mask"]))
    say(f"latency: {len(tokens)} queries at batch 1, {np.mean([t[0].shape[1] for t in tokens]):.1f} tokens "
        "on average, variants interleaved")
    times = batch1_latency({name: e.encoder for name, e in embedders.items()}, tokens)

    vectors = {}
    for name, embedder in embedders.items():
        t0 = time.perf_counter()
        items = embedder.embed(item_texts)
        query_vectors = embedder.embed(queries, max_length=args.query_max_length)
        vectors[name] = (query_vectors, items)
        say(f"embedded {len(item_texts)} items + {len(queries)} queries with {name} in "
            f"{time.perf_counter() - t0:.1f} s")

    def ndcg(query_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        ranks = rank_judged_items(lambda a, b: query_vectors[a:b] @ item_vectors.T, ev, len(item_texts))
        return graded_ndcg_at_k(ev.query, ev.gain, ranks, K, len(queries))

    per_query = {"fp32": ndcg(*vectors["fp32"])}
    for name in list(embedders)[1:]:
        per_query[name] = ndcg(*vectors[name])
        per_query[f"{name} q x fp32 items"] = ndcg(vectors[name][0], vectors["fp32"][1])

    print()
    print(f"| variant | p50 ms | p99 ms | speed-up p50 | NDCG@{K} | loss vs fp32 (95% CI) "
          "| query cos to fp32 min / mean |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ref_p50 = float(np.median(times["fp32"]))
    for name, scores in per_query.items():
        variant = name.split(" ")[0]
        t = np.asarray(times[variant]) * 1e3
        diff = per_query["fp32"] - scores
        half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else 0.0
        cos = (vectors["fp32"][0] * vectors[variant][0]).sum(axis=1)
        timing = (f"{np.median(t):.2f} | {np.percentile(t, 99):.2f} | {ref_p50 * 1e3 / np.median(t):.2f}x"
                  if " " not in name else "  |   |  ")
        print(f"| {name} | {timing} | {scores.mean():.4f} | {diff.mean():+.4f} (±{half:.4f}) | "
              f"{cos.min():.4f} / {cos.mean():.4f} |")
    print()
    say(f"total {time.perf_counter() - t_start:.0f} s")
    for name in list(embedders)[1:]:
        speedup = ref_p50 / float(np.median(times[name]))
        loss = float(per_query["fp32"].mean() - per_query[name].mean())
        print(f"ratio {name}: speed-up fp32/{name} p50 {speedup:.2f}x, NDCG@{K} loss (fp32 - {name}) {loss:+.4f}")


if __name__ == "__main__":
    main()
