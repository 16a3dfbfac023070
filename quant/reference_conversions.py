"""Pure-torch references of the direct conversions, line by line from `docs/FORMATS.md`, "Direct
conversions" and "Row-wise to column-wise conversion": the oracles of `conversions.py`.

Four are the spec's two-step composition through exact fp32 values, on the codecs of `reference.py`:
    fp8_to_mxfp4(q)                  = quantize_mxfp4(dequantize_fp8(q, fp32), scale_mode)
    mxfp4_to_fp8(x)                  = quantize_fp8(dequantize_mxfp4(x, fp32))
    mxfp4_rowwise_to_colwise(x)      = quantize_mxfp4(dequantize_mxfp4(x, fp32).T, x.scale_mode)
    mxfp4_rowwise_to_fp8_colwise(x)  = quantize_fp8(dequantize_mxfp4(x, fp32).T)
(a decoded value of 2^128 or more, possible only with scale bytes above ~247, is Inf in fp32, so its block
or tile is NaN). The fifth, `fp8_rowwise_to_colwise`, is the scaling-aware transpose and NOT
`quantize_fp8(dequantize_fp8(q).T)`: per 128-row block and column, `kt` = the max of the 128 row exponents
and each value becomes `RNE_E4M3(value * 2^-kt)`, written transposed. Nothing saturates, subnormals round
(never flush), and a NaN row tile (scale 255) or NaN element makes its column tile NaN (scale 255,
element bytes 0x00, as in `reference.quantize_fp8`). `gather_rows` is the row gather that
`fp8_rowwise_to_colwise(t, row_map=...)` fuses into its pass.
"""

from __future__ import annotations

import dataclasses

import torch

from . import reference
from .formats import E4M3_DTYPE, E8M0_NAN, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor

__all__ = ["fp8_to_mxfp4", "mxfp4_to_fp8", "fp8_rowwise_to_colwise", "mxfp4_rowwise_to_colwise",
           "mxfp4_rowwise_to_fp8_colwise", "gather_rows"]


def fp8_to_mxfp4(t: FP8Tensor, scale_mode: str = "rceil") -> MXFP4Tensor:
    """`quantize_mxfp4(dequantize_fp8(t, fp32), scale_mode)`."""
    return reference.quantize_mxfp4(reference.dequantize_fp8(t, torch.float32), scale_mode)


def mxfp4_to_fp8(t: MXFP4Tensor) -> FP8Tensor:
    """`quantize_fp8(dequantize_mxfp4(t, fp32))`."""
    return reference.quantize_fp8(reference.dequantize_mxfp4(t, torch.float32))


def mxfp4_rowwise_to_colwise(t: MXFP4Tensor) -> MXFP4Tensor:
    """`quantize_mxfp4(dequantize_mxfp4(t, fp32).T, t.scale_mode)`: `[M, K]` -> blocks of `[K, M]`."""
    M, K = _check_2d_rows(t.shape, MXFP4_BLOCK, "mxfp4_rowwise_to_colwise")
    if M == 0:
        return MXFP4Tensor(t.data.new_empty(K, 0), t.scales.new_empty(K, 0), t.scale_mode)
    dense = reference.dequantize_mxfp4(t, torch.float32)
    return reference.quantize_mxfp4(dense.T.contiguous(), t.scale_mode)


def mxfp4_rowwise_to_fp8_colwise(t: MXFP4Tensor) -> FP8Tensor:
    """`quantize_fp8(dequantize_mxfp4(t, fp32).T)`: `[M, K]` -> tiles of `[K, M]`."""
    M, K = _check_2d_rows(t.shape, FP8_TILE, "mxfp4_rowwise_to_fp8_colwise")
    if M == 0:
        return FP8Tensor(t.data.new_empty(K, 0, dtype=E4M3_DTYPE), t.scales.new_empty(K, 0))
    dense = reference.dequantize_mxfp4(t, torch.float32)
    return reference.quantize_fp8(dense.T.contiguous())


def fp8_rowwise_to_colwise(t: FP8Tensor) -> FP8Tensor:
    """Scaling-aware transpose: FP8 row-wise tiles of `[M, K]` -> FP8 tiles of `[K, M]` (see module)."""
    M, K = _check_2d_rows(t.shape, FP8_TILE, "fp8_rowwise_to_colwise")
    mb, kb = M // FP8_TILE, K // FP8_TILE
    row_bytes = t.scales.to(torch.int64)                                   # [M, K/128]
    # Target exponent of each (128-row block, 128-column tile): the largest row exponent. Byte 255
    # (NaN) is the largest byte, so a NaN row tile makes the target NaN.
    kt_bytes = row_bytes.reshape(mb, FP8_TILE, kb).amax(dim=1)            # [M/128, K/128]
    shift = (row_bytes.repeat_interleave(FP8_TILE, dim=1)
             - kt_bytes.repeat_interleave(FP8_TILE, dim=0).repeat_interleave(FP8_TILE, dim=1))  # <= 0

    codes = t.data.view(torch.uint8).to(torch.int64)
    nan_elem = (codes & 0x7F) == 0x7F
    q = torch.where(nan_elem, 0.0, t.data.to(torch.float64))             # E4M3 values (-0 kept)
    y = q * reference.pow2(shift)                                         # value * 2^-kt, exact in fp64
    out = reference.e4m3_rne(y).view(torch.uint8)                         # [M, K]

    # Column-wise tile (column j, row block r) is NaN if any of its 128 values is.
    nan_tile = (nan_elem.reshape(mb, FP8_TILE, K).any(dim=1)
                | (kt_bytes == E8M0_NAN).repeat_interleave(FP8_TILE, dim=1))  # [M/128, K]
    out = torch.where(nan_tile.repeat_interleave(FP8_TILE, dim=0), 0, out).to(torch.uint8)
    scales = torch.where(nan_tile, E8M0_NAN, kt_bytes.repeat_interleave(FP8_TILE, dim=1))
    return FP8Tensor(out.T.contiguous().view(t.data.dtype), scales.T.contiguous().to(torch.uint8))


def gather_rows(t, row_map: torch.Tensor):
    """Row r of the result is row `row_map[r]` of the row-wise container `t` (FP8Tensor, MXFP4Tensor;
    data and scales bit for bit), or a zero row (data and scale bytes 0) where `row_map[r]` is
    negative or not below t's row count."""
    def take(x: torch.Tensor) -> torch.Tensor:
        b = x.view(torch.uint8)
        valid = ((row_map >= 0) & (row_map < b.shape[0]))[:, None]
        if not b.shape[0]:
            return b.new_zeros(row_map.numel(), b.shape[1]).view(x.dtype)
        rows = b[torch.where(valid[:, 0], row_map, 0).long()]
        return torch.where(valid, rows, 0).view(x.dtype)
    return dataclasses.replace(t, data=take(t.data), scales=take(t.scales))


def _check_2d_rows(shape: torch.Size, tile: int, fn: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{fn}: the input must be 2-D [M, K] (the matrix to transpose), got shape "
                         f"{tuple(shape)}")
    M, K = shape
    if M % tile != 0:
        raise ValueError(f"{fn}: the number of rows M must be a multiple of {tile} (one column-wise "
                         f"block spans {tile} rows; pad the input), got M = {M}")
    return M, K
