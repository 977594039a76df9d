"""Training control without Ray: validation users, in-loop ranking, early stopping, checkpoint state,
resumable runs, and metrics logs that continue without duplicate steps after a restart."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsys.artifacts import ArtifactNotFound, write_manifest
from recsys.config import parse_job_args
from recsys.eval.metrics import summarize_ranks, target_ranks
from recsys.models.encoder import TextEmbedder
from recsys.train.checkpoints import TrainState
from recsys.train.config import TrainConfig
from recsys.train.curves import METRICS_FILE, MetricsWriter, read_metrics
from recsys.train.evaluator import evaluate_retrieval, slice_bounds
from recsys.train.loop import build_model
from recsys.train.runs import (
    RAY_SNAPSHOT,
    RUN_FILE,
    config_for_resume,
    find_run_to_resume,
    remove_unregistered_checkpoints,
    write_run_record,
)
from recsys.train.validation import EarlyStopping, is_due, load_validation_set, validation_users

IDS = ["a", "b", "c", "d"]
TITLES = ["Apple", "Banana", "Cherry", "Date"]
SEQUENCES = [
    {"items": ["a", "b", "c"], "valid_index": 2},     # history a, b -> target c
    {"items": ["d", "zz", "a"], "valid_index": 2},    # unknown history item zz is skipped in text and mask
    {"items": ["a", "b"], "valid_index": 0},          # nothing before the target: not a validation user
    {"items": ["a", "b"], "valid_index": -1},         # no validation target
    {"items": ["a", "gone"], "valid_index": 1},       # target not in the catalog
]


def test_validation_users_history_text_targets_and_seen_items() -> None:
    texts, targets, seen = validation_users(SEQUENCES, IDS, TITLES, max_history_items=8, max_users=None, seed=0)
    assert texts == ["Banana | Apple", "Date"]           # most recent first, as training pairs and serving
    assert targets.tolist() == [2, 0] and targets.dtype == np.int64
    assert seen == [[0, 1], [3]]
    assert validation_users(SEQUENCES, IDS, TITLES, 1, None, 0)[0] == ["Banana", "Date"]


def test_validation_users_sample_is_seeded_and_keeps_order() -> None:
    ids = [f"i{k}" for k in range(41)]
    rows = [{"items": [ids[k], ids[k + 1]], "valid_index": 1} for k in range(40)]
    first = validation_users(rows, ids, ids, 8, max_users=10, seed=3)[1].tolist()
    assert len(first) == 10 and first == sorted(first)                       # input order kept
    assert first == validation_users(rows, ids, ids, 8, max_users=10, seed=3)[1].tolist()
    assert first != validation_users(rows, ids, ids, 8, max_users=10, seed=4)[1].tolist()


def write_data(tmp_path, sequences: list[dict] | None, with_valid_index: bool = True):
    pq.write_table(pa.table({"item_id": IDS, "title": TITLES, "brand": ["B"] * 4, "category": ["C"] * 4}),
                   tmp_path / "catalog.parquet")
    if sequences is not None:
        (tmp_path / "sequences").mkdir()
        columns = {"user_id": [f"u{i}" for i in range(len(sequences))], "items": [s["items"] for s in sequences]}
        if with_valid_index:
            columns["valid_index"] = [s["valid_index"] for s in sequences]
        pq.write_table(pa.table(columns), tmp_path / "sequences" / "part-0.parquet")
    return tmp_path


def test_load_validation_set_from_a_data_version(tmp_path) -> None:
    manifest = {"config": {"retrieval_pairs": {"max_history_items": 1}}}
    vset, why = load_validation_set(write_data(tmp_path, SEQUENCES), manifest, None, 0)
    assert why == "" and vset is not None and len(vset) == 2
    assert vset.item_ids == IDS and vset.item_texts[0] == "Apple. B. C" and vset.query_texts == ["Banana", "Date"]


@pytest.mark.parametrize(("sequences", "with_valid", "reason"), [
    (None, True, "no sequences/"),
    (SEQUENCES[2:], True, "no user has a validation item"),
    (SEQUENCES, False, "no valid_index column"),
])
def test_load_validation_set_says_why_there_is_none(tmp_path, sequences, with_valid, reason) -> None:
    vset, why = load_validation_set(write_data(tmp_path, sequences, with_valid), {}, None, 0)
    assert vset is None and reason in why


def test_in_loop_ranking_matches_offline_embedding(tmp_path, tiny_model_dir) -> None:
    """evaluate_retrieval (what the workers run) == TextEmbedder + target_ranks (what jobs/evaluate.py runs)."""
    vset, _ = load_validation_set(write_data(tmp_path, SEQUENCES), {}, None, 0)
    assert vset is not None
    model, tokenizer = build_model(TrainConfig(model_name_or_path=str(tiny_model_dir)))
    model.train()
    got = evaluate_retrieval(model, tokenizer, vset, query_max_length=16, item_max_length=16, batch_size=3)
    assert model.training                                  # back in training mode afterwards
    embedder = TextEmbedder(str(tiny_model_dir), max_length=16, device="cpu")
    scores = embedder.embed(vset.query_texts) @ embedder.embed(vset.item_texts).T
    ranks = target_ranks(scores, vset.targets, [np.asarray(h) for h in vset.histories])
    expected = summarize_ranks(ranks, ks=(10,))
    assert got["val_users"] == 2
    for name in ("recall@10", "ndcg@10", "mrr"):
        assert math.isclose(got[f"val_{name}"], expected[name], rel_tol=1e-5), name


@pytest.mark.parametrize(("n", "world", "expected"), [
    (9, 2, [(0, 5, 5), (5, 9, 5)]), (1, 2, [(0, 1, 1), (1, 1, 1)]), (4, 4, [(i, i + 1, 1) for i in range(4)]),
])
def test_slice_bounds_cover_every_row_once_with_equal_pass_counts(n, world, expected) -> None:
    assert [slice_bounds(n, r, world) for r in range(world)] == expected


def test_early_stopping_counts_evaluations_without_a_strictly_better_score() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.30, step=10) and not stopper.should_stop
    assert not stopper.update(0.30, step=20)               # a tie is no improvement
    assert stopper.update(0.35, step=30) and stopper.evals_without_improvement == 0
    assert not stopper.update(0.20, 40) and not stopper.should_stop
    assert not stopper.update(float("nan"), 50) and stopper.should_stop
    assert (stopper.best, stopper.best_step) == (0.35, 30)
    restored = EarlyStopping(**{**stopper.to_dict(), "patience": 5})   # the state rides in a checkpoint
    assert restored.best_step == 30 and not restored.should_stop
    never = EarlyStopping(patience=0)
    for step in range(1, 20):
        never.update(0.0, step)
    assert never.evals_without_improvement == 18 and not never.should_stop


def test_is_due() -> None:
    assert [s for s in range(1, 13) if is_due(s, 4)] == [4, 8, 12]
    assert not any(is_due(s, 0) or is_due(s, None) for s in range(1, 10)) and not is_due(0, 3)


def test_train_state_json_round_trip_and_unknown_fields() -> None:
    state = TrainState(step=12, elapsed_s=3.5, early_stopping=EarlyStopping(2, 0.4, 8, 1).to_dict(),
                       best_checkpoint="/runs/train-x/checkpoint_1", best_metrics={"val_ndcg@10": 0.4})
    assert TrainState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match=r"unknown fields \['epoch'\]"):
        TrainState.from_json(json.dumps({"step": 1, "epoch": 2}))


def test_metrics_writer_resume_drops_steps_after_the_checkpoint(tmp_path) -> None:
    logs = tmp_path / "logs"
    first = MetricsWriter(logs)
    for step in range(1, 8):                 # crashed after step 7; the last checkpoint was at step 4
        first.write(step, {"loss": 1.0 / step})
    first.close()
    with (logs / METRICS_FILE).open("a") as torn:
        torn.write('{"step": 8, "lo')
    resumed = MetricsWriter(logs, resume_step=4)
    for step in range(5, 10):
        resumed.write(step, {"loss": 10.0 + step})
    resumed.close()
    records = read_metrics(logs / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(1, 10))
    assert records[3]["loss"] == 0.25 and records[4]["loss"] == 15.0
    events = EventAccumulator(str(logs / "tensorboard"))
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("loss")}
    assert sorted(loss) == list(range(1, 10)) and loss[5] == 15.0     # the first attempt's 5..7 are purged


def test_find_run_to_resume_latest_named_finished_and_missing(tmp_path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ArtifactNotFound, match="no training run to resume"):
        find_run_to_resume("latest", models)
    for version in ("20260101-000000-aaaaaa", "20260102-000000-bbbbbb"):
        (models / version).mkdir(parents=True)
        write_run_record(models / version, {"version": version, "config": {}})
    assert find_run_to_resume("latest", models)[0] == "20260102-000000-bbbbbb"
    assert find_run_to_resume("20260101-000000-aaaaaa", models)[2]["version"] == "20260101-000000-aaaaaa"
    write_manifest(models / "20260102-000000-bbbbbb", {"kind": "model"})
    with pytest.raises(ArtifactNotFound, match="20260102-000000-bbbbbb already finished"):
        find_run_to_resume("latest", models)
    with pytest.raises(ArtifactNotFound, match="resume='nope': no training run"):
        find_run_to_resume("nope", models)
    assert (models / "20260101-000000-aaaaaa" / RUN_FILE).is_file()


def test_config_for_resume_keeps_the_run_config_and_refuses_changes() -> None:
    stored = TrainConfig(max_steps=300, lr=1e-4).model_dump(exclude={"resume"})
    cfg = config_for_resume(TrainConfig(resume="latest", max_failures=5), stored)
    assert (cfg.max_steps, cfg.lr, cfg.max_failures, cfg.resume) == (300, 1e-4, 5, "latest")
    same_yaml = TrainConfig.model_validate({**stored, "resume": "latest"})     # --config the-same.yaml --resume
    assert config_for_resume(same_yaml, stored).max_steps == 300
    with pytest.raises(ValueError, match=r"max_steps=20 \(the run has 300\), zero_stage=3 \(the run has 2\)"):
        config_for_resume(TrainConfig(resume="latest", max_steps=20, zero_stage=3), stored)


def test_remove_unregistered_checkpoints_keeps_what_ray_registered(tmp_path) -> None:
    record = {"storage_path": str(tmp_path), "run_name": "train-v1"}
    run = tmp_path / "train-v1"
    names = ["checkpoint_1", "checkpoint_2", "checkpoint_3"]
    for name in names:
        (run / name).mkdir(parents=True)
    assert remove_unregistered_checkpoints(record) == names                  # none registered yet
    for name in names:
        (run / name).mkdir()
    (run / RAY_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_1", "metrics": {}}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2", "metrics": {}}}))
    assert remove_unregistered_checkpoints(record) == ["checkpoint_3"]
    assert sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir()) == ["checkpoint_1", "checkpoint_2"]
    (run / RAY_SNAPSHOT).write_text('{"unexpected": 1}')           # a format we do not know: delete nothing
    (run / "checkpoint_4").mkdir()
    assert remove_unregistered_checkpoints(record) == [] and (run / "checkpoint_4").is_dir()


def test_resume_flag_on_the_command_line() -> None:
    assert parse_job_args(TrainConfig, "train", ["--resume"]).resume == "latest"
    cfg = parse_job_args(TrainConfig, "train", ["--resume", "20260101-000000", "--set", "max_failures=0"])
    assert cfg.resume == "20260101-000000" and cfg.model_fields_set == {"resume", "max_failures"}
    assert parse_job_args(TrainConfig, "train", []).resume is None
