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

The `_ws` kernels (the ones `grouped.py` runs) are persistent (one program per SM walking the output
tiles) and warp-specialized: a one-warp loader partition runs ahead through every step of the
program's tiles, filling a STAGES-deep ring (`ready` / `empty` mbarriers); the default partition's
warpgroups (64 rows each) issue the wgmmas and promote, two steps an iteration (`_ring_dot`): step i's
MMA is issued before step i - 1's is waited for, and nothing is in flight at the loop's back edge
(ptxas serializes every wgmma of a loop whose in-flight product crosses it, C7514). The first two
kernels are the earlier, non-persistent form (measured no faster than Triton; kept for the experiment
that measured them).
"""

from __future__ import annotations

import functools

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
def _group_row_tiles(offs_ptr, G, BLOCK_M: gl.constexpr, BLOCK_G: gl.constexpr, WARPS: gl.constexpr):
    # (group index, first row, end row, row tiles of BLOCK_M) of each group, over BLOCK_G lanes
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    g = gl.arange(0, BLOCK_G, layout=layout)
    valid = g < G
    ends = gl.load(offs_ptr + g, mask=valid, other=0)
    starts = gl.load(offs_ptr + gl.maximum(g - 1, 0), mask=valid & (g > 0), other=0)
    return g, starts, ends, gl.where(valid, (ends - starts + BLOCK_M - 1) // BLOCK_M, 0)


@gluon.jit
def _row_tile(offs_ptr, G, pid_m, BLOCK_M: gl.constexpr, BLOCK_G: gl.constexpr, num_warps: gl.constexpr):
    """(group, first row, end row of the group) of row tile `pid_m`; group == G past the last tile
    (`grouped_gemm._row_tile`)."""
    g, starts, ends, tiles = _group_row_tiles(offs_ptr, G, BLOCK_M, BLOCK_G, num_warps)
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


@gluon.jit
def _live_row_tiles(offs_ptr, G, BLOCK_M: gl.constexpr, BLOCK_G: gl.constexpr, WARPS: gl.constexpr):
    # the number of row tiles of all groups: sum over g of ceil(rows_g / BLOCK_M)
    return gl.sum(_group_row_tiles(offs_ptr, G, BLOCK_M, BLOCK_G, WARPS)[3], 0)


@gluon.jit
def _walk_to_row_tile(offs_ptr, G, pid_m, grp, first, start, end, BLOCK_M: gl.constexpr):
    """Advance (group grp, its first row tile `first`, its rows [start, end)) to the group of row tile
    pid_m (tiles numbered as `_row_tile` does; pid_m never decreases along a program's tiles, so the
    walk over the offsets is shared by all of them, without the reductions of `_row_tile`)."""
    while (grp < G) & (pid_m >= first + (end - start + BLOCK_M - 1) // BLOCK_M):
        first += (end - start + BLOCK_M - 1) // BLOCK_M
        grp += 1
        start = end
        end = gl.load(offs_ptr + grp, mask=grp < G, other=end)
    return grp, first, start, end


@gluon.jit
def _rows_loader(a_desc, b_desc, a_smem, b_smem, ready, empty, offs_ptr, N, K, G,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_G: gl.constexpr):
    # worker partition (one warp): the operand tiles of every step of this program's output tiles,
    # in order, into the ring; a slot is refilled once the MMA partition has released it
    STAGES: gl.constexpr = a_smem.type.shape[0]
    n_tiles = gl.cdiv(N, BLOCK_N)
    total = _live_row_tiles(offs_ptr, G, BLOCK_M, BLOCK_G, 1) * n_tiles
    nk = K // 128
    step = 0
    grp, first, start, end = 0, 0, 0, gl.load(offs_ptr)
    for t in range(gl.program_id(0), total, gl.num_programs(0)):
        grp, first, start, end = _walk_to_row_tile(offs_ptr, G, t // n_tiles, grp, first, start, end, BLOCK_M)
        row0 = start + (t // n_tiles - first) * BLOCK_M
        brow = grp * N + (t % n_tiles) * BLOCK_N
        for j in range(nk):
            s = step % STAGES
            mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            _tma_load(a_desc, [row0, j * 128], ready.index(s), a_smem.index(s))
            _tma_load(b_desc, [brow, j * 128], ready.index(s), b_smem.index(s))
            step += 1


@gluon.jit
def _ring(a_desc, b_desc, STAGES: gl.constexpr):
    # the operand ring of the warp-specialized kernels: STAGES slots of one [rows, 128] tile of each
    # operand, a `ready` barrier (the loader's TMA bytes landed) and an `empty` one (the MMAs are done)
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for slot in gl.static_range(STAGES):
        mbarrier.init(ready.index(slot), count=1)
        mbarrier.init(empty.index(slot), count=1)
    return a_smem, b_smem, ready, empty


@gluon.jit
def _ring_issue(a_smem, b_smem, ready, step, zero):
    # step `step`'s MMA, once the loader has filled its slot, into fresh registers
    STAGES: gl.constexpr = a_smem.type.shape[0]
    s = step % STAGES
    mbarrier.wait(ready.index(s), (step // STAGES) & 1)
    return warpgroup_mma(a_smem.index(s), b_smem.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _ring_wait(tok, empty, step, PENDING: gl.constexpr):
    # step `step`'s product, once its MMA is done (PENDING later ones may run on); its slot goes back
    d = warpgroup_mma_wait(num_outstanding=PENDING, deps=(tok,))
    mbarrier.arrive(empty.index(step % empty.shape[0]), count=1)
    return d


@gluon.jit
def _scale_values(s):
    # E8M0 bytes decoded, or the values themselves when the scales come as fp32 (f32_scales)
    if s.dtype == gl.float32:
        return s
    else:
        return _e8m0_to_f32(s)


@gluon.jit
def _ring_scales(sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step, i):
    # step i's scales: one per output row; one for the tile (sb_ptrs a scalar) or one per column
    return (_scale_values(gl.load(sa_ptrs + i * sa_step, mask=sa_mask, other=127)),
            _scale_values(gl.load(sb_ptrs + i * sb_step, mask=sb_mask, other=127)))


@gluon.jit
def _ring_dot(a_smem, b_smem, ready, empty, step0, nk, sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step,
              MMA: gl.constexpr, SB_SCALAR: gl.constexpr, OVERLAP: gl.constexpr = True):
    """`_pipelined_dot` on operands that a loader partition puts in the ring (steps step0 ..
    step0 + nk - 1 of its sequence). Two steps an iteration: the first step's MMA is issued, then the
    previous iteration's last product promoted; the second's issued, the first's waited for and
    promoted; the second's waited for and carried (an MMA still in flight at the loop's back edge
    would make ptxas serialize every wgmma). OVERLAP=False: one MMA at a time, 64 fewer registers a
    thread (the weight gradient's 32 column scales do not fit beside two products of 128 columns)."""
    BLOCK_M: gl.constexpr = a_smem.type.shape[1]
    BLOCK_N: gl.constexpr = b_smem.type.shape[1]
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, MMA)
    acc = zero
    d = zero  # the carried product (with its scales sa, sb): 0 * 1 before the first step
    sa = gl.full([BLOCK_M], 1.0, gl.float32, gl.SliceLayout(1, MMA))
    if SB_SCALAR:
        sb = 1.0
    else:
        sb = gl.full([BLOCK_N], 1.0, gl.float32, gl.SliceLayout(0, MMA))
    if OVERLAP:
        for j in range(0, nk // 2):
            i = 2 * j
            x = _ring_issue(a_smem, b_smem, ready, step0 + i, zero)
            acc = _promote(acc, d, sa, sb, SB_SCALAR)
            sa, sb = _ring_scales(sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step, i)
            y = _ring_issue(a_smem, b_smem, ready, step0 + i + 1, zero)
            dx = _ring_wait(x, empty, step0 + i, 1)
            acc = _promote(acc, dx, sa, sb, SB_SCALAR)
            sa, sb = _ring_scales(sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step, i + 1)
            d = _ring_wait(y, empty, step0 + i + 1, 0)
        if nk % 2 == 1:
            x = _ring_issue(a_smem, b_smem, ready, step0 + nk - 1, zero)
            acc = _promote(acc, d, sa, sb, SB_SCALAR)
            sa, sb = _ring_scales(sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step, nk - 1)
            d = _ring_wait(x, empty, step0 + nk - 1, 0)
        acc = _promote(acc, d, sa, sb, SB_SCALAR)
    else:  # one MMA at a time, each promoted after it (fewer registers: no product waits in them)
        for i in range(nk):
            x = _ring_issue(a_smem, b_smem, ready, step0 + i, zero)
            sa, sb = _ring_scales(sa_ptrs, sa_mask, sa_step, sb_ptrs, sb_mask, sb_step, i)
            d = _ring_wait(x, empty, step0 + i, 0)
            acc = _promote(acc, d, sa, sb, SB_SCALAR)
    return acc


@gluon.jit
def _rows_mma(a_smem, b_smem, ready, empty, as_ptr, bs_ptr, c_ptr, offs_ptr, N, K, G,
              stride_asm, stride_ask, stride_bsg, stride_bsn, stride_bsk, stride_cm,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_G: gl.constexpr, OUT_BF16: gl.constexpr,
              num_warps: gl.constexpr):
    # default partition: MMA, promotion and the store of each output tile, in the loader's order
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_N, 32])
    n_tiles = gl.cdiv(N, BLOCK_N)
    total = _live_row_tiles(offs_ptr, G, BLOCK_M, BLOCK_G, num_warps) * n_tiles
    nk = K // 128
    step = 0
    grp, first, start, end = 0, 0, 0, gl.load(offs_ptr)
    for t in range(gl.program_id(0), total, gl.num_programs(0)):
        grp, first, start, end = _walk_to_row_tile(offs_ptr, G, t // n_tiles, grp, first, start, end, BLOCK_M)
        row0 = start + (t // n_tiles - first) * BLOCK_M
        col0 = (t % n_tiles) * BLOCK_N
        rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, MMA))
        rmask = rows < end
        rows = rows.to(gl.int64)
        cols = col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, MMA))
        cmask = cols < N
        sb_ptrs = bs_ptr + grp.to(gl.int64) * stride_bsg + col0 * stride_bsn
        acc = _ring_dot(a_smem, b_smem, ready, empty, step, nk, as_ptr + rows * stride_asm, rmask, stride_ask,
                        sb_ptrs, True, stride_bsk, MMA, True)
        step += nk
        c = _bf16_bits(acc) if OUT_BF16 else acc
        gl.store(c_ptr + gl.expand_dims(rows, 1) * stride_cm + gl.expand_dims(cols, 0), c,
                 mask=gl.expand_dims(rmask, 1) & gl.expand_dims(cmask, 0))


