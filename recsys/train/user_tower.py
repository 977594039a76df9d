"""Fit the sequence user tower on top of the trained item tower (pure torch; no Ray here).

Stage 2 of jobs/train.py: the encoder is trained and exported first, every catalog item is
embedded with it, and this tower learns to map a user's recent steps to the next item in
that space. Full softmax over the catalog (a [B, N] matrix): exact and cheap up to ~10^5
items; bigger catalogs would need sampled softmax with logQ correction.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from recsys.config import JobConfig
from recsys.eval.metrics import summarize_ranks, target_ranks
from recsys.models.sequence_tower import SequenceTowerSpec, SequenceUserTower
from recsys.train.user_tower_data import StepArrays

EVAL_CHUNK = 2048


class UserTowerSettings(JobConfig):
    kind: Literal["auto", "sequence", "text"] = Field(
        "auto", description="user tower the model serves: auto = train the sequence tower and keep whichever "
                            "of sequence/text wins on validation NDCG@10; text = skip the sequence tower")
    tower: SequenceTowerSpec = Field(default_factory=SequenceTowerSpec, description="sequence tower shape")
    reversed_windows: bool = Field(True, description="also train on every training sequence read backwards "
                                                     "(loosely ordered co-purchases; validated on Amazon)")
    epochs: int = Field(40, ge=1, description="most passes over the training windows")
    batch_size: int = Field(128, ge=1, description="windows per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (the per-item residuals overfit within a "
                                              "few epochs at 3e-3)")
    temperature: float = Field(0.05, gt=0, description="softmax temperature over the catalog")
    patience: int = Field(3, ge=1, description="stop after this many epochs without a better validation NDCG@10")
    threads: int = Field(2, ge=1, description="torch threads of the worker that fits the tower")


def rank_held_out(tower: SequenceUserTower, rows: StepArrays) -> np.ndarray:
    """0-based rank of each row's target among all catalog items, the row's own history excluded."""
    tower.eval()
    ranks = []
    with torch.no_grad():
        items = tower.item_vectors()
        for start in range(0, len(rows), EVAL_CHUNK):
            part = rows.rows(slice(start, start + EVAL_CHUNK))
            users = tower.user_vectors(*(torch.tensor(a) for a in (part.items, part.events, part.gaps)))
            scores = (users @ items.T).numpy()
            history = [row[row > 0] - 1 for row in part.items]
            ranks.append(target_ranks(scores, part.targets - 1, history))
    return np.concatenate(ranks)


def training_loss(tower: SequenceUserTower, batch: StepArrays, temperature: float) -> torch.Tensor:
    """Softmax over the whole catalog at every real position of every window."""
    users = tower(*(torch.tensor(a) for a in (batch.items, batch.events, batch.gaps)))
    targets = torch.tensor(batch.targets)
    real = targets > 0
    logits = users[real] @ tower.item_vectors().T / temperature
    return F.cross_entropy(logits, targets[real] - 1)


def fit_sequence_tower(settings: UserTowerSettings, text_vectors: np.ndarray, train: StepArrays,
                       valid: StepArrays, seed: int = 0,
                       log: Callable[[str], None] = print) -> tuple[SequenceUserTower, list[dict]]:
    """-> (the tower of the best validation epoch, one record per epoch)."""
    if len(train) == 0:
        raise ValueError("no training windows: every user has fewer than 2 training steps in the catalog")
    if len(valid) == 0:
        raise ValueError("no validation targets in the catalog: cannot choose the best epoch")
    torch.manual_seed(seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(seed)
    tower = SequenceUserTower(settings.tower, torch.tensor(np.asarray(text_vectors, dtype=np.float32)))
    optimizer = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.0)
    history: list[dict] = []
    best_state, best_ndcg, stale = copy.deepcopy(tower.state_dict()), -1.0, 0
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        tower.train()
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), settings.batch_size):
            loss = training_loss(tower, train.rows(order[start:start + settings.batch_size]), settings.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = summarize_ranks(rank_held_out(tower, valid), (10,))
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_recall@10": metrics["recall@10"],
                  "val_ndcg@10": metrics["ndcg@10"], "elapsed_s": round(time.perf_counter() - started, 1)}
        history.append(record)
        log(f"[user_tower] epoch {epoch}/{settings.epochs} loss {record['loss']:.4f} "
            f"val recall@10 {record['val_recall@10']:.4f} ndcg@10 {record['val_ndcg@10']:.4f} "
            f"({record['elapsed_s']:.0f}s)")
        if record["val_ndcg@10"] > best_ndcg:
            best_state, best_ndcg, stale = copy.deepcopy(tower.state_dict()), record["val_ndcg@10"], 0
        else:
            stale += 1
            if stale >= settings.patience:
                log(f"[user_tower] early stop: no better validation NDCG@10 for {stale} epochs "
                    f"(best {best_ndcg:.4f})")
                break
    tower.load_state_dict(best_state)
    return tower.eval(), history
