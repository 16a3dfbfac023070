"""mxa2a.gemm: the block-scaled FP8 grouped GEMMs of the expert MLP and the SwiGLU kernels around them.

Operands are `mxa2a.quant.FP8Tensor`s: E4M3 with one power-of-two scale per 1x128 tile along the
reduction axis (docs/RECIPE.md, docs/FORMATS.md "FP8"). Weights use 128x128 blocks (`weights.py`),
stored in the same container with each block's scale repeated on its 128 rows, so one kernel serves
the forward and the data-gradient GEMMs; the weight-gradient GEMM reduces over tokens and takes
column-wise operands (`grouped.py`), fastest in the group-aligned token layout (`aligned_groups.py`).
The spec in torch: `reference.py`; Triton: `kernels/`.
Torch 2.11's `scaled_grouped_mm` on Hopper takes row-wise scales only (no 1x128 / 128x128 blocks),
hence these kernels; its 2-D `_scaled_mm` (cuBLAS) takes block scales for some shapes only, one call
per expert (benchmarks/experiments/cublas_block_scaled_mm.py and its results). None of the public
functions synchronizes the host (the torch references do).
"""

from .aligned_groups import GroupAlignedLayout, align_groups, aligned_rows_bound, gather_aligned_rows
from .grouped import GemmConfig, grouped_gemm_fp8, grouped_gemm_fp8_wgrad
from .swiglu import swiglu_backward_quantize_fp8, swiglu_quantize_fp8
from .weights import empty_fp8_blocks, quantize_fp8_blocks, quantize_fp8_blocks_and_transpose, transpose_fp8_blocks

__all__ = [
    "GroupAlignedLayout",
    "align_groups",
    "aligned_rows_bound",
    "gather_aligned_rows",
    "GemmConfig",
    "grouped_gemm_fp8",
    "grouped_gemm_fp8_wgrad",
    "swiglu_quantize_fp8",
    "swiglu_backward_quantize_fp8",
    "quantize_fp8_blocks",
    "quantize_fp8_blocks_and_transpose",
    "empty_fp8_blocks",
    "transpose_fp8_blocks",
]
