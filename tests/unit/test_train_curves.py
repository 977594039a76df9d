"""Training observability: JSON lines + TensorBoard events that TensorBoard itself can read, and the PNG."""

from __future__ import annotations

import math

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsys.train.curves import METRICS_FILE, MetricsWriter, plot_training_curves, read_metrics


def test_writer_jsonl_and_tensorboard_agree(tmp_path) -> None:
    writer = MetricsWriter(tmp_path / "logs")
    for step in range(1, 31):
        writer.write(step, {"loss": 3.0 / step, "lr": 1e-4 * min(step, 10) / 10, "samples_per_s": 40.0 + step})
    writer.close()
    records = read_metrics(tmp_path / "logs" / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(1, 31))
    assert math.isclose(records[9]["loss"], 0.3) and math.isclose(records[-1]["lr"], 1e-4)
    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lr", "samples_per_s"}
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, 31)) and math.isclose(loss[-1].value, 0.1, rel_tol=1e-6)


def test_read_metrics_skips_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_plot_training_curves_renders_png_even_without_data(tmp_path) -> None:
    records = [{"step": s, "loss": 2.0 / s, "lr": 1e-4, "samples_per_s": 50.0} for s in range(1, 200)]
    png = plot_training_curves(records, tmp_path / "curves.png", title="train v1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = plot_training_curves([], tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"
