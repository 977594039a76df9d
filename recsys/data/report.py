"""One PNG that lets the data team check a preprocess run at a glance.

The run's JSON summary holds the numbers; this chart is what someone actually looks
at before trusting a new data version: is the event mix plausible, which rejection
reason exploded, do users have usable history lengths, is item popularity the usual
long tail or did one item swallow the traffic. Pure matplotlib on Figure objects with
the Agg canvas, so it runs inside Ray workers or CI without a display and never
touches pyplot's global state. Histograms live in histograms.py.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

FIGSIZE = (12.0, 8.0)
DPI = 100
MAX_CURVE_POINTS = 2000


def write_report_chart(stats: Mapping, path: str | pathlib.Path) -> pathlib.Path:
    """Render the 2x2 run summary (1200x800 px) as PNG at path and return it as a Path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = build_report_figure(stats)
    try:
        FigureCanvasAgg(fig).print_png(str(path))
    finally:
        # No pyplot registry holds it; clearing just frees the artists (100k-point inputs) promptly.
        fig.clear()
    return path


def build_report_figure(stats: Mapping) -> Figure:
    """The chart as a Figure (exposed for tests); missing or empty keys give placeholder panels."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_mix, ax_rej, ax_len, ax_pop = fig.subplots(2, 2).ravel()
    _event_mix(ax_mix, stats.get("event_mix") or {})
    _rejections(ax_rej, stats.get("rejected_by_reason") or {})
    _length_histogram(ax_len, stats.get("sequence_length_histogram") or {})
    _popularity(ax_pop, stats.get("item_popularity") or [])
    fig.suptitle(_plain(stats.get("title") or "preprocess run"), fontsize=13)
    return fig


def human(n: float) -> str:
    """1234 -> '1,234', 48_500 -> '48.5k', 3_100_000 -> '3.1M': readable at a glance, short enough for bar labels."""
    n = float(n)
    # Checked largest first against the rounded value, so 999_990 reads '1M', not '1000k'.
    for div, suffix, floor in ((1e9, "B", 1.0), (1e6, "M", 1.0), (1e3, "k", 10.0)):
        scaled = round(n / div, 1)
        if abs(scaled) >= floor:
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:,.0f}" if n == int(n) else f"{n:,.2f}"


_AXIS_FMT = FuncFormatter(lambda v, _pos: human(v))


def _plain(text: object) -> str:
    # A '$' in an event name or source spec would otherwise switch matplotlib into mathtext.
    return str(text).replace("$", r"\$")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _event_mix(ax, mix: Mapping) -> None:
    ax.set_title("kept events by type")
    total = sum(mix.values())
    if not mix or total <= 0:
        _empty(ax, "no events kept")
        return
    # Keep the caller's order: it is usually the funnel (view -> click -> cart -> purchase).
    names, counts = [_plain(k) for k in mix], [int(v) for v in mix.values()]
    bars = ax.bar(names, counts, color="tab:blue")
    ax.bar_label(bars, labels=[f"{human(c)}\n{c / total:.1%}" for c in counts], fontsize=8, padding=2)
    ax.yaxis.set_major_formatter(_AXIS_FMT)
    ax.margins(y=0.2)  # room for the two-line labels above the tallest bar
    ax.tick_params(axis="x", labelrotation=20)


def _rejections(ax, rejected: Mapping) -> None:
    items = sorted(((str(k), int(v)) for k, v in rejected.items() if v), key=lambda kv: kv[1])
    ax.set_title(f"rejected rows by reason (total {human(sum(v for _, v in items))})")
    if not items:
        _empty(ax, "no rejected rows")
        return
    # Ascending order puts the biggest reason at the top of a barh chart.
    bars = ax.barh([_plain(k) for k, _ in items], [v for _, v in items], color="tab:red")
    ax.bar_label(bars, labels=[human(v) for _, v in items], fontsize=8, padding=2)
    ax.xaxis.set_major_formatter(_AXIS_FMT)
    ax.margins(x=0.15)


def _bin_label(lo: int, hi: int, last: bool) -> str:
    if last and hi >= 10**6:
        return f"{lo}+"
    return str(lo) if hi - lo <= 1 else f"{lo}-{hi - 1}"


def _length_histogram(ax, hist: Mapping) -> None:
    ax.set_title("users by sequence length")
    edges, counts = list(hist.get("edges") or []), [int(c) for c in hist.get("counts") or []]
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    if len(edges) != len(counts) + 1 or not nonzero:
        _empty(ax, "no user sequences")
        return
    # Trim empty bins at both ends; with the wide default edges most of the tail is empty.
    lo, hi = nonzero[0], nonzero[-1] + 1
    labels = [_bin_label(edges[i], edges[i + 1], i == len(counts) - 1) for i in range(lo, hi)]
    # Bins have very different widths, so equal-width categorical bars read better than true widths.
    ax.bar(range(hi - lo), counts[lo:hi], width=0.9, color="tab:green")
    ax.set_xticks(range(hi - lo), labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("items per user")
    ax.set_ylabel("users")
    positive = [c for c in counts if c > 0]
    if max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_AXIS_FMT)


def _popularity(ax, popularity: Sequence[float]) -> None:
    ax.set_title("item popularity (rank vs interactions)")
    counts = np.sort(np.asarray(popularity, dtype=np.float64).ravel())[::-1]
    total = counts.sum() if counts.size else 0.0
    if counts.size == 0 or total <= 0:
        _empty(ax, "no item interactions")
        return
    n = counts.size
    top_k = max(1, math.ceil(0.01 * n))
    share = counts[:top_k].sum() / total
    # Geometric spacing keeps the head (where the shape matters) dense and thins the tail.
    if n > MAX_CURVE_POINTS:
        idx = np.unique(np.geomspace(1, n, MAX_CURVE_POINTS).round().astype(np.int64)) - 1
    else:
        idx = np.arange(n)
    keep = idx[counts[idx] > 0]  # log axes cannot show items with zero interactions
    ax.plot(keep + 1, counts[keep], color="tab:purple", lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(top_k, color="grey", ls="--", lw=1)
    ax.text(0.97, 0.95, f"top 1% of items ({human(top_k)} of {human(n)})\ntake {share:.1%} of interactions",
            transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.set_xlabel("item rank")
    ax.set_ylabel("interactions")
    ax.xaxis.set_major_formatter(_AXIS_FMT)
    ax.yaxis.set_major_formatter(_AXIS_FMT)


