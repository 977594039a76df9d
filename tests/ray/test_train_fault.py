"""Fault tolerance of training: a SIGKILLed worker restarts from its checkpoint (ZeRO-2); a stopped run
resumes with its evaluation / early-stopping state and exports the best model (ZeRO-3).

Real Ray Train + DeepSpeed with 2 CPU workers and the tiny BERT; a killer thread watches the checkpoints
Ray Train registers in the run's storage and SIGKILLs one training worker process when one is there.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from ray.train import TrainingFailedError
from safetensors.torch import load_file
from test_train_ray import make_pair_data
from transformers import AutoModel

from recsys.models.encoder import POOLING_ATTRIBUTE, QUERY_TOWER_DIR
from recsys.train.checkpoints import DEEPSPEED_TAG, TRAIN_STATE_FILE
from recsys.train.config import TrainConfig
from recsys.train.curves import read_metrics
from recsys.train.runs import RAY_SNAPSHOT
from recsys.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def tiny_config(model_dir: Path, **overrides) -> TrainConfig:
    base = dict(model_name_or_path=str(model_dir), num_workers=2, zero_stage=2, micro_batch_size=8, max_steps=12,
                lr=2e-3, warmup_steps=2, temperature=0.1, query_max_length=16, item_max_length=16,
                shuffle_buffer=0, log_every=3, checkpoint_every=3,
                user_tower={"kind": "text"})   # stage 2 (sequence user tower) is not what these tests are about
    return TrainConfig(**(base | overrides))


def train_worker_pids() -> list[int]:
    """RayTrainWorker processes of THIS test's Ray node (its descendants: other Ray clusters may run here)."""
    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def checkpoints(home: Path) -> list[Path]:
    """Persisted checkpoint directories (DeepSpeed ones and the final export) of every run under home."""
    return sorted(p.parent for p in (home / "ray_results").glob(f"train-*/checkpoint_*/{TRAIN_STATE_FILE}"))


