"""Preprocess at scale: our Ray job vs a single-process pyarrow/pandas reference, same data, same run.

Generates (or reuses) large dirty logs (bench/preprocess_data.py), then runs each path in its own
fresh subprocess with its own RECSYS_HOME: `run_preprocess` (Ray, 2 CPUs) and `run_reference`.
Only the transformation is timed (ray.init is reported apart); the parent samples the summed RSS
of each child's process tree. The two outputs must be identical (`compare_outputs`).
The last line is the ratio reference time / Ray time (goal >= 1.0).

    .venv/bin/python bench/preprocess_bench.py [--events 5000000] [--users 200000] [--items 50000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import CHILD_ENV, GIB, say

PIPELINE_LOG = re.compile(r"^\[\d\d:\d\d:\d\d\] \[")   # recsys.runtime.log lines: phases worth echoing


def child(which: str, config_json: str, result_path: str) -> None:
    """One measured run inside a fresh process; writes {seconds, init_seconds, path, summary} as JSON."""
    from recsys.data.config import PreprocessConfig

    cfg = PreprocessConfig.model_validate_json(config_json)
    init_seconds = 0.0
    if which == "ray":
        import ray

        from recsys.data.pipeline import run_preprocess as run

        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        init_seconds = time.perf_counter() - started
    else:
        from recsys.data.reference import run_reference as run
    started = time.perf_counter()
    summary = run(cfg)
    seconds = time.perf_counter() - started
    if which == "ray":
        ray.shutdown()   # stop raylet/GCS/workers now, not at interpreter exit, so none outlive the child
    Path(result_path).write_text(json.dumps({"seconds": seconds, "init_seconds": init_seconds,
                                             "path": summary["path"], "summary": summary}, default=str))


def _tree(proc) -> list:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(procs: list) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass   # exited between listing and sampling
    return total


def measure(which: str, config_json: str, run_dir: Path, timeout: float) -> dict:
    """Run one path in a subprocess; echo its progress; return its result plus peak tree RSS."""
    import psutil

    if run_dir.exists():
        shutil.rmtree(run_dir)   # a fresh RECSYS_HOME per run: earlier outputs neither collide nor pile up
    run_dir.mkdir(parents=True)
    result_path, log_path = run_dir / "result.json", run_dir / "child.log"
    env = {**os.environ, **CHILD_ENV, "RECSYS_HOME": str(run_dir / "home")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run", which, "--config-json", config_json,
           "--result", str(result_path)]
    say(f"{which}: starting (log {log_path})")
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    ps, peak, seen, pending, last_beat = psutil.Process(proc.pid), 0, {}, "", started
    reader = log_path.open(errors="replace")   # read incrementally: the parent must stay cheap on 2 cores
    # Sum of RSS over the child's whole tree (Ray's raylet, GCS and workers are its descendants).
    # Object-store pages in shared memory count once per process that maps them, so the Ray figure
    # is an upper bound on what the machine really needed.
    try:
        while proc.poll() is None:
            procs = _tree(ps)
            seen.update({p.pid: p for p in procs})
            rss = _rss(procs)
            peak = max(peak, rss)
            *lines, pending = (pending + reader.read()).split("\n")
            for line in lines:
                if PIPELINE_LOG.match(line):
                    print(f"    {which} | {line}", flush=True)
            now = time.perf_counter()
            if now - last_beat >= 15:
                last_beat = now
                say(f"{which}: {now - started:.0f}s elapsed, {len(procs)} processes, RSS {rss / GIB:.2f} GiB "
                    f"(peak {peak / GIB:.2f})")
            if now - started > timeout:
                say(f"{which}: over --timeout {timeout:.0f}s, stopping it")
                proc.kill()
            time.sleep(0.2)
    finally:   # also on Ctrl-C: stop only the processes this child started (Ray normally stops them itself)
        reader.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        say(f"{which} FAILED (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
        sys.exit(2)
    result = json.loads(result_path.read_text())
    result.update(peak_bytes=peak, process_seconds=time.perf_counter() - started)
    say(f"{which}: done in {result['seconds']:.1f}s (process {result['process_seconds']:.1f}s), "
        f"peak RSS {peak / GIB:.2f} GiB")
    return result


def print_counts(summary: dict) -> None:
    """The key counts of the Ray run's summary.json."""
    events = summary["events"]
    print("Ray summary:")
    for label, value in (("rows in", events["rows_in"]), ("quarantined", events["rows_quarantined"]),
                         ("quarantined by reason", events["quarantined_by_reason"]),
                         ("dropped by reason", events["dropped_by_reason"]),
                         ("kept", events["rows_kept"]), ("event mix", events["event_mix"]),
                         ("users", summary["users"]), ("users with test target", summary["users_with_test"]),
                         ("catalog", summary["catalog"]), ("windows", summary["windows"]),
                         ("train pairs", summary["train_pairs"]), ("ranking examples", summary["ranking_examples"])):
        print(f"  {label:<22} {json.dumps(value, sort_keys=True) if isinstance(value, dict) else value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--data-dir", help="default: $RECSYS_HOME/bench/preprocess_<events>_<users>")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per path before it is killed")
    parser.add_argument("--run", choices=("ray", "reference"), help=argparse.SUPPRESS)   # child mode
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args.run, args.config_json, args.result)
        return

    # SIGTERM unwinds like Ctrl-C, so measure() still stops the child's process tree on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/ is scripts, not a package
    from preprocess_data import generate_logs

    from recsys.config import recsys_home
    from recsys.data.config import PreprocessConfig, SourceConfig

    data_dir = Path(args.data_dir or recsys_home() / "bench" / f"preprocess_{args.events}_{args.users}").resolve()
    say(f"phase 1/4: data in {data_dir}")
    t0 = time.perf_counter()
    stats = generate_logs(data_dir, args.events, args.users, args.items, log=lambda m: say(f"generate: {m}"))
    say(f"data ready in {time.perf_counter() - t0:.1f}s: {stats['rows']:,} rows, {stats['dirt_rows']:,} dirty")
    # One config for both paths: the generated files, every other field at its default.
    source = SourceConfig(path=str(data_dir / "events"), catalog=str(data_dir / "catalog.parquet"))
    cfg = PreprocessConfig(source=source)
    config_json = cfg.model_dump_json()

    results = {}
    for phase, which in ((2, "ray"), (3, "reference")):
        say(f"phase {phase}/4: {which}")
        results[which] = measure(which, config_json, data_dir / "runs" / which, args.timeout)

    say("phase 4/4: comparing outputs")
    from recsys.data.compare import compare_outputs

    differences = compare_outputs(results["ray"]["path"], results["reference"]["path"])
    if differences:
        print(f"outputs DIFFER ({len(differences)} differences, first 20):")
        for line in differences[:20]:
            print(f"  - {line}")
    else:
        print("outputs identical")
    print_counts(results["ray"]["summary"])
    print(f"ray.init: {results['ray']['init_seconds']:.1f}s (not counted)")
    print(f"{'path':<10} {'wall s':>9} {'peak GiB':>9} {'events/s':>11}")
    for which, r in results.items():
        print(f"{which:<10} {r['seconds']:>9.1f} {r['peak_bytes'] / GIB:>9.2f} {stats['rows'] / r['seconds']:>11,.0f}")
    print(f"ratio reference_time / ray_time = {results['reference']['seconds'] / results['ray']['seconds']:.2f}")
    if differences:
        sys.exit(1)


if __name__ == "__main__":
    main()
