"""Row-wise -> column-wise conversions of quantized activations (for the weight-gradient GEMM).

Backward needs `X^T` quantized along the token dimension. These kernels read the row-wise quantized
`[M, K]` input once, decode it to exact fp32 in registers, transpose in registers / shared memory,
scale each value to its column-wise tile by an exact power of two and round it with the helpers of
`minifloat.py`, and write the quantized `[K, M]` output once; no BF16/FP32 tensor ever touches global
memory. Results equal the references in `reference_conversions.py` bit for bit:

- `fp8_rowwise_to_colwise`: for each 128x128 tile the column-wise scale is the largest of the 128 row
  scales; values are shifted down to it and rounded to E4M3 (subnormals rounded, NaN kept as NaN).
- `mxfp4_rowwise_to_colwise`: `quantize_mxfp4(dequantize_mxfp4(x).T)` on 32x32 tiles.
- `mxfp4_rowwise_to_fp8_colwise`: `quantize_fp8(dequantize_mxfp4(x).T)` on 32x128 -> 128x32 tiles.

The input may be a strided 2-D view (any row stride, contiguous last dimension); outputs are new
contiguous tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in
from ..formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor
from .launch import CONFIGS
from .minifloat import e2m1_abs_f32, e2m1_round, e4m3_abs_f32, e4m3_round, pow2_f32


@triton.jit
def _fp8_rowwise_to_colwise_kernel(q_ptr, qs_ptr, o_ptr, os_ptr, M, K,
                                   stride_q, stride_qs, stride_o, stride_os,
                                   BLOCK_K: tl.constexpr):
    # One program: input rows [128*pid_m, +128) x columns [BLOCK_K*pid_k, +BLOCK_K), inside one tile.
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * 128 + tl.arange(0, 128)
    row_ok = rows < M
    r64 = rows.to(tl.int64)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    code = tl.load(q_ptr + r64[:, None] * stride_q + cols[None, :],
                   mask=row_ok[:, None] & col_ok[None, :], other=0).to(tl.int32)
    tile = (pid_k * BLOCK_K) // 128
    rbyte = tl.load(qs_ptr + r64 * stride_qs + tile, mask=row_ok, other=0).to(tl.int32)
    kt = tl.max(rbyte, axis=0)  # byte 255 (NaN) is the largest, so a NaN row makes the tile NaN

    mag = code & 0x7F
    # |q| * 2^(k_row - kt) <= 448, exact in fp32 (a shift clamped at -127 leaves < 2^-118: code 0 either way)
    shift = pow2_f32(tl.maximum(rbyte - kt, -127))
    c = e4m3_round(e4m3_abs_f32(mag) * shift[:, None]) | (code & 0x80)
    col_nan = (tl.max(mag, axis=0) == 0x7F) | (kt == 255)  # 0x7F (NaN) is the largest code
    c = tl.where(col_nan[None, :], 0, c)

    c_t = tl.trans(c.to(tl.uint8))  # [BLOCK_K, 128]: output rows are input columns
    c64 = cols.to(tl.int64)
    tl.store(o_ptr + c64[:, None] * stride_o + rows[None, :], c_t,
             mask=col_ok[:, None] & row_ok[None, :])
    tl.store(os_ptr + c64 * stride_os + pid_m, tl.where(col_nan, 255, kt).to(tl.uint8), mask=col_ok)


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



def fp8_rowwise_to_colwise_triton(t: FP8Tensor) -> FP8Tensor:
    """FP8 row-wise `[M, K]` -> FP8 tiles of the transposed `[K, M]` matrix, one Triton pass
    (contract and argument checks: `mxa2a.quant.conversions.fp8_rowwise_to_colwise`). Asynchronous on the
    current CUDA stream (no host sync)."""
    q = rows_in(t.data.view(torch.uint8))
    qs = rows_in(t.scales)
    M, K = q.shape
    out = FP8Tensor(torch.empty(K, M, dtype=E4M3_DTYPE, device=t.device),
                    torch.empty(K, M // FP8_TILE, dtype=torch.uint8, device=t.device))
    if M == 0 or K == 0:
        return out
    o = out.data.view(torch.uint8)
    cfg = CONFIGS["fp8_rowwise_to_colwise"]
    grid = (M // FP8_TILE, triton.cdiv(K, cfg.block_k))
    _fp8_rowwise_to_colwise_kernel[grid](q, qs, o, out.scales, M, K, q.stride(0), qs.stride(0),
                                         o.stride(0), out.scales.stride(0), BLOCK_K=cfg.block_k,
                                         num_warps=cfg.num_warps)
    return out


def mxfp4_rowwise_to_colwise_triton(t: MXFP4Tensor) -> MXFP4Tensor:
    """MXFP4 row-wise `[M, K]` -> MXFP4 blocks of the transposed `[K, M]` matrix, one Triton pass
    (contract and argument checks: `mxa2a.quant.conversions.mxfp4_rowwise_to_colwise`). Asynchronous on the
    current CUDA stream (no host sync)."""
    x = rows_in(t.data)
    xs = rows_in(t.scales)
    M, K = x.shape[0], x.shape[1] * 2
    out = MXFP4Tensor(torch.empty(K, M // 2, dtype=torch.uint8, device=t.device),
                      torch.empty(K, M // MXFP4_BLOCK, dtype=torch.uint8, device=t.device), t.scale_mode)
    if M == 0 or K == 0:
        return out
    cfg = CONFIGS["mxfp4_rowwise_to_colwise"]
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    kernel = _mxfp4_rowwise_to_colwise_v1_kernel if cfg.variant == 1 else _mxfp4_rowwise_to_colwise_kernel
    kernel[grid](x, xs, out.data, out.scales, M, K, x.stride(0), xs.stride(0), out.data.stride(0),
                 out.scales.stride(0), BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out


def mxfp4_rowwise_to_fp8_colwise_triton(t: MXFP4Tensor) -> FP8Tensor:
    """MXFP4 row-wise `[M, K]` -> FP8 tiles of the transposed `[K, M]` matrix, one Triton pass
    (contract and argument checks: `mxa2a.quant.conversions.mxfp4_rowwise_to_fp8_colwise`). Asynchronous on the
    current CUDA stream (no host sync)."""
    x = rows_in(t.data)
    xs = rows_in(t.scales)
    M, K = x.shape[0], x.shape[1] * 2
    out = FP8Tensor(torch.empty(K, M, dtype=E4M3_DTYPE, device=t.device),
                    torch.empty(K, M // FP8_TILE, dtype=torch.uint8, device=t.device))
    if M == 0 or K == 0:
        return out
    o = out.data.view(torch.uint8)
    cfg = CONFIGS["mxfp4_rowwise_to_fp8_colwise"]
    grid = (M // FP8_TILE, triton.cdiv(K, cfg.block_k))
    kernel = (_mxfp4_rowwise_to_fp8_colwise_v1_kernel if cfg.variant == 1
              else _mxfp4_rowwise_to_fp8_colwise_kernel)
    kernel[grid](x, xs, o, out.scales, M, K, x.stride(0), xs.stride(0), o.stride(0), out.scales.stride(0),
                 BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out
