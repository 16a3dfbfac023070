"""Direct FP8 (E4M3, 1x128 tiles) <-> MXFP4 (E2M1, 1x32 blocks) conversion kernels.

Each kernel reads the quantized input once and writes the quantized output once; no BF16/FP32 tensor
touches global memory. In registers, each kernel decodes to exactly the fp32 values the two-step path
holds (`minifloat.py`: code bits dropped into fp32 patterns, power-of-two products), takes the scale from
the bit pattern of the maximum, and rounds with one magic-number addition, so the results equal the
two-step references (`reference_conversions.py`) bit for bit, corner cases included: a value of 2^128
or more is Inf in fp32, so its block / tile becomes NaN; fp32-subnormal maxima get the minimum scale.

Both kernels take a row stride for every operand, so inputs and outputs may be strided 2-D views such as
the halves of a packed wire row `uint8 [N, K/2 + K/32]`.

Variants (`CONFIGS[name].variant`; same bits): 0 decodes every value to fp32; 1 takes block maxima from
integer code maxima and scales by one per-block power of two; 2 is integer-only and works on four codes per
32-bit word (SWAR): the scale from the maximum code's exponent field, the element codes from a shift of the
code by a per-block amount (FP8 -> MXFP4: `RNE(m / 4) + 2d`, small values by two threshold compares;
MXFP4 -> FP8: `4c + 8(6 + d)`), with a constexpr EVEN specialization (no masks) for whole tiles. FP8 ->
MXFP4 is bound by the integer pipes: its block maximum uses 16-bit SIMD maxima (`max.u16x2`), byte masks
and nibble packing are byte permutes, and right shifts are multiply-highs, which run on the FMA pipe. A
program whose data leaves variant 2's fast case (FP8 -> MXFP4: a nonzero block whose largest code is
below ~2^-3 * 2^k, i.e. 2^12 under its tile's range, or tile scales at the bottom of E8M0; MXFP4 -> FP8: a
nonzero block whose values would become E4M3 subnormals, ~2^14 under its tile's largest) runs the
variant-1 body instead, one row's 128-column tile at a time, decided per program. Variant 3 of MXFP4 -> FP8
keeps variant 2's scales and fast-path test and replaces the per-code arithmetic by table lookups: in a
block of the fast path the E4M3 magnitudes of the eight E2M1 codes are eight bytes made by two
multiply-adds, and one byte permute (`byteperm.py`) looks up four codes. Variants 2 and 3 need
4-byte aligned rows (2-byte for MXFP4 output; variant 3 also aligned scale rows); the wrappers fall back
to variant 1 otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in, rows_out
from ..formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor
from .byteperm import byte_perm, use_asm
from .launch import CONFIGS
from .minifloat import e2m1_abs_f32, e2m1_round, e4m3_abs_f32, e4m3_round, pow2_f32
from .simd16 import max_u16x2, reduce_max_u16x2


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
    _fp8_to_mxfp4_v1_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
                          tl.program_id(0), tl.program_id(1), RCEIL, BLOCK_M, BLOCK_K)


@triton.jit
def _fp8_to_mxfp4_v1_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
                          pid_m, pid_k, RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Variant 1: every value of an MXFP4 block lies in one FP8 tile, so the block maximum is the
    # largest magnitude code (integer max; E4M3 codes are ordered like values) decoded once per block,
    # and each value is scaled by the single per-block factor 2^(k - e): one multiply per value less.
    NT: tl.constexpr = BLOCK_K // 128
    NB: tl.constexpr = BLOCK_K // 32
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
    _mxfp4_to_fp8_v1_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                          tl.program_id(0), tl.program_id(1), BLOCK_M, BLOCK_K)


@triton.jit
def _mxfp4_to_fp8_v1_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                          pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Variant 1: block maxima from the integer maximum of the E2M1 codes (ordered like values), decoded
    # once per block; every value is scaled by the one per-block factor 2^(b - 127 - k): one multiply
    # per value less than `_mxfp4_to_fp8_kernel`.
    NT: tl.constexpr = BLOCK_K // 128
    NB: tl.constexpr = BLOCK_K // 32
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



@triton.jit
def _word_tile_indices(pid_m, pid_k, BLOCK_M: tl.constexpr, NT: tl.constexpr):
    """Indices of the word-wise variants' [rows, tiles, 4 blocks] tensors: the program's rows (and as
    int64), its FP8 tiles as `[1, NT, 1]` and the block of each tile as `[1, 1, 4]`."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    t3 = (pid_k * NT + tl.arange(0, NT))[None, :, None]
    return rows, rows.to(tl.int64), t3, tl.arange(0, 4)[None, None, :]


