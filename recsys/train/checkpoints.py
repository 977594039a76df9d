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


def checkpoint_candidates(latest) -> list:
    """The run's checkpoints to restore from, best first: `latest` (Ray Train's), then the older ones kept
    beside it in the run's storage directory (checkpoints_to_keep), newest first. Ray names each directory
    checkpoint_<timestamp>, so names sort by age."""
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    parent = latest.path.rstrip("/").rsplit("/", 1)[0]
    try:
        infos = latest.filesystem.get_file_info(FileSelector(parent))
    except OSError:
        return [latest]
    # Only older ones: a newer directory is an upload of a worker group that died before every rank reported,
    # which Ray Train never registered (and may hold only some ranks' files).
    name = latest.path.rstrip("/").rsplit("/", 1)[-1]
    older = sorted((i.path for i in infos if i.type == FileType.Directory and i.base_name.startswith("checkpoint_")
                    and i.base_name < name), reverse=True)
    return [latest, *(Checkpoint(p, filesystem=latest.filesystem) for p in older)]


def readable_by_rank(directory: str | Path, rank: int) -> str | None:
    """None when this rank can read every file it would load from the checkpoint (train_state.json, the
    model states, its own ZeRO shard), else what is wrong. Plain file reads, no collective, so a rank
    that fails here cannot leave the others waiting inside DeepSpeed's load."""
    import torch

    try:
        state = read_train_state(directory)
    except (OSError, ValueError) as exc:
        return f"{TRAIN_STATE_FILE}: {exc}"
    if state.finished:
        return None
    tag_dir = Path(directory) / DEEPSPEED_TAG
    files = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
    mine = [f for f in files if "zero_pp_rank_" not in f.name or f"zero_pp_rank_{rank}_" in f.name]
    if not mine:
        return f"no DeepSpeed files for rank {rank} in {tag_dir}"
    for path in mine:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file raises many kinds of error
            return f"{path.name}: {type(exc).__name__}: {exc}"[:300]
    return None


def restore_readable_checkpoint(engine, latest, rank: int, agree_any) -> tuple[TrainState, Any]:
    """restore_checkpoint from the newest of the run's checkpoints that every rank can read
    -> (its state, that checkpoint).

    A corrupt latest checkpoint (a half-written upload, a disk error) would fail every restart the same
    way until max_failures runs out; the older checkpoint kept beside it is the fallback. `agree_any(flag)`
    is True on every rank when any rank says True (one all-reduce), so all ranks pick the same one."""
    tried: list[str] = []
    for candidate in checkpoint_candidates(latest):
        with candidate.as_directory() as directory:
            problem = readable_by_rank(directory, rank)
        if not agree_any(problem is not None):
            if tried:
                logger.warning("[train] rank %d: restoring %s instead of the unreadable %s", rank, candidate.path,
                               ", ".join(tried))
            return restore_checkpoint(engine, candidate), candidate
        logger.warning("[train] rank %d: checkpoint %s is unreadable (%s)", rank, candidate.path,
                       problem or "on another rank")
        tried.append(candidate.path)
    raise RuntimeError(f"no checkpoint of this run can be read on every rank: tried {tried}")


def load_best_weights(engine, best_path: str) -> None:
    """Load the best checkpoint's weights (a storage path of this run) before exporting them; collective.
    With the optimizer states: they hold the fp32 master weights the export reads (export_weights.py);
    the module's own copy is bf16 under mixed precision. The lr schedule is not needed."""
    import ray.train
    from ray.train import Checkpoint

    latest = ray.train.get_checkpoint()   # any checkpoint of this run knows the storage filesystem
    best = Checkpoint(best_path, filesystem=latest.filesystem if latest is not None else None)
    with best.as_directory() as directory:
        load_path, _ = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"the best checkpoint {best_path} could not be loaded")
