"""E4M3 / E2M1 rounding by integer arithmetic on "virtual E4M3 codes", for the conversion kernels.

A virtual code `z` is the E4M3 code extended to every exponent: `|value| = (8 + (z & 7)) * 2^((z >> 3) - 10)`
(arithmetic shift), so E4M3 normals keep their own code (1.0 is 56 = 0x38) and every E4M3 subnormal and
E2M1 magnitude has one too (2^-9 is -16). Multiplying by 2^d is `z + 8 * d`, and rounding back to a
code is a few integer operations. The kernels therefore never build a float tensor: no log2/exp2, no
float rounding modes, no dependence on how a GPU treats fp32 subnormals, and the same bits in the
Triton interpreter. Zero is the virtual code -8192, far below anything that rounds to a nonzero code
for every shift the kernels apply (|d| < 512).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e4m3_vcode(mag):
    """E4M3 magnitude code (0..0x7E, int32) -> virtual code. Subnormals m * 2^-9 are normalized:
    m = 4..7 -> 2m - 8, m = 2, 3 -> 4m - 16, m = 1 -> -16."""
    sh = 3 - (mag >= 2).to(tl.int32) - (mag >= 4).to(tl.int32)  # 3 - floor(log2 m)
    sub = tl.where(mag == 0, -8192, (mag << sh) - (sh << 3))
    return tl.where(mag >= 8, mag, sub)


@triton.jit
def e2m1_vcode(c7):
    """E2M1 magnitude code (0..7, int32) -> virtual code: 0.5 -> 48, c >= 2 -> 4c + 48 (1.0 -> 56)."""
    return tl.where(c7 >= 2, (c7 << 2) + 48, tl.where(c7 == 1, 48, -8192))


@triton.jit
def e4m3_from_vcode(z):
    """RNE to the E4M3 magnitude code (subnormals rounded, never flushed). Callers guarantee
    `|value| <= 448` (z <= 126), so nothing saturates. Below 2^-6 the value is `(8 + (z & 7)) / 2^n`
    units of 2^-9 with `n = 1 - (z >> 3)`; a round-up to 8 units lands on code 8 = 2^-6 by itself."""
    n = tl.minimum(tl.maximum(1 - (z >> 3), 1), 5)  # n >= 5 leaves less than half a unit: 0
    s = 8 + (z & 7)
    sub = (s + (1 << (n - 1)) - 1 + ((s >> n) & 1)) >> n
    return tl.where(z >= 8, z, sub)


@triton.jit
def e2m1_from_vcode(z):
    """RNE to the E2M1 magnitude code, magnitudes above 6 saturating to code 7 (6.0).
    From 1.0 up (z >= 56) drop two of the three mantissa bits of `z - 48` (rebias 7 -> 1) with ties
    to even; below 1.0 the code is 0, 1 (0.5) or 2 (1.0): thresholds 0.25 (z = 40, ties to 0) and
    0.75 (z = 52, ties to 1.0)."""
    zz = z - 48
    hi = tl.minimum((zz + 1 + ((zz >> 2) & 1)) >> 2, 7)
    lo = (z > 40).to(tl.int32) + (z >= 52).to(tl.int32)
    return tl.where(z >= 56, hi, lo)


# --- fp32-register helpers: exact power-of-two scaling and magic-number round-to-nearest-even ---------
# fp32 `mul` / `add` in Triton's PTX are IEEE with subnormals (no `.ftz`), so the products below are
# exact and the additions round once, to nearest even.

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
