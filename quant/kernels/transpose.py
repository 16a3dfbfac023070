"""Row-wise -> column-wise conversions of quantized activations (for the weight-gradient GEMM).

Backward needs `X^T` quantized along the token dimension. These kernels read the row-wise quantized
`[M, K]` input once, decode it to exact fp32 in registers, transpose in registers / shared memory,
scale each value to its column-wise tile by an exact power of two and round it with the helpers of
`minifloat.py`, and write the quantized `[K, M]` output once; no BF16/FP32 tensor ever touches global
memory. Results equal the references in `reference_conversions.py` bit for bit:

- `fp8_rowwise_to_colwise` (in `transpose_fp8.py`): for each 128x128 tile the column-wise scale is the largest of the 128 row
  scales; values are shifted down to it and rounded to E4M3 (subnormals rounded, NaN kept as NaN).
- `mxfp4_rowwise_to_colwise`: `quantize_mxfp4(dequantize_mxfp4(x).T)` on 32x32 tiles.
- `mxfp4_rowwise_to_fp8_colwise`: `quantize_fp8(dequantize_mxfp4(x).T)` on 32x128 -> 128x32 tiles
  (variants 0-2 here; variant 3 and the wrapper in `transpose_mxfp4_fp8.py`).

The input may be a strided 2-D view (any row stride, contiguous last dimension); outputs are new
contiguous tensors.

The MXFP4 transposes have several bodies (`LaunchConfig.variant`, same bits): 0 decodes, transposes
fp32 values through shared memory and re-rounds; 1 quantizes in the input layout and transposes only
output bytes; 2 gives each thread one packed input word (8 columns) of 32 rows, so column maxima,
rounding and nibble/byte packing all stay in registers (no shared memory), decoding and re-encoding
with fp32 bit tricks and fused multiply-adds (see the variant-2 section below). Variant 3 of
`mxfp4_rowwise_to_colwise` gives each thread two words of 8 rows and computes on two values per
instruction (fp16 table lookups with `prmt`, `max.u16x2` maxima, `fma.rn.f16x2` rounding; see its
section), with an exact fp32 fallback for tiles whose block scales spread too far for fp16. Variant 4
(the default) and the conversion's wrapper are in `transpose_mxfp4.py`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .byteperm import byte_perm
from .minifloat import e2m1_abs_f32, e2m1_round, e4m3_round, pow2_f32
from .simd16 import fma_f16x2, max_u16x2, min_u16x2, reduce_max_u16x2


@triton.jit
def _mxfp4_transposed_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Input rows [BLOCK_M*pid_m, +BLOCK_M) x columns [BLOCK_K*pid_k, +BLOCK_K), transposed to
    [BLOCK_K, BLOCK_M]: E2M1 codes (int32), the decoded |values| in fp32 exactly as the two-step path
    has them (|x| * 2^(b-127); Inf from 2^128 on), and 1 where the block scale byte is 255 (NaN)."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)
    pcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(x_ptr + r64[:, None] * stride_x + pcols[None, :],
                     mask=row_ok[:, None] & (pcols < K // 2)[None, :], other=0)
    code = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_M, BLOCK_K))
    code_t = tl.trans(code).to(tl.int32)
    # The scale bytes are loaded straight into the transposed layout (few bytes, no shuffle needed).
    NB: tl.constexpr = BLOCK_K // 32
    bcols = pid_k * NB + tl.arange(0, NB)
    sbyte = tl.load(xs_ptr + r64[None, :] * stride_xs + bcols[:, None],
                    mask=(bcols < K // 32)[:, None] & row_ok[None, :], other=0).to(tl.int32)
    scale = pow2_f32(tl.minimum(sbyte, 254) - 127)  # [NB, BLOCK_M]
    scale_t = tl.reshape(tl.broadcast_to(scale[:, None, :], (NB, 32, BLOCK_M)), (BLOCK_K, BLOCK_M))
    nan_t = tl.reshape(tl.broadcast_to((sbyte == 255).to(tl.int32)[:, None, :], (NB, 32, BLOCK_M)),
                       (BLOCK_K, BLOCK_M))
    return code_t, e2m1_abs_f32(code_t & 7) * scale_t, nan_t


@triton.jit
def _mxfp4_rowwise_to_colwise_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                     stride_x, stride_xs, stride_o, stride_os,
                                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NM: tl.constexpr = BLOCK_M // 32  # output blocks per output row and program
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    code, v, nan = _mxfp4_transposed_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                          BLOCK_M, BLOCK_K)
    code = tl.reshape(code, (BLOCK_K, NM, 32))
    v = tl.reshape(v, (BLOCK_K, NM, 32))
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=2)  # fp32 bits are ordered like |v|
    nan_blk = (amax >= 0x7F800000) | (tl.max(tl.reshape(nan, (BLOCK_K, NM, 32)), axis=2) > 0)
    # A decoded maximum has significand 1 or 1.5, never above 1.5: floor and rceil both give f - 2.
    e = tl.where(amax < 0x800000, -127, (amax >> 23) - 129)  # zero or fp32-subnormal maximum: -127
    e = tl.minimum(tl.maximum(e, -127), 127)
    c = e2m1_round(v * pow2_f32(-e)[:, :, None]) | (code & 8)  # |v| * 2^-e <= 6, exact
    c = tl.where(nan_blk[:, :, None], 0, c)

    lo, hi = tl.split(tl.reshape(c, (BLOCK_K, BLOCK_M // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    c64 = cols.to(tl.int64)
    col_ok = cols < K
    ocols = pid_m * (BLOCK_M // 2) + tl.arange(0, BLOCK_M // 2)
    tl.store(o_ptr + c64[:, None] * stride_o + ocols[None, :], packed,
             mask=col_ok[:, None] & (ocols < M // 2)[None, :])
    oblk = pid_m * NM + tl.arange(0, NM)
    tl.store(os_ptr + c64[:, None] * stride_os + oblk[None, :],
             tl.where(nan_blk, 255, e + 127).to(tl.uint8),
             mask=col_ok[:, None] & (oblk < M // 32)[None, :])


@triton.jit
def _mxfp4_rowwise_to_fp8_colwise_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                         stride_x, stride_xs, stride_o, stride_os,
                                         BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    code, v, nan = _mxfp4_transposed_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                          128, BLOCK_K)
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=1)  # fp32 bits are ordered like |v|
    nan_tile = (amax >= 0x7F800000) | (tl.max(nan, axis=1) > 0)
    # k = ceil(log2(amax / 448)) = floor(log2 amax) - 8 + [significand > 1.75]   (448 = 1.75 * 2^8)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)
    k = tl.minimum(tl.maximum(k, -127), 127)
    c = e4m3_round(v * pow2_f32(-k)[:, None]) | ((code & 8) << 4)  # |v| * 2^-k <= 448, exact
    c = tl.where(nan_tile[:, None], 0, c)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    c64 = cols.to(tl.int64)
    col_ok = cols < K
    orows = pid_m * 128 + tl.arange(0, 128)
    tl.store(o_ptr + c64[:, None] * stride_o + orows[None, :], c.to(tl.uint8),
             mask=col_ok[:, None] & (orows < M)[None, :])
    tl.store(os_ptr + c64 * stride_os + pid_m, tl.where(nan_tile, 255, k + 127).to(tl.uint8), mask=col_ok)


@triton.jit
def _mxfp4_planes_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Variant 1 input side, no decode-side transpose: input rows [BLOCK_M*pid_m, +BLOCK_M) x packed
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
def _mxfp4_rowwise_to_colwise_v1_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                        stride_x, stride_xs, stride_o, stride_os,
                                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    lo, hi, scale, nan = _mxfp4_planes_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                            BLOCK_M, BLOCK_K)
    _mxfp4_colwise_plane(lo, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 0, M, K, stride_o, stride_os,
                         BLOCK_M, BLOCK_K)
    _mxfp4_colwise_plane(hi, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 1, M, K, stride_o, stride_os,
                         BLOCK_M, BLOCK_K)


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
def _mxfp4_rowwise_to_fp8_colwise_v1_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                            stride_x, stride_xs, stride_o, stride_os,
                                            BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    lo, hi, scale, nan = _mxfp4_planes_load(x_ptr, xs_ptr, pid_m, pid_k, M, K, stride_x, stride_xs,
                                            128, BLOCK_K)
    _fp8_colwise_plane(lo, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 0, M, K, stride_o, stride_os, BLOCK_K)
    _fp8_colwise_plane(hi, scale, nan, o_ptr, os_ptr, pid_m, pid_k, 1, M, K, stride_o, stride_os, BLOCK_K)


# --- Variant 2: one thread per packed input word (8 columns) x 32 rows; no shared memory -------------
# Every load is a 1-D row of `NW = BLOCK_K / 8` int32 words (one per thread); the 32 rows of a block are
# stacked into in-thread dimensions with `tl.join`, so each thread holds a whole 32-row x 8-column
# block and the column-wise maxima are in-thread reductions. E2M1 codes stay in the packed words; each
# column is decoded with one shift and mask straight into the fp32 bit pattern `c << 22` (= |E2M1| *
# 2^-126), and the output code comes back the same way: two fused multiply-adds round `|v| * 2^-e` to
# the E2M1 grid (a magic constant for the half-integer spacing below 2; values from 1 up are exact)
# and rescale it so that its fp32 bits are again `code << 22`. Packing adds codes pairwise, in
# integers. Needs 4-byte-aligned input rows (the wrapper falls back to variant 1 otherwise).

_TWO_126 = tl.constexpr(8.507059173023462e37)      # 2^126: (c << 22) read as fp32 is |E2M1(c)| * 2^-126
_TWO_M126 = tl.constexpr(1.1754943508222875e-38)   # 2^-126
_E2M1_MAGIC = tl.constexpr(6291456.0)              # 1.5 * 2^22: ulp 0.5, the E2M1 spacing below 2
_E2M1_MAGIC_LOW = tl.constexpr(7.395570986446986e-32)  # 1.5 * 2^22 * 2^-126


@triton.jit
def _f32_scale(sb):
    """Scale byte -> 2^(b - 127) in fp32 (byte 0: 2^-127, a subnormal; 255: Inf, so values become Inf or
    NaN and the block NaN)."""
    return tl.maximum(sb << 23, 0x400000).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_code_bits(v, inv, sh):
    """|v| (fp32) requantized with 2^-e = `inv` -> fp32 bits `code << 22`, the sign taken from bit 25 of
    `sh` (the shifted input word). v * 2^-e <= 6 is exact; + 1.5 * 2^22 rounds it to a multiple of 1/2
    (RNE), which is the E2M1 grid below 2 and leaves the exact values from 1 up alone; (t - C) * 2^-126
    then has fp32 bits code << 22."""
    z = (v * inv + _E2M1_MAGIC) * _TWO_M126 - _E2M1_MAGIC_LOW
    return z.to(tl.int32, bitcast=True) | (sh & 0x2000000)


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
def _nibble_at_22(words, J: tl.constexpr):
    """The words shifted so that nibble J (column 8w + J) sits at bits 22..25."""
    if J <= 5:
        return words << (22 - 4 * J)
    else:
        return words >> (4 * J - 22)


@triton.jit
def _nibble_at_24(words, J: tl.constexpr):
    """The words shifted so that nibble J sits at bits 24..27."""
    if J <= 6:
        return words << (24 - 4 * J)
    else:
        return words >> 4


@triton.jit
def _mx_abs_values(words, scale, J: tl.constexpr):
    """|decoded value| of column J of every word (fp32, exact; Inf from 2^128 on) and the shifted words."""
    sh = _nibble_at_22(words, J)
    cf = (sh & 0x1C00000).to(tl.float32, bitcast=True)
    return cf * _TWO_126 * scale, sh


@triton.jit
def _pack_nibble_rows(zb, NW: tl.constexpr):
    """`[NW, 32]` int32 holding `code << 22` per row -> `[NW, 4]` words of 8 rows each (row 8q + i in
    nibble i)."""
    even, odd = tl.split(tl.reshape(zb, (NW, 4, 4, 2)))
    byte = (even + odd * 16) >> 22                       # [NW, 4, 4]: rows 2k, 2k + 1 of word q
    lo, hi = tl.split(tl.reshape(byte, (NW, 4, 2, 2)))
    half = lo + hi * 256                                 # [NW, 4, 2]
    h0, h1 = tl.split(half)
    return h0 + h1 * 65536


@triton.jit
def _mxfp4_colwise_v2_column(words, scale, nan_row, o32, os_ptr, pid_m, w, w_ok, stride_o4, stride_os,
                             J: tl.constexpr, NW: tl.constexpr):
    v, sh = _mx_abs_values(words, scale, J)
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=1)  # [NW]; fp32 bits are ordered like |v|
    nan = nan_row | (amax >= 0x7F800000)
    # A decoded maximum has significand 1 or 1.5: floor and rceil both give e = floor(log2 amax) - 2;
    # a zero or fp32-subnormal maximum gives (amax >> 23) - 129 <= -129, clamped to -127.
    e = tl.maximum((amax >> 23) - 129, -127)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e, e in [-127, 126]
    zb = _e2m1_code_bits(v, inv[:, None], sh)  # the sign bit (nibble bit 3) sits at bit 25
    packed = tl.where(nan[:, None], 0, _pack_nibble_rows(zb, NW))
    k64 = (8 * w + J).to(tl.int64)
    q = tl.arange(0, 4)
    tl.store(o32 + k64[:, None] * stride_o4 + pid_m * 4 + q[None, :], packed, mask=w_ok[:, None])
    tl.store(os_ptr + k64 * stride_os + pid_m, tl.where(nan, 255, e + 127).to(tl.uint8), mask=w_ok)


@triton.jit
def _mxfp4_rowwise_to_colwise_v2_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
                                        stride_x, stride_xs, stride_o, stride_os,
                                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    # One program: rows [BLOCK_M*pid_m, +BLOCK_M) (32-row blocks one after another) x columns
    # [BLOCK_K*pid_k, +BLOCK_K); each thread owns one packed word (8 columns) of every row.
    NW: tl.constexpr = BLOCK_K // 8
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    w = pid_k * NW + tl.arange(0, NW)
    w_ok = w < K // 8
    x32 = x_ptr.to(tl.pointer_type(tl.int32))
    o32 = o_ptr.to(tl.pointer_type(tl.int32))
    nblk = tl.minimum(BLOCK_M // 32, M // 32 - pid_m * (BLOCK_M // 32))  # the last program may be short
    for blk in tl.range(0, nblk, loop_unroll_factor=1):
        bm = pid_m * (BLOCK_M // 32) + blk
        r64 = (bm * 32).to(tl.int64)
        words, sbyte = _mx_rows32(x32 + r64 * (stride_x // 4), xs_ptr + r64 * stride_xs, 0, w, w_ok,
                                  stride_x // 4, stride_xs, NW, EVEN)
        nan_row = tl.max(sbyte, axis=1) == 255
        scale = _f32_scale(sbyte)
        for j in tl.static_range(8):
            _mxfp4_colwise_v2_column(words, scale, nan_row, o32, os_ptr, bm, w, w_ok, stride_o // 4,
                                     stride_os, j, NW)


_TWO_M120 = tl.constexpr(7.52316384526264e-37)     # 2^-120: |E4M3| * 2^-120 has fp32 bits code << 20
_E4M3_MAGIC = tl.constexpr(24576.0)                # 1.5 * 2^14: ulp 2^-9, the E4M3 subnormal spacing
_E4M3_MAGIC_LOW = tl.constexpr(1.8488927466117464e-32)  # 1.5 * 2^14 * 2^-120


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
    m0 = tl.max(_mx_abs_values(words, scale, 0)[0].to(tl.int32, bitcast=True), axis=1)
    m1 = tl.max(_mx_abs_values(words, scale, 1)[0].to(tl.int32, bitcast=True), axis=1)
    m2 = tl.max(_mx_abs_values(words, scale, 2)[0].to(tl.int32, bitcast=True), axis=1)
    m3 = tl.max(_mx_abs_values(words, scale, 3)[0].to(tl.int32, bitcast=True), axis=1)
    m4 = tl.max(_mx_abs_values(words, scale, 4)[0].to(tl.int32, bitcast=True), axis=1)
    m5 = tl.max(_mx_abs_values(words, scale, 5)[0].to(tl.int32, bitcast=True), axis=1)
    m6 = tl.max(_mx_abs_values(words, scale, 6)[0].to(tl.int32, bitcast=True), axis=1)
    m7 = tl.max(_mx_abs_values(words, scale, 7)[0].to(tl.int32, bitcast=True), axis=1)
    return _join8(m0, m1, m2, m3, m4, m5, m6, m7, NW)


@triton.jit
def _fp8_colwise_v2_column(words, scale, inv, nan, o32, pid_m, g, w, w_ok, stride_o4,
                           J: tl.constexpr, NW: tl.constexpr):
    """E4M3 codes of column J for 32 rows (chunk g of the 128-row tile), stored as 8 words."""
    v, sh = _mx_abs_values(words, scale, J)
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
def _mxfp4_rowwise_to_fp8_colwise_v2_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
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
        scale = _f32_scale(sbyte)
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
        scale = _f32_scale(sbyte)
        _fp8_colwise_v2_column(words, scale, i0, n0, o32, pid_m, g, w, w_ok, stride_o // 4, 0, NW)
        _fp8_colwise_v2_column(words, scale, i1, n1, o32, pid_m, g, w, w_ok, stride_o // 4, 1, NW)
        _fp8_colwise_v2_column(words, scale, i2, n2, o32, pid_m, g, w, w_ok, stride_o // 4, 2, NW)
        _fp8_colwise_v2_column(words, scale, i3, n3, o32, pid_m, g, w, w_ok, stride_o // 4, 3, NW)
        _fp8_colwise_v2_column(words, scale, i4, n4, o32, pid_m, g, w, w_ok, stride_o // 4, 4, NW)
        _fp8_colwise_v2_column(words, scale, i5, n5, o32, pid_m, g, w, w_ok, stride_o // 4, 5, NW)
        _fp8_colwise_v2_column(words, scale, i6, n6, o32, pid_m, g, w, w_ok, stride_o // 4, 6, NW)
        _fp8_colwise_v2_column(words, scale, i7, n7, o32, pid_m, g, w, w_ok, stride_o // 4, 7, NW)



# --- Variant 3 of mxfp4_rowwise_to_colwise: packed fp16 arithmetic, two values per instruction -------
# Tensors are [4, 4, RB]: word pair w (lanes; a thread takes words 2w and 2w + 1 one after the other),
# 8-row group g (lanes), 32-row block q (2 lanes, then warps; with no axis contiguous Triton makes the
# leading axis the fastest), so a warp reads 8 rows x 32 bytes and writes 4 output rows x 32 bytes per
# instruction pair. There is one tensor per row a of the group, so a thread holds 8 x 8 blocks of codes
# (8 rows x one packed word) and an output word (8 rows of one column) comes out of its own registers.
# In a 32-row block whose scale bytes lie within _F16_WINDOW of each other (and below 253, so nothing
# is NaN or Inf), every decoded value is `E2M1(c) * 2^(b - bmax + 13)`, a normal fp16 number that a
# byte permute looks up in a per-row table (its high byte; two multiply-adds per row build the table).
# The column maxima are 16-bit maxima of those fp16 patterns (`max.u16x2`, over the thread's rows and
# then the 4 lanes of the block); the maximum's exponent gives the scale byte and the factor
# F = 2^(2 - floor(log2 max)) (or the scale-byte-0 clamp), and two fp16 fused multiply-adds per pair of
# values give `(RNE(v * F) on the E2M1 grid) * 2^-14`, whose bit pattern is `code << 9`. Byte permutes
# gather the code bytes of 8 rows into output words; the sign bits go through an 8 x 8 nibble transpose
# of the input words. A program whose tile has a block outside that window converts the whole tile
# through exact fp32 values instead (variant 2's arithmetic, one column at a time), decided once per
# program from its scale bytes.

_F16_WINDOW = tl.constexpr(25)  # largest scale-byte spread of a 32-row block on the fp16 path


@triton.jit
def _f16_row_values(word, sbyte, bmax, ASM: tl.constexpr):
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
def _load_as(ptr, off, ok, DTYPE: tl.constexpr, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(ptr + off).to(DTYPE)
    else:
        return tl.load(ptr + off, mask=ok, other=0).to(DTYPE)


@triton.jit
def _rows8(ptr, off, step, ok, DTYPE: tl.constexpr, EVEN: tl.constexpr):
    """`ptr[off + r * step]` for the 8 rows r of every thread's group, as DTYPE (masked loads give 0
    unless EVEN)."""
    return (_load_as(ptr, off, ok, DTYPE, EVEN), _load_as(ptr, off + step, ok, DTYPE, EVEN),
            _load_as(ptr, off + 2 * step, ok, DTYPE, EVEN), _load_as(ptr, off + 3 * step, ok, DTYPE, EVEN),
            _load_as(ptr, off + 4 * step, ok, DTYPE, EVEN), _load_as(ptr, off + 5 * step, ok, DTYPE, EVEN),
            _load_as(ptr, off + 6 * step, ok, DTYPE, EVEN), _load_as(ptr, off + 7 * step, ok, DTYPE, EVEN))


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
def _max8_u16x2(a, b, c, d, e, f, g, h, ASM: tl.constexpr):
    return max_u16x2(max_u16x2(max_u16x2(a, b, ASM), max_u16x2(c, d, ASM), ASM),
                     max_u16x2(max_u16x2(e, f, ASM), max_u16x2(g, h, ASM), ASM), ASM)


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
def _mxfp4_rowwise_to_colwise_v3_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
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
        e0, e1, e2, e3, e4, e5, e6, e7 = _rows8(x32, row * sx + w, sx, ok, tl.uint32, EVEN)
        n0, n1, n2, n3, n4, n5, n6, n7 = _rows8(x32, row * sx + w + 1, sx, ok, tl.uint32, EVEN)
        s0, s1, s2, s3, s4, s5, s6, s7 = _rows8(xs, row * stride_xs + w // 4, stride_xs, ok, tl.int32,
                                                EVEN)  # one scale block (w // 4) for both words
        for c in range(BLOCK_K // 64):
            # The next chunk's words are loaded before this one is converted (the last chunk reloads
            # itself, an L1 hit), so their latency overlaps the arithmetic.
            wn = w + 8 * (tl.minimum(c + 1, BLOCK_K // 64 - 1) - c)
            okn = row_ok & (wn < K // 8)
            p0, p1, p2, p3, p4, p5, p6, p7 = _rows8(x32, row * sx + wn, sx, okn, tl.uint32, EVEN)
            q0, q1, q2, q3, q4, q5, q6, q7 = _rows8(x32, row * sx + wn + 1, sx, okn, tl.uint32, EVEN)
            t0, t1, t2, t3, t4, t5, t6, t7 = _rows8(xs, row * stride_xs + wn // 4, stride_xs, okn, tl.int32,
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
    (tensors `[8, 4, RB]`: 8 words on lanes; `row` .. `first` as in the variant-3 kernel)."""
    for c in range(BLOCK_K // 64):
        w = pid_k * (BLOCK_K // 8) + c * 8 + (7 - tl.arange(0, 8)[:, None, None])
        ok = row_ok & (w < K // 8)
        okb = first & (w < K // 8)
        w0, w1, w2, w3, w4, w5, w6, w7 = _rows8(x32, row * sx + w, sx, ok, tl.uint32, EVEN)
        s0, s1, s2, s3, s4, s5, s6, s7 = _rows8(xs, row * stride_xs + w // 4, stride_xs, ok, tl.int32, EVEN)
        nan_row = _block_max(s0, s1, s2, s3, s4, s5, s6, s7)[:, None, :] == 255
        f0, f1, f2, f3 = _f32_scale(s0), _f32_scale(s1), _f32_scale(s2), _f32_scale(s3)
        f4, f5, f6, f7 = _f32_scale(s4), _f32_scale(s5), _f32_scale(s6), _f32_scale(s7)
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
    a0, b0, c0, d0 = _f16_row_values(w0, s0, bm, ASM)
    a1, b1, c1, d1 = _f16_row_values(w1, s1, bm, ASM)
    a2, b2, c2, d2 = _f16_row_values(w2, s2, bm, ASM)
    a3, b3, c3, d3 = _f16_row_values(w3, s3, bm, ASM)
    a4, b4, c4, d4 = _f16_row_values(w4, s4, bm, ASM)
    a5, b5, c5, d5 = _f16_row_values(w5, s5, bm, ASM)
    a6, b6, c6, d6 = _f16_row_values(w6, s6, bm, ASM)
    a7, b7, c7, d7 = _f16_row_values(w7, s7, bm, ASM)
    # Column pairs: a = columns (0, 2), b = (1, 3), c = (4, 6), d = (5, 7).
    fa, sca = _f16_column_pair(_max8_u16x2(a0, a1, a2, a3, a4, a5, a6, a7, ASM), bmax, ASM)
    fb, scb = _f16_column_pair(_max8_u16x2(b0, b1, b2, b3, b4, b5, b6, b7, ASM), bmax, ASM)
    fc, scc = _f16_column_pair(_max8_u16x2(c0, c1, c2, c3, c4, c5, c6, c7, ASM), bmax, ASM)
    fd, scd = _f16_column_pair(_max8_u16x2(d0, d1, d2, d3, d4, d5, d6, d7, ASM), bmax, ASM)
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
def _f32_abs_bits(words, scale, J: tl.constexpr):
    """fp32 bits of |decoded value| of column J of `words` (ordered like the values; NaN above Inf)."""
    return _mx_abs_values(words.to(tl.int32, bitcast=True), scale, J)[0].to(tl.int32, bitcast=True)


@triton.jit
def _f32_code_bits(words, scale, inv, J: tl.constexpr):
    """Code of column J of `words` requantized with 2^-e = `inv`: fp32 bits `code << 22`, sign at bit 25."""
    v, sh = _mx_abs_values(words.to(tl.int32, bitcast=True), scale, J)
    return _e2m1_code_bits(v, inv, sh)


@triton.jit
def _f32_column(w0, w1, w2, w3, w4, w5, w6, w7, f0, f1, f2, f3, f4, f5, f6, f7, nan_row, o32, os_ptr,
                col, so, stride_os, oword, oblk, ok, okb, J: tl.constexpr, EVEN: tl.constexpr):
    """Column J of every thread's 8 x 8 block through exact fp32 values (variant 2's arithmetic):
    block maximum over the 8 rows and the 4 lanes of the 32-row block, scale, codes, output word."""
    m = tl.maximum(tl.maximum(tl.maximum(_f32_abs_bits(w0, f0, J), _f32_abs_bits(w1, f1, J)),
                              tl.maximum(_f32_abs_bits(w2, f2, J), _f32_abs_bits(w3, f3, J))),
                   tl.maximum(tl.maximum(_f32_abs_bits(w4, f4, J), _f32_abs_bits(w5, f5, J)),
                              tl.maximum(_f32_abs_bits(w6, f6, J), _f32_abs_bits(w7, f7, J))))
    amax = tl.max(m, axis=1)[:, None, :]            # fp32 bits are ordered like |v|; NaN above Inf
    nan = nan_row | (amax >= 0x7F800000)
    e = tl.maximum((amax >> 23) - 129, -127)        # as in variant 2 (significand 1 or 1.5)
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
