"""E4M3 / E2M1 decoding and rounding in fp32 registers, for the conversion kernels.

Each conversion decodes its input to the exact fp32 values the two-step path would hold (a code's bits
dropped into an fp32 pattern and multiplied by powers of two: exact products, Inf from 2^128 on, as in
the reference), scales them by a power of two (exact), and rounds to the output grid with one fp32
addition: adding C = 1.5 * 2^(p + 23), whose ulp 2^p is the grid spacing at the value, rounds to
nearest even in hardware and leaves the rounded multiple of 2^p in C's low significand bits. No
log2/exp2 and no float <-> int conversion; exponents come from bit fields. This relies on fp32 `mul` /
`add` being IEEE with subnormals: Triton emits `mul.f32` / `add.f32` / `fma.rn.f32` without `.ftz`
(checked in the PTX of an sm_90 compile), and the Triton interpreter computes in numpy fp32. None of
these values is ever written to global memory.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pow2_f32(e):
    """2^e as fp32 for int32 `e` in [-127, 127] (2^-127 is the subnormal 0x400000)."""
    return tl.where(e <= -127, 0x400000, (e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_abs_f32(mag):
    """|E4M3| of a magnitude code (0..0x7E) as an exact fp32 (subnormals included)."""
    return (mag << 20).to(tl.float32, bitcast=True) * 1.329227995784916e36  # bits read as |q| * 2^-120


@triton.jit
def e2m1_abs_f32(c7):
    """|E2M1| of a magnitude code (0..7) as an exact fp32."""
    return (c7 << 22).to(tl.float32, bitcast=True) * 8.507059173023462e37  # bits read as |x| * 2^-126


@triton.jit
def e2m1_round(y):
    """RNE of fp32 `0 <= y < 8` to the E2M1 magnitude code (8 means 8.0: callers saturate if needed).
    Adding C = 1.5 * 2^(22 + r), whose ulp 2^(r - 1) is the E2M1 spacing in y's range r (0: below 2,
    1: [2, 4), 2: [4, 8)), leaves RNE(y / spacing) in C's low bits; the code is that plus 2r."""
    r = tl.maximum((y.to(tl.int32, bitcast=True) >> 23) - 127, 0)
    c_bits = r * 8388608 + 0x4AC00000
    return (y + c_bits.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - c_bits + 2 * r


@triton.jit
def e4m3_round(y):
    """RNE of fp32 `0 <= y <= 448` to the E4M3 magnitude code, subnormals rounded (never flushed):
    C = 1.5 * 2^(g + 20) has ulp 2^(g - 3), the E4M3 spacing at y (g = max(floor(log2 y), -6)); a
    round-up to 16 steps carries into the next binade by itself."""
    g = tl.maximum((y.to(tl.int32, bitcast=True) >> 23) - 127, -6)
    c_bits = g * 8388608 + 0x49C00000
    n = (y + c_bits.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - c_bits
    return ((g + 7) << 3) + n - 8
