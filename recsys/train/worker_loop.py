"""The Ray Train worker loop every DeepSpeed job shares (the two towers of jobs/train.py, the
cross-encoder of jobs/train_ranker.py); a `WorkerTask` says what one job builds, steps and exports.

Every worker runs the same number of steps (equal dataset shards, one shared step budget) so ZeRO's
collectives never wait on a rank that has stopped; evaluation, early stopping and checkpoints happen
at the same optimizer steps on every rank for the same reason. After a failure Ray Train restarts the
workers and the loop continues from the latest checkpoint (recsys/train/checkpoints.py) to the same
step budget; a stopped run resumes the same way (recsys/train/run_driver.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsys.runtime import pin_threads_to_cores
from recsys.train.checkpoints import (
    TrainState,
    load_best_weights,
    report_checkpoint,
    report_final,
    restore_readable_checkpoint,
)
from recsys.train.curves import MetricsWriter
from recsys.train.evaluator import agree_any
from recsys.train.run_config import DeepSpeedRunConfig
from recsys.train.validation import EarlyStopping, is_due

logger = logging.getLogger("recsys.train")

# glibc's mallopt parameter number (malloc.h)
M_MMAP_THRESHOLD = -3

Engine = Any      # a deepspeed.DeepSpeedEngine (typed loosely: deepspeed is imported inside the worker)


@dataclass(frozen=True)
class PeriodicValidation:
    """Validation during training: `evaluate(engine, tokenizer, rank, world)` -> {"val_<metric>": ...}
    (collective), every `every` optimizer steps and at the end; the best `metric` is exported."""

    every: int | None
    metric: str
    patience: int | None
    evaluate: Callable[[Engine, Any, int, int], dict[str, float]]
    describe: Callable[[dict[str, float]], str]


@dataclass(frozen=True)
class WorkerTask:
    """What one job trains. Every callable that touches the engine is collective (every rank calls it)."""

    job: str                                                          # log prefix, e.g. "train"
    build_engine: Callable[[int, int], tuple[Engine, Any]]            # (world, total_steps) -> engine, tokenizer
    step: Callable[[Engine, Any, dict, int, int], float]              # one micro-batch -> loss
    export: Callable[[Engine, Any, str, int], bool]                   # write the model to a dir (rank 0 -> True)
    validation: PeriodicValidation | None = None
    after_training: Callable[[Engine, Any, int, int], dict[str, Any]] | None = None   # extra final metrics
    torch_batches: bool = False       # batches of tensors on the device (all-numeric columns), else numpy
    count_tokens: Callable[[dict], dict[str, int]] | None = None   # batch -> {"real", "computed"} tokens


@dataclass
class Throughput:
    """What this attempt's steps processed, for the run summary: wall time includes waiting for data."""

    steps: int = 0
    data_wait_s: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0

    def add(self, wait_s: float, tokens: dict[str, int] | None) -> None:
        self.steps += 1
        self.data_wait_s += wait_s
        if tokens:
            self.real_tokens += tokens["real"]
            self.computed_tokens += tokens["computed"]

    def summary(self, seconds: float) -> dict[str, float]:
        out = {"data_wait_fraction": round(self.data_wait_s / max(seconds, 1e-9), 4)}
        if self.computed_tokens:
            out |= {"tokens_per_second": round(self.real_tokens / max(seconds, 1e-9), 1),
                    "real_token_fraction": round(self.real_tokens / self.computed_tokens, 4)}
        return out


def limit_cpu_heap_growth(zero_stage: int, use_gpu: bool) -> None:
    """CPU ZeRO-3 workers: let glibc hand freed tensors of 128 KiB and up straight back to the OS.

    ZeRO-3 gathers each layer's full weights, frees them, and does the same for gradients, every step. glibc
    raises its mmap threshold each time such a block is freed (up to 32 MiB), so these blocks then come from
    its heaps, which fragment and keep the freed memory: +0.4 GiB RSS per step on a 110M BERT, 3.4 instead of
    2.2 GiB peak per worker after 3 steps (bench/train_bench.py). A fixed threshold turns that off. Not for the
    lower stages: they free no such blocks every step, and each mmap'd tensor costs fresh page faults.
    """
    if use_gpu or zero_stage != 3:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):   # not glibc (musl, macOS): its allocator, its behaviour
        logger.debug("no glibc mallopt here; the heap keeps its default thresholds")


