"""jobs/average_models.py: weight averages of real (tiny, random) BERT model versions, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recsys.artifacts import read_manifest, resolve_artifact
from recsys.models.encoder import QUERY_TOWER_DIR, TextEmbedder, query_tower_path
from recsys.runtime import run_job
from recsys.train.model_soup import AverageModelsConfig, run_average_models

HIDDEN = 32


def make_model(home: Path, tokenizer_dir: Path, version: str, seed: int, hidden: int = HIDDEN,
               separate_towers: bool = False, **manifest) -> Path:
    """A model version as jobs/train.py writes one: HF dir + manifest (+ query_tower/), random weights."""
    from transformers import BertConfig, BertModel

    path = home / "artifacts" / "models" / version
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    if separate_towers:
        torch.manual_seed(seed + 100)
        BertModel(config, add_pooling_layer=False).save_pretrained(path / QUERY_TOWER_DIR)
    tokenizer_only = shutil.ignore_patterns("config.json", "*.safetensors")
    for tower in [path, path / QUERY_TOWER_DIR] if separate_towers else [path]:
        shutil.copytree(tokenizer_dir, tower, dirs_exist_ok=True, ignore=tokenizer_only)
    (path / "logs").mkdir()
    (path / "run.json").write_text("{}")
    record = {"kind": "model", "version": version, "base_model": "/models/minilm", "data_version": "d1",
              "config": {"towers": "separate" if separate_towers else "shared", "pooling": "mean"},
              "query_max_length": 24, "item_max_length": 32, "user_tower": {"kind": "text"}, **manifest}
    (path / "manifest.json").write_text(json.dumps(record))
    return path


def soup(*models: str, weights: list[float] | None = None) -> dict:
    return run_average_models(AverageModelsConfig(models=list(models), weights=weights))


def test_uniform_soup_is_the_mean_of_every_weight_and_loads_as_an_encoder(recsys_home, tiny_model_dir) -> None:
    dirs = [make_model(recsys_home, tiny_model_dir, f"m{i}", seed=i) for i in range(3)]
    result = run_job("average_models", AverageModelsConfig, run_average_models, "",
                     argv=["--set", "models=[m0,m1,m2]"], uses_ray=False)
    out = Path(result["model_dir"])
    assert resolve_artifact("models", "latest") == out
    ingredients = [load_file(str(d / "model.safetensors")) for d in dirs]
    averaged = load_file(str(out / "model.safetensors"))
    assert averaged.keys() == ingredients[0].keys()
    for key, tensor in averaged.items():
        expected = sum(w[key].double() for w in ingredients) / 3 if tensor.is_floating_point() else ingredients[0][key]
        torch.testing.assert_close(tensor, expected.to(tensor.dtype))
        differs = not torch.equal(ingredients[0][key], ingredients[1][key])
        if tensor.is_floating_point() and differs:
            assert not torch.equal(tensor, ingredients[0][key])   # really a new weight, not a copy
    manifest = read_manifest(out)
    assert [i["version"] for i in manifest["soup"]["ingredients"]] == ["m0", "m1", "m2"]
    assert manifest["soup"]["method"] == "uniform" and manifest["base_model"] == "/models/minilm"
    assert not (out / "run.json").exists() and not (out / "logs").exists()   # nothing to resume or plot
    # What the index job and the Serve app use to embed: the averaged weights, through Hugging Face.
    embedder = TextEmbedder(str(out), max_length=manifest["item_max_length"])
    vectors = embedder.embed(["cordless drill", "patio paver"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    for key, tensor in embedder.encoder.backbone.state_dict().items():
        if key in averaged:
            torch.testing.assert_close(tensor, averaged[key])


def test_weights_are_normalised_and_both_towers_are_averaged(recsys_home, tiny_model_dir) -> None:
    dirs = [make_model(recsys_home, tiny_model_dir, f"s{i}", seed=i, separate_towers=True) for i in range(2)]
    out = Path(soup("s0", "s1", weights=[3, 1])["model_dir"])
    assert query_tower_path(out) == str(out / QUERY_TOWER_DIR)
    for relative in ("model.safetensors", f"{QUERY_TOWER_DIR}/model.safetensors"):
        a, b = (load_file(str(d / relative)) for d in dirs)
        averaged = load_file(str(out / relative))
        key = next(k for k in averaged if averaged[k].is_floating_point() and averaged[k].numel() > 1)
        torch.testing.assert_close(averaged[key], (0.75 * a[key].double() + 0.25 * b[key].double()).float())
    assert [i["weight"] for i in read_manifest(out)["soup"]["ingredients"]] == [0.75, 0.25]


@pytest.mark.parametrize("other, message", [
    ({"hidden": 64}, "shape"),
    ({"base_model": "/models/bge-large"}, "base_model"),
    ({"separate_towers": True}, "config.towers"),
    ({"user_tower": {"kind": "sequence"}}, "user_tower.kind='sequence'"),
])
def test_models_that_do_not_average_are_refused_and_nothing_is_written(recsys_home, tiny_model_dir, other,
                                                                     message) -> None:
    make_model(recsys_home, tiny_model_dir, "a", seed=0)
    make_model(recsys_home, tiny_model_dir, "b", seed=1, **other)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        soup("a", "b")
    assert sorted(p.name for p in (recsys_home / "artifacts" / "models").iterdir()) == ["a", "b"]


def test_a_model_listed_twice_or_weights_of_the_wrong_length_are_errors(recsys_home, tiny_model_dir,
                                                                       capsys) -> None:
    make_model(recsys_home, tiny_model_dir, "a", seed=0)
    with pytest.raises(ValueError, match="lists a twice"):
        soup("a", "a")
    with pytest.raises(ValueError, match=r"models=\['a'\]: name two or more"):
        soup("a")
    with pytest.raises(SystemExit) as exit_info:
        run_job("average_models", AverageModelsConfig, run_average_models, "",
                argv=["--set", "models=[a,b]", "--set", "weights=[1]"], uses_ray=False)
    assert exit_info.value.code == 2
    assert "weights has 1 values for 2 models" in capsys.readouterr().err
