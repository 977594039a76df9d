"""Ranker training and validation rows from a data version (pure pandas/pyarrow; no Ray).

A ranking example is (user, position, item, label, weight): its context is the user's
items[:position], formatted as the same newest-first history text the query tower sees.
Hard negatives come from a retriever's top-k for that context (the caller supplies the lists),
and are never one of the user's own items, held-out targets included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recsys.artifacts import read_manifest
from recsys.data.examples import negative_distribution, ranking_examples
from recsys.data.text import catalog_texts, history_text_for_items

SEQUENCE_FIELDS = ["user_id", "items", "n_train", "valid_index"]
TRAIN_COLUMNS = ["context_text", "item_text", "label", "weight", "source", "retriever_score", "offset"]


@dataclass
class RankingInputs:
    """What ranker training and validation read from one data version."""

    data_version: str
    item_ids: list[str]                  # catalog order
    titles: dict[str, str]               # item_id -> title (history text)
    texts: dict[str, str]                # item_id -> item text (title. brand. category)
    sequences: pa.Table                  # SEQUENCE_FIELDS, one row per user
    user_items: dict[str, list[str]]     # user_id -> whole sequence (held-out targets included)
    max_history_items: int
    popularity: dict[str, int]           # item_id -> training interactions (popularity.parquet)
    negative_ids: np.ndarray             # the data version's negative sampler: item ids ...
    negative_probs: np.ndarray           # ... and their probabilities

    def context_text(self, user_id: str, position: int) -> str:
        """History text of items[:position]: newest first, items missing from the catalog skipped."""
        return history_text_for_items(self.user_items[user_id][:position], self.titles, self.max_history_items)


def load_ranking_inputs(data_dir: Path) -> RankingInputs:
    manifest = read_manifest(data_dir)
    config = manifest.get("config", {})
    ids, titles, texts = catalog_texts(pq.read_table(data_dir / "catalog.parquet").to_pandas())
    sequences = pads.dataset(data_dir / "sequences", format="parquet").to_table(columns=SEQUENCE_FIELDS)
    users = sequences.column("user_id").to_pylist()
    counts: dict[str, int] = {}
    if (data_dir / "popularity.parquet").is_file():
        pop = pq.read_table(data_dir / "popularity.parquet").to_pydict()
        counts = dict(zip(pop["item_id"], pop["count"]))
    ranking = config.get("ranking", {})
    neg_ids, neg_probs = negative_distribution(np.array(ids, dtype=object), counts,
                                               ranking.get("negative_sampling", "popularity"),
                                               float(ranking.get("popularity_alpha", 0.75)))
    return RankingInputs(
        data_version=str(manifest["version"]), item_ids=ids, titles=dict(zip(ids, titles)),
        texts=dict(zip(ids, texts)), sequences=sequences,
        user_items=dict(zip(users, sequences.column("items").to_pylist())),
        max_history_items=int(config.get("retrieval_pairs", {}).get("max_history_items", 8)), popularity=counts,
        negative_ids=neg_ids, negative_probs=neg_probs)


def read_ranking_examples(data_dir: Path) -> pd.DataFrame:
    path = data_dir / "ranking_examples"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: preprocess with ranking.enabled=true to get ranker examples")
    return pads.dataset(path, format="parquet").to_table().to_pandas()


def select_example_groups(examples: pd.DataFrame, max_groups: int | None, seed: int) -> pd.DataFrame:
    """Keep every row of a seeded random `max_groups` of the (user, position) groups (all when None).

    A group is one positive and its sampled negatives; keeping whole groups keeps the class balance.
    """
    keys = examples[["user_id", "position"]].drop_duplicates()
    if max_groups is None or max_groups >= len(keys):
        return examples.reset_index(drop=True)
    chosen = keys.iloc[np.sort(np.random.default_rng(seed).choice(len(keys), max_groups, replace=False))]
    return examples.merge(chosen, on=["user_id", "position"], how="inner").reset_index(drop=True)


def build_training_frame(examples: pd.DataFrame, inputs: RankingInputs, hard: dict[tuple[str, int], list[str]],
                         hard_weight: float, seed: int,
                         retriever_scores: Callable[[pd.DataFrame], np.ndarray] | None = None,
                         ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Ranking examples + hard negatives -> shuffled TRAIN_COLUMNS rows, and counts per kind.

    Rows whose item has no catalog text cannot be scored; they are counted, not silently lost.
    `retriever_scores`: rows (user_id, position, item_id) -> the retriever's score of each; it fills
    `retriever_score` (0 without a retriever). `offset` starts at 0: the caller fits it (retriever_offset.py).
    """
    has_text = examples["item_id"].isin(inputs.texts.keys())
    kept = examples[has_text]
    rows = pd.DataFrame({
        "user_id": kept["user_id"], "position": kept["position"].astype(np.int64), "item_id": kept["item_id"],
        "label": kept["label"].astype(np.float32), "weight": kept["weight"].astype(np.float32),
        "source": np.where(kept["label"].to_numpy() > 0, "positive", "sampled_negative")})
    hard_rows = [(user, position, item) for (user, position), items in hard.items() for item in items]
    if hard_rows:
        extra = pd.DataFrame(hard_rows, columns=["user_id", "position", "item_id"])
        extra["label"], extra["weight"], extra["source"] = np.float32(0), np.float32(hard_weight), "hard_negative"
        rows = pd.concat([rows, extra], ignore_index=True)
    contexts = {key: inputs.context_text(*key) for key in set(zip(rows["user_id"], rows["position"]))}
    rows["context_text"] = [contexts[key] for key in zip(rows["user_id"], rows["position"])]
    rows["item_text"] = rows["item_id"].map(inputs.texts)
    rows["retriever_score"] = (np.zeros(len(rows), np.float32) if retriever_scores is None
                               else retriever_scores(rows).astype(np.float32))
    rows["offset"] = np.float32(0)
    counts = {kind: int(n) for kind, n in rows["source"].value_counts().items()}
    counts["dropped_no_item_text"] = int((~has_text).sum())
    order = np.random.default_rng(seed).permutation(len(rows))   # examples arrive sorted by user
    return rows.iloc[order][TRAIN_COLUMNS].reset_index(drop=True), counts


