"""Training: Ray Train + DeepSpeed ZeRO-2 (2 workers) vs one plain PyTorch process, and ZeRO memory per worker.

Throughput: recsys/train/loop.py's MiniLM two-tower model and in-batch softmax loss, same synthetic pairs, same
global batch (2 x micro-batch pairs per step), same 2 cores. Reference: one process, torch with 2 threads, AdamW.
Ours: `run_training` (2 workers x 1 thread, ZeRO-2). Between them, two paths without Ray split the gap into its
causes: plain torch DDP over gloo (2 ranks x 1 thread, pinned like our workers: what the gradient all-reduce
costs any 2-process data parallelism on this box; torch's default AdamW, like the reference) and the product's
DeepSpeed ZeRO-2 `train_step` in the same 2 ranks (what DeepSpeed's engine adds, with the product's fused AdamW);
ours over that is what Ray Train and Ray Data cost. Steady state = steps after --warmup; end-to-end adds start-up
(Ray Train workers, model load, DeepSpeed init, export).
Memory: DDP (ZeRO stage 0) vs ZeRO-2 vs ZeRO-3 on a
random-init BERT-base (~110M params) saved as a local HF directory, 2 gloo ranks as plain subprocesses (no Ray,
whose ~0.3 GB per worker would blur the comparison) that set up like train_loop_per_worker: `load_hf_encoder` with
the `build_deepspeed_config` config (partitioned while loading under ZeRO-3), `limit_cpu_heap_growth`; each rank
reports its own peak RSS (VmHWM) for init and for the steps. Each measured run is its own subprocess, in a private
temporary RECSYS_HOME. The last line is the steady-state throughput ratio ours / plain torch DDP on the same 2
cores (goal >= 0.85; ours over the single process is not a fair bar here: the all-reduce alone costs DDP 11-14%
on 2 cores, docs/results.md), or with --only mem the memory ratio.

    .venv/bin/python bench/train_bench.py [--steps 30] [--warmup 5] [--micro-batch 16] [--mem-steps 3]
                                          [--only {all,throughput,mem}]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import CHILD_ENV, GIB, kill_tree, say

ECHO = re.compile(r"\[(bench|train)\]")   # child lines worth showing live: ours and the trainer's progress
ANSI = re.compile(r"\x1b\[[0-9;]*m")       # Ray colours its worker prefixes


def make_pairs(n_pairs: int, seed: int = 0) -> None:
    """A data artifact with train_pairs/ in $RECSYS_HOME. Anchors are 12-title histories, longer than
    --query-max-length, so every batch pads to the same length and both paths do the same work per pair."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.artifacts import mark_latest, new_version_dir, write_manifest
    from recsys.data.synthetic import generate_synthetic
    from recsys.data.text import format_history_text, format_item_text

    cat = generate_synthetic(n_users=10, n_items=1000, seed=seed)[1].to_pandas()
    texts = [format_item_text(r.title, r.brand, r.category) for r in cat.itertuples()]
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, len(cat), n_pairs)
    anchors = [format_history_text(cat["title"].iloc[rng.integers(0, len(cat), 12)].tolist(), 12) for _ in pos]
    version, out = new_version_dir("data")
    (out / "train_pairs").mkdir()
    pq.write_table(pa.table({"kind": ["next_item"] * n_pairs, "anchor_text": anchors,
                             "positive_item_id": [str(cat["item_id"].iloc[i]) for i in pos],
                             "positive_text": [texts[i] for i in pos]}), out / "train_pairs" / "part-0.parquet")
    write_manifest(out, {"kind": "data", "version": version})
    mark_latest("data", version)


