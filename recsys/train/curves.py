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
    """One record per step: JSON line (flushed, so a crash keeps what was written) + TensorBoard scalars.

    `resume_step`: training restarts after that step (from a checkpoint, or 0 = from scratch), so
    records of later steps, written before the restart, are dropped from the JSON lines and hidden
    in TensorBoard (purge_step): a resumed run's logs have every step once.
    """

    def __init__(self, log_dir: str | Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / METRICS_FILE
        if path.exists():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(path)
        self._jsonl = path.open("a", encoding="utf-8")
        self._tb = SummaryWriter(log_dir=str(self.dir / TENSORBOARD_DIR), purge_step=resume_step + 1)

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
    """Loss (raw + moving average), learning rate, throughput and (when evaluated) validation
    metrics against step, one panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("loss", "loss"), ("lr", "learning rate"), ("samples_per_s", "samples/s")]
    val_keys = sorted({k for r in records for k in r if k.startswith("val_")})
    if val_keys:
        panels.append(("val_", "validation"))
    fig = Figure(figsize=(4.0 * len(panels), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels):
        if key == "val_":   # evaluation steps only: markers, one line per metric
            ax.set_title(label)
            ax.set_xlabel("step")
            for name in val_keys:
                points = [(r["step"], r[name]) for r in records if name in r and math.isfinite(r[name])]
                ax.plot(*zip(*points), marker="o", linewidth=1, label=name[len("val_"):])
            ax.legend(loc="lower right")
            continue
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


def summarise_run_losses(out_dir: str | Path, title: str) -> dict[str, float]:
    """After a run: the loss curve of the whole run (resumed attempts included) from logs/metrics.jsonl
    -> loss_curve.json and training_curves.png in out_dir; returns loss_first / loss_last (the mean of
    the first / last quarter, at most 10 steps each), or {} when the run logged no loss."""
    out_dir = Path(out_dir)
    path = out_dir / "logs" / METRICS_FILE
    records = read_metrics(path) if path.exists() else []
    curve = [round(r["loss"], 4) for r in records if "loss" in r]
    (out_dir / "loss_curve.json").write_text(json.dumps(curve))
    if not curve:
        return {}
    plot_training_curves(records, out_dir / "training_curves.png", title=title)
    window = max(1, min(10, len(curve) // 4))
    return {"loss_first": round(sum(curve[:window]) / window, 4), "loss_last": round(sum(curve[-window:]) / window, 4)}
