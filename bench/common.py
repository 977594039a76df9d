"""What every benchmark in bench/ shares: child-process environment, units, progress lines."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

GIB = 1024 ** 3
# Children run like `make` runs the product: one BLAS thread per process, no hub, no Ray token.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [bench] {message}", flush=True)


def cpu_by_process(driver: str = "client + driver") -> dict[str, float]:
    """CPU seconds so far of this process and its descendants (the Ray processes ray.init started), by role:
    ray::<actor or task name>, raylet, gcs_server, the script name of Ray's Python helpers."""
    import psutil

    me, out = psutil.Process(), {}
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if p.pid == me.pid:
                role = driver
            elif cmd[0].startswith("ray::"):
                role = cmd[0].split(" ")[0]
            elif cmd[0].endswith(("raylet", "gcs_server")):
                role = Path(cmd[0]).name
            else:   # python .../dashboard.py, log_monitor.py, ...
                role = next((Path(c).name for c in cmd[1:] if c.endswith(".py")), "other Ray processes")
            out[role] = out.get(role, 0.0) + sum(p.cpu_times()[:2])
    return out


def kill_tree(proc) -> None:
    """Stop a child that is still running and its descendants (raylet, workers): only what this bench started."""
    import psutil

    if proc.poll() is not None:   # already reaped: its pid may belong to someone else by now
        return
    with contextlib.suppress(psutil.Error):
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.Error):
                p.kill()
