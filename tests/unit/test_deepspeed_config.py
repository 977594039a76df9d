"""TrainConfig -> DeepSpeed config: ZeRO stages, offload, batch arithmetic, scheduler and step planning."""

from __future__ import annotations

import pytest

from recsys.train.config import TrainConfig
from recsys.train.deepspeed_config import build_deepspeed_config, plan_total_steps


def ds(world_size: int = 2, total_steps: int = 100, **fields) -> dict:
    return build_deepspeed_config(TrainConfig(**fields), world_size=world_size, total_steps=total_steps)


@pytest.mark.parametrize("stage", [0, 1])
def test_low_stages_have_only_the_stage_on_gpu(stage: int) -> None:
    assert ds(zero_stage=stage, use_gpu=True)["zero_optimization"] == {"stage": stage}


def test_stage2_overlaps_comm_only_on_gpu() -> None:
    assert ds(zero_stage=2)["zero_optimization"] == {"stage": 2, "overlap_comm": False,
                                                     "contiguous_gradients": True,
                                                     "reduce_bucket_size": 10_000_000,
                                                     "allgather_bucket_size": 10_000_000}
    assert ds(zero_stage=2, use_gpu=True)["zero_optimization"]["overlap_comm"] is True


def test_stage3_gathers_weights_for_export() -> None:
    zero = ds(zero_stage=3)["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["contiguous_gradients"] is True
    assert "offload_param" not in zero and "offload_optimizer" not in zero
    assert "stage3_gather_16bit_weights_on_model_save" not in ds(zero_stage=2)["zero_optimization"]


def test_offload_blocks() -> None:
    zero = ds(zero_stage=3, offload_optimizer=True, offload_param=True)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    gpu = ds(zero_stage=3, offload_optimizer=True, offload_param=True, use_gpu=True)["zero_optimization"]
    assert gpu["offload_optimizer"]["pin_memory"] is True and gpu["offload_param"]["pin_memory"] is True
    zero2 = ds(zero_stage=2, offload_optimizer=True)["zero_optimization"]
    assert zero2["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero2


def test_batch_size_arithmetic() -> None:
    cfg = ds(world_size=4, micro_batch_size=8, grad_accum_steps=3)
    assert cfg["train_micro_batch_size_per_gpu"] == 8
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 8 * 3 * 4


def test_optimizer_scheduler_precision() -> None:
    cfg = ds(lr=1e-4, weight_decay=0.1, warmup_steps=10, total_steps=50)
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["lr"] == 1e-4 and cfg["optimizer"]["params"]["weight_decay"] == 0.1
    sched = cfg["scheduler"]
    assert sched["type"] == "WarmupDecayLR"
    assert sched["params"]["warmup_max_lr"] == 1e-4 and sched["params"]["warmup_num_steps"] == 10
    assert sched["params"]["total_num_steps"] == 50
    assert cfg["bf16"] == {"enabled": False}
    assert ds(use_gpu=True)["bf16"] == {"enabled": True}
    assert ds(bf16=True)["bf16"] == {"enabled": True}


def test_optimizer_is_torchs_fused_adamw_and_steps_on_cpu() -> None:
    """DeepSpeed hands every param but torch_adam to torch.optim.AdamW: this torch build must take fused=True on
    CPU and take the same AdamW step as the default per-tensor loop."""
    import torch

    params = {k: v for k, v in ds()["optimizer"]["params"].items() if k != "torch_adam"}
    assert params["fused"] is True
    start = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([p], **{**params, "fused": fused})
        for _ in range(3):
            p.grad = torch.sin(p.detach())
            opt.step()
        results.append(p.detach())
    assert not torch.equal(results[0], start)
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize(("warmup", "total", "expected"), [
    (20, 150, 20), (20, 20, 19), (20, 5, 4), (20, 1, 1), (0, 10, 1), (20, 0, 1),
])
def test_warmup_clipped_below_total_steps_and_never_zero(warmup: int, total: int, expected: int) -> None:
    """DeepSpeed 0.19 raises on warmup_num_steps=0 (max_steps=1 or warmup_steps=0 used to crash)."""
    params = ds(warmup_steps=warmup, total_steps=total)["scheduler"]["params"]
    assert params["warmup_num_steps"] == expected
    assert params["total_num_steps"] == max(total, 1)
    assert params["warmup_num_steps"] < params["total_num_steps"] or params["total_num_steps"] == 1


def test_plan_total_steps_max_steps_wins() -> None:
    cfg = TrainConfig(max_steps=7, micro_batch_size=4, epochs=10)
    assert plan_total_steps(cfg, n_pairs=1000, world_size=2) == 7


@pytest.mark.parametrize(("n_pairs", "epochs", "world", "accum", "expected"), [
    (1000, 1.0, 2, 1, 31),    # 1000 // (16*2)
    (1000, 2.0, 2, 1, 62),
    (1000, 0.5, 1, 2, 15),    # 500 // 32
    (32, 1.0, 2, 1, 1),
    (40, 0.1, 2, 1, 1),       # never zero steps
])
def test_plan_total_steps_from_epochs(n_pairs: int, epochs: float, world: int, accum: int,
                                      expected: int) -> None:
    cfg = TrainConfig(max_steps=None, epochs=epochs, micro_batch_size=16, grad_accum_steps=accum)
    assert plan_total_steps(cfg, n_pairs=n_pairs, world_size=world) == expected


@pytest.mark.parametrize("max_steps", [None, 100])
def test_plan_total_steps_too_few_pairs(max_steps: int | None) -> None:
    cfg = TrainConfig(max_steps=max_steps, micro_batch_size=16, grad_accum_steps=2)
    with pytest.raises(ValueError, match="only 63 training pairs") as err:
        plan_total_steps(cfg, n_pairs=63, world_size=2)
    assert "micro_batch_size=16" in str(err.value) and "workers=2" in str(err.value)
    assert plan_total_steps(cfg, n_pairs=64, world_size=2) == (100 if max_steps else 1)


def test_cpu_workers_get_small_buckets_gpu_workers_keep_deepspeed_defaults() -> None:
    cpu3 = ds(zero_stage=3)["zero_optimization"]
    assert cpu3["reduce_bucket_size"] == cpu3["stage3_max_live_parameters"] == cpu3["sub_group_size"] == 2_000_000
    # nothing kept gathered ahead of or between uses: on CPU there is no compute to overlap it with
    assert cpu3["stage3_prefetch_bucket_size"] == cpu3["stage3_max_reuse_distance"] == 0
    assert ds(zero_stage=2)["zero_optimization"]["reduce_bucket_size"] == 10_000_000
    assert "reduce_bucket_size" not in ds(zero_stage=0)["zero_optimization"]
    gpu = ds(zero_stage=3, use_gpu=True)["zero_optimization"]
    assert not {"reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_max_reuse_distance",
                "sub_group_size"} & gpu.keys()


def test_ranker_config_translates_like_train_config() -> None:
    """Any config with the DeepSpeedSettings fields works; the ranker's gives the same blocks."""
    from recsys.train.ranker_config import RankerTrainConfig

    shared = {"zero_stage": 3, "offload_optimizer": True, "micro_batch_size": 8, "grad_accum_steps": 2, "lr": 1e-4,
              "warmup_steps": 5, "weight_decay": 0.0, "max_steps": 40}
    ranker = build_deepspeed_config(RankerTrainConfig(**shared), world_size=2, total_steps=40)
    assert ranker == build_deepspeed_config(TrainConfig(**shared), world_size=2, total_steps=40)
    assert ranker["train_batch_size"] == 32 and ranker["zero_optimization"]["stage"] == 3
    assert plan_total_steps(RankerTrainConfig(max_steps=None, epochs=1.0, micro_batch_size=8), 100, 2) == 6


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_schedules_run_in_deepspeeds_own_schedulers(schedule: str) -> None:
    """The scheduler block is built by DeepSpeed's own classes: warm-up to lr, then the chosen shape."""
    import torch
    from deepspeed.runtime import lr_schedules

    sched_cfg = ds(lr=1e-3, warmup_steps=10, total_steps=100, lr_schedule=schedule)["scheduler"]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = getattr(lr_schedules, sched_cfg["type"])(opt, **sched_cfg["params"])
    lrs = []
    for _ in range(100):
        opt.step()
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] < lrs[8] <= 1e-3 and max(lrs) == pytest.approx(1e-3, rel=0.02)
    late = lrs[-5]
    expected = {"linear": late < 1e-4, "cosine": late < 1e-4, "constant": late == pytest.approx(1e-3)}
    assert expected[schedule], (schedule, late)
    if schedule == "cosine":   # slower than linear early on, as a cosine is
        assert lrs[30] > ds_linear_lr_at(30)


def ds_linear_lr_at(step: int) -> float:
    return 1e-3 * (100 - step) / 90


def test_unknown_lr_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
