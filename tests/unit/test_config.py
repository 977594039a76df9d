"""Job configs: YAML + `--set` overrides -> typed, validated pydantic models with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from recsys.config import ConfigError, JobConfig, apply_overrides, load_config, parse_job_args
from recsys.data.config import PreprocessConfig
from recsys.data.holdout_cut import HoldoutCutConfig
from recsys.eval.config import EvalConfig
from recsys.eval.search_config import SearchEvalConfig
from recsys.index.config import IndexConfig
from recsys.train.config import TrainConfig
from recsys.train.model_soup import AverageModelsConfig
from recsys.train.ranker_config import RankerTrainConfig
from recsys.train.recommend_ranker_config import RecommendRankerConfig
from recsys.train.search_ranker_config import SearchRankerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "jobs" / "configs"
CONFIG_CLASSES: dict[str, type[JobConfig]] = {
    "preprocess": PreprocessConfig,
    "train": TrainConfig,
    "build_index": IndexConfig,
    "evaluate": EvalConfig,
    "evaluate_search": SearchEvalConfig,
    "train_ranker": RankerTrainConfig,
    "average_models": AverageModelsConfig,
    "train_search_ranker": SearchRankerConfig,
    "train_recommend_ranker": RecommendRankerConfig,
    "holdout_cut": HoldoutCutConfig,
}


class Inner(JobConfig):
    depth: int = Field(1, ge=1)
    name: str = "inner"


class ToyConfig(JobConfig):
    count: int = 3
    ratio: float = 0.5
    flag: bool = False
    label: str = "x"
    tags: list[str] = Field(default_factory=list)
    inner: Inner = Field(default_factory=Inner)


# ---------------------------------------------------------------- apply_overrides
def test_apply_overrides_nested_and_typed() -> None:
    raw = {"inner": {"depth": 1, "name": "a"}, "count": 1}
    out = apply_overrides(raw, ["inner.depth=4", "count=7", "ratio=0.25", "flag=true",
                                "tags=[a, b]", "label=null", "inner.new.leaf=x"])
    assert out == {"inner": {"depth": 4, "name": "a", "new": {"leaf": "x"}}, "count": 7, "ratio": 0.25,
                   "flag": True, "tags": ["a", "b"], "label": None}
    assert isinstance(out["count"], int) and isinstance(out["ratio"], float)
    # the input dict is not modified
    assert raw == {"inner": {"depth": 1, "name": "a"}, "count": 1}


def test_apply_overrides_keeps_strings_and_splits_on_first_equals() -> None:
    out = apply_overrides({}, ["label=hello world", "expr=a=b", "empty=", " spaced.key =v"])
    assert out == {"label": "hello world", "expr": "a=b", "empty": "", "spaced": {"key": "v"}}


def test_apply_overrides_later_override_wins() -> None:
    assert apply_overrides({"count": 1}, ["count=2", "count=3"]) == {"count": 3}


def test_apply_overrides_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'inner\.depth' must look like key\.sub=value"):
        apply_overrides({}, ["inner.depth"])


def test_apply_overrides_into_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'count' is not a section"):
        apply_overrides({"count": 1}, ["count.sub=2"])


# ---------------------------------------------------------------- load_config
def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_config_defaults_without_path() -> None:
    cfg = load_config(ToyConfig, None)
    assert cfg == ToyConfig()
    assert cfg.inner.depth == 1


def test_load_config_yaml_plus_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "count: 5\ninner:\n  depth: 2\n  name: file\n")
    cfg = load_config(ToyConfig, path, ["inner.depth=9", "flag=yes"])
    assert (cfg.count, cfg.inner.depth, cfg.inner.name, cfg.flag) == (5, 9, "file", True)


def test_load_config_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(ToyConfig, write(tmp_path, "# only a comment\n")) == ToyConfig()


def test_load_config_unknown_field_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "count: 1\ncuont: 42\n")
    with pytest.raises(ConfigError) as err:
        load_config(ToyConfig, path)
    msg = str(err.value)
    assert "ToyConfig" in msg and "cuont" in msg and "42" in msg


def test_load_config_unknown_nested_field_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"unknown field 'inner\.bogus' \(value 'zzz'\)"):
        load_config(ToyConfig, None, ["inner.bogus=zzz"])


def test_load_config_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "count: lots\n")
    with pytest.raises(ConfigError, match=r"count='lots': .*valid integer"):
        load_config(ToyConfig, path)
    with pytest.raises(ConfigError, match=r"inner\.depth=0: .*greater than or equal to 1"):
        load_config(ToyConfig, None, ["inner.depth=0"])


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_config(ToyConfig, missing)
    assert str(missing) in str(err.value)


def test_load_config_non_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping, got list"):
        load_config(ToyConfig, write(tmp_path, "- a\n- b\n"))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- parse_job_args
def test_parse_job_args_reads_config_and_sets(tmp_path: Path) -> None:
    path = write(tmp_path, "count: 5\n")
    cfg = parse_job_args(ToyConfig, "toy", ["--config", str(path), "--set", "label=y", "--set", "inner.depth=3"])
    assert (cfg.count, cfg.label, cfg.inner.depth) == (5, "y", 3)


def test_parse_job_args_bad_value_exits_2_with_message(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_job_args(ToyConfig, "toy", ["--set", "count=many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid ToyConfig") and "count" in err and "'many'" in err


def test_parse_job_args_malformed_override_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_job_args(ToyConfig, "toy", ["--set", "count"])
    assert exc.value.code == 2
    assert "must look like key.sub=value" in capsys.readouterr().err


def test_parse_job_args_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_job_args(ToyConfig, "toy", ["--config", str(tmp_path / "absent.yaml")])
    assert exc.value.code == 2
    assert "absent.yaml" in capsys.readouterr().err


# ---------------------------------------------------------------- the real job configs
def test_preprocess_config_nested_overrides() -> None:
    cfg = load_config(PreprocessConfig, None, ["source.synthetic.n_users=20", "source.path=/data/events.csv",
                                               "sequences.session_gap_minutes=15"])
    assert cfg.source.synthetic.n_users == 20
    assert cfg.source.path == "/data/events.csv"
    assert cfg.sequences.session_gap_minutes == 15.0
    with pytest.raises(ConfigError, match=r"source\.synthetic\.n_users=5: "):
        load_config(PreprocessConfig, None, ["source.synthetic.n_users=5"])
    with pytest.raises(ConfigError, match=r"source\.pth"):
        load_config(PreprocessConfig, None, ["source.pth=x"])


def test_train_config_offload_param_needs_zero3() -> None:
    with pytest.raises(ConfigError, match="offload_param needs zero_stage=3, got zero_stage=2"):
        load_config(TrainConfig, None, ["offload_param=true"])
    cfg = load_config(TrainConfig, None, ["offload_param=true", "zero_stage=3"])
    assert cfg.offload_param and cfg.zero_stage == 3
    with pytest.raises(ConfigError, match=r"zero_stage=4: "):
        load_config(TrainConfig, None, ["zero_stage=4"])


@pytest.mark.parametrize(("bf16", "use_gpu", "expected"), [
    ("auto", False, False), ("auto", True, True), (True, False, True), (False, True, False),
])
def test_train_config_use_bf16(bf16, use_gpu, expected) -> None:
    assert TrainConfig(bf16=bf16, use_gpu=use_gpu).use_bf16 is expected


def test_train_config_bf16_override_and_bad_value() -> None:
    assert load_config(TrainConfig, None, ["bf16=auto"]).bf16 == "auto"
    assert load_config(TrainConfig, None, ["bf16=false", "use_gpu=true"]).use_bf16 is False
    with pytest.raises(ConfigError, match=r"bf16.*'maybe'"):
        load_config(TrainConfig, None, ["bf16=maybe"])


def test_train_config_lora_list_override() -> None:
    cfg = load_config(TrainConfig, None, ["lora.enabled=true", "lora.target_modules=[query, key, value]"])
    assert cfg.lora.enabled and cfg.lora.target_modules == ["query", "key", "value"]
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        load_config(TrainConfig, None, ["lora.dropout=1.0"])


def test_train_config_checkpoint_and_evaluation_rules() -> None:
    cfg = load_config(TrainConfig, None, ["checkpoint_every=30", "eval_every=20", "early_stopping_patience=3"])
    assert (cfg.checkpoint_every, cfg.eval_every, cfg.early_stopping_patience) == (30, 20, 3)
    with pytest.raises(ConfigError, match="early_stopping_patience=2 needs eval_every > 0, got eval_every=0"):
        load_config(TrainConfig, None, ["eval_every=0", "early_stopping_patience=2"])
    with pytest.raises(ConfigError, match=r"eval_metric='mrr'"):
        load_config(TrainConfig, None, ["eval_metric=mrr"])
    assert load_config(TrainConfig, None, ["checkpoint_every=null", "eval_every=0"]).checkpoint_every is None


def test_index_and_eval_configs_validate() -> None:
    assert load_config(IndexConfig, None, ["factory=HNSW32"]).factory == "HNSW32"
    with pytest.raises(ConfigError, match=r"embed_batch_size=0: "):
        load_config(IndexConfig, None, ["embed_batch_size=0"])
    cfg = load_config(EvalConfig, None, ["methods=[popularity]", "split=valid", "ks=[5]"])
    assert (cfg.methods, cfg.split, cfg.ks) == (["popularity"], "valid", [5])
    with pytest.raises(ConfigError, match=r"methods\.0.*'magic'"):
        load_config(EvalConfig, None, ["methods=[magic]"])
    with pytest.raises(ConfigError, match=r"split.*'train'"):
        load_config(EvalConfig, None, ["split=train"])


def test_every_job_yaml_loads_into_its_config_class() -> None:
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert files, f"no job configs in {CONFIG_DIR}"
    for path in files:
        job = path.name.split(".", 1)[0]
        assert job in CONFIG_CLASSES, f"{path.name}: no config class known for job {job!r}"
        cfg = load_config(CONFIG_CLASSES[job], path)
        assert isinstance(cfg, CONFIG_CLASSES[job])
    assert {p.name.split(".", 1)[0] for p in files} == set(CONFIG_CLASSES)


def test_default_yaml_files_match_class_defaults() -> None:
    # The checked-in default YAMLs document the defaults; they should not drift apart.
    for job, cls in CONFIG_CLASSES.items():
        path = CONFIG_DIR / f"{job}.default.yaml"
        assert load_config(cls, path).model_dump() == cls().model_dump(), path.name


def test_preprocess_source_columns_must_name_our_columns() -> None:
    cfg = load_config(PreprocessConfig, None, ["source.columns.user_id=visitorid", "source.timestamp_unit=ms"])
    assert cfg.source.columns == {"user_id": "visitorid"} and cfg.source.timestamp_unit == "ms"
    with pytest.raises(ConfigError, match=r"columns has unknown keys \['visitor'\]"):
        load_config(PreprocessConfig, None, ["source.columns.visitor=user"])
    with pytest.raises(ConfigError, match="timestamp_unit"):
        load_config(PreprocessConfig, None, ["source.timestamp_unit=weeks"])
    with pytest.raises(ConfigError, match="event_type_aliases map to unknown event types"):
        load_config(PreprocessConfig, None, ["cleaning.event_type_aliases.hover=peek"])


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_job_config_validates(path: Path) -> None:
    """The YAML files users start from must load with their job's config class (unknown keys are errors)."""
    job = path.name.split(".")[0]
    cls = CONFIG_CLASSES[job]
    cfg = load_config(cls, str(path), [])
    if path.name == "train.gpu.yaml":
        assert cfg.use_gpu and cfg.use_bf16 and cfg.num_workers > 1