@triton.jit
def _fp8_to_mxfp4_v2_kernel(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K,
                            stride_q, stride_qs, stride_x, stride_xs,
                            RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                            EVEN: tl.constexpr, ASM: tl.constexpr):
    # Variant 2: integer-only, four E4M3 codes per 32-bit word, no fp32 per element. Tensors are
    # [rows, tiles, 4 blocks, 4 words]; a block's 8 words are loaded as two such halves so that one
    # thread holds the whole block. Needs 4-byte aligned input rows and 2-byte aligned output rows.
    NT: tl.constexpr = BLOCK_K // 128
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows, r64, t3, b3 = _word_tile_indices(pid_m, pid_k, BLOCK_M, NT)
    qrow = (q_ptr + r64 * stride_q).to(tl.pointer_type(tl.uint32))
    lo_ptrs = qrow[:, None, None, None] + (t3 * 32 + b3 * 8)[:, :, :, None] + tl.arange(0, 4)[None, None, None, :]
    ts_ptrs = qs_ptr + r64[:, None, None] * stride_qs + t3
    if EVEN:
        w_lo = tl.load(lo_ptrs, eviction_policy="evict_first")
        w_hi = tl.load(lo_ptrs + 4, eviction_policy="evict_first")
        tb = tl.load(ts_ptrs).to(tl.int32)
    else:
        ok = (rows < M)[:, None, None] & (t3 < K // 128)
        w_lo = tl.load(lo_ptrs, mask=ok[:, :, :, None], other=0, eviction_policy="evict_first")
        w_hi = tl.load(lo_ptrs + 4, mask=ok[:, :, :, None], other=0, eviction_policy="evict_first")
        tb = tl.load(ts_ptrs, mask=ok, other=0).to(tl.int32)

    # Largest magnitude code of each block (E4M3 codes are ordered like values): a maximum of 16-bit
    # lanes leaves the largest odd byte of each lane on top; of the words shifted by 8, the largest even one.
    m_lo = w_lo & 0x7F7F7F7F
    m_hi = w_hi & 0x7F7F7F7F
    odd = max_u16x2(reduce_max_u16x2(m_lo, 3, ASM), reduce_max_u16x2(m_hi, 3, ASM), ASM)
    even = max_u16x2(reduce_max_u16x2(m_lo << 8, 3, ASM), reduce_max_u16x2(m_hi << 8, 3, ASM), ASM)
    top = max_u16x2(odd, even, ASM)  # the block's largest byte in bits 8-15 or 24-31
    mmax = tl.maximum((top >> 8) & 0xFF, top >> 24).to(tl.int32)
    ex = mmax >> 3  # exponent field of the largest code
    if RCEIL:
        g = (mmax + 3) >> 3  # e + 9 - k: exponent plus [significand above 1.5]
    else:
        g = ex
    # With a normal largest code the two-step amax = code value * 2^k is an fp32 normal iff ex + tb >= 8
    # and Inf iff ex + tb >= 262; the scale byte is e + 127 = g + tb - 9.
    bad = (mmax == 0x7F) | (tb == 255) | (ex + tb >= 262)
    zero = mmax == 0
    special = bad | zero
    slow = (~special) & ((g < 4) | (ex + tb < 9))
    if tl.max(slow.to(tl.int32)) != 0:
        # Rare (a nonzero block whose largest code is under ~2^-3, i.e. 2^12 below its tile's range, or
        # scales at the bottom of E8M0): the general path, one row's tile at a time so that its registers
        # do not lower the occupancy of the fast path.
        if ASM:
            for i in range(BLOCK_M * NT):
                _fp8_to_mxfp4_v1_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x,
                                      stride_xs, pid_m * BLOCK_M + i // NT, pid_k * NT + i % NT, RCEIL, 1, 128)
        else:  # the interpreter: whole rows (its cost is per operation, not per register)
            for r in range(BLOCK_M):
                _fp8_to_mxfp4_v1_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x,
                                      stride_xs, pid_m * BLOCK_M + r, pid_k, RCEIL, 1, BLOCK_K)
    else:
        # Per block, with d = 3 - g (the exponent shift from E4M3 to E2M1 codes): an element whose value
        # y = |v| 2^-e is >= 1 has E2M1 code RNE(m / 4) + 2d (a shift of the 7-bit code m); below 1 the
        # code is [y > 0.25] + [y >= 0.75], i.e. m >= t1 plus m >= t2. Lanes compute
        #   c = [m >= t1] + [m >= t2] + relu(RNE(m / 4) + 2d - 2)
        # with relu read from bit 5 of RNE(m / 4) + 2d + 30 (bias 4 * (30 + 2d) + 1 added before the shift).
        # NaN and zero blocks use bias 1 and thresholds 128, which give code 0.
        cb = (tl.where(special, 1, 145 - 8 * g).to(tl.uint32) * 0x01010101)[:, :, :, None]
        u1 = (tl.where(special, 0, 128 - tl.maximum(8 * g - 31, 5)).to(tl.uint32) * 0x01010101)[:, :, :, None]
        u2 = (tl.where(special, 0, 148 - 8 * g).to(tl.uint32) * 0x01010101)[:, :, :, None]
        sm = tl.where(bad, 0, 0x08080808).to(tl.uint32)[:, :, :, None]
        c_lo = _e4m3x4_to_e2m1x4(w_lo, m_lo, cb, u1, u2, sm, RCEIL, ASM)
        c_hi = _e4m3x4_to_e2m1x4(w_hi, m_hi, cb, u1, u2, sm, RCEIL, ASM)
        xrow = (x_ptr + r64 * stride_x).to(tl.pointer_type(tl.uint16))
        out_ptrs = xrow[:, None, None, None] + (t3 * 32 + b3 * 8)[:, :, :, None] + tl.arange(0, 4)[None, None, None, :]
        xs_ptrs = xs_ptr + r64[:, None, None] * stride_xs + t3 * 4 + b3
        sbyte = tl.where(bad, 255, tl.where(zero, 0, g + tb - 9)).to(tl.uint8)
        if EVEN:
            tl.store(out_ptrs, c_lo)
            tl.store(out_ptrs + 4, c_hi)
            tl.store(xs_ptrs, sbyte)
        else:
            tl.store(out_ptrs, c_lo, mask=ok[:, :, :, None])
            tl.store(out_ptrs + 4, c_hi, mask=ok[:, :, :, None])
            tl.store(xs_ptrs, sbyte, mask=ok)