@gluon.jit
def _grouped_gemm_rows_ws_kernel(a_desc, b_desc, as_ptr, bs_ptr, c_ptr, offs_ptr, N, K, G,
                                 stride_asm, stride_ask, stride_bsg, stride_bsn, stride_bsk, stride_cm,
                                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_G: gl.constexpr,
                                 STAGES: gl.constexpr, OUT_BF16: gl.constexpr, LOADER_REGS: gl.constexpr,
                                 num_warps: gl.constexpr):
    # `_grouped_gemm_rows_sm90_kernel` with 128x128 block weight scales (B_BLOCKS), persistent and
    # warp-specialized: one loader warp feeds a STAGES-deep TMA ring; the default partition's
    # warpgroups run the MMAs (two 64-row halves of the tile) and the promotion.
    a_smem, b_smem, ready, empty = _ring(a_desc, b_desc, STAGES)
    gl.warp_specialize([
        (_rows_mma, (a_smem, b_smem, ready, empty, as_ptr, bs_ptr, c_ptr, offs_ptr, N, K, G, stride_asm,
                     stride_ask, stride_bsg, stride_bsn, stride_bsk, stride_cm, BLOCK_M, BLOCK_N, BLOCK_G,
                     OUT_BF16, num_warps)),
        (_rows_loader, (a_desc, b_desc, a_smem, b_smem, ready, empty, offs_ptr, N, K, G, BLOCK_M, BLOCK_N,
                        BLOCK_G)),
    ], [1], [LOADER_REGS])


