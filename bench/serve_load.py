"""Load test of a running recsys deployment: measure its capacity, then offer a multiple of it.

Capacity: the saturation throughput (200 answers per second) of a closed loop of --concurrency clients, each
sending its next request as soon as the last one is answered, for --capacity-duration seconds after a second
of warm-up (given a list of levels, the best). Overload: an open loop that fires requests on a fixed schedule
at --rate req/s (or --times-capacity x the measured capacity) for --duration seconds whatever the answers, so
a slow or shedding server cannot slow the client down as a closed loop would. Requests: POST /v1/recommend
{"history": 3 item ids, "k": 10} and, for --search-share of them, POST /v1/search {"query": one of
--queries}. Item ids come from /v1/search answers, so the generator needs nothing but the URL; requests name
no user_id and leave the user-state store alone.

A healthy overloaded service answers every request with 200 or with 503 + Retry-After (load shed), never
another 5xx, never so late that a client times out (--timeout), and keeps serving 200s through every
--window seconds. The last line says the offered/capacity ratio and PASS or FAIL; exit status 1 on FAIL.

    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 [--times-capacity 2 | --rate 40]
        [--duration 15] [--concurrency 4,8,16] [--capacity-duration 5] [--timeout 30] [--search-share 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

DEFAULT_QUERIES = ("frying pan", "running shoes", "wireless headphones", "paperback novel", "boots",
                   "bluetooth speaker", "kitchen", "gift")
HISTORY_LEN = 3


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (seconds after the run started) and how it ended."""

    path: str
    sent_s: float
    latency_s: float
    status: int | None = None        # None: no HTTP answer (see error)
    error: str | None = None         # "timeout" or the transport error's class name
    retry_after: str | None = None   # the Retry-After header, if any
    server_ms: float | None = None   # the replica's own time (Server-Timing app;dur=), if it said


@dataclass(frozen=True)
class Workload:
    """What the clients send: recommendation histories and search queries."""

    histories: Sequence[Sequence[str]]
    queries: Sequence[str]
    search_share: float = 0.2
    k: int = 10

    def next_request(self, rng: random.Random) -> tuple[str, dict]:
        if rng.random() < self.search_share:
            return "/v1/search", {"query": rng.choice(self.queries), "k": self.k}
        return "/v1/recommend", {"history": list(rng.choice(self.histories)), "k": self.k}


@dataclass
class LoadReport:
    capacity_rps: float
    offered_rps: float
    sent_rps: float                   # what the generator managed to send (it shares the CPU)
    duration_s: float
    served_rps: float = 0.0           # 200 answers per second, from the first send to the last answer
    counts: Counter = field(default_factory=Counter)   # status code, or "timeout" / an error name
    p50_ms: float = float("nan")      # of the 200 answers
    p99_ms: float = float("nan")
    server_p50_ms: float = float("nan")   # the replica's own time for the same 200s (Server-Timing)
    server_p99_ms: float = float("nan")
    served_per_window: list[int] = field(default_factory=list)   # 200 answers received per window
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items(), key=lambda kv: str(kv[0])))
        return [f"capacity {self.capacity_rps:.1f} req/s (closed loop, 200 answers)",
                f"offered {self.offered_rps:.1f} req/s for {self.duration_s:g}s, sent {self.sent_rps:.1f} req/s",
                f"answers {{{counts}}}, served {self.served_rps:.1f} req/s "
                f"({self.served_rps / self.capacity_rps:.2f}x capacity)",
                f"200 latency p50 {self.p50_ms:.0f} ms, p99 {self.p99_ms:.0f} ms "
                f"(inside the replica: p50 {self.server_p50_ms:.0f} ms, p99 {self.server_p99_ms:.0f} ms)",
                f"200 answers received per window of the run: {self.served_per_window}",
                *(f"PROBLEM: {p}" for p in self.problems),
                f"offered/capacity {self.offered_rps / self.capacity_rps:.2f}x: "
                f"{'FAIL' if self.problems else 'PASS'}"]


def make_client(url: str, timeout_s: float) -> aiohttp.ClientSession:
    """The generator's HTTP client: aiohttp, not httpx. On the 2 cores the server shares with this
    generator, httpx cost ~4 ms of CPU per request and aiohttp ~0.2 ms (a trivial local endpoint, 3,000
    requests at concurrency 32); at 4x capacity httpx alone used ~0.8 of the 2 cores, so the wait in
    the client's own event loop was counted as server latency. No connection cap: an open loop must
    not queue requests inside the client either. `timeout_s` bounds each request end to end."""
    return aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 connector=aiohttp.TCPConnector(limit=0))


