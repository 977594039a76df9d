"""Train the learned search ranker: LambdaMART over the hybrid search's candidates and features for the
queries preprocessing did not hold out, graded by judgments (or search clicks).

    python jobs/train_search_ranker.py --config jobs/configs/train_search_ranker.default.yaml \
        [--set index=<version> --set judgments=null]
"""

from recsys.runtime import run_job
from recsys.train.search_ranker_config import SearchRankerConfig

if __name__ == "__main__":
    from recsys.train.search_ranker import run_search_ranker_training

    run_job("train_search_ranker", SearchRankerConfig, run_search_ranker_training, __doc__, uses_ray=False)
