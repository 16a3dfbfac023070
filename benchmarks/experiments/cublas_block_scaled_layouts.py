#!/usr/bin/env python3
"""Which expert GEMMs does cuBLAS's block-scaled FP8 path take, and how fast is it per expert?

The first probe (`cublas_block_scaled_mm.py`) found that `torch._scaled_mm` takes GEMM 1 (K 2048,
1x128 x 128x128) and refused GEMM 2 (K 1408) and the weight gradients (1x128 x 1x128) with "Invalid
scaling configuration". This one tries, for one expert of every GEMM kind of the layer of record,
both APIs (`torch._scaled_mm`, scale recipe inferred from the scale shapes; `F.scaled_mm`, recipe
named) with more scale layouts (K/128 padded to a multiple of 4 on the 1x128 side too, unpadded K-major
128x128), checks each product against the fp32 product of the dequantized operands, and times the
first accepted form as a per-expert loop (64 experts x 1536 rows, kernels only: the host queues ahead)
next to the Triton grouped GEMM and BF16 `torch._grouped_mm`.
    python benchmarks/experiments/cublas_block_scaled_layouts.py [out.json]
"""

from __future__ import annotations

import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [here, os.path.join(here, "..")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _bench_common as bc  # noqa: E402
from cublas_block_scaled_mm import dequant, e8m0_f32, rel_err  # noqa: E402


def pad4(s: torch.Tensor) -> torch.Tensor:
    return F.pad(s, (0, (-s.shape[1]) % 4))


def layouts_1x128(s):  # s fp32 [R, L]
    return {"R-major": s.t().contiguous().t(), "R-major L4": pad4(s).t().contiguous().t(),
            "row-major": s.contiguous()}


def layouts_128x128(s):  # s fp32 [R/128, L]
    return {"[L4,R/128] K-major": pad4(s).contiguous().t(), "[L,R/128] K-major": s.contiguous().t(),
            "[R/128,L]": s.contiguous()}


def call(api: str, a, b, sa, sb, ra, rb, out=None):
    """a [M, K] row-major, b [N, K] row-major (passed as the column-major [K, N])."""
    if api == "legacy":
        return torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16, out=out)
    st = F.ScalingType
    return F.scaled_mm(a, b.t(), sa, getattr(st, ra), sb, getattr(st, rb), output_dtype=torch.bfloat16,
                       out=out) if out is not None else \
        F.scaled_mm(a, b.t(), sa, getattr(st, ra), sb, getattr(st, rb), output_dtype=torch.bfloat16)


