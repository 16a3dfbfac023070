"""The GEMMs and SwiGLU kernels of `mxa2a.gemm` in plain torch: the oracle the Triton kernels are
tested against, and the path taken on CPU (gloo tests, no interpreter).

Every FP8 operand is dequantized to fp32 exactly (`quant.dequantize_fp8`), then multiplied in fp32 per
group; the group boundaries are read on the host (one sync: these are references, not fast paths).
SwiGLU is `silu(gate) * up` in fp32 and its output is quantized by the FP8 reference codec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant import reference as qref
from ..quant.formats import FP8Tensor
from .aligned_groups import GroupAlignedLayout


def _bounds(offsets: torch.Tensor) -> list[tuple[int, int]]:
    ends = [int(e) for e in offsets.tolist()]
    return list(zip([0] + ends[:-1], ends))


def _aligned_bounds(layout: GroupAlignedLayout) -> list[tuple[int, int]]:
    sizes = [e - s for s, e in _bounds(layout.offsets)]
    starts = [s for s, _ in _bounds(layout.padded_offsets)]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def grouped_gemm_fp8(a: FP8Tensor, b: FP8Tensor, offsets: torch.Tensor,
                     out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`out[r] = a[r] @ b[g]^T` for the rows r of group g (`offsets` = cumulative row ends);
    a `[M, K]`, b `[G, N, K]` -> `[M, N]`; rows past `offsets[-1]` are 0."""
    av = qref.dequantize_fp8(a, torch.float32)
    bv = qref.dequantize_fp8(b, torch.float32)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=av.device)
    for g, (s, e) in enumerate(_bounds(offsets)):
        out[s:e] = av[s:e] @ bv[g].t()
    return out.to(out_dtype)


def grouped_gemm_fp8_wgrad(a_t: FP8Tensor, b_t: FP8Tensor, offsets: "torch.Tensor | GroupAlignedLayout",
                           out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`out[g] = a_t[:, s:e] @ b_t[:, s:e]^T` over the tokens s:e of group g; a_t `[N, T]`, b_t
    `[K, T]` (column-wise operands: tiles along tokens) -> `[G, N, K]`. With a `GroupAlignedLayout`,
    group g's tokens are its real ones in the aligned layout (padding tokens are not read)."""
    av = qref.dequantize_fp8(a_t, torch.float32)
    bv = qref.dequantize_fp8(b_t, torch.float32)
    bounds = _aligned_bounds(offsets) if isinstance(offsets, GroupAlignedLayout) else _bounds(offsets)
    out = torch.zeros(len(bounds), a_t.shape[0], b_t.shape[0], dtype=torch.float32, device=av.device)
    for g, (s, e) in enumerate(bounds):
        out[g] = av[:, s:e] @ bv[:, s:e].t()
    return out.to(out_dtype)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """`h [M, 2F] = [gate | up]` -> `silu(gate) * up` in fp32 `[M, F]`."""
    gate, up = h.to(torch.float32).chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu_backward(h: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """d(silu(gate) * up) for upstream `dz [M, F]` -> `[d gate | d up]` in fp32 `[M, 2F]`."""
    gate, up = h.to(torch.float32).chunk(2, dim=-1)
    s = torch.sigmoid(gate)
    dz = dz.to(torch.float32)
    return torch.cat([dz * up * s * (1 + gate * (1 - s)), dz * gate * s], dim=-1)


def swiglu_quantize_fp8(h: torch.Tensor) -> FP8Tensor:
    return qref.quantize_fp8(swiglu(h))


def swiglu_backward_quantize_fp8(h: torch.Tensor, dz: torch.Tensor) -> FP8Tensor:
    return qref.quantize_fp8(swiglu_backward(h, dz))
