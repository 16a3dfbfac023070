"""Argument checks and row views shared by the codec front ends (`codecs.py`) and the Triton wrappers.

Every kernel works on 2-D row views `[M, W]` with a contiguous last dimension and any row stride, so
callers can hand in slices of a packed wire buffer. Inputs that cannot be viewed that way are copied
(made contiguous); outputs (`out=`) are written in place and must already have that form.
"""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "triton", "torch")


def check_float_input(x: object, block: int, fn: str) -> torch.Tensor:
    """`x` must be an fp32/bf16/fp16 tensor `[..., K]` with K a positive multiple of `block`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0 or x.shape[-1] % block != 0:
        raise ValueError(f"{fn}: the last dimension of x must be a positive multiple of {block}, "
                         f"got shape {tuple(x.shape)}")
    return x


def check_out_dtype(dtype: object, fn: str) -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return dtype  # type: ignore[return-value]


def check_container(t: object, cls: type, fn: str, name: str = "t") -> None:
    if not isinstance(t, cls):
        raise TypeError(f"{fn}: {name} must be a {cls.__name__}, got {type(t).__name__}")


def check_out_tensor(out: object, shape: tuple, dtype: torch.dtype, device: torch.device,
                     fn: str, name: str) -> torch.Tensor:
    """An output tensor the caller supplied: exact shape, dtype and device, last dim contiguous."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"{fn}: {name} must be on {device}, got {out.device}")
    rows_out(out, fn, name)  # raises when it cannot be written as [M, W] rows in place
    return out


def pick_backend(backend: str, device: torch.device, fn: str) -> str:
    """"auto" -> "triton" on CUDA, "torch" elsewhere; "triton" on CPU needs TRITON_INTERPRET=1."""
    if backend not in BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{fn}: backend='triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 "
                         "set before mxa2a.quant.kernels is imported")
    return backend


def rows_in(t: torch.Tensor) -> torch.Tensor:
    """`[..., W]` -> a 2-D `[M, W]` view with stride(-1) == 1, without a copy when the strides allow
    (e.g. a column slice of a wider buffer), else from a contiguous copy."""
    w = t.shape[-1]
    if t.stride(-1) == 1 or w == 1:
        try:
            v = t.view(-1, w)
            if v.stride(-1) == 1 or w == 1:
                return v
        except RuntimeError:
            pass
    return t.contiguous().view(-1, w)


def rows_out(t: torch.Tensor, fn: str, name: str) -> torch.Tensor:
    """`[..., W]` -> a 2-D `[M, W]` view written in place: last dim contiguous, rows not overlapping."""
    if t.dim() == 2 and t.shape[1] > 0 and t.stride(1) == 1 and (t.stride(0) >= t.shape[1] or t.shape[0] <= 1):
        return t  # the common case (e.g. a slice of a packed wire buffer), without building a view
    w = t.shape[-1]
    bad = f"{fn}: {name} must be writable in place as rows [M, {w}] with a contiguous last dimension"
    if t.dim() < 1 or (t.stride(-1) != 1 and w > 1):
        raise ValueError(f"{bad}; got shape {tuple(t.shape)} with strides {t.stride()}")
    try:
        v = t.view(-1, w)
    except RuntimeError:
        raise ValueError(f"{bad}; its leading dimensions of shape {tuple(t.shape)} with strides "
                         f"{t.stride()} cannot be merged into one row stride") from None
    if v.shape[0] > 1 and v.stride(0) < w:
        raise ValueError(f"{bad}; its rows overlap (row stride {v.stride(0)} < width {w})")
    return v
