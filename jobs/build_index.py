"""Embed the catalog with the item tower (Ray Data actor pool) and build a versioned Faiss index.

    python jobs/build_index.py --config jobs/configs/build_index.default.yaml [--set factory=HNSW32]
"""

from recsys.index.config import IndexConfig
from recsys.runtime import run_job

if __name__ == "__main__":
    from recsys.index.build import run_build_index

    run_job("build_index", IndexConfig, run_build_index, __doc__)
