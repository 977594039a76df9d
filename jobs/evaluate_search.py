"""Search evaluation: graded NDCG@K / Recall@K of the fine-tuned query tower, its base encoder
zero-shot and BM25 on the search queries preprocessing held out of training.

    python jobs/evaluate_search.py --config jobs/configs/evaluate_search.default.yaml \
        [--set data=<version> --set model=<version> --set max_queries=2000]
"""

from recsys.eval.search_config import SearchEvalConfig
from recsys.runtime import run_job

if __name__ == "__main__":
    from recsys.eval.search_job import run_search_evaluation

    run_job("evaluate_search", SearchEvalConfig, run_search_evaluation, __doc__)
