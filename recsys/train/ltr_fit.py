"""Fitting a LambdaMART ranker over retrieved candidates and reporting what it changes: what the search
ranker and the recommendation ranker jobs share. No Ray."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from recsys.config import JobConfig
from recsys.eval.metrics import graded_ndcg_at_k
from recsys.models.ltr import LTRModel
from recsys.models.search_features import popularity_column
from recsys.runtime import log

NOT_RETRIEVED = 10 ** 9     # rank of a judged item the candidates do not hold: beyond every cut-off


class LTRSettings(JobConfig):
    """What both learned-ranker jobs' configs share: the validation split and LightGBM's settings."""

    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="queries (users) kept out of the fit for "
                                                                      "early stopping and the report")
    num_trees: int = Field(500, ge=1, description="most boosting rounds (early stopping on validation)")
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    seed: int = Field(0, description="seed of the sample, the validation split and LightGBM")
    cv_folds: int = Field(0, ge=0, le=10, description="0: early stopping on the validation queries; k >= 2: the "
                                                      "rounds (<= num_trees) where the k-fold mean NDCG@10 over "
                                                      "the training queries peaks")
    ensemble: int = Field(1, ge=1, le=16, description="LambdaMART members fitted on bagged queries and features "
                                                     "with seeds seed, seed + 1, ...; the ranker scores their mean")


def with_popularity(cands: list[dict], counts: dict[str, int], max_count: float) -> tuple[np.ndarray, list[str]]:
    """Served candidates (each with the Retriever's `features`) -> (rows [C, F] with the Ranker's popularity
    column appended, as recsys.serve.rank.rank_candidates builds them; the candidates' ids)."""
    items = [c["item_id"] for c in cands]
    retriever = np.array([c["features"] for c in cands], dtype=np.float32).reshape(len(cands), -1)
    pop = popularity_column([counts.get(i, 0) for i in items], max_count)
    return np.concatenate([retriever, pop[:, None]], axis=1), items


def ndcg_of_orders(queries: list[str], orders: list[list[str]], gains: pd.DataFrame, k: int = 10) -> float:
    """Mean graded NDCG@k of each query's order against all its judged items (retrieved or not)."""
    position = {q: n for n, q in enumerate(queries)}
    judged = gains[gains["query"].isin(position)]
    rank_of = [{item: r for r, item in enumerate(o)} for o in orders]
    q = judged["query"].map(position).to_numpy()
    rank = np.array([rank_of[a].get(i, NOT_RETRIEVED) for a, i in zip(q, judged["item_id"])])
    per_query = graded_ndcg_at_k(q, judged["gain"].to_numpy(), rank, k, len(queries))
    return float(per_query.mean())


Rows = tuple[np.ndarray, np.ndarray, list[int]]   # (features [R, F], gains [R], rows per query)


def fit_lambdamart(train: Rows, held: Rows, feature_names: tuple[str, ...], cfg: LTRSettings,
                   job: str) -> tuple[LTRModel, dict | None]:
    """-> (the fitted model, {folds, rounds, ndcg@10} when cfg.cv_folds chose the rounds)."""
    params: dict[str, Any] = {"learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
                              "min_data_in_leaf": cfg.min_data_in_leaf, "seed": cfg.seed}
    if cfg.cv_folds < 2:
        return LTRModel.fit(*train, feature_names, valid=held if held[2] else None, num_trees=cfg.num_trees,
                            ensemble=cfg.ensemble, **params), None
    rounds, cv_ndcg = LTRModel.cv_rounds(*train, folds=cfg.cv_folds, max_trees=cfg.num_trees,
                                         bagged=cfg.ensemble > 1, **params)
    log(job, f"{cfg.cv_folds}-fold mean NDCG@10 peaks at {rounds} rounds ({cv_ndcg:.4f}, queries with a "
             f"relevant candidate)")
    cv = {"folds": cfg.cv_folds, "rounds": rounds, "ndcg@10": round(cv_ndcg, 4)}
    return LTRModel.fit(*train, feature_names, num_trees=rounds, ensemble=cfg.ensemble, **params), cv


def fit_and_report(features: np.ndarray, ids: list[list[str]], queries: list[str], valid: np.ndarray,
                   gains: pd.DataFrame, feature_names: tuple[str, ...], cfg: LTRSettings,
                   job: str) -> tuple[LTRModel, dict]:
    """LambdaMART on the training queries' rows (features [R, F], candidate ids per query, in order),
    early-stopped on the validation queries' (`valid` [Q] bool) or with rounds chosen by cv_folds; the report
    compares the validation queries' NDCG@10 in the candidates' own order and in the ranker's.
    `gains`: (query, item_id, gain)."""
    sizes = np.array([len(i) for i in ids])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    gain_of = {(q, i): g for q, i, g in zip(gains["query"], gains["item_id"], gains["gain"])}
    row_gain = np.array([gain_of.get((q, i), 0.0) for q, items in zip(queries, ids) for i in items])

    # A query with no relevant candidate adds no LambdaMART gradient, but LightGBM scores it NDCG 1, which
    # drowns the stopping metric (2 in 3 users on Amazon Scientific): fit and stop on the others only.
    relevant = np.array([row_gain[offsets[n]:offsets[n + 1]].max(initial=0.0) > 0 for n in range(len(ids))])

    def part(mask: np.ndarray) -> Rows:
        keep = mask & relevant
        rows = np.repeat(keep, sizes)
        return features[rows], row_gain[rows], [int(s) for s in sizes[keep]]

    train, held = part(~valid), part(valid)
    log(job, f"fitting LambdaMART on {len(train[2])} queries with a relevant candidate ({len(train[0])} rows), "
             f"validating on {len(held[2])}")
    fitted, cv = fit_lambdamart(train, held, feature_names, cfg, job)
    v_queries = [q for q, m in zip(queries, valid) if m]
    retrieved = [ids[n] for n in np.flatnonzero(valid)]
    learned = []
    for n in np.flatnonzero(valid):
        scores = fitted.score(features[offsets[n]:offsets[n + 1]])
        learned.append([ids[n][j] for j in np.argsort(-scores, kind="stable")])
    ndcg = {"retrieved": round(ndcg_of_orders(v_queries, retrieved, gains), 4),
            "ranker": round(ndcg_of_orders(v_queries, learned, gains), 4)}
    first = fitted.boosters[0]   # every member of an ensemble has the same rounds
    trees = int(first.best_iteration or first.current_iteration())
    report = {"queries": {"train": int((~valid).sum()), "validation": int(valid.sum())}, "trees": trees,
              "validation_ndcg@10": ndcg, "cv": cv}
    log(job, f"validation NDCG@10 over {len(v_queries)} queries: retrieved order {ndcg['retrieved']}, "
             f"ranker {ndcg['ranker']} ({trees} trees)")
    return fitted, report
