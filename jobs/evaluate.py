"""Offline evaluation: full-ranking Recall@K / NDCG@K / MRR of the fine-tuned model vs baselines.

    python jobs/evaluate.py --config jobs/configs/evaluate.default.yaml [--set split=valid]
"""

from recsys.eval.config import EvalConfig
from recsys.runtime import run_job

if __name__ == "__main__":
    from recsys.eval.offline import run_evaluation

    run_job("evaluate", EvalConfig, run_evaluation, __doc__)
