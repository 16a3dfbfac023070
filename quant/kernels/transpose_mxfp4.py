"""`mxfp4_rowwise_to_colwise` on the GPU: its variant 4 (the default) and the wrapper that picks among the
conversion's kernels (variants 0-3 and the shared fp16 / fp32 helpers live in `transpose.py`).

Variant 4 computes exactly like variant 3 (packed fp16 arithmetic, `transpose._f16_word_values`, with
the exact fp32 fallback for programs whose scale bytes leave the fp16 window), in a layout chosen for the
loads, and stores through shared memory:

- Layout `[8, 4, RB]`: word w (8 lanes), 8-row group g (4 lanes), 32-row block q (warps). A thread holds
  8 rows of one 32-bit word (8 columns), so each load of a warp reads 4 rows x 32 bytes, whole sectors
  used once; a 32-row block's column maximum is in-thread then 2 shuffle rounds.
- Stores: variant 3 stores from its compute layout, 4 columns x 32 bytes per warp store and one scale
  byte per store: one L2 write request per 32-byte sector, and as many scale requests as data requests (ncu).
  Here the 8 words of each thread's 64-column chunk are joined into one `[64, BLOCK_M / 8]` tensor
  (output row, 32-bit word) and the scale bytes into one `[64, BLOCK_M / 32]` tensor, stored through
  pointers that run along the output rows: Triton passes them through shared memory and writes each
  output row's `BLOCK_M / 2` code bytes with 16-byte stores (a whole 128-byte line for `BLOCK_M = 256`)
  and its `BLOCK_M / 32` scale bytes with one store. ncu at 65536 x 7168: L2 write requests 14.4M -> 3.7M.
- Scale bytes: the window check reads the program's scale bytes with unmasked, vectorized loads (whole
  programs only; variant 3's masked byte loads were half of its L1 load sectors). The chunks take theirs
  from registers: `_scale_quads` loads them once, 4 rows' bytes of one block per word and 4 words per
  thread, and each chunk gathers its 8 rows' bytes from 2 lanes of the row group (`tl.gather` along the
  lane axis, which Triton lowers to 2 warp shuffles). Loading 8 bytes per thread and chunk instead read
  each row's sector again per chunk from the L2 (ncu, one H100: L2 read sectors 10.9M -> 8.6M, the input
  is 7.8M). With the register cap below: 250 -> 241 us on one H100 at 65536 x 7168.
- Launch order and registers: `_V4_GROUP_M` and `_V4_MAX_REGISTERS` below, with their measurements.

Inputs that are not whole programs (`M % block_m`, `K % block_k`) use variant 3, which masks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in
from ..formats import MXFP4_BLOCK, MXFP4Tensor
from .byteperm import use_asm
from .launch import CONFIGS, LaunchConfig
from .transpose import (_block_max, _f16_window_ok, _f16_word_values, _f32_tile, _mxfp4_rowwise_to_colwise_kernel,
                        _mxfp4_rowwise_to_colwise_v1_kernel, _mxfp4_rowwise_to_colwise_v2_kernel,
                        _mxfp4_rowwise_to_colwise_v3_kernel, _rows8)


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
def _mxfp4_rowwise_to_colwise_v4_kernel(x_ptr, xs_ptr, o_ptr, os_ptr, M, K,
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
    e0, e1, e2, e3, e4, e5, e6, e7 = _rows8(x32, row * sx + w, sx, True, tl.uint32, True)
    q0, q1, q2, q3 = _scale_quads(xs, row, pid_k, stride_xs, BLOCK_K // 32)
    if _f16_window_ok(xs_ptr, m0, pid_k, M, K, stride_xs, BLOCK_M, BLOCK_K, True) == 1:
        ocol = tl.arange(0, 64)[:, None]                                  # output row in the chunk
        oword = m0 // 8 + tl.arange(0, BLOCK_M // 8)[None, :]
        oblk = m0 // 32 + tl.arange(0, RB)[None, :]
        for c in range(NC):
            # The next chunk's words are loaded before this one is converted (the last chunk reloads
            # itself, an L1 hit), so their latency overlaps the arithmetic.
            wn = w + 8 * (tl.minimum(c + 1, NC - 1) - c)
            p0, p1, p2, p3, p4, p5, p6, p7 = _rows8(x32, row * sx + wn, sx, True, tl.uint32, True)
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
        # Variant 3's exact fp32 path, with its reversed indices (they keep its stores in its layout).
        qr = RB - 1 - tl.arange(0, RB)[None, None, :]
        gr = 3 - tl.arange(0, 4)[None, :, None]
        row = 32 * qr + 8 * gr
        _f32_tile(x32, xs, o32, os_ptr, pid_k, K, sx, so, stride_xs, stride_os, row, row >= 0,
                  m0 // 8 + row // 8, m0 // 32 + qr, gr == 3, BLOCK_K, True)


_V3_AFTER_V4 = LaunchConfig(256, 1024, 4, 3)   # where variant 4 does not apply (partial programs)
# Variant 4's launch order: 4 row blocks at a time, all their column blocks before the next 4. The programs
# of one row block share the 32-byte sectors of its scale bytes (16 bytes per program and row) and its
# DRAM pages; walking row blocks first read the scale sectors from DRAM again (ncu, one H100: DRAM reads
# 291 MB -> 250 MB, the input's size; 242 -> 225 us at 65536 x 7168; 1, 2 or 8 row blocks: 226-228 us).
_V4_GROUP_M = 4
# Variant 4's register cap: ptxas gives the kernel 122 registers (2 programs of 8 warps per SM) unless
# capped; at 80 (3 programs per SM) it schedules without spills: 256 -> 241 us (one H100). 72 and 64
# spill (244 and 316 us).
_V4_MAX_REGISTERS = 80


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
    variant = cfg.variant
    rows_per_warp = {3: 64, 4: 32}.get(variant)
    if rows_per_warp and (cfg.block_m % (rows_per_warp * cfg.num_warps) or cfg.block_k % 64
                          or (variant == 4 and cfg.block_k not in (128, 256, 512))):
        raise ValueError(f"mxfp4_rowwise_to_colwise: variant {variant} needs block_m a multiple of "
                         f"{rows_per_warp} * num_warps and block_k a multiple of 64 (variant 4: block_k 128, "
                         f"256 or 512), got CONFIGS['mxfp4_rowwise_to_colwise'] = {cfg}")
    if variant in (2, 3, 4) and (x.stride(0) % 4 or x.data_ptr() % 4):
        variant = 1  # variants 2-4 read int32 words
    args = (x, xs, out.data, out.scales, M, K, x.stride(0), xs.stride(0), out.data.stride(0), out.scales.stride(0))
    if variant == 4:
        if M % cfg.block_m == 0 and K % cfg.block_k == 0:
            _mxfp4_rowwise_to_colwise_v4_kernel[(M // cfg.block_m, K // cfg.block_k)](
                *args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, GROUP_M=_V4_GROUP_M, ASM=use_asm(),
                num_warps=cfg.num_warps, maxnreg=_V4_MAX_REGISTERS)
            return out
        cfg, variant = _V3_AFTER_V4, 3  # fewer rows or columns than a whole program: variant 3 masks them
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(K, cfg.block_k))
    kernel = {0: _mxfp4_rowwise_to_colwise_kernel, 1: _mxfp4_rowwise_to_colwise_v1_kernel,
              2: _mxfp4_rowwise_to_colwise_v2_kernel, 3: _mxfp4_rowwise_to_colwise_v3_kernel}[variant]
    extra = {}
    if variant == 2:  # EVEN: no column masks
        extra = {"EVEN": K % cfg.block_k == 0}
    elif variant == 3:  # EVEN: no row or column masks
        extra = {"EVEN": K % cfg.block_k == 0 and M % cfg.block_m == 0, "ASM": use_asm()}
    kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, **extra)
    return out
