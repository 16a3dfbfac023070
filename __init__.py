"""mxa2a: MXFP4/FP8-compressed all-to-all for expert-parallel MoE training on Hopper GPUs.

Subpackages, in dependency order:
- `mxa2a.quant`: the number formats (MXFP4, FP8 1x128) with bit-exact Triton kernels and torch references.
- `mxa2a.comm`: drop-in `all_to_all_single` / `all_to_all` that send compressed rows.
- `mxa2a.moe`: a reference MoE layer, expert-parallel dispatcher, Grouter and training losses.
"""

__version__ = "0.1.0"
