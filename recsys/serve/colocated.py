"""Stages colocated in the Ingress replica: the Retriever, Ranker and Reranker classes run as
plain objects inside it and are called through the same `stage.method.remote(...)` convention as
DeploymentHandles, so the Ingress's code is the same in both topologies.

Why: on CPU nodes a hop between deployments buys nothing but costs a lot. bench/serve_bench.py
measured, on 2 cores, ~4 ms per hop to the Ranker and the Reranker (whose work takes 0.1 and
0.9 ms) and ~12 ms to the Retriever, plus the CPU of serialising candidates between processes:
the staged app reached 0.39x the in-process throughput and 1.9x its latency, the colocated one
~0.7-0.9x and ~1.1x. Separate deployments pay off where a stage needs its own hardware or
scale (an encoder on GPUs batching queries from many Ingress replicas): serve_configs/
prod.yaml keeps them, serve_configs/local.yaml colocates (ServeArgs.colocate_stages).

With colocation the stages' user_configs move into the Ingress's, keyed by the stage's
deployment name ({"Retriever": {...}, "Ranker": {...}, "Reranker": {...}}), and still apply in
place on `serve deploy`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

STAGES = ("Retriever", "Ranker", "Reranker")


class StageSpec(BaseModel, extra="forbid"):
    """How to construct one stage in this process: its deployment's bind() arguments."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class _InProcessMethod:
    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        # Started at once, like a handle's request: the caller can do other work (read the user's
        # state) while it runs, then await it, or pass it unawaited to another stage's call.
        return asyncio.ensure_future(self._call(args, kwargs))

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # A handle resolves another call's response passed as an argument; so does this.
        args = tuple([await a if inspect.isawaitable(a) else a for a in args])
        out = self._fn(*args, **kwargs)
        return await out if inspect.isawaitable(out) else out


class InProcessStage:
    """A stage object behind the DeploymentHandle calling convention: stage.method.remote(...)
    returns an awaitable. The stages' sync methods are sub-millisecond (rank, rules) and run on
    the event loop; the slow parts of the Retriever already go to threads."""

    def __init__(self, obj: object):
        self.obj = obj

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self.obj, name))


def construct_stage(deployment: Any, spec: StageSpec) -> InProcessStage:
    """A Serve deployment's class instantiated here with the arguments it would have been bound to."""
    cls = getattr(deployment, "func_or_class", deployment)   # @serve.deployment wraps the class
    return InProcessStage(cls(*spec.args, **spec.kwargs))


def parse_colocated_config(user_config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The Ingress's user_config with colocated stages -> {stage name: its user_config}."""
    if user_config is None:
        return {}
    unknown = sorted(set(user_config) - set(STAGES))
    if unknown:
        raise ValueError(f"Ingress user_config: unknown key(s) {unknown}; with colocate_stages the keys are "
                         f"the stages' names {list(STAGES)}, each holding that stage's user_config")
    out = {}
    for name, value in user_config.items():
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"Ingress user_config.{name}={value!r}: want a mapping (that stage's user_config)")
        out[name] = dict(value or {})
    return out


def reconfigure_stages(stages: Mapping[str, Any], user_config: Mapping[str, Any] | None, colocated: bool,
                       validators: Mapping[str, Callable[[dict[str, Any]], object]]) -> None:
    """Hand each colocated stage its part of the Ingress's user_config ({} for a stage left out:
    its defaults, as the config is declarative). Every part is validated before any is applied,
    so a bad value fails the whole deploy with nothing half changed."""
    if not colocated:
        if user_config:
            raise ValueError(f"Ingress user_config={dict(user_config)!r}: the Ingress takes a user_config only "
                             f"with colocate_stages: true; set each stage's on its own deployment")
        return
    parts = parse_colocated_config(user_config)
    for name in STAGES:
        validators[name](parts.get(name, {}))
    for name in STAGES:
        stages[name].obj.reconfigure(parts.get(name, {}))


def stage_user_config(app_config: dict[str, Any], stage: str) -> dict[str, Any]:
    """Where a stage's user_config lives in one application of a Serve config file (the dict
    itself, to read or edit): in the Ingress's user_config when the app colocates its stages,
    else on the stage's own deployment. Created empty when the config has none yet."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: want one of {list(STAGES)}")
    colocated = bool(app_config.get("args", {}).get("colocate_stages", False))
    name = "Ingress" if colocated else stage
    deployments = app_config.setdefault("deployments", [])
    deployment = next((d for d in deployments if d.get("name") == name), None)
    if deployment is None:
        deployment = {"name": name}
        deployments.append(deployment)
    holder, key = (deployment, "user_config")
    if colocated:
        if holder.get(key) is None:
            holder[key] = {}
        holder, key = holder[key], stage
    if holder.get(key) is None:
        holder[key] = {}
    return holder[key]
