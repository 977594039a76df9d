"""Process-level set-up of CPU training workers: thread pinning (run in a child process, never this one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys, threading
from recsys.runtime import pin_threads_to_cores
cores = pin_threads_to_cores(int(sys.argv[1]), int(sys.argv[2]))
seen = []
t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))   # started after pinning
t.start(); t.join()
print(json.dumps({"cores": sorted(cores) if cores is not None else None,
                  "main": sorted(os.sched_getaffinity(0)), "later_thread": seen[0]}))
"""


def pinned(rank: int, world: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(rank), str(world)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to split")
def test_each_local_rank_gets_its_own_block_of_cores() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    per = len(allowed) // 2
    first, second = pinned(0, 2), pinned(1, 2)
    assert first["cores"] == first["main"] == first["later_thread"] == allowed[:per]
    assert second["cores"] == second["main"] == second["later_thread"] == allowed[per:2 * per]


def test_more_workers_than_cores_pins_nothing() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    got = pinned(0, len(allowed) + 1)
    assert got["cores"] is None and got["main"] == allowed
