"""Direct FP8 (E4M3, 1x128 tiles) <-> MXFP4 (E2M1, 1x32 blocks) conversion kernels.

Each kernel reads the quantized input once and writes the quantized output once; no BF16/FP32 tensor
touches global memory. In registers, each kernel decodes to exactly the fp32 values the two-step path
holds (`minifloat.py`: code bits dropped into fp32 patterns, power-of-two products), takes the scale from
the bit pattern of the maximum, and rounds with one magic-number addition, so the results equal the
two-step references (`reference_conversions.py`) bit for bit, corner cases included: a value of 2^128
or more is Inf in fp32, so its block / tile becomes NaN; fp32-subnormal maxima get the minimum scale.

Both kernels take a row stride for every operand, so inputs and outputs may be strided 2-D views such as
the halves of a packed wire row `uint8 [N, K/2 + K/32]`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in, rows_out
from ..formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor
from .launch import CONFIGS
from .minifloat import e2m1_abs_f32, e2m1_round, e4m3_abs_f32, e4m3_round, pow2_f32


@triton.jit
def _fp8_to_mxfp4_kernel(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K,
                         stride_q, stride_qs, stride_x, stride_xs,
                         RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128  # FP8 tiles per program row
    NB: tl.constexpr = BLOCK_K // 32   # MXFP4 blocks per program row
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (cols < K)[None, :]
    code = tl.load(q_ptr + r64[:, None] * stride_q + cols[None, :], mask=mask, other=0).to(tl.int32)
    tiles = pid_k * NT + tl.arange(0, NT)
    tmask = row_ok[:, None] & (tiles < K // 128)[None, :]
    tbyte = tl.load(qs_ptr + r64[:, None] * stride_qs + tiles[None, :], mask=tmask, other=0).to(tl.int32)
    bbyte = tl.reshape(tl.broadcast_to(tbyte[:, :, None], (BLOCK_M, NT, 4)), (BLOCK_M, NB))

    mag = tl.reshape(code & 0x7F, (BLOCK_M, NB, 32))
    sign = tl.reshape((code >> 4) & 8, (BLOCK_M, NB, 32))
    # The dequantized |v| = |q| * 2^k in fp32, exactly as the two-step path has it (Inf from 2^128 on).
    v = e4m3_abs_f32(mag) * pow2_f32(tl.minimum(bbyte, 254) - 127)[:, :, None]
    a = v.to(tl.int32, bitcast=True)
    amax = tl.max(a, axis=2)  # fp32 bits are ordered like |v|; Inf is above every finite value
    bad = (amax >= 0x7F800000) | (tl.max(mag, axis=2) == 0x7F) | (bbyte == 255)  # Inf, E4M3 NaN, NaN tile
    e = (amax >> 23) - 129  # floor(log2 amax) - 2
    if RCEIL:
        e += ((amax & 0x7FFFFF) > 0x400000).to(tl.int32)  # significand of amax above 1.5
    e = tl.where(amax < 0x800000, -127, e)  # zero or fp32-subnormal block maximum
    e = tl.minimum(tl.maximum(e, -127), 127)

    c = e2m1_round(v * pow2_f32(-e)[:, :, None])  # |v| * 2^-e < 8, exact
    if not RCEIL:
        c = tl.minimum(c, 7)  # floor saturates maxima above 6; rceil never gets there
    c = tl.where(bad[:, :, None], 0, c | sign)
    nan_blk = bad

    pairs = tl.reshape(c, (BLOCK_M, BLOCK_K // 2, 2))
    lo, hi = tl.split(pairs)
    packed = (lo | (hi << 4)).to(tl.uint8)
    pcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    pmask = row_ok[:, None] & (pcols < K // 2)[None, :]
    tl.store(x_ptr + r64[:, None] * stride_x + pcols[None, :], packed, mask=pmask)
    sbyte = tl.where(nan_blk, 255, e + 127).to(tl.uint8)
    bcols = pid_k * NB + tl.arange(0, NB)
    bmask = row_ok[:, None] & (bcols < K // 32)[None, :]
    tl.store(xs_ptr + r64[:, None] * stride_xs + bcols[None, :], sbyte, mask=bmask)


@triton.jit
def _fp8_to_mxfp4_v1_kernel(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K,
                            stride_q, stride_qs, stride_x, stride_xs,
                            RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Variant 1: every value of an MXFP4 block lies in one FP8 tile, so the block maximum is the
    # largest magnitude code (integer max; E4M3 codes are ordered like values) decoded once per block,
    # and each value is scaled by the single per-block factor 2^(k - e): one multiply per value less.
    NT: tl.constexpr = BLOCK_K // 128
    NB: tl.constexpr = BLOCK_K // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (cols < K)[None, :]
    code = tl.load(q_ptr + r64[:, None] * stride_q + cols[None, :], mask=mask, other=0,
                   eviction_policy="evict_first").to(tl.int32)
    tiles = pid_k * NT + tl.arange(0, NT)
    tmask = row_ok[:, None] & (tiles < K // 128)[None, :]
    tbyte = tl.load(qs_ptr + r64[:, None] * stride_qs + tiles[None, :], mask=tmask, other=0).to(tl.int32)
    bbyte = tl.reshape(tl.broadcast_to(tbyte[:, :, None], (BLOCK_M, NT, 4)), (BLOCK_M, NB))

    mag = tl.reshape(code & 0x7F, (BLOCK_M, NB, 32))
    mmax = tl.max(mag, axis=2)
    k = tl.minimum(bbyte, 254) - 127
    # The two-step maximum |v| = |q|max * 2^k in fp32 (Inf from 2^128 on), per block.
    amax = (e4m3_abs_f32(mmax) * pow2_f32(k)).to(tl.int32, bitcast=True)
    bad = (amax >= 0x7F800000) | (mmax == 0x7F) | (bbyte == 255)  # Inf, E4M3 NaN, NaN tile
    e = (amax >> 23) - 129  # floor(log2 amax) - 2
    if RCEIL:
        e += ((amax & 0x7FFFFF) > 0x400000).to(tl.int32)
    e = tl.where(amax < 0x800000, -127, e)
    e = tl.minimum(tl.maximum(e, -127), 127)
    # |q| * 2^(k - e) equals the two-step |v| * 2^-e wherever bad is false: k - e lies in [-7, 11] for
    # a normal maximum and in [0, 10] for a zero / subnormal one (e = -127), so both products are exact.
    f = pow2_f32(tl.minimum(tl.maximum(k - e, -127), 127))
    c = e2m1_round(e4m3_abs_f32(mag) * f[:, :, None])
    if not RCEIL:
        c = tl.minimum(c, 7)
    c = tl.where(bad[:, :, None], 0, c | tl.reshape((code >> 4) & 8, (BLOCK_M, NB, 32)))

    lo, hi = tl.split(tl.reshape(c, (BLOCK_M, BLOCK_K // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    pcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    pmask = row_ok[:, None] & (pcols < K // 2)[None, :]
    tl.store(x_ptr + r64[:, None] * stride_x + pcols[None, :], packed, mask=pmask)
    bcols = pid_k * NB + tl.arange(0, NB)
    bmask = row_ok[:, None] & (bcols < K // 32)[None, :]
    tl.store(xs_ptr + r64[:, None] * stride_xs + bcols[None, :], tl.where(bad, 255, e + 127).to(tl.uint8),
             mask=bmask)


@triton.jit
def _mxfp4_to_fp8_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                         stride_x, stride_xs, stride_q, stride_qs,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128
    NB: tl.constexpr = BLOCK_K // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)

    pcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    pmask = row_ok[:, None] & (pcols < K // 2)[None, :]
    packed = tl.load(x_ptr + r64[:, None] * stride_x + pcols[None, :], mask=pmask, other=0).to(tl.int32)
    code = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_M, NT, 128))
    bcols = pid_k * NB + tl.arange(0, NB)
    bmask = row_ok[:, None] & (bcols < K // 32)[None, :]
    bbyte = tl.load(xs_ptr + r64[:, None] * stride_xs + bcols[None, :], mask=bmask, other=0).to(tl.int32)
    scale = pow2_f32(tl.minimum(bbyte, 254) - 127)  # per block [BLOCK_M, NB]
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK_M, NB, 32)), (BLOCK_M, NT, 128))
    nan_blk = tl.reshape((bbyte == 255).to(tl.int32), (BLOCK_M, NT, 4))

    # The dequantized |v| = |x| * 2^(b - 127) in fp32, exactly as the two-step path has it.
    v = e2m1_abs_f32(code & 7) * scale
    amax = tl.max(v.to(tl.int32, bitcast=True), axis=2)  # fp32 bits are ordered like |v|
    nan_tile = (amax >= 0x7F800000) | (tl.max(nan_blk, axis=2) > 0)  # Inf (>= 2^128) or a NaN block
    # k = ceil(log2(amax / 448)) = floor(log2 amax) - 8 + [significand > 1.75]   (448 = 1.75 * 2^8)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)  # zero or fp32-subnormal tile maximum
    k = tl.minimum(tl.maximum(k, -127), 127)

    c = e4m3_round(v * pow2_f32(-k)[:, :, None])  # |v| * 2^-k <= 448, exact
    c = tl.where(nan_tile[:, :, None], 0, c | ((code & 8) << 4))

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (cols < K)[None, :]
    tl.store(q_ptr + r64[:, None] * stride_q + cols[None, :],
             tl.reshape(c, (BLOCK_M, BLOCK_K)).to(tl.uint8), mask=mask)
    sbyte = tl.where(nan_tile, 255, k + 127).to(tl.uint8)
    tiles = pid_k * NT + tl.arange(0, NT)
    tmask = row_ok[:, None] & (tiles < K // 128)[None, :]
    tl.store(qs_ptr + r64[:, None] * stride_qs + tiles[None, :], sbyte, mask=tmask)


@triton.jit
def _mxfp4_to_fp8_v1_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                            stride_x, stride_xs, stride_q, stride_qs,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Variant 1: block maxima from the integer maximum of the E2M1 codes (ordered like values), decoded
    # once per block; every value is scaled by the one per-block factor 2^(b - 127 - k): one multiply
    # per value less than `_mxfp4_to_fp8_kernel`.
    NT: tl.constexpr = BLOCK_K // 128
    NB: tl.constexpr = BLOCK_K // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    r64 = rows.to(tl.int64)

    pcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    pmask = row_ok[:, None] & (pcols < K // 2)[None, :]
    packed = tl.load(x_ptr + r64[:, None] * stride_x + pcols[None, :], mask=pmask, other=0,
                     eviction_policy="evict_first").to(tl.int32)
    code = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_M, NB, 32))
    bcols = pid_k * NB + tl.arange(0, NB)
    bmask = row_ok[:, None] & (bcols < K // 32)[None, :]
    bbyte = tl.load(xs_ptr + r64[:, None] * stride_xs + bcols[None, :], mask=bmask, other=0).to(tl.int32)
    b = tl.minimum(bbyte, 254) - 127
    cmax = tl.max(code & 7, axis=2)  # [BLOCK_M, NB]
    # The two-step block maximum |x|max * 2^b in fp32 (Inf from 2^128 on), then the tile maximum.
    bmax = (e2m1_abs_f32(cmax) * pow2_f32(b)).to(tl.int32, bitcast=True)
    amax = tl.max(tl.reshape(bmax, (BLOCK_M, NT, 4)), axis=2)
    nan_tile = (amax >= 0x7F800000) | (tl.max(tl.reshape((bbyte == 255).to(tl.int32), (BLOCK_M, NT, 4)),
                                                 axis=2) > 0)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)
    k = tl.minimum(tl.maximum(k, -127), 127)
    # |x| * 2^(b - k) is the two-step |v| * 2^-k: b - k <= 7 for a block with a nonzero code; below
    # -127 both products are < 2^-124 and round to code 0; a clamp only ever meets zero codes otherwise.
    kb = tl.reshape(tl.broadcast_to(k[:, :, None], (BLOCK_M, NT, 4)), (BLOCK_M, NB))
    f = pow2_f32(tl.minimum(tl.maximum(b - kb, -127), 127))
    c = e4m3_round(e2m1_abs_f32(code & 7) * f[:, :, None]) | ((code & 8) << 4)
    nan_b = tl.reshape(tl.broadcast_to(nan_tile[:, :, None], (BLOCK_M, NT, 4)), (BLOCK_M, NB))
    c = tl.where(nan_b[:, :, None], 0, c)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (cols < K)[None, :]
    tl.store(q_ptr + r64[:, None] * stride_q + cols[None, :],
             tl.reshape(c, (BLOCK_M, BLOCK_K)).to(tl.uint8), mask=mask)
    tiles = pid_k * NT + tl.arange(0, NT)
    tmask = row_ok[:, None] & (tiles < K // 128)[None, :]
    tl.store(qs_ptr + r64[:, None] * stride_qs + tiles[None, :],
             tl.where(nan_tile, 255, k + 127).to(tl.uint8), mask=tmask)




def fp8_to_mxfp4_triton(t: FP8Tensor, scale_mode: str = "rceil", *,
                        out: MXFP4Tensor | None = None) -> MXFP4Tensor:
    """FP8 `[..., K]` -> MXFP4 `[..., K]` in one Triton pass; contract and argument checks in
    `mxa2a.quant.conversions.fp8_to_mxfp4`. `t` and `out` may hold strided row views (contiguous last
    dimension); `out` is written in place. Asynchronous on the current CUDA stream (no host sync)."""
    q = rows_in(t.data.view(torch.uint8))
    qs = rows_in(t.scales)
    M, K = q.shape
    lead = tuple(t.shape[:-1])
    if out is None:
        out = MXFP4Tensor(torch.empty(*lead, K // 2, dtype=torch.uint8, device=t.device),
                          torch.empty(*lead, K // MXFP4_BLOCK, dtype=torch.uint8, device=t.device),
                          scale_mode)
    x = rows_out(out.data, "fp8_to_mxfp4", "out.data")
    xs = rows_out(out.scales, "fp8_to_mxfp4", "out.scales")
    if M == 0 or K == 0:
        return MXFP4Tensor(out.data, out.scales, scale_mode)
    cfg = CONFIGS["fp8_to_mxfp4"]
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    kernel = _fp8_to_mxfp4_v1_kernel if cfg.variant == 1 else _fp8_to_mxfp4_kernel
    kernel[grid](q, qs, x, xs, M, K, q.stride(0), qs.stride(0), x.stride(0), xs.stride(0),
                 RCEIL=scale_mode == "rceil", BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return MXFP4Tensor(out.data, out.scales, scale_mode)


def mxfp4_to_fp8_triton(t: MXFP4Tensor, *, out: FP8Tensor | None = None) -> FP8Tensor:
    """MXFP4 `[..., K]` -> FP8 `[..., K]` (K a multiple of 128) in one Triton pass; contract and
    argument checks in `mxa2a.quant.conversions.mxfp4_to_fp8`. `t` and `out` may hold strided row
    views (contiguous last dimension); `out` is written in place. Asynchronous (no host sync)."""
    x = rows_in(t.data)
    xs = rows_in(t.scales)
    M, K = x.shape[0], x.shape[1] * 2
    lead = tuple(t.shape[:-1])
    if out is None:
        out = FP8Tensor(torch.empty(*lead, K, dtype=E4M3_DTYPE, device=t.device),
                        torch.empty(*lead, K // FP8_TILE, dtype=torch.uint8, device=t.device))
    q = rows_out(out.data.view(torch.uint8), "mxfp4_to_fp8", "out.data")
    qs = rows_out(out.scales, "mxfp4_to_fp8", "out.scales")
    if M == 0 or K == 0:
        return out
    cfg = CONFIGS["mxfp4_to_fp8"]
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    kernel = _mxfp4_to_fp8_v1_kernel if cfg.variant == 1 else _mxfp4_to_fp8_kernel
    kernel[grid](x, xs, q, qs, M, K, x.stride(0), xs.stride(0), q.stride(0), qs.stride(0),
                 BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out
