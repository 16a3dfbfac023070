#!/usr/bin/env python3
"""An experiment (issue 19): the Gluon grouped GEMMs of gemm/kernels/grouped_gemm_sm90.py (TMA operand
ring, each step's fp32 promotion overlapping the next step's wgmma) against the library's Triton
kernels and BF16 torch._grouped_mm, same operands, same run, every GEMM kind of the layer of record
(H 2048, F 1408, E 64, 16384 tokens x top-6, balanced and Zipf groups; wgrad in the group-aligned
layout). 'same' = the Gluon output equals the Triton kernel's bit for bit. Median of CUDA-event timings.
Needs an sm90 GPU:  python3 benchmarks/experiments/gemm_sm90_async_promotion.py [OUT.json]
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
from mxa2a.gemm.kernels.grouped_gemm_sm90 import launch_rows_sm90, launch_wgrad_sm90  # noqa: E402
from mxa2a.quant import fp8_rowwise_to_colwise, quantize_fp8  # noqa: E402

H, F, E, TOP_K, TOKENS = 2048, 1408, 64, 6, 16384
GLUON_CONFIGS = [(64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 5), (128, 128, 8, 2), (128, 128, 8, 3),
                 (128, 128, 8, 4)]
ITERS = int(os.environ.get("ITERS", 10))


def operands(kind, m, offsets, dev):
    n, k = problem(kind, H, F)
    if kind.startswith("wgrad"):
        a = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        groups = align_groups(offsets, m)
        a_t, b_t = (fp8_rowwise_to_colwise(gather_aligned_rows(quantize_fp8(t), groups)) for t in (a, b))
        out = torch.empty(E, n, k, device=dev, dtype=torch.bfloat16)
        return (lambda: grouped_gemm_fp8_wgrad(a_t, b_t, groups, out_dtype=torch.bfloat16),
                lambda cfg: (lambda: (out, launch_wgrad_sm90(a_t, b_t, groups.padded_offsets, out, cfg))),
                lambda: torch._grouped_mm(a.t(), b, offs=offsets), (n, k))
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(E, n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
    xq, wq = quantize_fp8(x), quantize_fp8_blocks(w)
    out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
    wt = w.transpose(-2, -1)
    return (lambda: grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True),
            lambda cfg: (lambda: (out, launch_rows_sm90(xq, wq, offsets, out, cfg, b_blocks=True))),
            lambda: torch._grouped_mm(x, wt, offs=offsets), (n, k))


def main():
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    m = TOKENS * TOP_K
    rows = []
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    for dist in ("balanced", "zipf"):
        offsets = torch.tensor(group_sizes(m, E, dist, gen), device=dev).cumsum(0).to(torch.int32)
        for kind in ("fwd1", "fwd2", "dgrad1", "dgrad2", "wgrad1", "wgrad2"):
            lib, gluon_for, bf16, (n, k) = operands(kind, m, offsets, dev)
            ref = lib().clone()
            us_lib = bc.median(bc.time_cuda(lib, ITERS, 3))
            us_bf16 = bc.median(bc.time_cuda(bf16, ITERS, 3))
            print(f"{dist} {kind}: triton {us_lib:.0f} us {tflops(m, n, k, us_lib):.0f} TF/s; "
                  f"bf16 {us_bf16:.0f} us {tflops(m, n, k, us_bf16):.0f} TF/s", flush=True)
            for c in GLUON_CONFIGS:
                row = dict(dist=dist, kind=kind, config="x".join(map(str, c)), triton_us=us_lib, bf16_us=us_bf16)
                try:
                    fn = gluon_for(GemmConfig(*c))
                    got, kern = fn()
                    got = got.clone()
                    row.update(registers=kern.n_regs, spills=kern.n_spills)
                    row["same"] = bool(torch.equal(got.view(torch.int16), ref.view(torch.int16)))
                    if not row["same"]:
                        d = (got.float() - ref.float()).abs()
                        row["max_abs_diff"] = float(d.nan_to_num(float("inf")).max())
                        row["differing"] = int((got.view(torch.int16) != ref.view(torch.int16)).sum())
                    us = bc.median(bc.time_cuda(fn, ITERS, 3))
                    row.update(gluon_us=us, gluon_tflops=tflops(m, n, k, us), x_triton=us_lib / us, x_bf16=us_bf16 / us)
                    print(f"  gluon {row['config']}: {us:.0f} us {row['gluon_tflops']:.0f} TF/s x triton "
                          f"{row['x_triton']:.2f} x bf16 {row['x_bf16']:.2f} same={row['same']} "
                          f"regs {row['registers']} spills {row['spills']}"
                          + ("" if row["same"] else f" differing={row['differing']} max_abs={row['max_abs_diff']:.3g}"),
                          flush=True)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                    print(f"  gluon {row['config']}: {row['error']}", flush=True)
                rows.append(row)
                if out_path:
                    with open(out_path, "w") as fh:
                        json.dump({"machine": bc.machine_description(), "rows": rows}, fh, indent=1)
            del lib, gluon_for, bf16, ref
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
