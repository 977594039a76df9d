"""Model soups: average the weights of several fine-tunes of one base encoder into a new model version.

Wortsman et al. 2022 ("Model soups"): fine-tunes that start from the same pre-trained weights land in one
low-loss basin, so their weight average is itself a good model, usually better than each ingredient, at
the cost of one model at serving time. On Home Depot five stage-2 runs that differ in hard-negative and
length settings average to NDCG@10 0.370 where the best of them reaches 0.367 (README, "Measured results").

A uniform (or weighted) average is a few lines over safetensors, so it is written here rather than taken
from mergekit, whose recipes, architectures and dependencies are for LLM merging. The job reads no data
and starts no Ray: it reads one ingredient at a time into a float64 running sum, so memory holds the sum,
the first ingredient and the one being read, however many ingredients there are.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from pydantic import Field, model_validator

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.config import JobConfig
from recsys.runtime import log

JOB = "average_models"
# Written by a training run about itself; a soup has no run to resume, curves or mined pairs.
NOT_COPIED = ("manifest.json", "run.json", "train_state.json", "loss_curve.json", "training_curves.png", "logs",
              "hard_negative_pairs", "user_tower")


class AverageModelsConfig(JobConfig):
    models: list[str] = Field(default_factory=list, description="two or more model versions (or paths) to "
                                                               "average: fine-tunes of one base model with the "
                                                               "same towers")
    weights: list[float] | None = Field(None, description="one weight > 0 per model, normalised to sum to 1; "
                                                         "null = the uniform soup")

    @model_validator(mode="after")
    def _check_weights(self) -> AverageModelsConfig:
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"weights has {len(self.weights)} values for {len(self.models)} models: give one "
                                 "weight per model")
            if any(w <= 0 for w in self.weights):
                raise ValueError(f"weights={self.weights}: every weight must be > 0")
        return self

    def checked_models(self) -> list[str]:
        # Checked when the job runs, not on load: the shipped YAML has no versions to name yet.
        if len(self.models) < 2:
            raise ValueError(f"models={self.models}: name two or more model versions to average, e.g. "
                             "--set \"models=[<version>,<version>]\" (see $RECSYS_HOME/artifacts/models/)")
        return self.models

    def normalised_weights(self) -> list[float]:
        raw = self.weights or [1.0] * len(self.models)
        return [w / sum(raw) for w in raw]


def weight_files(model_dir: Path) -> list[str]:
    """Every safetensors file of a model directory (shards, and the query tower of separate towers),
    relative to it; the sequence user tower is not part of the encoder."""
    return sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*.safetensors")
                  if p.relative_to(model_dir).parts[0] not in NOT_COPIED)


def check_ingredients(models: dict[str, tuple[Path, dict]]) -> list[str]:
    """Refuse models whose average means nothing; -> the weight files they all share.
    models: version -> (directory, manifest)."""
    (first, (first_dir, first_manifest)), *others = models.items()
    files = weight_files(first_dir)
    if not files:
        raise ValueError(f"model {first} ({first_dir}) has no .safetensors weights to average")
    for version, (directory, manifest) in models.items():
        if manifest.get("kind") != "model":
            raise ValueError(f"{directory} is not a model artifact (manifest kind={manifest.get('kind')!r})")
        kind = manifest.get("user_tower", {}).get("kind", "text")
        if kind != "text":
            raise ValueError(f"model {version} has user_tower.kind={kind!r}: that tower was trained on its own item "
                             "embeddings, which an average changes; average the text-tower runs instead")
    for version, (directory, manifest) in others:
        for field in ("base_model", "config.towers", "config.pooling"):
            mine, theirs = _field(first_manifest, field), _field(manifest, field)
            if mine != theirs:
                raise ValueError(f"models {first} and {version} differ in {field} ({mine!r} vs {theirs!r}): only "
                                 "fine-tunes of one base model with the same towers and pooling average well")
        if weight_files(directory) != files:
            raise ValueError(f"models {first} and {version} have different weight files ({files} vs "
                             f"{weight_files(directory)})")
        for relative in files:
            mine, theirs = tensor_shapes(first_dir / relative), tensor_shapes(directory / relative)
            if mine.keys() != theirs.keys():
                diff = sorted(mine.keys() ^ theirs.keys())[:5]
                raise ValueError(f"{relative} of models {first} and {version} hold different tensors (e.g. {diff})")
            for key, shape in mine.items():
                if theirs[key] != shape:
                    raise ValueError(f"tensor {key} in {relative} has shape {theirs[key]} in model {version} and "
                                     f"{shape} in {first}: not the same architecture")
    return files


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """name -> shape from a safetensors header, without reading the weights."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _field(manifest: dict, dotted: str):
    value: object = manifest
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def average_weight_file(paths: list[Path], weights: list[float], names: list[str]) -> dict[str, torch.Tensor]:
    """The weighted average of one safetensors file across ingredients, in the first one's dtypes.
    Integer tensors (position ids) must be identical and are kept."""
    from safetensors.torch import load_file

    total: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for path, weight, name in zip(paths, weights, names):   # names and shapes match: check_ingredients
        tensors = load_file(str(path))
        for key, tensor in tensors.items():
            if tensor.is_floating_point():
                total[key] = total[key] + tensor.double() * weight if key in total else tensor.double() * weight
            elif reference and not torch.equal(tensor, reference[key]):
                raise ValueError(f"integer tensor {key} differs between models {names[0]} and {name}")
        reference = reference or tensors
    return {key: (total[key].to(tensor.dtype) if key in total else tensor).contiguous()
            for key, tensor in reference.items()}


