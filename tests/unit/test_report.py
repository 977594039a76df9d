"""Run-summary chart: real Agg rendering to PNG, and mergeable sequence-length histograms."""

from __future__ import annotations

import time

import matplotlib.image as mpimg
import numpy as np
import pytest

from recsys.data.histograms import DEFAULT_LENGTH_EDGES, merge_histograms, sequence_length_histogram
from recsys.data.report import (
    build_report_figure,
    human,
    write_report_chart,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_stats(n_items: int = 5000) -> dict:
    rng = np.random.default_rng(0)
    lengths = rng.geometric(0.05, size=20_000)
    popularity = (200_000 / np.arange(1, n_items + 1) ** 0.9).astype(int).tolist()  # a Zipf-like long tail
    return {
        "event_mix": {"view": 3_100_000, "click": 900_000, "add_to_cart": 200_000, "purchase": 80_000,
                      "search": 300_000},
        "rejected_by_reason": {"bad_timestamp": 1200, "unknown_event_type": 300, "duplicate": 5000,
                               "rapid_repeat": 2000, "bot_user": 40000, "item_not_in_catalog": 12},
        "sequence_length_histogram": sequence_length_histogram(lengths),
        "item_popularity": popularity,
        "title": "preprocess 20261122-101500 — synthetic(users=20000, $cost)",
    }


def assert_png(path, width: int = 1200, height: int = 800) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert mpimg.imread(path).shape[:2] == (height, width)


def test_full_stats_render_png_of_expected_size(tmp_path):
    out = write_report_chart(full_stats(), str(tmp_path / "sub" / "report.png"))
    assert out == tmp_path / "sub" / "report.png"
    assert_png(out)


@pytest.mark.parametrize("stats", [
    {"event_mix": {}, "rejected_by_reason": {}, "sequence_length_histogram": {"edges": [], "counts": []},
     "item_popularity": [], "title": ""},
    {},
    {"event_mix": {"view": 0}, "sequence_length_histogram": {"edges": [1, 2], "counts": [0]},
     "item_popularity": [0, 0, 0], "rejected_by_reason": {"duplicate": 0}},
    {"item_popularity": [7], "sequence_length_histogram": sequence_length_histogram([3])},
])
def test_empty_or_degenerate_stats_still_render(tmp_path, stats):
    assert_png(write_report_chart(stats, tmp_path / "empty.png"))


def test_empty_panels_show_placeholders():
    fig = build_report_figure({"rejected_by_reason": {}})
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"no events kept", "no rejected rows", "no user sequences", "no item interactions"} <= texts
    assert fig.get_suptitle() == "preprocess run"


def test_panels_scales_order_and_annotation():
    stats = full_stats()
    fig = build_report_figure(stats)
    ax_mix, ax_rej, ax_len, ax_pop = fig.axes
    assert ax_len.get_xlabel() == "items per user"
    assert ax_len.get_yscale() == "log"  # geometric lengths: counts span well over 100x
    assert (ax_pop.get_xscale(), ax_pop.get_yscale()) == ("log", "log")
    # Largest rejection reason at the top of the horizontal bar chart.
    assert [t.get_text() for t in ax_rej.get_yticklabels()][-1] == "bot_user"
    pop = np.asarray(stats["item_popularity"], dtype=float)
    share = pop[:50].sum() / pop.sum()
    assert any(f"{share:.1%}" in t.get_text() for t in ax_pop.texts)


def test_narrow_histogram_keeps_linear_y():
    fig = build_report_figure({"sequence_length_histogram": {"edges": [1, 2, 3, 4], "counts": [10, 50, 300]}})
    assert fig.axes[2].get_yscale() == "linear"


def test_large_popularity_is_downsampled_and_fast(tmp_path):
    popularity = sorted((np.random.default_rng(1).zipf(1.3, size=100_000)).tolist(), reverse=True)
    started = time.perf_counter()
    out = write_report_chart({"item_popularity": popularity, "title": "100k items"}, tmp_path / "big.png")
    assert time.perf_counter() - started < 5.0
    assert_png(out)
    line = build_report_figure({"item_popularity": popularity}).axes[3].lines[0]
    assert len(line.get_xdata()) <= 2000
    assert line.get_xdata()[0] == 1 and line.get_xdata()[-1] == 100_000


def test_human_numbers():
    assert [human(v) for v in (0, 950, 1234, 48_500, 999_990, 3_100_000)] == ["0", "950", "1,234", "48.5k", "1M",
                                                                               "3.1M"]


def test_histogram_counts_sum_to_number_of_lengths():
    lengths = np.random.default_rng(2).integers(1, 3000, size=1234)
    hist = sequence_length_histogram(lengths)
    assert hist["edges"] == DEFAULT_LENGTH_EDGES
    assert len(hist["edges"]) == len(hist["counts"]) + 1
    assert sum(hist["counts"]) == 1234
    assert all(isinstance(e, int) for e in hist["edges"]) and all(isinstance(c, int) for c in hist["counts"])


def test_histogram_empty_input():
    assert sequence_length_histogram([]) == {"edges": [], "counts": []}
    assert sequence_length_histogram(np.array([], dtype=int)) == {"edges": [], "counts": []}


def test_histogram_bins_and_out_of_range_values_land_in_edge_bins():
    hist = sequence_length_histogram([0, -5, 1, 2, 3, 9, 10, 11, 50], edges=[1, 2, 5, 10])
    # bins: [1,2) [2,5) [5,10], below 1 -> first, 10 and above -> last
    assert hist == {"edges": [1, 2, 5, 10], "counts": [3, 2, 4]}
    assert sequence_length_histogram([10**12], edges=DEFAULT_LENGTH_EDGES)["counts"][-1] == 1


def test_merge_of_partials_equals_histogram_of_concatenation():
    rng = np.random.default_rng(3)
    a, b = rng.geometric(0.02, size=700), rng.geometric(0.1, size=300)
    merged = merge_histograms([sequence_length_histogram(a), sequence_length_histogram([]),
                               sequence_length_histogram(b)])
    assert merged == sequence_length_histogram(np.concatenate([a, b]))
    edges = [1, 3, 10, 100]
    assert merge_histograms([sequence_length_histogram(a, edges=edges), sequence_length_histogram(b, edges=edges)]) \
        == sequence_length_histogram(np.concatenate([a, b]), edges=edges)
    assert merge_histograms([]) == {"edges": [], "counts": []}


def test_merge_rejects_different_edges():
    with pytest.raises(ValueError, match="different edges"):
        merge_histograms([sequence_length_histogram([1], edges=[1, 2]), sequence_length_histogram([1], edges=[1, 3])])


def test_max_bins_thins_default_edges_independently_of_data():
    small = sequence_length_histogram([1, 2, 3], max_bins=5)
    large = sequence_length_histogram([500, 10**6], max_bins=5)
    assert small["edges"] == large["edges"]
    assert len(small["edges"]) - 1 <= 5
    assert small["edges"][0] == DEFAULT_LENGTH_EDGES[0] and small["edges"][-1] == DEFAULT_LENGTH_EDGES[-1]
    assert merge_histograms([small, large])["counts"] == sequence_length_histogram([1, 2, 3, 500, 10**6],
                                                                                    max_bins=5)["counts"]


@pytest.mark.parametrize("edges", [[1], [3, 2], [1, 1, 2]])
def test_invalid_edges_raise(edges):
    with pytest.raises(ValueError):
        sequence_length_histogram([1, 2], edges=edges)
