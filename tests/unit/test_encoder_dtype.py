"""TextEmbedder in bf16 / fp16 (what it runs on a GPU by default): the real MiniLM's vectors agree with fp32.
The CPU runs bf16 here, so the check needs no GPU; the tolerance is the one resolve_inference_dtype promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.encoder import TextEmbedder, resolve_inference_dtype

TEXTS = [f"{colour} {thing} for the {room}, {n} pack"
         for colour in ("red", "black", "white") for thing in ("kettle", "lamp", "towel", "mug")
         for room, n in (("kitchen", 2), ("office", 6))]
MIN_COSINE = 0.99   # every bf16 vector against its fp32 twin


@pytest.fixture(scope="module")
def fp32_vectors() -> np.ndarray:
    return TextEmbedder("default", max_length=32, device="cpu", dtype="float32").embed(TEXTS)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_vectors_match_fp32(fp32_vectors: np.ndarray, dtype: str) -> None:
    embedder = TextEmbedder("default", max_length=32, device="cpu", dtype=dtype)
    assert next(embedder.encoder.parameters()).dtype == getattr(torch, dtype)
    half = embedder.embed(TEXTS)
    assert half.dtype == np.float32
    cosines = (half * fp32_vectors).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, cosines.min()
    # the nearest other text of each text is the same in both precisions for nearly every text
    def nearest(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -1)
        return sims.argmax(axis=1)
    assert (nearest(half) == nearest(fp32_vectors)).mean() >= 0.9


def test_auto_is_fp32_on_cpu_and_int8_needs_fp32() -> None:
    assert resolve_inference_dtype("auto", "cpu") == torch.float32
    assert resolve_inference_dtype("auto", "cpu", quantize="int8") == torch.float32
    with pytest.raises(ValueError, match="int8 runs on float32"):
        resolve_inference_dtype("bfloat16", "cpu", quantize="int8")
    with pytest.raises(ValueError, match="want one of"):
        resolve_inference_dtype("fp8", "cpu")  # type: ignore[arg-type]
