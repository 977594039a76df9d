"""Versioned artifact directories, the LATEST pointer, references and manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys.artifacts import (
    KINDS,
    ArtifactNotFound,
    artifacts_root,
    mark_latest,
    new_version_dir,
    read_manifest,
    resolve_artifact,
    write_json,
    write_manifest,
)


def test_artifacts_root_follows_recsys_home(recsys_home: Path) -> None:
    assert artifacts_root() == recsys_home.resolve() / "artifacts"


def test_new_version_dir_creates_unique_sortable_dirs(recsys_home: Path) -> None:
    v1, p1 = new_version_dir("models")
    v2, p2 = new_version_dir("models")
    assert v1 != v2
    for version, path in ((v1, p1), (v2, p2)):
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", version)
        assert path.is_dir()
        assert path == recsys_home.resolve() / "artifacts" / "models" / version


def test_new_version_dir_with_explicit_root(tmp_path: Path) -> None:
    version, path = new_version_dir("data", root=tmp_path)
    assert path == tmp_path / "data" / version and path.is_dir()


def test_unknown_kind_is_rejected(recsys_home: Path) -> None:
    with pytest.raises(ValueError, match="'model' is not one of"):
        new_version_dir("model")
    with pytest.raises(ValueError, match="'bogus'"):
        resolve_artifact("bogus")
    assert set(KINDS) == {"data", "models", "indexes", "eval", "rankers", "cuts"}


def test_latest_resolves_to_the_marked_version(recsys_home: Path) -> None:
    v1, p1 = new_version_dir("indexes")
    v2, p2 = new_version_dir("indexes")
    mark_latest("indexes", v1)
    assert resolve_artifact("indexes") == p1.resolve()
    assert resolve_artifact("indexes", "latest") == p1.resolve()
    mark_latest("indexes", v2)
    assert resolve_artifact("indexes", "latest") == p2.resolve()
    latest = recsys_home / "artifacts" / "indexes" / "LATEST"
    assert latest.read_text() == v2 + "\n"
    # the atomic write leaves no temporary pointer behind
    assert [p.name for p in latest.parent.iterdir() if p.name.startswith(".LATEST")] == []


def test_resolve_by_version_name_and_by_path(recsys_home: Path, tmp_path: Path) -> None:
    version, path = new_version_dir("models")
    assert resolve_artifact("models", version) == path.resolve()
    assert resolve_artifact("models", str(path)) == path.resolve()
    assert resolve_artifact("models", path) == path.resolve()
    elsewhere = tmp_path / "my_model"
    elsewhere.mkdir()
    assert resolve_artifact("models", str(elsewhere)) == elsewhere.resolve()


def test_latest_without_any_artifact_is_helpful(recsys_home: Path) -> None:
    with pytest.raises(ArtifactNotFound) as err:
        resolve_artifact("data", "latest")
    msg = str(err.value)
    assert "no data artifact yet" in msg
    assert "run the job that writes it first" in msg and "RECSYS_HOME" in msg


def test_missing_version_names_ref_and_where_it_looked(recsys_home: Path) -> None:
    new_version_dir("models")
    with pytest.raises(ArtifactNotFound) as err:
        resolve_artifact("models", "20990101-000000-abcdef")
    msg = str(err.value)
    assert "'20990101-000000-abcdef'" in msg
    assert str(recsys_home.resolve() / "artifacts" / "models") in msg


def test_latest_pointing_at_a_deleted_version(recsys_home: Path) -> None:
    version, path = new_version_dir("eval")
    mark_latest("eval", version)
    path.rmdir()
    with pytest.raises(ArtifactNotFound, match=version):
        resolve_artifact("eval", "latest")


def test_artifact_not_found_is_a_file_not_found_error() -> None:
    assert issubclass(ArtifactNotFound, FileNotFoundError)


def test_empty_reference_is_not_the_working_directory(recsys_home: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactNotFound):
        resolve_artifact("models", "")


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = {"kind": "models", "version": "v1", "config": {"lr": 5e-5, "layers": [1, 2]},
                "path": tmp_path, "ok": True, "n": None}
    written = write_manifest(tmp_path, manifest)
    assert written == tmp_path / "manifest.json"
    back = read_manifest(tmp_path)
    assert back == {**manifest, "path": str(tmp_path)}   # non-JSON values are stored as strings


def test_read_manifest_of_incomplete_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="manifest.json is missing") as err:
        read_manifest(tmp_path)
    assert "not a complete artifact" in str(err.value)


def test_write_json_creates_parents(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "b" / "result.json", {"b": 2, "a": 1})
    assert path.read_text() == '{\n  "a": 1,\n  "b": 2\n}\n'
