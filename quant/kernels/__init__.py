"""Triton kernels (Hopper and newer; also run on CPU under TRITON_INTERPRET=1).

One file per kernel family, kernels first, then the wrapper that validates, allocates and launches:
the codecs `mxfp4.py`, `fp8.py`; the direct conversions `fp8_to_mxfp4.py`, `mxfp4_to_fp8.py`,
`fp8_rowwise_to_colwise.py`, `mxfp4_rowwise_to_colwise.py`, `mxfp4_rowwise_to_fp8_colwise.py` (their
oracles: `quant/reference_conversions.py`). `launch.py` holds the conversions' launch configurations,
`minifloat.py` the helpers several conversions share, `byteperm.py` / `simd16.py` one-instruction PTX
helpers, each with an interpreter twin (an `ASM` constexpr picks the path). Hopper has no FP4 or E8M0
instructions: scales come from fp32 bit patterns, values are scaled by exact powers of two and rounded
with a magic-number add. Imported lazily (by `mxa2a.quant.codecs` / `conversions`), so that
`import mxa2a.quant` does not need Triton.
"""
