"""Triton FP8 encode / decode (E4M3, 1x128 tiles, UE8M0 scales; FORMATS.md "FP8"), bit-exact with
`quant/reference.py`.

Integer arithmetic on fp32 bit patterns throughout, so no fp32 multiply can flush a subnormal and no
hardware conversion's rounding has to be trusted: `k = ceil(log2(amax / 448))` comes from the exponent
field and a significand comparison (> 1.75), and each element is rounded to E4M3 by shifting its
24-bit significand right (round to nearest, ties to even) to the E4M3 spacing at `|v| * 2^-k`, E4M3
subnormals included. Decoding assembles fp32 bits of `e4m3 * 2^k` directly. Tiles [BLOCK_M, BLOCK_K]
over a row-major `[M, K]` view with any row stride per operand.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_float_input, check_out_dtype, rows_in, rows_out
from ..formats import E4M3_DTYPE, FP8_TILE, FP8Tensor
from .mxfp4 import _IN_KIND, _BITS_VIEW, _f32_bits_of, _load_f32_bits, _store_from_f32_bits


@triton.jit
def _fp8_quantize_kernel(x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s,
                         IN_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rmask[:, None] & (cols < K)[None, :]
    bits = _load_f32_bits(x_ptr, rows[:, None] * stride_x + cols[None, :], mask, IN_KIND)

    a = tl.reshape(bits & 0x7FFFFFFF, [BLOCK_M, NT, 128])
    amax = tl.max(a, axis=2)  # [BLOCK_M, NT]
    bad = amax >= 0x7F800000
    # k = ceil(log2(amax / 448)) = f - 8 + [significand > 1.75]   (448 = 1.75 * 2^8)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)
    k = tl.minimum(tl.maximum(k, -127), 127)
    sbyte = tl.where(bad, 255, k + 127)

    # |v| = sig * 2^(fv - 23) with sig in [2^23, 2^24) (subnormal inputs normalised), so that
    # y = |v| * 2^-k has floor(log2 y) = fv - k exactly.
    ev = a >> 23
    mant = a & 0x7FFFFF
    # floor(log2 mant) of a subnormal: mant as an exact fp32 via the 2^23 magic number (normal operands).
    lg = (((mant | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0).to(tl.int32, bitcast=True) >> 23) - 127
    sig = tl.where(ev == 0, mant << tl.minimum(tl.maximum(23 - lg, 0), 31), mant | 0x800000)
    fy = tl.where(ev == 0, lg - 149, ev - 127) - k[:, :, None]
    fq = tl.maximum(fy, -6)  # E4M3 spacing at y is 2^(fq - 3)
    sh = tl.minimum(fq - fy + 20, 25)  # >= 20; 25 shifts every bit out (rounds to 0)
    q = sig >> sh
    rem = sig & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    m = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    # E4M3 bits: exponent field fq + 7 (1 in the subnormal range), m in [8, 16] (or [0, 8]); a carry
    # to 16 moves into the next binade by itself.
    code = ((fq + 7) << 3) + m - 8
    code = tl.where(sig == 0, 0, code) | tl.reshape((bits >> 24) & 0x80, [BLOCK_M, NT, 128])
    code = tl.where(bad[:, :, None], 0, code)

    tl.store(data_ptr + rows[:, None] * stride_d + cols[None, :],
             tl.reshape(code, [BLOCK_M, BLOCK_K]).to(tl.uint8), mask=mask)
    scols = pid_k * NT + tl.arange(0, NT)
    tl.store(scales_ptr + rows[:, None] * stride_s + scols[None, :], sbyte.to(tl.uint8),
             mask=rmask[:, None] & (scols < K // 128)[None, :])


@triton.jit
def _fp8_dequantize_kernel(data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o,
                           OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rmask[:, None] & (cols < K)[None, :]
    q = tl.load(data_ptr + rows[:, None] * stride_d + cols[None, :], mask=mask, other=0).to(tl.int32)
    scols = pid_k * NT + tl.arange(0, NT)
    b = tl.load(scales_ptr + rows[:, None] * stride_s + scols[None, :],
                mask=rmask[:, None] & (scols < K // 128)[None, :], other=0).to(tl.int32)

    q = tl.reshape(q, [BLOCK_M, NT, 128])
    b3 = b[:, :, None]
    ef = (q >> 3) & 15
    mf = q & 7
    sig = tl.where(ef == 0, mf, mf + 8)  # value = sig * 2^(max(ef, 1) - 10) * 2^(b - 127)
    bits = _f32_bits_of(sig, tl.maximum(ef, 1) - 137 + b3) | ((q & 0x80) << 24)
    is_nan = ((q & 0x7F) == 0x7F) | (b3 == 255)
    _store_from_f32_bits(out_ptr, rows[:, None] * stride_o + cols[None, :], mask,
                         tl.reshape(bits, [BLOCK_M, BLOCK_K]), tl.reshape(is_nan, [BLOCK_M, BLOCK_K]),
                         OUT_KIND)


def default_blocks(k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) used when the caller gives none: ~8K elements a program."""
    block_k = min(512, triton.next_power_of_2(k))
    return max(1, 8192 // block_k), block_k, 4


def _blocks(k: int, block_m: int | None, block_k: int | None, num_warps: int | None) -> tuple[int, int, int]:
    dm, dk, dw = default_blocks(k)
    bm, bk, nw = block_m or dm, block_k or dk, num_warps or dw
    if bk < 128 or bk & (bk - 1) or bm < 1 or bm & (bm - 1):
        raise ValueError(f"block_k must be a power of two >= 128 and block_m a power of two, got {bm}, {bk}")
    return bm, bk, nw


def fp8_quantize_triton(x: torch.Tensor, *, out: FP8Tensor | None = None, block_m: int | None = None,
                        block_k: int | None = None, num_warps: int | None = None) -> FP8Tensor:
    """Encode fp32/bf16/fp16 `x` `[..., K]` to FP8 1x128 with the Triton kernel (see `codecs.quantize_fp8`).
    `out` (optional) is written in place; its data/scales may be strided row views."""
    fn = "quantize_fp8"
    check_float_input(x, FP8_TILE, fn)
    k = x.shape[-1]
    lead = tuple(x.shape[:-1])
    if out is None:
        out = FP8Tensor(torch.empty(lead + (k,), dtype=E4M3_DTYPE, device=x.device),
                        torch.empty(lead + (k // FP8_TILE,), dtype=torch.uint8, device=x.device))
    elif tuple(out.data.shape) != lead + (k,) or out.data.device != x.device or out.scales.device != x.device:
        raise ValueError(f"{fn}: out must hold data {lead + (k,)} and scales {lead + (k // FP8_TILE,)} "
                         f"on {x.device}, got {tuple(out.data.shape)} and {tuple(out.scales.shape)} "
                         f"on {out.data.device}")
    xr = rows_in(x).view(_BITS_VIEW[x.dtype])
    dr = rows_out(out.data, fn, "out.data").view(torch.uint8)
    sr = rows_out(out.scales, fn, "out.scales")
    m = xr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
        _fp8_quantize_kernel[grid](xr, dr, sr, m, k, xr.stride(0), dr.stride(0), sr.stride(0),
                                   IN_KIND=_IN_KIND[x.dtype], BLOCK_M=bm, BLOCK_K=bk, num_warps=nw)
    return FP8Tensor(out.data, out.scales)


def fp8_dequantize_triton(t: FP8Tensor, dtype: torch.dtype = torch.bfloat16, *,
                          out: torch.Tensor | None = None, block_m: int | None = None,
                          block_k: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Decode an `FP8Tensor` to `dtype` `[..., K]` with the Triton kernel (see `codecs.dequantize_fp8`).
    The container's data/scales may be strided row views; they are read in place."""
    fn = "dequantize_fp8"
    if not isinstance(t, FP8Tensor):
        raise TypeError(f"{fn}: t must be a FP8Tensor, got {type(t).__name__}")
    check_out_dtype(dtype, fn)
    shape = tuple(t.shape)
    k = shape[-1]
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=t.device)
    elif tuple(out.shape) != shape or out.dtype != dtype or out.device != t.device:
        raise ValueError(f"{fn}: out must be {dtype} {shape} on {t.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    dr = rows_in(t.data.view(torch.uint8))
    sr = rows_in(t.scales)
    orow = rows_out(out, fn, "out").view(_BITS_VIEW[dtype])
    m = dr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
        _fp8_dequantize_kernel[grid](dr, sr, orow, m, k, dr.stride(0), sr.stride(0), orow.stride(0),
                                     OUT_KIND=_IN_KIND[dtype], BLOCK_M=bm, BLOCK_K=bk, num_warps=nw)
    return out
