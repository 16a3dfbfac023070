"""`mxfp4_rowwise_to_fp8_colwise`: MXFP4 row-wise `[M, K]` -> FP8 tiles of `[K, M]` (128 rows per scale).

Equals `quantize_fp8(dequantize_mxfp4(x, fp32).T)` bit for bit. Kernels (`variant`):
- "f16x2_tiles" (default; whole programs): T x S tiles of 128x128 per program, one warp each (warp h:
  tile h // S, slab h % S) with "f16x2"'s per-warp code; the T tiles' scale bytes of a column are
  gathered across warps and leave as one T-byte store.
- "f16x2": packed fp16 arithmetic, two values per register; one warp holds all 128 rows of a tile in
      tensors [2, 4, 4, NW]: word pair l (2 lanes) x 8-row group g (4) x 32-row block q (4) x warp
      thread (l, g, q) holds rows 32q + 8g .. +7 of word pair l: 8 rows x 16 columns, 8 uint64
  so a column's tile maximum is in-thread then 4 shuffle rounds, and each thread stores a column's 8
  output bytes at once. Tiles outside the fp16 window (_FP8_WINDOW) go through exact fp32 instead.
  Needs 8-byte aligned code rows and 4-byte aligned scale rows (K a multiple of 128).
- "f32_words": a thread owns one packed word of every row; fp32 bit tricks and FMAs, no shared memory;
  rows 4-byte but not 8-byte aligned.
- "planes": fp32 on the even / odd nibble planes, only output bytes transposed; rows not 4-byte aligned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in
from ..formats import E4M3_DTYPE, FP8_TILE, FP8Tensor, MXFP4Tensor
from .byteperm import byte_perm, use_asm
from .launch import LaunchConfig, pick_config
from .minifloat import (e2m1_abs_f32, e2m1_row_f16x2, e2m1_word_abs_bits, e2m1_word_abs_f32, e4m3_round,
                        e8m0_f32, load_e2m1_planes, load_rows8, max8_u16x2, pow2_f32)
from .simd16 import fma_f16x2, max_u16x2, min_u16x2, reduce_max_u16x2


# --- planes: fp32 values on the even / odd nibble planes, only the output bytes transposed ------------

@triton.jit
def _fp8_colwise_plane(code, scale, nan, o_ptr, os_ptr, pid_m, pid_k, plane, M, K, stride_o, stride_os,
                       BLOCK_K: tl.constexpr):
    """Quantizes one code plane `[128, BLOCK_K/2]` to E4M3 column-wise (one 128-row tile) in the input
    layout, transposes only the output bytes and stores output rows 2*col + plane."""
    HK: tl.constexpr = BLOCK_K // 2
    v = e2m1_abs_f32(code & 7) * scale
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=0)  # [HK]
    nan_tile = (amax >= 0x7F800000) | (tl.max(nan, axis=0) > 0)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)
    k = tl.minimum(tl.maximum(k, -127), 127)
    c = e4m3_round(v * pow2_f32(-k)[None, :]) | ((code & 8) << 4)
    c = tl.where(nan_tile[None, :], 0, c)
    kk = 2 * (pid_k * HK + tl.arange(0, HK)) + plane
    k64 = kk.to(tl.int64)
    k_ok = kk < K
    orows = pid_m * 128 + tl.arange(0, 128)
    tl.store(o_ptr + k64[:, None] * stride_o + orows[None, :], tl.trans(c.to(tl.uint8)),
             mask=k_ok[:, None] & (orows < M)[None, :])
    tl.store(os_ptr + k64 * stride_os + pid_m, tl.where(nan_tile, 255, k + 127).to(tl.uint8), mask=k_ok)


@triton.jit
def _mxfp4_rowwise_to_fp8_colwise_planes_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                                stride_x, stride_xs, stride_o, stride_os,
                                                BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    lo, hi, scale, nan = load_e2m1_planes(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                          128, BLOCK_K)
    _fp8_colwise_plane(lo, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 0, M, K, stride_o, stride_os, BLOCK_K)
    _fp8_colwise_plane(hi, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 1, M, K, stride_o, stride_os, BLOCK_K)


# --- f32_words: a thread owns one packed word (8 columns) of every row; no shared memory -------------
# The 32 rows of a block are stacked into in-thread dimensions with `tl.join`, so column maxima are
# in-thread reductions; each column is decoded by a shift and mask into the fp32 pattern `c << 22`, and
# two fused multiply-adds round the scaled value onto the E4M3 grid, leaving fp32 bits `code << 20`.
_TWO_M120 = tl.constexpr(7.52316384526264e-37)     # 2^-120: |E4M3| * 2^-120 has fp32 bits code << 20
_E4M3_MAGIC = tl.constexpr(24576.0)                # 1.5 * 2^14: ulp 2^-9, the E4M3 subnormal spacing
_E4M3_MAGIC_LOW = tl.constexpr(1.8488927466117464e-32)  # 1.5 * 2^14 * 2^-120


@triton.jit
def _mx_word_row(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN: tl.constexpr):
    """Row `row` (< 32, relative to the pointers) of the packed words `w` (int32, 8 codes each) and
    their block scale bytes. 32-bit row offsets: 32 * stride fits, and the loop-invariant per-row terms
    stay scalar 32-bit values instead of 64-bit pointers per row."""
    if EVEN:
        word = tl.load(x32 + (row * stride_x4 + w))
        sb = tl.load(xs_ptr + (row * stride_xs + w // 4)).to(tl.int32)
    else:
        word = tl.load(x32 + (row * stride_x4 + w), mask=w_ok, other=0)
        sb = tl.load(xs_ptr + (row * stride_xs + w // 4), mask=w_ok, other=0).to(tl.int32)
    return word, sb


@triton.jit
def _mx_rows2(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN: tl.constexpr):
    a, sa = _mx_word_row(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN)
    b, sb = _mx_word_row(x32, xs_ptr, row + 16, w, w_ok, stride_x4, stride_xs, EVEN)
    return tl.join(a, b), tl.join(sa, sb)


@triton.jit
def _mx_rows4(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN: tl.constexpr):
    a, sa = _mx_rows2(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN)
    b, sb = _mx_rows2(x32, xs_ptr, row + 8, w, w_ok, stride_x4, stride_xs, EVEN)
    return tl.join(a, b), tl.join(sa, sb)


@triton.jit
def _mx_rows8(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN: tl.constexpr):
    a, sa = _mx_rows4(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN)
    b, sb = _mx_rows4(x32, xs_ptr, row + 4, w, w_ok, stride_x4, stride_xs, EVEN)
    return tl.join(a, b), tl.join(sa, sb)


@triton.jit
def _mx_rows16(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN: tl.constexpr):
    a, sa = _mx_rows8(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN)
    b, sb = _mx_rows8(x32, xs_ptr, row + 2, w, w_ok, stride_x4, stride_xs, EVEN)
    return tl.join(a, b), tl.join(sa, sb)


@triton.jit
def _mx_rows32(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, NW: tl.constexpr, EVEN: tl.constexpr):
    """Rows `row + i`, i < 32 (callers pass pointers at the block's first row and `row` = 0), of words
    `w`: `[NW, 32]` words and scale bytes, rows in natural order (the join tree puts row bit 4 in the
    outermost joined dimension and bit 0 in the innermost)."""
    a, sa = _mx_rows16(x32, xs_ptr, row, w, w_ok, stride_x4, stride_xs, EVEN)
    b, sb = _mx_rows16(x32, xs_ptr, row + 1, w, w_ok, stride_x4, stride_xs, EVEN)
    return tl.reshape(tl.join(a, b), (NW, 32)), tl.reshape(tl.join(sa, sb), (NW, 32))


@triton.jit
def _nibble_at_24(words, J: tl.constexpr):
    """The words shifted so that nibble J sits at bits 24..27."""
    if J <= 6:
        return words << (24 - 4 * J)
    else:
        return words >> 4


@triton.jit
def _join8(m0, m1, m2, m3, m4, m5, m6, m7, NW: tl.constexpr):
    """Eight `[NW]` tensors -> `[NW, 8]` (index j), the new dimension in-thread."""
    a = tl.join(tl.join(m0, m4), tl.join(m2, m6))
    b = tl.join(tl.join(m1, m5), tl.join(m3, m7))
    return tl.reshape(tl.join(a, b), (NW, 8))  # flattened index j


@triton.jit
def _split8(x, NW: tl.constexpr):
    """Inverse of `_join8`."""
    a, b = tl.split(tl.reshape(x, (NW, 2, 2, 2)))
    a04, a26 = tl.split(a)
    b15, b37 = tl.split(b)
    m0, m4 = tl.split(a04)
    m2, m6 = tl.split(a26)
    m1, m5 = tl.split(b15)
    m3, m7 = tl.split(b37)
    return m0, m1, m2, m3, m4, m5, m6, m7


@triton.jit
def _fp8_colmax_chunk(words, scale, NW: tl.constexpr):
    """`[NW, 8]`: the largest |decoded value| (fp32 bits) of each of the 8 columns over 32 rows."""
    m0 = tl.max(e2m1_word_abs_f32(words, scale, 0)[0].to(tl.int32, bitcast=True), axis=1)
    m1 = tl.max(e2m1_word_abs_f32(words, scale, 1)[0].to(tl.int32, bitcast=True), axis=1)
    m2 = tl.max(e2m1_word_abs_f32(words, scale, 2)[0].to(tl.int32, bitcast=True), axis=1)
    m3 = tl.max(e2m1_word_abs_f32(words, scale, 3)[0].to(tl.int32, bitcast=True), axis=1)
    m4 = tl.max(e2m1_word_abs_f32(words, scale, 4)[0].to(tl.int32, bitcast=True), axis=1)
    m5 = tl.max(e2m1_word_abs_f32(words, scale, 5)[0].to(tl.int32, bitcast=True), axis=1)
    m6 = tl.max(e2m1_word_abs_f32(words, scale, 6)[0].to(tl.int32, bitcast=True), axis=1)
    m7 = tl.max(e2m1_word_abs_f32(words, scale, 7)[0].to(tl.int32, bitcast=True), axis=1)
    return _join8(m0, m1, m2, m3, m4, m5, m6, m7, NW)


@triton.jit
def _f32_words_column(words, scale, inv, nan, o32, pid_m, g, w, w_ok, stride_o4,
                      J: tl.constexpr, NW: tl.constexpr):
    """E4M3 codes of column J for 32 rows (chunk g of the 128-row tile), stored as 8 words."""
    v, sh = e2m1_word_abs_f32(words, scale, J)
    # v * 2^-k <= 448 is exact; + 1.5 * 2^14 rounds it to a multiple of 2^-9 (RNE: E4M3 subnormals;
    # normal E4M3 values are exact there), and (t - C) * 2^-120 has fp32 bits code << 20.
    t = v * inv[:, None] + _E4M3_MAGIC
    z = t * _TWO_M120 - _E4M3_MAGIC_LOW
    zb = z.to(tl.int32, bitcast=True) | (_nibble_at_24(words, J) & 0x8000000)  # sign: nibble bit 3 -> 27
    lo, hi = tl.split(tl.reshape(zb, (NW, 8, 2, 2)))             # rows 4a + {0, 2} and 4a + {1, 3}
    p0, p1 = tl.split((lo >> 8) + hi)                            # codes at bits 12 and 20
    packed = tl.where(nan[:, None], 0, (p0 >> 12) + (p1 << 4))   # [NW, 8]: rows 4a .. 4a + 3
    # Two 16-byte stores of 4 words each (one 32-byte store would be split over two threads).
    first, second = tl.split(tl.permute(tl.reshape(packed, (NW, 2, 4)), (0, 2, 1)))
    k64 = (8 * w + J).to(tl.int64)
    a = tl.arange(0, 4)
    base = o32 + k64[:, None] * stride_o4 + pid_m * 32 + g * 8 + a[None, :]
    tl.store(base, first, mask=w_ok[:, None])
    tl.store(base + 4, second, mask=w_ok[:, None])


@triton.jit
def _mxfp4_rowwise_to_fp8_colwise_f32_words_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                                   stride_x, stride_xs, stride_o, stride_os,
                                                   BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    # One program: rows [128*pid_m, +128) x columns [BLOCK_K*pid_k, +BLOCK_K); each thread owns one
    # packed word (8 columns) of every row and walks the tile in four 32-row chunks twice: first for
    # the column maxima, then (reloading the chunk, an L1/L2 hit) for the codes.
    NW: tl.constexpr = BLOCK_K // 8
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    w = pid_k * NW + tl.arange(0, NW)
    w_ok = w < K // 8
    x32 = x_ptr.to(tl.pointer_type(tl.int32))
    o32 = o_ptr.to(tl.pointer_type(tl.int32))
    bmax = tl.zeros((NW,), dtype=tl.int32)
    amax = _join8(bmax, bmax, bmax, bmax, bmax, bmax, bmax, bmax, NW)  # [NW, 8] zeros, j in-thread
    # Runtime loops, not unrolled: each chunk's loads and values stay in their iteration (registers).
    for g in tl.range(0, 4, loop_unroll_factor=1):
        r64 = (pid_m * 128 + g * 32).to(tl.int64)
        words, sbyte = _mx_rows32(x32 + r64 * (stride_x // 4), xs_ptr + r64 * stride_xs, 0, w, w_ok,
                                  stride_x // 4, stride_xs, NW, EVEN)
        bmax = tl.maximum(bmax, tl.max(sbyte, axis=1))
        scale = e8m0_f32(sbyte)
        amax = tl.maximum(amax, _fp8_colmax_chunk(words, scale, NW))
    nan = (bmax[:, None] == 255) | (amax >= 0x7F800000)
    # k = ceil(log2(amax / 448)) = floor(log2 amax) - 8: a decoded maximum has significand 1 or 1.5
    # (never above 1.75); a zero or fp32-subnormal maximum gives <= -135, clamped to -127.
    k = tl.maximum((amax >> 23) - 135, -127)
    inv = ((127 - k) << 23).to(tl.float32, bitcast=True)  # 2^-k, k in [-127, 120]
    kbyte = tl.where(nan, 255, k + 127).to(tl.uint8)
    s0, s1, s2, s3, s4, s5, s6, s7 = _split8(kbyte, NW)
    k64 = (8 * w).to(tl.int64) * stride_os + pid_m
    tl.store(os_ptr + k64, s0, mask=w_ok)
    tl.store(os_ptr + k64 + stride_os, s1, mask=w_ok)
    tl.store(os_ptr + k64 + 2 * stride_os, s2, mask=w_ok)
    tl.store(os_ptr + k64 + 3 * stride_os, s3, mask=w_ok)
    tl.store(os_ptr + k64 + 4 * stride_os, s4, mask=w_ok)
    tl.store(os_ptr + k64 + 5 * stride_os, s5, mask=w_ok)
    tl.store(os_ptr + k64 + 6 * stride_os, s6, mask=w_ok)
    tl.store(os_ptr + k64 + 7 * stride_os, s7, mask=w_ok)
    i0, i1, i2, i3, i4, i5, i6, i7 = _split8(inv, NW)
    n0, n1, n2, n3, n4, n5, n6, n7 = _split8(nan, NW)
    for g in tl.range(0, 4, loop_unroll_factor=1):
        r64 = (pid_m * 128 + g * 32).to(tl.int64)
        words, sbyte = _mx_rows32(x32 + r64 * (stride_x // 4), xs_ptr + r64 * stride_xs, 0, w, w_ok,
                                  stride_x // 4, stride_xs, NW, EVEN)
        scale = e8m0_f32(sbyte)
        _f32_words_column(words, scale, i0, n0, o32, pid_m, g, w, w_ok, stride_o // 4, 0, NW)
        _f32_words_column(words, scale, i1, n1, o32, pid_m, g, w, w_ok, stride_o // 4, 1, NW)
        _f32_words_column(words, scale, i2, n2, o32, pid_m, g, w, w_ok, stride_o // 4, 2, NW)
        _f32_words_column(words, scale, i3, n3, o32, pid_m, g, w, w_ok, stride_o // 4, 3, NW)
        _f32_words_column(words, scale, i4, n4, o32, pid_m, g, w, w_ok, stride_o // 4, 4, NW)
        _f32_words_column(words, scale, i5, n5, o32, pid_m, g, w, w_ok, stride_o // 4, 5, NW)
        _f32_words_column(words, scale, i6, n6, o32, pid_m, g, w, w_ok, stride_o // 4, 6, NW)
        _f32_words_column(words, scale, i7, n7, o32, pid_m, g, w, w_ok, stride_o // 4, 7, NW)


# --- f16x2 and f16x2_tiles: packed fp16 arithmetic ----------------------------------------------------
# In a tile whose 32-column block scales lie within _FP8_WINDOW of their largest byte bmax, with
# 6 <= bmax <= 252, every decoded value is E2M1(c) * 2^(b - bmax + 13), a normal fp16 number (0.5 * 2^-13
# = 2^-14 up to 6 * 2^13) looked up four at a time with a byte permute (`e2m1_row_f16x2`). The column
# maximum's fp16 exponent field ef gives the E4M3 tile scale byte max(ef + bmax - 36, 0) and the factor
# F = 2^(1 - (ef - 15)), or 2^(bmax - 20) where the byte is clamped at 0 (bmax >= 6 keeps it normal);
# v * F <= 3 is the E4M3 value times 2^-7, so one fp16 FMA with 3 * 2^-7 (ulp 2^-16 = the E4M3
# subnormal step 2^-9 times 2^-7) rounds it to nearest even on the E4M3 grid, and a second one leaves
# fp16 bits `code << 7`. Byte permutes gather 4 rows' codes into an output word; the sign bits come from
# a byte transpose of the input words. A tile outside the window (also NaN rows, bytes 253-254 whose
# values can overflow fp32) is converted through exact fp32 values, decided once per program.
_FP8_WINDOW = tl.constexpr(26)  # largest scale-byte spread of a tile's 32-column block on the fp16 path
_NEUTRAL = tl.constexpr(0x64646464)  # four scale bytes of 100: inside every window (masked-out words)


@triton.jit
def _tile_reduce_max_u16x2(x, ASM: tl.constexpr):
    """`max_u16x2` over the 128 rows of a tile: the g and q axes of `[2, 4, 4, NW]` -> `[2, NW]`."""
    return reduce_max_u16x2(reduce_max_u16x2(x, 2, ASM), 1, ASM)


@triton.jit
def _window_bad(hi, cmax):
    """16-bit lanes: nonzero where a block's largest scale byte `hi` is above 252 or below 6, or where it
    exceeds the smallest (`255 - cmax`) by more than _FP8_WINDOW."""
    over = (hi + 0x00030003) & 0x01000100                         # hi + 3 >= 256
    under = ~(hi + 0x00FA00FA) & 0x01000100                       # hi + 250 < 256
    wide = (hi + cmax + (511 - 255 - _FP8_WINDOW) * 0x10001) & 0x02000200  # hi - lo >= WINDOW + 1
    return over | under | wide


@triton.jit
def _lane_max_and_cmax(b0, b1, b2, b3, b4, b5, b6, b7, ASM: tl.constexpr):
    """Bytes in 16-bit lanes (`0x00XX00XX`) of 8 rows -> their lane maxima and the maxima of their
    complements `255 - b` (255 minus the minima)."""
    m = 0x00FF00FF
    return (max8_u16x2(b0, b1, b2, b3, b4, b5, b6, b7, ASM),
            max8_u16x2(m - b0, m - b1, m - b2, m - b3, m - b4, m - b5, m - b6, m - b7, ASM))


@triton.jit
def _scale_words(xs32, row, wi, step, ok):
    """The scale words (4 blocks each) of every thread's 8 rows at word column `wi` (masked-out words read
    as _NEUTRAL)."""
    off = row * step + wi
    return (tl.load(xs32 + off, mask=ok, other=_NEUTRAL), tl.load(xs32 + off + step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 2 * step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 3 * step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 4 * step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 5 * step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 6 * step, mask=ok, other=_NEUTRAL),
            tl.load(xs32 + off + 7 * step, mask=ok, other=_NEUTRAL))


@triton.jit
def _word_maxima(r0, r1, r2, r3, r4, r5, r6, r7, ASM: tl.constexpr):
    """Scale words of the tile (every thread's 8 rows) -> the tile's largest byte of each of the 4 blocks
    in 16-bit lanes (`even`: blocks 0 and 2, `odd`: 1 and 3) and the largest complements `255 - b` (the
    smallest bytes) likewise, `[2, NW]` each."""
    m = 0x00FF00FF
    e_hi, e_cm = _lane_max_and_cmax(r0 & m, r1 & m, r2 & m, r3 & m, r4 & m, r5 & m, r6 & m, r7 & m, ASM)
    o_hi, o_cm = _lane_max_and_cmax((r0 >> 8) & m, (r1 >> 8) & m, (r2 >> 8) & m, (r3 >> 8) & m,
                                    (r4 >> 8) & m, (r5 >> 8) & m, (r6 >> 8) & m, (r7 >> 8) & m, ASM)
    return (_tile_reduce_max_u16x2(e_hi, ASM), _tile_reduce_max_u16x2(o_hi, ASM),
            _tile_reduce_max_u16x2(e_cm, ASM), _tile_reduce_max_u16x2(o_cm, ASM))


@triton.jit
def _fp8_window(xs_ptr, m0, wbase, K, stride_xs, row, ll, slab, NC: tl.constexpr, ASM: tl.constexpr):
    """Whether every 32-column block of the program's tiles has its scale bytes within the fp16 window
    (see _FP8_WINDOW), from the scale bytes read as words of four blocks: each warp reads the words of its
    own rows (`m0 + row`) and of its own NC chunks of 32 columns (slab `slab`, from word `wbase` on). The
    first word of every row and its block maxima are returned for the fast path:
    `(ok, r0..r7, even, odd)`."""
    NG: tl.constexpr = NC // 4                             # scale words per row and warp
    xs32 = (xs_ptr + m0.to(tl.int64) * stride_xs).to(tl.pointer_type(tl.uint32))
    step = stride_xs // 4
    wi = wbase + NG * slab + 0 * ll                        # [2, 1, 1, NW]
    r0, r1, r2, r3, r4, r5, r6, r7 = _scale_words(xs32, row, wi, step, wi < K // 128)
    even, odd, e_cm, o_cm = _word_maxima(r0, r1, r2, r3, r4, r5, r6, r7, ASM)
    bad = _window_bad(even, e_cm) | _window_bad(odd, o_cm)
    for j in tl.static_range(1, NG):
        q0, q1, q2, q3, q4, q5, q6, q7 = _scale_words(xs32, row, wi + j, step, wi + j < K // 128)
        e_hi, o_hi, e_lo, o_lo = _word_maxima(q0, q1, q2, q3, q4, q5, q6, q7, ASM)
        bad = bad | _window_bad(e_hi, e_lo) | _window_bad(o_hi, o_lo)
    return tl.max(bad) == 0, r0, r1, r2, r3, r4, r5, r6, r7, even, odd


@triton.jit
def _block_bytes(r0, r1, r2, r3, r4, r5, r6, r7, sel, ASM: tl.constexpr):
    """One byte of every thread's 8 scale words (`sel` = 0x4440 + its index) as int32."""
    z = tl.zeros(r0.shape, tl.uint32)
    return (byte_perm(r0, z, sel, ASM).to(tl.int32), byte_perm(r1, z, sel, ASM).to(tl.int32),
            byte_perm(r2, z, sel, ASM).to(tl.int32), byte_perm(r3, z, sel, ASM).to(tl.int32),
            byte_perm(r4, z, sel, ASM).to(tl.int32), byte_perm(r5, z, sel, ASM).to(tl.int32),
            byte_perm(r6, z, sel, ASM).to(tl.int32), byte_perm(r7, z, sel, ASM).to(tl.int32))


@triton.jit
def _e4m3_codes(v, f, ASM: tl.constexpr):
    """fp16 pairs `v * f` (at most 3: the E4M3 value times 2^-7) rounded to the E4M3 grid; the result's
    fp16 bits are `code << 7` (the E4M3 value times 2^-8)."""
    t = fma_f16x2(v, f, tl.full(v.shape, 0x26002600, tl.uint32), ASM)   # + 3 * 2^-7: ulp 2^-16
    return fma_f16x2(t, tl.full(v.shape, 0x38003800, tl.uint32),        # (t - 3 * 2^-7) * 0.5
                     tl.full(v.shape, 0xA200A200, tl.uint32), ASM)


@triton.jit
def _fp8_pack_pair(v0, v1, v2, v3, v4, v5, v6, v7, f, ASM: tl.constexpr):
    """Magnitude pairs of rows 0..7 (`v_r`: columns j and j + 2) and their factor pair `f` -> the output
    words of both columns, rows 0-3 and 4-7 (row r's code in byte r % 4), sign bits clear."""
    z0 = _e4m3_codes(v0, f, ASM) << 1   # codes in bytes 1 and 3
    z1 = _e4m3_codes(v1, f, ASM) << 1
    z2 = _e4m3_codes(v2, f, ASM) << 1
    z3 = _e4m3_codes(v3, f, ASM) << 1
    z4 = _e4m3_codes(v4, f, ASM) << 1
    z5 = _e4m3_codes(v5, f, ASM) << 1
    z6 = _e4m3_codes(v6, f, ASM) << 1
    z7 = _e4m3_codes(v7, f, ASM) << 1
    rows = tl.full(v0.shape, 0x7351, tl.uint32)   # [r j, r' j, r j+2, r' j+2]
    p01 = byte_perm(z0, z1, rows, ASM)
    p23 = byte_perm(z2, z3, rows, ASM)
    p45 = byte_perm(z4, z5, rows, ASM)
    p67 = byte_perm(z6, z7, rows, ASM)
    lo = tl.full(v0.shape, 0x5410, tl.uint32)
    hi = tl.full(v0.shape, 0x7632, tl.uint32)
    return (byte_perm(p01, p23, lo, ASM), byte_perm(p45, p67, lo, ASM),
            byte_perm(p01, p23, hi, ASM), byte_perm(p45, p67, hi, ASM))


@triton.jit
def _byte_columns(w0, w1, w2, w3, ASM: tl.constexpr):
    """Byte transpose of 4 rows' words: four words, byte b of rows 0..3 (columns 2b and 2b + 1 of each
    row; their sign bits at bits 3 and 7 of every byte)."""
    a = byte_perm(w0, w1, tl.full(w0.shape, 0x5140, tl.uint32), ASM)   # bytes 0, 1 of rows 0, 1
    b = byte_perm(w2, w3, tl.full(w0.shape, 0x5140, tl.uint32), ASM)
    c = byte_perm(w0, w1, tl.full(w0.shape, 0x7362, tl.uint32), ASM)   # bytes 2, 3
    d = byte_perm(w2, w3, tl.full(w0.shape, 0x7362, tl.uint32), ASM)
    lo = tl.full(w0.shape, 0x5410, tl.uint32)
    hi = tl.full(w0.shape, 0x7632, tl.uint32)
    return (byte_perm(a, b, lo, ASM), byte_perm(a, b, hi, ASM), byte_perm(c, d, lo, ASM),
            byte_perm(c, d, hi, ASM))


@triton.jit
def _with_signs(code, xb, ODD: tl.constexpr):
    """Output word `code` with the sign bits of its column (from a byte-transposed word `xb`) at bit 7
    of every byte."""
    if ODD:
        return code | (xb & 0x80808080)
    else:
        return code | ((xb << 4) & 0x80808080)


@triton.jit
def _store_column(o64, col, so8, oword, lo, hi, ok, EVEN: tl.constexpr):
    """One column's 8 output bytes of every thread (rows 0-3 in `lo`, 4-7 in `hi`) as one 8-byte store."""
    val = lo.to(tl.uint64) | (hi.to(tl.uint64) << 32)
    if EVEN:
        tl.store(o64 + col * so8 + oword, val)
    else:
        tl.store(o64 + col * so8 + oword, val, mask=ok)


@triton.jit
def _fp8_word(w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, o64, col, so8, oword,
              ok, EVEN: tl.constexpr, ASM: tl.constexpr):
    """The fp16 path for one input word of every thread's 8 rows (`w_r`, scale bytes `s_r`; `bmax` the
    tile's largest scale byte of the block, `[2, NW]`): stores columns `col .. col + 7` and returns their
    scale bytes as two words (columns 0-3 and 4-7, one byte each), `[2, NW]`."""
    bm = bmax[:, None, None, :]
    a0, b0, c0, d0 = e2m1_row_f16x2(w0, s0, bm, ASM)
    a1, b1, c1, d1 = e2m1_row_f16x2(w1, s1, bm, ASM)
    a2, b2, c2, d2 = e2m1_row_f16x2(w2, s2, bm, ASM)
    a3, b3, c3, d3 = e2m1_row_f16x2(w3, s3, bm, ASM)
    a4, b4, c4, d4 = e2m1_row_f16x2(w4, s4, bm, ASM)
    a5, b5, c5, d5 = e2m1_row_f16x2(w5, s5, bm, ASM)
    a6, b6, c6, d6 = e2m1_row_f16x2(w6, s6, bm, ASM)
    a7, b7, c7, d7 = e2m1_row_f16x2(w7, s7, bm, ASM)
    # Column pairs: a = columns (0, 2), b = (1, 3), c = (4, 6), d = (5, 7).
    fa, sca = _fp8_column_pair(max8_u16x2(a0, a1, a2, a3, a4, a5, a6, a7, ASM), bmax, ASM)
    fb, scb = _fp8_column_pair(max8_u16x2(b0, b1, b2, b3, b4, b5, b6, b7, ASM), bmax, ASM)
    fc, scc = _fp8_column_pair(max8_u16x2(c0, c1, c2, c3, c4, c5, c6, c7, ASM), bmax, ASM)
    fd, scd = _fp8_column_pair(max8_u16x2(d0, d1, d2, d3, d4, d5, d6, d7, ASM), bmax, ASM)
    a_lo0, a_hi0, a_lo2, a_hi2 = _fp8_pack_pair(a0, a1, a2, a3, a4, a5, a6, a7, fa[:, None, None, :], ASM)
    b_lo1, b_hi1, b_lo3, b_hi3 = _fp8_pack_pair(b0, b1, b2, b3, b4, b5, b6, b7, fb[:, None, None, :], ASM)
    c_lo4, c_hi4, c_lo6, c_hi6 = _fp8_pack_pair(c0, c1, c2, c3, c4, c5, c6, c7, fc[:, None, None, :], ASM)
    d_lo5, d_hi5, d_lo7, d_hi7 = _fp8_pack_pair(d0, d1, d2, d3, d4, d5, d6, d7, fd[:, None, None, :], ASM)
    x0, x1, x2, x3 = _byte_columns(w0, w1, w2, w3, ASM)   # rows 0-3, bytes 0..3 (columns 2b, 2b + 1)
    y0, y1, y2, y3 = _byte_columns(w4, w5, w6, w7, ASM)   # rows 4-7
    _store_column(o64, col, so8, oword, _with_signs(a_lo0, x0, False), _with_signs(a_hi0, y0, False), ok,
                  EVEN)
    _store_column(o64, col + 1, so8, oword, _with_signs(b_lo1, x0, True), _with_signs(b_hi1, y0, True), ok,
                  EVEN)
    _store_column(o64, col + 2, so8, oword, _with_signs(a_lo2, x1, False), _with_signs(a_hi2, y1, False), ok,
                  EVEN)
    _store_column(o64, col + 3, so8, oword, _with_signs(b_lo3, x1, True), _with_signs(b_hi3, y1, True), ok,
                  EVEN)
    _store_column(o64, col + 4, so8, oword, _with_signs(c_lo4, x2, False), _with_signs(c_hi4, y2, False), ok,
                  EVEN)
    _store_column(o64, col + 5, so8, oword, _with_signs(d_lo5, x2, True), _with_signs(d_hi5, y2, True), ok,
                  EVEN)
    _store_column(o64, col + 6, so8, oword, _with_signs(c_lo6, x3, False), _with_signs(c_hi6, y3, False), ok,
                  EVEN)
    _store_column(o64, col + 7, so8, oword, _with_signs(d_lo7, x3, True), _with_signs(d_hi7, y3, True), ok,
                  EVEN)
    sel = tl.full(sca.shape, 0x6240, tl.uint32)   # the lanes' low bytes of two pairs: [j, j', j + 2, j' + 2]
    return byte_perm(sca, scb, sel, ASM), byte_perm(scc, scd, sel, ASM)


@triton.jit
def _fp8_column_pair(m, bmax, ASM: tl.constexpr):
    """A column pair's maxima over the thread's 8 rows (fp16 bits per lane, `[2, 4, 4, NW]`) -> over the
    tile's 128 rows, then the factor pair F (fp16) and the scale bytes (low byte of each lane), `[2, NW]`."""
    m = _tile_reduce_max_u16x2(m, ASM)
    ef10 = m & 0x7C007C00                                     # exponent fields in place; 0: all-zero column
    cap = (tl.minimum(bmax - 5, 30) * 0x04000400).to(tl.uint32, bitcast=True)  # clamped scale: 2^(bmax - 20)
    f = min_u16x2(0x7C007C00 - ef10, cap, ASM)                # exponent field of F: 31 - ef (or the cap)
    ef = ef10 >> 10
    # scale byte = max(ef + bmax - 36, 0), 0 for an all-zero column; lanes biased by 256
    bias = tl.full(m.shape, 0x01000100, tl.uint32)
    sc = max_u16x2(ef + ((bmax + 220) * 0x10001).to(tl.uint32, bitcast=True), bias, ASM)
    sc = min_u16x2(sc, ef * 255 + bias, ASM)
    return f, sc


@triton.jit
def _f32_fp8_byte(word, scale, inv, J: tl.constexpr):
    """E4M3 byte (sign at bit 7) of column J of `word` requantized with 2^-k = `inv` (exact fp32)."""
    v, sh = e2m1_word_abs_f32(word.to(tl.int32, bitcast=True), scale, J)
    z = ((v * inv + _E4M3_MAGIC) * _TWO_M120 - _E4M3_MAGIC_LOW).to(tl.int32, bitcast=True)  # code << 20
    return (z >> 20) | ((sh >> 18) & 0x80)   # the sign (nibble bit 3) sits at bit 25 of `sh`


@triton.jit
def _f32_fp8_word(w0, w1, w2, w3, f0, f1, f2, f3, inv, J: tl.constexpr):
    """The E4M3 bytes of column J of 4 rows (`w_r`, scales `f_r`), row r in byte r."""
    return (_f32_fp8_byte(w0, f0, inv, J) | (_f32_fp8_byte(w1, f1, inv, J) << 8)
            | (_f32_fp8_byte(w2, f2, inv, J) << 16) | (_f32_fp8_byte(w3, f3, inv, J) << 24))


@triton.jit
def _f32_fp8_column(w0, w1, w2, w3, w4, w5, w6, w7, f0, f1, f2, f3, f4, f5, f6, f7, nan_tile, o64, os_ptr,
                    col, so8, oword, stride_os, pid_m, ok, ok_s, J: tl.constexpr, EVEN: tl.constexpr):
    """Column J of every thread's 8 rows of one word through exact fp32 values (the f32_words kernel's arithmetic):
    tile maximum (in-thread, then the 16 lanes of the tile), scale, codes, one 8-byte store; the scale
    byte is stored by the lanes whose `ok_s` is set."""
    m = tl.maximum(tl.maximum(tl.maximum(e2m1_word_abs_bits(w0, f0, J), e2m1_word_abs_bits(w1, f1, J)),
                              tl.maximum(e2m1_word_abs_bits(w2, f2, J), e2m1_word_abs_bits(w3, f3, J))),
                   tl.maximum(tl.maximum(e2m1_word_abs_bits(w4, f4, J), e2m1_word_abs_bits(w5, f5, J)),
                              tl.maximum(e2m1_word_abs_bits(w6, f6, J), e2m1_word_abs_bits(w7, f7, J))))
    amax = tl.max(tl.max(m, axis=2), axis=1)[:, None, None, :]  # fp32 bits are ordered like |v|
    nan = nan_tile | (amax >= 0x7F800000)
    # k = floor(log2 amax) - 8 (a decoded maximum has significand 1 or 1.5), clamped at -127
    k = tl.maximum((amax >> 23) - 135, -127)
    inv = ((127 - k) << 23).to(tl.float32, bitcast=True)
    lo = tl.where(nan, 0, _f32_fp8_word(w0, w1, w2, w3, f0, f1, f2, f3, inv, J)).to(tl.uint32, bitcast=True)
    hi = tl.where(nan, 0, _f32_fp8_word(w4, w5, w6, w7, f4, f5, f6, f7, inv, J)).to(tl.uint32, bitcast=True)
    _store_column(o64, col, so8, oword, lo, hi, ok, EVEN)
    byte = tl.where(nan, 255, k + 127).to(tl.uint8)
    tl.store(os_ptr + col * stride_os + pid_m + 0 * oword, byte, mask=ok_s)


@triton.jit
def _load_pairs(x64, xs, row, wg, sx8, stride_xs, ok, EVEN: tl.constexpr):
    """Every thread's 8 rows of word pair `wg` (two uint32 words per row, columns 16wg .. 16wg + 15) and
    their scale bytes (block wg // 2)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = load_rows8(x64, row * sx8 + wg, sx8, ok, tl.uint64, EVEN)
    s0, s1, s2, s3, s4, s5, s6, s7 = load_rows8(xs, row * stride_xs + wg // 2, stride_xs, ok, tl.int32, EVEN)
    return v0, v1, v2, v3, v4, v5, v6, v7, s0, s1, s2, s3, s4, s5, s6, s7


@triton.jit
def _low(v):
    return (v & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def _high(v):
    return (v >> 32).to(tl.uint32)


@triton.jit
def _tile_max(s0, s1, s2, s3, s4, s5, s6, s7):
    """Largest scale byte of the tile's 128 rows (the thread's 8, then the g and q lanes): `[2, NW]`."""
    m = tl.maximum(tl.maximum(tl.maximum(s0, s1), tl.maximum(s2, s3)),
                   tl.maximum(tl.maximum(s4, s5), tl.maximum(s6, s7)))
    return tl.max(tl.max(m, axis=2), axis=1)


@triton.jit
def _fp8_chunk(v0, v1, v2, v3, v4, v5, v6, v7, r0, r1, r2, r3, r4, r5, r6, r7, even, odd, b, o64, col, so8, oword,
               ok, lane, EVEN: tl.constexpr, ASM: tl.constexpr):
    """The fp16 path for one chunk: every thread's 8 rows of a word pair (`v_r`, columns `col` ..
    `col + 15`), whose scales are byte `b` of the scale words `r_r` (block maxima `even` / `odd`, as
    `_word_maxima` gives them). Stores the 16 columns and returns the scale byte of column `col + lane`
    in the low byte of every lane's word (the other bytes are not zero)."""
    bmax = ((tl.where(b % 2 == 1, odd, even) >> (16 * (b // 2))) & 0xFF).to(tl.int32)  # [2, NW]
    sel = tl.full(v0.shape, 0x4440, tl.uint32) + b
    s0, s1, s2, s3, s4, s5, s6, s7 = _block_bytes(r0, r1, r2, r3, r4, r5, r6, r7, sel, ASM)
    e03, e47 = _fp8_word(_low(v0), _low(v1), _low(v2), _low(v3), _low(v4), _low(v5), _low(v6), _low(v7),
                         s0, s1, s2, s3, s4, s5, s6, s7, bmax, o64, col, so8, oword, ok, EVEN, ASM)
    n03, n47 = _fp8_word(_high(v0), _high(v1), _high(v2), _high(v3), _high(v4), _high(v5), _high(v6),
                         _high(v7), s0, s1, s2, s3, s4, s5, s6, s7, bmax, o64, col + 8, so8, oword, ok, EVEN,
                         ASM)
    sel = tl.broadcast_to((lane & 7).to(tl.uint32), v0.shape)
    first = byte_perm(tl.broadcast_to(e03[:, None, None, :], v0.shape),
                      tl.broadcast_to(e47[:, None, None, :], v0.shape), sel, ASM)
    second = byte_perm(tl.broadcast_to(n03[:, None, None, :], v0.shape),
                       tl.broadcast_to(n47[:, None, None, :], v0.shape), sel, ASM)
    return tl.where(lane >= 8, second, first)


@triton.jit
def _f32_fp8_chunk(x64, xs, row, wg, sx8, stride_xs, o64, os_ptr, so8, oword, stride_os, tile, ok, ok_s,
                   EVEN: tl.constexpr):
    """The exact fp32 fallback for one chunk: every thread's 8 rows of word pair `wg` (scale bytes loaded
    here), one column at a time; the scale bytes go to column `tile` of the scales, from the lanes whose
    `ok_s` is set."""
    v0, v1, v2, v3, v4, v5, v6, v7, s0, s1, s2, s3, s4, s5, s6, s7 = _load_pairs(x64, xs, row, wg, sx8,
                                                                                 stride_xs, ok, EVEN)
    nan_tile = _tile_max(s0, s1, s2, s3, s4, s5, s6, s7)[:, None, None, :] == 255
    f0, f1, f2, f3 = e8m0_f32(s0), e8m0_f32(s1), e8m0_f32(s2), e8m0_f32(s3)
    f4, f5, f6, f7 = e8m0_f32(s4), e8m0_f32(s5), e8m0_f32(s6), e8m0_f32(s7)
    col = (16 * wg).to(tl.int64)
    for jj in tl.static_range(8):
        _f32_fp8_column(_low(v0), _low(v1), _low(v2), _low(v3), _low(v4), _low(v5), _low(v6), _low(v7),
                        f0, f1, f2, f3, f4, f5, f6, f7, nan_tile, o64, os_ptr, col + jj, so8, oword, stride_os,
                        tile, ok, ok_s, jj, EVEN)
    for jj in tl.static_range(8):
        _f32_fp8_column(_high(v0), _high(v1), _high(v2), _high(v3), _high(v4), _high(v5), _high(v6),
                        _high(v7), f0, f1, f2, f3, f4, f5, f6, f7, nan_tile, o64, os_ptr, col + 8 + jj, so8,
                        oword, stride_os, tile, ok, ok_s, jj, EVEN)


@triton.jit
def _mxfp4_rowwise_to_fp8_colwise_f16x2_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                               stride_x, stride_xs, stride_o, stride_os,
                                               BLOCK_K: tl.constexpr, NW: tl.constexpr, EVEN: tl.constexpr,
                                               ASM: tl.constexpr):
    # One program: rows [128*pid_m, +128) x columns [BLOCK_K*pid_k, +BLOCK_K), 32 * NW columns (2 * NW
    # word pairs) at a time. Indices run backwards along every axis so that none looks contiguous: every
    # load and store then keeps the one register layout (no shared-memory exchanges).
    NC: tl.constexpr = BLOCK_K // (32 * NW)
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    m0 = pid_m * 128
    x64 = (x_ptr + m0.to(tl.int64) * stride_x).to(tl.pointer_type(tl.uint64))
    xs = xs_ptr + m0.to(tl.int64) * stride_xs
    o64 = o_ptr.to(tl.pointer_type(tl.uint64))
    ll = 1 - tl.arange(0, 2)[:, None, None, None]
    gg = 3 - tl.arange(0, 4)[None, :, None, None]
    qq = 3 - tl.arange(0, 4)[None, None, :, None]
    hh = NW - 1 - tl.arange(0, NW)[None, None, None, :]
    wp = ll + 2 * hh                                   # [2, 1, 1, NW]: word pair of the chunk
    row = 32 * qq + 8 * gg                             # [1, 4, 4, 1]: first of the thread's 8 rows
    lane = 4 * qq + gg                                 # the column (of 16) whose scale byte a lane stores
    oword = (m0 + row) // 8                            # output 8-byte word of the thread's rows
    sx8 = stride_x // 8
    so8 = stride_o // 8
    w_end = K // 16
    fast, r0, r1, r2, r3, r4, r5, r6, r7, even, odd = _fp8_window(xs_ptr, m0, pid_k * (BLOCK_K // 128), K,
                                                                  stride_xs, row, ll, hh, NC, ASM)
    if fast:
        # Warp hh converts the NC chunks of its own BLOCK_K / NW columns, so that one scale word of each
        # row serves 4 chunks (the window check's words serve the first 4).
        wg = pid_k * (BLOCK_K // 16) + 2 * NC * hh + ll
        ok = wg < w_end
        v0, v1, v2, v3, v4, v5, v6, v7 = load_rows8(x64, row * sx8 + wg, sx8, ok, tl.uint64, EVEN)
        for c in range(NC):
            # The next chunk is loaded before this one is converted (the last chunk reloads itself, an
            # L1 hit), so its latency overlaps the arithmetic.
            wn = wg + 2 * (tl.minimum(c + 1, NC - 1) - c)
            okn = wn < w_end
            p0, p1, p2, p3, p4, p5, p6, p7 = load_rows8(x64, row * sx8 + wn, sx8, okn, tl.uint64, EVEN)
            if NC > 4:
                if (c % 4 == 0) & (c > 0):   # the next scale word of every row
                    wi = pid_k * (BLOCK_K // 128) + (hh * NC + c) // 4 + 0 * ll
                    r0, r1, r2, r3, r4, r5, r6, r7 = _scale_words(
                        (xs_ptr + m0.to(tl.int64) * stride_xs).to(tl.pointer_type(tl.uint32)), row, wi,
                        stride_xs // 4, wi < K // 128)
                    even, odd, e_cm, o_cm = _word_maxima(r0, r1, r2, r3, r4, r5, r6, r7, ASM)
            col = (16 * wg).to(tl.int64)
            # Lane `lane` stores the scale byte of column 16 wg + lane.
            byte = _fp8_chunk(v0, v1, v2, v3, v4, v5, v6, v7, r0, r1, r2, r3, r4, r5, r6, r7, even, odd, c % 4,
                              o64, col, so8, oword, ok, lane, EVEN, ASM).to(tl.uint8)
            sptr = os_ptr + (col + lane) * stride_os + pid_m
            if EVEN:
                tl.store(sptr, byte)
            else:
                tl.store(sptr, byte, mask=ok)
            v0, v1, v2, v3, v4, v5, v6, v7 = p0, p1, p2, p3, p4, p5, p6, p7
            wg = wn
            ok = okn
    else:
        # Wide-range, tiny, NaN or Inf blocks in this tile: exact fp32 values, one column at a time.
        for c in range(NC):
            wg = pid_k * (BLOCK_K // 16) + c * 2 * NW + wp
            ok = wg < w_end
            ok_s = ok & (lane == 0)
            _f32_fp8_chunk(x64, xs, row, wg, sx8, stride_xs, o64, os_ptr, so8, oword, stride_os, pid_m, ok,
                           ok_s, EVEN)


@triton.jit
def _mxfp4_rowwise_to_fp8_colwise_f16x2_tiles_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                                     stride_x, stride_xs, stride_o, stride_os,
                                                     T: tl.constexpr, S: tl.constexpr, WORD: tl.constexpr,
                                                     ASM: tl.constexpr):
    # One program: T tiles of 128 rows x S slabs of 128 columns, one warp each (warp h: tile h // S,
    # slab h % S), the f16x2 kernel's arithmetic per warp. The T tiles' scale bytes of a column are adjacent in
    # the output, so they leave as one T-byte word (type WORD) per column instead of T one-byte stores,
    # each a separate L2 write. Needs M % (128 T) == 0 and K % (128 S) == 0 (no masks).
    NW: tl.constexpr = T * S
    R: tl.constexpr = 4 if NW == 1 else (8 // NW if NW <= 4 else 1)   # chunks per gathering of scale bytes
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    m0 = pid_m * (128 * T)
    x64 = (x_ptr + m0.to(tl.int64) * stride_x).to(tl.pointer_type(tl.uint64))
    xs = xs_ptr + m0.to(tl.int64) * stride_xs
    o64 = o_ptr.to(tl.pointer_type(tl.uint64))
    osw = os_ptr.to(tl.pointer_type(WORD))
    ll = 1 - tl.arange(0, 2)[:, None, None, None]
    gg = 3 - tl.arange(0, 4)[None, :, None, None]
    qq = 3 - tl.arange(0, 4)[None, None, :, None]
    hh = NW - 1 - tl.arange(0, NW)[None, None, None, :]
    tt = hh // S                                       # [1, 1, 1, NW]: the warp's tile
    slab = hh % S                                      # and its 128 columns
    row = 128 * tt + 32 * qq + 8 * gg                  # [1, 4, 4, NW]: first of the thread's 8 rows
    lane = 4 * qq + gg                                 # [1, 4, 4, 1]: the column (of 16) whose scale a lane stores
    oword = (m0 + row) // 8
    sx8 = stride_x // 8
    so8 = stride_o // 8
    true = row >= 0
    fast, r0, r1, r2, r3, r4, r5, r6, r7, even, odd = _fp8_window(xs_ptr, m0, pid_k * S, K, stride_xs, row,
                                                                  ll, slab, 4, ASM)
    if fast:
        wg = pid_k * (8 * S) + 8 * slab + ll           # [2, 1, 1, NW]: the thread's word pair
        v0, v1, v2, v3, v4, v5, v6, v7 = load_rows8(x64, row * sx8 + wg, sx8, true, tl.uint64, True)
        acc = tl.zeros(v0.shape, tl.uint64)
        for c in range(4):
            wn = wg + 2 * (tl.minimum(c + 1, 3) - c)   # next chunk (the last one reloads itself)
            p0, p1, p2, p3, p4, p5, p6, p7 = load_rows8(x64, row * sx8 + wn, sx8, true, tl.uint64, True)
            byte = _fp8_chunk(v0, v1, v2, v3, v4, v5, v6, v7, r0, r1, r2, r3, r4, r5, r6, r7, even, odd, c,
                              o64, (16 * wg).to(tl.int64), so8, oword, true, lane, True, ASM) & 0xFF
            # Warp h's byte of chunk c goes to byte NW (c % R) + tt + T slab of a 64-bit word; every R
            # chunks a sum over the warps gathers them, and each slab's T bytes of a chunk are one store.
            acc = acc | (byte.to(tl.uint64) << (8 * (NW * (c % R) + tt + T * slab)).to(tl.uint64))
            if c % R == R - 1:
                word = tl.sum(acc, axis=3, keep_dims=True)
                for cc in tl.static_range(R):
                    for sj in tl.static_range(S):
                        col1 = 16 * (pid_k * (8 * S) + 8 * sj + 2 * (c - (R - 1) + cc) + ll).to(tl.int64)
                        part = (word >> (8 * (NW * cc + T * sj))).to(WORD)
                        tl.store(osw + (col1 + lane) * (stride_os // T) + pid_m, part)   # [2, 4, 4, 1]
                acc = tl.zeros(acc.shape, tl.uint64)
            v0, v1, v2, v3, v4, v5, v6, v7 = p0, p1, p2, p3, p4, p5, p6, p7
            wg = wn
    else:
        # Wide-range, tiny, NaN or Inf blocks in the program's tiles: the f16x2 kernel's exact fp32 fallback.
        tile = pid_m * T + tt                           # the scale column of the warp's tile
        ok_s = lane == 0
        for c in range(4):
            wg = pid_k * (8 * S) + 8 * slab + 2 * c + ll
            _f32_fp8_chunk(x64, xs, row, wg, sx8, stride_xs, o64, os_ptr, so8, oword, stride_os, tile, true,
                           ok_s, True)


_TILE_WORDS = {1: tl.uint8, 2: tl.uint16, 4: tl.uint32, 8: tl.uint64}   # a column's scale bytes of a program
_PARTIAL_CONFIG = LaunchConfig(128, 1024, 8, "f16x2")    # where f16x2_tiles does not apply


def _f16x2_fits(x: torch.Tensor, xs: torch.Tensor, K: int) -> bool:
    """The f16x2 kernels read the codes as 8-byte words and the scales as 4-byte words, whole within each row."""
    return (K % 128 == 0 and x.stride(0) % 8 == 0 and x.data_ptr() % 8 == 0
            and xs.stride(0) % 4 == 0 and xs.data_ptr() % 4 == 0)


def mxfp4_rowwise_to_fp8_colwise_triton(t: MXFP4Tensor, *, config: LaunchConfig | None = None) -> FP8Tensor:
    """MXFP4 row-wise `[M, K]` -> FP8 tiles of the transposed `[K, M]` matrix, one Triton pass
    (contract and argument checks: `mxa2a.quant.conversions.mxfp4_rowwise_to_fp8_colwise`). `config`:
    launch configuration (default `launch.CONFIGS["mxfp4_rowwise_to_fp8_colwise"]`). Asynchronous on the
    current CUDA stream (no host sync)."""
    cfg = pick_config("mxfp4_rowwise_to_fp8_colwise", config)
    variant = cfg.variant
    tiles, slabs = cfg.block_m // 128, cfg.block_k // 128
    if variant == "f16x2_tiles" and (cfg.block_m % 128 or cfg.block_k % 128 or tiles * slabs != cfg.num_warps
                                     or tiles not in _TILE_WORDS or cfg.num_warps > 8):
        raise ValueError(f"mxfp4_rowwise_to_fp8_colwise: variant 'f16x2_tiles' needs block_m = 128 * T, "
                         f"block_k = 128 * S and num_warps = T * S <= 8 with T in 1, 2, 4, 8, got config = {cfg}")
    if variant == "f16x2" and cfg.block_k % (128 * cfg.num_warps):
        raise ValueError(f"mxfp4_rowwise_to_fp8_colwise: variant 'f16x2' needs block_k a multiple of "
                         f"128 * num_warps, got config = {cfg}")
    x = rows_in(t.data)
    xs = rows_in(t.scales)
    M, K = x.shape[0], x.shape[1] * 2
    out = FP8Tensor(torch.empty(K, M, dtype=E4M3_DTYPE, device=t.device),
                    torch.empty(K, M // FP8_TILE, dtype=torch.uint8, device=t.device))
    if M == 0 or K == 0:
        return out
    o = out.data.view(torch.uint8)
    args = (x, xs, o, out.scales, M, K, x.stride(0), xs.stride(0), o.stride(0), out.scales.stride(0))
    if variant == "f16x2_tiles":
        if M % cfg.block_m == 0 and K % cfg.block_k == 0 and _f16x2_fits(x, xs, K):
            _mxfp4_rowwise_to_fp8_colwise_f16x2_tiles_kernel[(M // cfg.block_m, K // cfg.block_k)](
                *args, T=tiles, S=slabs, WORD=_TILE_WORDS[tiles], ASM=use_asm(), num_warps=cfg.num_warps)
            return out
        cfg, variant = _PARTIAL_CONFIG, "f16x2"   # fewer rows or columns than a whole program, or unaligned words
    if variant == "f16x2" and not _f16x2_fits(x, xs, K):
        variant = "f32_words"
    if variant == "f32_words" and (x.stride(0) % 4 or x.data_ptr() % 4):
        variant = "planes"  # f32_words reads int32 words
    grid = (M // FP8_TILE, triton.cdiv(K, cfg.block_k))
    if variant == "f16x2":
        _mxfp4_rowwise_to_fp8_colwise_f16x2_kernel[grid](*args, BLOCK_K=cfg.block_k, NW=cfg.num_warps,
                                                         EVEN=K % cfg.block_k == 0, ASM=use_asm(),
                                                         num_warps=cfg.num_warps)
    elif variant == "f32_words":  # EVEN: no column masks
        _mxfp4_rowwise_to_fp8_colwise_f32_words_kernel[grid](*args, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                                                             EVEN=K % cfg.block_k == 0)
    else:
        _mxfp4_rowwise_to_fp8_colwise_planes_kernel[grid](*args, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out
