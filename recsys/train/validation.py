"""Validation during training: held-out (history -> next item) users and the early-stopping rule.

Pure (numpy + pyarrow, no torch, no Ray): the driver builds the validation set once from the data
version, the training workers rank the catalog for it with the current model (recsys/train/evaluator.py).
The pairs match jobs/evaluate.py --set split=valid: the history is items[:valid_index], its text is
history_text_for_items with the data version's max_history_items, the target is items[valid_index].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recsys.data.text import catalog_texts, history_text_for_items

SEQUENCE_COLUMNS = ["items", "valid_index"]


@dataclass(frozen=True)
class ValidationSet:
    """U validation users against the N-item catalog; item positions index `item_ids`."""

    item_ids: list[str]                 # [N]
    item_texts: list[str]               # [N] item-tower text
    query_texts: list[str]              # [U] history text (query-tower input)
    targets: np.ndarray                 # [U] int64 position of each user's held-out item
    histories: list[list[int]] = field(default_factory=list)   # [U] seen items, never ranked (as serving does)

    def __len__(self) -> int:
        return len(self.query_texts)


def validation_users(sequences: Sequence[Mapping[str, Any]], item_ids: Sequence[str],
                     item_titles: Sequence[str], max_history_items: int, max_users: int | None,
                     seed: int) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """Sequence rows {'items', 'valid_index'} -> (history texts, target positions, history positions).

    A user counts when valid_index >= 1 (at least one item before the target) and the target is in
    the catalog (ranking is over catalog items). max_users draws a seeded sample, kept in input order.
    """
    position = {item: i for i, item in enumerate(item_ids)}
    titles = dict(zip(item_ids, item_titles))
    held = [s for s in sequences if s["valid_index"] is not None and 1 <= s["valid_index"] < len(s["items"])
            and s["items"][s["valid_index"]] in position]
    if max_users is not None and len(held) > max_users:
        rng = np.random.default_rng(seed)
        held = [held[i] for i in sorted(rng.choice(len(held), max_users, replace=False))]
    histories = [list(s["items"][:s["valid_index"]]) for s in held]
    texts = [history_text_for_items(h, titles, max_history_items) for h in histories]
    targets = np.array([position[s["items"][s["valid_index"]]] for s in held], dtype=np.int64)
    seen = [[position[i] for i in h if i in position] for h in histories]
    return texts, targets, seen


def load_validation_set(data_dir: Path, manifest: Mapping[str, Any], max_users: int | None,
                        seed: int) -> tuple[ValidationSet | None, str]:
    """(validation set, '') or (None, why there is none) for a data version directory."""
    sequences_dir, catalog_path = Path(data_dir) / "sequences", Path(data_dir) / "catalog.parquet"
    if not sequences_dir.is_dir() or not catalog_path.is_file():
        return None, f"{data_dir} has no sequences/ or catalog.parquet"
    dataset = pads.dataset(sequences_dir, format="parquet")
    if "valid_index" not in dataset.schema.names:
        return None, f"sequences in {data_dir} have no valid_index column (made before the valid split existed)"
    item_ids, titles, item_texts = catalog_texts(pq.read_table(catalog_path).to_pandas())
    max_history = int(manifest.get("config", {}).get("retrieval_pairs", {}).get("max_history_items", 8))
    texts, targets, seen = validation_users(dataset.to_table(columns=SEQUENCE_COLUMNS).to_pylist(), item_ids,
                                            titles, max_history, max_users, seed)
    if not texts:
        return None, "no user has a validation item (valid_index >= 1) that is in the catalog"
    return ValidationSet(item_ids, item_texts, texts, targets, seen), ""


@dataclass
class EarlyStopping:
    """Higher is better. `update` after every evaluation; stop once `patience` evaluations in a row
    did not beat the best (patience 0 = never stop). Plain fields, so the state rides in a checkpoint."""

    patience: int = 0
    best: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0

    def update(self, score: float, step: int) -> bool:
        """Record one evaluation; True when it is a new best (a NaN never is)."""
        improved = math.isfinite(score) and (self.best is None or score > self.best)
        if improved:
            self.best, self.best_step, self.evals_without_improvement = float(score), step, 0
        else:
            self.evals_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_due(step: int, every: int | None) -> bool:
    """True on every `every`-th step (1-based); never when `every` is 0 or None."""
    return every is not None and every > 0 and step > 0 and step % every == 0
