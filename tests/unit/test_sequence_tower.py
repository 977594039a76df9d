"""Sequence user tower: causal masking, data windows without leakage, save/load, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.sequence_tower import (
    SequenceTowerSpec,
    SequenceUserTower,
    gap_buckets,
    load_user_tower,
    save_user_tower,
)
from recsys.train.user_tower import UserTowerSettings, fit_sequence_tower, rank_held_out
from recsys.train.user_tower_data import held_out_histories, held_out_rows, training_windows

DAY_US = 86_400 * 1_000_000


def seq(items, n_train, valid_index=-1, test_index=-1, event="purchase"):
    return {"items": list(items), "event_types": [event] * len(items),
            "timestamps": [k * DAY_US for k in range(len(items))], "n_train": n_train,
            "valid_index": valid_index, "test_index": test_index}


def tower(n_items=6, width=8, **spec) -> SequenceUserTower:
    torch.manual_seed(0)
    return SequenceUserTower(SequenceTowerSpec(max_length=5, dim=16, heads=2, dropout=0.0, **spec),
                             torch.randn(n_items, width))


@pytest.mark.parametrize("layers", [0, 2])
def test_output_at_a_step_never_sees_later_steps(layers):
    t = tower(layers=layers).eval()
    a = torch.tensor([[1, 2, 3, 4, 0]])
    b = torch.tensor([[1, 2, 5, 6, 0]])
    events, gaps = torch.full_like(a, 4), torch.ones_like(a)
    out_a, out_b = t(a, events, gaps), t(b, events, gaps)
    assert torch.allclose(out_a[:, :2], out_b[:, :2], atol=1e-6)      # steps 0-1 identical in both
    assert not torch.allclose(out_a[:, 2], out_b[:, 2])
    users = t.user_vectors(a, events, gaps)
    assert torch.allclose(users, out_a[:, 3])


def test_untrained_tower_pools_the_last_items_text_vectors():
    """Before training (zero residuals, equal recency weights, Transformer output at zero) a step's
    user vector is the mean of the unit text vectors of it and the pool_last - 1 steps before it."""
    t = tower(pool_last=3, layers=2).eval()
    items = torch.tensor([[2, 5, 1, 4, 0]])
    out = t(items, torch.full_like(items, 4), torch.ones_like(items))
    unit = t.text_vectors
    assert torch.allclose(out[0, 0], unit[2] / 3, atol=1e-6)                       # only one step so far
    assert torch.allclose(out[0, 3], (unit[5] + unit[1] + unit[4]) / 3, atol=1e-6)  # steps 1-3, not step 0


def test_tower_needs_a_path():
    with pytest.raises(ValueError, match="needs layers >= 1 or pool_last >= 1"):
        SequenceTowerSpec(layers=0, pool_last=0)


def test_item_vectors_start_as_the_text_vectors():
    t = tower()
    assert torch.allclose(t.item_vectors(), torch.nn.functional.normalize(t.text_vectors[1:], dim=-1))
    assert t.item_residual.requires_grad and not tower(item_residuals=False).item_residual.requires_grad


def test_dim_must_divide_heads():
    with pytest.raises(ValueError, match="user_tower.dim=10 must be divisible by user_tower.heads=3"):
        SequenceUserTower(SequenceTowerSpec(dim=10, heads=3, layers=2), torch.randn(4, 8))


def test_gap_buckets():
    assert gap_buckets(np.array([-1, 0, 30_000_000, 2 * DAY_US, 400 * DAY_US])).tolist() == [0, 1, 1, 5, 7]


def test_windows_read_only_the_training_part_and_skip_unknown_items():
    position = {f"i{k}": k for k in range(8)}
    sequences = [seq(["i0", "i1", "zz", "i2", "i3", "i4", "i5", "i6"], n_train=6, valid_index=6, test_index=7)]
    train = training_windows(sequences, position, max_length=3)
    # Training part i0 i1 zz i2 i3 i4 -> known 1 2 3 4 5 (positions + 1); windows of 3 inputs predict the
    # next step each and end at the newest training step.
    assert train.items.tolist() == [[2, 3, 4], [1, 0, 0]]
    assert train.targets.tolist() == [[3, 4, 5], [2, 0, 0]]
    assert 6 not in train.targets and 7 not in train.targets      # valid (i5) and test (i6) never trained on
    valid = held_out_rows(sequences, position, 3, "valid")
    assert valid.items.tolist() == [[3, 4, 5]] and valid.targets.tolist() == [6]
    test = held_out_rows(sequences, position, 3, "test")
    assert test.items.tolist() == [[4, 5, 6]] and test.targets.tolist() == [7]
    assert held_out_histories(sequences, position, "valid") == [["i0", "i1", "i2", "i3", "i4"]]


@pytest.mark.parametrize("layers", [0, 1])
def test_save_load_round_trip(tmp_path, layers):
    t = tower(layers=layers).eval()
    with torch.no_grad():
        t.item_residual.add_(0.1)
        t.context_residual.weight[1:].add_(torch.randn(6, 8))
        t.recency_logits.add_(torch.arange(5.0))
    save_user_tower(tmp_path / "ut", t, [f"i{k}" for k in range(6)], {"kind": "sequence"})
    loaded, ids, meta = load_user_tower(tmp_path / "ut")
    x = torch.tensor([[3, 1, 0, 0, 0]])
    assert ids[2] == "i2" and meta["kind"] == "sequence"
    assert torch.allclose(loaded.user_vectors(x, x * 0 + 4, x * 0 + 1), t.user_vectors(x, x * 0 + 4, x * 0 + 1))
    assert torch.allclose(loaded.item_vectors(), t.item_vectors())


def test_fit_learns_a_transition_text_cannot_explain():
    """Item k is always followed by item (k + 5) % 13 (no repeats within 13 steps); random text vectors
    carry no hint of that."""
    rng = np.random.default_rng(0)
    position = {f"i{k}": k for k in range(13)}
    sequences = []
    for _ in range(300):
        start = int(rng.integers(13))
        items = [f"i{(start + 5 * j) % 13}" for j in range(6)]
        sequences.append(seq(items, n_train=4, valid_index=4, test_index=5))
    # max_length 3: every window position the test rows use was trained on.
    settings = UserTowerSettings(tower=SequenceTowerSpec(max_length=3, dim=16, heads=2, dropout=0.0),
                                 epochs=20, batch_size=32, lr=1e-2, patience=20, threads=1)
    text = rng.normal(size=(13, 8)).astype(np.float32)
    train = training_windows(sequences, position, 3)
    valid = held_out_rows(sequences, position, 3, "valid")
    fitted, history = fit_sequence_tower(settings, text, train, valid, log=lambda _: None)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    test = held_out_rows(sequences, position, 3, "test")
    ranks = rank_held_out(fitted, test)
    assert (ranks == 0).mean() > 0.9, f"test ranks {np.bincount(ranks)[:5]}"


def test_reversed_windows_read_each_training_part_backwards():
    position = {f"i{k}": k for k in range(4)}
    sequences = [{**seq(["i0", "i1", "i2", "i3"], n_train=3), "timestamps": [0, 30 * 10**6, 2 * DAY_US, 3 * DAY_US]}]
    both = training_windows(sequences, position, max_length=3, reversed_too=True)
    assert both.items.tolist() == [[1, 2, 0], [3, 2, 0]] and both.targets.tolist() == [[2, 3, 0], [2, 1, 0]]
    # Forward gaps: unknown, <1 min, ~2 days; backwards i2 (first, unknown) then i1 (gap before i2).
    assert both.gaps.tolist() == [[0, 1, 0], [0, 5, 0]]


def test_serving_input_gives_the_towers_direction_at_unit_length(tmp_path):
    from recsys.models.sequence_tower import SequenceTowerInput

    t = tower().eval()
    with torch.no_grad():
        t.context_residual.weight[1:].add_(torch.randn(6, 8))
    save_user_tower(tmp_path / "ut", t, [f"i{k}" for k in range(6)], {"default_event": "purchase",
                                                                      "default_gap_bucket": 1})
    served = SequenceTowerInput(tmp_path / "ut").user_vector(["i2", "unknown", "i0"])
    steps = torch.tensor([[3, 1]])
    raw = t.user_vectors(steps, torch.full_like(steps, 4), torch.ones_like(steps))[0]
    assert np.isclose(np.linalg.norm(served), 1.0) and raw.norm() < 1.0
    assert np.allclose(served, (raw / raw.norm()).detach().numpy(), atol=1e-6)
    assert SequenceTowerInput(tmp_path / "ut").user_vector(["unknown"]) is None
