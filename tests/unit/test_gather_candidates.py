"""negatives_across_workers on a real 2-process gloo group: every rank sees all ranks' candidates in rank
order, and gradients flow only into its own block (the other blocks are the other ranks' to train)."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from recsys.train.loop import gather_candidates

        local = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_candidates(local, rank, 2)
        (gathered * torch.arange(4.0).unsqueeze(1)).sum().backward()
        results[rank] = (gathered.detach().tolist(), local.grad.tolist())
    finally:
        dist.destroy_process_group()


def test_gather_keeps_rank_order_and_only_the_local_gradient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(port, results), nprocs=2, join=True)
    for rank in (0, 1):
        gathered, grad = results[rank]
        assert gathered == [[1.0] * 3] * 2 + [[2.0] * 3] * 2
        # d/d local of sum(row_index * row): rows 0-1 belong to rank 0, rows 2-3 to rank 1.
        assert grad == ([[0.0] * 3, [1.0] * 3] if rank == 0 else [[2.0] * 3, [3.0] * 3])
