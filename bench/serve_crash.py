"""Crash under load: kill -9 one Ingress replica of a running recsys deployment while a steady open loop of
requests runs, and count what the clients lose.

The deployment must run on this node (the replica's process is found by its name, `ray::ServeReplica:<app>:
Ingress`, and killed with SIGKILL, what an OOM kill or a node agent does), with at least two Ingress replicas
(serve_configs/local.yaml ships two). Steps: measure capacity (bench/serve_load.py's closed loop); offer
--times-capacity of it (or --rate) for --duration seconds, killing one replica --kill-at seconds in; wait
until Serve reports as many replicas RUNNING again (it restarts the dead one), and measure capacity again,
for up to --settle seconds until it reaches --min-recovered of before (a fresh replica's first requests are
slow). Serve's status is read through Ray (`ray.init(address="auto")`, on this node).

A request fails when it gets anything but a 200 (a 503 under steady load below capacity is a failed request
for the user too), or no answer. The run passes when under --max-failed-pct of the requests failed, a 200
came back in every --window seconds, and capacity after recovery is at least --min-recovered of before.
The last line is recovered capacity / capacity before and PASS or FAIL; exit status 1 on FAIL.

    .venv/bin/python bench/serve_crash.py --url http://127.0.0.1:8000 [--duration 60] [--kill-at 15]
        [--times-capacity 0.3 | --rate 30] [--app recsys]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import (  # noqa: E402
    DEFAULT_QUERIES,
    Outcome,
    Workload,
    best_capacity,
    discover_workload,
    make_client,
    percentiles,
    run_open_loop,
)


def ingress_replica_pids(app: str = "recsys") -> list[int]:
    """Processes of this node that run one of the app's Ingress replicas, oldest first."""
    import psutil

    name = f"ray::ServeReplica:{app}:Ingress"
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        with contextlib.suppress(psutil.Error):
            cmdline = p.info["cmdline"] or []
            if cmdline and cmdline[0].split(" ")[0] == name:
                found.append((p.info["create_time"], p.pid))
    return [pid for _, pid in sorted(found)]


async def kill_one_replica_at(at_s: float, app: str, run_started: float) -> tuple[float, int]:
    """SIGKILL the oldest Ingress replica `at_s` seconds after `run_started`; (when, its pid)."""
    await asyncio.sleep(max(0.0, run_started + at_s - time.monotonic()))
    pids = ingress_replica_pids(app)
    if len(pids) < 2:
        raise RuntimeError(f"{len(pids)} Ingress replica(s) of app {app!r} on this node: the crash test needs >= 2 "
                           "(a single replica's crash is an outage by construction)")
    os.kill(pids[0], signal.SIGKILL)
    return time.monotonic() - run_started, pids[0]


def running_ingress_replicas(app: str) -> int:
    """How many of the app's Ingress replicas Serve's controller reports RUNNING (constructed and passing
    health checks). A replacement's process exists from the moment Serve restarts it, long before its
    constructor has loaded the model and the index, so the process list alone says nothing of readiness."""
    import ray
    from ray import serve
    from ray.serve.schema import ReplicaState

    if not ray.is_initialized():
        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    application = serve.status().applications.get(app)
    deployment = application.deployments.get("Ingress") if application else None
    return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0


async def wait_for_replicas(app: str, count: int, killed: int, timeout_s: float, url: str) -> float:
    """Seconds until `count` Ingress replicas (not the killed one) run, Serve reports as many RUNNING, and
    /readyz answers 200 again. Runs beside the load, so Serve's status is read off the event loop."""
    started = time.monotonic()
    async with make_client(url, 5.0) as client:
        while time.monotonic() - started < timeout_s:
            pids = [p for p in ingress_replica_pids(app) if p != killed]
            if len(pids) >= count and await asyncio.to_thread(running_ingress_replicas, app) >= count:
                with contextlib.suppress(Exception):
                    async with client.get("/readyz") as r:
                        if r.status == 200:
                            return time.monotonic() - started
            await asyncio.sleep(1.0)
    raise TimeoutError(f"the Ingress replicas did not come back to {count} RUNNING within {timeout_s:g}s of the kill")


async def kill_and_wait_for_recovery(at_s: float, app: str, run_started: float, replicas: int,
                                     timeout_s: float, url: str) -> tuple[float, float]:
    """Kill one replica at `at_s`, then wait for Serve to run `replicas` again; (killed at, seconds to recover)."""
    killed_at, killed_pid = await kill_one_replica_at(at_s, app, run_started)
    return killed_at, await wait_for_replicas(app, replicas, killed_pid, timeout_s, url)


async def capacity_once_recovered(client: aiohttp.ClientSession, workload: Workload, concurrency: Sequence[int],
                                  duration_s: float, wanted_rps: float, settle_s: float) -> float:
    """The best capacity of closed loops run until one reaches `wanted_rps` or `settle_s` seconds pass.
    A replacement replica is RUNNING before it is fast: its first requests pay one-off costs (first forward
    pass, allocator growth) that the replicas measured before had paid long ago, and the proxy learns of it
    a moment later; so capacity is read again for a while, and a replica that never takes its share fails."""
    started = time.monotonic()
    best = 0.0
    while True:
        best = max(best, (await best_capacity(client, workload, concurrency, duration_s))[0])
        if best >= wanted_rps or time.monotonic() - started >= settle_s:
            return best


