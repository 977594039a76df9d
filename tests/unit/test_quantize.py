"""int8 CPU path of TextEmbedder: vectors close to fp32, neighbour order kept, GPU refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from recsys.models.encoder import TextEmbedder
from recsys.models.quantize import check_quantize, is_ffn_down_projection, quantize_int8

TEXTS = [
    "cordless drill 20v", "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit",
    "angle bracket", "Simpson Strong-Tie 12-Gauge Angle",
    "white kitchen faucet", "Delta Leland Single-Handle Pull-Down Kitchen Faucet in White",
    "ceiling fan with light", "Hampton Bay 52 in. Indoor Ceiling Fan with Light Kit",
    "garden hose 50 ft", "Flexzilla 5/8 in. x 50 ft. Garden Hose",
    "toilet seat", "American Standard Round Closed Front Toilet Seat in White",
    "deck screws 3 inch", "GRK Fasteners #10 x 3 in. Deck Screws (500-Pack)",
    "outdoor led lights", "Philips 60W Equivalent Soft White A19 LED Light Bulb",
    "paint roller", "Wooster 9 in. x 3/8 in. Pro Roller Cover",
    "wood stain", "BEHR Premium Semi-Transparent Waterproofing Wood Stain",
]
QUERIES = [0, 4, 8, 12, 16]          # rank all 20 texts for these
# Measured on these texts (torch 2.13 CPU, x86 engine, all-MiniLM-L6-v2): cosine to fp32 min 0.983, mean 0.987
# with the recipe (per-channel int8, FFN down-projections fp16). Plain per-tensor int8 of every Linear gives
# min 0.904 / mean 0.941, per-channel int8 everywhere 0.964 / 0.976: both fail the bounds below. Over 800
# Home Depot queries (bench/bench_int8.py) the recipe's minimum was 0.959, hence 0.97 here, not 0.98.
MIN_COSINE = 0.97
MEAN_COSINE = 0.98


@pytest.fixture(scope="module")
def embedders() -> tuple[TextEmbedder, TextEmbedder]:
    torch.set_num_threads(1)
    fp32 = TextEmbedder("default", max_length=32, batch_size=32, device="cpu")
    int8 = TextEmbedder("default", max_length=32, batch_size=32, quantize="int8")   # device None -> cpu
    return fp32, int8


@pytest.fixture(scope="module")
def vectors(embedders) -> tuple[np.ndarray, np.ndarray]:
    fp32, int8 = embedders
    return fp32.embed(TEXTS), int8.embed(TEXTS)


def test_int8_swaps_linears_and_leaves_the_rest(embedders):
    fp32, int8 = embedders
    assert int8.device == "cpu" and int8.quantize == "int8"
    dynamic = [m for m in int8.encoder.modules() if isinstance(m, DynamicLinear)]
    assert not any(type(m) is nn.Linear for m in int8.encoder.modules())
    # 6 layers x (q, k, v, attention output, FFN up) in int8, 6 FFN down-projections with fp16 weights.
    dtypes = [m._packed_params.dtype for m in dynamic]
    assert dtypes.count(torch.qint8) == 30 and dtypes.count(torch.float16) == 6, dtypes
    assert sum(type(m) is nn.Linear for m in fp32.encoder.modules()) == 36     # fp32 copy untouched
    assert type(int8.encoder).__name__ == "TextEncoder" and int8.dim == fp32.dim == 384


def test_int8_vectors_close_to_fp32(vectors):
    ref, got = vectors
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (ref * got).sum(axis=1)
    message = f"cosine to fp32: min {cosine.min():.4f}, mean {cosine.mean():.4f}"
    assert cosine.min() >= MIN_COSINE and cosine.mean() >= MEAN_COSINE, message


def test_int8_keeps_nearest_neighbour_order(vectors):
    ref, got = vectors
    for q in QUERIES:
        want = np.argsort(-(ref @ ref[q]))[1:4]      # top 3 other texts (0 is the query itself)
        have = np.argsort(-(got @ got[q]))[1:4]
        assert want[0] == have[0], f"query {TEXTS[q]!r}: nearest {TEXTS[want[0]]!r} became {TEXTS[have[0]]!r}"
        assert len(set(want) & set(have)) >= 2, f"query {TEXTS[q]!r}: top 3 {want} vs {have}"


def test_quantize_int8_emits_no_deprecation_noise():
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantized = quantize_int8(model)
    assert isinstance(quantized[0], DynamicLinear) and isinstance(quantized[2], DynamicLinear)
    assert is_ffn_down_projection(model[2]) and not is_ffn_down_projection(model[0])
    assert type(model[0]) is nn.Linear                       # the input model is not modified
    x = torch.randn(4, 8)
    assert quantized(x).shape == (4, 8)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda"), "mps"])
def test_int8_on_a_gpu_raises_naming_the_field(device):
    # check_quantize runs before anything touches the device, so no GPU is needed here.
    with pytest.raises(ValueError, match=r"quantize='int8'.*device='(cuda|cuda:0|mps)'"):
        check_quantize("int8", device)
    with pytest.raises(ValueError, match="quantize='int8'"):
        TextEmbedder("default", device=str(device), quantize="int8")


def test_unknown_quantize_mode_raises():
    with pytest.raises(ValueError, match=r"quantize='int4'.*none, int8"):
        check_quantize("int4", "cpu")
    check_quantize("none", "cuda")                           # fp32 on a GPU stays allowed
    check_quantize("int8", "cpu")
