"""Shared fixtures: environment for offline, CPU-only runs and one local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports transformers or ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the repo, or $RECSYS_SHARED_DATA."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data sets not found at {path} (set RECSYS_SHARED_DATA to run these tests)")
    return path


@pytest.fixture()
def recsys_home(tmp_path, monkeypatch) -> Path:
    """A private RECSYS_HOME so tests never touch the user's artifacts."""
    home = tmp_path / "recsys_home"
    home.mkdir()
    monkeypatch.setenv("RECSYS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {k: os.environ[k] for k in
                                           ("HF_HUB_OFFLINE", "RAY_AUTH_MODE", "OMP_NUM_THREADS",
                                            "TOKENIZERS_PARALLELISM")}})
    yield ray
    from ray import serve

    serve.shutdown()  # a no-op when Serve never started
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (same class as MiniLM) with MiniLM's tokenizer: fast training tests."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.models.encoder import resolve_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def serve_app(ray_cluster):
    """Run a Serve application on a free loopback port; yields a function app -> base URL.

    Serve is shut down afterwards: later tests run Ray Train and need the CPUs back.
    """
    from ray import serve

    def start(app) -> str:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, name="recsys", route_prefix="/")
        return f"http://127.0.0.1:{port}"

    yield start
    serve.shutdown()