@dataclass
class CrashReport:
    capacity_rps: float
    offered_rps: float
    killed_at_s: float
    recovered_after_s: float
    capacity_after_rps: float
    counts: Counter = field(default_factory=Counter)
    longest_gap_s: float = 0.0        # longest stretch between two 200 answers
    p99_ms: float = float("nan")
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.counts.items() if k != 200)

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / max(1, sum(self.counts.values()))

    def lines(self) -> list[str]:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items(), key=lambda kv: str(kv[0])))
        return [f"capacity {self.capacity_rps:.1f} req/s before; offered {self.offered_rps:.1f} req/s",
                f"killed one Ingress replica at {self.killed_at_s:.1f}s; Serve ran as many replicas again "
                f"{self.recovered_after_s:.0f}s after the kill",
                f"answers {{{counts}}}: {self.failed} failed = {self.failed_pct:.2f}%",
                f"longest gap between 200 answers {self.longest_gap_s:.2f}s, 200 latency p99 {self.p99_ms:.0f} ms",
                f"capacity after recovery {self.capacity_after_rps:.1f} req/s",
                *(f"PROBLEM: {p}" for p in self.problems),
                f"recovered/before capacity {self.capacity_after_rps / self.capacity_rps:.2f}x: "
                f"{'FAIL' if self.problems else 'PASS'}"]


def longest_gap_s(outcomes: Sequence[Outcome], duration_s: float) -> float:
    """The longest time without a 200 answer arriving, over the run (its start and end included)."""
    arrivals = sorted(o.sent_s + o.latency_s for o in outcomes if o.status == 200)
    edges = [0.0, *arrivals, max(duration_s, arrivals[-1] if arrivals else 0.0)]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


def judge(report: CrashReport, max_failed_pct: float, max_gap_s: float, min_recovered: float) -> CrashReport:
    if report.failed_pct >= max_failed_pct:
        report.problems.append(f"{report.failed_pct:.2f}% of requests failed (bar: < {max_failed_pct:g}%)")
    if report.longest_gap_s > max_gap_s:
        report.problems.append(f"{report.longest_gap_s:.1f}s without a 200 answer (bar: {max_gap_s:g}s)")
    if report.capacity_after_rps < min_recovered * report.capacity_rps:
        report.problems.append(f"capacity after recovery {report.capacity_after_rps:.1f} < {min_recovered:g} x "
                               f"{report.capacity_rps:.1f} req/s before")
    return report


async def run_crash_test(url: str, duration_s: float = 60.0, kill_at_s: float = 15.0, rate: float | None = None,
                         times_capacity: float = 0.3, app: str = "recsys", concurrency: Sequence[int] = (8,),
                         capacity_duration_s: float = 5.0, timeout_s: float = 30.0, search_share: float = 0.2,
                         queries: Sequence[str] = DEFAULT_QUERIES, recovery_timeout_s: float = 180.0,
                         max_failed_pct: float = 1.0, max_gap_s: float = 2.0, min_recovered: float = 0.8,
                         settle_s: float = 30.0, log: Callable[[str], None] = print) -> CrashReport:
    replicas = len(ingress_replica_pids(app))
    async with make_client(url, timeout_s) as client:
        workload = await discover_workload(client, queries, search_share)
        capacity, _ = await best_capacity(client, workload, concurrency, capacity_duration_s)
        offered = rate if rate is not None else times_capacity * capacity
        log(f"capacity {capacity:.1f} req/s with {replicas} Ingress replicas; offering {offered:.1f} req/s for "
            f"{duration_s:g}s, killing one at {kill_at_s:g}s")
        started = time.monotonic()
        recovery = asyncio.create_task(kill_and_wait_for_recovery(kill_at_s, app, started, replicas,
                                                                  recovery_timeout_s, url))
        outcomes, _ = await run_open_loop(client, workload, offered, duration_s)
        killed_at, recovered = await recovery
        log(f"replicas RUNNING again {recovered:.0f}s after the kill; measuring capacity again")
        capacity_after = await capacity_once_recovered(client, workload, concurrency, capacity_duration_s,
                                                       min_recovered * capacity, settle_s)
    report = CrashReport(capacity, offered, killed_at, recovered, capacity_after,
                         Counter(o.status if o.status is not None else o.error for o in outcomes),
                         longest_gap_s(outcomes, duration_s),
                         percentiles([o.latency_s * 1000 for o in outcomes if o.status == 200])[1])
    return judge(report, max_failed_pct, max_gap_s, min_recovered)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8000", help="base URL of the running deployment")
    add("--app", default="recsys", help="the Serve application's name (its Ingress replicas are killed)")
    add("--duration", type=float, default=60.0, help="seconds of steady open-loop load")
    add("--kill-at", type=float, default=15.0, help="seconds into the load when one Ingress replica is killed")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="offered requests per second (default: times capacity)")
    rate.add_argument("--times-capacity", type=float, default=0.3, help="offered rate as a multiple of capacity")
    add("--max-failed-pct", type=float, default=1.0, help="the run fails at this share of failed requests or more")
    add("--max-gap", type=float, default=2.0, help="the run fails with a longer stretch without a 200 (seconds)")
    add("--min-recovered", type=float, default=0.8, help="capacity after recovery / before, at least")
    add("--settle", type=float, default=30.0, help="seconds to keep measuring capacity once the replicas run")
    args = parser.parse_args(argv)
    report = asyncio.run(run_crash_test(args.url, args.duration, args.kill_at, args.rate, args.times_capacity,
                                        args.app, max_failed_pct=args.max_failed_pct, max_gap_s=args.max_gap,
                                        min_recovered=args.min_recovered, settle_s=args.settle))
    print("\n".join(report.lines()), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
