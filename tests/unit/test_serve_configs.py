"""The shipped Serve configs: the KubeRay RayService's inline serveConfigV2 is
serve_configs/prod.yaml (its pods provide what prod.yaml needs: the env it names, GPUs), and every
shipped config builds a valid ServeDeploySchema, as `serve deploy` would check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from recsys.runtime import SERVE_HIGH_THROUGHPUT_ENV, serve_cluster_env
from recsys.serve.app import parse_serve_args

REPO = Path(__file__).resolve().parents[2]


def _rayservice() -> dict:
    return yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())


def _deployment(app: dict, name: str) -> dict:
    return next(d for d in app["deployments"] if d["name"] == name)


def test_rayservice_runs_the_production_config() -> None:
    service = _rayservice()
    inline = yaml.safe_load(service["spec"]["serveConfigV2"])
    prod = yaml.safe_load((REPO / "serve_configs" / "prod.yaml").read_text())
    assert inline == prod, "cluster/kuberay/rayservice.yaml serveConfigV2 differs from serve_configs/prod.yaml"
    assert inline["http_options"]["host"] == "0.0.0.0", "the Kubernetes Service must reach the proxies"
    [app] = inline["applications"]
    args = parse_serve_args(app["args"])
    assert args.api_key_env, "feedback and user deletion must need an API key"
    assert args.user_state.backend == "redis" and args.user_state.redis_url_env, "user state shared by all pods"
    assert _deployment(app, "Ingress")["autoscaling_config"]["min_replicas"] >= 2

    # Every Ray container provides the variables the config names ...
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"] for e in container.get("env", [])}
            assert {args.api_key_env, args.user_state.redis_url_env} <= env, container["name"]
    # ... and a worker group has the GPUs the config asks for (the Retriever's num_gpus).
    gpus_asked = sum(d.get("ray_actor_options", {}).get("num_gpus", 0) * d["autoscaling_config"]["min_replicas"]
                     for d in app["deployments"])
    gpus_there = sum(g["minReplicas"] * c["resources"]["limits"].get("nvidia.com/gpu", 0)
                     for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    assert gpus_there >= gpus_asked > 0


def test_rayservice_pods_run_serve_in_high_throughput_mode() -> None:
    """Every Ray container of the RayService starts with the Serve mode the README's `ray start` uses."""
    spec = _rayservice()["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}   # not valueFrom
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


@pytest.mark.parametrize("name", ["local.yaml", "prod.yaml"])
def test_ingress_sheds_well_before_serve_does(name: str) -> None:
    """args.max_in_flight well below the Ingress's max_ongoing_requests: at that limit Serve's router
    re-probes a full replica only every 0.5 s (recsys/serve/app.py, ServeArgs.max_in_flight)."""
    for app in yaml.safe_load((REPO / "serve_configs" / name).read_text())["applications"]:
        max_in_flight = parse_serve_args(app["args"]).max_in_flight
        assert max_in_flight is not None, app["name"]
        assert 2 * max_in_flight <= _deployment(app, "Ingress")["max_ongoing_requests"], app["name"]
