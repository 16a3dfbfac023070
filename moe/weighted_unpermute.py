"""The last step of combine, fused: rows back to their tokens and the gate-weighted sum over the k slots.

`y[t] = sum_{s < k} gates[t, s] * rows[inverse_permutation[t * k + s]]`: rows `[T * k, H]` in send order
(bf16 or fp32), `inverse_permutation` int64 `[T * k]`, gates fp32 `[T, k]`, `y [T, H]` in the rows' dtype.
The arithmetic is fixed so that every implementation gives the same bits: rows widened to fp32, each
`gate * row` rounded to fp32, the k products added in slot order from the slot-0 product (no FMA, no
zero start: -0 stays -0), one rounding to nearest even to the output dtype; NaN stays NaN (payload
unspecified). The backward, with p = inverse_permutation[t * k + s]: `grad_rows[p] = gate[t, s] *
float(grad_y[t])` (one fp32 product, one rounding to the rows' dtype: exact bits) and `grad_gates[t, s]`
= the fp32 dot of `rows[p]` and `grad_y[t]` (each implementation's order in its docstring: not bit-exact).
`*_reference` are the torch definitions (the oracles and the CPU path); `*_triton` one pass each
(`enable_fp_fusion=False`): the forward reads each row once and writes `y` once, the backward reads
`grad_y` and the rows once and writes `grad_rows` once. `weighted_unpermute` is the differentiable entry.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.kernels.minifloat import bf16_bits

_BLOCK_H = 1024
_BACKWARD_BLOCK_H = 512


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


def _check_grad(grad_y: torch.Tensor, rows: torch.Tensor, gates: torch.Tensor) -> None:
    if grad_y.shape != (gates.shape[0], rows.shape[1]):
        raise ValueError(f"grad_y must be [T={gates.shape[0]}, H={rows.shape[1]}], got {tuple(grad_y.shape)}")


def weighted_unpermute_backward_reference(grad_y: torch.Tensor, rows: torch.Tensor,
                                          inverse_permutation: torch.Tensor, permutation: torch.Tensor,
                                          gates: torch.Tensor, *, need_rows: bool = True,
                                          need_gates: bool = True
                                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward in torch: (`grad_rows [T * k, H]` in rows' dtype, `grad_gates` fp32 `[T, k]`), None
    where not needed. `grad_gates` adds the H products in the order of torch's `sum(-1)`."""
    _check(rows, inverse_permutation, gates)
    _check_grad(grad_y, rows, gates)
    num_tokens, top_k = gates.shape
    grad_f32 = grad_y.float()
    grad_rows = grad_gates = None
    if need_rows:
        # Row p in send order is (token, slot) = divmod(permutation[p], k): one product per row.
        grad_rows = (grad_f32.index_select(0, permutation // top_k)
                     * gates.reshape(-1).index_select(0, permutation).unsqueeze(1)).to(rows.dtype)
    if need_gates:
        slots = rows.index_select(0, inverse_permutation).view(num_tokens, top_k, rows.shape[1])
        grad_gates = (slots.float() * grad_f32.unsqueeze(1)).sum(-1)
    return grad_rows, grad_gates


@triton.jit
def _weighted_unpermute_backward_kernel(grad_y_ptr, rows_ptr, inv_ptr, gates_ptr, grad_rows_ptr, grad_gates_ptr,
                                        H, stride_gy, stride_gy_col, stride_rows, stride_grad_rows,
                                        TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_H: tl.constexpr,
                                        OUT_BF16: tl.constexpr, NEED_ROWS: tl.constexpr,
                                        NEED_GATES: tl.constexpr):
    # One program: token t = program_id(0), all of H in column blocks, its k slots as the rows of a
    # [K_PAD, BLOCK_H] tile (K_PAD = k rounded up to a power of two; the extra slots are masked off).
    t = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, K_PAD)
    slot_ok = slots < TOP_K
    p = tl.load(inv_ptr + t * TOP_K + slots, mask=slot_ok, other=0)
    gate = tl.load(gates_ptr + t * TOP_K + slots, mask=slot_ok, other=0)
    dot = tl.zeros((K_PAD, BLOCK_H), dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        ok = slot_ok[:, None] & col_ok[None, :]
        g = tl.load(grad_y_ptr + t * stride_gy + cols.to(tl.int64) * stride_gy_col, mask=col_ok, other=0)
        g = g.to(tl.float32)[None, :]
        if NEED_ROWS:
            prod = gate[:, None] * g
            out = bf16_bits(prod) if OUT_BF16 else prod.to(grad_rows_ptr.dtype.element_ty)
            tl.store(grad_rows_ptr + p[:, None] * stride_grad_rows + cols[None, :], out, mask=ok)
        if NEED_GATES:
            dot += tl.load(rows_ptr + p[:, None] * stride_rows + cols[None, :], mask=ok, other=0).to(tl.float32) * g
    if NEED_GATES:
        tl.store(grad_gates_ptr + t * TOP_K + slots, tl.sum(dot, axis=1), mask=slot_ok)


def weighted_unpermute_backward_triton(grad_y: torch.Tensor, rows: torch.Tensor,
                                       inverse_permutation: torch.Tensor, gates: torch.Tensor, *,
                                       need_rows: bool = True, need_gates: bool = True
                                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The fused backward: one program per token reads `grad_y[t]` once and its k rows once (only for
    `grad_gates`) and writes their `grad_rows` once. `grad_rows` equals the reference bit for bit.
    `grad_gates[t, s]`: lane j of a 512-wide fp32 accumulator adds the products of columns j, j + 512,
    j + 1024, ... in column order from +0, then Triton's `tl.sum` adds the 512 lanes (its tree, which
    differs between the GPU and the interpreter): within 2 gamma_H sum_j |rows[p, j] grad_y[t, j]| of
    the reference (gamma_H = H u / (1 - H u), u = 2^-24). Asynchronous on the current CUDA stream."""
    _check(rows, inverse_permutation, gates)
    _check_grad(grad_y, rows, gates)
    num_tokens, top_k = gates.shape
    hidden = rows.shape[1]
    grad_rows = torch.empty_like(rows, memory_format=torch.contiguous_format) if need_rows else None
    grad_gates = torch.empty((num_tokens, top_k), dtype=torch.float32, device=rows.device) if need_gates else None
    if num_tokens == 0 or not (need_rows or need_gates):
        return grad_rows, grad_gates
    out_bf16 = rows.dtype == torch.bfloat16
    grad_rows_arg = rows if grad_rows is None else grad_rows.view(torch.int16) if out_bf16 else grad_rows
    _weighted_unpermute_backward_kernel[(num_tokens,)](
        grad_y, rows, inverse_permutation, gates.contiguous(), grad_rows_arg,
        gates if grad_gates is None else grad_gates, hidden, grad_y.stride(0), grad_y.stride(1), rows.stride(0),
        grad_rows_arg.stride(0), TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k),
        BLOCK_H=_BACKWARD_BLOCK_H, OUT_BF16=out_bf16, NEED_ROWS=need_rows, NEED_GATES=need_gates,
        num_warps=4, enable_fp_fusion=False)
    return grad_rows, grad_gates


class _WeightedUnpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, inverse_permutation, permutation, gates):
        ctx.save_for_backward(rows, inverse_permutation, permutation, gates)
        fused = weighted_unpermute_triton if rows.is_cuda else weighted_unpermute_reference
        return fused(rows, inverse_permutation, gates)

    @staticmethod
    def backward(ctx, grad_y):
        rows, inverse_permutation, permutation, gates = ctx.saved_tensors
        needs = dict(need_rows=ctx.needs_input_grad[0], need_gates=ctx.needs_input_grad[3])
        if rows.is_cuda:
            grad_rows, grad_gates = weighted_unpermute_backward_triton(grad_y, rows, inverse_permutation, gates,
                                                                       **needs)
        else:
            grad_rows, grad_gates = weighted_unpermute_backward_reference(grad_y, rows, inverse_permutation,
                                                                          permutation, gates, **needs)
        return grad_rows, None, None, grad_gates


def weighted_unpermute(rows: torch.Tensor, inverse_permutation: torch.Tensor, permutation: torch.Tensor,
                       gates: torch.Tensor) -> torch.Tensor:
    """Differentiable `[T * k, H]` rows in send order -> `[T, H]` gate-weighted sums (module docstring);
    `permutation` is `inverse_permutation`'s inverse (used by the backward). Triton on CUDA."""
    return _WeightedUnpermute.apply(rows, inverse_permutation, permutation, gates)
