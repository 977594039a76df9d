"""Fine-tune the two-tower encoder with Ray Train + DeepSpeed ZeRO; writes a versioned HF model.

    python jobs/train.py --config jobs/configs/train.default.yaml [--set max_steps=300]
"""

from recsys.runtime import run_job
from recsys.train.config import TrainConfig

if __name__ == "__main__":
    from recsys.train.trainer import run_training

    run_job("train", TrainConfig, run_training, __doc__)