def first_accepted(a, sa, b, sb, b_blocks: bool, ref):
    la, lb = layouts_1x128(sa), (layouts_128x128(sb) if b_blocks else layouts_1x128(sb))
    ra, rb = "BlockWise1x128", ("BlockWise128x128" if b_blocks else "BlockWise1x128")
    for api in ("legacy", "v2"):
        for na, xa in la.items():
            for nb, xb in lb.items():
                try:
                    out = call(api, a, b, xa, xb, ra, rb)
                    torch.cuda.synchronize()
                except Exception as exc:
                    print(f"    {api} {na} x {nb}: refused {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    continue
                err = rel_err(out, ref)
                print(f"    {api} {na} x {nb}: ran, rel err {err:.2e}")
                if err < 2e-2:
                    return api, na, nb, ra, rb
    return None


def main() -> int:
    from mxa2a.gemm import grouped_gemm_fp8, grouped_gemm_fp8_wgrad, quantize_fp8_blocks, align_groups
    from mxa2a.quant import FP8Tensor, quantize_fp8

    dev = torch.device("cuda")
    torch.manual_seed(0)
    print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0),
          "F.scaled_mm:", hasattr(F, "scaled_mm"))
    h, f, e, rows = 2048, 1408, 64, 1536
    m = e * rows
    offsets = torch.arange(1, e + 1, device=dev, dtype=torch.int32) * rows
    kinds = {"fwd1": (2 * f, h, True), "fwd2": (h, f, True), "dgrad1": (f, h, True), "dgrad2": (h, 2 * f, True),
             "wgrad1": (2 * f, h, False), "wgrad2": (h, f, False)}
    results = {}
    for kind, (n, k, rowwise) in kinds.items():
        print(f"{kind}: N {n} K {k}")
        entry: dict = {"n": n, "k": k}
        if rowwise:  # a [M, K] 1x128, b [E, N, K] 128x128 blocks
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(e, n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
            xq, wq = quantize_fp8(x), quantize_fp8_blocks(w)
            a_g = [xq.data[g * rows:(g + 1) * rows] for g in range(e)]
            sa_g = [e8m0_f32(xq.scales[g * rows:(g + 1) * rows]) for g in range(e)]
            b_g = [wq.data[g] for g in range(e)]
            sb_g = [e8m0_f32(wq.scales[g, ::128]) for g in range(e)]
            ref = dequant(FP8Tensor(a_g[0], xq.scales[:rows])) @ dequant(FP8Tensor(b_g[0], wq.scales[0])).t()
            triton = lambda: grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True)  # noqa: E731
            bf16 = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offsets)  # noqa: E731
        else:  # dW[g] = a_g [N, T_g] @ b_g [K, T_g]^T, both 1x128 along tokens
            da = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
            db = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            qa, qb = quantize_fp8(da.t().contiguous()), quantize_fp8(db.t().contiguous())  # [N, M], [K, M]
            t0 = rows // 128
            a_g = [qa.data[:, g * rows:(g + 1) * rows].contiguous() for g in range(e)]
            sa_g = [e8m0_f32(qa.scales[:, g * t0:(g + 1) * t0]) for g in range(e)]
            b_g = [qb.data[:, g * rows:(g + 1) * rows].contiguous() for g in range(e)]
            sb_g = [e8m0_f32(qb.scales[:, g * t0:(g + 1) * t0]) for g in range(e)]
            ref = dequant(FP8Tensor(a_g[0], qa.scales[:, :t0].contiguous())) @ \
                dequant(FP8Tensor(b_g[0], qb.scales[:, :t0].contiguous())).t()
            layout = align_groups(offsets, m)
            triton = lambda: grouped_gemm_fp8_wgrad(qa, qb, layout, out_dtype=torch.bfloat16)  # noqa: E731
            bf16 = lambda: torch._grouped_mm(da.t(), db, offs=offsets)  # noqa: E731
        found = first_accepted(a_g[0], sa_g[0], b_g[0], sb_g[0], rowwise, ref)
        entry["accepted"] = found
        flops = 2.0 * m * n * k
        entry["bf16_us"] = bc.median(bc.time_cuda(bf16, 10, 3))
        entry["triton_us"] = bc.median(bc.time_cuda(triton, 10, 3))
        if found:
            api, na, nb, ra, rb = found
            xa = [layouts_1x128(s)[na] for s in sa_g]
            xb = [(layouts_128x128(s) if rowwise else layouts_1x128(s))[nb] for s in sb_g]
            outs = [torch.empty(a_g[g].shape[0], n, device=dev, dtype=torch.bfloat16) for g in range(e)]

            def loop():
                for g in range(e):
                    call(api, a_g[g], b_g[g], xa[g], xb[g], ra, rb, out=outs[g])
            try:
                entry["cublas_loop_queued_us"] = bc.median(bc.time_cuda(loop, 10, 3, True))
                entry["cublas_loop_host_paced_us"] = bc.median(bc.time_cuda(loop, 10, 3))
            except Exception as exc:
                print(f"    loop failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        for key in [k_ for k_ in entry if k_.endswith("_us")]:
            entry[key[:-3] + "_tflops"] = flops / (entry[key] * 1e-6) / 1e12
        print("  ", {k_: (round(v, 1) if isinstance(v, float) else v) for k_, v in entry.items()})
        results[kind] = entry
        torch.cuda.empty_cache()
    print("\nkind     bf16 TF/s  triton TF/s  cublas loop (kernels) TF/s  (host-paced)")
    for kind, r in results.items():
        def tf(key):
            v = r.get(key)
            return f"{v:10.0f}" if v else "         -"
        print(f"{kind:7s} {tf('bf16_tflops')} {tf('triton_tflops')}  {tf('cublas_loop_queued_tflops')}"
              f"                {tf('cublas_loop_host_paced_tflops')}")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
