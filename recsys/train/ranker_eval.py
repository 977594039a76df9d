"""Ranker validation (pure numpy/faiss; no Ray): AUC on the validation positive vs sampled
negatives, and NDCG@k / Recall@k of the retriever's top-K list before and after re-ranking.

The embedding and scoring functions come from the caller, so the same code runs on the driver
with Ray Data actors behind them (ranker_trainer) or in-process in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recsys.eval.metrics import format_markdown_table, ndcg_at_k, recall_at_k
from recsys.index.faiss_index import ItemIndex
from recsys.train.ranker_data import RankingInputs, ValidationUsers, validation_auc_examples

ScoreFn = Callable[[list[str], list[str]], np.ndarray]   # (contexts [N], item texts [N]) -> logits [N]
EmbedFn = Callable[[list[str]], np.ndarray]              # texts [N] -> unit vectors [N, D]


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


def retrieve_candidates(index: ItemIndex, query_vectors: np.ndarray, histories: Sequence[Sequence[str]],
                        n: int) -> list[list[str]]:
    """Top-n item ids per query, the user's history items excluded (as the Retrieve stage would)."""
    extra = max((len(set(h)) for h in histories), default=0)
    _, ids = index.search(query_vectors, n + extra)
    return [[i for i in row if i not in set(history)][:n] for row, history in zip(ids, histories)]


def validate_ranker(inputs: RankingInputs, users: ValidationUsers, score_fn: ScoreFn, index: ItemIndex | None,
                    embed_fn: EmbedFn | None, negatives_per_positive: int, n_candidates: int, k: int,
                    seed: int) -> dict[str, Any]:
    """-> {"auc": {...}, "rerank": {"retriever": {...}, "reranked": {...}} or None, "table": markdown}."""
    if not users.user_ids:
        raise ValueError(f"data version {inputs.data_version} has no users with a validation target in the catalog")
    auc_rows = validation_auc_examples(inputs, users, negatives_per_positive, seed)
    scores = score_fn(auc_rows["context_text"].tolist(), [inputs.texts[i] for i in auc_rows["item_id"]])
    popularity = [inputs.popularity.get(i, 0) for i in auc_rows["item_id"]]
    auc = {"auc": roc_auc(auc_rows["label"], scores), "auc_popularity": roc_auc(auc_rows["label"], popularity),
           "positives": int(auc_rows["label"].sum()), "negatives": int((auc_rows["label"] == 0).sum())}
    result: dict[str, Any] = {"auc": auc, "rerank": None}
    if index is not None and embed_fn is not None:
        candidates = retrieve_candidates(index, embed_fn(users.contexts), users.histories, n_candidates)
        flat_contexts = [c for c, items in zip(users.contexts, candidates) for _ in items]
        flat_scores = score_fn(flat_contexts, [inputs.texts[i] for items in candidates for i in items])
        splits = np.cumsum([len(items) for items in candidates])[:-1]
        reranked = rerank_lists(candidates, np.split(flat_scores, splits))
        result["rerank"] = {
            "retriever": list_metrics(target_positions(candidates, users.targets, n_candidates), k, n_candidates),
            "reranked": list_metrics(target_positions(reranked, users.targets, n_candidates), k, n_candidates)}
    result["table"] = format_validation_table(result, k, n_candidates)
    return result


def format_validation_table(result: dict[str, Any], k: int, n_candidates: int) -> str:
    auc = result["auc"]
    lines = [f"AUC (validation positive vs {auc['negatives']} sampled negatives over {auc['positives']} users): "
             f"ranker {auc['auc']:.4f}, popularity {auc['auc_popularity']:.4f}"]
    if result["rerank"] is None:
        lines.append("re-ranking metrics skipped: no retriever index (retriever_index: null)")
    else:
        rows = {f"retriever top-{n_candidates}": result["rerank"]["retriever"],
                "re-ranked by ranker": result["rerank"]["reranked"]}
        lines.append(format_markdown_table(rows, [f"ndcg@{k}", f"recall@{k}", f"recall@{n_candidates}", "users"]))
    return "\n".join(lines)