async def send(client: aiohttp.ClientSession, path: str, body: dict, run_started: float) -> Outcome:
    sent = time.monotonic()
    try:
        async with client.post(path, json=body) as r:
            await r.read()
    except asyncio.TimeoutError:
        return Outcome(path, sent - run_started, time.monotonic() - sent, error="timeout")
    except aiohttp.ClientError as exc:
        return Outcome(path, sent - run_started, time.monotonic() - sent, error=type(exc).__name__)
    return Outcome(path, sent - run_started, time.monotonic() - sent, r.status,
                   retry_after=r.headers.get("retry-after"), server_ms=server_time_ms(r.headers.get("server-timing")))


def server_time_ms(header: str | None) -> float | None:
    """`app;dur=12.3` (recsys.serve.admission) -> 12.3; None when absent or another shape."""
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app" and params.startswith("dur="):
            try:
                return float(params[4:])
            except ValueError:
                return None
    return None


async def discover_workload(client: aiohttp.ClientSession, queries: Sequence[str] = DEFAULT_QUERIES,
                            search_share: float = 0.2, n_histories: int = 50, seed: int = 0) -> Workload:
    """Histories of item ids the deployment knows, taken from its own search answers."""
    items: list[str] = []
    for query in queries:
        for _attempt in range(10):   # a busy deployment may shed these too
            async with client.post("/v1/search", json={"query": query, "k": 20}) as r:
                if r.status != 503:
                    r.raise_for_status()
                    items += [i["item_id"] for i in (await r.json())["items"]]
                    break
                retry_after = float(r.headers.get("retry-after", 1))
            await asyncio.sleep(retry_after)
        else:
            raise RuntimeError(f"/v1/search {query!r} was shed 10 times in a row: the deployment is saturated")
    items = sorted(set(items))
    if len(items) < HISTORY_LEN:
        raise RuntimeError(f"search for {list(queries)} found only {items}: pass --queries that match the catalog")
    rng = random.Random(seed)
    return Workload([rng.sample(items, HISTORY_LEN) for _ in range(n_histories)], list(queries), search_share)


