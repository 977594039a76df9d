"""Training runs that can be resumed: `run.json` in the version directory (models/ or rankers/).

A run writes `run.json` (Ray run name, storage path, data version, config, step budget) into
its version directory before training starts, and `manifest.json` once the model is
exported. A directory with the first and not the second is a stopped run: `--resume` reuses
its run name and storage path, so Ray Train finds the run's checkpoint snapshot and every
worker starts from the latest checkpoint; the model lands in the same version directory.
Pure file logic (no Ray), unit-tested.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, TypeVar

from recsys.artifacts import MANIFEST, ArtifactNotFound, artifacts_root, write_json
from recsys.train.run_config import DeepSpeedRunConfig

C = TypeVar("C", bound=DeepSpeedRunConfig)

RUN_FILE = "run.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"   # Ray Train V2 writes it with the first checkpoint
# Fields a resumed run may change: how it is scheduled and logged, not what it trains.
RESUME_MAY_CHANGE = frozenset({"resume", "max_failures", "log_every", "cpus_per_worker", "checkpoints_to_keep"})


def write_run_record(model_dir: Path, record: dict[str, Any]) -> Path:
    return write_json(Path(model_dir) / RUN_FILE, record)


def read_run_record(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / RUN_FILE).read_text())


def find_run_to_resume(ref: str, models_dir: Path | None = None, job: str = "train"
                       ) -> tuple[str, Path, dict[str, Any]]:
    """'latest' (the most recently started run) or a version -> (version, its dir, run record), among the
    runs under models_dir (default: the models/ artifacts; jobs/train_ranker.py passes rankers/).

    Raises ArtifactNotFound when there is no such run or it already finished.
    """
    models_dir = Path(models_dir or artifacts_root() / "models")
    if ref == "latest":
        runs = sorted(p for p in models_dir.glob("*") if (p / RUN_FILE).is_file()) if models_dir.is_dir() else []
        if not runs:
            raise ArtifactNotFound(f"resume='latest': no training run to resume under {models_dir} "
                                   f"(start one with python jobs/{job}.py)")
        model_dir = runs[-1]
    else:
        model_dir = models_dir / ref
        if not (model_dir / RUN_FILE).is_file():
            known = sorted(p.name for p in models_dir.glob("*") if (p / RUN_FILE).is_file()) if \
                models_dir.is_dir() else []
            raise ArtifactNotFound(f"resume={ref!r}: no training run with that version under {models_dir} "
                                   f"(runs: {known[-5:] or 'none'})")
    if (model_dir / MANIFEST).is_file():
        raise ArtifactNotFound(f"resume={ref!r}: run {model_dir.name} already finished ({model_dir / MANIFEST} "
                               f"exists); nothing to resume")
    return model_dir.name, model_dir, read_run_record(model_dir)


def config_for_resume(given: C, stored: dict[str, Any]) -> C:
    """The stopped run's config, with the few operational fields the command line set.

    A field set on the command line (YAML or --set) that would change what is trained is an error,
    naming the field and both values: a resumed run continues the same training, or it is a new run.
    """
    original = type(given).model_validate(stored)
    conflicts = [f"{name}={getattr(given, name)!r} (the run has {getattr(original, name)!r})"
                 for name in sorted(given.model_fields_set - RESUME_MAY_CHANGE)
                 if getattr(given, name) != getattr(original, name)]
    if conflicts:
        raise ValueError("cannot resume with a different training config: " + ", ".join(conflicts)
                         + "; resume with the run's own config (--resume alone) or start a new run")
    changes = {name: getattr(given, name) for name in given.model_fields_set & RESUME_MAY_CHANGE}
    return original.model_copy(update=changes)


def has_checkpoint(record: dict[str, Any]) -> bool:
    """Whether Ray Train persisted at least one checkpoint for the run (local or mounted storage)."""
    return (Path(record["storage_path"]) / record["run_name"] / RAY_SNAPSHOT).is_file()


def remove_unregistered_checkpoints(record: dict[str, Any]) -> list[str]:
    """Delete checkpoint directories Ray Train never registered: uploaded by a worker group that died
    before every rank had reported, they are never restored, listed or cleaned up by `num_to_keep`.

    Reads Ray's snapshot of registered checkpoints; when it cannot be understood, deletes nothing.
    Call only while no trainer runs for this run. Returns the deleted directory names.
    """
    run_dir = Path(record["storage_path"]) / record["run_name"]
    registered: set[str] = set()
    if (run_dir / RAY_SNAPSHOT).is_file():
        try:
            snapshot = json.loads((run_dir / RAY_SNAPSHOT).read_text())
            results = snapshot["checkpoint_results"] + [snapshot.get("latest_checkpoint_result") or {}]
            registered = {r["checkpoint_dir_name"] for r in results if r}
        except (ValueError, KeyError, TypeError):
            return []
    orphans = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir() and p.name not in registered)
    for path in orphans:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in orphans]
