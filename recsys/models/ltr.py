"""Learning to rank over retrieval features: LightGBM's LambdaMART. No Ray.

Why LambdaMART: it optimises NDCG of each query's list directly from graded labels, learns how much to
trust each signal where (an exact model-number match, a strong cosine with no shared word), costs
microseconds per candidate on CPU, and is what phased ranking in Vespa and Elasticsearch's LTR plugin
run. The model is saved as LightGBM's own text format (no pickle: DESIGN principle 8).

Labels are graded gains (e.g. relevance - 1 on Home Depot's 1-3 scale) quantised to LABEL_STEPS steps
per gain point, with LightGBM's label_gain set to the gain itself, so the NDCG LambdaMART optimises is
the evaluation's NDCG (gain = relevance - 1), not the default 2^label - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.txt"   # an ensemble's further members: model.1.txt, model.2.txt, ...
LABEL_STEPS = 10   # label = round(gain * LABEL_STEPS)
MAX_GAIN = 3.0     # gains above this are clipped (LightGBM wants a bounded label set)


def gain_labels(gains: np.ndarray) -> np.ndarray:
    """Float gains [R] -> int labels [R] for LightGBM (0 = irrelevant)."""
    g = np.clip(np.asarray(gains, dtype=np.float64), 0.0, MAX_GAIN)
    return np.rint(g * LABEL_STEPS).astype(np.int32)


def label_gain() -> list[float]:
    """LightGBM label_gain: label i is worth i / LABEL_STEPS, the gain it was quantised from."""
    return [i / LABEL_STEPS for i in range(int(MAX_GAIN * LABEL_STEPS) + 1)]


class LTRModel:
    """LambdaMART boosters (one, or a bagged ensemble scored by their mean) and the feature names their
    columns must have."""

    def __init__(self, boosters: Sequence[Any], feature_names: Sequence[str]):   # lightgbm.Booster members
        self.boosters = tuple(boosters)
        self.feature_names = tuple(feature_names)

    @staticmethod
    def params(learning_rate: float = 0.05, num_leaves: int = 31, min_data_in_leaf: int = 50, seed: int = 0,
               eval_at: int = 10, bagged: bool = False) -> dict[str, Any]:
        """LightGBM's LambdaMART parameters (what fit and cv_rounds share). bagged: each tree sees 80% of the
        queries (whole lists: bagging_by_query) and 80% of the features, so seeds give different members."""
        bagging = {"bagging_by_query": True, "bagging_fraction": 0.8, "bagging_freq": 1,
                   "feature_fraction": 0.8} if bagged else {}
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [eval_at], "label_gain": label_gain(),
                "learning_rate": learning_rate, "num_leaves": num_leaves, "min_data_in_leaf": min_data_in_leaf,
                "lambdarank_truncation_level": max(eval_at * 2, 20), "seed": seed, "deterministic": True,
                "num_threads": 0, "verbosity": -1, **bagging}

    @classmethod
    def fit(cls, features: np.ndarray, gains: np.ndarray, group_sizes: Sequence[int], feature_names: Sequence[str],
            valid: tuple[np.ndarray, np.ndarray, Sequence[int]] | None = None, num_trees: int = 300,
            learning_rate: float = 0.05, num_leaves: int = 31, min_data_in_leaf: int = 50, seed: int = 0,
            eval_at: int = 10, ensemble: int = 1) -> LTRModel:
        """Rows [R, F] grouped by query in order (group_sizes sum to R); with `valid`, stops when its
        NDCG@eval_at has not improved for 30 rounds and keeps the best round. ensemble > 1: that many bagged
        members (seeds seed, seed + 1, ...), scored by their mean: with one relevant item per query the
        fitted trees vary a lot with the sample, and averaging members cuts that variance."""
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        boosters = [cls._fit_one(features, gains, group_sizes, feature_names, valid, num_trees,
                                 cls.params(learning_rate, num_leaves, min_data_in_leaf, seed + m, eval_at,
                                            bagged=ensemble > 1))
                    for m in range(ensemble)]
        return cls(boosters, feature_names)

    @staticmethod
    def _fit_one(features: np.ndarray, gains: np.ndarray, group_sizes: Sequence[int], feature_names: Sequence[str],
                 valid: tuple[np.ndarray, np.ndarray, Sequence[int]] | None, num_trees: int,
                 params: dict[str, Any]) -> Any:
        import lightgbm as lgb

        train = lgb.Dataset(features, gain_labels(gains), group=list(group_sizes), feature_name=list(feature_names))
        sets: list[Any] = []
        callbacks: list[Any] = []
        if valid is not None:
            vx, vg, vsizes = valid
            sets = [lgb.Dataset(vx, gain_labels(vg), group=list(vsizes), reference=train)]
            callbacks = [lgb.early_stopping(30, verbose=False)]
        return lgb.train(params, train, num_boost_round=num_trees, valid_sets=sets, callbacks=callbacks)

    @classmethod
    def cv_rounds(cls, features: np.ndarray, gains: np.ndarray, group_sizes: Sequence[int], folds: int,
                  max_trees: int, **params: Any) -> tuple[int, float]:
        """The boosting rounds (<= max_trees) at which the k-fold mean NDCG (folds split by query) peaks, and
        that NDCG. Why not early stopping on one split: with one relevant item per query the NDCG curve is
        noisy with long plateaus, and a patience window stops on an early bump (docs/results.md, "Recent
        popularity")."""
        import lightgbm as lgb

        if folds < 2:
            raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
        train = lgb.Dataset(features, gain_labels(gains), group=list(group_sizes))
        curves = lgb.cv(cls.params(**params), train, num_boost_round=max_trees, nfold=folds, stratified=False,
                        seed=params.get("seed", 0))
        mean = np.asarray(next(v for k, v in curves.items() if k.endswith("ndcg@" + str(params.get("eval_at", 10))
                                                                           + "-mean")))
        best = int(np.argmax(mean))
        return best + 1, float(mean[best])

    def score(self, features: np.ndarray) -> np.ndarray:
        """[C, F] -> float64 [C]: higher ranks first (an unbounded LambdaMART score)."""
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(f"want [C, {len(self.feature_names)}] features {self.feature_names}, got {features.shape}")
        if len(features) == 0:
            return np.zeros(0)
        return np.mean([np.asarray(b.predict(features, num_iteration=b.best_iteration or None))
                        for b in self.boosters], axis=0)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for path, b in zip(member_files(Path(directory), len(self.boosters)), self.boosters):
            b.save_model(str(path), num_iteration=b.best_iteration or None)

    @classmethod
    def load(cls, directory: str | Path, feature_names: Sequence[str]) -> LTRModel:
        """The boosters in `directory`; their feature names must be `feature_names` (what the caller computes)."""
        import lightgbm as lgb

        boosters = []
        for path in member_files(Path(directory), sum(1 for _ in Path(directory).glob("model.*.txt")) + 1):
            booster = lgb.Booster(model_file=str(path))
            if tuple(booster.feature_name()) != tuple(feature_names):
                raise ValueError(f"{path} was trained on features {booster.feature_name()}, "
                                 f"this code computes {list(feature_names)}: retrain the ranker")
            boosters.append(booster)
        return cls(boosters, feature_names)


def member_files(directory: Path, members: int) -> list[Path]:
    """model.txt, then model.1.txt ... for an ensemble's further members."""
    return [directory / MODEL_FILE] + [directory / f"model.{m}.txt" for m in range(1, members)]
