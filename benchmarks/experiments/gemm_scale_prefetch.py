#!/usr/bin/env python3
"""An experiment (issue 19): the Triton FP8 grouped GEMMs with their scale bytes prefetched one step
ahead (`GemmConfig.prefetch_scales`) and, for the weight gradient, with step-major scales (each token
step's scale bytes contiguous, a transposed view of a `[T/128, N]` buffer) and with fp32 scales
(`GemmConfig.f32_scales`), against the defaults and BF16 `torch._grouped_mm`, same operands, same run:
the six GEMMs of the layer of record (H 2048, F 1408, E 64, 16384 tokens x top-6), balanced and Zipf
groups, weight gradients on the group-aligned layout.

Why (offline, Triton 3.6 for sm_90a): both kernels software-pipeline their operand loads (cp.async,
`num_stages` deep) but load each step's scale bytes synchronously inside the loop, and the weight
gradient's scales are one byte per row 800 bytes apart (64 + 128 separate sectors a step), so every
step waits for a scattered L2 load about as long as its 64x128x128 MMA takes (~250 cycles). And the
weight gradient's loop is 475 instructions a step against the row-grouped kernel's 220: each thread
decodes 32 column scale bytes every step; with fp32 scales the loop is 272.
'same' = bit-identical to the default configuration. Median of CUDA-event timings.
Needs CUDA:  python3 benchmarks/experiments/gemm_scale_prefetch.py [OUT.json]   (env ITERS, DISTS, KINDS)
"""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _bench_common as bc  # noqa: E402
from gemm_throughput import group_sizes, problem, tflops  # noqa: E402
from mxa2a.gemm import align_groups, grouped_gemm_fp8, grouped_gemm_fp8_wgrad, quantize_fp8_blocks  # noqa: E402
from mxa2a.gemm.grouped import FORWARD_CONFIG, WGRAD_CONFIG  # noqa: E402
from mxa2a.quant import FP8Tensor, fp8_rowwise_to_colwise, quantize_fp8  # noqa: E402

H, F, E, TOP_K, TOKENS = 2048, 1408, 64, 6, 16384
ITERS = int(os.environ.get("ITERS", 10))
DISTS = os.environ.get("DISTS", "balanced,zipf").split(",")
KINDS = os.environ.get("KINDS", "fwd1,fwd2,dgrad1,dgrad2,wgrad1,wgrad2").split(",")


def step_major(t: FP8Tensor) -> FP8Tensor:
    return FP8Tensor(t.data, t.scales.t().contiguous().t())


def variants(kind: str, m: int, n: int, k: int, offsets: torch.Tensor, dev) -> dict:
    """name -> call, for one GEMM kind on fresh random operands; "bf16" is torch._grouped_mm."""
    bf = torch.bfloat16
    if kind.startswith("wgrad"):
        layout = align_groups(offsets, m)
        a, b = torch.randn(m, n, device=dev, dtype=bf), torch.randn(m, k, device=dev, dtype=bf)
        a_t, b_t = (fp8_rowwise_to_colwise(quantize_fp8(x), row_map=layout.row_map) for x in (a, b))
        a_s, b_s = step_major(a_t), step_major(b_t)
        cfg = lambda **kw: dataclasses.replace(WGRAD_CONFIG, **kw)  # noqa: E731
        call = lambda x, y, c: lambda: grouped_gemm_fp8_wgrad(x, y, layout, config=c, out_dtype=bf)  # noqa: E731
        return {"default": call(a_t, b_t, WGRAD_CONFIG), "prefetch": call(a_t, b_t, cfg(prefetch_scales=True)),
                "step-major": call(a_s, b_s, WGRAD_CONFIG), "f32": call(a_t, b_t, cfg(f32_scales=True)),
                "f32+major": call(a_s, b_s, cfg(f32_scales=True)),
                "all three": call(a_s, b_s, cfg(f32_scales=True, prefetch_scales=True)),
                "bf16": lambda: torch._grouped_mm(a.t(), b, offs=offsets)}
    x = torch.randn(m, k, device=dev, dtype=bf)
    w = torch.randn(E, n, k, device=dev, dtype=bf) * k ** -0.5
    xq, wq, wt = quantize_fp8(x), quantize_fp8_blocks(w), w.transpose(-2, -1)
    fetch = dataclasses.replace(FORWARD_CONFIG, prefetch_scales=True)
    call = lambda cfg: lambda: grouped_gemm_fp8(xq, wq, offsets, config=cfg, b_block_scales=True)  # noqa: E731
    return {"default": call(FORWARD_CONFIG), "prefetch": call(fetch),
            "bf16": lambda: torch._grouped_mm(x, wt, offs=offsets)}


def main() -> int:
    if not torch.cuda.is_available():
        print("gemm_scale_prefetch.py needs a CUDA device", file=sys.stderr)
        return 2
    dev, gen, rows = torch.device("cuda"), torch.Generator().manual_seed(0), []
    m = TOKENS * TOP_K
    for dist in DISTS:
        offsets = torch.tensor(group_sizes(m, E, dist, gen), device=dev).cumsum(0).to(torch.int32)
        for kind in KINDS:
            n, k = problem(kind, H, F)
            calls = variants(kind, m, n, k, offsets, dev)
            want = calls["default"]()
            for name, fn in calls.items():
                us = bc.median(bc.time_cuda(fn, ITERS, 3))
                same = None if name == "bf16" else bool(torch.equal(fn().view(torch.int16), want.view(torch.int16)))
                rows.append(dict(dist=dist, kind=kind, variant=name, us=us, tflops=tflops(m, n, k, us), same=same))
                print(bc.format_row(COLUMNS, rows[-1]), flush=True)
            del calls, want
            torch.cuda.empty_cache()
    base = {(r["dist"], r["kind"]): r["us"] for r in rows if r["variant"] == "default"}
    for r in rows:
        r["x_default"] = base[(r["dist"], r["kind"])] / r["us"]
    print(bc.format_table(COLUMNS, rows))
    if len(sys.argv) > 1:
        bc.write_json(sys.argv[1], {"machine": bc.machine_description(), "rows": rows})
    return 0 if all(r["same"] is not False for r in rows) else 1


COLUMNS = [bc.Column("dist", "groups", "{}", 8), bc.Column("kind", "kind", "{}", 7),
           bc.Column("variant", "variant", "{}", 10), bc.Column("us", "us", "{:.0f}", 7),
           bc.Column("tflops", "TF/s", "{:.0f}", 6), bc.Column("x_default", "x default", "{:.3f}", 9),
           bc.Column("same", "same", "{}", 5)]

if __name__ == "__main__":
    sys.exit(main())
