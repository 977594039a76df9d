"""Driver of jobs/train_recommend_ranker.py: each user's last item as the target of the rest of their
history -> /v1/recommend's merged candidates and features -> LambdaMART -> a versioned ranker artifact.

Why the last item: with leave-last-out preprocessing it is the test target, which the two-tower model
and the sequence tower never trained on (valid was only their early-stopping signal). Co-occurrence, EASE,
recent popularity and the popularity feature are rebuilt here from the histories without their last item, so no
feature has seen the targets it is learning to rank: served, the same sources see one more step per
user, as they would a day later. Candidates and features come from the serving code
(RetrievalModel.recommend_candidates, the Ranker's popularity column). All in this process: one
sequence-tower or encoder pass per user and a LightGBM fit.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pandas as pd

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact, write_manifest
from recsys.models.recent_popularity import RecentPopularity
from recsys.models.recommend_features import RECOMMEND_FEATURES, RECOMMEND_RANKER_TYPE
from recsys.runtime import log
from recsys.serve.candidate_sources import cooccurrence_source, ease_source
from recsys.serve.catalog import CATALOG_FILE, SEQUENCES_DIR, load_user_histories
from recsys.serve.retrieval_model import RetrievalModel
from recsys.train.ltr_fit import fit_and_report, with_popularity
from recsys.train.recommend_ranker_config import RecommendRankerConfig

JOB = "train_recommend_ranker"


def next_item_targets(histories: dict[str, list[str]], min_history: int,
                      shift: int = 1) -> tuple[list[str], list[list[str]], list[str]]:
    """{user: items oldest first} -> (users, histories before the target, targets): the target is the item
    `shift` steps from the end (1 = the last), for users with at least min_history items before it."""
    users = sorted(u for u, items in histories.items() if len(items) >= min_history + shift)
    return users, [histories[u][:-shift] for u in users], [histories[u][-shift] for u in users]


def candidate_rows(model: RetrievalModel, histories: list[list[str]], cfg: RecommendRankerConfig,
                   counts: dict[str, int]) -> tuple[np.ndarray, list[list[str]]]:
    """Per user the merged candidates, history items left out as the served rules leave them out ->
    (features [R, len(RECOMMEND_FEATURES)], candidate ids per user)."""
    max_count = float(max(counts.values(), default=0))
    rows, ids = [], []
    for n, history in enumerate(histories, start=1):
        cands, _ = model.recommend_candidates(history, cfg.sources, cfg.retrieval_k)
        seen = set(history)
        row, items = with_popularity([c for c in cands if c["item_id"] not in seen], counts, max_count)
        rows.append(row)
        ids.append(items)
        if n % 2000 == 0:
            log(JOB, f"candidates of {n}/{len(histories)} users")
    return np.concatenate(rows) if rows else np.zeros((0, len(RECOMMEND_FEATURES)), np.float32), ids


def shift_rows(model: RetrievalModel, sequences: dict[str, list[str]], users: set[str],
               cfg: RecommendRankerConfig, shift: int) -> tuple[list[str], np.ndarray, list[list[str]], list[str]]:
    """The `users`' targets `shift` steps from the end, with co-occurrence, EASE and both popularities rebuilt
    from every sequence cut before that step (module docstring) -> (users, features, candidate ids, targets)."""
    before = [items[:-shift] for items in sequences.values() if len(items) > shift]
    model.cooccurrence, model.ease = cooccurrence_source(before), ease_source(before)
    model.recent = RecentPopularity(before)
    kept, histories, targets = next_item_targets({u: sequences[u] for u in users}, cfg.min_history, shift)
    features, ids = candidate_rows(model, histories, cfg, Counter(i for h in before for i in h))
    found = sum(t in c for t, c in zip(targets, ids))
    log(JOB, f"targets {shift} step(s) from the end: {found} of {len(kept)} among the candidates")
    return kept, features, ids, targets


def run_recommend_ranker_training(cfg: RecommendRankerConfig) -> dict:
    started = time.perf_counter()
    data_dir, index_dir = resolve_artifact("data", cfg.data), resolve_artifact("indexes", cfg.index)
    data_manifest, index_manifest = read_manifest(data_dir), read_manifest(index_dir)
    sequences = load_user_histories(data_dir / SEQUENCES_DIR)
    users, _, _ = next_item_targets(sequences, cfg.min_history)
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_users is not None and cfg.max_users < len(users):
        users = [users[i] for i in np.sort(rng.choice(len(users), cfg.max_users, replace=False))]
    if not users:
        raise ValueError(f"data={cfg.data!r}: no user has more than min_history={cfg.min_history} items")
    validation_users = {u for u, v in zip(users, rng.random(len(users)) < cfg.validation_fraction) if v}
    model = RetrievalModel(index_dir, data_dir / CATALOG_FILE, embed_fresh_items=False, data_dir=data_dir)
    log(JOB, f"{len(users)} users' next items, {cfg.targets_per_user} per user; index {index_dir.name} (model "
             f"{index_manifest.get('model_version')}, {'sequence' if model.user_tower is not None else 'text'} "
             f"user tower), {cfg.retrieval_k} candidates")
    queries, parts, ids, targets = [], [], [], []
    for shift in range(1, cfg.targets_per_user + 1):
        # Validation users keep only their last item: the report is about the target /v1/recommend meets.
        who = set(users) if shift == 1 else set(users) - validation_users
        kept, features, shift_ids, shift_targets = shift_rows(model, sequences, who, cfg, shift)
        queries += kept if shift == 1 else [f"{u}\t{shift}" for u in kept]
        parts.append(features)
        ids += shift_ids
        targets += shift_targets
    found = sum(t in c for t, c in zip(targets, ids))
    log(JOB, f"{found} of {len(queries)} targets among the candidates ({time.perf_counter() - started:.0f}s)")
    gains = pd.DataFrame({"query": queries, "item_id": targets, "gain": 1.0})
    valid = np.array([q in validation_users for q in queries])
    fitted, report = fit_and_report(np.concatenate(parts), ids, queries, valid, gains, RECOMMEND_FEATURES, cfg, JOB)
    report["targets_retrieved"] = round(found / len(queries), 4)

    version, out = new_version_dir("rankers")
    fitted.save(out)
    write_manifest(out, {
        "kind": "ranker", "type": RECOMMEND_RANKER_TYPE, "version": version, "features": list(RECOMMEND_FEATURES),
        "index_version": index_dir.name, "model_version": index_manifest.get("model_version"),
        "data_version": data_manifest["version"], "sources": cfg.sources.model_dump(),
        "retrieval_k": cfg.retrieval_k, "config": cfg.model_dump(), "validation": report,
        "wall_seconds": round(time.perf_counter() - started, 1)})
    mark_latest("rankers", version)
    log(JOB, f"recommendation ranker {version} -> {out}")
    return {"version": version, "path": str(out), "validation": report}
