"""The last step of combine, fused: rows back to their tokens and the gate-weighted sum over the k slots.

`y[t] = sum_{s < k} gates[t, s] * rows[inverse_permutation[t * k + s]]`: rows `[T * k, H]` in send order
(bf16 or fp32), `inverse_permutation` int64 `[T * k]`, gates fp32 `[T, k]`, `y [T, H]` in the rows' dtype.
The arithmetic is fixed so that every implementation gives the same bits: rows widened to fp32, each
`gate * row` rounded to fp32, the k products added in slot order from the slot-0 product (no FMA, no
zero start: -0 stays -0), one rounding to nearest even to the output dtype; NaN stays NaN (payload
unspecified). `weighted_unpermute_reference` is that definition in torch (the oracle and the CPU path);
`weighted_unpermute_triton` one pass that reads each row once and writes `y` once (`enable_fp_fusion=False`);
`weighted_unpermute` the differentiable entry. Its backward, in torch: `grad_rows[p] = gate(p) *
grad_y[token(p)]` (a gather, reproducible) and `grad_gates[t, s]` = the fp32 dot of `grad_y[t]` and its row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.kernels.minifloat import bf16_bits

_BLOCK_H = 1024


def _check(rows: torch.Tensor, inverse_permutation: torch.Tensor, gates: torch.Tensor) -> None:
    if rows.dim() != 2 or rows.stride(1) != 1:
        raise ValueError(f"rows must be [T * k, H] with a contiguous last dimension, got shape "
                         f"{tuple(rows.shape)} and strides {rows.stride()}")
    if gates.dim() != 2 or gates.dtype != torch.float32:
        raise ValueError(f"gates must be fp32 [T, k], got {gates.dtype} {tuple(gates.shape)}")
    if inverse_permutation.dtype != torch.int64 or inverse_permutation.shape != (gates.numel(),):
        raise ValueError(f"inverse_permutation must be int64 [T * k = {gates.numel()}], got "
                         f"{inverse_permutation.dtype} {tuple(inverse_permutation.shape)}")
    if rows.shape[0] != gates.numel():
        raise ValueError(f"rows must have T * k = {gates.numel()} rows (gates {tuple(gates.shape)}), "
                         f"got {rows.shape[0]}")


def weighted_unpermute_reference(rows: torch.Tensor, inverse_permutation: torch.Tensor,
                                 gates: torch.Tensor) -> torch.Tensor:
    """The definition in the module docstring, in torch: `[T * k, H]` -> `[T, H]` in rows' dtype."""
    _check(rows, inverse_permutation, gates)
    num_tokens, top_k = gates.shape
    slots = rows.index_select(0, inverse_permutation).view(num_tokens, top_k, rows.shape[1])
    acc = slots[:, 0].float() * gates[:, 0:1]
    for s in range(1, top_k):
        acc = acc + slots[:, s].float() * gates[:, s:s + 1]
    return acc.to(rows.dtype)


@triton.jit
def _weighted_unpermute_kernel(rows_ptr, inv_ptr, gates_ptr, y_ptr, H, stride_rows, stride_y,
                               TOP_K: tl.constexpr, BLOCK_H: tl.constexpr, OUT_BF16: tl.constexpr):
    # One program: token t = program_id(0), columns [BLOCK_H * program_id(1), +BLOCK_H).
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    row = tl.load(inv_ptr + t * TOP_K)
    acc = tl.load(rows_ptr + row * stride_rows + cols, mask=mask, other=0).to(tl.float32) * \
        tl.load(gates_ptr + t * TOP_K)
    for s in tl.static_range(1, TOP_K):
        row = tl.load(inv_ptr + t * TOP_K + s)
        acc += tl.load(rows_ptr + row * stride_rows + cols, mask=mask, other=0).to(tl.float32) * \
            tl.load(gates_ptr + t * TOP_K + s)
    out = bf16_bits(acc) if OUT_BF16 else acc.to(y_ptr.dtype.element_ty)  # y_ptr: int16 view for bf16
    tl.store(y_ptr + t * stride_y + cols, out, mask=mask)


def weighted_unpermute_triton(rows: torch.Tensor, inverse_permutation: torch.Tensor,
                              gates: torch.Tensor) -> torch.Tensor:
    """The fused pass: `[T * k, H]` -> `[T, H]` in rows' dtype, equal to the reference bit for bit.
    Asynchronous on the current CUDA stream (no host sync)."""
    _check(rows, inverse_permutation, gates)
    num_tokens, top_k = gates.shape
    hidden = rows.shape[1]
    y = torch.empty((num_tokens, hidden), dtype=rows.dtype, device=rows.device)
    if num_tokens == 0 or hidden == 0:
        return y
    gates = gates.contiguous()
    grid = (num_tokens, triton.cdiv(hidden, _BLOCK_H))
    out_bf16 = rows.dtype == torch.bfloat16
    _weighted_unpermute_kernel[grid](rows, inverse_permutation, gates, y.view(torch.int16) if out_bf16 else y,
                                     hidden, rows.stride(0), y.stride(0), TOP_K=top_k, BLOCK_H=_BLOCK_H,
                                     OUT_BF16=out_bf16, num_warps=4, enable_fp_fusion=False)
    return y


class _WeightedUnpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, inverse_permutation, permutation, gates):
        ctx.save_for_backward(rows, inverse_permutation, permutation, gates)
        fused = weighted_unpermute_triton if rows.is_cuda else weighted_unpermute_reference
        return fused(rows, inverse_permutation, gates)

    @staticmethod
    def backward(ctx, grad_y):
        rows, inverse_permutation, permutation, gates = ctx.saved_tensors
        num_tokens, top_k = gates.shape
        grad_f32 = grad_y.float()
        grad_rows = grad_gates = None
        if ctx.needs_input_grad[0]:
            # Row p in send order is (token, slot) = divmod(permutation[p], k): one product per row.
            grad_rows = (grad_f32.index_select(0, permutation // top_k)
                         * gates.reshape(-1).index_select(0, permutation).unsqueeze(1)).to(rows.dtype)
        if ctx.needs_input_grad[3]:
            slots = rows.index_select(0, inverse_permutation).view(num_tokens, top_k, rows.shape[1])
            grad_gates = (slots.float() * grad_f32.unsqueeze(1)).sum(-1)
        return grad_rows, None, None, grad_gates


def weighted_unpermute(rows: torch.Tensor, inverse_permutation: torch.Tensor, permutation: torch.Tensor,
                       gates: torch.Tensor) -> torch.Tensor:
    """Differentiable `[T * k, H]` rows in send order -> `[T, H]` gate-weighted sums (module docstring);
    `permutation` is `inverse_permutation`'s inverse (used by the backward). Triton on CUDA."""
    return _WeightedUnpermute.apply(rows, inverse_permutation, permutation, gates)
