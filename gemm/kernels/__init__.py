"""Triton kernels of `mxa2a.gemm`: `grouped_gemm.py` (the two grouped GEMM kernels), `gather_rows.py`
(rows into the group-aligned layout), `swiglu.py` (SwiGLU forward / backward fused with FP8 1x128
quantization)."""
