"""Hopper (sm90) Gluon versions of the two grouped GEMM kernels of `grouped_gemm.py`, same results bit
for bit, with the fp32 promotion of one 128-wide reduction step overlapping the MMA of the next.

Triton waits for every wgmma before the promotion `acc += dot * scales` that reads it
(`warp_group_dot_wait pendings=0`), so within a program the tensor cores idle while the CUDA cores
promote. Here each step's MMA is issued asynchronously into a fresh accumulator, the previous step's
product is promoted while it runs, and only then is it waited for (DeepSeek-V3's promotion, as
DeepGEMM overlaps it):

    issue  d_k = A_k B_k^T           (tensor cores, async; operands in a TMA-fed shared-memory ring)
    acc += d_{k-1} * s_{k-1}         (CUDA cores, meanwhile)
    wait   d_k

The product of every step, its scales and the order of the additions are those of the Triton kernels
(the promotion starts from acc = 0 + d_0 * s_0), hence the same bits. Operand tiles come by TMA: rows
past a tensor's end read as zeros, rows of a neighbouring group are read and never stored (an output
row depends only on its own operand row). Needs Triton's Gluon (3.6) and an sm90 GPU; no interpreter.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .grouped_gemm import _store_view

STEP_K = 128  # the scale tile along the reduction axis (docs/FORMATS.md "FP8")
# the TMA tile load: `async_copy_global_to_shared` in Triton 3.6, renamed `async_load` later
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # renamed likewise


@gluon.jit
def _e8m0_to_f32(b):
    # UE8M0 byte -> 2^(b - 127): byte 0 is the fp32 subnormal 2^-127, byte 255 NaN (as grouped_gemm.py).
    b = b.to(gl.int32)
    bits = gl.where(b == 0, 0x400000, b << 23)
    return gl.where(b == 255, 0x7FC00000, bits).to(gl.float32, bitcast=True)


@gluon.jit
def _bf16_bits(x):
    # fp32 -> bf16 bits, round to nearest even, NaN quiet with its sign (quant.kernels.minifloat.bf16_bits).
    bits = x.to(gl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = gl.where((bits & 0x7FFFFFFF) > 0x7F800000, (bits >> 16) | 0x40, rounded)
    return rounded.to(gl.int16)


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _row_tile(offs_ptr, G, pid_m, BLOCK_M: gl.constexpr, BLOCK_G: gl.constexpr, num_warps: gl.constexpr):
    """(group, first row, end row of the group) of row tile `pid_m`; group == G past the last tile
    (`grouped_gemm._row_tile`)."""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    g = gl.arange(0, BLOCK_G, layout=layout)
    valid = g < G
    ends = gl.load(offs_ptr + g, mask=valid, other=0)
    starts = gl.load(offs_ptr + gl.maximum(g - 1, 0), mask=valid & (g > 0), other=0)
    tiles = gl.where(valid, (ends - starts + BLOCK_M - 1) // BLOCK_M, 0)
    cum = gl.associative_scan(tiles, 0, _add)
    grp = gl.sum((cum <= pid_m).to(gl.int32), 0)
    sel = g == grp
    first = gl.sum(gl.where(sel, cum - tiles, 0), 0)
    start = gl.sum(gl.where(sel, starts, 0), 0)
    end = gl.sum(gl.where(sel, ends, 0), 0)
    return grp, start + (pid_m - first) * BLOCK_M, end


@gluon.jit
def _issue_loads(a_desc, b_desc, a_smem, b_smem, ready, j, k0, arow, brow, STAGES: gl.constexpr):
    # the operand tiles of the j-th step (reduction step k0 + j) into ring slot j % STAGES
    s = j % STAGES
    mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    _tma_load(a_desc, [arow, (k0 + j) * 128], ready.index(s), a_smem.index(s))
    _tma_load(b_desc, [brow, (k0 + j) * 128], ready.index(s), b_smem.index(s))


@gluon.jit
def _promote(acc, d, sa, sb, SB_SCALAR: gl.constexpr):
    # acc + d * (2^ka 2^kb), the scale product formed first, as the Triton kernels do
    if SB_SCALAR:
        return acc + d * gl.expand_dims(sa * sb, 1)
    else:
        return acc + d * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))


@gluon.jit
def _pipelined_dot(a_desc, b_desc, arow, brow, k0, k1, sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step,
                   MMA: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                   SB_SCALAR: gl.constexpr):
    """sum over steps k in [k0, k1) of dot(A[arow:+BM, 128k:+128], B[brow:+BN, 128k:+128]^T) * 2^sa * 2^sb,
    promoted in fp32 one step behind the MMA, in the wgmma layout MMA. sa: one byte per output row at
    `sa_ptrs + k * sa_step`; sb: one per output column (or one for the tile, SB_SCALAR) at
    `sb_ptrs + k * sb_step`."""
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, 128], a_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, 128], b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for slot in gl.static_range(STAGES):
        mbarrier.init(ready.index(slot), count=1)
    nk = k1 - k0
    for j in gl.static_range(STAGES - 1):
        if j < nk:
            _issue_loads(a_desc, b_desc, a_smem, b_smem, ready, j, k0, arow, brow, STAGES)

    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, MMA)
    acc = zero
    prev = zero
    # the previous step's scales, kept as vectors (a [BM, BN] scale tile would cost 64 registers)
    sa_prev = gl.full([BLOCK_M], 1.0, gl.float32, gl.SliceLayout(1, MMA))
    if SB_SCALAR:
        sb_prev = 1.0
    else:
        sb_prev = gl.full([BLOCK_N], 1.0, gl.float32, gl.SliceLayout(0, MMA))
    for i in range(nk):
        k = k0 + i
        # the slot refilled here held step i - 1, whose MMA every warp has waited for
        _cta_barrier()
        if i + STAGES - 1 < nk:
            _issue_loads(a_desc, b_desc, a_smem, b_smem, ready, i + STAGES - 1, k0, arow, brow, STAGES)
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        tok = warpgroup_mma(a_smem.index(s), b_smem.index(s).permute((1, 0)), zero, use_acc=False,
                            is_async=True)
        acc = _promote(acc, prev, sa_prev, sb_prev, SB_SCALAR)
        sa_prev = _e8m0_to_f32(gl.load(sa_ptrs + k * sa_step, mask=sa_mask, other=127))
        if SB_SCALAR:
            sb_prev = _e8m0_to_f32(gl.load(sb_ptrs + k * sb_step))
        else:
            # one byte a thread, then spread to the columns the MMA layout gives each thread
            sb_bytes = gl.load(sb_ptrs + k * sb_step, mask=sb_mask, other=127)
            sb_prev = _e8m0_to_f32(gl.convert_layout(sb_bytes, gl.SliceLayout(0, MMA)))
        prev = warpgroup_mma_wait(num_outstanding=0, deps=(tok,))
    acc = _promote(acc, prev, sa_prev, sb_prev, SB_SCALAR)
    for slot in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(slot))
    return acc


@gluon.jit
def _grouped_gemm_rows_sm90_kernel(a_desc, b_desc, as_ptr, bs_ptr, c_ptr, offs_ptr, N, K, G,
                                   stride_asm, stride_ask, stride_bsg, stride_bsn, stride_bsk, stride_cm,
                                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_G: gl.constexpr,
                                   STAGES: gl.constexpr, OUT_BF16: gl.constexpr, B_BLOCKS: gl.constexpr,
                                   num_warps: gl.constexpr):
    # grouped_gemm._grouped_gemm_rows_kernel: rows of A grouped by `offsets`, group g's rows times B[g]^T.
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_N, 32])
    pid = gl.program_id(0)
    n_tiles = gl.cdiv(N, BLOCK_N)
    pid_m = pid // n_tiles
    pid_n = pid % n_tiles
    grp, row0, end = _row_tile(offs_ptr, G, pid_m, BLOCK_M, BLOCK_G, num_warps)
    if grp < G:
        rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, MMA))
        rmask = rows < end
        rows = rows.to(gl.int64)
        col0 = pid_n * BLOCK_N
        cols = col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, MMA))
        cmask = cols < N
        g64 = grp.to(gl.int64)
        if B_BLOCKS:  # one weight scale per 128x128 block: BLOCK_N <= 128 divides 128
            sb_ptrs = bs_ptr + g64 * stride_bsg + col0 * stride_bsn
            sb_mask = cmask
        else:
            COLS: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
            cb = col0 + gl.arange(0, BLOCK_N, layout=COLS)
            sb_ptrs = bs_ptr + g64 * stride_bsg + cb * stride_bsn
            sb_mask = cb < N
        acc = _pipelined_dot(a_desc, b_desc, row0, grp * N + col0, 0, K // 128, as_ptr + rows * stride_asm, rmask,
                             stride_ask, sb_ptrs, sb_mask, stride_bsk, MMA, BLOCK_M, BLOCK_N, STAGES, B_BLOCKS)
        c = _bf16_bits(acc) if OUT_BF16 else acc
        gl.store(c_ptr + gl.expand_dims(rows, 1) * stride_cm + gl.expand_dims(cols, 0), c,
                 mask=gl.expand_dims(rmask, 1) & gl.expand_dims(cmask, 0))


@gluon.jit
def _grouped_gemm_wgrad_sm90_kernel(a_desc, b_desc, as_ptr, bs_ptr, c_ptr, offs_ptr, N, K, T,
                                    stride_asn, stride_bsk, stride_cg, stride_cn,
                                    BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
                                    OUT_BF16: gl.constexpr, num_warps: gl.constexpr):
    # grouped_gemm._grouped_gemm_wgrad_kernel, ALIGNED only: group g's token range [start, end) is
    # whole 128-token tiles (the group-aligned layout), out[g] = a_t[:, range] @ b_t[:, range]^T.
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_K, 32])
    pid = gl.program_id(0)
    tiles_n = gl.cdiv(N, BLOCK_N)
    tiles_k = gl.cdiv(K, BLOCK_K)
    grp = pid // (tiles_n * tiles_k)
    rest = pid % (tiles_n * tiles_k)
    pid_n = rest // tiles_k
    pid_k = rest % tiles_k
    start = gl.where(grp > 0, gl.load(offs_ptr + gl.maximum(grp - 1, 0)), 0)
    end = gl.load(offs_ptr + grp)
    COLS: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
    kc = pid_k * BLOCK_K + gl.arange(0, BLOCK_K, layout=COLS)
    nmask = n < N
    n = n.to(gl.int64)
    # the clamp keeps a bad layout inside the operands, as in the Triton kernel
    acc = _pipelined_dot(a_desc, b_desc, pid_n * BLOCK_N, pid_k * BLOCK_K, gl.maximum(start, 0) // 128,
                         gl.minimum(end, T) // 128, as_ptr + n * stride_asn, nmask, 1,
                         bs_ptr + kc.to(gl.int64) * stride_bsk, kc < K, 1, MMA, BLOCK_N, BLOCK_K, STAGES, False)
    k = pid_k * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, MMA))
    kmask = k < K
    k = k.to(gl.int64)
    c = _bf16_bits(acc) if OUT_BF16 else acc
    c_ptrs = c_ptr + grp.to(gl.int64) * stride_cg + gl.expand_dims(n, 1) * stride_cn + gl.expand_dims(k, 0)
    gl.store(c_ptrs, c, mask=gl.expand_dims(nmask, 1) & gl.expand_dims(kmask, 0))


def _desc(t: torch.Tensor, block_rows: int) -> TensorDescriptor:
    # [R, C] FP8 rows, C contiguous, read as [block_rows, 128] tiles
    layout = gl.NVMMASharedLayout.get_default_for([block_rows, STEP_K], gl.float8e4nv)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [block_rows, STEP_K], layout)


def launch_rows_sm90(a, b, offsets, out, config, b_blocks: bool = False):
    """`grouped_gemm.launch_rows` on the Gluon kernel: same operands (a [M, K], b [G, N, K] FP8Tensors,
    last dims contiguous), same output bits (b_blocks: config.block_cols <= 128, checked by the
    caller); `config.num_stages` is the depth of the TMA ring.
    Returns the compiled kernel (registers, spills), or None when there was nothing to launch."""
    m, k = a.shape
    g, n, _ = b.shape
    if m == 0 or n == 0:
        return None
    b_rows = b.data.reshape(g * n, k)  # a view when b is contiguous, as quantized weights are
    max_tiles = triton.cdiv(m, config.block_rows) + g
    grid = (max_tiles * triton.cdiv(n, config.block_cols),)
    return _grouped_gemm_rows_sm90_kernel[grid](
        _desc(a.data, config.block_rows), _desc(b_rows, config.block_cols), a.scales, b.scales,
        _store_view(out), offsets, n, k, g, a.scales.stride(0), a.scales.stride(1), b.scales.stride(0),
        b.scales.stride(1), b.scales.stride(2), out.stride(0),
        BLOCK_M=config.block_rows, BLOCK_N=config.block_cols, BLOCK_G=max(16, triton.next_power_of_2(g)),
        STAGES=config.num_stages, OUT_BF16=out.element_size() == 2, B_BLOCKS=b_blocks,
        num_warps=config.num_warps)


def launch_wgrad_sm90(a_t, b_t, offsets, out, config):
    """`grouped_gemm.launch_wgrad(..., aligned=True)` on the Gluon kernel: `offsets` group-aligned
    (multiples of 128, padding tokens zero), a_t [N, T] and b_t [K, T] column-wise FP8Tensors.
    Returns the compiled kernel, or None when there was nothing to launch."""
    g, n, k = out.shape
    if g == 0 or n == 0 or k == 0 or a_t.shape[1] == 0:
        if g and n and k:
            out.zero_()
        return None
    grid = (g * triton.cdiv(n, config.block_rows) * triton.cdiv(k, config.block_cols),)
    return _grouped_gemm_wgrad_sm90_kernel[grid](
        _desc(a_t.data, config.block_rows), _desc(b_t.data, config.block_cols), a_t.scales, b_t.scales,
        _store_view(out), offsets, n, k, a_t.shape[1], a_t.scales.stride(0), b_t.scales.stride(0),
        out.stride(0), out.stride(1),
        BLOCK_N=config.block_rows, BLOCK_K=config.block_cols, STAGES=config.num_stages,
        OUT_BF16=out.element_size() == 2, num_warps=config.num_warps)
