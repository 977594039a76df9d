"""The shipped Serve configs: the KubeRay RayService's inline serveConfigV2 mirrors
serve_configs/local.yaml (only the HTTP host differs), and every shipped config builds a valid
ServeDeploySchema, as `serve deploy` would check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from recsys.runtime import SERVE_HIGH_THROUGHPUT_ENV, serve_cluster_env
from recsys.serve.app import parse_serve_args

REPO = Path(__file__).resolve().parents[2]


def test_rayservice_mirrors_local_config() -> None:
    service = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    inline = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    assert inline["http_options"]["host"] == "0.0.0.0", "the Kubernetes Service must reach the proxies"
    local["http_options"]["host"] = "0.0.0.0"
    assert inline == local, "cluster/kuberay/rayservice.yaml serveConfigV2 differs from serve_configs/local.yaml"


def test_rayservice_pods_run_serve_in_high_throughput_mode() -> None:
    """Every Ray container of the RayService starts with the Serve mode the README's `ray start` uses."""
    spec = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert {k: env.get(k) for k in SERVE_HIGH_THROUGHPUT_ENV} == SERVE_HIGH_THROUGHPUT_ENV, container["name"]


def test_serve_cluster_env_defaults_to_haproxy_and_lets_the_caller_opt_out() -> None:
    assert serve_cluster_env({}) == SERVE_HIGH_THROUGHPUT_ENV
    assert serve_cluster_env({"RAY_SERVE_ENABLE_HA_PROXY": "0"})["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


@pytest.mark.parametrize("name", ["local.yaml", "prod.yaml"])
def test_shipped_configs_are_valid_serve_configs(name: str) -> None:
    raw = yaml.safe_load((REPO / "serve_configs" / name).read_text())
    ServeDeploySchema.model_validate(raw)   # what serve deploy checks before it sends the config
    for app in raw["applications"]:
        parse_serve_args(app["args"])     # what build_app checks on the cluster
