"""Public MXFP4 / FP8 codecs: argument checks, backend choice, and the `out=` convention.

`backend="auto"` runs the Triton kernels on CUDA tensors and the torch reference elsewhere; `"triton"`
and `"torch"` force one (Triton on CPU tensors only under TRITON_INTERPRET=1). Both backends produce
the same bits (FORMATS.md). None of these functions synchronizes the host.

Inputs: any fp32/bf16/fp16 tensor `[..., K]`; a non-contiguous input that cannot be read as rows
`[M, K]` with a contiguous last dim is copied first (never misread). Containers may hold strided 2-D
views (e.g. slices of a packed wire buffer); the kernels read them in place.
`out=`: containers / tensors of exactly the result's shape and dtype on the input's device, each
writable in place as rows `[M, W]` with a contiguous last dimension and any row stride.
"""

from __future__ import annotations

import torch

from . import reference
from .checks import (check_container, check_float_input, check_out_dtype, check_out_tensor,
                     pick_backend)
from .formats import FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor, check_scale_mode

__all__ = ["quantize_mxfp4", "dequantize_mxfp4", "quantize_fp8", "dequantize_fp8"]


def _check_mxfp4_out(out: object, x_shape: torch.Size, device: torch.device, fn: str) -> None:
    check_container(out, MXFP4Tensor, fn, "out")
    lead, k = tuple(x_shape[:-1]), x_shape[-1]
    check_out_tensor(out.data, lead + (k // 2,), torch.uint8, device, fn, "out.data")
    check_out_tensor(out.scales, lead + (k // MXFP4_BLOCK,), torch.uint8, device, fn, "out.scales")


def _check_fp8_out(out: object, x_shape: torch.Size, device: torch.device, fn: str) -> None:
    check_container(out, FP8Tensor, fn, "out")
    lead, k = tuple(x_shape[:-1]), x_shape[-1]
    check_out_tensor(out.data, lead + (k,), torch.float8_e4m3fn, device, fn, "out.data")
    check_out_tensor(out.scales, lead + (k // FP8_TILE,), torch.uint8, device, fn, "out.scales")


def quantize_mxfp4(x: torch.Tensor, *, scale_mode: str = "rceil", backend: str = "auto",
                   out: MXFP4Tensor | None = None) -> MXFP4Tensor:
    """Encode `x` (fp32/bf16/fp16 `[..., K]`, K a multiple of 32) to MXFP4.

    Returns an `MXFP4Tensor`: `data` uint8 `[..., K/2]` (element 2i in the low nibble), `scales` uint8
    `[..., K/32]` (E8M0, 255 = block held NaN/Inf). `scale_mode` is "rceil" (saturates only in the
    top binade of x's dtype, where 6 * 2^e must stay finite) or "floor" (OCP). With `out=`, writes
    into `out.data` / `out.scales` and returns a container over them.
    """
    fn = "quantize_mxfp4"
    check_scale_mode(scale_mode)
    check_float_input(x, MXFP4_BLOCK, fn)
    be = pick_backend(backend, x.device, fn)
    if out is not None:
        _check_mxfp4_out(out, x.shape, x.device, fn)
    if be == "torch":
        r = reference.quantize_mxfp4(x, scale_mode)
        if out is None:
            return r
        out.data.copy_(r.data)
        out.scales.copy_(r.scales)
        return MXFP4Tensor(out.data, out.scales, scale_mode)
    from .kernels.mxfp4 import mxfp4_quantize_triton
    return mxfp4_quantize_triton(x, scale_mode, out=out)


def dequantize_mxfp4(t: MXFP4Tensor, dtype: torch.dtype = torch.bfloat16, *, backend: str = "auto",
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode an `MXFP4Tensor` `[..., K]` to `dtype` (fp32, bf16 — both exact — or fp16, rounded RNE).

    Blocks with scale byte 255 decode to NaN. Returns `out` when given (shape `[..., K]`, `dtype`).
    """
    fn = "dequantize_mxfp4"
    check_container(t, MXFP4Tensor, fn)
    check_out_dtype(dtype, fn)
    be = pick_backend(backend, t.device, fn)
    if out is not None:
        check_out_tensor(out, tuple(t.shape), dtype, t.device, fn, "out")
    if be == "torch":
        r = reference.dequantize_mxfp4(t, dtype)
        return r if out is None else out.copy_(r)
    from .kernels.mxfp4 import mxfp4_dequantize_triton
    return mxfp4_dequantize_triton(t, dtype, out=out)


def quantize_fp8(x: torch.Tensor, *, backend: str = "auto", out: FP8Tensor | None = None) -> FP8Tensor:
    """Encode `x` (fp32/bf16/fp16 `[..., K]`, K a multiple of 128) to FP8 E4M3 with 1x128 tiles.

    Returns an `FP8Tensor`: `data` float8_e4m3fn `[..., K]`, `scales` uint8 `[..., K/128]` (byte k + 127
    meaning value = data * 2^k; 255 = tile held NaN/Inf, its data bytes are 0).
    """
    fn = "quantize_fp8"
    check_float_input(x, FP8_TILE, fn)
    be = pick_backend(backend, x.device, fn)
    if out is not None:
        _check_fp8_out(out, x.shape, x.device, fn)
    if be == "torch":
        r = reference.quantize_fp8(x)
        if out is None:
            return r
        out.data.copy_(r.data)
        out.scales.copy_(r.scales)
        return FP8Tensor(out.data, out.scales)
    from .kernels.fp8 import fp8_quantize_triton
    return fp8_quantize_triton(x, out=out)


def dequantize_fp8(t: FP8Tensor, dtype: torch.dtype = torch.bfloat16, *, backend: str = "auto",
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode an `FP8Tensor` `[..., K]` to `dtype` (fp32, bf16 or fp16; one RNE rounding of the exact
    value). E4M3 NaN bytes and tiles with scale byte 255 decode to NaN."""
    fn = "dequantize_fp8"
    check_container(t, FP8Tensor, fn)
    check_out_dtype(dtype, fn)
    be = pick_backend(backend, t.device, fn)
    if out is not None:
        check_out_tensor(out, tuple(t.shape), dtype, t.device, fn, "out")
    if be == "torch":
        r = reference.dequantize_fp8(t, dtype)
        return r if out is None else out.copy_(r)
    from .kernels.fp8 import fp8_dequantize_triton
    return fp8_dequantize_triton(t, dtype, out=out)
