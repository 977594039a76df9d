"""int8 CPU inference for text encoders: torch dynamic quantisation of their Linear layers.

Why dynamic quantisation rather than ONNX Runtime (or a static/QAT recipe): it needs no extra
dependency and no export step, and it works on any Hugging Face encoder the project loads
(BERT, RoBERTa, XLM-R, a fine-tuned tower, ...) straight after `from_pretrained`. Weights are
stored as int8 once; activations are quantised per batch, on the fly, from that batch's own
range, so there is no calibration set to keep in step with the model.

It is a CPU kernel (fbgemm / x86), hence `check_quantize` refuses any other device.

Recipe (TextEmbedder(quantize="int8"); measured on all-MiniLM-L6-v2 with bench/bench_int8.py,
numbers in docs/int8.md). Plain `quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)` is 1.7x
faster at batch 1 but its vectors drift to cosine ~0.94 from fp32 and Home Depot NDCG@10 drops
0.015-0.027. Two changes keep the quality at ~1.5x:
  * per-output-channel weight scales (`per_channel_dynamic_qconfig`) instead of one per matrix;
  * the feed-forward down-projections keep fp16 weights (fbgemm's fp16 dynamic kernel: fp32
    compute, half the weight bytes of fp32) instead of int8. Their input is the GELU output:
    its heavy tail sets the single per-tensor activation scale, which fbgemm narrows to 7 bits
    (reduce_range, against int16 overflow on pre-VNNI CPUs), so most activations round to a few
    levels; this layer alone is most of plain int8's error. They are found
    architecture-agnostically as the Linears whose in_features exceed their out_features
    (intermediate_size -> hidden_size). fp32 there is as accurate and slower.

torch 2.13 still ships `torch.ao.quantization.quantize_dynamic` and its fbgemm kernels, but marks
the eager `torch.ao.quantization` API deprecated ("will be removed in 2.10", still present in 2.13)
in favour of torchao's `quantize_`. torchao is not a dependency of this project, so this module
uses the torch API and silences only those deprecation warnings; when a torch release drops it,
`quantize_int8` is the one place to port (and to re-measure with bench/bench_int8.py).
"""

from __future__ import annotations

import warnings
from typing import Literal, TypeVar

import torch
from torch import nn

Quantize = Literal["none", "int8"]
QUANTIZE_MODES: tuple[str, ...] = ("none", "int8")
FfnDown = Literal["int8", "fp16", "fp32"]
FFN_DOWN_MODES: tuple[str, ...] = ("int8", "fp16", "fp32")
M = TypeVar("M", bound=nn.Module)


def check_quantize(quantize: str, device: str | torch.device) -> None:
    """Raise ValueError (naming the field and value) unless `quantize` is a known mode that can run on
    `device`: int8 is a CPU kernel."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    if quantize != "none" and torch.device(device).type != "cpu":
        raise ValueError(f"quantize={quantize!r} needs device='cpu' (torch dynamic quantisation is a CPU kernel), "
                         f"got device={str(device)!r}: use quantize='none' on a GPU")


def is_ffn_down_projection(module: nn.Module) -> bool:
    """A Linear that narrows its input (e.g. BERT's `output.dense`, 1536 -> 384): the FFN down-projection."""
    return isinstance(module, nn.Linear) and module.in_features > module.out_features


def quantize_int8(module: M, per_channel: bool = True, ffn_down: FfnDown = "fp16") -> M:
    """Dynamic int8 copy of `module` (eval mode, CPU): its Linears become DynamicQuantizedLinear.

    ffn_down: what the FFN down-projections (see is_ffn_down_projection) become: "int8" like every
    other Linear, "fp16" (fp16-stored weights, fp32 compute: exact enough, half fp32's weight bytes)
    or "fp32" (left alone). The defaults are the recipe TextEmbedder(quantize="int8") uses;
    per_channel=False, ffn_down="int8" is plain `quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)`
    (kept for bench/bench_int8.py's comparison). Returns a copy of the same class (only Linears inside
    are swapped); the input module is only switched to eval mode.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float16_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    if ffn_down not in FFN_DOWN_MODES:
        raise ValueError(f"ffn_down={ffn_down!r}: expected one of {', '.join(FFN_DOWN_MODES)}")
    int8 = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    down = {"int8": int8, "fp16": float16_dynamic_qconfig, "fp32": None}[ffn_down]
    spec = {}
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            qconfig = down if is_ffn_down_projection(child) else int8
            if qconfig is not None:
                spec[name] = qconfig
    with warnings.catch_warnings():
        # The eager torch.ao.quantization API and quantised-tensor constructors are deprecated in favour of
        # torchao (see the module docstring); the kernels work in this torch and are what we measured.
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        return quantize_dynamic(module.eval(), spec, inplace=False)
