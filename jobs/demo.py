#!/usr/bin/env python3
"""End-to-end demo on a local Ray cluster: preprocess -> train -> build_index -> evaluate -> serve.

Starts `ray start --head`, submits every job with `ray job submit` (exactly what you
would run against a real cluster), deploys serve_configs/local.yaml with `serve deploy`,
sends a search and a recommendation request over HTTP, prints the answers and shuts
everything down, also on failure or Ctrl-C.

    python jobs/demo.py                                   # synthetic shop (default)
    python jobs/demo.py --data ../shared/data/amazon_scientific --train-steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from recsys.runtime import serve_cluster_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DASHBOARD = "http://127.0.0.1:8265"
SERVE_URL = "http://127.0.0.1:8000"


def say(message: str) -> None:
    print(f"\n[{time.strftime('%H:%M:%S')}] ==> {message}", flush=True)


def run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, cwd=REPO, check=check)


def submit(job: str, overrides: list[str], env: dict[str, str]) -> None:
    """`ray job submit` a job from jobs/ and stream its logs; raises if the job fails."""
    started = time.perf_counter()
    say(f"{job}: ray job submit")
    runtime_env = {"env_vars": {k: env[k] for k in ("RECSYS_HOME", "HF_HUB_OFFLINE", "OMP_NUM_THREADS",
                                                    "TOKENIZERS_PARALLELISM") if k in env}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--",
           sys.executable, f"jobs/{job}.py", "--config", f"jobs/configs/{job}.default.yaml"]
    for item in overrides:
        cmd += ["--set", item]
    run(cmd, env)
    say(f"{job}: done in {time.perf_counter() - started:.0f}s")


def post(path: str, payload: dict) -> dict:
    req = urllib.request.Request(SERVE_URL + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def wait_for_service(timeout_s: float = 300) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(SERVE_URL + "/healthz", timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(3)
    raise TimeoutError(f"the Serve app did not answer {SERVE_URL}/healthz within {timeout_s:.0f}s "
                       f"(see `serve status` and /tmp/ray/session_latest/logs/serve)")


def demo_requests(home: Path) -> tuple[str, str]:
    """A real query (words of the most popular title) and a real user from the latest data version."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from recsys.artifacts import resolve_artifact

    data_dir = resolve_artifact("data", "latest", root=home / "artifacts")
    top = pq.read_table(data_dir / "popularity.parquet").column("item_id")[0].as_py()
    catalog = pq.read_table(data_dir / "catalog.parquet").to_pandas().set_index("item_id")
    query = " ".join(str(catalog.loc[top, "title"]).split()[:3])
    user = pads.dataset(data_dir / "sequences").to_table(columns=["user_id"]).column(0)[0].as_py()
    return query, user


def show(title: str, answer: dict) -> None:
    print(f"\n--- {title}  (cold_start={answer.get('cold_start')}, model={answer.get('model_version')})")
    for rank, item in enumerate(answer["items"], start=1):
        why = item["explanation"]
        print(f"{rank:2d}. {item['title'][:70]:70s} score={item['score']:.3f} "
              f"[{why['source']} retrieval={why['retrieval_score']:.3f} rules={','.join(why['rules_applied'])}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="public data set dir or generic events path (default: synthetic)")
    parser.add_argument("--catalog", help="catalog path, with generic events")
    parser.add_argument("--train-steps", type=int, default=60, help="optimizer steps (CPU: ~3-6 s each)")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    for key, value in {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        env.setdefault(key, value)
    home = Path(env.setdefault("RECSYS_HOME", str(Path.home() / ".recsys"))).expanduser()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    started = time.perf_counter()
    say(f"artifacts go to {home}/artifacts; starting a local Ray cluster, Serve in HAProxy mode")
    # Serve's mode is the cluster's: the controller, HAProxy and replicas inherit it from `ray start`.
    if run([str(BIN / "ray"), "start", "--head", "--num-cpus=2", "--dashboard-host=127.0.0.1",
            "--disable-usage-stats"], {**env, **serve_cluster_env(env)}, check=False).returncode != 0:
        print("could not start Ray: is a cluster already running? Stop it with `ray stop`.", file=sys.stderr)
        return 1
    try:
        source = [f"source.path={Path(args.data).resolve()}"] if args.data else []
        source += [f"source.catalog={Path(args.catalog).resolve()}"] if args.catalog else []
        submit("preprocess", source, env)
        submit("train", [f"max_steps={args.train_steps}"], env)
        submit("build_index", [], env)
        submit("evaluate", ["max_users=2000"], env)
        say("serve deploy serve_configs/local.yaml")
        run([str(BIN / "serve"), "deploy", "serve_configs/local.yaml", "--address", DASHBOARD], env)
        health = wait_for_service()
        say(f"service up: {health}")
        query, user = demo_requests(home)
        show(f"POST /v1/search {{'query': '{query}', 'k': 5}}", post("/v1/search", {"query": query, "k": 5}))
        show(f"POST /v1/recommend {{'user_id': '{user}', 'k': 5}}",
             post("/v1/recommend", {"user_id": user, "k": 5}))
        show("POST /v1/recommend {'user_id': 'new-visitor', 'k': 5}",
             post("/v1/recommend", {"user_id": "new-visitor", "k": 5}))
        report = max((home / "artifacts" / "eval").glob("*/report.md"))
        say(f"offline evaluation ({report}):\n{report.read_text()}")
        say(f"demo finished in {time.perf_counter() - started:.0f}s")
        return 0
    finally:
        say("shutting down Serve and Ray")
        run([str(BIN / "serve"), "shutdown", "-y", "--address", DASHBOARD], env, check=False)
        run([str(BIN / "ray"), "stop"], env, check=False)


if __name__ == "__main__":
    sys.exit(main())