def set_up_worker(cfg: DeepSpeedRunConfig, job: str, ctx) -> None:
    """Seed, threads (pinned to this worker's cores on CPU), the DeepSpeed process group."""
    import deepspeed

    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if cfg.pin_cpu_cores:
            cores = pin_threads_to_cores(ctx.get_local_rank(), ctx.get_local_world_size())
            logger.info(f"[{job}] rank {ctx.get_world_rank()}: threads pinned to cores "
                        f"{sorted(cores) if cores else 'none (too few)'}")
    # Reuses the process group Ray Train already set up (gloo on CPU, NCCL on GPU).
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    limit_cpu_heap_growth(cfg.zero_stage, cfg.use_gpu)


def run_worker_loop(task: WorkerTask, cfg: DeepSpeedRunConfig, config: dict) -> None:
    """The body of every `train_loop_per_worker`: config = {"total_steps", "log_dir"?} from the driver."""
    import ray.train

    total_steps: int = config["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    set_up_worker(cfg, task.job, ctx)
    engine, tokenizer = task.build_engine(world, total_steps)
    restored = ray.train.get_checkpoint()    # set after a worker-group restart or a resumed run
    state = TrainState()
    if restored is not None:   # the latest checkpoint, or an older one when it cannot be read
        state, restored = restore_readable_checkpoint(engine, restored, rank,
                                                      lambda flag: agree_any(flag, engine.device))
    if state.finished:
        logger.info(f"[{task.job}] this run already exported its model; nothing left to train")
        return
    micro_steps = total_steps * cfg.grad_accum_steps
    if rank == 0 and state.step:
        logger.info(f"[{task.job}] resumed from the checkpoint at step {state.step}/{micro_steps}")
    patience = task.validation.patience if task.validation else 0
    stopper = EarlyStopping(**{**state.early_stopping, "patience": patience or 0})
    if restored is not None and stopper.best_step == state.step // cfg.grad_accum_steps:
        state.best_checkpoint = restored.path   # saved as the new best: its own path was not known yet
    writer = MetricsWriter(config["log_dir"], resume_step=state.step) if rank == 0 and config.get("log_dir") else None
    started, start_step = time.perf_counter(), state.step
    throughput = Throughput()
    train_steps(task, cfg, engine, tokenizer, state, stopper, writer, micro_steps, rank, world, throughput)
    if writer is not None:
        writer.close()
    steps_done = state.step // cfg.grad_accum_steps
    if stopper.best_step is not None and stopper.best_step != steps_done:
        if state.best_checkpoint is None:
            raise RuntimeError(f"the best model (step {stopper.best_step}) has no checkpoint to export it from")
        if rank == 0 and task.validation is not None:
            logger.info(f"[{task.job}] exporting the best model: step {stopper.best_step} "
                        f"({task.validation.metric} {stopper.best:.4f})")
        load_best_weights(engine, state.best_checkpoint)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "steps": steps_done, "stopped_early": steps_done < total_steps,
        "resumed_from_step": state.resumed_from // cfg.grad_accum_steps, "train_seconds": round(state.elapsed_s, 1),
        "pairs_per_second": round((state.step - start_step) * cfg.micro_batch_size * world / max(seconds, 1e-9), 2),
        **throughput.summary(seconds)}
    if task.validation is not None and stopper.best_step is not None:
        metrics |= {"best_step": stopper.best_step, **state.best_metrics, "checkpoint_score": stopper.best}
    if task.after_training is not None:
        metrics |= task.after_training(engine, tokenizer, rank, world)
    report_final(state, metrics, rank, lambda out_dir: task.export(engine, tokenizer, out_dir, rank))