def write_soup(out_dir: Path, model_dirs: list[Path], files: list[str], weights: list[float],
               names: list[str]) -> None:
    """The first ingredient's config and tokenizer, and every weight file averaged, into out_dir."""
    from safetensors.torch import save_file

    shutil.copytree(model_dirs[0], out_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*NOT_COPIED, "*.safetensors"))
    for relative in files:
        log(JOB, f"averaging {relative} over {len(names)} models (weights {', '.join(f'{w:.3f}' for w in weights)})")
        averaged = average_weight_file([d / relative for d in model_dirs], weights, names)
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        save_file(averaged, str(out_dir / relative), metadata={"format": "pt"})


def run_average_models(cfg: AverageModelsConfig) -> dict:
    """jobs/average_models.py: check the ingredients, average every weight file, write a model version."""
    from recsys.index.build import resolve_model

    started = time.perf_counter()
    models: dict[str, tuple[Path, dict]] = {}
    for ref in cfg.checked_models():
        path, version, manifest = resolve_model(ref)
        if version in models:
            raise ValueError(f"models lists {version} twice ({cfg.models}): give it a larger weight instead")
        models[version] = (Path(path), manifest)
    weights = cfg.normalised_weights()
    files = check_ingredients(models)
    names = list(models)
    first_dir, first_manifest = models[names[0]]
    version, out_dir = new_version_dir("models")
    try:
        write_soup(out_dir, [models[n][0] for n in names], files, weights, names)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)   # never leave half a model version behind
        raise
    manifests = [m for _, m in models.values()]
    manifest = {
        **{k: first_manifest[k] for k in ("base_model", "config", "data_version") if k in first_manifest},
        "kind": "model", "version": version, "user_tower": {"kind": "text"},
        # Each reader embeds at these lengths; the longest of the ingredients truncates least.
        **{k: max(int(m.get(k, 0)) for m in manifests) for k in ("query_max_length", "item_max_length")},
        "soup": {"method": "uniform" if cfg.weights is None else "weighted",
                 "ingredients": [{"version": n, "weight": round(w, 6), "data_version": models[n][1].get("data_version")}
                                 for n, w in zip(names, weights)]},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_manifest(out_dir, manifest)
    mark_latest("models", version)
    log(JOB, f"model {version}: the average of {', '.join(names)} -> {out_dir}")
    return {"model_version": version, "model_dir": str(out_dir), "ingredients": names, "weights": weights,
            "seconds": manifest["wall_seconds"]}
