#!/usr/bin/env python3
"""Does this torch's FP8 grouped GEMM take DeepSeek-style block scales on this GPU?

Calls `torch.nn.functional.scaled_grouped_mm` (2d x 3d, offsets on M) with row-wise scales and with
1x128 activation / 128x128 weight block scales (`ScalingType.BlockWise1x128` / `BlockWise128x128`,
scale layouts as `scaled_mm` takes them), and prints for each whether it ran and how far it is from
the fp32 product of the dequantized operands, or the error it raised. Decides whether `mxa2a.gemm`
needs its own kernel (it does when the block-scaled call is refused).
    python benchmarks/probe_scaled_grouped_mm.py
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    import torch.nn.functional as F

    print("torch", torch.__version__, "device", torch.cuda.get_device_name(0))
    st = getattr(F, "ScalingType", None)
    print("F.scaled_grouped_mm:", hasattr(F, "scaled_grouped_mm"), " ScalingType:",
          [m for m in dir(st) if not m.startswith("_")] if st else None)
    dev, g, m, n, k = "cuda", 4, 512, 256, 512
    offs = torch.tensor([128, 256, 384, 512], device=dev, dtype=torch.int32)
    a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(g, n, k, device=dev).to(torch.float8_e4m3fn)
    ref = torch.cat([a[i * 128:(i + 1) * 128].float() @ b[i].float().t() for i in range(g)])
    cases = {
        "rowwise/rowwise": (torch.ones(m, device=dev), st.RowWise if st else None,
                            torch.ones(g, n, device=dev), st.RowWise if st else None),
        "1x128/128x128": (torch.ones(k // 128, m, device=dev).t(), st.BlockWise1x128 if st else None,
                          torch.ones(g, n // 128, k // 128, device=dev), st.BlockWise128x128 if st else None),
        "1x128/128x128 (K-major scales)": (torch.ones(m, k // 128, device=dev), st.BlockWise1x128 if st else None,
                                           torch.ones(g, k // 128, n // 128, device=dev).transpose(-2, -1),
                                           st.BlockWise128x128 if st else None),
    }
    for name, (sa, ra, sb, rb) in cases.items():
        try:
            out = F.scaled_grouped_mm(a, b.transpose(-2, -1), sa, ra, sb, rb, offs=offs,
                                      output_dtype=torch.bfloat16)
            torch.cuda.synchronize()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            print(f"{name:34s} ran, relative error vs fp32 {err:.2e}")
        except Exception as exc:
            print(f"{name:34s} refused: {type(exc).__name__}: {str(exc).splitlines()[0][:240]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
