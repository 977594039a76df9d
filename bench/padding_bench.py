"""Padding: the share of the tokens the two-tower training step computes that are real, on a data version's
training pairs, the way recsys/train/loop.py's train_step batches them (tokenize_pairs, then TwoTowerModel
encodes queries and items each at its own longest row), against one call over the jointly padded [Q + I, T]
batch (what the step did before). Tokenisation only: no model runs, so it takes seconds on a CPU.

    .venv/bin/python bench/padding_bench.py --data <data version dir> [--query-max-length 128]
        [--item-max-length 64] [--batch 128] [--batches 50] [--model default]

The last line is the real-token fraction of ours and of the joint batch, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.dataset as ds

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from transformers import AutoTokenizer  # noqa: E402

from recsys.models.encoder import resolve_model_path  # noqa: E402
from recsys.models.towers import padding_stats, tokenize_pairs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data version directory (its train_pairs/ are read)")
    parser.add_argument("--model", default="default", help="tokenizer: a model directory, or default (MiniLM)")
    parser.add_argument("--query-max-length", type=int, default=128)
    parser.add_argument("--item-max-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128, help="pairs per micro-batch")
    parser.add_argument("--batches", type=int, default=50, help="micro-batches measured (the first ones)")
    parser.add_argument("--length-buckets", type=int, default=4, help="TrainConfig.length_buckets")
    args = parser.parse_args(argv)
    pairs = ds.dataset(Path(args.data) / "train_pairs", format="parquet").head(
        args.batch * args.batches, columns=["anchor_text", "positive_text"]).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    totals = {"real": 0, "computed": 0, "computed_joint": 0}
    n = len(pairs["anchor_text"]) // args.batch
    for b in range(n):
        rows = slice(b * args.batch, (b + 1) * args.batch)
        tok = tokenize_pairs(tokenizer, pairs["anchor_text"][rows], pairs["positive_text"][rows],
                             args.query_max_length, args.item_max_length)
        for key, value in padding_stats(tok["attention_mask"], args.batch, args.length_buckets).items():
            totals[key] += value
    ours, joint = totals["real"] / totals["computed"], totals["real"] / totals["computed_joint"]
    print(f"{n} batches x {args.batch} pairs, q{args.query_max_length}/i{args.item_max_length}: "
          f"{totals['real']:,} real tokens; computed {totals['computed']:,} ({args.length_buckets} length buckets "
          f"per part), "
          f"{totals['computed_joint']:,} (joint padding)")
    print(f"real-token fraction: ours {ours:.3f}, joint batch {joint:.3f}, ratio {ours / joint:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
