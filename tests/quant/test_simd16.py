"""The 16-bit SIMD helpers (quant/kernels/simd16.py) against numpy models of PTX `max.u16x2`, `min.u16x2`
and `fma.rn.f16x2`: the lane-by-lane twin under the interpreter, the inline PTX on a GPU. The fma operands
are the kind the MXFP4 transpose uses (powers of two times 1 or 1.5, the rounding constants) plus random
fp16 values whose products are exact in fp32."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from conversion_data import TRITON_DEVICE

from mxa2a.quant.kernels.byteperm import use_asm
from mxa2a.quant.kernels.simd16 import fma_f16x2, max_u16x2, min_u16x2


@triton.jit
def _simd_kernel(a_ptr, b_ptr, c_ptr, mx_ptr, mn_ptr, fma_ptr, N: tl.constexpr, ASM: tl.constexpr):
    i = tl.arange(0, N)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    c = tl.load(c_ptr + i)
    tl.store(mx_ptr + i, max_u16x2(a, b, ASM))
    tl.store(mn_ptr + i, min_u16x2(a, b, ASM))
    tl.store(fma_ptr + i, fma_f16x2(a, b, c, ASM))


def lanes(x: np.ndarray) -> np.ndarray:
    return np.stack([x & 0xFFFF, x >> 16], axis=-1).astype(np.uint16)


def run(a: np.ndarray, b: np.ndarray, c: np.ndarray):
    dev = lambda x: torch.from_numpy(x.astype(np.int64)).to(torch.uint32).to(TRITON_DEVICE)
    outs = [torch.empty(a.size, dtype=torch.uint32, device=TRITON_DEVICE) for _ in range(3)]
    _simd_kernel[(1,)](dev(a), dev(b), dev(c), *outs, N=a.size, ASM=use_asm())
    return [lanes(o.cpu().to(torch.int64).numpy() & 0xFFFFFFFF) for o in outs]


def random_f16_bits(g: np.random.Generator, n: int) -> np.ndarray:
    """fp16 patterns with at most 4 significant bits (so products are exact in fp32), both signs, every
    exponent (subnormals included), no Inf or NaN."""
    sign = g.integers(0, 2, n) << 15
    exp = g.integers(0, 31, n) << 10
    man = g.integers(0, 8, n) << 7
    return (sign | exp | man).astype(np.uint32)


@pytest.mark.parametrize("seed", [0, 1])
def test_simd16_helpers_match_ptx_models(seed):
    g = np.random.default_rng(seed)
    n = 512
    a = g.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = g.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    # fma operands: the transpose's (table values 2^k * {0, 0.5 .. 6}, factors 2^f, the rounding constants)
    # and random few-bit fp16 values; packed as two lanes.
    k = g.integers(-12, 14, (n, 2))
    v = np.float16(np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])[g.integers(0, 8, (n, 2))] * 2.0 ** k)
    f = np.float16(2.0 ** g.integers(-13, 16, (n, 2)))
    fa, fb = v.view(np.uint16).astype(np.uint32), f.view(np.uint16).astype(np.uint32)
    fc = np.full((n, 2), 0x6200, np.uint32)                     # 768
    fa[n // 2:] = random_f16_bits(g, (n - n // 2) * 2).reshape(-1, 2)
    fb[n // 2:] = random_f16_bits(g, (n - n // 2) * 2).reshape(-1, 2)
    fc[n // 2:] = random_f16_bits(g, (n - n // 2) * 2).reshape(-1, 2)
    fa[:4], fb[:4], fc[:4] = [[0x6200, 0x6201]] * 4, [[0x0400, 0x0400]] * 4, [[0xAA00, 0xAA00]] * 4
    pack = lambda x: (x[:, 0] | (x[:, 1] << 16)).astype(np.uint32)
    mx, mn, _ = run(a, b, pack(fc))
    assert np.array_equal(mx, np.maximum(lanes(a), lanes(b)))
    assert np.array_equal(mn, np.minimum(lanes(a), lanes(b)))
    _, _, fm = run(pack(fa), pack(fb), pack(fc))
    h = lambda x: x.astype(np.uint16).view(np.float16).astype(np.float64)
    want = (h(fa) * h(fb) + h(fc)).astype(np.float16)            # exact in float64, rounded once to fp16
    assert np.array_equal(fm.view(np.float16).view(np.uint16), want.view(np.uint16))
