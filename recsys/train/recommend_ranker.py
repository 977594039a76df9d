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


def next_item_targets(histories: dict[str, list[str]],
                      min_history: int) -> tuple[list[str], list[list[str]], list[str]]:
    """{user: items oldest first} -> (users, histories without the last item, last items), for users with
    at least min_history items before their last."""
    users = sorted(u for u, items in histories.items() if len(items) > min_history)
    return users, [histories[u][:-1] for u in users], [histories[u][-1] for u in users]


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


def run_recommend_ranker_training(cfg: RecommendRankerConfig) -> dict:
    started = time.perf_counter()
    data_dir, index_dir = resolve_artifact("data", cfg.data), resolve_artifact("indexes", cfg.index)
    data_manifest, index_manifest = read_manifest(data_dir), read_manifest(index_dir)
    users, histories, targets = next_item_targets(load_user_histories(data_dir / SEQUENCES_DIR), cfg.min_history)
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_users is not None and cfg.max_users < len(users):
        keep = np.sort(rng.choice(len(users), cfg.max_users, replace=False))
        users, targets = [users[i] for i in keep], [targets[i] for i in keep]
        histories = [histories[i] for i in keep]
    if not users:
        raise ValueError(f"data={cfg.data!r}: no user has more than min_history={cfg.min_history} items")
    model = RetrievalModel(index_dir, data_dir / CATALOG_FILE, embed_fresh_items=False, data_dir=data_dir)
    # Without the targets (module docstring):
    model.cooccurrence, model.ease = cooccurrence_source(histories), ease_source(histories)
    model.recent = RecentPopularity(histories)
    counts = Counter(i for h in histories for i in h)
    log(JOB, f"{len(users)} users' next items; index {index_dir.name} (model {index_manifest.get('model_version')}, "
             f"{'sequence' if model.user_tower is not None else 'text'} user tower), {cfg.retrieval_k} candidates")
    features, ids = candidate_rows(model, histories, cfg, counts)
    found = sum(t in c for t, c in zip(targets, ids))
    log(JOB, f"{found} of {len(users)} targets among the candidates ({time.perf_counter() - started:.0f}s)")
    gains = pd.DataFrame({"query": users, "item_id": targets, "gain": 1.0})
    valid = rng.random(len(users)) < cfg.validation_fraction
    fitted, report = fit_and_report(features, ids, users, valid, gains, RECOMMEND_FEATURES, cfg, JOB)
    report["targets_retrieved"] = round(found / len(users), 4)

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
