"""Triton SwiGLU fused with FP8 1x128 quantization (docs/RECIPE.md, forward step 5 and backward).

Forward: read `h [M, 2F] = [gate | up]` (bf16/fp32), write `z = silu(gate) * up` as FP8 E4M3 with
1x128 tiles along F (data + UE8M0 scale bytes), never storing z in 16 or 32 bits.
Backward: read h and the upstream gradient `dz [M, F]`, write `dh = [dz * up * silu'(gate) |
dz * silu(gate)]` as FP8 1x128 tiles along 2F (the gate and up halves are separate tiles since F is a
multiple of 128). The encode is `quant.kernels.fp8.fp8_encode_tiles`, bit-exact with the codec.
Program (i, j): rows [i * BLOCK_M, +BLOCK_M), the j-th 128-column tile of z (and of both halves of h).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...quant.formats import FP8_MAX_SCALE_EXP
from ...quant.kernels.fp8 import fp8_encode_tiles
from ...quant.kernels.mxfp4 import _BITS_VIEW, _IN_KIND, _load_f32_bits


# SwiGLU outputs are fp32: their tile scales are capped as the codec caps fp32 input.
_FP32_K_MAX = tl.constexpr(FP8_MAX_SCALE_EXP[torch.float32])


@triton.jit
def _load_f32(ptr, offs, mask, KIND: tl.constexpr):
    return _load_f32_bits(ptr, offs, mask, KIND).to(tl.float32, bitcast=True)


@triton.jit
def _store_fp8_tile(data_ptr, scales_ptr, rows, rmask, col0, stride_d, stride_s, v, BLOCK_M: tl.constexpr):
    # v [BLOCK_M, 128] fp32 -> one 1x128 FP8 tile per row at columns [col0, col0 + 128).
    code, sbyte = fp8_encode_tiles(v.to(tl.int32, bitcast=True), _FP32_K_MAX, BLOCK_M, 128)
    cols = col0 + tl.arange(0, 128)
    tl.store(data_ptr + rows[:, None] * stride_d + cols[None, :], code.to(tl.uint8), mask=rmask[:, None])
    tl.store(scales_ptr + rows * stride_s + col0 // 128, tl.reshape(sbyte, [BLOCK_M]).to(tl.uint8), mask=rmask)


@triton.jit
def _swiglu_quantize_kernel(h_ptr, z_ptr, zs_ptr, M, F, stride_h, stride_z, stride_zs,
                            H_KIND: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    col0 = tl.program_id(1) * 128
    rmask = rows < M
    offs = rows[:, None] * stride_h + (col0 + tl.arange(0, 128))[None, :]
    gate = _load_f32(h_ptr, offs, rmask[:, None], H_KIND)
    up = _load_f32(h_ptr, offs + F, rmask[:, None], H_KIND)
    z = gate * tl.sigmoid(gate) * up
    _store_fp8_tile(z_ptr, zs_ptr, rows, rmask, col0, stride_z, stride_zs, z, BLOCK_M)


@triton.jit
def _swiglu_backward_quantize_kernel(h_ptr, dz_ptr, dh_ptr, dhs_ptr, M, F, stride_h, stride_dz, stride_dh,
                                     stride_dhs, H_KIND: tl.constexpr, DZ_KIND: tl.constexpr,
                                     BLOCK_M: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    col0 = tl.program_id(1) * 128
    cols = col0 + tl.arange(0, 128)
    rmask = rows < M
    offs = rows[:, None] * stride_h + cols[None, :]
    gate = _load_f32(h_ptr, offs, rmask[:, None], H_KIND)
    up = _load_f32(h_ptr, offs + F, rmask[:, None], H_KIND)
    dz = _load_f32(dz_ptr, rows[:, None] * stride_dz + cols[None, :], rmask[:, None], DZ_KIND)
    s = tl.sigmoid(gate)
    d_gate = dz * up * s * (1 + gate * (1 - s))
    d_up = dz * gate * s
    _store_fp8_tile(dh_ptr, dhs_ptr, rows, rmask, col0, stride_dh, stride_dhs, d_gate, BLOCK_M)
    _store_fp8_tile(dh_ptr, dhs_ptr, rows, rmask, col0 + F, stride_dh, stride_dhs, d_up, BLOCK_M)


def launch_swiglu(h, out, block_m: int = 32, num_warps: int = 4) -> None:
    m, f = h.shape[0], h.shape[1] // 2
    if m:
        _swiglu_quantize_kernel[(triton.cdiv(m, block_m), f // 128)](
            h.view(_BITS_VIEW[h.dtype]), out.data.view(torch.uint8), out.scales, m, f, h.stride(0),
            out.data.stride(0), out.scales.stride(0),
            H_KIND=_IN_KIND[h.dtype], BLOCK_M=block_m, num_warps=num_warps)


def launch_swiglu_backward(h, dz, out, block_m: int = 32, num_warps: int = 4) -> None:
    m, f = dz.shape
    if m:
        _swiglu_backward_quantize_kernel[(triton.cdiv(m, block_m), f // 128)](
            h.view(_BITS_VIEW[h.dtype]), dz.view(_BITS_VIEW[dz.dtype]), out.data.view(torch.uint8), out.scales,
            m, f, h.stride(0), dz.stride(0), out.data.stride(0),
            out.scales.stride(0), H_KIND=_IN_KIND[h.dtype], DZ_KIND=_IN_KIND[dz.dtype],
            BLOCK_M=block_m, num_warps=num_warps)
