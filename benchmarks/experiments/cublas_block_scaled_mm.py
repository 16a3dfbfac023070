#!/usr/bin/env python3
"""Would cuBLAS's block-scaled FP8 GEMM (`torch._scaled_mm`, DeepSeek 1x128 / 128x128 scales, CUDA >=
12.9 on Hopper) beat mxa2a's Triton grouped GEMMs, called once per expert with host-known group sizes?

torch 2.11's grouped `scaled_grouped_mm` refuses block scales on Hopper
(benchmarks/results/fp8_gemm_probe_and_gpu_tests_h100.txt), but the 2-D `_scaled_mm` may take them.
A static dispatch plan knows every expert's row count on the host, so a loop of one `_scaled_mm` per
expert is possible there. This script finds the scale layouts `_scaled_mm` accepts (trying each
candidate and checking the product against the fp32 product of the dequantized operands), then times,
at the layer of record (H 2048, F 1408, E 64, 98304 balanced rows), per GEMM kind:
  - `torch._grouped_mm` in BF16 (the baseline), mxa2a's Triton kernel,
  - one `_scaled_mm` over all rows against one expert's weight (the cuBLAS ceiling at this N, K),
  - the per-expert loop of `_scaled_mm` (what a static-plan path would run).
    python benchmarks/experiments/cublas_block_scaled_mm.py [out.json]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import _bench_common as bc  # noqa: E402


def e8m0_f32(b: torch.Tensor) -> torch.Tensor:
    return torch.exp2(b.float() - 127.0)


def dequant(q) -> torch.Tensor:
    return q.data.float() * e8m0_f32(q.scales).repeat_interleave(128, dim=-1)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def candidates_1x128(s: torch.Tensor) -> dict:
    """Scale layouts for an operand [R, K] with one scale per 1x128 tile, s = fp32 [R, K/128]."""
    return {"R-major (stride 1, R)": s.t().contiguous().t(), "rows-major [R,K/128]": s.contiguous()}


def candidates_128x128(s: torch.Tensor) -> dict:
    """Scale layouts for a weight [N, K] with one scale per 128x128 block, s = fp32 [N/128, K/128]."""
    pad = (-s.shape[1]) % 4  # cuBLAS: [L4, N/128] K-major, L4 = K/128 rounded up to a multiple of 4
    padded = torch.nn.functional.pad(s, (0, pad)).contiguous().t()
    return {"[L4,N/128] K-major": padded, "[N/128,K/128]": s.contiguous(),
            "[N/128,K/128] N-major": s.t().contiguous().t()}


def find_layout(a, sa_c: dict, b, sb_c: dict, ref) -> tuple[str, str, float] | None:
    """First (a-scale layout, b-scale layout, error) `_scaled_mm(a, b.t(), ...)` accepts and gets right."""
    for na, sa in sa_c.items():
        for nb, sb in sb_c.items():
            try:
                out = torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16)
                torch.cuda.synchronize()
            except Exception as exc:
                print(f"    {na} x {nb}: refused {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            err = rel_err(out, ref)
            print(f"    {na} x {nb}: ran, rel err {err:.2e}")
            if err < 2e-2:
                return na, nb, err
    return None


def main() -> int:
    from mxa2a.gemm import (align_groups, gather_aligned_rows, grouped_gemm_fp8, grouped_gemm_fp8_wgrad,
                            quantize_fp8_blocks)
    from mxa2a.quant import fp8_rowwise_to_colwise, quantize_fp8

    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print("torch", torch.__version__, "CUDA", torch.version.cuda,
          torch.cuda.get_device_name(0))
    h, f, e, m = 2048, 1408, 64, 98304
    rows = m // e
    offsets = torch.arange(1, e + 1, device=dev, dtype=torch.int32) * rows
    results: dict = {"shape": dict(h=h, f=f, e=e, m=m), "kinds": {}}
    iters, warmup = 10, 3

    def time_us(fn, queue_ahead: bool = False) -> float:
        return bc.median(bc.time_cuda(fn, iters, warmup, queue_ahead))

    # --- row-grouped kinds (forward / dgrad): a 1x128 [M, K], b 128x128 blocks [E, N, K] ---
    for kind, n, k in (("fwd1", 2 * f, h), ("fwd2", h, f)):
        print(f"{kind}: N {n} K {k}")
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(e, n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
        xq, wq = quantize_fp8(x), quantize_fp8_blocks(w)
        sa = e8m0_f32(xq.scales)                                  # [M, K/128]
        sb = e8m0_f32(wq.scales[:, ::128, :])                     # [E, N/128, K/128]
        a0, b0 = xq.data[:rows], wq.data[0]
        ref = dequant(type(xq)(a0, xq.scales[:rows])) @ dequant(type(wq)(b0, wq.scales[0])).t()
        found = find_layout(a0, candidates_1x128(sa[:rows]), b0, candidates_128x128(sb[0]), ref)
        entry: dict = {"n": n, "k": k, "layout": found}
        flops = 2.0 * m * n * k
        entry["bf16_us"] = time_us(lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offsets))
        entry["triton_us"] = time_us(lambda: grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True))
        if found:
            na, nb, _ = found
            sa_all = candidates_1x128(sa)[na]
            sb_e = [candidates_128x128(sb[g])[nb] for g in range(e)]
            bt = [wq.data[g].t() for g in range(e)]
            entry["cublas_one_call_us"] = time_us(
                lambda: torch._scaled_mm(xq.data, bt[0], sa_all, sb_e[0], out_dtype=torch.bfloat16))
            sa_g = [candidates_1x128(sa[g * rows:(g + 1) * rows])[na] for g in range(e)]
            out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)

            def loop():
                for g in range(e):
                    torch._scaled_mm(xq.data[g * rows:(g + 1) * rows], bt[g], sa_g[g], sb_e[g],
                                     out_dtype=torch.bfloat16, out=out[g * rows:(g + 1) * rows])
            entry["cublas_loop_us"] = time_us(loop)
            entry["cublas_loop_queued_us"] = time_us(loop, True)

            def loop_views():  # row slices of the whole scale tensor instead of per-group copies
                for g in range(e):
                    torch._scaled_mm(xq.data[g * rows:(g + 1) * rows], bt[g], sa_all[g * rows:(g + 1) * rows],
                                     sb_e[g], out_dtype=torch.bfloat16, out=out[g * rows:(g + 1) * rows])
            try:
                loop_views()
                torch.cuda.synchronize()
                tri = grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True)
                entry["loop_views_vs_triton_rel"] = rel_err(out, tri.float())
                entry["cublas_loop_views_us"] = time_us(loop_views)
            except Exception as exc:
                print(f"    scale views refused: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            loop()
            tri = grouped_gemm_fp8(xq, wq, offsets, b_block_scales=True)
            entry["loop_vs_triton_rel"] = rel_err(out, tri.float())
        for key in [k_ for k_ in entry if k_.endswith("_us")]:
            entry[key.replace("_us", "_tflops")] = flops / (entry[key] * 1e-6) / 1e12
        print("  ", {k_: (round(v, 1) if isinstance(v, float) else v) for k_, v in entry.items()})
        results["kinds"][kind] = entry
        del x, w, xq, wq
        torch.cuda.empty_cache()

    # --- weight gradients: dW[g] = dy_g^T z_g, both 1x128 along tokens ---
    for kind, n, k in (("wgrad1", 2 * f, h), ("wgrad2", h, f)):
        print(f"{kind}: out [{n}, {k}] per expert, {rows} tokens each")
        a = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        layout = align_groups(offsets, m)
        ra, rb = quantize_fp8(a), quantize_fp8(b)
        a_t, b_t = (fp8_rowwise_to_colwise(t) for t in (gather_aligned_rows(ra, layout), gather_aligned_rows(rb, layout)))
        sa, sb = e8m0_f32(a_t.scales), e8m0_f32(b_t.scales)       # [N, T/128], [K, T/128]
        t0 = rows // 128
        a0, b0 = a_t.data[:, :rows], b_t.data[:, :rows]
        ref = dequant(type(a_t)(a0.contiguous(), a_t.scales[:, :t0].contiguous())) @ \
            dequant(type(b_t)(b0.contiguous(), b_t.scales[:, :t0].contiguous())).t()
        a0c, b0c = a0.contiguous(), b0.contiguous()
        found = find_layout(a0c, candidates_1x128(sa[:, :t0]), b0c, candidates_1x128(sb[:, :t0]), ref)
        entry = {"n": n, "k": k, "layout": found}
        flops = 2.0 * m * n * k
        entry["bf16_us"] = time_us(lambda: torch._grouped_mm(a.t(), b, offs=offsets))
        entry["triton_us"] = time_us(lambda: grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16))
        if found:
            na, nb, _ = found
            # Each group's tokens as their own contiguous operands (a loop over column slices of a
            # [N, T] tensor is not a row-major operand for cuBLAS without a copy).
            a_g = [a_t.data[:, g * rows:(g + 1) * rows].contiguous() for g in range(e)]
            b_g = [b_t.data[:, g * rows:(g + 1) * rows].t() for g in range(e)]
            b_gc = [b_t.data[:, g * rows:(g + 1) * rows].contiguous().t() for g in range(e)]
            sa_g = [candidates_1x128(sa[:, g * t0:(g + 1) * t0])[na] for g in range(e)]
            sb_g = [candidates_1x128(sb[:, g * t0:(g + 1) * t0])[nb] for g in range(e)]
            out = torch.empty(e, n, k, device=dev, dtype=torch.bfloat16)

            def loop(bs=b_gc):
                for g in range(e):
                    torch._scaled_mm(a_g[g], bs[g], sa_g[g], sb_g[g], out_dtype=torch.bfloat16, out=out[g])
            entry["cublas_loop_us"] = time_us(loop)
            entry["cublas_loop_queued_us"] = time_us(loop, True)
            try:
                entry["cublas_loop_strided_b_us"] = time_us(lambda: loop(b_g))
            except Exception as exc:
                print(f"    strided b refused: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            loop()
            tri = grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16)
            entry["loop_vs_triton_rel"] = rel_err(out, tri.float())
        for key in [k_ for k_ in entry if k_.endswith("_us")]:
            entry[key.replace("_us", "_tflops")] = flops / (entry[key] * 1e-6) / 1e12
        print("  ", {k_: (round(v, 1) if isinstance(v, float) else v) for k_, v in entry.items()})
        results["kinds"][kind] = entry
        del a, b, a_t, b_t, ra, rb
        torch.cuda.empty_cache()

    print("\nkind    bf16 TF/s  triton TF/s  cublas-1call  cublas-loop")
    for kind, r in results["kinds"].items():
        def tf(key):
            v = r.get(key)
            return f"{v:10.0f}" if v else "         -"
        print(f"{kind:7s} {tf('bf16_tflops')} {tf('triton_tflops')} {tf('cublas_one_call_tflops')}  "
              f"{tf('cublas_loop_tflops')}")
    if out_path:
        with open(out_path, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
