"""The driver side every DeepSpeed job shares: start or resume a run, fit it with Ray Train, land the
exported model in the version directory.

Fault tolerance is Ray Train's: the worker loop (recsys/train/worker_loop.py) reports DeepSpeed
checkpoints, RunConfig keeps `checkpoints_to_keep` of them under $RECSYS_HOME/ray_results/<run name>/
and restarts a failed worker group from the latest one up to `max_failures` times. A run that still
stops (Ctrl-C, killed driver, lost cluster) keeps its version directory; `resume` re-runs it under
the same Ray run name, so Ray Train restores the same checkpoints (recsys/train/runs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from recsys.artifacts import artifacts_root, new_version_dir, read_manifest, resolve_artifact
from recsys.config import recsys_home
from recsys.runtime import log
from recsys.train.checkpoints import TRAIN_STATE_FILE, read_train_state
from recsys.train.run_config import DeepSpeedRunConfig
from recsys.train.runs import (
    config_for_resume,
    find_run_to_resume,
    has_checkpoint,
    remove_unregistered_checkpoints,
    write_run_record,
)

C = TypeVar("C", bound=DeepSpeedRunConfig)


def start_or_resume_run(cfg: C, data_ref: str, kind: str, job: str) -> tuple[C, str, Path, dict]:
    """A new `kind` version (models, rankers) + its run record, or the stopped run named by cfg.resume
    -> (cfg, version, directory, record). `data_ref`: the data version a new run trains on."""
    run_prefix = job.replace("_", "-")
    if cfg.resume is None:
        data_dir = resolve_artifact("data", data_ref)
        version, out_dir = new_version_dir(kind)
        record = {"version": version, "run_name": f"{run_prefix}-{version}",
                  "storage_path": str(recsys_home() / "ray_results"),
                  "data_version": read_manifest(data_dir)["version"], "data_path": str(data_dir),
                  "config": cfg.model_dump(exclude={"resume"})}
        write_run_record(out_dir, record)
        return cfg, version, out_dir, record
    version, out_dir, record = find_run_to_resume(cfg.resume, artifacts_root() / kind, job)
    cfg = config_for_resume(cfg, record["config"])
    remove_unregistered_checkpoints(record)
    where = "its latest checkpoint" if has_checkpoint(record) else "step 0: it stopped before its first checkpoint"
    log(job, f"resuming run {record['run_name']} ({kind} {version}) from {where}")
    return cfg, version, out_dir, record


def fit_run(loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: DeepSpeedRunConfig, record: dict,
            datasets: dict, out_dir: Path, job: str, scored: bool) -> dict[str, Any]:
    """Run `loop` on cfg.num_workers Ray Train workers with checkpoints, restarts and resume; the exported
    model lands in out_dir (next to logs/, which rank 0 wrote). -> the final report's metrics.

    scored: the loop reports `checkpoint_score` (in-training validation), so Ray Train keeps the best
    checkpoints by it as well as the latest."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    keep = CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                            checkpoint_score_attribute="checkpoint_score" if scored else None,
                            checkpoint_score_order="max")
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets=datasets,
        run_config=RunConfig(name=record["run_name"], storage_path=record["storage_path"],
                             failure_config=FailureConfig(max_failures=cfg.max_failures), checkpoint_config=keep),
    )
    log(job, f"checkpoints -> {Path(record['storage_path']) / record['run_name']}")
    stopped = f"run {record['run_name']} stopped; continue it with: python jobs/{job}.py --resume {record['version']}"
    try:
        result = trainer.fit()
    except BaseException:
        log(job, stopped)
        raise
    if result.checkpoint is None or result.error is not None:
        raise RuntimeError(f"training finished without a checkpoint (error: {result.error}); {stopped}")
    with result.checkpoint.as_directory() as last:
        if not read_train_state(last).finished:   # e.g. aborted between a DeepSpeed checkpoint and the export
            raise RuntimeError(f"the run's last checkpoint is not an exported model; {stopped}")
    result.checkpoint.to_directory(str(out_dir))
    orphans = remove_unregistered_checkpoints(record)
    if orphans:
        log(job, f"removed {len(orphans)} checkpoint(s) of failed attempts that Ray Train never registered")
    (out_dir / TRAIN_STATE_FILE).unlink(missing_ok=True)
    return dict(result.metrics or {})
