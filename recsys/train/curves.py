"""Training observability: per-step metrics as JSON lines and TensorBoard events, and a PNG of the curves.

Rank 0 writes while it trains, into the model version's `logs/` (under RECSYS_HOME, which a
multi-node cluster shares), so `tail -f logs/metrics.jsonl` or `tensorboard --logdir logs/`
shows a long run as it goes; the PNG is drawn once at the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """One record per step: JSON line (flushed, so a crash keeps what was written) + TensorBoard scalars."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.dir / METRICS_FILE).open("a", encoding="utf-8")
        self._tb = SummaryWriter(log_dir=str(self.dir / TENSORBOARD_DIR))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), step)

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.jsonl -> records; a torn last line (killed writer) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_training_curves(records: Sequence[Mapping], png_path: str | Path, title: str = "training") -> Path:
    """Loss (raw + moving average), learning rate and throughput against step, one panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("loss", "loss"), ("lr", "learning rate"), ("samples_per_s", "samples/s")]
    fig = Figure(figsize=(12.0, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        ax.set_title(label)
        ax.set_xlabel("step")
        if not points:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, color="tab:blue", alpha=0.35 if key == "loss" else 1.0, linewidth=1)
        if key == "loss" and len(values) > 5:
            window = max(2, len(values) // 20)
            smooth = pd.Series(values).rolling(window, min_periods=1).mean()
            ax.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"mean of {window}")
            ax.legend(loc="upper right")
    fig.suptitle(title)
    png_path = Path(png_path)
    fig.savefig(png_path, format="png")
    fig.clear()
    return png_path