@triton.jit
def _e4m3x4_to_e2m1x4(w, m, cb, u1, u2, sm, RCEIL: tl.constexpr, ASM: tl.constexpr):
    """Four E4M3 codes (bytes of `w`; `m` = magnitudes) -> four E2M1 codes packed into 16 bits."""
    # Right shifts as multiply-highs (x >> k = umulhi(x, 2^(32 - k))): they run on the FMA pipe and leave
    # the integer ALU, which this kernel saturates, to the logic operations.
    x1 = m + tl.umulhi(w & 0x04040404, 1 << 30) + cb   # m + RNE bit + bias; bit 7: RNE(m / 4) + 2d >= 2
    keep = byte_perm(x1, x1, tl.full(x1.shape, 0xBA98, tl.uint32), ASM)  # 0xFF where bit 7 is set
    c = ((tl.umulhi(x1, 1 << 30) & keep & 0x1F1F1F1F) + tl.umulhi((m + u1) & 0x80808080, 1 << 25)
         + tl.umulhi((m + u2) & 0x80808080, 1 << 25))
    if not RCEIL:
        c -= (c >> 3) & 0x01010101               # floor: 8 saturates to 6 (code 7)
    c |= tl.umulhi(w, 1 << 28) & sm              # sign bit (cleared in NaN blocks)
    p = c | tl.umulhi(c, 1 << 28)                # [c0 | c1 << 4, *, c2 | c3 << 4, *]
    return byte_perm(p, p, tl.full(p.shape, 0x2020, tl.uint32), ASM).to(tl.uint16)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _e2m1_block_exponent(o, a, bbyte):
    """From the OR of a block's code words `o`, the OR of `w & (w << 1)` `a` and its scale byte: whether
    the block is nonzero, and p = floor(log2 block max) + 128 (0 for a zero block, 512 for a NaN block).
    Some |code| >= 2, >= 4, >= 6 shows in bits 1|2, bit 2, bits 1&2 of a nibble."""
    nz = (o & 0x77777777) != 0
    ebits = (((o & 0x66666666) != 0).to(tl.int32) + ((o & 0x44444444) != 0).to(tl.int32)
             + ((a & 0x44444444) != 0).to(tl.int32))  # floor(log2 |x|max) + 1 for a nonzero block
    return nz, tl.where(bbyte == 255, 512, tl.where(nz, ebits + bbyte, 0))


