"""E4M3 and E2M1 codes as integer (significand, exponent) pairs, for the conversion kernels.

The conversion kernels never build a float tensor: they split each code into an integer significand
`full` (24 bits, `2^23 <= full < 2^24`, or 0 for zero) and an unbiased exponent `ev`, so that
`|value| = full * 2^(ev - 23)`, move exponents by integer adds, and round back to a code with an
integer round-to-nearest-even shift. All of it is int32 arithmetic on bit patterns (no log2/exp2, no
float rounding modes), so the results are the same on every GPU and in the Triton interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e4m3_parts(mag):
    """E4M3 magnitude code (0..0x7E, int32) -> (full, ev). Subnormals (E = 0) are normalized."""
    e = (mag >> 3) & 15
    m = mag & 7
    lg = (m >= 2).to(tl.int32) + (m >= 4).to(tl.int32)  # floor(log2 m) for m = 1..7
    full = tl.where(e > 0, (m + 8) << 20, m << (23 - lg))
    ev = tl.where(e > 0, e - 7, lg - 9)
    return full, ev


@triton.jit
def e2m1_parts(mag):
    """E2M1 magnitude code (0..7, int32) -> (full, ev): 0.5 = 2^-1, 1, 1.5, 2, 3, 4, 6."""
    e = (mag >> 1) & 3
    m = mag & 1
    full = tl.where(e > 0, (m + 2) << 22, m << 23)
    ev = tl.where(e > 0, e - 1, -1)
    return full, ev


@triton.jit
def rne_shift(full, n):
    """`full / 2^n` rounded to the nearest integer, ties to even (1 <= n <= 25, full < 2^24)."""
    q = full >> n
    rem = full - (q << n)
    half = 1 << (n - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up.to(tl.int32)


@triton.jit
def e4m3_code(full, ev):
    """RNE to the E4M3 magnitude code (subnormals rounded, never flushed). Callers guarantee
    `|value| <= 448`, so there is no saturation. Rounding up across a binade carries into the
    exponent field by itself (code = binade * 8 + quanta)."""
    n = tl.minimum(tl.maximum(14 - ev, 20), 25)  # quantum is 2^max(ev-3, -9); 25 leaves 0
    r = rne_shift(full, n)
    code = (tl.maximum(ev, -6) + 6) * 8 + r
    return tl.where(full == 0, 0, code)


@triton.jit
def e2m1_code(full, ev):
    """RNE to the E2M1 magnitude code, magnitudes above 6 saturating to code 7 (6.0)."""
    n = tl.minimum(tl.where(ev >= 0, 22, 22 - ev), 25)  # quantum is 2^max(ev-1, -1)
    r = rne_shift(full, n)
    code = tl.minimum(2 * tl.maximum(tl.minimum(ev, 8), 0) + r, 7)
    return tl.where(full == 0, 0, code)
