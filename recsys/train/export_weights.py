"""The weights a training run exports: DeepSpeed's fp32 master copy, at every ZeRO stage.

With bf16 the module DeepSpeed trains holds bf16 weights; the optimizer keeps the fp32 master weights
that the updates are applied to. Exporting the module's copy would save bf16 rounding of every weight
(and ZeRO-3's 16-bit gather, cast back to float, is the same bf16 copy). So the export reads each
trainable parameter's master copy (deepspeed.utils.safe_get_full_fp32_param, which gathers partitions
across ranks). Frozen parameters (LoRA's base weights) never changed: the plain model the export loads
them into already holds them in fp32, from the base model, so they are not gathered at all.
"""

from __future__ import annotations

from typing import Literal

import torch

from recsys.models.encoder import INFERENCE_DTYPES

ExportDtype = Literal["float32", "bfloat16"]


def full_fp32_state_dict(engine, rank: int) -> dict[str, torch.Tensor] | None:
    """Every trainable parameter of engine.module as fp32 on CPU, on rank 0 (None elsewhere). Collective:
    every rank must call it, in the same order (the gathers of ZeRO partitions are all-reduces)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:   # no ZeRO optimizer owns it (stage 0): the module's copy is the master
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                full = param.detach().clone()
        if rank == 0:
            state[name] = full.detach().float().cpu()
    return state if rank == 0 else None


def load_exported_weights(model: torch.nn.Module, state: dict[str, torch.Tensor],
                          dtype: ExportDtype = "float32") -> torch.nn.Module:
    """`state` (the trainable parameters) into a plain model of the same structure, freshly loaded (its
    frozen parameters and buffers keep their own values), cast to the export's `dtype`."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lost = [k for k in missing if k in trainable]
    if lost or unexpected:
        raise RuntimeError(f"exported weights do not fit the model: missing {lost[:5]}, unexpected {unexpected[:5]}")
    return model.to(INFERENCE_DTYPES[dtype])
