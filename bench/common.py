"""What every benchmark in bench/ shares: child-process environment, units, progress lines."""

from __future__ import annotations

import time

GIB = 1024 ** 3
# Children run like `make` runs the product: one BLAS thread per process, no hub, no Ray token.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [bench] {message}", flush=True)
