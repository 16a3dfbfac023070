"""Triton MXFP4 encode / decode (FORMATS.md "MXFP4"), bit-exact with `quant/reference.py`.

Everything is integer arithmetic on fp32 bit patterns (Hopper has no FP4/E8M0 instructions, and fp32
multiplies could flush subnormals): the block maximum is an integer max of |bits|, the exponent comes
from the exponent field, and E2M1 rounding compares |v| with the seven rounding thresholds of the
block (midpoints 0.25, 0.75, ... 5 times 2^e) written as exact fp32 bit patterns, which are ordered like
the values they encode. Decoding assembles fp32 bits of `E2M1 * 2^(b-127)` directly, subnormals and
overflow included. Each program handles a [BLOCK_M, BLOCK_K] tile of a row-major `[M, K]` view whose
rows may have any stride (slices of a packed wire buffer are read and written in place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_float_input, check_out_dtype, rows_in, rows_out
from ..formats import MXFP4_BLOCK, MXFP4Tensor, check_scale_mode

_IN_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@triton.jit
def _load_f32_bits(ptr, offs, mask, IN_KIND: tl.constexpr):
    """Load fp32/bf16/fp16 elements (passed as int32/int16 bit views) and return fp32 bit patterns (int32)."""
    raw = tl.load(ptr + offs, mask=mask, other=0)
    if IN_KIND == 0:
        bits = raw
    elif IN_KIND == 1:
        bits = raw.to(tl.int32) << 16  # bf16 is the top half of fp32
    else:
        bits = raw.to(tl.float16, bitcast=True).to(tl.float32).to(tl.int32, bitcast=True)  # exact
    return bits


@triton.jit
def _threshold(e, P: tl.constexpr, MANT: tl.constexpr):
    """fp32 bit pattern of (1 + MANT/2^23) * 2^(P + e), exact also when it is subnormal (P + e >= -129)."""
    q = e + P
    normal = ((q + 127) << 23) | MANT
    sub = (MANT | 0x800000) >> tl.minimum(tl.maximum(-126 - q, 0), 31)
    return tl.where(q >= -126, normal, sub)


@triton.jit
def _mxfp4_quantize_kernel(x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s,
                           IN_KIND: tl.constexpr, RCEIL: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rmask[:, None] & (cols < K)[None, :]
    bits = _load_f32_bits(x_ptr, rows[:, None] * stride_x + cols[None, :], mask, IN_KIND)

    a = tl.reshape(bits & 0x7FFFFFFF, [BLOCK_M, NB, 32])  # |v| bits; ordered like |v|
    sign = tl.reshape((bits >> 28) & 8, [BLOCK_M, NB, 32])  # sign bit moved to code bit 3
    amax = tl.max(a, axis=2)  # [BLOCK_M, NB]
    bad = amax >= 0x7F800000  # NaN/Inf bits are above every finite one
    e = (amax >> 23) - 129  # f - 2
    if RCEIL:
        e += ((amax & 0x7FFFFF) > 0x400000).to(tl.int32)  # significand > 1.5
    e = tl.where(amax < 0x800000, -127, e)  # zero or subnormal block maximum
    e = tl.minimum(tl.maximum(e, -127), 127)
    sbyte = tl.where(bad, 255, e + 127)

    # RNE to {0, .5, 1, 1.5, 2, 3, 4, 6} with saturation = number of thresholds passed (ties to even
    # decide > or >=): 0.25 >, 0.75 >=, 1.25 >, 1.75 >=, 2.5 >, 3.5 >=, 5 >.
    e3 = e[:, :, None]
    code = (a > _threshold(e3, -2, 0)).to(tl.int32)
    code += (a >= _threshold(e3, -1, 0x400000)).to(tl.int32)
    code += (a > _threshold(e3, 0, 0x200000)).to(tl.int32)
    code += (a >= _threshold(e3, 0, 0x600000)).to(tl.int32)
    code += (a > _threshold(e3, 1, 0x200000)).to(tl.int32)
    code += (a >= _threshold(e3, 1, 0x600000)).to(tl.int32)
    code += (a > _threshold(e3, 2, 0x200000)).to(tl.int32)
    code = tl.where(bad[:, :, None], 0, code | sign)

    lo, hi = tl.split(tl.reshape(code, [BLOCK_M, BLOCK_K // 2, 2]))
    byte = (lo | (hi << 4)).to(tl.uint8)
    dcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    tl.store(data_ptr + rows[:, None] * stride_d + dcols[None, :], byte,
             mask=rmask[:, None] & (dcols < K // 2)[None, :])
    scols = pid_k * NB + tl.arange(0, NB)
    tl.store(scales_ptr + rows[:, None] * stride_s + scols[None, :], sbyte.to(tl.uint8),
             mask=rmask[:, None] & (scols < K // 32)[None, :])


@triton.jit
def _f32_bits_of(s, p):
    """fp32 bit pattern of the exact value s * 2^p for integers 0 <= s < 2^24, p >= -149 - log2(s):
    normal, subnormal (never rounded: s * 2^p is a multiple of 2^-149) or +Inf on overflow."""
    sb = s.to(tl.float32).to(tl.int32, bitcast=True)  # exact: s < 2^24
    ne = (sb >> 23) + p  # biased exponent of the result
    normal = sb + p * 8388608
    sub = s << tl.minimum(tl.maximum(p + 149, 0), 31)
    r = tl.where(ne >= 1, normal, sub)
    r = tl.where(ne > 254, 0x7F800000, r)
    return tl.where(s == 0, 0, r)


@triton.jit
def _store_from_f32_bits(ptr, offs, mask, bits, is_nan, OUT_KIND: tl.constexpr):
    """Store fp32 bit patterns as fp32/bf16/fp16 (one RNE rounding; canonical NaN where is_nan)."""
    if OUT_KIND == 0:
        tl.store(ptr + offs, tl.where(is_nan, 0x7FC00000, bits), mask=mask)
    elif OUT_KIND == 1:
        mag = bits & 0x7FFFFFFF
        r = (mag + 0x7FFF + ((mag >> 16) & 1)) >> 16  # RNE to bf16 (subnormals and overflow too)
        r = r | ((bits >> 16) & 0x8000)
        tl.store(ptr + offs, tl.where(is_nan, 0x7FC0, r).to(tl.int16), mask=mask)
    else:
        h = bits.to(tl.float32, bitcast=True).to(tl.float16).to(tl.int16, bitcast=True)
        tl.store(ptr + offs, tl.where(is_nan, 0x7E00, h.to(tl.int32)).to(tl.int16), mask=mask)


@triton.jit
def _mxfp4_dequantize_kernel(data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o,
                             OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    dcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    byte = tl.load(data_ptr + rows[:, None] * stride_d + dcols[None, :],
                   mask=rmask[:, None] & (dcols < K // 2)[None, :], other=0).to(tl.int32)
    scols = pid_k * NB + tl.arange(0, NB)
    b = tl.load(scales_ptr + rows[:, None] * stride_s + scols[None, :],
                mask=rmask[:, None] & (scols < K // 32)[None, :], other=0).to(tl.int32)

    code = tl.reshape(tl.join(byte & 15, byte >> 4), [BLOCK_M, NB, 32])  # element 2i = low nibble
    c = code & 7
    twice = tl.where(c < 4, c, (2 + (c & 1)) << tl.maximum((c >> 1) - 1, 0))  # 2 * E2M1 magnitude: 0,1,2,3,4,6,8,12
    b3 = b[:, :, None]
    bits = _f32_bits_of(twice, b3 - 128) | ((code & 8) << 28)
    bits = tl.reshape(bits, [BLOCK_M, BLOCK_K])
    is_nan = tl.reshape(tl.broadcast_to(b3 == 255, [BLOCK_M, NB, 32]), [BLOCK_M, BLOCK_K])

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    _store_from_f32_bits(out_ptr, rows[:, None] * stride_o + cols[None, :],
                         rmask[:, None] & (cols < K)[None, :], bits, is_nan, OUT_KIND)


def default_blocks(k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) used when the caller gives none: ~8K elements a program."""
    block_k = min(512, triton.next_power_of_2(k))
    return max(1, 8192 // block_k), block_k, 4


def _blocks(k: int, block_m: int | None, block_k: int | None, num_warps: int | None) -> tuple[int, int, int]:
    dm, dk, dw = default_blocks(k)
    bm, bk, nw = block_m or dm, block_k or dk, num_warps or dw
    if bk < 32 or bk & (bk - 1) or bm < 1 or bm & (bm - 1):
        raise ValueError(f"block_k must be a power of two >= 32 and block_m a power of two, got {bm}, {bk}")
    return bm, bk, nw


def mxfp4_quantize_triton(x: torch.Tensor, scale_mode: str = "rceil", *, out: MXFP4Tensor | None = None,
                          block_m: int | None = None, block_k: int | None = None,
                          num_warps: int | None = None) -> MXFP4Tensor:
    """Encode fp32/bf16/fp16 `x` `[..., K]` to MXFP4 with the Triton kernel (see `codecs.quantize_mxfp4`).
    `out` (optional) is written in place; its data/scales may be strided row views."""
    fn = "quantize_mxfp4"
    check_scale_mode(scale_mode)
    check_float_input(x, MXFP4_BLOCK, fn)
    k = x.shape[-1]
    lead = tuple(x.shape[:-1])
    if out is None:
        out = MXFP4Tensor(torch.empty(lead + (k // 2,), dtype=torch.uint8, device=x.device),
                          torch.empty(lead + (k // MXFP4_BLOCK,), dtype=torch.uint8, device=x.device),
                          scale_mode)
    elif (tuple(out.data.shape) != lead + (k // 2,) or out.data.device != x.device
          or out.scales.device != x.device):
        raise ValueError(f"{fn}: out must hold data {lead + (k // 2,)} and scales "
                         f"{lead + (k // MXFP4_BLOCK,)} on {x.device}, got {tuple(out.data.shape)} "
                         f"and {tuple(out.scales.shape)} on {out.data.device}")
    xr = rows_in(x).view(_BITS_VIEW[x.dtype])
    dr = rows_out(out.data, fn, "out.data")
    sr = rows_out(out.scales, fn, "out.scales")
    m = xr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
        _mxfp4_quantize_kernel[grid](xr, dr, sr, m, k, xr.stride(0), dr.stride(0), sr.stride(0),
                                     IN_KIND=_IN_KIND[x.dtype], RCEIL=scale_mode == "rceil",
                                     BLOCK_M=bm, BLOCK_K=bk, num_warps=nw)
    return MXFP4Tensor(out.data, out.scales, scale_mode)


def mxfp4_dequantize_triton(t: MXFP4Tensor, dtype: torch.dtype = torch.bfloat16, *,
                            out: torch.Tensor | None = None, block_m: int | None = None,
                            block_k: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Decode an `MXFP4Tensor` to `dtype` `[..., K]` with the Triton kernel (see `codecs.dequantize_mxfp4`).
    The container's data/scales may be strided row views; they are read in place."""
    fn = "dequantize_mxfp4"
    if not isinstance(t, MXFP4Tensor):
        raise TypeError(f"{fn}: t must be a MXFP4Tensor, got {type(t).__name__}")
    check_out_dtype(dtype, fn)
    shape = tuple(t.shape)
    k = shape[-1]
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=t.device)
    elif tuple(out.shape) != shape or out.dtype != dtype or out.device != t.device:
        raise ValueError(f"{fn}: out must be {dtype} {shape} on {t.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    dr = rows_in(t.data)
    sr = rows_in(t.scales)
    orow = rows_out(out, fn, "out").view(_BITS_VIEW[dtype])
    m = dr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
        _mxfp4_dequantize_kernel[grid](dr, sr, orow, m, k, dr.stride(0), sr.stride(0), orow.stride(0),
                                       OUT_KIND=_IN_KIND[dtype], BLOCK_M=bm, BLOCK_K=bk, num_warps=nw)
    return out
