"""Bit-level helpers of the conversion kernels: E4M3 / E2M1 decoding and rounding in fp32 registers, and
the packed-word helpers that several conversions share; `bf16_bits`, fp32 -> bf16 on the bits (also
used by `moe/`'s gather kernels, since the interpreter's bf16 cast truncates).

Each conversion decodes its input to the exact fp32 values the two-step path would hold (a code's bits
dropped into an fp32 pattern and multiplied by powers of two: exact products, Inf from 2^128 on, as in
the reference), scales them by a power of two (exact), and rounds to the output grid with one fp32
addition: adding C = 1.5 * 2^(p + 23), whose ulp 2^p is the grid spacing at the value, rounds to
nearest even in hardware and leaves the rounded multiple of 2^p in C's low significand bits. No
log2/exp2 and no float <-> int conversion; exponents come from bit fields. This relies on fp32 `mul` /
`add` being IEEE with subnormals: Triton emits `mul.f32` / `add.f32` / `fma.rn.f32` without `.ftz`
(checked in the PTX of an sm_90 compile), and the Triton interpreter computes in numpy fp32. Shared
below: packed E2M1 words decoded per column (fp32) or per row as fp16 pairs, row loads, `words_aligned`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .byteperm import byte_perm
from .simd16 import max_u16x2


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


@triton.jit
def bf16_bits(x):
    """fp32 -> the bf16 bit pattern (int16), round to nearest even, NaN kept NaN (quiet, sign kept).
    Done on the bits because the interpreter's fp32 -> bf16 cast truncates, unlike the GPU's."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, (bits >> 16) | 0x40, rounded)
    return rounded.to(tl.int16)


# --- shared by several conversions: packed-word decoding, row loads, alignment ----------------------


def words_aligned(rows: torch.Tensor, size: int = 4) -> bool:
    """Whether uint8 rows `[M, W]` can be read / written as `size`-byte words: aligned start and row
    stride (the word-wise kernels need it; their wrappers fall back to a byte-wise kernel otherwise)."""
    return rows.data_ptr() % size == 0 and (rows.stride(0) % size == 0 or rows.shape[0] <= 1)


@triton.jit
def bit_or(a, b):
    return a | b


TWO_126 = tl.constexpr(8.507059173023462e37)      # 2^126: (c << 22) read as fp32 is |E2M1(c)| * 2^-126


@triton.jit
def e8m0_f32(sb):
    """Scale byte -> 2^(b - 127) in fp32 (byte 0: 2^-127, a subnormal; 255: Inf, so values become Inf or
    NaN and the block NaN)."""
    return tl.maximum(sb << 23, 0x400000).to(tl.float32, bitcast=True)


@triton.jit
def nibble_at_22(words, J: tl.constexpr):
    """The words shifted so that nibble J (column 8w + J) sits at bits 22..25."""
    if J <= 5:
        return words << (22 - 4 * J)
    else:
        return words >> (4 * J - 22)


@triton.jit
def e2m1_word_abs_f32(words, scale, J: tl.constexpr):
    """|decoded value| of column J of every word (fp32, exact; Inf from 2^128 on) and the shifted words."""
    sh = nibble_at_22(words, J)
    cf = (sh & 0x1C00000).to(tl.float32, bitcast=True)
    return cf * TWO_126 * scale, sh


@triton.jit
def e2m1_word_abs_bits(words, scale, J: tl.constexpr):
    """fp32 bits of |decoded value| of column J of `words` (ordered like the values; NaN above Inf)."""
    return e2m1_word_abs_f32(words.to(tl.int32, bitcast=True), scale, J)[0].to(tl.int32, bitcast=True)


