"""Triton grouped GEMMs on FP8 E4M3 operands with 1x128 power-of-two tile scales, fp32 accumulation.

Both kernels walk the reduction axis 128 at a time (one scale per operand row per step) and promote
each step's `tl.dot` into the fp32 accumulator with both scales applied (DeepSeek-V3's per-128
promotion, which also keeps Hopper's reduced-precision FP8 MMA accumulation to 128 products):

    acc[BM, BN] += dot(A[BM, 128], B[BN, 128]^T) * 2^ka[BM, None] * 2^kb[None, BN]

- `_grouped_gemm_rows_kernel` (forward and data-gradient): rows of A grouped by `offsets`; group g's
  rows use B[g]. One program per (row tile, column tile); the row tiles of all groups are numbered on
  the device (each group cut into ceil(rows / BM) tiles, an exclusive cumsum over the groups), so the
  grid is an upper bound, cdiv(M, BM) + G row tiles, and programs past the last tile exit at once.
  `PREFETCH` (`GemmConfig.prefetch_scales`): each step's scale bytes are loaded one step ahead.
- `_grouped_gemm_wgrad_kernel` (weight gradient): the reduction axis is the token axis, split into
  groups; program (g, n tile, k tile) sums group g's tokens. ALIGNED (the group-aligned layout of
  `aligned_groups.py`: every group starts at a multiple of 128, padding tokens zero): all of a group's
  steps run in one software-pipelined loop, no token masks. Packed (any offsets): a token tile may
  straddle two groups; each group reads its own tokens of it (the others zeroed in registers, in its
  first and last tile only, outside the pipelined loop) with the tile's shared scale. Each thread
  holds 32 column scales of its tile, and decoding their bytes every step costs more instructions
  than the promotion itself: `GemmConfig.f32_scales` hands the kernel fp32 scales instead
  (`decoded_scales`, one pass per call). Scales may be stored either way round (step-major reads
  coalesce).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...quant.kernels.minifloat import bf16_bits

STEP_K = tl.constexpr(128)  # the scale tile along the reduction axis (docs/FORMATS.md "FP8")


@triton.jit
def _e8m0_to_f32(b):
    # UE8M0 byte -> 2^(b - 127): byte 0 is the fp32 subnormal 2^-127, byte 255 NaN.
    b = b.to(tl.int32)
    bits = tl.where(b == 0, 0x400000, b << 23)
    return tl.where(b == 255, 0x7FC00000, bits).to(tl.float32, bitcast=True)


@triton.jit
def _scale_values(s):
    """Scale values: E8M0 bytes decoded, or the values themselves when the scales come as fp32."""
    if s.dtype == tl.float32:
        return s
    else:
        return _e8m0_to_f32(s)


@triton.jit
def _row_tile(offs_ptr, G, pid_m, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """(group, first row, end row of the group) of row tile `pid_m`; group == G past the last tile."""
    g = tl.arange(0, BLOCK_G)
    valid = g < G
    ends = tl.load(offs_ptr + g, mask=valid, other=0)
    starts = tl.load(offs_ptr + tl.maximum(g - 1, 0), mask=valid & (g > 0), other=0)
    tiles = tl.where(valid, (ends - starts + BLOCK_M - 1) // BLOCK_M, 0)
    cum = tl.cumsum(tiles, 0)
    grp = tl.sum((cum <= pid_m).to(tl.int32), 0)
    sel = g == grp
    first = tl.sum(tl.where(sel, cum - tiles, 0), 0)
    start = tl.sum(tl.where(sel, starts, 0), 0)
    end = tl.sum(tl.where(sel, ends, 0), 0)
    return grp, start + (pid_m - first) * BLOCK_M, end


@triton.jit
def _rows_scale_bytes(as_ptrs, bs_block, bs_ptrs, kt, stride_ask, stride_bsk, stride_bsn, rmask, cmask,
                      col0, N, BLOCK_N: tl.constexpr, B_BLOCKS: tl.constexpr):
    """Scale bytes of step `kt`: A's per row [BM]; B's one per block (a scalar, or [BN] from two blocks
    when BLOCK_N is 256) with B_BLOCKS, else per column [BN]."""
    sa = tl.load(as_ptrs + kt * stride_ask, mask=rmask, other=127)
    if B_BLOCKS:  # b's scales are constant over each 128 rows: one or two blocks per tile
        sb = tl.load(bs_block + kt * stride_bsk)
        if BLOCK_N > STEP_K:  # BLOCK_N == 256
            sb1 = tl.load(bs_block + STEP_K * stride_bsn + kt * stride_bsk, mask=col0 + STEP_K < N, other=127)
            sb = tl.where(tl.arange(0, BLOCK_N) < STEP_K, sb, sb1)
    else:
        sb = tl.load(bs_ptrs + kt * stride_bsk, mask=cmask, other=127)
    return sa, sb


@triton.jit
def _rows_promote(acc, prod, sa_bytes, sb_bytes, BLOCK_N: tl.constexpr, B_BLOCKS: tl.constexpr):
    sa = _e8m0_to_f32(sa_bytes)
    if B_BLOCKS and BLOCK_N <= STEP_K:
        return acc + prod * (sa * _e8m0_to_f32(sb_bytes))[:, None]
    else:
        return acc + prod * (sa[:, None] * _e8m0_to_f32(sb_bytes)[None, :])


@triton.jit
def _grouped_gemm_rows_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, offs_ptr, N, K, G,
                              stride_am, stride_asm, stride_ask, stride_bg, stride_bn,
                              stride_bsg, stride_bsn, stride_bsk, stride_cm,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                              OUT_BF16: tl.constexpr, B_BLOCKS: tl.constexpr, PREFETCH: tl.constexpr):
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = pid // n_tiles
    pid_n = pid % n_tiles
    grp, row0, end = _row_tile(offs_ptr, G, pid_m, BLOCK_M, BLOCK_G)
    if grp < G:
        rows = row0 + tl.arange(0, BLOCK_M)
        rmask = rows < end
        rows = rows.to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        kk = tl.arange(0, STEP_K)
        g64 = grp.to(tl.int64)
        a_ptrs = a_ptr + rows[:, None] * stride_am + kk[None, :]
        b_ptrs = b_ptr + g64 * stride_bg + cols.to(tl.int64)[:, None] * stride_bn + kk[None, :]
        as_ptrs = as_ptr + rows * stride_asm
        bs_ptrs = bs_ptr + g64 * stride_bsg + cols * stride_bsn
        bs_block = bs_ptr + g64 * stride_bsg + (pid_n * BLOCK_N) * stride_bsn  # B_BLOCKS: one scale a step
        col0 = pid_n * BLOCK_N
        steps = K // STEP_K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PREFETCH:  # step kt's scale bytes are loaded during step kt - 1 (their latency off the MMA's path);
            # the last step loads its own again (K > 0: the launcher prefetches only then)
            sa_next, sb_next = _rows_scale_bytes(as_ptrs, bs_block, bs_ptrs, 0, stride_ask, stride_bsk, stride_bsn,
                                                 rmask, cmask, col0, N, BLOCK_N, B_BLOCKS)
        for kt in range(0, steps):
            a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=cmask[:, None], other=0.0)
            if PREFETCH:
                sa_bytes, sb_bytes = sa_next, sb_next
                sa_next, sb_next = _rows_scale_bytes(as_ptrs, bs_block, bs_ptrs, tl.minimum(kt + 1, steps - 1),
                                                     stride_ask, stride_bsk, stride_bsn, rmask, cmask, col0, N,
                                                     BLOCK_N, B_BLOCKS)
            else:
                sa_bytes, sb_bytes = _rows_scale_bytes(as_ptrs, bs_block, bs_ptrs, kt, stride_ask, stride_bsk,
                                                       stride_bsn, rmask, cmask, col0, N, BLOCK_N, B_BLOCKS)
            acc = _rows_promote(acc, tl.dot(a, tl.trans(b)), sa_bytes, sb_bytes, BLOCK_N, B_BLOCKS)
            a_ptrs += STEP_K
            b_ptrs += STEP_K
        c = bf16_bits(acc) if OUT_BF16 else acc
        tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :], c, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tb, stride_asn, stride_ast, stride_bsk, stride_bst):
    """Scale bytes of token step `tb`: a_t's per row [BN], b_t's per row [BK]; the scales may be stored
    either way round (strides along rows and along steps)."""
    sa = tl.load(as_ptr + n * stride_asn + tb * stride_ast, mask=nmask, other=127)
    sb = tl.load(bs_ptr + k * stride_bsk + tb * stride_bst, mask=kmask, other=127)
    return sa, sb


@triton.jit
def _wgrad_step(acc, tb, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk, sa_bytes, sb_bytes,
                MASKED: tl.constexpr):
    # One 128-token step. Interior tiles load whole 128-byte runs (vectorized, pipelined); the first
    # and last tile of a group zero the other groups' tokens in registers (MASKED), both operands so
    # that a NaN of a neighbour's token cannot reach this group through 0 * NaN.
    t = tb * STEP_K + tl.arange(0, STEP_K)
    a = tl.load(a_ptr + n[:, None] * stride_an + t[None, :], mask=nmask[:, None], other=0.0)
    b = tl.load(b_ptr + k[:, None] * stride_bk + t[None, :], mask=kmask[:, None], other=0.0)
    if MASKED:
        inside = ((t >= start) & (t < end))[None, :]
        a = tl.where(inside, a, 0.0)
        b = tl.where(inside, b, 0.0)
    sa, sb = _scale_values(sa_bytes), _scale_values(sb_bytes)
    return acc + tl.dot(a, tl.trans(b)) * (sa[:, None] * sb[None, :])


@triton.jit
def _grouped_gemm_wgrad_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, offs_ptr, N, K, T,
                               stride_an, stride_asn, stride_ast, stride_bk, stride_bsk, stride_bst,
                               stride_cg, stride_cn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               OUT_BF16: tl.constexpr, ALIGNED: tl.constexpr, PREFETCH: tl.constexpr):
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_k = tl.cdiv(K, BLOCK_K)
    grp = pid // (tiles_n * tiles_k)
    rest = pid % (tiles_n * tiles_k)
    pid_n = rest // tiles_k
    pid_k = rest % tiles_k
    start = tl.where(grp > 0, tl.load(offs_ptr + tl.maximum(grp - 1, 0)), 0)
    end = tl.load(offs_ptr + grp)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    nmask = n < N
    kmask = k < K
    n = n.to(tl.int64)
    k = k.to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if ALIGNED:  # start and end are multiples of 128; the clamp keeps a bad layout inside the operands
        lo = tl.maximum(start, 0) // STEP_K
        hi = tl.minimum(end, T) // STEP_K
        if PREFETCH:  # step tb's scale bytes are loaded during step tb - 1; indices clamped into the
            # operands (T > 0: the launcher prefetches only then), the loads past a group's last step unused
            last = tl.maximum(hi - 1, 0)
            sa_next, sb_next = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tl.minimum(lo, last),
                                                  stride_asn, stride_ast, stride_bsk, stride_bst)
        for tb in range(lo, hi):
            if PREFETCH:
                sa_bytes, sb_bytes = sa_next, sb_next
                sa_next, sb_next = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tl.minimum(tb + 1, last),
                                                      stride_asn, stride_ast, stride_bsk, stride_bst)
            else:
                sa_bytes, sb_bytes = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tb, stride_asn,
                                                        stride_ast, stride_bsk, stride_bst)
            acc = _wgrad_step(acc, tb, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                              sa_bytes, sb_bytes, False)
    else:
        first = start // STEP_K
        last = (end - 1) // STEP_K
        if end > start:
            sa_bytes, sb_bytes = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, first, stride_asn,
                                                    stride_ast, stride_bsk, stride_bst)
            acc = _wgrad_step(acc, first, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                              sa_bytes, sb_bytes, True)
            if last > first:
                sa_bytes, sb_bytes = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, last, stride_asn,
                                                        stride_ast, stride_bsk, stride_bst)
                acc = _wgrad_step(acc, last, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                                  sa_bytes, sb_bytes, True)
        for tb in range(first + 1, last):
            sa_bytes, sb_bytes = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tb, stride_asn,
                                                    stride_ast, stride_bsk, stride_bst)
            acc = _wgrad_step(acc, tb, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                              sa_bytes, sb_bytes, False)
    c = bf16_bits(acc) if OUT_BF16 else acc
    c_ptrs = c_ptr + grp.to(tl.int64) * stride_cg + n[:, None] * stride_cn + k[None, :]
    tl.store(c_ptrs, c, mask=nmask[:, None] & kmask[None, :])


@triton.jit
def _e8m0_decode_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    tl.store(dst_ptr + i, _e8m0_to_f32(tl.load(src_ptr + i, mask=inside, other=127)), mask=inside)


def decoded_scales(scales: torch.Tensor) -> torch.Tensor:
    """fp32 `2^(b - 127)` of E8M0 bytes `[R, C]` (byte 0: 2^-127, 255: NaN), kept in their memory
    order (a transposed view stays one), in one pass."""
    flip = not scales.is_contiguous() and scales.t().is_contiguous()
    src = scales.t() if flip else scales.contiguous()
    out = torch.empty(src.shape, dtype=torch.float32, device=src.device)
    if src.numel():
        _e8m0_decode_kernel[(triton.cdiv(src.numel(), 1024),)](src, out, src.numel(), BLOCK=1024)
    return out.t() if flip else out


def _launch_options(config) -> dict:
    opts = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if config.max_registers:
        opts["maxnreg"] = config.max_registers
    return opts


def _store_view(out):
    return out.view(torch.int16) if out.element_size() == 2 else out


def launch_rows(a, b, offsets, out, config, b_blocks: bool = False) -> None:
    """Launch `_grouped_gemm_rows_kernel` on checked operands (see `grouped.grouped_gemm_fp8`)."""
    m, k = a.shape
    g, n, _ = b.shape
    if m == 0 or n == 0:
        return
    max_tiles = triton.cdiv(m, config.block_rows) + g
    grid = (max_tiles * triton.cdiv(n, config.block_cols),)
    _grouped_gemm_rows_kernel[grid](
        a.data, a.scales, b.data, b.scales, _store_view(out), offsets, n, k, g,
        a.data.stride(0), a.scales.stride(0), a.scales.stride(1), b.data.stride(0), b.data.stride(1),
        b.scales.stride(0), b.scales.stride(1), b.scales.stride(2), out.stride(0),
        BLOCK_M=config.block_rows, BLOCK_N=config.block_cols, BLOCK_G=max(16, triton.next_power_of_2(g)),
        OUT_BF16=out.element_size() == 2, B_BLOCKS=b_blocks, PREFETCH=config.prefetch_scales and k > 0,
        **_launch_options(config))


def launch_wgrad(a_t, b_t, offsets, out, config, aligned: bool = False) -> None:
    """Launch `_grouped_gemm_wgrad_kernel` on checked operands (see `grouped.grouped_gemm_fp8_wgrad`);
    `aligned`: `offsets` are group-aligned padded offsets (multiples of 128, padding tokens zero)."""
    g, n, k = out.shape
    if g == 0 or n == 0 or k == 0:
        return
    grid = (g * triton.cdiv(n, config.block_rows) * triton.cdiv(k, config.block_cols),)
    sa, sb = ((decoded_scales(a_t.scales), decoded_scales(b_t.scales)) if config.f32_scales
              else (a_t.scales, b_t.scales))
    _grouped_gemm_wgrad_kernel[grid](
        a_t.data, sa, b_t.data, sb, _store_view(out), offsets, n, k, a_t.shape[1],
        a_t.data.stride(0), *sa.stride(), b_t.data.stride(0), *sb.stride(),
        out.stride(0), out.stride(1),
        BLOCK_N=config.block_rows, BLOCK_K=config.block_cols, OUT_BF16=out.element_size() == 2,
        ALIGNED=aligned, PREFETCH=config.prefetch_scales and a_t.shape[1] > 0, **_launch_options(config))
