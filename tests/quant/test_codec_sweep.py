"""Every launch config in `benchmarks/codec_throughput.py`'s SWEEP_CONFIGS (tile shape, warps, and the
persistent grid-stride variant) gives the torch reference's bits on all four codec kernels, so the GPU
sweep may pick any of them. Small inputs: under the interpreter the SM count is 1, so a persistent
launch is `programs_per_sm` programs each walking several tiles (ragged last row tile included)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mxa2a.quant import reference
from mxa2a.quant.kernels.fp8 import fp8_dequantize_triton, fp8_quantize_triton
from mxa2a.quant.kernels.mxfp4 import mxfp4_dequantize_triton, mxfp4_quantize_triton
from quant_codec_cases import on_cpu, on_triton, random_binades

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")]


def _sweep_configs() -> list[tuple[int, int, int, int]]:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "codec_throughput.py"
    spec = importlib.util.spec_from_file_location("codec_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.SWEEP_CONFIGS


@pytest.mark.parametrize("bm,bk,nw,pps", _sweep_configs())
def test_sweep_config_bit_exact(seed, bm, bk, nw, pps):
    cfg = dict(block_m=bm, block_k=bk, num_warps=nw, programs_per_sm=pps)
    x = random_binades((40, 512), torch.bfloat16)  # 40 rows: ragged for BLOCK_M 16, 32, 64
    x[3, 70] = float("nan")
    x[17, 300] = float("inf")
    xt = on_triton(x)

    want = reference.quantize_mxfp4(x, "rceil")
    got = on_cpu(mxfp4_quantize_triton(xt, "rceil", **cfg))
    assert torch.equal(got.scales, want.scales) and torch.equal(got.data, want.data)
    dec = on_cpu(mxfp4_dequantize_triton(on_triton(want), torch.bfloat16, **cfg))
    assert torch.equal(dec.view(torch.int16), reference.dequantize_mxfp4(want).view(torch.int16))

    want8 = reference.quantize_fp8(x)
    got8 = on_cpu(fp8_quantize_triton(xt, **cfg))
    assert torch.equal(got8.scales, want8.scales)
    assert torch.equal(got8.data.view(torch.uint8), want8.data.view(torch.uint8))
    dec8 = on_cpu(fp8_dequantize_triton(on_triton(want8), torch.bfloat16, **cfg))
    assert torch.equal(dec8.view(torch.int16), reference.dequantize_fp8(want8).view(torch.int16))