def shard_batches(task: WorkerTask, cfg: DeepSpeedRunConfig, shuffle_seed: int):
    """One epoch of this worker's shard in micro-batches: tensors already on the training device, prefetched
    while the step computes, when the task's batches are all-numeric; else numpy."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    common = {"batch_size": cfg.micro_batch_size, "drop_last": True, "local_shuffle_seed": shuffle_seed,
              "local_shuffle_buffer_size": cfg.shuffle_buffer or None}
    if task.torch_batches:
        return shard.iter_torch_batches(prefetch_batches=2, **common)
    return shard.iter_batches(batch_format="numpy", **common)


def train_steps(task: WorkerTask, cfg: DeepSpeedRunConfig, engine, tokenizer, state: TrainState,
                stopper: EarlyStopping, writer: MetricsWriter | None, micro_steps: int, rank: int, world: int,
                throughput: Throughput) -> bool:
    """Step through the worker's shard, epoch after epoch, to the step budget; True = stopped early.
    Each step's samples_per_s and the run's throughput count the wait for the batch as well as the step."""
    losses: list[float] = []
    prior_elapsed, start_step = state.elapsed_s, state.step
    started = last = time.perf_counter()
    stop = stopper.should_stop
    while state.step < micro_steps and not stop:
        seen_in_epoch = 0
        for batch in shard_batches(task, cfg, cfg.seed + state.step + rank):
            waited = time.perf_counter() - last
            throughput.add(waited, task.count_tokens(batch) if task.count_tokens else None)
            losses.append(task.step(engine, tokenizer, batch, rank, world))
            state.step += 1
            seen_in_epoch += 1
            now = time.perf_counter()
            state.elapsed_s = prior_elapsed + now - started
            scalars = {"loss": losses[-1], "lr": float(engine.get_lr()[0]),
                       "samples_per_s": cfg.micro_batch_size * world / max(now - last, 1e-9),
                       "data_wait_s": waited, "elapsed_s": state.elapsed_s}
            last_step = state.step >= micro_steps
            if state.step % cfg.grad_accum_steps == 0:
                stop = after_optimizer_step(task, cfg, engine, tokenizer, state, stopper, scalars, writer,
                                            last_step, rank, world)
            elif writer is not None:
                writer.write(state.step, scalars)
            last = time.perf_counter()
            if rank == 0 and (state.step % cfg.log_every == 0 or last_step):
                done = state.step - start_step
                # A logger, not print: Ray Train patches print() to log AND echo, doubling lines.
                logger.info(f"[{task.job}] step {state.step}/{micro_steps} loss "
                            f"{np.mean(losses[-cfg.log_every:]):.4f} {done / (now - started):.2f} steps/s "
                            f"eta {(micro_steps - state.step) * (now - started) / done:.0f}s")
            if last_step or stop:
                break
        if seen_in_epoch == 0:
            raise RuntimeError(f"worker {rank} got no full batch of {cfg.micro_batch_size} rows")
    return stop


def after_optimizer_step(task: WorkerTask, cfg: DeepSpeedRunConfig, engine, tokenizer, state: TrainState,
                         stopper: EarlyStopping, scalars: dict[str, float], writer: MetricsWriter | None,
                         last_step: bool, rank: int, world: int) -> bool:
    """Evaluate, log, checkpoint and report as due after an optimizer step; True = stop early (all ranks)."""
    import ray.train

    step = state.step // cfg.grad_accum_steps
    check = task.validation
    evaluate = check is not None and (is_due(step, check.every) or last_step)
    improved = stop = False
    if evaluate:
        assert check is not None
        val = check.evaluate(engine, tokenizer, rank, world)
        improved = stopper.update(val[f"val_{check.metric}"], step)
        if improved:
            state.best_metrics = val
        stop = agree_any(stopper.should_stop, engine.device)
        state.early_stopping = stopper.to_dict()
        scalars = {**scalars, **{k: v for k, v in val.items() if k.startswith("val_") and k != "val_users"}}
        if rank == 0:
            logger.info(f"[{task.job}] step {step} validation {check.describe(val)}"
                        f"{' (best)' if improved else ''}{' -> early stop' if stop else ''}")
    if writer is not None:
        writer.write(state.step, scalars)     # before the checkpoint: a resume keeps steps <= its step
    if last_step or stop:
        return stop                           # the final report exports the model
    metrics = {"step": step, "loss": scalars["loss"], **{k: v for k, v in scalars.items() if k.startswith("val_")}}
    if is_due(step, cfg.checkpoint_every) or improved:
        if check is not None:
            # Ray Train keeps the top checkpoints by this score: only a new best carries its metric (others,
            # evaluated or not, get -1), so ties with an older best can never push the best checkpoint out.
            metrics["checkpoint_score"] = scalars[f"val_{check.metric}"] if improved else -1.0
        persisted = report_checkpoint(engine, state, metrics, rank)
        if improved:
            state.best_checkpoint = persisted.path
    elif evaluate:
        ray.train.report(metrics)
    return stop
