"""An experiment, not a benchmark of the library (issue 19; figures in
benchmarks/results/gemm_kernel_variants_h100_1207.txt): variants of the FP8 grouped GEMM kernels of
gemm/kernels/grouped_gemm.py, timed beside the library kernel and BF16 torch._grouped_mm at H 2048,
F 1408, E 64, 98304 balanced rows, each checked bit for bit against the library's output.
    PAIR: two 128-wide K steps per loop iteration (two independent dots, then the two promotions in
          the library's order: the same bits).
    TMA:  the FP8 operand tiles loaded through host tensor descriptors (rows kernel only).
The variant kernels read one weight scale per output column (the library's b_block_scales path reads
one per 128x128 block) unless BBLK.
    BBLK: one weight scale per 128x128 block, as the library (rows kernel, BLOCK_N <= 128).
Needs a GPU:  [VARIANTS=measured|blocks] python3 benchmarks/experiments/gemm_kernel_variants.py [OUT.json]
"""
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _bench_common as bc  # noqa: E402
from mxa2a.gemm import (align_groups, gather_aligned_rows, grouped_gemm_fp8, grouped_gemm_fp8_wgrad,  # noqa: E402
                        quantize_fp8_blocks)
from mxa2a.gemm.kernels.grouped_gemm import _e8m0_to_f32, _row_tile, _wgrad_scale_bytes, _wgrad_step  # noqa: E402
from mxa2a.quant import fp8_rowwise_to_colwise, quantize_fp8  # noqa: E402
from mxa2a.quant.kernels.minifloat import bf16_bits as _bf16_bits  # noqa: E402


@triton.jit
def _operand_tiles(kt, a_desc, b_desc, a_ptrs, b_ptrs, row0, brow, rmask, cmask, TMA: tl.constexpr):
    """The FP8 tiles of A [BLOCK_M, 128] and B [BLOCK_N, 128] of K step `kt`."""
    if TMA:
        return a_desc.load([row0, kt * 128]), b_desc.load([brow, kt * 128])
    else:
        return (tl.load(a_ptrs + kt * 128, mask=rmask[:, None], other=0.0),
                tl.load(b_ptrs + kt * 128, mask=cmask[:, None], other=0.0))


@triton.jit
def _column_scales(as_ptrs, bs_ptrs, kt, rmask, cmask, stride_bsk):
    """2^ka[row] * 2^kb[column] of K step `kt`: one weight scale per output column."""
    sa = _e8m0_to_f32(tl.load(as_ptrs + kt, mask=rmask, other=127))
    sb = _e8m0_to_f32(tl.load(bs_ptrs + kt * stride_bsk, mask=cmask, other=127))
    return sa[:, None] * sb[None, :]


