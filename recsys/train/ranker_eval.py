"""Ranker validation (pure pandas/numpy/faiss; no Ray): AUC on the validation positive vs sampled
negatives, and NDCG@k / Recall@k of the retriever's top-K list before and after re-ranking.

The driver builds the pairs (build_validation_pairs), the Train workers score them with the model
they just trained (ranker_loop), and the driver turns the scores into metrics (validation_metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from recsys.eval.metrics import format_markdown_table, ndcg_at_k, recall_at_k
from recsys.models.ranker import blend_cross_encoder, top_positions
from recsys.train.ranker_data import RankingInputs, ValidationUsers, validation_auc_examples

VALIDATION_COLUMNS = ["kind", "user", "item_id", "label", "retriever_rank", "retriever_score", "context_text",
                      "item_text"]


def roc_auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (sklearn): P(score of a random positive > a random negative), ties 1/2."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) != 2:
        raise ValueError(f"AUC needs both labels 0 and 1, got {sorted(np.unique(labels).tolist())}")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def target_positions(candidate_lists: Sequence[Sequence[str]], targets: Sequence[str],
                     n_candidates: int) -> np.ndarray:
    """0-based position of each target in its list; `n_candidates` when absent (a miss at every
    cut-off up to the list length, before and after re-ranking alike)."""
    if len(candidate_lists) != len(targets):
        raise ValueError(f"{len(candidate_lists)} candidate lists but {len(targets)} targets")
    return np.array([list(items).index(t) if t in items else n_candidates
                     for items, t in zip(candidate_lists, targets)], dtype=np.int64)


def rerank_lists(candidate_lists: Sequence[Sequence[str]], score_lists: Sequence[np.ndarray]) -> list[list[str]]:
    """Each list sorted by descending ranker score; ties keep the retriever's order (stable sort)."""
    out = []
    for items, scores in zip(candidate_lists, score_lists):
        if len(items) != len(scores):
            raise ValueError(f"{len(items)} candidates but {len(scores)} scores")
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        out.append([items[i] for i in order])
    return out


def list_metrics(positions: np.ndarray, k: int, n_candidates: int) -> dict[str, float]:
    """NDCG@k, Recall@k and Recall@n_candidates (the re-ranking ceiling) from target positions."""
    return {f"ndcg@{k}": ndcg_at_k(positions, k), f"recall@{k}": recall_at_k(positions, k),
            f"recall@{n_candidates}": recall_at_k(positions, n_candidates), "users": int(len(positions))}


def build_validation_pairs(inputs: RankingInputs, users: ValidationUsers, negatives_per_positive: int,
                           candidates: Sequence[Sequence[tuple[str, float]]] | None, seed: int) -> pd.DataFrame:
    """The (context, item) pairs validation scores, one frame (VALIDATION_COLUMNS):

    kind "auc": each user's validation positive + sampled negatives (label 1 / 0);
    kind "rerank": each user's retrieved (item, score) candidates in retriever order (label 1 on the target).
    """
    user_index = {u: i for i, u in enumerate(users.user_ids)}
    auc = validation_auc_examples(inputs, users, negatives_per_positive, seed)
    frames = [pd.DataFrame({"kind": "auc", "user": auc["user_id"].map(user_index).astype(np.int64),
                            "item_id": auc["item_id"], "label": auc["label"].astype(np.int8),
                            "retriever_rank": np.int64(-1), "retriever_score": np.nan,
                            "context_text": auc["context_text"]})]
    if candidates is not None:
        rows = [(u, item, int(item == users.targets[u]), r, score, users.contexts[u])
                for u, items in enumerate(candidates) for r, (item, score) in enumerate(items)]
        frames.append(pd.DataFrame(rows, columns=["user", "item_id", "label", "retriever_rank", "retriever_score",
                                                  "context_text"])
                      .assign(kind="rerank").astype({"label": np.int8, "user": np.int64, "retriever_rank": np.int64}))
    pairs = pd.concat(frames, ignore_index=True)
    pairs["item_text"] = pairs["item_id"].map(inputs.texts)
    return pairs[VALIDATION_COLUMNS]