@dataclass
class ValidationUsers:
    user_ids: list[str]
    histories: list[list[str]]    # items[:valid_index], oldest first
    targets: list[str]            # the validation item (in the catalog)
    contexts: list[str]           # history text of each user


def select_validation_users(inputs: RankingInputs, max_users: int | None, seed: int) -> ValidationUsers:
    """Users with a validation target (valid_index >= 1) that is a catalog item; a seeded sample."""
    rows = [r for r in inputs.sequences.select(["user_id", "items", "valid_index"]).to_pylist()
            if r["valid_index"] >= 1 and r["items"][r["valid_index"]] in inputs.texts]
    if max_users is not None and len(rows) > max_users:
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), max_users, replace=False))]
    return ValidationUsers(
        user_ids=[r["user_id"] for r in rows], histories=[r["items"][:r["valid_index"]] for r in rows],
        targets=[r["items"][r["valid_index"]] for r in rows],
        contexts=[inputs.context_text(r["user_id"], r["valid_index"]) for r in rows])


def validation_auc_examples(inputs: RankingInputs, users: ValidationUsers, negatives_per_positive: int,
                            seed: int) -> pd.DataFrame:
    """Validation positive + sampled negatives per user (user_id, item_id, label, context_text).

    The negatives come from the data version's own sampler (recsys.data.examples.ranking_examples
    with n_train = valid_index + 1), so validation AUC measures the task the ranker trained on.
    """
    picked = set(users.user_ids)
    seqs = inputs.sequences.filter(pa.array([u in picked for u in inputs.sequences.column("user_id").to_pylist()]))
    table = pa.table({"user_id": seqs.column("user_id"), "items": seqs.column("items"),
                      "n_train": pc.add(seqs.column("valid_index"), 1)})
    frame = ranking_examples(table, inputs.negative_ids, inputs.negative_probs, max_positives_per_user=1,
                             negatives_per_positive=negatives_per_positive, imbalance="none", seed=seed).to_pandas()
    context_of = dict(zip(users.user_ids, users.contexts))
    frame["context_text"] = frame["user_id"].map(context_of)
    return frame[["user_id", "item_id", "label", "context_text"]]