def latest_registered_state(home: Path) -> dict | None:
    """train_state.json of the latest checkpoint Ray Train registered (listed in its snapshot), if any."""
    for snapshot in (home / "ray_results").glob(f"train-*/{RAY_SNAPSHOT}"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            return json.loads((snapshot.parent / latest["checkpoint_dir_name"] / TRAIN_STATE_FILE).read_text())
        except (ValueError, TypeError, OSError):   # half-written snapshot or none yet: look again
            return None
    return None


def kill_worker_when(home: Path, conditions: list, killed: list) -> threading.Thread:
    """Background thread: for each condition in turn, SIGKILL one training worker once
    condition(latest registered train state) holds; appends that state to `killed`."""
    def watch() -> None:
        deadline = time.time() + 360
        for condition in conditions:
            while time.time() < deadline:
                state, pids = latest_registered_state(home), train_worker_pids()
                if state is not None and condition(state) and pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(state)
                    break
                time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, recsys_home, tiny_model_dir):
    """ZeRO-2: a worker SIGKILLed after a checkpoint; Ray Train restarts the group (max_failures=1) and the
    loop continues from the latest registered checkpoint to the same 12-step budget."""
    make_pair_data(recsys_home)
    killed: list = []
    watcher = kill_worker_when(recsys_home, [lambda s: s["step"] >= 3], killed)
    result = run_training(tiny_config(tiny_model_dir, max_failures=1))
    watcher.join(timeout=5)
    assert killed, "the run finished before a worker could be killed"
    # Restarted from a persisted checkpoint (the one seen at the kill, or a later one that was registered), not 0.
    assert result["resumed_from_step"] >= killed[0]["step"] >= 3 and result["resumed_from_step"] % 3 == 0
    model_dir = Path(result["path"])
    records = read_metrics(model_dir / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))      # every step once, across both attempts
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 12
    assert manifest["metrics"]["resumed_from_step"] == result["resumed_from_step"]
    assert len(json.loads((model_dir / "loss_curve.json").read_text())) == 12
    assert AutoModel.from_pretrained(model_dir).config.hidden_size == 32
    assert not (model_dir / TRAIN_STATE_FILE).exists()
    # Ray merged both ranks' DeepSpeed files into each checkpoint: rank 0's model states and each rank's ZeRO shard.
    kept = [c for c in checkpoints(recsys_home) if (c / DEEPSPEED_TAG).is_dir()]
    assert kept, "no DeepSpeed checkpoint kept"
    assert {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= {p.name for p in (kept[-1] / DEEPSPEED_TAG).iterdir()}
    # Only checkpoints Ray Train registered remain (uploads of the killed attempt are removed).
    snapshot = json.loads(next((recsys_home / "ray_results").glob(f"train-*/{RAY_SNAPSHOT}")).read_text())
    assert {c.name for c in checkpoints(recsys_home)} == {r["checkpoint_dir_name"]
                                                          for r in snapshot["checkpoint_results"]}


def corrupt_latest_checkpoint(home: Path) -> bool:
    """Truncate the model states of the latest checkpoint Ray Train registered (as a half-written upload
    or a disk error would leave it); True once done."""
    for snapshot in (home / "ray_results").glob(f"train-*/{RAY_SNAPSHOT}"):
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
        states = snapshot.parent / latest / DEEPSPEED_TAG / "mp_rank_00_model_states.pt"
        states.write_bytes(states.read_bytes()[:100])
        return True
    return False


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(ray_cluster, recsys_home, tiny_model_dir):
    """Regression (issue 24): a corrupt latest checkpoint was retried until max_failures ran out, and the
    older one that checkpoints_to_keep kept was never tried. The latest checkpoint (step 6 or later) is truncated
    and a worker killed: the restarted group restores the one 3 steps before and finishes the 12-step budget."""
    make_pair_data(recsys_home)
    killed: list = []
    watcher = kill_worker_when(recsys_home, [lambda s: s["step"] >= 6 and corrupt_latest_checkpoint(recsys_home)],
                               killed)
    result = run_training(tiny_config(tiny_model_dir, max_failures=1))
    watcher.join(timeout=5)
    assert killed and killed[0]["step"] >= 6, killed
    assert result["resumed_from_step"] == killed[0]["step"] - 3, (killed, result)   # the checkpoint before it
    records = read_metrics(Path(result["path"]) / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert json.loads((Path(result["path"]) / "manifest.json").read_text())["metrics"]["steps"] == 12


def test_stopped_run_resumes_with_its_early_stopping_state_and_exports_the_best(ray_cluster, recsys_home,
                                                                                 tiny_model_dir):
    """ZeRO-3 with a 9-item catalog: recall@10 is 1.0 at every evaluation, so the first one (step 2) stays the
    best and patience 3 stops at step 8. A worker is killed after the step-2 checkpoint with max_failures=0:
    the run stops. --resume restores ZeRO-3 and early-stopping state from it; the export is the step-2 model.
    Separate query and item towers with max pooling: both are partitioned, checkpointed and exported."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    make_pair_data(recsys_home, catalog_items=9)
    cfg = tiny_config(tiny_model_dir, zero_stage=3, checkpoint_every=0, eval_every=2, eval_metric="recall@10",
                      early_stopping_patience=3, eval_batch_size=2, warmup_steps=1, lr=5e-3, max_failures=0,
                      towers="separate", pooling="max")
    killed: list = []
    watcher = kill_worker_when(recsys_home, [lambda s: s["step"] >= 2], killed)
    with pytest.raises(TrainingFailedError):
        run_training(cfg)
    watcher.join(timeout=5)
    assert killed, "the run finished before a worker could be killed"
    (stopped,) = list((recsys_home / "artifacts" / "models").iterdir())
    assert (stopped / "run.json").is_file() and not (stopped / "manifest.json").exists()
    # --resume alone: the stopped run's own config; a field that changes what is trained is refused.
    with pytest.raises(ValueError, match=r"lr=0\.1 \(the run has 0\.005\)"):
        run_training(TrainConfig(resume="latest", lr=0.1))
    result = run_training(TrainConfig(resume="latest"))
    assert result["version"] == stopped.name and result["resumed_from_step"] == 2
    assert result["steps"] == 8 and result["stopped_early"] and result["best_step"] == 2
    assert result["val_recall@10"] == 1.0 and result["val_users"] == 27
    records = read_metrics(stopped / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["step"] for r in records if "val_recall@10" in r] == [2, 4, 6, 8]
    assert len({round(r["val_ndcg@10"], 6) for r in records if "val_ndcg@10" in r}) > 1   # the model did change
    (best,) = [c for c in checkpoints(recsys_home) if (c / DEEPSPEED_TAG).is_dir()]
    assert json.loads((best / TRAIN_STATE_FILE).read_text())["step"] == 2
    best_weights = get_fp32_state_dict_from_zero_checkpoint(str(best), tag=DEEPSPEED_TAG)
    for prefix, directory in [("encoder.backbone.", stopped), ("query_encoder.backbone.", stopped / QUERY_TOWER_DIR)]:
        exported = load_file(directory / "model.safetensors")
        tower = {k.removeprefix(prefix): v for k, v in best_weights.items() if k.startswith(prefix)}
        assert exported.keys() == tower.keys() and json.loads((directory / "config.json").read_text())[
            POOLING_ATTRIBUTE] == "max"
        for name, tensor in tower.items():
            torch.testing.assert_close(exported[name], tensor)
    assert len(tower) * 2 == len(best_weights)
    with pytest.raises(FileNotFoundError, match="already finished"):
        run_training(TrainConfig(resume=stopped.name))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_bf16_run_exports_the_fp32_master_weights(ray_cluster, recsys_home, tiny_model_dir, zero_stage):
    """bf16 mixed precision (this CPU runs it) trains a bf16 module against DeepSpeed's fp32 master weights.
    The export is the master copy in fp32 at ZeRO-2 and ZeRO-3, equal to what zero_to_fp32 reads from the
    checkpoint it came from, not the bf16 module's rounding of it; export_dtype bfloat16 casts on request.
    (A 9-item catalog: recall@10 is 1.0 at both evaluations, so the step-3 checkpoint stays the best and is
    what the run exports after step 6; warm-up leaves the first steps at lr 0.)"""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    make_pair_data(recsys_home, catalog_items=9)
    result = run_training(tiny_config(tiny_model_dir, zero_stage=zero_stage, bf16=True, max_steps=6, lr=5e-3,
                                      checkpoint_every=0, eval_every=3, eval_metric="recall@10",
                                      early_stopping_patience=3, eval_batch_size=2))
    assert result["best_step"] == 3
    exported = load_file(Path(result["path"]) / "model.safetensors")
    (best,) = [c for c in checkpoints(recsys_home) if (c / DEEPSPEED_TAG).is_dir()]
    master = {k.removeprefix("encoder.backbone."): v
              for k, v in get_fp32_state_dict_from_zero_checkpoint(str(best), tag=DEEPSPEED_TAG).items()}
    assert exported.keys() == master.keys()
    for name, tensor in master.items():
        assert exported[name].dtype == torch.float32, name
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0)
    weights = torch.cat([t.flatten() for t in exported.values()])
    assert (weights != weights.bfloat16().float()).float().mean() > 0.5, "these are bf16 values, not the master"

    if zero_stage == 3:
        return   # the cast below is the same at every stage
    bf16 = run_training(tiny_config(tiny_model_dir, zero_stage=zero_stage, bf16=True, max_steps=2,
                                    checkpoint_every=0, export_dtype="bfloat16", user_tower={"kind": "text"}))
    assert {t.dtype for t in load_file(Path(bf16["path"]) / "model.safetensors").values()} == {torch.bfloat16}
