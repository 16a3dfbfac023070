#!/usr/bin/env python3
"""An experiment (issue 19): the persistent warp-specialized Gluon grouped GEMM
(`_grouped_gemm_rows_ws_kernel` in gemm/kernels/grouped_gemm_sm90.py: one loader warp feeding a TMA
ring, two MMA warpgroups on a 128-row tile, two wgmmas in flight while the previous step is promoted)
against the library's Triton kernel and BF16 torch._grouped_mm, same operands, same run: the forward
and data-gradient GEMMs of the layer of record (H 2048, F 1408, E 64, 16384 tokens x top-6, balanced
and Zipf groups). First an exactness pass on edge shapes (empty and 1-row groups, K of 1-4 steps, a
NaN row). 'same' = bit-identical to the Triton kernel. Median of CUDA-event timings.
Needs an sm90 GPU:  python3 benchmarks/experiments/gemm_sm90_ws.py [OUT.json]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _bench_common as bc  # noqa: E402
from gemm_throughput import group_sizes, problem, tflops  # noqa: E402
from mxa2a.gemm import (GemmConfig, align_groups, gather_aligned_rows, grouped_gemm_fp8,  # noqa: E402
                        grouped_gemm_fp8_wgrad, quantize_fp8_blocks)
from mxa2a.gemm.kernels.grouped_gemm_sm90 import launch_rows_ws, launch_wgrad_ws  # noqa: E402
from mxa2a.quant import fp8_rowwise_to_colwise, quantize_fp8  # noqa: E402

H, F, E, TOP_K, TOKENS = 2048, 1408, 64, 6, 16384
WS_CONFIGS = [(128, 128, 8, 4), (128, 128, 8, 5), (64, 128, 4, 4)]
# (block rows, block cols, warps, stages, two MMAs in flight, fp32 scales): 128x128 with two in flight
# spills; fp32 scales spare each MMA thread decoding 16-32 column scale bytes a step (GemmConfig.f32_scales)
WGRAD_CONFIGS = [(128, 64, 8, 4, True, False), (128, 64, 8, 4, True, True), (128, 128, 8, 4, False, False),
                 (128, 128, 8, 4, False, True), (128, 64, 8, 6, True, True)]
WGRAD_EDGE_CONFIGS = [WGRAD_CONFIGS[i] for i in (0, 1, 3)]
ITERS = int(os.environ.get("ITERS", 10))
DISTS = os.environ.get("DISTS", "balanced,zipf").split(",")  # a shorter run: DISTS=balanced KINDS=fwd1,wgrad1
KINDS = os.environ.get("KINDS", "wgrad1,wgrad2,fwd1,fwd2,dgrad1,dgrad2").split(",")


def same(x, y):
    return bool(torch.equal(x.view(torch.int16 if x.element_size() == 2 else torch.int32),
                            y.view(torch.int16 if y.element_size() == 2 else torch.int32)))


def ws(xq, wq, offsets, dtype, cfg):
    out = torch.empty(xq.shape[0], wq.shape[1], dtype=dtype, device=xq.data.device)
    kern = launch_rows_ws(xq, wq, offsets, out, GemmConfig(*cfg))
    return out, kern


def wgrad_ws(a_t, b_t, layout, dtype, cfg):
    out = torch.empty(layout.groups, a_t.shape[0], b_t.shape[0], dtype=dtype, device=a_t.data.device)
    kern = launch_wgrad_ws(a_t, b_t, layout.padded_offsets, out, GemmConfig(*cfg[:4], f32_scales=cfg[5]),
                           overlap=cfg[4])
    return out, kern


def wgrad_edge_checks(dev):
    gen = torch.Generator().manual_seed(2)
    cases, bad = 0, []
    for sizes in ([5, 0, 1, 100, 30], [0, 0, 256], [1, 0], [129, 127, 0, 128], [300]):
        for n, k in ((128, 128), (256, 384), (192, 64)):
            m = sum(sizes)
            off = torch.tensor(sizes, device=dev).cumsum(0).to(torch.int32)
            layout = align_groups(off, m)
            rows = [quantize_fp8(torch.randn(max(m, 1), c, generator=gen).to(dev)) for c in (n, k)]
            a_t, b_t = (fp8_rowwise_to_colwise(gather_aligned_rows(r, layout)) for r in rows)
            for dtype in (torch.bfloat16, torch.float32):
                ref = grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=dtype)
                for cfg in WGRAD_EDGE_CONFIGS:
                    got, _ = wgrad_ws(a_t, b_t, layout, dtype, cfg)
                    cases += 1
                    if not same(got, ref):
                        bad.append((sizes, n, k, str(dtype), cfg))
    print(f"wgrad edge checks: {cases - len(bad)}/{cases} bit-identical" + (f"; differing: {bad[:6]}" if bad else ""),
          flush=True)
    return dict(cases=cases, differing=[str(b) for b in bad])


def edge_checks(dev):
    gen = torch.Generator().manual_seed(1)
    cases, bad = 0, []
    for sizes in ([5, 0, 1, 100, 30], [0, 0, 256], [1, 0], [129, 127, 0, 128], [0], [300], [7] * 40):
        for k in (128, 256, 384, 512):
            for n in (128, 384):
                m = sum(sizes)
                x = torch.randn(max(m, 1), k, generator=gen).to(dev)
                if m > 3:
                    x[m // 2, 3] = float("nan")
                xq = quantize_fp8(x)
                wq = quantize_fp8_blocks(torch.randn(len(sizes), n, k, generator=gen).to(dev))
                off = torch.tensor(sizes, device=dev).cumsum(0).to(torch.int32)
                for dtype in (torch.bfloat16, torch.float32):
                    ref = grouped_gemm_fp8(xq, wq, off, out_dtype=dtype, b_block_scales=True)
                    for cfg in ((128, 128, 8, 3), (128, 128, 8, 4)):
                        got, _ = ws(xq, wq, off, dtype, cfg)
                        cases += 1
                        if not same(got[:m], ref[:m]):
                            bad.append((sizes, k, n, str(dtype), cfg))
    print(f"edge checks: {cases - len(bad)}/{cases} bit-identical" + (f"; differing: {bad[:6]}" if bad else ""),
          flush=True)
    return dict(cases=cases, differing=[str(b) for b in bad])


def time_kind(result, dist, kind, m, n, k, lib, bf16, variant, configs, out_path):
    """One GEMM kind: the Triton kernel `lib` and BF16 `bf16` timed once, then `variant(config)` (the
    warp-specialized kernel: (output, compiled kernel)) per config, checked against lib's bits."""
    ref = lib().clone()
    us_lib = bc.median(bc.time_cuda(lib, ITERS, 3))
    us_bf16 = bc.median(bc.time_cuda(bf16, ITERS, 3))
    print(f"{dist} {kind}: triton {us_lib:.0f} us {tflops(m, n, k, us_lib):.0f} TF/s; "
          f"bf16 {us_bf16:.0f} us {tflops(m, n, k, us_bf16):.0f} TF/s", flush=True)
    for c in configs:
        row = dict(dist=dist, kind=kind, config="x".join(map(str, c)), triton_us=us_lib, bf16_us=us_bf16)
        try:
            got, kern = variant(c)
            row.update(registers=kern.n_regs, spills=kern.n_spills, same=same(got, ref))
            us = bc.median(bc.time_cuda(lambda: variant(c), ITERS, 3))
            row.update(ws_us=us, ws_tflops=tflops(m, n, k, us), x_triton=us_lib / us, x_bf16=us_bf16 / us)
            print(f"  ws {row['config']}: {us:.0f} us {row['ws_tflops']:.0f} TF/s x triton {row['x_triton']:.2f} "
                  f"x bf16 {row['x_bf16']:.2f} same={row['same']} regs {row['registers']} spills {row['spills']}",
                  flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            print(f"  ws {row['config']}: {row['error']}", flush=True)
        result["rows"].append(row)
        if out_path:
            with open(out_path, "w") as fh:
                json.dump(result, fh, indent=1)
    torch.cuda.empty_cache()


def time_wgrad(result, kind, m, offsets, dist, dev, out_path):
    n, k = problem(kind, H, F)
    a = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    layout = align_groups(offsets, m)
    a_t, b_t = (fp8_rowwise_to_colwise(gather_aligned_rows(quantize_fp8(t), layout)) for t in (a, b))
    at16 = a.t()
    time_kind(result, dist, kind, m, n, k, lambda: grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16),
              lambda: torch._grouped_mm(at16, b, offs=offsets),
              lambda c: wgrad_ws(a_t, b_t, layout, torch.bfloat16, c), WGRAD_CONFIGS, out_path)


def time_rows(result, kind, m, offsets, dist, dev, out_path):
    n, k = problem(kind, H, F)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(E, n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
    xq, wq, wt = quantize_fp8(x), quantize_fp8_blocks(w), w.transpose(-2, -1)
    time_kind(result, dist, kind, m, n, k, lambda: grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True),
              lambda: torch._grouped_mm(x, wt, offs=offsets),
              lambda c: ws(xq, wq, offsets, torch.bfloat16, c), WS_CONFIGS, out_path)


def main():
    dev = torch.device("cuda")
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    result = {"machine": bc.machine_description(), "edge": edge_checks(dev), "rows": []}
    try:
        result["wgrad_edge"] = wgrad_edge_checks(dev)
    except Exception as exc:
        print(f"wgrad edge checks: {type(exc).__name__}: {exc}"[:400], flush=True)
    gen = torch.Generator().manual_seed(0)
    m = TOKENS * TOP_K
    for dist in DISTS:
        offsets = torch.tensor(group_sizes(m, E, dist, gen), device=dev).cumsum(0).to(torch.int32)
        for kind in KINDS:
            (time_wgrad if kind.startswith("wgrad") else time_rows)(result, kind, m, offsets, dist, dev, out_path)


if __name__ == "__main__":
    main()
