"""Triton kernels for the codecs (Hopper and newer; also run on CPU under TRITON_INTERPRET=1).

Hopper has no FP4 or E8M0 instructions, so the kernels work on fp32 bit patterns with integer
arithmetic only. Each file: kernels first, then the wrapper that validates, allocates and launches.
Import lazily (via `mxa2a.quant.codecs`) so that `import mxa2a.quant` does not need Triton.
"""
