"""Train the cross-encoder CTR ranker (BCE on ranking examples + retriever hard negatives) with
Ray Train + DeepSpeed; validates AUC and NDCG@k before/after re-ranking; writes a versioned ranker.

    python jobs/train_ranker.py --config jobs/configs/train_ranker.default.yaml [--set max_steps=100]
"""

from recsys.runtime import run_job
from recsys.train.ranker_config import RankerTrainConfig

if __name__ == "__main__":
    from recsys.train.ranker_trainer import run_ranker_training

    run_job("train_ranker", RankerTrainConfig, run_ranker_training, __doc__)