@triton.jit
def _mxfp4_to_fp8_general(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                          pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """The variant-1 body over a variant-2/3 program's tile: on a GPU one row's 128-column tile at a
    time, so that its registers do not lower the occupancy of the fast path; under the interpreter whole
    rows (its cost is per operation, not per register)."""
    NT: tl.constexpr = BLOCK_K // 128
    if ASM:
        for i in range(BLOCK_M * NT):
            _mxfp4_to_fp8_v1_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                                  pid_m * BLOCK_M + i // NT, pid_k * NT + i % NT, 1, 128)
    else:
        for r in range(BLOCK_M):
            _mxfp4_to_fp8_v1_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                                  pid_m * BLOCK_M + r, pid_k, 1, BLOCK_K)


@triton.jit
def _mxfp4_to_fp8_v2_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                            stride_x, stride_xs, stride_q, stride_qs,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr,
                            ASM: tl.constexpr):
    # Variant 2: integer-only, four codes per 32-bit word. Tensors are [rows, tiles, 4 blocks, words]:
    # a thread holds whole 16-byte blocks (4 words of 8 nibbles). Needs 4-byte aligned rows (wrapper).
    NT: tl.constexpr = BLOCK_K // 128
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows, r64, t3, b3 = _word_tile_indices(pid_m, pid_k, BLOCK_M, NT)
    xrow = (x_ptr + r64 * stride_x).to(tl.pointer_type(tl.uint32))
    xw_ptrs = xrow[:, None, None, None] + (t3 * 16 + b3 * 4)[:, :, :, None] + tl.arange(0, 4)[None, None, None, :]
    xs_ptrs = xs_ptr + r64[:, None, None] * stride_xs + t3 * 4 + b3
    if EVEN:
        w = tl.load(xw_ptrs, eviction_policy="evict_first")
        bbyte = tl.load(xs_ptrs).to(tl.int32)
    else:
        ok = (rows < M)[:, None, None] & (t3 < K // 128)
        w = tl.load(xw_ptrs, mask=ok[:, :, :, None], other=0, eviction_policy="evict_first")
        bbyte = tl.load(xs_ptrs, mask=ok, other=0).to(tl.int32)

    # The tile's largest p gives k + 127 = p - 9 (E2M1 significands are never above 1.75); p >= 256 is
    # fp32 Inf -> NaN tile.
    nz, p = _e2m1_block_exponent(tl.reduce(w, 3, _or), tl.reduce(w & (w << 1), 3, _or), bbyte)
    pmax = tl.max(p, axis=2)
    nan_t = pmax >= 256
    kbyte = tl.maximum(pmax - 9, 0)
    delta = bbyte - kbyte[:, :, None]  # block exponent - tile exponent
    slow = nz & (delta < -5) & (pmax < 256)[:, :, None]  # a value below 2^-6 after scaling: E4M3 subnormal
    if tl.max(slow.to(tl.int32)) != 0:
        # Rare (a nonzero block ~2^14 below its tile's largest: E4M3 subnormals): the general path.
        _mxfp4_to_fp8_general(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                              pid_m, pid_k, BLOCK_M, BLOCK_K, ASM)
    else:
        # Every nonzero value is an E4M3 normal: code = 4c + 8(6 + delta) for c >= 2, 8(6 + delta) for
        # c = 1 (0.5), 0 for c = 0; per byte lane: n2 = [c >= 2], n1 = [c >= 1].
        x = w & tl.where(nan_t, 0, -1).to(tl.uint32, bitcast=True)[:, :, None, None]
        dq = (delta * 2 + 11).to(tl.uint32, bitcast=True)
        xa, xb = tl.split(tl.reshape(x, (BLOCK_M, NT, 4, 2, 2)))  # words 0, 2 and words 1, 3 of a block
        x0, x2 = tl.split(xa)
        x1, x3 = tl.split(xb)
        # Output words 0..3 of a block come from input words 0, 1; output words 4..7 from 2, 3.
        out_a = tl.reshape(_four_out_words(x0, x1, dq), (BLOCK_M, NT, 4, 4))
        out_b = tl.reshape(_four_out_words(x2, x3, dq), (BLOCK_M, NT, 4, 4))
        qrow = (q_ptr + r64 * stride_q).to(tl.pointer_type(tl.uint32))
        qw_ptrs = (qrow[:, None, None, None] + (t3 * 32 + b3 * 8)[:, :, :, None]
                   + tl.arange(0, 4)[None, None, None, :])
        # The tile scale byte is stored by the thread of the tile's first block (no layout change).
        qs_ptrs = qs_ptr + r64[:, None, None] * stride_qs + t3 + b3 * 0
        sbyte = tl.where(nan_t, 255, kbyte).to(tl.uint8)[:, :, None] + tl.zeros_like(b3).to(tl.uint8)
        if EVEN:
            tl.store(qw_ptrs, out_a)
            tl.store(qw_ptrs + 4, out_b)
            tl.store(qs_ptrs, sbyte, mask=b3 == 0)
        else:
            tl.store(qw_ptrs, out_a, mask=ok[:, :, :, None])
            tl.store(qw_ptrs + 4, out_b, mask=ok[:, :, :, None])
            tl.store(qs_ptrs, sbyte, mask=ok & (b3 == 0))


@triton.jit
def _e2m1x4_to_e4m3x4(v, dq):
    """Four E2M1 codes (one per byte, sign in bit 3) -> four E4M3 codes, for values that land in the
    E4M3 normal range: |code| = 4c + 4[c >= 2] + 4[c >= 1] * dq, dq = 2 * (6 + delta) - 1."""
    vm = v & 0x07070707
    c4 = vm << 2
    n2 = ((vm << 1) | vm) & 0x04040404  # 4 [c >= 2]
    n1 = (c4 | n2) & 0x04040404         # 4 [c >= 1]
    return (c4 + n2 + n1 * dq) | ((v << 4) & 0x80808080)


@triton.jit
def _four_out_words(wa, wb, dq):
    """Two words of packed E2M1 (16 codes) -> four words of E4M3 codes, in order, as [..., 2, 2]."""
    # Even / odd bytes first ([b0, 0, b2, 0] and [b1, 0, b3, 0]), one nibble per byte, convert, then
    # pair the 16-bit halves back into element order.
    ea = _e2m1x4_to_e4m3x4(_spread_nibbles(wa & 0x00FF00FF), dq)
    oa = _e2m1x4_to_e4m3x4(_spread_nibbles((wa >> 8) & 0x00FF00FF), dq)
    eb = _e2m1x4_to_e4m3x4(_spread_nibbles(wb & 0x00FF00FF), dq)
    ob = _e2m1x4_to_e4m3x4(_spread_nibbles((wb >> 8) & 0x00FF00FF), dq)
    o0 = (ea & 0xFFFF) | (oa << 16)
    o1 = (ea >> 16) | (oa & 0xFFFF0000)
    o2 = (eb & 0xFFFF) | (ob << 16)
    o3 = (eb >> 16) | (ob & 0xFFFF0000)
    return tl.join(tl.join(o0, o2), tl.join(o1, o3))


@triton.jit
def _spread_nibbles(t):
    """Bytes [b0, 0, b1, 0] -> one nibble per byte [b0 & 15, b0 >> 4, b1 & 15, b1 >> 4]."""
    return (t | (t << 4)) & 0x0F0F0F0F


@triton.jit
def _mxfp4_to_fp8_v3_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                            stride_x, stride_xs, stride_q, stride_qs,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr,
                            ASM: tl.constexpr):
    # Variant 3: variant 2's scales and fast-path test, then a table lookup per code: in a block of the
    # fast path every nonzero code c becomes |E4M3| = T[c] = 4c + 4[c >= 2] + 4(2 (6 + delta) - 1)
    # (T[0] = 0), eight bytes built with two multiply-adds per block, and `byte_perm` looks up four codes
    # at once. A thread holds one block: 4 words in, 8 words out.
    # Register layouts: every tensor is [4 blocks, NT tiles, BLOCK_M rows, 4], and every load and store
    # moves 4 consecutive words or bytes per thread, so that Triton gives all of them one layout (lanes
    # over blocks, then tiles; the last dimension in registers) and never exchanges data through shared
    # memory. Hence the tiles in descending order (no contiguity across tiles), the tile's 4 scale bytes
    # loaded by every block's thread, and each input word loaded twice (an L1 hit), once per output word
    # it makes.
    # Needs 4-byte aligned rows, scale rows included (wrapper).
    NT: tl.constexpr = BLOCK_K // 128
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    b3 = tl.arange(0, 4)[:, None, None]
    t3 = (pid_k * NT + NT - 1 - tl.arange(0, NT))[None, :, None]
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r64 = rows.to(tl.int64)[None, None, :]
    j4 = tl.arange(0, 4)[None, None, None, :]
    # wa holds input words 0, 0, 1, 1 of the block, wb words 2, 2, 3, 3: output word j of each half is
    # computed from the input word at its own position (no data movement between registers).
    xa_ptrs = ((x_ptr + r64 * stride_x).to(tl.pointer_type(tl.uint32)) + t3 * 16 + b3 * 4)[:, :, :, None] + j4 // 2
    s_offs = (r64 * stride_xs + t3 * 4 + b3 * 0)[:, :, :, None] + j4
    xs_ptrs = xs_ptr + tl.max_contiguous(tl.multiple_of(s_offs, [1, 1, 1, 4]), [1, 1, 1, 4])
    if EVEN:
        wa = tl.load(xa_ptrs, eviction_policy="evict_first")
        wb = tl.load(xa_ptrs + 2, eviction_policy="evict_first")
        sb4 = tl.load(xs_ptrs).to(tl.int32)
    else:
        ok = (rows < M)[None, None, :] & (t3 < K // 128)
        wa = tl.load(xa_ptrs, mask=ok[:, :, :, None], other=0, eviction_policy="evict_first")
        wb = tl.load(xa_ptrs + 2, mask=ok[:, :, :, None], other=0, eviction_policy="evict_first")
        sb4 = tl.load(xs_ptrs, mask=ok[:, :, :, None], other=0).to(tl.int32)
    bbyte = tl.max(tl.where(j4 == b3[:, :, :, None], sb4, 0), axis=3)  # this block's scale byte

    # Scales exactly as in variant 2 (see there).
    nz, p = _e2m1_block_exponent(tl.reduce(wa | wb, 3, _or),
                                 tl.reduce((wa & (wa << 1)) | (wb & (wb << 1)), 3, _or), bbyte)
    pmax = tl.max(p, axis=0)
    nan_t = pmax >= 256
    kbyte = tl.maximum(pmax - 9, 0)
    delta = bbyte - kbyte[None, :, :]
    slow = nz & (delta < -5) & (pmax < 256)[None, :, :]
    if tl.max(slow.to(tl.int32)) != 0:
        _mxfp4_to_fp8_general(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                              pid_m, pid_k, BLOCK_M, BLOCK_K, ASM)
    else:
        keep = tl.where(nan_t, 0, -1).to(tl.uint32, bitcast=True)[None, :, :, None]  # NaN tile: codes 0
        # Bytes of 4(2 (6 + delta) - 1) added to T's constant part; no byte carries (T[c] < 256), and a
        # zero block's negative delta leaves T[0] = 0 (the multiplier's low byte is 0).
        dq4 = (delta * 8 + 44).to(tl.uint32, bitcast=True)[:, :, :, None]
        t_lo = 0x100C0400 + dq4 * 0x01010100
        t_hi = 0x201C1814 + dq4 * 0x01010101
        qw_ptrs = ((q_ptr + r64 * stride_q).to(tl.pointer_type(tl.uint32)) + t3 * 32 + b3 * 8)[:, :, :, None] + j4
        sbyte = tl.broadcast_to(tl.where(nan_t, 255, kbyte).to(tl.uint8)[None, :, :, None], (4, NT, BLOCK_M, 4))
        qs_ptrs = qs_ptr + (r64 * stride_qs + t3 + b3 * 0)[:, :, :, None] + j4 * 0
        first = (b3 == 0)[:, :, :, None] & (j4 == 0)  # the tile's scale byte: lane 0 of its first block
        if EVEN:
            tl.store(qw_ptrs, _e4m3_words(wa & keep, t_lo, t_hi, ASM))
            tl.store(qw_ptrs + 4, _e4m3_words(wb & keep, t_lo, t_hi, ASM))
            tl.store(qs_ptrs, sbyte, mask=first)
        else:
            tl.store(qw_ptrs, _e4m3_words(wa & keep, t_lo, t_hi, ASM), mask=ok[:, :, :, None])
            tl.store(qw_ptrs + 4, _e4m3_words(wb & keep, t_lo, t_hi, ASM), mask=ok[:, :, :, None])
            tl.store(qs_ptrs, sbyte, mask=ok[:, :, :, None] & first)


@triton.jit
def _e4m3_words(src, t_lo, t_hi, ASM: tl.constexpr):
    """`[..., 4]` words of E2M1 codes, the last dimension in registers, holding input words (u, u, v, v)
    -> the E4M3 codes of codes 0-3 of u, 4-7 of u, 0-3 of v, 4-7 of v, looked up in `t_hi:t_lo`."""
    odd = (tl.arange(0, 4) & 1) == 1
    m = (src & 0x77777777) >> tl.where(odd, 16, 0).to(tl.uint32)
    code = byte_perm(t_lo, t_hi, m, ASM)
    # The sign of code i (bit 4i + 3) goes to bit 8i + 7: byte i / 2 of w << 4 (i even) or of w (i odd).
    sel = tl.where(odd, 0x7362, 0x5140).to(tl.uint32)
    return code | (byte_perm(src << 4, src, sel + tl.zeros_like(src), ASM) & 0x80808080)


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
    args = (q, qs, x, xs, M, K, q.stride(0), qs.stride(0), x.stride(0), xs.stride(0))
    if cfg.variant == 2 and _words_ok(q) and _words_ok(x, 2):
        _fp8_to_mxfp4_v2_kernel[grid](*args, RCEIL=scale_mode == "rceil", BLOCK_M=cfg.block_m,
                                      BLOCK_K=cfg.block_k, EVEN=M % cfg.block_m == 0 and K % cfg.block_k == 0,
                                      ASM=use_asm(), num_warps=cfg.num_warps)
        return MXFP4Tensor(out.data, out.scales, scale_mode)
    kernel = _fp8_to_mxfp4_v1_kernel if cfg.variant >= 1 else _fp8_to_mxfp4_kernel
    kernel[grid](*args, RCEIL=scale_mode == "rceil", BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
                 num_warps=cfg.num_warps)
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
    args = (x, xs, q, qs, M, K, x.stride(0), xs.stride(0), q.stride(0), qs.stride(0))
    even = M % cfg.block_m == 0 and K % cfg.block_k == 0
    if cfg.variant == 2 and _words_ok(x) and _words_ok(q):
        _mxfp4_to_fp8_v2_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, EVEN=even,
                                      ASM=use_asm(), num_warps=cfg.num_warps)
        return out
    if cfg.variant == 3 and _words_ok(x) and _words_ok(q) and _words_ok(xs):
        _mxfp4_to_fp8_v3_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, EVEN=even, ASM=use_asm(),
                                      num_warps=cfg.num_warps)
        return out
    kernel = _mxfp4_to_fp8_v1_kernel if cfg.variant >= 1 else _mxfp4_to_fp8_kernel
    kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out


def _words_ok(rows: torch.Tensor, size: int = 4) -> bool:
    """Whether uint8 rows `[M, W]` can be read / written as `size`-byte words (variant 2): aligned start
    and row stride; otherwise the wrapper falls back to the byte-wise variant 1."""
    return rows.data_ptr() % size == 0 and (rows.stride(0) % size == 0 or rows.shape[0] <= 1)
