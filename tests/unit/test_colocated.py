"""Colocated stages (recsys/serve/colocated.py): the handle calling convention over in-process
objects, the Ingress user_config split per stage, and where a stage's user_config lives in a
Serve config. The colocated app over real HTTP: tests/integration/test_serve_http.py and
test_serve_storefront.py (serve_configs/local.yaml colocates)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from recsys.serve.colocated import (
    STAGES,
    InProcessStage,
    StageSpec,
    construct_stage,
    parse_colocated_config,
    reconfigure_stages,
    stage_user_config,
)

REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """A stand-in stage with one sync and one async method, recording reconfigure calls."""

    def __init__(self, scale: int = 1, label: str = "x"):
        self.scale, self.label, self.configs = scale, label, []

    def double(self, values: list[int]) -> list[int]:
        return [self.scale * 2 * v for v in values]

    async def plus_one(self, values: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return [v + 1 for v in values]

    def reconfigure(self, cfg: dict) -> None:
        self.configs.append(cfg)


def test_in_process_calls_start_at_once_and_resolve_passed_responses() -> None:
    stage = construct_stage(Recorder, StageSpec(args=[3], kwargs={"label": "y"}))
    assert stage.obj.scale == 3 and stage.obj.label == "y"

    async def run() -> list[int]:
        first = stage.plus_one.remote([1, 2])            # an unawaited response ...
        return await stage.double.remote(first)          # ... passed on, as with a DeploymentHandle

    assert asyncio.run(run()) == [12, 18]


def test_colocated_user_config_is_split_by_stage_and_validated_before_any_is_applied() -> None:
    stages = {name: InProcessStage(Recorder()) for name in STAGES}

    def refuse_negative(cfg: dict) -> None:
        if cfg.get("weight", 0) < 0:
            raise ValueError(f"weight={cfg['weight']}")

    validators = {name: refuse_negative for name in STAGES}
    reconfigure_stages(stages, {"Ranker": {"weight": 1}}, colocated=True, validators=validators)
    # A stage left out gets {}: its defaults (the config is declarative).
    assert [s.obj.configs for s in stages.values()] == [[{}], [{"weight": 1}], [{}]]

    with pytest.raises(ValueError, match="weight=-1"):
        reconfigure_stages(stages, {"Retriever": {"weight": 2}, "Reranker": {"weight": -1}}, colocated=True,
                           validators=validators)
    assert stages["Retriever"].obj.configs == [{}], "nothing applied when one part is bad"

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['Rankr'\]"):
        parse_colocated_config({"Rankr": {}})
    with pytest.raises(ValueError, match="user_config.Ranker=3"):
        parse_colocated_config({"Ranker": 3})
    with pytest.raises(ValueError, match="only with colocate_stages"):
        reconfigure_stages({}, {"Ranker": {}}, colocated=False, validators={})


@pytest.mark.parametrize(("name", "colocated"), [("local.yaml", True), ("prod.yaml", False)])
def test_stage_user_config_finds_each_stage_in_the_shipped_configs(name: str, colocated: bool) -> None:
    app = yaml.safe_load((REPO / "serve_configs" / name).read_text())["applications"][0]
    assert bool(app["args"].get("colocate_stages", False)) is colocated
    deployments = {d["name"] for d in app["deployments"]}
    assert deployments == ({"Ingress"} if colocated else {"Ingress", *STAGES})
    assert stage_user_config(app, "Retriever")["max_batch_size"] >= 1
    assert "retrieval_weight" in stage_user_config(app, "Ranker")
    rules = stage_user_config(app, "Reranker")
    rules["max_per_category"] = 5   # the dict itself: an edit lands in the config
    assert stage_user_config(app, "Reranker")["max_per_category"] == 5

    bare = {"args": {"colocate_stages": colocated}}
    stage_user_config(bare, "Ranker")["popularity_weight"] = 0.5
    expected = ({"name": "Ingress", "user_config": {"Ranker": {"popularity_weight": 0.5}}} if colocated
                else {"name": "Ranker", "user_config": {"popularity_weight": 0.5}})
    assert bare["deployments"] == [expected]
    with pytest.raises(ValueError, match="stage='Ingress'"):
        stage_user_config(app, "Ingress")
