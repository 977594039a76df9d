"""Fine-tune the two-tower encoder with Ray Train + DeepSpeed ZeRO; writes a versioned HF model.

    python jobs/train.py --config jobs/configs/train.default.yaml [--set max_steps=300]

Every `checkpoint_every` steps all workers save DeepSpeed state (weights, optimizer, lr schedule,
ZeRO shards) and Ray Train keeps it under $RECSYS_HOME/ray_results/train-<version>/; a failed
worker restarts the group from the latest checkpoint up to `max_failures` times. Every
`eval_every` steps the model ranks the catalog for the data version's validation users
(recall@10, ndcg@10 in logs/metrics.jsonl and TensorBoard); the best model is exported, and
`early_stopping_patience` evaluations without improvement end the run.

A run that stopped (Ctrl-C, killed job, lost node) continues where its last checkpoint left off,
in the same model version, with its own config:

    python jobs/train.py --resume                 # the most recently started run
    python jobs/train.py --resume <model version> # a given run
    python jobs/train.py --config same.yaml --resume   # allowed when the config is the run's own

Only max_failures, log_every, cpus_per_worker and checkpoints_to_keep may differ on resume; a run
that already finished, or no run at all, is an error.
"""

from recsys.runtime import run_job
from recsys.train.config import TrainConfig

if __name__ == "__main__":
    from recsys.train.trainer import run_training

    run_job("train", TrainConfig, run_training, __doc__)