@gluon.jit
def _wgrad_tile(offs_ptr, T, t, tiles_n, tiles_k):
    # (group, n tile, k tile, first and end token step) of weight-gradient tile t
    grp = t // (tiles_n * tiles_k)
    rest = t % (tiles_n * tiles_k)
    start = gl.where(grp > 0, gl.load(offs_ptr + gl.maximum(grp - 1, 0)), 0)
    end = gl.load(offs_ptr + grp)
    # the clamp keeps a bad layout inside the operands, as in the Triton kernel
    return grp, rest // tiles_k, rest % tiles_k, gl.maximum(start, 0) // 128, gl.minimum(end, T) // 128


@gluon.jit
def _wgrad_loader(a_desc, b_desc, a_smem, b_smem, ready, empty, offs_ptr, N, K, T, G,
                  BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
    # worker partition (one warp): the token steps of each of this program's tiles into the ring
    STAGES: gl.constexpr = a_smem.type.shape[0]
    tiles_n = gl.cdiv(N, BLOCK_N)
    tiles_k = gl.cdiv(K, BLOCK_K)
    step = 0
    for t in range(gl.program_id(0), G * tiles_n * tiles_k, gl.num_programs(0)):
        grp, pid_n, pid_k, tb0, tb1 = _wgrad_tile(offs_ptr, T, t, tiles_n, tiles_k)
        for tb in range(tb0, tb1):
            s = step % STAGES
            mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            _tma_load(a_desc, [pid_n * BLOCK_N, tb * 128], ready.index(s), a_smem.index(s))
            _tma_load(b_desc, [pid_k * BLOCK_K, tb * 128], ready.index(s), b_smem.index(s))
            step += 1


@gluon.jit
def _wgrad_mma(a_smem, b_smem, ready, empty, as_ptr, bst_ptr, c_ptr, offs_ptr, N, K, T, G,
               stride_asn, stride_bst, stride_cg, stride_cn,
               BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, OUT_BF16: gl.constexpr, OVERLAP: gl.constexpr,
               num_warps: gl.constexpr):
    # default partition: out[g, n tile, k tile] = sum over the group's token steps, in the loader's order
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_K, 32])
    tiles_n = gl.cdiv(N, BLOCK_N)
    tiles_k = gl.cdiv(K, BLOCK_K)
    step = 0
    for t in range(gl.program_id(0), G * tiles_n * tiles_k, gl.num_programs(0)):
        grp, pid_n, pid_k, tb0, tb1 = _wgrad_tile(offs_ptr, T, t, tiles_n, tiles_k)
        n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
        nmask = n < N
        n = n.to(gl.int64)
        k = pid_k * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, MMA))
        kmask = k < K
        nk = gl.maximum(tb1 - tb0, 0)
        # b's scales transposed, [T / 128, K]: a step's column scales are contiguous
        acc = _ring_dot(a_smem, b_smem, ready, empty, step, nk, as_ptr + n * stride_asn + tb0, nmask, 1,
                        bst_ptr + tb0.to(gl.int64) * stride_bst + k, kmask, stride_bst, MMA, False, OVERLAP)
        step += nk
        c = _bf16_bits(acc) if OUT_BF16 else acc
        c_ptrs = c_ptr + grp.to(gl.int64) * stride_cg + gl.expand_dims(n, 1) * stride_cn + gl.expand_dims(k, 0)
        gl.store(c_ptrs, c, mask=gl.expand_dims(nmask, 1) & gl.expand_dims(kmask, 0))


