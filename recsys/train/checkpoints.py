"""Training checkpoints: DeepSpeed state saved by every rank, persisted and restored by Ray Train.

Every rank calls `engine.save_checkpoint` into its own temporary directory and reports it; Ray
Train copies all ranks' directories into ONE checkpoint directory under the run's storage path
(rank 0's `mp_rank_00_model_states.pt` + `latest`, and every rank's ZeRO shard
`zero_pp_rank_<r>_mp_rank_00_{optim,model}_states.pt`). After a failure Ray restarts the worker
group and `ray.train.get_checkpoint()` returns the latest persisted one, which every rank loads.
`train_state.json` beside the DeepSpeed files carries what DeepSpeed does not: the micro-step to
resume at, the early-stopping state and where the best checkpoint lives.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("recsys.train")

TRAIN_STATE_FILE = "train_state.json"
DEEPSPEED_TAG = "deepspeed"     # one tag per checkpoint directory: each report gets its own directory


@dataclass
class TrainState:
    """Loop position and bookkeeping that must survive a restart (JSON, never pickled)."""

    step: int = 0                    # micro-steps done (= the `step` of metrics.jsonl)
    elapsed_s: float = 0.0           # training seconds of earlier attempts included
    early_stopping: dict[str, Any] = field(default_factory=dict)   # EarlyStopping.to_dict()
    best_checkpoint: str | None = None   # storage path of the best model's DeepSpeed checkpoint
    best_metrics: dict[str, float] = field(default_factory=dict)   # validation metrics of the best model
    finished: bool = False           # True only in the final checkpoint: the exported model
    resumed_from: int = 0            # micro-step the current attempt started at (0 = from scratch)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        raw = json.loads(text)
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{TRAIN_STATE_FILE} has unknown fields {unknown}: written by a newer recsys?")
        return cls(**raw)


def read_train_state(directory: str | Path) -> TrainState:
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a recsys training checkpoint")
    return TrainState.from_json(path.read_text())


def report_checkpoint(engine, state: TrainState, metrics: dict[str, Any], rank: int) -> Any:
    """Save DeepSpeed state on every rank, report it with `metrics`; returns the persisted Checkpoint.

    Collective: every rank must call it at the same step (DeepSpeed barriers, Ray's report barrier).
    """
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="recsys-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DEEPSPEED_TAG)
        if rank == 0:
            Path(tmp, TRAIN_STATE_FILE).write_text(state.to_json())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    return ray.train.get_checkpoint()


def report_final(state: TrainState, metrics: dict[str, Any], rank: int, write_model: Callable[[str], bool]) -> None:
    """Report the exported model as the run's last checkpoint; `write_model(dir)` is collective (ZeRO-3)."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="recsys-export-") as tmp:
        saved = write_model(tmp)
        if saved:
            state.finished = True
            Path(tmp, TRAIN_STATE_FILE).write_text(state.to_json())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if saved else None)


def restore_checkpoint(engine, checkpoint) -> TrainState:
    """Load DeepSpeed state (weights, optimizer, lr schedule) from a reported checkpoint on every rank.

    A final checkpoint (the exported HF model, `finished`) holds no DeepSpeed state: nothing is loaded.
    """
    with checkpoint.as_directory() as directory:
        state = read_train_state(directory)
        if not state.finished:
            load_path, _ = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint '{DEEPSPEED_TAG}' in {directory}")
    state.resumed_from = state.step
    return state


def load_best_weights(engine, best_path: str) -> None:
    """Load only the model weights of the best checkpoint (a storage path of this run) before
    exporting them; collective."""
    import ray.train
    from ray.train import Checkpoint

    latest = ray.train.get_checkpoint()   # any checkpoint of this run knows the storage filesystem
    best = Checkpoint(best_path, filesystem=latest.filesystem if latest is not None else None)
    with best.as_directory() as directory:
        load_path, _ = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG, load_optimizer_states=False,
                                              load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"the best checkpoint {best_path} could not be loaded")