@triton.jit
def rows_exp(a_ptr, a_desc, as_ptr, b_ptr, b_desc, bs_ptr, c_ptr, offs_ptr, N, K, G,
             stride_am, stride_asm, stride_bg, stride_bn, stride_bsg, stride_bsn, stride_bsk, stride_cm,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, PAIR: tl.constexpr,
             TMA: tl.constexpr, BBLK: tl.constexpr):
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = pid // n_tiles
    pid_n = pid % n_tiles
    grp, row0, end = _row_tile(offs_ptr, G, pid_m, BLOCK_M, BLOCK_G)
    if grp < G:
        rows = row0 + tl.arange(0, BLOCK_M)
        rmask = rows < end
        rows = rows.to(tl.int64)
        col0 = pid_n * BLOCK_N
        cols = col0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        kk = tl.arange(0, 128)
        g64 = grp.to(tl.int64)
        a_ptrs = a_ptr + rows[:, None] * stride_am + kk[None, :]
        b_ptrs = b_ptr + g64 * stride_bg + cols.to(tl.int64)[:, None] * stride_bn + kk[None, :]
        as_ptrs = as_ptr + rows * stride_asm
        bs_ptrs = bs_ptr + g64 * stride_bsg + cols * stride_bsn
        brow = grp * N + col0
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        nk = K // 128
        if PAIR:
            for kp in range(0, nk // 2):
                kt = 2 * kp
                a0, b0 = _operand_tiles(kt, a_desc, b_desc, a_ptrs, b_ptrs, row0, brow, rmask, cmask, TMA)
                a1, b1 = _operand_tiles(kt + 1, a_desc, b_desc, a_ptrs, b_ptrs, row0, brow, rmask, cmask, TMA)
                d0 = tl.dot(a0, tl.trans(b0))
                d1 = tl.dot(a1, tl.trans(b1))
                acc += d0 * _column_scales(as_ptrs, bs_ptrs, kt, rmask, cmask, stride_bsk)
                acc += d1 * _column_scales(as_ptrs, bs_ptrs, kt + 1, rmask, cmask, stride_bsk)
            if nk % 2:
                a0, b0 = _operand_tiles(nk - 1, a_desc, b_desc, a_ptrs, b_ptrs, row0, brow, rmask, cmask, TMA)
                acc += tl.dot(a0, tl.trans(b0)) * _column_scales(as_ptrs, bs_ptrs, nk - 1, rmask, cmask, stride_bsk)
        else:
            bs_block = bs_ptr + g64 * stride_bsg + col0 * stride_bsn
            for kt in range(0, nk):
                a0, b0 = _operand_tiles(kt, a_desc, b_desc, a_ptrs, b_ptrs, row0, brow, rmask, cmask, TMA)
                if BBLK:  # one weight scale per 128x128 block (BLOCK_N <= 128), as the library's b_block_scales
                    sa0 = _e8m0_to_f32(tl.load(as_ptrs + kt, mask=rmask, other=127))
                    sb_blk = _e8m0_to_f32(tl.load(bs_block + kt * stride_bsk))
                    acc += tl.dot(a0, tl.trans(b0)) * (sa0 * sb_blk)[:, None]
                else:
                    acc += tl.dot(a0, tl.trans(b0)) * _column_scales(as_ptrs, bs_ptrs, kt, rmask, cmask, stride_bsk)
        tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :], _bf16_bits(acc),
                 mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _token_tiles(tb, a_ptr, as_ptr, b_ptr, bs_ptr, n, k, nmask, kmask, stride_an, stride_asn, stride_bk,
                 stride_bsk):
    """Token tile `tb` of both column-wise operands and its [BLOCK_N, BLOCK_K] scale product."""
    t = tb * 128 + tl.arange(0, 128)
    a = tl.load(a_ptr + n[:, None] * stride_an + t[None, :], mask=nmask[:, None], other=0.0)
    b = tl.load(b_ptr + k[:, None] * stride_bk + t[None, :], mask=kmask[:, None], other=0.0)
    sa = _e8m0_to_f32(tl.load(as_ptr + n * stride_asn + tb, mask=nmask, other=127))
    sb = _e8m0_to_f32(tl.load(bs_ptr + k * stride_bsk + tb, mask=kmask, other=127))
    return a, b, sa[:, None] * sb[None, :]


