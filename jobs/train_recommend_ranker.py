"""Train the learned recommendation ranker: LambdaMART over /v1/recommend's merged candidates and every
source's view of them, with each user's last item as the target of the rest of their history.

    python jobs/train_recommend_ranker.py --config jobs/configs/train_recommend_ranker.default.yaml \
        [--set index=<version>]
"""

from recsys.runtime import run_job
from recsys.train.recommend_ranker_config import RecommendRankerConfig

if __name__ == "__main__":
    from recsys.train.recommend_ranker import run_recommend_ranker_training

    run_job("train_recommend_ranker", RecommendRankerConfig, run_recommend_ranker_training, __doc__, uses_ray=False)
