"""Assemble and run the Ray Train TorchTrainer; turn its checkpoint into a model artifact."""

from __future__ import annotations

import json
import shutil
import time

import ray

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact, write_manifest
from recsys.config import recsys_home
from recsys.models.encoder import resolve_model_path
from recsys.runtime import log
from recsys.train.config import TrainConfig
from recsys.train.curves import METRICS_FILE, plot_training_curves, read_metrics
from recsys.train.deepspeed_config import plan_total_steps
from recsys.train.loop import train_loop_per_worker

JOB = "train"


def run_training(cfg: TrainConfig) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    data_dir = resolve_artifact("data", cfg.data)
    data_version = read_manifest(data_dir)["version"]
    base_model = resolve_model_path(cfg.model_name_or_path)   # fail fast, before workers start
    pairs = ray.data.read_parquet(str(data_dir / "train_pairs"))
    n_pairs = pairs.count()
    total_steps = plan_total_steps(cfg, n_pairs, cfg.num_workers)
    log(JOB, f"data {data_version}: {n_pairs} pairs; {total_steps} steps x {cfg.num_workers} workers x "
             f"{cfg.micro_batch_size} pairs; ZeRO-{cfg.zero_stage}{' + LoRA' if cfg.lora.enabled else ''}, "
             f"{'GPU/NCCL' if cfg.use_gpu else 'CPU/gloo'}, bf16={cfg.use_bf16}")

    version, model_dir = new_version_dir("models")
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "total_steps": total_steps,
                           "log_dir": str(model_dir / "logs")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": pairs},
        run_config=RunConfig(name=f"train-{version}", storage_path=str(recsys_home() / "ray_results")),
    )
    log(JOB, f"step metrics -> {model_dir / 'logs' / METRICS_FILE} (tensorboard --logdir {model_dir / 'logs'})")
    started = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise RuntimeError(f"training finished without a checkpoint (error: {result.error})")
    result.checkpoint.to_directory(str(model_dir))   # next to logs/, which rank 0 wrote while training
    metrics_path = model_dir / "logs" / METRICS_FILE
    if metrics_path.exists():
        plot_training_curves(read_metrics(metrics_path), model_dir / "training_curves.png",
                             title=f"train {version} ({data_version})")
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "loss_curve"}
    write_manifest(model_dir, {
        "kind": "model", "version": version, "data_version": data_version, "base_model": base_model,
        "config": cfg.model_dump(), "metrics": metrics, "n_pairs": n_pairs,
        "query_max_length": cfg.query_max_length, "item_max_length": cfg.item_max_length,
        "wall_seconds": round(time.perf_counter() - started, 1),
    })
    (model_dir / "loss_curve.json").write_text(json.dumps((result.metrics or {}).get("loss_curve", [])))
    mark_latest("models", version)
    log(JOB, f"model {version} -> {model_dir}: loss {metrics.get('loss_first', float('nan')):.4f} -> "
             f"{metrics.get('loss_last', float('nan')):.4f}")
    return {"version": version, "path": str(model_dir), "data_version": data_version, **metrics}

