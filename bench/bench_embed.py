"""Catalog embedding throughput: our Ray Data actor-pool path vs one plain PyTorch process.

Reference: what a hand-built script does, one process calling the encoder with torch using
every core. Ours: `recsys.index.embed.embed_texts` (the build_index / evaluate path), an
actor pool with one single-threaded encoder replica per core (below IN_PROCESS_MAX_TEXTS texts
it embeds in this process instead, and the bench says so). Same texts, same model, same
batch size; the vectors are checked to match. Prints items/s of each and the ratio last.

    .venv/bin/python bench/bench_embed.py [--items 8000] [--model default]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8000)
    parser.add_argument("--model", default="default", help="'default' MiniLM or a local HF model dir")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=48)
    args = parser.parse_args()

    import numpy as np
    import ray
    import torch

    from recsys.data.synthetic import generate_synthetic
    from recsys.data.text import format_item_text
    from recsys.index.embed import IN_PROCESS_MAX_TEXTS, embed_texts, embeds_in_process
    from recsys.models.encoder import TextEmbedder

    cores = os.cpu_count() or 1
    _, catalog = generate_synthetic(n_users=10, n_items=args.items, seed=1)
    cat = catalog.to_pandas()
    texts = [format_item_text(r.title, r.brand, r.category) for r in cat.itertuples()]
    keys = cat["item_id"].tolist()

    torch.set_num_threads(cores)
    reference = TextEmbedder(args.model, max_length=args.max_length, batch_size=args.batch_size)
    reference.embed(texts[:args.batch_size])                   # warm-up
    t0 = time.perf_counter()
    ref_vectors = reference.embed(texts)
    ref_rate = len(texts) / (time.perf_counter() - t0)
    print(f"reference  single process, torch threads={cores}: {ref_rate:8.1f} items/s")

    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    embed_texts(keys[:args.batch_size], texts[:args.batch_size], args.model, args.max_length,
                args.batch_size, cores, in_process_max=0)      # warm-up: Ray Data, actor start + model load
    t0 = time.perf_counter()
    ours = embed_texts(keys, texts, args.model, args.max_length, args.batch_size, cores)
    ours_rate = len(texts) / (time.perf_counter() - t0)
    ray.shutdown()
    path = ("in this process (a small CPU job: embed_texts skips the pool below "
            f"{IN_PROCESS_MAX_TEXTS} texts)" if embeds_in_process(len(texts))
            else f"Ray Data actor pool x{cores} (1 thread each, incl. actor start)")
    print(f"ours       {path}: {ours_rate:8.1f} items/s")
    print(f"max |difference| of vectors: {float(np.abs(ours - ref_vectors).max()):.2e}")
    print(f"ratio ours/reference: {ours_rate / ref_rate:.2f}")


if __name__ == "__main__":
    main()