@triton.jit
def wgrad_exp(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, offs_ptr, N, K, T, stride_an, stride_asn, stride_bk,
              stride_bsk, stride_cg, stride_cn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PAIR: tl.constexpr):
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
    t0 = tl.maximum(start, 0) // 128
    t1 = tl.minimum(end, T) // 128
    if PAIR:
        for tp in range(0, (t1 - t0) // 2):
            tb = t0 + 2 * tp
            a0, b0, s0 = _token_tiles(tb, a_ptr, as_ptr, b_ptr, bs_ptr, n, k, nmask, kmask,
                                      stride_an, stride_asn, stride_bk, stride_bsk)
            a1, b1, s1 = _token_tiles(tb + 1, a_ptr, as_ptr, b_ptr, bs_ptr, n, k, nmask, kmask,
                                      stride_an, stride_asn, stride_bk, stride_bsk)
            d0 = tl.dot(a0, tl.trans(b0))
            d1 = tl.dot(a1, tl.trans(b1))
            acc += d0 * s0
            acc += d1 * s1
        if (t1 - t0) % 2:
            sa, sb = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, t1 - 1, stride_asn, 1, stride_bsk, 1)
            acc = _wgrad_step(acc, t1 - 1, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                              sa, sb, False)
    else:  # the library's group-aligned loop
        for tb in range(t0, t1):
            sa, sb = _wgrad_scale_bytes(as_ptr, bs_ptr, n, k, nmask, kmask, tb, stride_asn, 1, stride_bsk, 1)
            acc = _wgrad_step(acc, tb, start, end, a_ptr, b_ptr, n, k, nmask, kmask, stride_an, stride_bk,
                              sa, sb, False)
    c_ptrs = c_ptr + grp.to(tl.int64) * stride_cg + n[:, None] * stride_cn + k[None, :]
    tl.store(c_ptrs, _bf16_bits(acc), mask=nmask[:, None] & kmask[None, :])


def rows_call(a, b, offsets, cfg, pair, tma, bblk=0):
    m, k = a.shape; g, n, _ = b.shape
    bm, bn, w, s = cfg
    out = torch.empty(m, n, dtype=torch.bfloat16, device=a.data.device)
    ad = TensorDescriptor.from_tensor(a.data, [bm, 128]) if tma else a.data
    bd = TensorDescriptor.from_tensor(b.data.view(g * n, k), [bn, 128]) if tma else b.data
    grid = ((triton.cdiv(m, bm) + g) * triton.cdiv(n, bn),)
    def call():
        rows_exp[grid](a.data, ad, a.scales, b.data, bd, b.scales, out.view(torch.int16), offsets, n, k, g,
                       a.data.stride(0), a.scales.stride(0), b.data.stride(0), b.data.stride(1),
                       b.scales.stride(0), b.scales.stride(1), b.scales.stride(2), out.stride(0),
                       BLOCK_M=bm, BLOCK_N=bn, BLOCK_G=max(16, triton.next_power_of_2(g)), PAIR=pair, TMA=tma,
                       BBLK=bblk, num_warps=w, num_stages=s)
        return out
    return call


def wgrad_call(a_t, b_t, offsets, g, cfg, pair):
    n, t = a_t.shape; k = b_t.shape[0]
    bn, bk, w, s = cfg
    out = torch.empty(g, n, k, dtype=torch.bfloat16, device=a_t.data.device)
    grid = (g * triton.cdiv(n, bn) * triton.cdiv(k, bk),)
    def call():
        wgrad_exp[grid](a_t.data, a_t.scales, b_t.data, b_t.scales, out.view(torch.int16), offsets, n, k, t,
                        a_t.data.stride(0), a_t.scales.stride(0), b_t.data.stride(0), b_t.scales.stride(0),
                        out.stride(0), out.stride(1), BLOCK_N=bn, BLOCK_K=bk, PAIR=pair, num_warps=w, num_stages=s)
        return out
    return call


def tf(m, n, k, us): return 2 * m * n * k / us / 1e6


# (tile rows x cols x warps x stages, PAIR, TMA, BBLK) of the rows kernel. VARIANTS=measured: the set of
# gemm_kernel_variants_h100_1207.txt (with the wgrad variants); VARIANTS=blocks (default): TMA with the
# library's one-scale-per-block promotion, not yet measured.
ROW_VARIANTS = {
    "measured": [(cfg, pair, tma, 0) for cfg in ((64, 128, 4, 4), (128, 128, 8, 3), (128, 256, 8, 3))
                 for pair in (0, 1) for tma in (0, 1)],
    "blocks": [(cfg, 0, tma, 1) for cfg in ((64, 128, 4, 4), (64, 128, 4, 3), (128, 128, 8, 3), (128, 128, 8, 4))
               for tma in (0, 1)],
}


