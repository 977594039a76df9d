"""Optional LoRA adapters on the shared encoder (peft), merged back before export."""

from __future__ import annotations

from torch import nn


def apply_lora(backbone: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> nn.Module:
    """Wrap a HF backbone so only low-rank adapters train; the base weights stay frozen."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=r, lora_alpha=alpha,
                        lora_dropout=dropout, target_modules=list(target_modules))
    try:
        return get_peft_model(backbone, config)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in backbone.named_modules() if n})[:40]
        raise ValueError(f"lora.target_modules={target_modules} match nothing in this model; "
                         f"module names include {names}: {exc}") from None


def merge_lora(backbone: nn.Module) -> nn.Module:
    """A peft-wrapped backbone -> plain HF model with adapters folded in (no peft needed to load)."""
    merge = getattr(backbone, "merge_and_unload", None)
    return merge() if callable(merge) else backbone
