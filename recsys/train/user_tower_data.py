"""Sequences -> the integer tensors the sequence user tower trains and is evaluated on (pure numpy).

Items are vocabulary positions + 1 (0 = padding or an item not in the catalog), right-padded
to `max_length`, with per-step event ids and time-gap buckets from recsys.models.sequence_tower.
Training reads only the training part of each sequence (`n_train`), so the valid and test
targets the evaluation ranks are never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from recsys.models.sequence_tower import event_ids, gap_buckets

COLUMNS = ["user_id", "items", "event_types", "timestamps", "n_train", "valid_index", "test_index"]


@dataclass
class StepArrays:
    """Right-padded [R, L] int64 inputs; `targets` is [R, L] (training) or [R] (one held-out item)."""

    items: np.ndarray
    events: np.ndarray
    gaps: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, index) -> StepArrays:
        return StepArrays(self.items[index], self.events[index], self.gaps[index], self.targets[index])


def read_sequences(data_dir: Path) -> list[dict]:
    return pads.dataset(Path(data_dir) / "sequences", format="parquet").to_table(columns=COLUMNS).to_pylist()


def encode_steps(seq: dict, stop: int, position: dict[str, int]) -> tuple[list[int], list[int], list[int]]:
    """Steps [0, stop) of one sequence -> (item positions + 1, event ids, gap buckets).

    Items missing from the catalog are dropped (the tower cannot score them), after the gaps
    are taken, so a dropped step still shows as time passing before the next one."""
    stamps = np.asarray(seq["timestamps"][:stop], dtype=np.int64)
    gaps = np.full(len(stamps), -1, dtype=np.int64)
    gaps[1:] = np.diff(stamps)
    known = [k for k, item in enumerate(seq["items"][:stop]) if item in position]
    events = event_ids([seq["event_types"][k] for k in known]).tolist()
    return [position[seq["items"][k]] + 1 for k in known], events, gap_buckets(gaps[known]).tolist()


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def training_windows(sequences: list[dict], position: dict[str, int], max_length: int,
                     reversed_too: bool = False) -> StepArrays:
    """Non-overlapping windows of the training part, the last one ending at the newest training step.

    Input = steps [s, e-1), target = steps [s+1, e): every position predicts the next item;
    padded positions have target 0, which the loss skips. reversed_too adds the same windows of
    every training part read backwards: review/purchase logs order co-bought items loosely, and
    the extra direction doubles the transitions each item is seen in.
    """
    items, events, gaps, targets = [], [], [], []
    encoded = [encode_steps(seq, int(seq["n_train"]), position) for seq in sequences]
    if reversed_too:
        # Read backwards, step k follows step k+1: its gap is the one that came before k+1.
        encoded += [(s[0][::-1], s[1][::-1], s[2][:1] + s[2][1:][::-1]) for s in encoded]
    for steps in encoded:
        for end in range(len(steps[0]), 1, -max_length):
            start = max(0, end - max_length - 1)
            items.append(steps[0][start:end - 1])
            events.append(steps[1][start:end - 1])
            gaps.append(steps[2][start:end - 1])
            targets.append(steps[0][start + 1:end])
    return StepArrays(_pad(items, max_length), _pad(events, max_length), _pad(gaps, max_length),
                      _pad(targets, max_length))


def held_out_rows(sequences: list[dict], position: dict[str, int], max_length: int,
                  split: str, users: set[str] | None = None) -> StepArrays:
    """One row per user with a `split` ('valid' | 'test') target in the catalog (only `users` when
    given): its last `max_length` steps before the target -> the target's position + 1."""
    column = f"{split}_index"
    items, events, gaps, targets = [], [], [], []
    for seq in sequences:
        k = int(seq[column])
        if k < 1 or seq["items"][k] not in position or (users is not None and seq["user_id"] not in users):
            continue
        steps = encode_steps(seq, k, position)
        items.append(steps[0][-max_length:])
        events.append(steps[1][-max_length:])
        gaps.append(steps[2][-max_length:])
        targets.append(position[seq["items"][k]] + 1)
    return StepArrays(_pad(items, max_length), _pad(events, max_length), _pad(gaps, max_length),
                      np.asarray(targets, dtype=np.int64))


def held_out_histories(sequences: list[dict], position: dict[str, int], split: str) -> list[list[str]]:
    """Item ids before each `split` target, in the same rows and order as held_out_rows: what the
    text user tower reads for the same users."""
    column = f"{split}_index"
    return [[i for i in seq["items"][:int(seq[column])] if i in position] for seq in sequences
            if int(seq[column]) >= 1 and seq["items"][int(seq[column])] in position]