@triton.jit
def e2m1_row_f16x2(word, sbyte, bmax, ASM: tl.constexpr):
    """One input row's 8 codes -> their decoded magnitudes as fp16 pairs, columns (0, 2), (1, 3), (4, 6),
    (5, 7): `E2M1(c) * 2^(sbyte - bmax + 13)`, looked up in a per-row table of fp16 high bytes."""
    k = sbyte - bmax + 13  # in [-12, 13]: table bytes stay normal fp16 high bytes (exponent 2..30)
    t0 = (0x3E3C3800 + k * 0x04040400).to(tl.uint32, bitcast=True)  # codes 0-3: 0, 0.5, 1, 1.5 (times 2^k)
    t1 = (0x46444240 + k * 0x04040404).to(tl.uint32, bitcast=True)  # codes 4-7: 2, 3, 4, 6
    odd = word & 0x70707070             # selector nibbles 1 and 3: codes 1, 3 (low half), 5, 7 (high half)
    even = (word << 4) & 0x70707070     # codes 0, 2 and 4, 6
    return (byte_perm(t0, t1, even, ASM), byte_perm(t0, t1, odd, ASM),
            byte_perm(t0, t1, even >> 16, ASM), byte_perm(t0, t1, odd >> 16, ASM))


@triton.jit
def max8_u16x2(a, b, c, d, e, f, g, h, ASM: tl.constexpr):
    return max_u16x2(max_u16x2(max_u16x2(a, b, ASM), max_u16x2(c, d, ASM), ASM),
                     max_u16x2(max_u16x2(e, f, ASM), max_u16x2(g, h, ASM), ASM), ASM)


@triton.jit
def load_as(ptr, off, ok, DTYPE: tl.constexpr, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(ptr + off).to(DTYPE)
    else:
        return tl.load(ptr + off, mask=ok, other=0).to(DTYPE)


@triton.jit
def load_rows8(ptr, off, step, ok, DTYPE: tl.constexpr, EVEN: tl.constexpr):
    """`ptr[off + r * step]` for the 8 rows r of every thread's group, as DTYPE (masked loads give 0
    unless EVEN)."""
    return (load_as(ptr, off, ok, DTYPE, EVEN), load_as(ptr, off + step, ok, DTYPE, EVEN),
            load_as(ptr, off + 2 * step, ok, DTYPE, EVEN), load_as(ptr, off + 3 * step, ok, DTYPE, EVEN),
            load_as(ptr, off + 4 * step, ok, DTYPE, EVEN), load_as(ptr, off + 5 * step, ok, DTYPE, EVEN),
            load_as(ptr, off + 6 * step, ok, DTYPE, EVEN), load_as(ptr, off + 7 * step, ok, DTYPE, EVEN))


@triton.jit
def load_e2m1_planes(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The "planes" kernels' input side, no decode-side transpose: input rows [BLOCK_M*pid_m, +BLOCK_M) x packed
    columns [BLOCK_K/2*pid_k, +BLOCK_K/2) as they lie in memory, split into the even-column (low
    nibble) and odd-column (high nibble) code planes `[BLOCK_M, BLOCK_K/2]` (int32), with the block
    scale as fp32 and 1 where the block scale byte is 255 (NaN), both broadcast to that shape."""
    HK: tl.constexpr = BLOCK_K // 2
    NB: tl.constexpr = BLOCK_K // 32
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)
    pcols = pid_k * HK + tl.arange(0, HK)
    packed = tl.load(x_ptr + r64[:, None] * stride_x + pcols[None, :],
                     mask=row_ok[:, None] & (pcols < K // 2)[None, :], other=0,
                     eviction_policy="evict_first").to(tl.int32)
    bcols = pid_k * NB + tl.arange(0, NB)
    sbyte = tl.load(xs_ptr + r64[:, None] * stride_xs + bcols[None, :],
                    mask=row_ok[:, None] & (bcols < K // 32)[None, :], other=0).to(tl.int32)
    scale = pow2_f32(tl.minimum(sbyte, 254) - 127)  # [BLOCK_M, NB]
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK_M, NB, 16)), (BLOCK_M, HK))
    nan = tl.reshape(tl.broadcast_to((sbyte == 255).to(tl.int32)[:, :, None], (BLOCK_M, NB, 16)),
                     (BLOCK_M, HK))
    return packed & 15, packed >> 4, scale, nan
