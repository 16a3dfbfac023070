"""`mxfp4_rowwise_to_colwise`: MXFP4 row-wise `[M, K]` -> MXFP4 blocks of `[K, M]` (32x32 tiles).

Equals `quantize_mxfp4(dequantize_mxfp4(x, fp32).T)` bit for bit. Kernels (`variant`):
- "f16x2_smem" (default; whole programs): packed fp16 arithmetic, two values per register, in
      tensors [8, 4, RB]: word w (8 lanes) x 8-row group g (4 lanes) x 32-row block q (warps)
      thread (w, g, q) holds rows 32q + 8g .. +7 of word w: 8 rows x 8 columns, 8 uint32
  so a block's column maximum is in-thread then 2 shuffle rounds. The 8 output words of a 64-column
  chunk (8 rows of one column each) are joined into [64, BLOCK_M / 8] and stored through shared memory
  as whole output lines; the program's scale bytes are loaded once and passed between lanes.
- "f16x2": the same arithmetic with masks (partial programs), stored from its compute layout.
- "planes": fp32 on the even / odd nibble planes, only output bytes transposed; rows not 4-byte aligned.
The fp16 path holds where a 32-row block's scale bytes lie within _F16_WINDOW of each other and below
253; a program with any other block converts its tile in exact fp32 instead (`_f32_tile`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in
from ..formats import MXFP4_BLOCK, MXFP4Tensor
from .byteperm import byte_perm, use_asm
from .launch import LaunchConfig, pick_config
from .minifloat import (e2m1_abs_f32, e2m1_round, e2m1_row_f16x2, e2m1_word_abs_bits, e2m1_word_abs_f32,
                        e8m0_f32, load_e2m1_planes, load_rows8, max8_u16x2, pow2_f32)
from .simd16 import fma_f16x2, max_u16x2, min_u16x2, reduce_max_u16x2


# --- planes: fp32 values on the even / odd nibble planes, only the output bytes transposed ------------

@triton.jit
def _mxfp4_colwise_plane(code, scale, nan, o_ptr, os_ptr, pid_m, pid_k, plane, M, K, stride_o, stride_os,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Quantizes one code plane `[BLOCK_M, BLOCK_K/2]` column-wise (32-row blocks) in the input layout,
    packs row pairs into bytes, transposes only those bytes and stores output rows 2*col + plane."""
    HK: tl.constexpr = BLOCK_K // 2
    NM: tl.constexpr = BLOCK_M // 32
    v = tl.reshape(e2m1_abs_f32(code & 7) * scale, (NM, 32, HK))
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=1)  # [NM, HK]; fp32 bits are ordered like |v|
    nan_blk = (amax >= 0x7F800000) | (tl.max(tl.reshape(nan, (NM, 32, HK)), axis=1) > 0)
    # A decoded maximum has significand 1 or 1.5, never above 1.5: floor and rceil both give f - 2.
    e = tl.where(amax < 0x800000, -127, (amax >> 23) - 129)
    e = tl.minimum(tl.maximum(e, -127), 127)
    c = e2m1_round(v * pow2_f32(-e)[:, None, :]) | tl.reshape(code & 8, (NM, 32, HK))
    c = tl.where(nan_blk[:, None, :], 0, c)
    # Output byte (k, m/2) holds rows m (low nibble) and m + 1 (high nibble): a weighted pair sum.
    w = (1 + 15 * tl.arange(0, 2))[None, :, None]
    pk = tl.sum(tl.reshape(c, (BLOCK_M // 2, 2, HK)) * w, axis=1).to(tl.uint8)  # [BLOCK_M/2, HK]
    kk = 2 * (pid_k * HK + tl.arange(0, HK)) + plane
    k64 = kk.to(tl.int64)
    k_ok = kk < K
    ocols = pid_m * (BLOCK_M // 2) + tl.arange(0, BLOCK_M // 2)
    tl.store(o_ptr + k64[:, None] * stride_o + ocols[None, :], tl.trans(pk),
             mask=k_ok[:, None] & (ocols < M // 2)[None, :])
    oblk = pid_m * NM + tl.arange(0, NM)
    tl.store(os_ptr + k64[:, None] * stride_os + oblk[None, :],
             tl.trans(tl.where(nan_blk, 255, e + 127).to(tl.uint8)),
             mask=k_ok[:, None] & (oblk < M // 32)[None, :])


@triton.jit
def _mxfp4_rowwise_to_colwise_planes_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                            stride_x, stride_xs, stride_o, stride_os,
                                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    lo, hi, scale, nan = load_e2m1_planes(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                          BLOCK_M, BLOCK_K)
    _mxfp4_colwise_plane(lo, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 0, M, K, stride_o, stride_os,
                         BLOCK_M, BLOCK_K)
    _mxfp4_colwise_plane(hi, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 1, M, K, stride_o, stride_os,
                         BLOCK_M, BLOCK_K)


# --- the f16x2 kernels' exact fp32 fallback: codes requantized as fp32 bit patterns `code << 22` -------
_TWO_M126 = tl.constexpr(1.1754943508222875e-38)   # 2^-126
_E2M1_MAGIC = tl.constexpr(6291456.0)              # 1.5 * 2^22: ulp 0.5, the E2M1 spacing below 2
_E2M1_MAGIC_LOW = tl.constexpr(7.395570986446986e-32)  # 1.5 * 2^22 * 2^-126


@triton.jit
def _e2m1_code_bits(v, inv, sh):
    """|v| (fp32) requantized with 2^-e = `inv` -> fp32 bits `code << 22`, the sign taken from bit 25 of
    `sh` (the shifted input word). v * 2^-e <= 6 is exact; + 1.5 * 2^22 rounds it to a multiple of 1/2
    (RNE), which is the E2M1 grid below 2 and leaves the exact values from 1 up alone; (t - C) * 2^-126
    then has fp32 bits code << 22."""
    z = (v * inv + _E2M1_MAGIC) * _TWO_M126 - _E2M1_MAGIC_LOW
    return z.to(tl.int32, bitcast=True) | (sh & 0x2000000)


# --- f16x2 and f16x2_smem: packed fp16 arithmetic, two values per instruction ---------------------------
# In a 32-row block whose scale bytes lie within _F16_WINDOW of each other (and below 253, so nothing is
# NaN or Inf), every decoded value is E2M1(c) * 2^(b - bmax + 13), a normal fp16 number that a byte
# permute looks up in a per-row table (`e2m1_row_f16x2`). Column maxima are 16-bit maxima of those
# patterns (`max.u16x2`, over the thread's rows, then the 4 lanes of the block); the maximum's exponent
# gives the scale byte and the factor F = 2^(2 - floor(log2 max)) (or the scale-byte-0 clamp), and two
# fp16 FMAs per pair give (RNE(v * F) on the E2M1 grid) * 2^-14, whose bits are `code << 9`. Byte
# permutes gather 8 rows' codes into output words; the signs go through an 8 x 8 nibble transpose.
_F16_WINDOW = tl.constexpr(25)  # largest scale-byte spread of a 32-row block on the fp16 path


@triton.jit
def _f16_codes(v, f, ASM: tl.constexpr):
    """fp16 pairs `v * f` (at most 6) rounded to the E2M1 grid; the result's fp16 bits are `code << 9`."""
    t = fma_f16x2(v, f, tl.full(v.shape, 0x62006200, tl.uint32), ASM)  # + 768: ulp 0.5, the E2M1 grid below 2
    return fma_f16x2(t, tl.full(v.shape, 0x04000400, tl.uint32), tl.full(v.shape, 0xAA00AA00, tl.uint32),
                     ASM)                                             # (t - 768) * 2^-14


@triton.jit
def _f16_pack_pair(v0, v1, v2, v3, v4, v5, v6, v7, f, ASM: tl.constexpr):
    """Magnitude pairs of rows 0..7 (`v_r`) and their factor pair `f` -> the two output words (one per
    lane's column), row r's code in nibble r, sign bits clear."""
    z0, z1, z2, z3 = (_f16_codes(v0, f, ASM), _f16_codes(v1, f, ASM), _f16_codes(v2, f, ASM),
                      _f16_codes(v3, f, ASM))
    z4, z5, z6, z7 = (_f16_codes(v4, f, ASM), _f16_codes(v5, f, ASM), _f16_codes(v6, f, ASM),
                      _f16_codes(v7, f, ASM))
    sel = tl.full(z0.shape, 0x7351, tl.uint32)  # byte 1 (lane 0's code << 1) and byte 3 of two rows
    q = byte_perm(z0, z2, sel, ASM) + byte_perm(z1, z3, sel, ASM) * 16  # rows 0-3: [01, 23, 01', 23']
    r = byte_perm(z4, z6, sel, ASM) + byte_perm(z5, z7, sel, ASM) * 16  # rows 4-7
    lo = byte_perm(q, r, tl.full(z0.shape, 0x5410, tl.uint32), ASM) >> 1
    hi = byte_perm(q, r, tl.full(z0.shape, 0x7632, tl.uint32), ASM) >> 1
    return lo, hi


@triton.jit
def _sign_columns(c0, c1):
    """Stage 3 of the nibble transpose, sign bits only: bytes `c0` = rows 0, 2, 4, 6 and `c1` = rows 1, 3,
    5, 7 (column pair in the low / high nibble) -> sign bits of the two columns, row r at bit 4r + 3."""
    lo = (c0 & 0x08080808) | ((c1 << 4) & 0x80808080)
    hi = ((c0 >> 4) & 0x08080808) | (c1 & 0x80808080)
    return lo, hi


@triton.jit
def _sign_transpose(w0, w1, w2, w3, w4, w5, w6, w7, ASM: tl.constexpr):
    """8 x 8 nibble transpose of the input words (row r = `w_r`, column j = nibble j), sign bits only:
    eight words, column j's, with row r's sign at bit 4r + 3."""
    lo = tl.full(w0.shape, 0x5410, tl.uint32)
    hi = tl.full(w0.shape, 0x7632, tl.uint32)
    even = tl.full(w0.shape, 0x6240, tl.uint32)
    odd = tl.full(w0.shape, 0x7351, tl.uint32)
    # Stage 1: 16-bit halves of rows r and r + 4 (columns 0-3 in a*, 4-7 in b*).
    a0 = byte_perm(w0, w4, lo, ASM)
    a1 = byte_perm(w1, w5, lo, ASM)
    a2 = byte_perm(w2, w6, lo, ASM)
    a3 = byte_perm(w3, w7, lo, ASM)
    b0 = byte_perm(w0, w4, hi, ASM)
    b1 = byte_perm(w1, w5, hi, ASM)
    b2 = byte_perm(w2, w6, hi, ASM)
    b3 = byte_perm(w3, w7, hi, ASM)
    # Stage 2: bytes of rows r, r + 2, r + 4, r + 6 for one column pair; stage 3: nibbles.
    s0, s1 = _sign_columns(byte_perm(a0, a2, even, ASM), byte_perm(a1, a3, even, ASM))
    s2, s3 = _sign_columns(byte_perm(a0, a2, odd, ASM), byte_perm(a1, a3, odd, ASM))
    s4, s5 = _sign_columns(byte_perm(b0, b2, even, ASM), byte_perm(b1, b3, even, ASM))
    s6, s7 = _sign_columns(byte_perm(b0, b2, odd, ASM), byte_perm(b1, b3, odd, ASM))
    return s0, s1, s2, s3, s4, s5, s6, s7


@triton.jit
def _block_max(s0, s1, s2, s3, s4, s5, s6, s7):
    """Largest scale byte of each 32-row block (the thread's 8 rows, then the 4 lanes of g): `[., RB]`."""
    return tl.max(tl.maximum(tl.maximum(tl.maximum(s0, s1), tl.maximum(s2, s3)),
                             tl.maximum(tl.maximum(s4, s5), tl.maximum(s6, s7))), axis=1)


@triton.jit
def _f16_column_pair(m, bmax, ASM: tl.constexpr):
    """A column pair's maxima over the thread's rows (fp16 bits per lane, `[4, 4, RB]`) -> over the
    32-row block (the 4 lanes of g), then the factor pair F (fp16) and the scale bytes (low byte of each
    lane), `[4, RB]`."""
    m = reduce_max_u16x2(m, 1, ASM)
    ef10 = m & 0x7C007C00                                   # exponent fields in place; 0: all-zero column
    cap = (tl.minimum(bmax + 2, 30) * 0x04000400).to(tl.uint32, bitcast=True)  # scale byte 0: e = -127
    f = min_u16x2(0x80008000 - ef10, cap, ASM)              # exponent field of F: 32 - ef (or the cap)
    ef = ef10 >> 10
    # scale byte = max(ef + bmax - 30, 0), 0 for an all-zero column; lanes biased by 256
    bias = tl.full(m.shape, 0x01000100, tl.uint32)
    sc = max_u16x2(ef + ((bmax + 226) * 0x10001).to(tl.uint32, bitcast=True), bias, ASM)
    sc = min_u16x2(sc, ef * 255 + bias, ASM)
    return f, sc


@triton.jit
def _f16_window_ok(xs_ptr, m0, pid_k, M, K, stride_xs, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                   EVEN: tl.constexpr):
    """1 if every 32-row block of the program's tile has scale bytes below 253 and within _F16_WINDOW
    of each other (the fp16 path is exact there), else 0: one pass over the tile's scale bytes (EVEN: a
    whole tile, unmasked loads that Triton vectorizes)."""
    NB: tl.constexpr = BLOCK_K // 32
    rows = m0 + tl.arange(0, BLOCK_M)
    blks = pid_k * NB + tl.arange(0, NB)
    ptrs = xs_ptr + rows.to(tl.int64)[:, None] * stride_xs + blks[None, :]
    if EVEN:
        sb = tl.load(ptrs).to(tl.int32)
    else:
        sb = tl.load(ptrs, mask=(rows < M)[:, None] & (blks < K // 32)[None, :], other=0).to(tl.int32)
    sb = tl.reshape(sb, (BLOCK_M // 32, 32, NB))
    hi = tl.max(sb, axis=1)
    lo = tl.min(sb, axis=1)
    return tl.min(((hi <= 252) & (hi - lo <= _F16_WINDOW)).to(tl.int32))


@triton.jit
def _mxfp4_rowwise_to_colwise_f16x2_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                           stride_x, stride_xs, stride_o, stride_os,
                                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr,
                                           ASM: tl.constexpr):
    # One program: rows [BLOCK_M*pid_m, +BLOCK_M) x columns [BLOCK_K*pid_k, +BLOCK_K), 64 columns (8
    # words) at a time. Indices run backwards along every axis so that none looks contiguous: every load
    # and store then keeps the one register layout (no shared-memory exchanges).
    RB: tl.constexpr = BLOCK_M // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    m0 = pid_m * BLOCK_M
    x32 = (x_ptr + m0.to(tl.int64) * stride_x).to(tl.pointer_type(tl.uint32))
    xs = xs_ptr + m0.to(tl.int64) * stride_xs
    o32 = o_ptr.to(tl.pointer_type(tl.int32))
    qq = RB - 1 - tl.arange(0, RB)[None, None, :]
    gg = 3 - tl.arange(0, 4)[None, :, None]
    row = 32 * qq + 8 * gg                                        # [1, 4, RB]: first row of the group
    row_ok = m0 + row < M
    oword = m0 // 8 + row // 8                                    # output word of the group's 8 rows
    oblk = m0 // 32 + qq                                          # output block (32 rows)
    first = (gg == 3) & (m0 + 32 * qq < M)                        # one lane per block stores its scales
    sx = stride_x // 4
    so = stride_o // 4
    if _f16_window_ok(xs_ptr, m0, pid_k, M, K, stride_xs, BLOCK_M, BLOCK_K, EVEN) == 1:
        w = pid_k * (BLOCK_K // 8) + 2 * (3 - tl.arange(0, 4)[:, None, None])  # [4, 1, 1]: even words
        ok = row_ok & (w < K // 8)           # K / 8 is even: words w and w + 1 are both in or both out
        e0, e1, e2, e3, e4, e5, e6, e7 = load_rows8(x32, row * sx + w, sx, ok, tl.uint32, EVEN)
        n0, n1, n2, n3, n4, n5, n6, n7 = load_rows8(x32, row * sx + w + 1, sx, ok, tl.uint32, EVEN)
        s0, s1, s2, s3, s4, s5, s6, s7 = load_rows8(xs, row * stride_xs + w // 4, stride_xs, ok, tl.int32,
                                                    EVEN)  # one scale block (w // 4) for both words
        for c in range(BLOCK_K // 64):
            # The next chunk's words are loaded before this one is converted (the last chunk reloads
            # itself, an L1 hit), so their latency overlaps the arithmetic.
            wn = w + 8 * (tl.minimum(c + 1, BLOCK_K // 64 - 1) - c)
            okn = row_ok & (wn < K // 8)
            p0, p1, p2, p3, p4, p5, p6, p7 = load_rows8(x32, row * sx + wn, sx, okn, tl.uint32, EVEN)
            q0, q1, q2, q3, q4, q5, q6, q7 = load_rows8(x32, row * sx + wn + 1, sx, okn, tl.uint32, EVEN)
            t0, t1, t2, t3, t4, t5, t6, t7 = load_rows8(xs, row * stride_xs + wn // 4, stride_xs, okn, tl.int32,
                                                        EVEN)
            okb = first & (w < K // 8)
            bmax = _block_max(s0, s1, s2, s3, s4, s5, s6, s7)        # [4, RB]
            col = (8 * w).to(tl.int64)                                # output row of column 8w
            _f16_word(e0, e1, e2, e3, e4, e5, e6, e7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, o32, os_ptr,
                      col, so, stride_os, oword, oblk, ok, okb, EVEN, ASM)
            _f16_word(n0, n1, n2, n3, n4, n5, n6, n7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, o32, os_ptr,
                      col + 8, so, stride_os, oword, oblk, ok, okb, EVEN, ASM)
            e0, e1, e2, e3, e4, e5, e6, e7 = p0, p1, p2, p3, p4, p5, p6, p7
            n0, n1, n2, n3, n4, n5, n6, n7 = q0, q1, q2, q3, q4, q5, q6, q7
            s0, s1, s2, s3, s4, s5, s6, s7 = t0, t1, t2, t3, t4, t5, t6, t7
            w = wn
            ok = okn
    else:
        _f32_tile(x32, xs, o32, os_ptr, pid_k, K, sx, so, stride_xs, stride_os, row, row_ok, oword, oblk, first,
                  BLOCK_K, EVEN)


@triton.jit
def _f32_tile(x32, xs, o32, os_ptr, pid_k, K, sx, so, stride_xs, stride_os, row, row_ok, oword, oblk, first,
              BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """A program's tile with wide-range, NaN or Inf blocks: exact fp32 values, one column at a time
    (tensors `[8, 4, RB]`: 8 words on lanes; `row` .. `first` as in the f16x2 kernel)."""
    for c in range(BLOCK_K // 64):
        w = pid_k * (BLOCK_K // 8) + c * 8 + (7 - tl.arange(0, 8)[:, None, None])
        ok = row_ok & (w < K // 8)
        okb = first & (w < K // 8)
        w0, w1, w2, w3, w4, w5, w6, w7 = load_rows8(x32, row * sx + w, sx, ok, tl.uint32, EVEN)
        s0, s1, s2, s3, s4, s5, s6, s7 = load_rows8(xs, row * stride_xs + w // 4, stride_xs, ok, tl.int32, EVEN)
        nan_row = _block_max(s0, s1, s2, s3, s4, s5, s6, s7)[:, None, :] == 255
        f0, f1, f2, f3 = e8m0_f32(s0), e8m0_f32(s1), e8m0_f32(s2), e8m0_f32(s3)
        f4, f5, f6, f7 = e8m0_f32(s4), e8m0_f32(s5), e8m0_f32(s6), e8m0_f32(s7)
        col = (8 * w).to(tl.int64)
        for jj in tl.static_range(8):
            _f32_column(w0, w1, w2, w3, w4, w5, w6, w7, f0, f1, f2, f3, f4, f5, f6, f7, nan_row, o32,
                        os_ptr, col + jj, so, stride_os, oword, oblk, ok, okb, jj, EVEN)


@triton.jit
def _f16_word_values(w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, ASM: tl.constexpr):
    """The fp16 path for one word column of every thread's 8 rows (`w_r`, scale bytes `s_r`; `bmax` the
    32-row blocks' largest scale byte): the output words of columns 0..7 of the word (row r's code in
    nibble r, `[4, 4, RB]`) and the scale bytes of column pairs (0, 2), (1, 3), (4, 6), (5, 7) (low byte
    of each 16-bit lane, `[4, RB]`)."""
    bm = bmax[:, None, :]
    a0, b0, c0, d0 = e2m1_row_f16x2(w0, s0, bm, ASM)
    a1, b1, c1, d1 = e2m1_row_f16x2(w1, s1, bm, ASM)
    a2, b2, c2, d2 = e2m1_row_f16x2(w2, s2, bm, ASM)
    a3, b3, c3, d3 = e2m1_row_f16x2(w3, s3, bm, ASM)
    a4, b4, c4, d4 = e2m1_row_f16x2(w4, s4, bm, ASM)
    a5, b5, c5, d5 = e2m1_row_f16x2(w5, s5, bm, ASM)
    a6, b6, c6, d6 = e2m1_row_f16x2(w6, s6, bm, ASM)
    a7, b7, c7, d7 = e2m1_row_f16x2(w7, s7, bm, ASM)
    # Column pairs: a = columns (0, 2), b = (1, 3), c = (4, 6), d = (5, 7).
    fa, sca = _f16_column_pair(max8_u16x2(a0, a1, a2, a3, a4, a5, a6, a7, ASM), bmax, ASM)
    fb, scb = _f16_column_pair(max8_u16x2(b0, b1, b2, b3, b4, b5, b6, b7, ASM), bmax, ASM)
    fc, scc = _f16_column_pair(max8_u16x2(c0, c1, c2, c3, c4, c5, c6, c7, ASM), bmax, ASM)
    fd, scd = _f16_column_pair(max8_u16x2(d0, d1, d2, d3, d4, d5, d6, d7, ASM), bmax, ASM)
    o0, o2 = _f16_pack_pair(a0, a1, a2, a3, a4, a5, a6, a7, fa[:, None, :], ASM)
    o1, o3 = _f16_pack_pair(b0, b1, b2, b3, b4, b5, b6, b7, fb[:, None, :], ASM)
    o4, o6 = _f16_pack_pair(c0, c1, c2, c3, c4, c5, c6, c7, fc[:, None, :], ASM)
    o5, o7 = _f16_pack_pair(d0, d1, d2, d3, d4, d5, d6, d7, fd[:, None, :], ASM)
    g0, g1, g2, g3, g4, g5, g6, g7 = _sign_transpose(w0, w1, w2, w3, w4, w5, w6, w7, ASM)
    return o0 | g0, o1 | g1, o2 | g2, o3 | g3, o4 | g4, o5 | g5, o6 | g6, o7 | g7, sca, scb, scc, scd


@triton.jit
def _f16_word(w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, o32, os_ptr, col, so,
              stride_os, oword, oblk, ok, okb, EVEN: tl.constexpr, ASM: tl.constexpr):
    """`_f16_word_values`, stored: output words of columns `col` .. `col + 7` and their scales."""
    o0, o1, o2, o3, o4, o5, o6, o7, sca, scb, scc, scd = _f16_word_values(
        w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, s6, s7, bmax, ASM)
    sca = sca[:, None, :]
    scb = scb[:, None, :]
    scc = scc[:, None, :]
    scd = scd[:, None, :]
    _f16_store(o32, os_ptr, o0, sca, col, so, stride_os, oword, oblk, ok, okb, 0, EVEN)
    _f16_store(o32, os_ptr, o1, scb, col + 1, so, stride_os, oword, oblk, ok, okb, 0, EVEN)
    _f16_store(o32, os_ptr, o2, sca, col + 2, so, stride_os, oword, oblk, ok, okb, 16, EVEN)
    _f16_store(o32, os_ptr, o3, scb, col + 3, so, stride_os, oword, oblk, ok, okb, 16, EVEN)
    _f16_store(o32, os_ptr, o4, scc, col + 4, so, stride_os, oword, oblk, ok, okb, 0, EVEN)
    _f16_store(o32, os_ptr, o5, scd, col + 5, so, stride_os, oword, oblk, ok, okb, 0, EVEN)
    _f16_store(o32, os_ptr, o6, scc, col + 6, so, stride_os, oword, oblk, ok, okb, 16, EVEN)
    _f16_store(o32, os_ptr, o7, scd, col + 7, so, stride_os, oword, oblk, ok, okb, 16, EVEN)


@triton.jit
def _f32_code_bits(words, scale, inv, J: tl.constexpr):
    """Code of column J of `words` requantized with 2^-e = `inv`: fp32 bits `code << 22`, sign at bit 25."""
    v, sh = e2m1_word_abs_f32(words.to(tl.int32, bitcast=True), scale, J)
    return _e2m1_code_bits(v, inv, sh)


@triton.jit
def _f32_column(w0, w1, w2, w3, w4, w5, w6, w7, f0, f1, f2, f3, f4, f5, f6, f7, nan_row, o32, os_ptr,
                col, so, stride_os, oword, oblk, ok, okb, J: tl.constexpr, EVEN: tl.constexpr):
    """Column J of every thread's 8 x 8 block through exact fp32 values:
    block maximum over the 8 rows and the 4 lanes of the 32-row block, scale, codes, output word."""
    m = tl.maximum(tl.maximum(tl.maximum(e2m1_word_abs_bits(w0, f0, J), e2m1_word_abs_bits(w1, f1, J)),
                              tl.maximum(e2m1_word_abs_bits(w2, f2, J), e2m1_word_abs_bits(w3, f3, J))),
                   tl.maximum(tl.maximum(e2m1_word_abs_bits(w4, f4, J), e2m1_word_abs_bits(w5, f5, J)),
                              tl.maximum(e2m1_word_abs_bits(w6, f6, J), e2m1_word_abs_bits(w7, f7, J))))
    amax = tl.max(m, axis=1)[:, None, :]            # fp32 bits are ordered like |v|; NaN above Inf
    nan = nan_row | (amax >= 0x7F800000)
    e = tl.maximum((amax >> 23) - 129, -127)        # a decoded maximum has significand 1 or 1.5
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
    word = ((_f32_code_bits(w0, f0, inv, J) >> 22)
            | ((_f32_code_bits(w1, f1, inv, J) >> 18) & 0xF0)
            | ((_f32_code_bits(w2, f2, inv, J) >> 14) & 0xF00)
            | ((_f32_code_bits(w3, f3, inv, J) >> 10) & 0xF000)
            | ((_f32_code_bits(w4, f4, inv, J) >> 6) & 0xF0000)
            | ((_f32_code_bits(w5, f5, inv, J) >> 2) & 0xF00000)
            | ((_f32_code_bits(w6, f6, inv, J) << 2) & 0xF000000)
            | ((_f32_code_bits(w7, f7, inv, J) << 6) & -0x10000000))
    word = tl.where(nan, 0, word)
    _colwise_store(o32, os_ptr, word, tl.where(nan, 255, e + 127).to(tl.uint8), col, so, stride_os, oword,
                   oblk, ok, okb, EVEN)


@triton.jit
def _colwise_store(o32, os_ptr, word, byte, col, so, stride_os, oword, oblk, ok, okb, EVEN: tl.constexpr):
    """Stores one column's output words (`[4, 4, RB]` or `[8, 4, RB]`, int32) and its scale bytes. The
    byte pointer is broadcast over the 4 lanes of g (`+ 0 * oword`) so that the store keeps the register
    layout, and `okb` lets one of them write."""
    if EVEN:
        tl.store(o32 + col * so + oword, word)
    else:
        tl.store(o32 + col * so + oword, word, mask=ok)
    tl.store(os_ptr + col * stride_os + oblk + 0 * oword, byte, mask=okb)


@triton.jit
def _f16_store(o32, os_ptr, word, sc, col, so, stride_os, oword, oblk, ok, okb, LANE: tl.constexpr,
               EVEN: tl.constexpr):
    """`_colwise_store` of an fp16-path word (uint32) with the scale byte in lane LANE of `sc`."""
    _colwise_store(o32, os_ptr, word.to(tl.int32, bitcast=True), ((sc >> LANE) & 0xFF).to(tl.uint8), col,
                   so, stride_os, oword, oblk, ok, okb, EVEN)


# --- f16x2_smem: one word per lane, scale bytes from registers, whole output lines through shared memory

@triton.jit
def _stack8(v0, v1, v2, v3, v4, v5, v6, v7):
    """8 tensors -> one with three more axes of 2 (j0, j1, j2): element j = j0 + 2 j1 + 4 j2 is `v_j`."""
    return tl.join(tl.join(tl.join(v0, v1), tl.join(v2, v3)), tl.join(tl.join(v4, v5), tl.join(v6, v7)))


@triton.jit
def _word_scales(sca, scb, scc, scd):
    """Scale-byte pairs of a word's column pairs (0, 2), (1, 3), (4, 6), (5, 7) (`[8, RB]`, low byte of
    each 16-bit lane) -> `[8, RB, 2, 2, 2]` bytes of columns j = j0 + 2 j1 + 4 j2."""
    # j0 picks a/b (c/d), j1 the 16-bit lane, j2 a/b or c/d.
    pairs = tl.join(tl.join(sca, scb), tl.join(scc, scd))           # [8, RB, j0, j2]
    both = tl.join(pairs & 0xFF, (pairs >> 16) & 0xFF)             # [8, RB, j0, j2, j1]
    return tl.permute(both, (0, 1, 2, 4, 3))


@triton.jit
def _quad(xs, off, step):
    """Scale bytes `xs[off + i * step]`, i = 0..3, as one word (byte i = row i)."""
    b0 = tl.load(xs + off).to(tl.uint32)
    b1 = tl.load(xs + off + step).to(tl.uint32)
    b2 = tl.load(xs + off + 2 * step).to(tl.uint32)
    b3 = tl.load(xs + off + 3 * step).to(tl.uint32)
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


@triton.jit
def _scale_quads(xs, row, pid_k, stride_xs, NB: tl.constexpr):
    """The program's scale bytes (NB = 4, 8 or 16 blocks of 32 columns), 4 words per thread: lane w of
    row group g holds in word k the bytes of the group's rows 4 (w % 2) .. + 3 in the program's block
    4 k + w // 2 (words past the program's blocks: 0)."""
    w = tl.arange(0, 8)[:, None, None]
    off = (row + 4 * (w % 2)) * stride_xs + pid_k * NB + w // 2
    q0 = _quad(xs, off, stride_xs)
    q1 = tl.zeros_like(q0)
    q2 = tl.zeros_like(q0)
    q3 = tl.zeros_like(q0)
    if NB > 4:
        q1 = _quad(xs, off + 4, stride_xs)
    if NB > 8:
        q2 = _quad(xs, off + 8, stride_xs)
        q3 = _quad(xs, off + 12, stride_xs)
    return q0, q1, q2, q3


@triton.jit
def _chunk_scales(quads, half):
    """Scale bytes of the thread's 8 rows in its word's block of chunk c = 2 k + `half` (`quads`: word k
    of `_scale_quads`): lanes 4 half + 2 (w // 4) + {0, 1} of the group hold them (rows 0-3, 4-7)."""
    w = tl.arange(0, 8)[:, None, None]
    src = tl.broadcast_to(4 * half + 2 * (w // 4), quads.shape)
    lo = tl.gather(quads, src, 0)
    hi = tl.gather(quads, src + 1, 0)
    return (lo & 0xFF, (lo >> 8) & 0xFF, (lo >> 16) & 0xFF, lo >> 24,
            hi & 0xFF, (hi >> 8) & 0xFF, (hi >> 16) & 0xFF, hi >> 24)


@triton.jit
def _grouped_program(GROUP_M: tl.constexpr):
    """(pid_m, pid_k) of this program when the grid is walked GROUP_M row blocks at a time, every column
    block of a group before the next group."""
    num_m = tl.num_programs(0)
    num_k = tl.num_programs(1)
    pid = tl.program_id(0) + tl.program_id(1) * num_m
    first = (pid // (GROUP_M * num_k)) * GROUP_M
    size = tl.minimum(num_m - first, GROUP_M)
    inner = pid - first * num_k
    return first + inner % size, inner // size


@triton.jit
def _mxfp4_rowwise_to_colwise_f16x2_smem_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                                stride_x, stride_xs, stride_o, stride_os,
                                                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                                                ASM: tl.constexpr):
    # Whole programs only (M % BLOCK_M == 0, K % BLOCK_K == 0; BLOCK_K 128, 256 or 512: the wrapper
    # checks), so no masks. Tensors [8, 4, RB]: word w (lanes), 8-row group g (lanes), 32-row block q (warps).
    RB: tl.constexpr = BLOCK_M // 32
    NC: tl.constexpr = BLOCK_K // 64
    pid_m, pid_k = _grouped_program(GROUP_M)
    m0 = pid_m * BLOCK_M
    x32 = (x_ptr + m0.to(tl.int64) * stride_x).to(tl.pointer_type(tl.uint32))
    xs = xs_ptr + m0.to(tl.int64) * stride_xs
    o32 = o_ptr.to(tl.pointer_type(tl.int32))
    sx = stride_x // 4
    so = stride_o // 4
    # The first chunk's loads go out before the window check, so that their latency overlaps it (a
    # program on the fp32 path does not use them).
    row = 32 * tl.arange(0, RB)[None, None, :] + 8 * tl.arange(0, 4)[None, :, None]  # the group's first row
    w = pid_k * (BLOCK_K // 8) + tl.arange(0, 8)[:, None, None]          # the lane's word (8 columns)
    e0, e1, e2, e3, e4, e5, e6, e7 = load_rows8(x32, row * sx + w, sx, True, tl.uint32, True)
    q0, q1, q2, q3 = _scale_quads(xs, row, pid_k, stride_xs, BLOCK_K // 32)
    if _f16_window_ok(xs_ptr, m0, pid_k, M, K, stride_xs, BLOCK_M, BLOCK_K, True) == 1:
        ocol = tl.arange(0, 64)[:, None]                                  # output row in the chunk
        oword = m0 // 8 + tl.arange(0, BLOCK_M // 8)[None, :]
        oblk = m0 // 32 + tl.arange(0, RB)[None, :]
        for c in range(NC):
            # The next chunk's words are loaded before this one is converted (the last chunk reloads
            # itself, an L1 hit), so their latency overlaps the arithmetic.
            wn = w + 8 * (tl.minimum(c + 1, NC - 1) - c)
            p0, p1, p2, p3, p4, p5, p6, p7 = load_rows8(x32, row * sx + wn, sx, True, tl.uint32, True)
            s0, s1, s2, s3, s4, s5, s6, s7 = _chunk_scales(q0, c % 2)
            a0, a1, a2, a3, a4, a5, a6, a7, sa, sb, sc, sd = _f16_word_values(
                e0, e1, e2, e3, e4, e5, e6, e7, s0, s1, s2, s3, s4, s5, s6, s7,
                _block_max(s0, s1, s2, s3, s4, s5, s6, s7), ASM)
            # [w, g, q, j0, j1, j2] -> [w, j2, j1, j0, q, g] = [64 output rows, BLOCK_M / 8 words]
            words = tl.reshape(tl.permute(_stack8(a0, a1, a2, a3, a4, a5, a6, a7), (0, 5, 4, 3, 2, 1)),
                               (64, BLOCK_M // 8))
            # [w, q, j0, j1, j2] -> [w, j2, j1, j0, q] = [64 output rows, RB blocks]
            scales = tl.reshape(tl.permute(_word_scales(sa, sb, sc, sd), (0, 4, 3, 2, 1)), (64, RB))
            col = (pid_k * BLOCK_K + c * 64 + ocol).to(tl.int64)
            tl.store(o32 + col * so + oword, words.to(tl.int32, bitcast=True))
            tl.store(os_ptr + col * stride_os + oblk, scales.to(tl.uint8))
            e0, e1, e2, e3, e4, e5, e6, e7 = p0, p1, p2, p3, p4, p5, p6, p7
            w = wn
            # Two chunks per scale word: after an odd chunk, the next word moves to the front.
            odd = c % 2 == 1
            q0, q1, q2, q3 = (tl.where(odd, q1, q0), tl.where(odd, q2, q1), tl.where(odd, q3, q2),
                              tl.where(odd, q0, q3))
    else:
        # The f16x2 kernel's exact fp32 path, with its reversed indices (they keep its stores in its layout).
        qr = RB - 1 - tl.arange(0, RB)[None, None, :]
        gr = 3 - tl.arange(0, 4)[None, :, None]
        row = 32 * qr + 8 * gr
        _f32_tile(x32, xs, o32, os_ptr, pid_k, K, sx, so, stride_xs, stride_os, row, row >= 0,
                  m0 // 8 + row // 8, m0 // 32 + qr, gr == 3, BLOCK_K, True)


_PARTIAL_CONFIG = LaunchConfig(256, 1024, 4, "f16x2")   # where f16x2_smem does not apply (partial programs)
# f16x2_smem's launch order: 4 row blocks at a time, all their column blocks before the next 4, so that
# the programs of a row block, which share the 32-byte sectors of its scale bytes, run close together.
_SMEM_GROUP_M = 4
# f16x2_smem's register cap: 3 programs of 8 warps per SM without spills (ptxas would take 122).
_SMEM_MAX_REGISTERS = 80


def mxfp4_rowwise_to_colwise_triton(t: MXFP4Tensor, *, config: LaunchConfig | None = None) -> MXFP4Tensor:
    """MXFP4 row-wise `[M, K]` -> MXFP4 blocks of the transposed `[K, M]` matrix, one Triton pass
    (contract and argument checks: `mxa2a.quant.conversions.mxfp4_rowwise_to_colwise`). `config`: launch
    configuration (default `launch.CONFIGS["mxfp4_rowwise_to_colwise"]`). Asynchronous on the current
    CUDA stream (no host sync)."""
    cfg = pick_config("mxfp4_rowwise_to_colwise", config)
    variant = cfg.variant
    rows_per_warp = {"f16x2": 64, "f16x2_smem": 32}.get(variant)
    if rows_per_warp and (cfg.block_m % (rows_per_warp * cfg.num_warps) or cfg.block_k % 64
                          or (variant == "f16x2_smem" and cfg.block_k not in (128, 256, 512))):
        raise ValueError(f"mxfp4_rowwise_to_colwise: variant {variant!r} needs block_m a multiple of "
                         f"{rows_per_warp} * num_warps and block_k a multiple of 64 (f16x2_smem: block_k 128, "
                         f"256 or 512), got config = {cfg}")
    x = rows_in(t.data)
    xs = rows_in(t.scales)
    M, K = x.shape[0], x.shape[1] * 2
    out = MXFP4Tensor(torch.empty(K, M // 2, dtype=torch.uint8, device=t.device),
                      torch.empty(K, M // MXFP4_BLOCK, dtype=torch.uint8, device=t.device), t.scale_mode)
    if M == 0 or K == 0:
        return out
    if variant != "planes" and (x.stride(0) % 4 or x.data_ptr() % 4):
        variant = "planes"  # the f16x2 kernels read int32 words
    args = (x, xs, out.data, out.scales, M, K, x.stride(0), xs.stride(0), out.data.stride(0), out.scales.stride(0))
    if variant == "f16x2_smem":
        if M % cfg.block_m == 0 and K % cfg.block_k == 0:
            _mxfp4_rowwise_to_colwise_f16x2_smem_kernel[(M // cfg.block_m, K // cfg.block_k)](
                *args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, GROUP_M=_SMEM_GROUP_M, ASM=use_asm(),
                num_warps=cfg.num_warps, maxnreg=_SMEM_MAX_REGISTERS)
            return out
        cfg, variant = _PARTIAL_CONFIG, "f16x2"  # fewer rows or columns than a whole program: f16x2 masks them
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    if variant == "f16x2":  # EVEN: no row or column masks
        _mxfp4_rowwise_to_colwise_f16x2_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
                                                     num_warps=cfg.num_warps,
                                                     EVEN=K % cfg.block_k == 0 and M % cfg.block_m == 0,
                                                     ASM=use_asm())
        return out
    _mxfp4_rowwise_to_colwise_planes_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
                                                  num_warps=cfg.num_warps)
    return out