@gluon.jit
def _grouped_gemm_wgrad_ws_kernel(a_desc, b_desc, as_ptr, bst_ptr, c_ptr, offs_ptr, N, K, T, G,
                                  stride_asn, stride_bst, stride_cg, stride_cn,
                                  BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
                                  OUT_BF16: gl.constexpr, OVERLAP: gl.constexpr, LOADER_REGS: gl.constexpr,
                                  num_warps: gl.constexpr):
    # `_grouped_gemm_wgrad_sm90_kernel` (group-aligned token steps), persistent and warp-specialized
    # as `_grouped_gemm_rows_ws_kernel`
    a_smem, b_smem, ready, empty = _ring(a_desc, b_desc, STAGES)
    gl.warp_specialize([
        (_wgrad_mma, (a_smem, b_smem, ready, empty, as_ptr, bst_ptr, c_ptr, offs_ptr, N, K, T, G, stride_asn,
                      stride_bst, stride_cg, stride_cn, BLOCK_N, BLOCK_K, OUT_BF16, OVERLAP, num_warps)),
        (_wgrad_loader, (a_desc, b_desc, a_smem, b_smem, ready, empty, offs_ptr, N, K, T, G, BLOCK_N, BLOCK_K)),
    ], [1], [LOADER_REGS])


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


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


