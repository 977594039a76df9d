"""Training stage: DeepSpeed config from TrainConfig, the per-worker loop, TorchTrainer assembly."""
