"""`fp8_to_mxfp4`: FP8 (E4M3, 1x128 tiles) -> MXFP4 (E2M1, 1x32 blocks) in one pass, and its wrapper.

Equals `reference_conversions.fp8_to_mxfp4` (the two-step path through exact fp32) bit for bit; a value
of 2^128 or more (Inf in fp32), an E4M3 NaN or a NaN tile makes its block NaN. Kernels (`variant`):
- "swar" (default): integer-only on four E4M3 codes per 32-bit word. One thread holds one whole block,
      row r, tile t:  | block 0: words 0-7 | block 1 | block 2 | block 3 |   (a thread per block)
  its maximum from 16-bit SIMD maxima (`simd16.py`), each E2M1 code from a per-block shift of the E4M3
  code, byte masks and nibble packing by byte permutes. A program with a block outside the fast case
  (largest code ~2^12 below its tile's range, or tile scales at the bottom of E8M0) runs the "f32"
  body instead, one row's 128-column tile at a time.
- "f32": the block maximum from the integer maximum of the codes, values scaled in fp32 by one power
  of two per block; also where input rows are not 4-byte or output rows not 2-byte aligned.
Inputs and outputs may be strided row views (contiguous last dimension).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in, rows_out
from ..formats import MXFP4_BLOCK, FP8Tensor, MXFP4Tensor
from .byteperm import byte_perm, use_asm
from .launch import LaunchConfig, pick_config
from .minifloat import e2m1_round, e4m3_abs_f32, pow2_f32, words_aligned
from .simd16 import max_u16x2, reduce_max_u16x2


@triton.jit
def _fp8_to_mxfp4_f32_kernel(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K,
                             stride_q, stride_qs, stride_x, stride_xs,
                             RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _fp8_to_mxfp4_f32_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
                           tl.program_id(0), tl.program_id(1), RCEIL, BLOCK_M, BLOCK_K)


@triton.jit
def _fp8_to_mxfp4_f32_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
                           pid_m, pid_k, RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Every value of an MXFP4 block lies in one FP8 tile, so the block maximum is the
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
    # At most 125, so that 6 * 2^e stays finite in fp32 (docs/FORMATS.md, "Scales near the top of the
    # input dtype"): in fp32's top binade rceil takes floor's scale and the largest codes saturate.
    e = tl.minimum(tl.maximum(e, -127), 125)
    # |q| * 2^(k - e) equals the two-step |v| * 2^-e wherever bad is false: k - e lies in [-7, 11] for
    # a normal maximum and in [0, 10] for a zero / subnormal one (e = -127), so both products are exact.
    f = pow2_f32(tl.minimum(tl.maximum(k - e, -127), 127))
    c = tl.minimum(e2m1_round(e4m3_abs_f32(mag) * f[:, :, None]), 7)
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
def _word_tile_indices(pid_m, pid_k, BLOCK_M: tl.constexpr, NT: tl.constexpr):
    """Indices of the SWAR kernel's [rows, tiles, 4 blocks] tensors: the program's rows (and as
    int64), its FP8 tiles as `[1, NT, 1]` and the block of each tile as `[1, 1, 4]`."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    t3 = (pid_k * NT + tl.arange(0, NT))[None, :, None]
    return rows, rows.to(tl.int64), t3, tl.arange(0, 4)[None, None, :]


@triton.jit
def _fp8_to_mxfp4_swar_kernel(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K,
                              stride_q, stride_qs, stride_x, stride_xs,
                              RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                              EVEN: tl.constexpr, ASM: tl.constexpr):
    # Integer-only, four E4M3 codes per 32-bit word, no fp32 per element. Tensors are
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
    # g + tb > 261 (rceil in fp32's top binade, e = 126) takes the general path's scale cap e <= 125.
    slow = (~special) & ((g < 4) | (ex + tb < 9) | (g + tb > 261))
    if tl.max(slow.to(tl.int32)) != 0:
        # Rare (a nonzero block whose largest code is under ~2^-3, i.e. 2^12 below its tile's range, or
        # scales at the bottom or the top of E8M0): the general path, one row's tile at a time so that its registers
        # do not lower the occupancy of the fast path.
        if ASM:
            for i in range(BLOCK_M * NT):
                _fp8_to_mxfp4_f32_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x,
                                       stride_xs, pid_m * BLOCK_M + i // NT, pid_k * NT + i % NT, RCEIL, 1, 128)
        else:  # the interpreter: whole rows (its cost is per operation, not per register)
            for r in range(BLOCK_M):
                _fp8_to_mxfp4_f32_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x,
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


def fp8_to_mxfp4_triton(t: FP8Tensor, scale_mode: str = "rceil", *, out: MXFP4Tensor | None = None,
                        config: LaunchConfig | None = None) -> MXFP4Tensor:
    """FP8 `[..., K]` -> MXFP4 `[..., K]` in one Triton pass; contract and argument checks in
    `mxa2a.quant.conversions.fp8_to_mxfp4`. `t` and `out` may hold strided row views (contiguous last
    dimension); `out` is written in place. `config`: launch configuration (default
    `launch.CONFIGS["fp8_to_mxfp4"]`). Asynchronous on the current CUDA stream (no host sync)."""
    cfg = pick_config("fp8_to_mxfp4", config)
    if cfg.block_k % 128:
        raise ValueError(f"fp8_to_mxfp4: block_k must be a multiple of 128 (one FP8 tile), got config = {cfg}")
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
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    args = (q, qs, x, xs, M, K, q.stride(0), qs.stride(0), x.stride(0), xs.stride(0))
    if cfg.variant == "swar" and words_aligned(q) and words_aligned(x, 2):
        _fp8_to_mxfp4_swar_kernel[grid](*args, RCEIL=scale_mode == "rceil", BLOCK_M=cfg.block_m,
                                        BLOCK_K=cfg.block_k, EVEN=M % cfg.block_m == 0 and K % cfg.block_k == 0,
                                        ASM=use_asm(), num_warps=cfg.num_warps)
        return MXFP4Tensor(out.data, out.scales, scale_mode)
    _fp8_to_mxfp4_f32_kernel[grid](*args, RCEIL=scale_mode == "rceil", BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
                                   num_warps=cfg.num_warps)
    return MXFP4Tensor(out.data, out.scales, scale_mode)
