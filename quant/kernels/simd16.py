"""16-bit SIMD on 32-bit registers: PTX `max.u16x2`, `min.u16x2` and `fma.rn.f16x2`, each with an
interpreter twin.

Hopper runs these as one instruction on two 16-bit lanes (bits 0-15 and 16-31 of a uint32). The
conversion kernels use them to take maxima of packed keys and to round two values at a time with fp16
fused multiply-adds. On a GPU each helper is one inline-PTX instruction; under the Triton interpreter,
which cannot run PTX (`ASM=False`, see `byteperm.use_asm`), the same function is computed lane by lane.
`tests/quant/test_simd16.py` checks both paths against a numpy model.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def max_u16x2(a, b, ASM: tl.constexpr):
    """Lane-wise maximum of the unsigned 16-bit halves of uint32 `a`, `b`."""
    if ASM:
        return tl.inline_asm_elementwise("max.u16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.uint32,
                                         is_pure=True, pack=1)
    else:
        return tl.maximum(a & 0xFFFF, b & 0xFFFF) | tl.maximum(a >> 16, b >> 16) << 16


@triton.jit
def min_u16x2(a, b, ASM: tl.constexpr):
    """Lane-wise minimum of the unsigned 16-bit halves of uint32 `a`, `b`."""
    if ASM:
        return tl.inline_asm_elementwise("min.u16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.uint32,
                                         is_pure=True, pack=1)
    else:
        return tl.minimum(a & 0xFFFF, b & 0xFFFF) | tl.minimum(a >> 16, b >> 16) << 16


@triton.jit
def _max_u16x2_asm(a, b):
    return max_u16x2(a, b, True)


@triton.jit
def reduce_max_u16x2(x, AXIS: tl.constexpr, ASM: tl.constexpr):
    """`max_u16x2` over one axis of a uint32 tensor (the interpreter: two plain maxima, which it runs much
    faster than a reduction with a combine function)."""
    if ASM:
        return tl.reduce(x, AXIS, _max_u16x2_asm)
    else:
        return tl.max(x & 0xFFFF, axis=AXIS) | (tl.max(x >> 16, axis=AXIS) << 16)


@triton.jit
def _f16_lanes(x):
    """The two fp16 lanes of uint32 `x` as fp32 (exact)."""
    lo = (x & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (x >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def fma_f16x2(a, b, c, ASM: tl.constexpr):
    """Lane-wise `a * b + c` on fp16 pairs held in uint32 (round to nearest even, subnormals kept).

    The interpreter twin computes in fp32 and rounds once to fp16. That equals the fused fp16 operation
    whenever `a * b + c` is exact in fp32 or rounds in fp32 to a value that fp16 rounds the same way, which
    holds for the kernels' operands (products of at most 2 significant bits each, one addend)."""
    if ASM:
        return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.uint32, is_pure=True, pack=1)
    else:
        a0, a1 = _f16_lanes(a)
        b0, b1 = _f16_lanes(b)
        c0, c1 = _f16_lanes(c)
        r0 = (a0 * b0 + c0).to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
        r1 = (a1 * b1 + c1).to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
        return r0 | (r1 << 16)
