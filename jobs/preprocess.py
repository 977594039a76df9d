"""Preprocess behaviour logs + catalog with Ray Data into a versioned training data set.

    python jobs/preprocess.py --config jobs/configs/preprocess.default.yaml [--set source.path=DIR]
"""

from recsys.data.config import PreprocessConfig
from recsys.runtime import run_job

if __name__ == "__main__":
    from recsys.data.pipeline import run_preprocess

    run_job("preprocess", PreprocessConfig, run_preprocess, __doc__)
