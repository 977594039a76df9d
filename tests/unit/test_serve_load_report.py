"""bench/serve_load.py's verdict on an overload run (summarize), from hand-made outcomes: what a healthy
overloaded service may answer (200, 503 + Retry-After) and what it must not (other 5xx, no answer, a stretch
of the run without a single 200)."""

from __future__ import annotations

import pytest
from bench_modules import load_bench_module

serve_load = load_bench_module("serve_load")
Outcome = serve_load.Outcome


def healthy_run(seconds: int = 6) -> list:
    """Per second: three 200s and two shed requests."""
    out = []
    for s in range(seconds):
        out += [Outcome("/v1/recommend", s + 0.1 * n, 0.05 * (n + 1), 200) for n in range(3)]
        out += [Outcome("/v1/search", s + 0.5 + 0.1 * n, 0.002, 503, retry_after="1") for n in range(2)]
    return out


def summarize(outcomes: list):
    return serve_load.summarize(outcomes, capacity=3.0, rate=5.0, duration_s=6, sending_s=6.0, window_s=2)


def test_a_healthy_overloaded_run_passes() -> None:
    report = summarize(healthy_run())
    assert report.problems == []
    assert report.counts == {200: 18, 503: 12}
    assert report.served_per_window == [6, 6, 6]
    assert report.p50_ms == pytest.approx(100) and report.p99_ms == pytest.approx(150)
    assert report.lines()[-1] == "offered/capacity 1.67x: PASS"


@pytest.mark.parametrize(("bad", "says"), [
    (Outcome("/v1/recommend", 1.0, 0.1, 500), "5xx other than 503"),
    (Outcome("/v1/recommend", 1.0, 0.1, 502), "5xx other than 503"),
    (Outcome("/v1/recommend", 1.0, 30.0, error="timeout"), "without an HTTP answer"),
    (Outcome("/v1/recommend", 1.0, 0.0, error="ConnectError"), "without an HTTP answer"),
    (Outcome("/v1/recommend", 1.0, 0.1, 503), "503 without Retry-After"),
    (Outcome("/v1/recommend", 1.0, 0.1, 422), "other than 200 / 503"),
])
def test_each_kind_of_failure_is_reported(bad: serve_load.Outcome, says: str) -> None:
    report = summarize([*healthy_run(), bad])
    assert len(report.problems) == 1 and says in report.problems[0], report.problems
    assert report.lines()[-1].endswith("FAIL")


def test_a_window_without_a_200_is_reported() -> None:
    starved = [o for o in healthy_run() if not (2 <= o.sent_s < 4 and o.status == 200)]
    report = summarize(starved)
    assert report.served_per_window == [6, 0, 6]
    assert any("no 200 answer" in p for p in report.problems), report.problems


serve_crash = load_bench_module("serve_crash")


def crash_report(outcomes: list, capacity_after: float = 3.0):
    report = serve_crash.CrashReport(3.0, 1.0, 2.0, 10.0, capacity_after,
                                     serve_crash.Counter(o.status or o.error for o in outcomes),
                                     serve_crash.longest_gap_s(outcomes, 6.0))
    return serve_crash.judge(report, max_failed_pct=1.0, max_gap_s=2.0, min_recovered=0.8)


def test_a_crash_run_without_losses_passes() -> None:
    ok = [o for o in healthy_run() if o.status == 200]
    report = crash_report(ok)
    assert report.problems == [] and report.failed == 0
    assert report.longest_gap_s == pytest.approx(0.7)   # from the answer at s + 0.35 to the one at s + 1.05


def test_a_crash_run_is_failed_by_lost_requests_gaps_and_capacity_not_coming_back() -> None:
    ok = [o for o in healthy_run() if o.status == 200]
    lost = [Outcome("/v1/recommend", 2.0, 0.01, 502), Outcome("/v1/search", 2.1, 0.0, error="ServerDisconnectedError")]
    assert any("failed" in p for p in crash_report(ok + lost).problems)
    gap = [o for o in ok if not 1 <= o.sent_s < 4]
    assert any("without a 200" in p for p in crash_report(gap).problems)
    assert any("after recovery" in p for p in crash_report(ok, capacity_after=1.0).problems)
    assert crash_report(ok + lost).lines()[-1].endswith("FAIL")
