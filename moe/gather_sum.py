"""Each token's k rows gathered and summed: the backward of the dispatcher's token gather (`moe/dispatch.py`).

`out[t] = sum_{s < k} rows[inverse_permutation[t * k + s]]`: rows `[T * k, H]` in send order (bf16, fp16,
fp32 or fp64), `inverse_permutation` int64 `[T * k]`, `out [T, H]` in the rows' dtype. The arithmetic is
fixed so that every implementation gives the same bits: rows widened to fp32 (fp64 stays fp64), the k
rows added in slot order from the slot-0 row (no zero start: -0 stays -0), one rounding to nearest even
to the output dtype; NaN stays NaN (payload unspecified). (On CPU, torch 2.13's `.sum(1)` of the gathered
`[T, k, H]` gives these bits for bf16, but not for fp16, nor for fp32 from k = 6 on.)
`gather_sum_reference` is that definition in torch (the oracle and the CPU path); `gather_sum_triton` one
pass that reads each row once and writes `out` once, with no `[T * k, H]` gathered copy; `gather_sum`
picks the Triton pass on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.kernels.minifloat import bf16_bits

_BLOCK_H = 1024


def _check(rows: torch.Tensor, inverse_permutation: torch.Tensor, top_k: int) -> None:
    if rows.dim() != 2 or not rows.dtype.is_floating_point:
        raise ValueError(f"rows must be a floating-point [T * k, H] tensor, got {rows.dtype} {tuple(rows.shape)}")
    if not isinstance(top_k, int) or top_k < 1 or rows.shape[0] % top_k != 0:
        raise ValueError(f"top_k must be a positive int dividing the {rows.shape[0]} rows, got {top_k!r}")
    if inverse_permutation.dtype != torch.int64 or inverse_permutation.shape != (rows.shape[0],):
        raise ValueError(f"inverse_permutation must be int64 [T * k = {rows.shape[0]}], got "
                         f"{inverse_permutation.dtype} {tuple(inverse_permutation.shape)}")


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gather_sum_reference(rows: torch.Tensor, inverse_permutation: torch.Tensor, top_k: int) -> torch.Tensor:
    """The definition in the module docstring, in torch: `[T * k, H]` -> `[T, H]` in rows' dtype."""
    _check(rows, inverse_permutation, top_k)
    slots = rows.index_select(0, inverse_permutation).view(-1, top_k, rows.shape[1])
    acc_dtype = _accumulator_dtype(rows.dtype)
    acc = slots[:, 0].to(acc_dtype)
    for s in range(1, top_k):
        acc = acc + slots[:, s].to(acc_dtype)
    return acc.to(rows.dtype)


@triton.jit
def _widen(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _gather_sum_kernel(rows_ptr, inv_ptr, out_ptr, H, stride_rows, stride_cols, stride_out,
                       TOP_K: tl.constexpr, BLOCK_H: tl.constexpr, F64: tl.constexpr, OUT_BF16: tl.constexpr):
    # One program: token t = program_id(0), columns [BLOCK_H * program_id(1), +BLOCK_H).
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    offs = cols.to(tl.int64) * stride_cols
    acc = _widen(tl.load(rows_ptr + tl.load(inv_ptr + t * TOP_K) * stride_rows + offs, mask=mask, other=0), F64)
    for s in tl.static_range(1, TOP_K):
        row = tl.load(inv_ptr + t * TOP_K + s)
        acc += _widen(tl.load(rows_ptr + row * stride_rows + offs, mask=mask, other=0), F64)
    out = bf16_bits(acc) if OUT_BF16 else acc.to(out_ptr.dtype.element_ty)  # out_ptr: int16 view for bf16
    tl.store(out_ptr + t * stride_out + cols, out, mask=mask)


def gather_sum_triton(rows: torch.Tensor, inverse_permutation: torch.Tensor, top_k: int) -> torch.Tensor:
    """The one-pass kernel: `[T * k, H]` (any strides) -> `[T, H]` in rows' dtype, equal to the reference
    bit for bit. Asynchronous on the current CUDA stream (no host sync)."""
    _check(rows, inverse_permutation, top_k)
    num_tokens, hidden = rows.shape[0] // top_k, rows.shape[1]
    out = torch.empty((num_tokens, hidden), dtype=rows.dtype, device=rows.device)
    if num_tokens == 0 or hidden == 0:
        return out
    out_bf16 = rows.dtype == torch.bfloat16
    grid = (num_tokens, triton.cdiv(hidden, _BLOCK_H))
    _gather_sum_kernel[grid](rows, inverse_permutation, out.view(torch.int16) if out_bf16 else out, hidden,
                             rows.stride(0), rows.stride(1), out.stride(0), TOP_K=top_k, BLOCK_H=_BLOCK_H,
                             F64=rows.dtype == torch.float64, OUT_BF16=out_bf16, num_warps=4)
    return out


def gather_sum(rows: torch.Tensor, inverse_permutation: torch.Tensor, top_k: int) -> torch.Tensor:
    """`[T * k, H]` rows in send order -> `[T, H]` per-token sums in slot order (module docstring);
    the Triton pass on CUDA, the reference elsewhere. Not differentiable by itself."""
    fused = gather_sum_triton if rows.is_cuda else gather_sum_reference
    return fused(rows, inverse_permutation, top_k)
