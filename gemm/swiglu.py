"""SwiGLU fused with FP8 1x128 quantization: `z = silu(gate) * up` for the down projection, and its
backward `dh = [d gate | d up]` for the data- and weight-gradient GEMMs of the gate/up projection.

`h [M, 2F]` is the output of the fused gate/up GEMM (`[gate | up]`, bf16 or fp32, F a multiple of 128).
Both functions write FP8 straight from registers (`kernels/swiglu.py`); `out=` (an `FP8Tensor` of
the result's shape, e.g. row views of a buffer padded to a multiple of 128 rows) is written in place.
The torch reference computes the same fp32 formulas; the transcendental (sigmoid) may differ in the
last fp32 bit between backends, so an E4M3 code may differ by one step where that bit decides a tie.
"""

from __future__ import annotations

import torch

from ..quant.checks import check_container, pick_backend
from ..quant.formats import E4M3_DTYPE, FP8_TILE, FP8Tensor
from . import reference

_IN_DTYPES = (torch.float32, torch.bfloat16)


def _check_rows(x: object, fn: str, name: str, form: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype not in _IN_DTYPES:
        raise TypeError(f"{fn}: {name} must be a float32 or bfloat16 tensor {form}, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{fn}: {name} must be 2-D {form}, got shape {tuple(x.shape)}")
    return x if x.stride(-1) == 1 else x.contiguous()


def _out(out: FP8Tensor | None, m: int, width: int, device: torch.device, fn: str) -> FP8Tensor:
    if out is None:
        return FP8Tensor(torch.empty(m, width, dtype=E4M3_DTYPE, device=device),
                         torch.empty(m, width // FP8_TILE, dtype=torch.uint8, device=device))
    check_container(out, FP8Tensor, fn, "out")
    if tuple(out.shape) != (m, width) or out.device != device or out.data.stride(-1) != 1:
        raise ValueError(f"{fn}: out must be an FP8Tensor [{m}, {width}] on {device} with contiguous rows, "
                         f"got {tuple(out.shape)} on {out.device}")
    return out


def _finish(r: FP8Tensor, out: FP8Tensor | None) -> FP8Tensor:
    if out is None:
        return r
    out.data.copy_(r.data)
    out.scales.copy_(r.scales)
    return out


def swiglu_quantize_fp8(h: torch.Tensor, *, backend: str = "auto", out: FP8Tensor | None = None) -> FP8Tensor:
    """`h [M, 2F]` -> FP8 `z = silu(h[:, :F]) * h[:, F:]` `[M, F]` (1x128 tiles along F)."""
    fn = "swiglu_quantize_fp8"
    h = _check_rows(h, fn, "h", "[M, 2F]")
    if h.shape[1] % (2 * FP8_TILE):
        raise ValueError(f"{fn}: h must be [M, 2F] with F a multiple of {FP8_TILE}, got shape {tuple(h.shape)}")
    m, f = h.shape[0], h.shape[1] // 2
    be = pick_backend(backend, h.device, fn)
    out_t = _out(out, m, f, h.device, fn)
    if be == "torch":
        return _finish(reference.swiglu_quantize_fp8(h), out_t)
    from .kernels.swiglu import launch_swiglu
    launch_swiglu(h, out_t)
    return out_t


def swiglu_backward_quantize_fp8(h: torch.Tensor, dz: torch.Tensor, *, backend: str = "auto",
                                 out: FP8Tensor | None = None) -> FP8Tensor:
    """`h [M, 2F]`, upstream `dz [M, F]` -> FP8 `dh = [dz * up * silu'(gate) | dz * silu(gate)]`
    `[M, 2F]` (1x128 tiles along 2F)."""
    fn = "swiglu_backward_quantize_fp8"
    h = _check_rows(h, fn, "h", "[M, 2F]")
    dz = _check_rows(dz, fn, "dz", "[M, F]")
    if h.shape[1] % (2 * FP8_TILE) or tuple(dz.shape) != (h.shape[0], h.shape[1] // 2):
        raise ValueError(f"{fn}: h must be [M, 2F] (F a multiple of {FP8_TILE}) and dz [M, F], got "
                         f"{tuple(h.shape)} and {tuple(dz.shape)}")
    if dz.device != h.device:
        raise ValueError(f"{fn}: h is on {h.device} but dz on {dz.device}")
    be = pick_backend(backend, h.device, fn)
    out_t = _out(out, h.shape[0], h.shape[1], h.device, fn)
    if be == "torch":
        return _finish(reference.swiglu_backward_quantize_fp8(h, dz), out_t)
    from .kernels.swiglu import launch_swiglu_backward
    launch_swiglu_backward(h, dz, out_t)
    return out_t