async def measure_capacity(client: aiohttp.ClientSession, workload: Workload, concurrency: int = 8,
                           duration_s: float = 5.0, warmup_s: float = 1.0, seed: int = 0) -> float:
    """Saturation throughput: 200 answers per second of `concurrency` back-to-back clients, after warm-up."""
    started = time.monotonic()
    end = started + warmup_s + duration_s
    outcomes: list[Outcome] = []

    async def client_loop(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < end:
            outcomes.append(await send(client, *workload.next_request(rng), started))

    await asyncio.gather(*(client_loop(n) for n in range(concurrency)))
    served = sum(1 for o in outcomes if o.status == 200 and warmup_s <= o.sent_s + o.latency_s <= warmup_s + duration_s)
    if served == 0:
        raise RuntimeError(f"no 200 answers while measuring capacity: {Counter(o.status or o.error for o in outcomes)}")
    return served / duration_s


async def best_capacity(client: aiohttp.ClientSession, workload: Workload, levels: Sequence[int],
                        duration_s: float = 5.0) -> tuple[float, dict[int, float]]:
    """The best capacity over closed loops of each concurrency level; (best, {level: req/s})."""
    by_level = {n: await measure_capacity(client, workload, n, duration_s) for n in levels}
    return max(by_level.values()), by_level


async def run_open_loop(client: aiohttp.ClientSession, workload: Workload, rate: float, duration_s: float,
                        seed: int = 1) -> tuple[list[Outcome], float]:
    """Fire round(rate x duration) requests on a fixed schedule; returns (outcomes, seconds spent sending)."""
    rng = random.Random(seed)
    started = time.monotonic()
    tasks = []
    for n in range(round(rate * duration_s)):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(client, *workload.next_request(rng), started)))
    sending_s = time.monotonic() - started
    return list(await asyncio.gather(*tasks)), sending_s


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) by nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summarize(outcomes: Sequence[Outcome], capacity: float, rate: float, duration_s: float, sending_s: float,
              window_s: float = 2.0, max_p99_ms: float | None = 1000.0) -> LoadReport:
    """Counts, latency of the 200s, 200s per window, and what a healthy overloaded service must not do."""
    report = LoadReport(capacity_rps=capacity, offered_rps=rate, sent_rps=len(outcomes) / max(sending_s, 1e-9),
                        duration_s=duration_s,
                        counts=Counter(o.status if o.status is not None else o.error for o in outcomes))
    ok = [o for o in outcomes if o.status == 200]
    finished_s = max((o.sent_s + o.latency_s for o in outcomes), default=0.0)
    report.served_rps = len(ok) / max(finished_s, 1e-9)
    report.p50_ms, report.p99_ms = percentiles([o.latency_s * 1000 for o in ok])
    report.server_p50_ms, report.server_p99_ms = percentiles([o.server_ms for o in ok if o.server_ms is not None])
    n_windows = max(1, int(duration_s // window_s))
    report.served_per_window = [0] * n_windows
    for o in outcomes:   # by when the answer came: a service that keeps serving answers in every window
        if o.status == 200 and o.sent_s + o.latency_s < n_windows * window_s:
            report.served_per_window[int((o.sent_s + o.latency_s) // window_s)] += 1

    bad_5xx = {k: v for k, v in report.counts.items() if isinstance(k, int) and k >= 500 and k != 503}
    if bad_5xx:
        report.problems.append(f"5xx other than 503: {bad_5xx}")
    no_answer = {k: v for k, v in report.counts.items() if not isinstance(k, int)}
    if no_answer:
        report.problems.append(f"requests without an HTTP answer (client timeouts, connection errors): {no_answer}")
    other = {k: v for k, v in report.counts.items() if isinstance(k, int) and k < 500 and k != 200}
    if other:
        report.problems.append(f"answers other than 200 / 503: {other}")
    bare_503 = sum(1 for o in outcomes if o.status == 503 and not o.retry_after)
    if bare_503:
        report.problems.append(f"{bare_503} answers 503 without Retry-After")
    if max_p99_ms is not None and ok and not report.p99_ms <= max_p99_ms:
        report.problems.append(f"accepted requests waited too long: p99 {report.p99_ms:.0f} ms > {max_p99_ms:g} ms")
    if 0 in report.served_per_window:
        report.problems.append(f"a {window_s:g}s window of the run had no 200 answer: {report.served_per_window}")
    return report


async def run_load_test(url: str, duration_s: float = 15.0, rate: float | None = None, times_capacity: float = 2.0,
                        concurrency: Sequence[int] = (8,), capacity_duration_s: float = 5.0, timeout_s: float = 30.0,
                        search_share: float = 0.2, queries: Sequence[str] = DEFAULT_QUERIES,
                        window_s: float = 2.0, max_p99_ms: float | None = 1000.0,
                        log: Callable[[str], None] = print) -> LoadReport:
    """Capacity, then the open loop at `rate` (or times_capacity x capacity); the report of the open loop."""
    async with make_client(url, timeout_s) as client:
        workload = await discover_workload(client, queries, search_share)
        capacity, by_level = await best_capacity(client, workload, concurrency, capacity_duration_s)
        offered = rate if rate is not None else times_capacity * capacity
        log(f"capacity {capacity:.1f} req/s (by concurrency: "
            f"{', '.join(f'{n}: {rps:.1f}' for n, rps in by_level.items())}); "
            f"offering {offered:.1f} req/s for {duration_s:g}s")
        outcomes, sending_s = await run_open_loop(client, workload, offered, duration_s)
    return summarize(outcomes, capacity, offered, duration_s, sending_s, window_s, max_p99_ms)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8000", help="base URL of the running deployment")
    add("--duration", type=float, default=15.0, help="seconds of open-loop load")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="offered requests per second (default: times capacity)")
    rate.add_argument("--times-capacity", type=float, default=2.0, help="offered rate as a multiple of capacity")
    add("--concurrency", type=lambda v: [int(n) for n in v.split(",")], default=[8],
        help="closed-loop clients when measuring capacity; a list (4,8,16) keeps the best")
    add("--capacity-duration", type=float, default=5.0, help="seconds of closed loop measured (after 1s warm-up)")
    add("--timeout", type=float, default=30.0, help="client timeout per request, seconds: must never be hit")
    add("--search-share", type=float, default=0.2, help="share of requests that are /v1/search")
    add("--queries", nargs="+", default=list(DEFAULT_QUERIES), help="search queries (also find item ids)")
    add("--window", type=float, default=2.0, help="every window of this many seconds must get a 200")
    add("--max-p99-ms", type=float, default=1000.0, help="the run fails when the 200s' p99 latency exceeds this")
    args = parser.parse_args(argv)
    report = asyncio.run(run_load_test(
        args.url, args.duration, args.rate, args.times_capacity, args.concurrency, args.capacity_duration,
        args.timeout, args.search_share, args.queries, args.window, args.max_p99_ms))
    print("\n".join(report.lines()), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