def validation_metrics(scored: pd.DataFrame, popularity: dict[str, int], n_users: int, n_candidates: int,
                       k: int, with_rerank: bool, depth: int = 20,
                       weights: Sequence[float] = ()) -> dict[str, Any]:
    """Scored validation pairs (VALIDATION_COLUMNS + score) -> {"auc": {...}, "rerank": {...} | None}.

    "rerank" holds the retriever's order, the ranker's own order of all n_candidates, and for each of
    `weights` the order the Rank stage serves: the top `depth` by retriever score re-scored by
    recsys.models.ranker.blend_cross_encoder at that weight. A user whose target was not retrieved (or
    who got no candidates) is a miss before and after.
    """
    auc_rows = scored[scored["kind"] == "auc"]
    labels = auc_rows["label"].to_numpy()
    auc = {"auc": roc_auc(labels, auc_rows["score"]),
           "auc_popularity": roc_auc(labels, [popularity.get(i, 0) for i in auc_rows["item_id"]]),
           "positives": int(labels.sum()), "negatives": int((labels == 0).sum())}
    if not with_rerank:
        return {"auc": auc, "rerank": None}
    rerank = scored[scored["kind"] == "rerank"].sort_values(["user", "retriever_rank"], kind="stable")
    lists: list[list[str]] = [[] for _ in range(n_users)]
    scores: list[list[float]] = [[] for _ in range(n_users)]
    first_pass: list[list[float]] = [[] for _ in range(n_users)]
    targets = ["" for _ in range(n_users)]
    for user, item, label, score, retrieval in zip(rerank["user"], rerank["item_id"], rerank["label"],
                                                   rerank["score"], rerank["retriever_score"]):
        lists[user].append(item)
        scores[user].append(score)
        first_pass[user].append(retrieval)
        if label:
            targets[user] = item

    def metrics_of(score_lists: list[np.ndarray]) -> dict[str, float]:
        return list_metrics(target_positions(rerank_lists(lists, score_lists), targets, n_candidates), k,
                            n_candidates)

    before = list_metrics(target_positions(lists, targets, n_candidates), k, n_candidates)
    after = metrics_of([np.asarray(s) for s in scores])
    blends = {}
    for w in weights:
        blended = []
        for retrieval, logits in zip(first_pass, scores):
            top = top_positions(np.asarray(retrieval), depth)
            blended.append(blend_cross_encoder(np.asarray(retrieval), top, np.asarray(logits)[top], w))
        blends[f"{w:g}"] = metrics_of(blended)
    # The number the Rank stage swap hinges on: does re-ranking beat the retriever's own order?
    best = max([after, *blends.values()], key=lambda m: m[f"ndcg@{k}"])
    return {"auc": auc, "rerank": {"retriever": before, "reranked": after, "served_blend": blends,
                                   "served_depth": depth, f"ndcg@{k}_gain": after[f"ndcg@{k}"] - before[f"ndcg@{k}"],
                                   f"best_ndcg@{k}_gain": best[f"ndcg@{k}"] - before[f"ndcg@{k}"]}}


def format_validation_table(result: dict[str, Any], k: int, n_candidates: int) -> str:
    auc = result["auc"]
    lines = [f"AUC (validation positive vs {auc['negatives']} sampled negatives over {auc['positives']} users): "
             f"ranker {auc['auc']:.4f}, popularity {auc['auc_popularity']:.4f}"]
    if result["rerank"] is None:
        lines.append("re-ranking metrics skipped: no retriever index (retriever_index: null)")
    else:
        rerank = result["rerank"]
        rows = {f"retriever top-{n_candidates}": rerank["retriever"], "re-ranked by ranker": rerank["reranked"]}
        depth = rerank.get("served_depth")
        for w, metrics in rerank.get("served_blend", {}).items():
            rows[f"served: top-{depth} blended, cross_encoder_weight {w}"] = metrics
        lines.append(format_markdown_table(rows, [f"ndcg@{k}", f"recall@{k}", f"recall@{n_candidates}", "users"]))
        gain, best = rerank[f"ndcg@{k}_gain"], rerank.get(f"best_ndcg@{k}_gain", rerank[f"ndcg@{k}_gain"])
        lines.append(f"re-ranking changes NDCG@{k} by {gain:+.4f} alone, {best:+.4f} at its best blend" + (
            "" if best > 0 else ": this ranker does not beat the retriever's order; do not serve it"))
    return "\n".join(lines)
