"""Inputs and the comparison bound shared by the grouped-GEMM tests."""

from __future__ import annotations

import torch

from mxa2a.quant import FP8Tensor, dequantize_fp8, fp8_rowwise_to_colwise, quantize_fp8

U32 = 2.0 ** -24  # fp32 unit roundoff


def offsets_of(sizes: list[int], device="cpu") -> torch.Tensor:
    return torch.tensor(sizes, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)


def fp8_rows(m: int, k: int, device="cpu", spread: float = 4.0) -> FP8Tensor:
    """Random FP8 rows whose tiles have different scales (row magnitudes spread over 2^+-spread)."""
    mag = torch.exp2(torch.randint(-int(spread), int(spread) + 1, (m, 1), device=device).float())
    return quantize_fp8(torch.randn(m, k, device=device) * mag)


def colwise_of(rows: int, width: int, used: int, device="cpu") -> FP8Tensor:
    """Column-wise FP8 `[width, rows]` from row-wise data whose rows past `used` are zero."""
    x = torch.randn(rows, width, device=device)
    x[used:] = 0
    return fp8_rowwise_to_colwise(quantize_fp8(x))


def accumulation_bound(a: torch.Tensor, b: torch.Tensor, mma_bits: int | None = None) -> torch.Tensor:
    """Bound on |kernel - fp32 oracle| per output element for `a [M, K] @ b [N, K]^T` (the dequantized
    fp32 operands): each side of a
    K-term fp32 sum is within gamma_K = K u / (1 - K u) of the exact sum, times sum |a_i b_i|; on a
    GPU, `mma_bits` (the FP8 tensor-core accumulator's precision within one 128-step, promoted to fp32
    after it) adds 2^-mma_bits of that sum."""
    k = a.shape[1]
    mag = a.abs() @ b.abs().t()
    gamma = k * U32 / (1 - k * U32)
    return mag * (2 * gamma + (2.0 ** -mma_bits if mma_bits else 0.0)) + 1e-30