def train_config(args):
    from recsys.train.config import TrainConfig

    # shuffle_buffer=0: both paths read the pairs in file order. warmup_steps >= 1: DeepSpeed's WarmupDecayLR
    # rejects warmup_num_steps=0, which build_deepspeed_config passes on for warmup_steps=0 or max_steps=1.
    return TrainConfig(num_workers=2, zero_stage=2, micro_batch_size=args.micro_batch, max_steps=args.steps,
                       query_max_length=args.query_max_length, item_max_length=args.item_max_length,
                       shuffle_buffer=0, warmup_steps=max(1, args.steps // 10), log_every=10)


def read_pairs():
    import pyarrow.parquet as pq

    from recsys.artifacts import resolve_artifact

    return pq.read_table(resolve_artifact("data") / "train_pairs").to_pandas()


def global_batch_rows(pairs, step: int, batch: int):
    """The pairs of global step `step`: consecutive rows, wrapping before the end (the same for every path)."""
    start = (step * batch) % (len(pairs) - batch + 1)
    return pairs.iloc[start:start + batch]


def plain_torch_step(model, params, opt, sched, tokenizer, rows, cfg):
    """What a hand-written loop does per step: tokenize, both towers, in-batch softmax, AdamW, clip, schedule."""
    import torch

    from recsys.models.losses import in_batch_softmax_loss
    from recsys.models.towers import tokenize_pairs
    from recsys.train.pair_tokens import item_keys

    tok = tokenize_pairs(tokenizer, rows["anchor_text"], rows["positive_text"], cfg.query_max_length,
                         cfg.item_max_length)
    query, item = model(tok["input_ids"], tok["attention_mask"], n_queries=len(rows))
    keys = torch.as_tensor(item_keys(rows["positive_item_id"]))
    loss = in_batch_softmax_loss(query.float(), item.float(), keys, cfg.temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss


def plain_optimizer(model, cfg, steps: int):
    """torch's default AdamW, as a hand-written loop has it (ours is the fused kernel), with the DeepSpeed
    config's linear warm-up/decay: the same schedule per step as ours."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (steps - s) / (steps - warm)))
    return params, opt, sched


def run_single(args) -> dict:
    """The hand-written reference: one process, torch on both cores, global batch = 2 x micro-batch."""
    import torch

    from recsys.train.loop import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg, batch = train_config(args), 2 * args.micro_batch
    pairs = read_pairs()
    started = time.perf_counter()
    model, tokenizer = build_model(cfg)
    params, opt, sched = plain_optimizer(model, cfg, args.steps)
    loop_start, elapsed = time.perf_counter(), []
    for step in range(args.steps):
        loss = plain_torch_step(model, params, opt, sched, tokenizer, global_batch_rows(pairs, step, batch), cfg)
        elapsed.append(time.perf_counter() - loop_start)
        if (step + 1) % 10 == 0 or step + 1 == args.steps:
            say(f"single: step {step + 1}/{args.steps} loss {float(loss):.4f} {(step + 1) / elapsed[-1]:.2f} steps/s")
    return {"elapsed": elapsed, "wall": time.perf_counter() - started}


def run_two_ranks(args) -> dict:
    """One of 2 gloo ranks without Ray, set up like a CPU train worker (1 thread, pinned to its own core), each
    rank taking its half of every global batch: plain torch DDP (what any 2-process data parallelism costs on
    this box: the gradient all-reduce) or the product's DeepSpeed ZeRO-2 engine and `train_step` (what
    DeepSpeed adds). Together with the single process and Ray Train they split the gap into its causes."""
    import deepspeed
    import torch

    from recsys.models.encoder import resolve_model_path
    from recsys.runtime import pin_threads_to_cores
    from recsys.train.loop import build_engine, build_model, train_step
    from recsys.train.pair_tokens import PairTokens

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rank, micro, batch = int(os.environ["RANK"]), args.micro_batch, 2 * args.micro_batch
    pin_threads_to_cores(rank, 2)
    deepspeed.init_distributed(dist_backend="gloo")   # env:// rendezvous, as in run_mem
    cfg, pairs = train_config(args), read_pairs()
    started = time.perf_counter()
    if args.child == "zero2":
        engine, tokenizer = build_engine(cfg, 2, args.steps)
        # The product's workers get tokenised pairs (Ray Data tokenised them): so do these ranks, before the steps.
        tokens = PairTokens(resolve_model_path(cfg.model_name_or_path), cfg.query_max_length, cfg.item_max_length)
    else:
        model, tokenizer = build_model(cfg)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        params, opt, sched = plain_optimizer(ddp, cfg, args.steps)
    loop_start, elapsed = time.perf_counter(), []
    for step in range(args.steps):
        rows = global_batch_rows(pairs, step, batch).iloc[rank * micro:(rank + 1) * micro]
        if args.child == "zero2":
            tokenized = tokens({c: rows[c].to_numpy() for c in rows.columns})
            loss = train_step(engine, {c: torch.as_tensor(v) for c, v in tokenized.items()}, cfg, rank, 2)
        else:
            loss = float(plain_torch_step(ddp, params, opt, sched, tokenizer, rows, cfg))
        elapsed.append(time.perf_counter() - loop_start)
        if rank == 0 and ((step + 1) % 10 == 0 or step + 1 == args.steps):
            say(f"{args.child}: step {step + 1}/{args.steps} loss {loss:.4f} {(step + 1) / elapsed[-1]:.2f} steps/s")
    torch.distributed.barrier()   # leave the group together (see run_mem)
    torch.distributed.destroy_process_group()
    return {"rank": rank, "elapsed": elapsed, "wall": time.perf_counter() - started}


def run_ray(args) -> dict:
    import ray

    from recsys.runtime import worker_env
    from recsys.train.curves import METRICS_FILE, read_metrics
    from recsys.train.trainer import run_training

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": worker_env()})
    init_s = time.perf_counter() - t0
    started = time.perf_counter()
    sampler = SteadyStateCpu(Path(os.environ["RECSYS_HOME"]), args.warmup, args.steps)
    sampler.start()
    out = run_training(train_config(args))
    wall = time.perf_counter() - started
    sampler.stop()
    ray.shutdown()
    # Rank 0 writes one record per step; its elapsed_s counts from after DeepSpeed init, like `elapsed` above.
    records = read_metrics(Path(out["path"]) / "logs" / METRICS_FILE)
    return {"elapsed": [r["elapsed_s"] for r in records], "wall": wall, "init": init_s, "cpu": sampler.result()}


class SteadyStateCpu(threading.Thread):
    """CPU seconds by process role between the step-`warmup` and the last-step records of the run's metrics
    file: where the 2 cores went in the steady state (the workers' training, or Ray's own processes)."""

    def __init__(self, home: Path, warmup: int, steps: int):
        super().__init__(daemon=True)
        self.home, self.marks, self.snaps = home, (warmup, steps), {}
        self.done = threading.Event()

    def run(self) -> None:
        from common import cpu_by_process

        while not self.done.wait(0.2) and len(self.snaps) < 2:
            files = list(self.home.glob("artifacts/models/*/logs/metrics.jsonl"))
            lines = len(files[0].read_text().splitlines()) if files else 0
            for mark in self.marks:
                if lines >= mark and mark not in self.snaps:
                    self.snaps[mark] = (time.perf_counter(), cpu_by_process("driver"))

    def stop(self) -> None:
        self.done.set()
        self.join()

    def result(self) -> dict:
        if len(self.snaps) < 2:
            return {}
        (t0, a), (t1, b) = (self.snaps[m] for m in self.marks)
        return {"seconds": t1 - t0, "cpu_s": {k: v - a.get(k, 0.0) for k, v in b.items() if v - a.get(k, 0.0) > 0}}


def _rss_bytes(field: str) -> int:
    """A memory line of /proc/self/status in bytes: VmRSS (now) or VmHWM (peak since start or the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024   # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _peak_bytes(reset: bool = False) -> int:
    """This process's peak RSS (VmHWM); reset=True then lowers it to the current RSS to time a phase on its own.

    VmHWM, not ru_maxrss: ru_maxrss also counts the parent's peak RSS at the time of the spawn (exec records the
    high-water mark of the vfork-shared address space), and clear_refs does not lower that part."""
    peak = _rss_bytes("VmHWM")
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return peak


def make_bert_base(out: Path) -> None:
    """A random-init BERT-base (~110M params, no pooler) as a local HF directory, with the MiniLM tokenizer (the
    same 30522-token uncased vocabulary): every rank then loads it the way the product does (load_hf_encoder)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.models.encoder import DEFAULT_MODEL, resolve_model_path

    torch.manual_seed(0)
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL)).save_pretrained(out)


def run_mem(args) -> dict:
    """One of 2 gloo ranks: BERT-base under DeepSpeed at --stage, a few steps of a simple loss."""
    import deepspeed
    import torch

    from recsys.models.encoder import load_hf_encoder, zero3_partitioned_loading
    from recsys.train.config import TrainConfig
    from recsys.train.deepspeed_config import build_deepspeed_config
    from recsys.train.worker_loop import limit_cpu_heap_growth

    torch.set_num_threads(1)
    torch.manual_seed(0)
    deepspeed.init_distributed(dist_backend="gloo")   # env:// from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
    limit_cpu_heap_growth(args.stage, use_gpu=False)  # as train_loop_per_worker does (a no-op below ZeRO-3)
    rank = torch.distributed.get_rank()
    cfg = TrainConfig(zero_stage=args.stage, micro_batch_size=args.mem_batch, warmup_steps=1)
    ds_config = build_deepspeed_config(cfg, 2, args.mem_steps)
    # The product's loading (loop.py build_model): whole on every rank below ZeRO-3, partitioned while it
    # loads under ZeRO-3.
    with zero3_partitioned_loading(ds_config):
        model, _ = load_hf_encoder(os.environ["BENCH_BERT_DIR"])
    built_rss = _rss_bytes("VmRSS")
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds_config)
    init_peak = _peak_bytes(reset=True)
    gen, times = torch.Generator().manual_seed(rank), []
    for step in range(args.mem_steps):
        ids = torch.randint(1000, 30522, (args.mem_batch, args.mem_seq_len), generator=gen)
        t = time.perf_counter()
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids))
        loss = out.last_hidden_state.float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - t)
        if rank == 0:
            say(f"mem ZeRO-{args.stage}: step {step + 1}/{args.mem_steps} {times[-1]:.1f}s "
                f"rss {_rss_bytes('VmRSS') / GIB:.2f} GiB")
    train_peak = _peak_bytes()
    # Leave the process group before the interpreter exits: otherwise a rank can abort there (ZeRO-3, gloo:
    # "terminate called without an active exception") after its numbers are in.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return {"rank": rank, "params": n_params, "built_rss": built_rss, "init_peak": init_peak,
            "train_peak": train_peak, "peak": max(init_peak, train_peak),
            "step_s": sum(times[1:] or times) / len(times[1:] or times)}


def spawn(args, name: str, child_args: list[str], timeout: float, envs: list[dict]) -> list[dict]:
    """Run len(envs) copies of a child mode; echo the first one's progress lines; return their results."""
    tmp = Path(os.environ["RECSYS_HOME"])
    base = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", *child_args]
    procs, results = [], [tmp / f"{name}-{i}.json" for i in range(len(envs))]
    for i, extra in enumerate(envs):   # the first child is piped and echoed, the others only logged
        out = subprocess.PIPE if i == 0 else (tmp / f"{name}-{i}.log").open("w")
        procs.append(subprocess.Popen([*base, "--result", str(results[i])], env={**os.environ, **CHILD_ENV, **extra},
                                      stdout=out, stderr=subprocess.STDOUT, text=True, errors="replace"))
    timer = threading.Timer(timeout, lambda: [kill_tree(p) for p in procs])
    timer.start()
    try:
        with (tmp / f"{name}-0.log").open("w") as log:
            for line in procs[0].stdout:
                log.write(line)
                if ECHO.search(line):
                    print(f"    {name} | {ANSI.sub('', line.rstrip())}", flush=True)
        for p in procs:
            p.wait()
    finally:   # also on Ctrl-C / timeout: nothing this child started may outlive it
        timer.cancel()
        for p in procs:
            kill_tree(p)
    if any(p.returncode != 0 or not r.is_file() for p, r in zip(procs, results)):
        tail = "\n".join((tmp / f"{name}-0.log").read_text(errors="replace").splitlines()[-40:])
        say(f"{name} FAILED (exit codes {[p.returncode for p in procs]}); last lines of its log:\n{tail}")
        sys.exit(2)
    return [json.loads(r.read_text()) for r in results]


def rank_envs() -> list[dict]:
    """Environments of 2 gloo ranks (rank 0 first) meeting at a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": port} for r in range(2)]


def rates(r: dict, global_batch: int, warmup: int) -> tuple[float, float]:
    """(steady-state samples/s after `warmup` steps, end-to-end samples/s incl. start-up)."""
    e = r["elapsed"]
    return (len(e) - warmup) * global_batch / (e[-1] - e[warmup - 1]), len(e) * global_batch / r["wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per throughput path")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--micro-batch", type=int, default=16, help="pairs per worker per step (x2 = global)")
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--item-max-length", type=int, default=48)
    parser.add_argument("--mem-steps", type=int, default=3)
    parser.add_argument("--mem-batch", type=int, default=2, help="sequences per rank per step (memory part)")
    parser.add_argument("--mem-seq-len", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per measured run")
    parser.add_argument("--only", choices=("all", "throughput", "mem"), default="all",
                        help="run only the throughput or only the memory part (default: both)")
    parser.add_argument("--child", choices=("single", "ddp", "zero2", "ray", "mem"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    if args.child:
        result = {"single": run_single, "ddp": run_two_ranks, "zero2": run_two_ranks, "ray": run_ray,
                  "mem": run_mem}[args.child](args)
        Path(args.result).write_text(json.dumps(result))
        return

    wall0 = time.perf_counter()
    do_thr, do_mem = args.only in ("all", "throughput"), args.only in ("all", "mem")
    thr, mem = {}, {}
    with tempfile.TemporaryDirectory(prefix="train_bench_") as home:
        os.environ["RECSYS_HOME"] = home   # private: the user's artifacts are never read or written
        global_batch = 2 * args.micro_batch
        if do_thr:
            say(f"throughput data: {4 * args.steps * global_batch} synthetic pairs in {home}")
            make_pairs(4 * args.steps * global_batch)   # >= 2 epochs: no epoch restart inside the measured steps
            say(f"throughput: {args.steps} steps x {global_batch} pairs (2 x {args.micro_batch})")
            for name in ("single", "ddp", "zero2", "ray"):
                say(f"{name}: starting")
                two_ranks = name in ("ddp", "zero2")   # rank 0's record: its steps end with the all-reduce
                thr[name] = spawn(args, name, [name], args.timeout, rank_envs() if two_ranks else [{}])[0]
                steady, e2e = rates(thr[name], global_batch, args.warmup)
                say(f"{name}: {steady:.1f} samples/s steady, {e2e:.1f} end-to-end ({thr[name]['wall']:.1f}s)")
        if do_mem:
            os.environ["BENCH_BERT_DIR"] = str(Path(home) / "bert-base")
            say(f"memory: random-init BERT-base in {os.environ['BENCH_BERT_DIR']}, "
                f"2 ranks x {args.mem_batch} x {args.mem_seq_len} tokens")
            make_bert_base(Path(os.environ["BENCH_BERT_DIR"]))
            for label, stage in (("DDP", 0), ("ZeRO-2", 2), ("ZeRO-3", 3)):   # DDP = zero_stage 0, as in TrainConfig
                say(f"{label}: starting 2 ranks")
                mem[label] = spawn(args, f"mem{stage}", ["mem", "--stage", str(stage)], args.timeout, rank_envs())
                peaks = ", ".join(f"{r['peak'] / GIB:.2f}" for r in mem[label])
                say(f"{label}: peak RSS per rank {peaks} GiB")

    if mem:
        print(f"\nmemory per worker: BertModel {mem['DDP'][0]['params'] / 1e6:.1f}M params, {args.mem_steps} steps "
              f"of {args.mem_batch} x {args.mem_seq_len} tokens per rank; peak RSS (VmHWM) per phase: init = model "
              f"load + deepspeed.initialize, train = the steps; built = RSS right after the model load")
        print(f"{'mode':<8} {'peak GiB r0/r1':>15} {'built':>6} {'init peak':>10} {'train peak':>11} {'step s':>7}")
        worst = {label: {k: max(r[k] for r in ranks) / GIB for k in ("peak", "built_rss", "init_peak", "train_peak")}
                 for label, ranks in mem.items()}
        for label, (r0, r1) in mem.items():
            print(f"{label:<8} {r0['peak'] / GIB:>7.2f}/{r1['peak'] / GIB:<7.2f} {worst[label]['built_rss']:>6.2f} "
                  f"{worst[label]['init_peak']:>10.2f} {worst[label]['train_peak']:>11.2f} "
                  f"{(r0['step_s'] + r1['step_s']) / 2:>7.2f}")
        mem_ratio = (f"ZeRO-3 / DDP peak memory per worker = {worst['ZeRO-3']['peak'] / worst['DDP']['peak']:.2f} "
                     f"(goal <= 0.7)")
        if thr:
            print(mem_ratio)
    if thr:
        print(f"\nthroughput: {args.steps} steps x {global_batch} pairs, steady state = steps "
              f"{args.warmup + 1}-{args.steps}, ray.init {thr['ray']['init']:.1f}s not counted")
        print(f"{'path':<48} {'steady/s':>9} {'e2e/s':>7} {'wall s':>7} {'/single':>7}")
        labels = {"single": "single process, torch 2 threads (reference)",
                  "ddp": "torch DDP, 2 ranks x 1 thread, no Ray",
                  "zero2": "DeepSpeed ZeRO-2, 2 ranks x 1 thread, no Ray",
                  "ray": "ours: Ray Train + DeepSpeed ZeRO-2, 2 x 1 thread"}
        rate = {name: rates(r, global_batch, args.warmup) for name, r in thr.items()}
        for name, r in thr.items():
            print(f"{labels[name]:<48} {rate[name][0]:>9.1f} {rate[name][1]:>7.1f} {r['wall']:>7.1f} "
                  f"{rate[name][0] / rate['single'][0]:>7.2f}")
        # Each row adds one part to the one above it: the all-reduce, DeepSpeed's engine, Ray Train and Ray Data.
        print(f"steady-state ratios: DDP / single = {rate['ddp'][0] / rate['single'][0]:.2f} (the all-reduce, "
              f"which any 2-rank data parallelism pays), ZeRO-2 / DDP = {rate['zero2'][0] / rate['ddp'][0]:.2f}, "
              f"ours / ZeRO-2 = {rate['ray'][0] / rate['zero2'][0]:.2f} (what Ray Train and Ray Data cost)")
        print(f"end-to-end ratio ray / single (incl. start-up) = {rate['ray'][1] / rate['single'][1]:.2f}")
        if cpu := thr["ray"].get("cpu"):
            used = sorted(cpu["cpu_s"].items(), key=lambda kv: -kv[1])
            print(f"Ray path, steady state ({cpu['seconds']:.1f}s wall, {2 * cpu['seconds']:.1f} core-s on 2 cores): "
                  f"CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in used if v >= 0.05)
                  + f"; total {sum(cpu['cpu_s'].values()):.1f}")
    print(f"bench wall time {time.perf_counter() - wall0:.0f}s")
    if thr:   # the last line: the ratio of the part that ran (throughput when both did)
        print(f"ratio ray_zero2_samples_per_s / torch_ddp_samples_per_s = "
              f"{rate['ray'][0] / rate['ddp'][0]:.2f} (goal >= 0.85)")
    else:
        print(mem_ratio)


if __name__ == "__main__":
    main()
