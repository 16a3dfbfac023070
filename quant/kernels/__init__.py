"""Triton kernels for the codecs (Hopper and newer; also run on CPU under TRITON_INTERPRET=1).

Hopper has no FP4 or E8M0 instructions: scales come from fp32 bit patterns (exponent field and one
significand comparison), elements are scaled by exact powers of two and rounded to the E2M1 / E4M3
grid with a magic-number add (hardware round-to-nearest-even); no log2/exp2 and no fp8 casts. The
fastest conversion variants also use PTX byte permutes (`byteperm.py`) and 16-bit SIMD maxima through
inline assembly; under the interpreter, which cannot run PTX, the same functions are computed from
shifts and masks (an `ASM` constexpr picks the path). Each file: kernels first, then the wrappers that
validate, allocate and launch. Imported lazily (by
`mxa2a.quant.codecs`) so that `import mxa2a.quant` does not need Triton.
"""
