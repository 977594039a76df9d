"""Average the weights of several fine-tuned models into a new model version (a "model soup").

    python jobs/average_models.py --config jobs/configs/average_models.default.yaml \
        --set "models=[<model version>,<model version>,...]" [--set "weights=[2,1,1]"]

The ingredients must be fine-tunes of one base model with the same towers and pooling (runs that differ
in seed, hard negatives, steps or lengths); text user towers only. The soup is an ordinary model
version: evaluate it, build its index and serve it like any trained model. Reads files only; no Ray.
"""

from recsys.runtime import run_job
from recsys.train.model_soup import AverageModelsConfig

if __name__ == "__main__":
    from recsys.train.model_soup import run_average_models

    run_job("average_models", AverageModelsConfig, run_average_models, __doc__, uses_ray=False)