def main():
    dev = torch.device("cuda")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    rows_out = []
    H, F, E, M = 2048, 1408, 64, 98304
    offsets = (torch.arange(1, E + 1, device=dev) * (M // E)).to(torch.int32)
    it = int(os.environ.get("ITERS", 10))
    variant_set = os.environ.get("VARIANTS", "blocks")
    for kind, n, k in (("fwd1", 2 * F, H), ("fwd2", H, F)):
        x = torch.randn(M, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(E, n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
        xq, wq = quantize_fp8(x), quantize_fp8_blocks(w)
        ref = grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True)
        lib = bc.median(bc.time_cuda(lambda: grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True), it, 3))
        wt = w.transpose(-2, -1)
        b16 = bc.median(bc.time_cuda(lambda: torch._grouped_mm(x, wt, offs=offsets), it, 3))
        print(f"{kind}: library {lib:.0f} us {tf(M, n, k, lib):.0f} TF/s; bf16 {b16:.0f} us {tf(M, n, k, b16):.0f} TF/s", flush=True)
        rows_out.append(dict(kind=kind, variant="library", us=lib, bf16_us=b16))
        for cfg, pair, tma, bblk in ROW_VARIANTS[variant_set]:
            try:
                fn = rows_call(xq, wq, offsets, cfg, pair, tma, bblk)
                got = fn()
                same = torch.equal(got, ref)
                us = bc.median(bc.time_cuda(fn, it, 3))
            except Exception as exc:
                print(f"  {kind} {cfg} pair={pair} tma={tma} bblk={bblk}: {type(exc).__name__} {str(exc)[:150]}",
                      flush=True)
                continue
            print(f"  {kind} {'x'.join(map(str, cfg))} pair={pair} tma={tma} bblk={bblk}: {us:.0f} us "
                  f"{tf(M, n, k, us):.0f} TF/s x bf16 {b16 / us:.2f} same={same}", flush=True)
            rows_out.append(dict(kind=kind, cfg=cfg, pair=pair, tma=tma, bblk=bblk, us=us, bf16_us=b16, same=same))
        del x, w, xq, wq, ref
    for kind, n, k in (("wgrad1", 2 * F, H), ("wgrad2", H, F)) if variant_set == "measured" else ():
        a = torch.randn(M, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(M, k, device=dev, dtype=torch.bfloat16)
        layout = align_groups(offsets, M)
        a_t, b_t = (fp8_rowwise_to_colwise(gather_aligned_rows(quantize_fp8(t), layout)) for t in (a, b))
        ref = grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16)
        lib = bc.median(bc.time_cuda(lambda: grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16), it, 3))
        a16 = a.t()
        b16 = bc.median(bc.time_cuda(lambda: torch._grouped_mm(a16, b, offs=offsets), it, 3))
        print(f"{kind}: library {lib:.0f} us {tf(M, n, k, lib):.0f} TF/s; bf16 {b16:.0f} us {tf(M, n, k, b16):.0f} TF/s", flush=True)
        rows_out.append(dict(kind=kind, variant="library", us=lib, bf16_us=b16))
        for cfg in ((64, 128, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3)):
            for pair in (0, 1):
                try:
                    fn = wgrad_call(a_t, b_t, layout.padded_offsets, E, cfg, pair)
                    got = fn()
                    same = torch.equal(got, ref)
                    us = bc.median(bc.time_cuda(fn, it, 3))
                except Exception as exc:
                    print(f"  {kind} {cfg} pair={pair}: {type(exc).__name__} {str(exc)[:150]}", flush=True)
                    continue
                print(f"  {kind} {'x'.join(map(str, cfg))} pair={pair}: {us:.0f} us {tf(M, n, k, us):.0f} TF/s "
                      f"x bf16 {b16 / us:.2f} same={same}", flush=True)
                rows_out.append(dict(kind=kind, cfg=cfg, pair=pair, us=us, bf16_us=b16, same=same))
        del a, b, a_t, b_t, ref
    if len(sys.argv) > 1:  # the JSON path
        with open(sys.argv[1], "w") as f:
            json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
