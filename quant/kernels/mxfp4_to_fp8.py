"""`mxfp4_to_fp8`: MXFP4 (E2M1, 1x32 blocks) -> FP8 (E4M3, 1x128 tiles) in one pass, and its wrapper.

Equals `reference_conversions.mxfp4_to_fp8` bit for bit; a NaN block or a value of 2^128 or more
makes its tile NaN. Kernels (`variant`):
- "lut" (default): one thread holds one 32-block, 4 words in and 8 words out,
      in:  | block b: 16 bytes = 32 codes |  ->  out: | block b: 32 E4M3 bytes |   (a thread per block)
  The tile scale comes from the codes' bit patterns (integer only). Where every nonzero value of the
  program lands on an E4M3 normal, a block's 8 possible E4M3 magnitudes are 8 table bytes (two
  multiply-adds) and one byte permute (`byteperm.py`) looks up 4 codes. A program with a nonzero block
  ~2^14 below its tile's largest (E4M3 subnormals) runs the "f32" body instead, per row tile.
- "f32": decodes in fp32 with one power of two per block and rounds with `minifloat.e4m3_round`; also
  where code, scale or output rows are not 4-byte aligned.
Inputs and outputs may be strided row views (contiguous last dimension).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in, rows_out
from ..formats import E4M3_DTYPE, FP8_TILE, FP8Tensor, MXFP4Tensor
from .byteperm import byte_perm, use_asm
from .launch import LaunchConfig, pick_config
from .minifloat import bit_or, e2m1_abs_f32, e4m3_round, pow2_f32, words_aligned


@triton.jit
def _mxfp4_to_fp8_f32_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                             stride_x, stride_xs, stride_q, stride_qs,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _mxfp4_to_fp8_f32_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                           tl.program_id(0), tl.program_id(1), BLOCK_M, BLOCK_K)


@triton.jit
def _mxfp4_to_fp8_f32_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                           pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Block maxima from the integer maximum of the E2M1 codes (ordered like values), decoded
    # once per block; every value is scaled by the one per-block factor 2^(b - 127 - k): one multiply
    # per value less than decoding every value.
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
    """The "f32" body over a "lut" program's tile: on a GPU one row's 128-column tile at a
    time, so that its registers do not lower the occupancy of the fast path; under the interpreter whole
    rows (its cost is per operation, not per register)."""
    NT: tl.constexpr = BLOCK_K // 128
    if ASM:
        for i in range(BLOCK_M * NT):
            _mxfp4_to_fp8_f32_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                                   pid_m * BLOCK_M + i // NT, pid_k * NT + i % NT, 1, 128)
    else:
        for r in range(BLOCK_M):
            _mxfp4_to_fp8_f32_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
                                   pid_m * BLOCK_M + r, pid_k, 1, BLOCK_K)


@triton.jit
def _mxfp4_to_fp8_lut_kernel(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K,
                             stride_x, stride_xs, stride_q, stride_qs,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr,
                             ASM: tl.constexpr):
    # Integer-only scales and fast-path test, then a table lookup per code: in a block of the
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

    # The tile's largest p gives k + 127 = p - 9 (E2M1 significands are never above 1.75); p >= 256 is
    # fp32 Inf -> NaN tile. A block ~2^14 below its tile's largest (delta < -5) would give E4M3 subnormals.
    nz, p = _e2m1_block_exponent(tl.reduce(wa | wb, 3, bit_or),
                                 tl.reduce((wa & (wa << 1)) | (wb & (wb << 1)), 3, bit_or), bbyte)
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


def mxfp4_to_fp8_triton(t: MXFP4Tensor, *, out: FP8Tensor | None = None,
                        config: LaunchConfig | None = None) -> FP8Tensor:
    """MXFP4 `[..., K]` -> FP8 `[..., K]` (K a multiple of 128) in one Triton pass; contract and
    argument checks in `mxa2a.quant.conversions.mxfp4_to_fp8`. `t` and `out` may hold strided row
    views (contiguous last dimension); `out` is written in place. `config`: launch configuration
    (default `launch.CONFIGS["mxfp4_to_fp8"]`). Asynchronous (no host sync)."""
    cfg = pick_config("mxfp4_to_fp8", config)
    if cfg.block_k % 128:
        raise ValueError(f"mxfp4_to_fp8: block_k must be a multiple of 128 (one FP8 tile), got config = {cfg}")
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
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    args = (x, xs, q, qs, M, K, x.stride(0), xs.stride(0), q.stride(0), qs.stride(0))
    even = M % cfg.block_m == 0 and K % cfg.block_k == 0
    if cfg.variant == "lut" and words_aligned(x) and words_aligned(q) and words_aligned(xs):
        _mxfp4_to_fp8_lut_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, EVEN=even, ASM=use_asm(),
                                       num_warps=cfg.num_warps)
        return out
    _mxfp4_to_fp8_f32_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    return out
