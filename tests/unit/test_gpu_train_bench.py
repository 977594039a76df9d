"""bench/gpu_train_bench.py's pure helpers: the steady-state rate, MFU, the last line and where --data's
train_pairs/ are found. No model, no Ray, no GPU."""

from __future__ import annotations

import pytest
from bench_modules import load_bench_module

bench = load_bench_module("gpu_train_bench")


def test_steady_rate_counts_only_the_steps_after_the_warmup() -> None:
    # 2 warm-up steps take 10 s, then 3 steps of 0.5 s: 3 x 8 pairs in 1.5 s
    assert bench.steady_rate([5.0, 10.0, 10.5, 11.0, 11.5], batch=8, warmup=2) == pytest.approx(16.0)
    assert bench.steady_rate([5.0, 10.0], batch=8, warmup=2) is None   # never past the warm-up


def test_mfu_is_flops_per_step_times_steps_per_second_over_the_peak() -> None:
    # 1e15 FLOPs per step, 128 pairs per step at 64 pairs/s = 0.5 steps/s -> 5e14 FLOP/s of a 1000 TFLOP/s peak
    assert bench.mfu(1e15, 64.0, 128, 1000.0) == pytest.approx(0.5)
    assert bench.mfu(None, 64.0, 128, 1000.0) is None
    assert bench.mfu(1e15, None, 128, 1000.0) is None


def test_final_line_reports_bert_large_else_the_first_shape() -> None:
    row = {"plain_pairs_s": 400.0, "ours_pairs_s": 390.0, "ours_mfu": 0.412}
    line = bench.final_line({"minilm": {**row, "ours_pairs_s": 100.0}, "bert-large": row})
    assert line == ("ratio ours_pairs_per_s / plain_pairs_per_s (bert-large) = 0.97 (goal >= 0.95); "
                    "MFU ours 41.2% (goal >= 40%)")
    assert "(minilm) = 0.25" in bench.final_line({"minilm": {**row, "ours_pairs_s": 100.0}})


def test_final_line_says_n_a_for_runs_that_gave_nothing() -> None:
    failed = {"plain_pairs_s": 400.0, "ours_pairs_s": None, "ours_mfu": None}
    assert bench.final_line({"tiny": failed}).endswith("(tiny) = n/a (goal >= 0.95); MFU ours n/a (goal >= 40%)")
    assert "(no shape ran) = n/a" in bench.final_line({})


def test_find_data_root_takes_the_shallowest_train_pairs(tmp_path) -> None:
    (tmp_path / "v1" / "train_pairs").mkdir(parents=True)
    (tmp_path / "v1" / "old" / "train_pairs").mkdir(parents=True)
    assert bench.find_data_root(tmp_path) == tmp_path / "v1"
    assert bench.find_data_root(tmp_path / "v1") == tmp_path / "v1"
    with pytest.raises(FileNotFoundError, match="train_pairs"):
        bench.find_data_root(tmp_path / "v1" / "old" / "train_pairs")


def test_shapes_are_valid_bert_configs() -> None:
    for fields in bench.SHAPES.values():
        assert fields["hidden_size"] % fields["num_attention_heads"] == 0
