"""Versioned artifacts: `$RECSYS_HOME/artifacts/<kind>/<version>/` plus a LATEST pointer.

kinds: data (preprocess output), models (HF dirs), indexes (Faiss + id map), eval (reports),
rankers (cross-encoder CTR models, HF dirs).
Everything is Parquet, safetensors, Faiss files or JSON; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from recsys.config import recsys_home

KINDS = ("data", "models", "indexes", "eval", "rankers", "cuts")
MANIFEST = "manifest.json"


class ArtifactNotFound(FileNotFoundError):
    """A `latest`, version name or path that does not resolve to an artifact directory."""


def artifacts_root() -> Path:
    return recsys_home() / "artifacts"


def _kind_dir(kind: str, root: Path | None = None) -> Path:
    if kind not in KINDS:
        raise ValueError(f"artifact kind {kind!r} is not one of {KINDS}")
    return (root or artifacts_root()) / kind


def new_version_dir(kind: str, root: Path | None = None) -> tuple[str, Path]:
    """Create and return a fresh, sortable version directory for `kind`."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    version = f"{stamp}-{secrets.token_hex(3)}"
    path = _kind_dir(kind, root) / version
    path.mkdir(parents=True, exist_ok=False)
    return version, path


def mark_latest(kind: str, version: str, root: Path | None = None) -> None:
    """Point LATEST at `version`; written atomically so readers never see half a name."""
    kind_dir = _kind_dir(kind, root)
    tmp = kind_dir / f".LATEST.{os.getpid()}"
    tmp.write_text(version + "\n")
    tmp.replace(kind_dir / "LATEST")


def resolve_artifact(kind: str, ref: str | Path = "latest", root: Path | None = None) -> Path:
    """'latest', a version name under `kind`, or a directory path -> an existing directory."""
    ref_str = str(ref).strip()
    if not ref_str:
        raise ArtifactNotFound(f"empty {kind} reference: give 'latest', a version name or a directory")
    if ref_str == "latest":
        pointer = _kind_dir(kind, root) / "LATEST"
        if not pointer.is_file():
            raise ArtifactNotFound(
                f"no {kind} artifact yet under {pointer.parent} (run the job that writes it first, "
                f"or set RECSYS_HOME)")
        ref_str = pointer.read_text().strip()
        if not ref_str:
            raise ArtifactNotFound(f"{pointer} is empty: re-run the job that writes {kind} artifacts")
    candidate = Path(ref_str).expanduser()
    for path in (candidate, _kind_dir(kind, root) / ref_str):
        if path.is_dir():
            return path.resolve()
    raise ArtifactNotFound(f"{kind} artifact {ref_str!r} not found (looked in {_kind_dir(kind, root)})")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactNotFound(f"{path} is missing: {directory} is not a complete artifact")
    return json.loads(path.read_text())


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path