LOADER_REGS = 24  # the loader warp's registers (the least a warp can hold); the MMA warps get the rest


def ws_maxnreg(num_warps: int) -> int:
    """Registers per thread over all warps of a warp-specialized kernel (the MMA warps plus the
    loader's warpgroup): the most 64K registers allow, so that the MMA warps get 240 (8 warps) after
    the loader's LOADER_REGS."""
    return min(255, (65536 // (32 * (num_warps + 4))) // 8 * 8)


def _persistent_grid(tiles: int, device: torch.device) -> tuple[int]:
    # one program per SM, fewer when there are fewer output tiles
    index = device.index if device.index is not None else torch.cuda.current_device()
    return (min(tiles, _sm_count(index)),)


def launch_rows_ws(a, b, offsets, out, config):
    """`grouped_gemm.launch_rows(..., b_blocks=True)` on the persistent warp-specialized Gluon kernel
    (`_grouped_gemm_rows_ws_kernel`): one program per SM, config.block_rows 64 per MMA warpgroup
    (config.num_warps = 4 * block_rows / 64), config.block_cols <= 128, config.num_stages the ring's
    depth. Same output bits as the Triton kernel. Returns the compiled kernel, or None."""
    m, k = a.shape
    g, n, _ = b.shape
    if m == 0 or n == 0 or g == 0 or k == 0:
        if k == 0 and m and n:
            out.zero_()  # rows past offsets[-1] are the caller's either way
        return None
    b_rows = b.data.reshape(g * n, k)
    tiles = (triton.cdiv(m, config.block_rows) + g) * triton.cdiv(n, config.block_cols)
    return _grouped_gemm_rows_ws_kernel[_persistent_grid(tiles, a.data.device)](
        _desc(a.data, config.block_rows), _desc(b_rows, config.block_cols), a.scales, b.scales,
        _store_view(out), offsets, n, k, g, a.scales.stride(0), a.scales.stride(1), b.scales.stride(0),
        b.scales.stride(1), b.scales.stride(2), out.stride(0),
        BLOCK_M=config.block_rows, BLOCK_N=config.block_cols, BLOCK_G=max(16, triton.next_power_of_2(g)),
        STAGES=config.num_stages, OUT_BF16=out.element_size() == 2, LOADER_REGS=LOADER_REGS,
        num_warps=config.num_warps, maxnreg=ws_maxnreg(config.num_warps))


def launch_wgrad_ws(a_t, b_t, offsets, out, config, overlap: bool = True):
    """`grouped_gemm.launch_wgrad(..., aligned=True)` on the persistent warp-specialized Gluon kernel:
    `offsets` group-aligned, a_t [N, T] and b_t [K, T] column-wise FP8Tensors; config.block_rows 64
    per MMA warpgroup, config.block_cols <= 128 (columns of the output), config.num_stages the ring's
    depth. Same output bits as the Triton kernel. Returns the compiled kernel, or None."""
    g, n, k = out.shape
    if g == 0 or n == 0 or k == 0:
        return None
    t = a_t.shape[1]
    a_scales = a_t.scales.contiguous()  # read with one row stride
    b_scales_t = b_t.scales.t().contiguous()  # [T / 128, K]: a token step's column scales contiguous
    if config.f32_scales:  # decoded once here instead of by every MMA thread every step
        from .grouped_gemm import decoded_scales
        a_scales, b_scales_t = decoded_scales(a_scales), decoded_scales(b_scales_t)
    tiles = g * triton.cdiv(n, config.block_rows) * triton.cdiv(k, config.block_cols)
    return _grouped_gemm_wgrad_ws_kernel[_persistent_grid(tiles, a_t.data.device)](
        _desc(a_t.data, config.block_rows), _desc(b_t.data, config.block_cols), a_scales, b_scales_t,
        _store_view(out), offsets, n, k, t, g, a_scales.stride(0), b_scales_t.stride(0),
        out.stride(0), out.stride(1),
        BLOCK_N=config.block_rows, BLOCK_K=config.block_cols, STAGES=config.num_stages,
        OUT_BF16=out.element_size() == 2, OVERLAP=overlap, LOADER_REGS=LOADER_REGS, num_warps=config.num_warps,
        maxnreg=ws_maxnreg(config.num_warps))
