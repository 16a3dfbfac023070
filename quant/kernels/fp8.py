"""Triton FP8 encode / decode (E4M3, 1x128 tiles, UE8M0 scales; FORMATS.md "FP8"), bit-exact with
`quant/reference.py`.

`k = ceil(log2(amax / 448))` comes from the fp32 bit pattern of the tile maximum (exponent field and
one significand comparison: 448 = 1.75 * 2^8), capped at `K_MAX` so that 448 * 2^k stays finite in the
input dtype (FORMATS.md, "Scales near the top of the input dtype"). Elements are scaled by the normal
fp32 2^-k with one exact multiply (|y| <= 448 but where k was capped: those saturate to 448; results
below 2^-126 round to 0 whatever their low bits) and rounded to
E4M3 by hardware round-to-nearest-even: adding C = 1.5 * 2^(g + 20), whose ulp 2^(g - 3) is the E4M3
spacing at y (g = max(floor(log2 y), -6), so E4M3 subnormals are rounded, never flushed), leaves the
rounded significand in C's low bits. (Triton's fp8 casts are not used: the interpreter's differ from
the hardware's.) Decoding drops the E4M3 bits into an fp32 pattern (value * 2^-120, subnormals
included) and multiplies by 2^120 and the tile scale. fp32 `mul`/`add` are IEEE with subnormals (no
`.ftz` in Triton's PTX). Tiles [BLOCK_M, BLOCK_K] over a row-major `[M, K]` view with any row stride.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_float_input, rows_in, rows_out
from ..formats import E4M3_DTYPE, FP8_MAX_SCALE_EXP, FP8_TILE, FP8Tensor
from .mxfp4 import (PERSISTENT_STAGES, _BITS_VIEW, _IN_KIND, _load_f32_bits, _store_from_f32_bits, decode_output,
                    launch_grid)


@triton.jit
def fp8_scale_exponent(amax, K_MAX: tl.constexpr):
    """Tile maxima `|v|` as fp32 bits (int32, any shape) -> (k, scale byte): k = ceil(log2(amax / 448))
    clamped to [-127, K_MAX] (-127 for a zero or subnormal maximum), byte k + 127 or 255 (Inf/NaN).
    K_MAX is `FP8_MAX_SCALE_EXP` of the input dtype, so that 448 * 2^k stays finite in it."""
    # k = f - 8 + [significand > 1.75]   (448 = 1.75 * 2^8)
    k = (amax >> 23) - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32)
    k = tl.where(amax < 0x800000, -127, k)
    k = tl.minimum(tl.maximum(k, -127), K_MAX)
    return k, tl.where(amax >= 0x7F800000, 255, k + 127)


@triton.jit
def fp8_codes(bits, k, bad):
    """fp32 bit patterns (int32) with their tile's k and NaN flag (both broadcastable to bits) ->
    E4M3 codes (int32): RNE(v * 2^-k), 0 in a NaN tile; above 448 (only where k was capped) 448."""
    inv = ((127 - k) << 23).to(tl.float32, bitcast=True)  # 2^-k, normal: k in [-127, 119]
    y = tl.minimum((bits & 0x7FFFFFFF).to(tl.float32, bitcast=True) * inv, 448.0)  # |v| * 2^-k, exact
    g = tl.maximum((y.to(tl.int32, bitcast=True) >> 23) - 127, -6)  # E4M3 binade of y
    c_bits = g * 8388608 + 0x49C00000  # 1.5 * 2^(g + 20)
    n = (y + c_bits.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - c_bits  # RNE(y / 2^(g-3))
    # E4M3 bits: exponent field g + 7 (1 for subnormals, where n <= 8 is the code itself) and n in
    # [8, 16]; a carry to 16 moves into the next binade by itself.
    code = (((g + 7) << 3) + n - 8) | ((bits >> 24) & 0x80)
    return tl.where(bad, 0, code)


@triton.jit
def fp8_encode_tiles(bits, K_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 bit patterns `[BLOCK_M, BLOCK_K]` (int32) -> E4M3 codes `[BLOCK_M, BLOCK_K]` (int32) and
    the UE8M0 scale bytes `[BLOCK_M, BLOCK_K // 128]` (int32) of their 1x128 tiles (FORMATS.md "FP8")."""
    NT: tl.constexpr = BLOCK_K // 128
    b3 = tl.reshape(bits, [BLOCK_M, NT, 128])
    k, sbyte = fp8_scale_exponent(tl.max(b3 & 0x7FFFFFFF, axis=2), K_MAX)  # [BLOCK_M, NT]
    code = fp8_codes(b3, k[:, :, None], (sbyte == 255)[:, :, None])
    return tl.reshape(code, [BLOCK_M, BLOCK_K]), sbyte


@triton.jit
def _fp8_quantize_tile(pid_m, pid_k, x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s,
                       IN_KIND: tl.constexpr, K_MAX: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rmask[:, None] & (cols < K)[None, :]
    bits = _load_f32_bits(x_ptr, rows[:, None] * stride_x + cols[None, :], mask, IN_KIND)

    code, sbyte = fp8_encode_tiles(bits, K_MAX, BLOCK_M, BLOCK_K)
    tl.store(data_ptr + rows[:, None] * stride_d + cols[None, :], code.to(tl.uint8), mask=mask)
    scols = pid_k * NT + tl.arange(0, NT)
    tl.store(scales_ptr + rows[:, None] * stride_s + scols[None, :], sbyte.to(tl.uint8),
             mask=rmask[:, None] & (scols < K // 128)[None, :])


@triton.jit
def _fp8_quantize_kernel(x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s, tiles_k, n_tiles,
                         IN_KIND: tl.constexpr, K_MAX: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_K: tl.constexpr, PERSISTENT: tl.constexpr, NUM_STAGES: tl.constexpr):
    # PERSISTENT: a few programs per SM stride over the tiles; see mxfp4._mxfp4_quantize_kernel.
    if PERSISTENT:
        for t in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
            _fp8_quantize_tile(t // tiles_k, t % tiles_k, x_ptr, data_ptr, scales_ptr, M, K,
                               stride_x, stride_d, stride_s, IN_KIND, K_MAX, BLOCK_M, BLOCK_K)
    else:
        _fp8_quantize_tile(tl.program_id(0), tl.program_id(1), x_ptr, data_ptr, scales_ptr, M, K,
                           stride_x, stride_d, stride_s, IN_KIND, K_MAX, BLOCK_M, BLOCK_K)


@triton.jit
def _fp8_dequantize_tile(pid_m, pid_k, data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o,
                         OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NT: tl.constexpr = BLOCK_K // 128
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
    # E4M3 bits in an fp32 pattern read as value * 2^-120 (subnormals too); both products are exact.
    v = (((q & 0x80) << 24) | ((q & 0x7F) << 20)).to(tl.float32, bitcast=True) * 1.329227995784916e36  # 2^120
    scale = tl.where(b3 == 0, 0x400000, tl.minimum(b3, 254) << 23).to(tl.float32, bitcast=True)  # 2^(b-127)
    bits = (v * scale).to(tl.int32, bitcast=True)
    is_nan = ((q & 0x7F) == 0x7F) | (b3 == 255)
    _store_from_f32_bits(out_ptr, rows[:, None] * stride_o + cols[None, :], mask,
                         tl.reshape(bits, [BLOCK_M, BLOCK_K]), tl.reshape(is_nan, [BLOCK_M, BLOCK_K]),
                         OUT_KIND, EXACT_BF16=False)


@triton.jit
def _fp8_dequantize_kernel(data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o, tiles_k, n_tiles,
                           OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                           PERSISTENT: tl.constexpr, NUM_STAGES: tl.constexpr):
    if PERSISTENT:
        for t in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
            _fp8_dequantize_tile(t // tiles_k, t % tiles_k, data_ptr, scales_ptr, out_ptr, M, K,
                                 stride_d, stride_s, stride_o, OUT_KIND, BLOCK_M, BLOCK_K)
    else:
        _fp8_dequantize_tile(tl.program_id(0), tl.program_id(1), data_ptr, scales_ptr, out_ptr, M, K,
                             stride_d, stride_s, stride_o, OUT_KIND, BLOCK_M, BLOCK_K)


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
                        block_k: int | None = None, num_warps: int | None = None,
                        programs_per_sm: int | None = None) -> FP8Tensor:
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
        grid, tiles_k, n_tiles, pers = launch_grid(x.device, m, k, bm, bk, programs_per_sm)
        _fp8_quantize_kernel[grid](xr, dr, sr, m, k, xr.stride(0), dr.stride(0), sr.stride(0), tiles_k, n_tiles,
                                   IN_KIND=_IN_KIND[x.dtype], K_MAX=FP8_MAX_SCALE_EXP[x.dtype],
                                   BLOCK_M=bm, BLOCK_K=bk, PERSISTENT=pers,
                                   NUM_STAGES=PERSISTENT_STAGES, num_warps=nw)
    return FP8Tensor(out.data, out.scales)


def fp8_dequantize_triton(t: FP8Tensor, dtype: torch.dtype = torch.bfloat16, *,
                          out: torch.Tensor | None = None, block_m: int | None = None,
                          block_k: int | None = None, num_warps: int | None = None,
                          programs_per_sm: int | None = None) -> torch.Tensor:
    """Decode an `FP8Tensor` to `dtype` `[..., K]` with the Triton kernel (see `codecs.dequantize_fp8`).
    The container's data/scales may be strided row views; they are read in place."""
    fn = "dequantize_fp8"
    if not isinstance(t, FP8Tensor):
        raise TypeError(f"{fn}: t must be a FP8Tensor, got {type(t).__name__}")
    shape = tuple(t.shape)
    k = shape[-1]
    out = decode_output(shape, dtype, t.device, out, fn)
    dr = rows_in(t.data.view(torch.uint8))
    sr = rows_in(t.scales)
    orow = rows_out(out, fn, "out").view(_BITS_VIEW[dtype])
    m = dr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid, tiles_k, n_tiles, pers = launch_grid(t.device, m, k, bm, bk, programs_per_sm)
        _fp8_dequantize_kernel[grid](dr, sr, orow, m, k, dr.stride(0), sr.stride(0), orow.stride(0),
                                     tiles_k, n_tiles, OUT_KIND=_IN_KIND[dtype], BLOCK_M=bm, BLOCK_K=bk,
                                     PERSISTENT=pers, NUM_STAGES=PERSISTENT_STAGES, num_warps=nw)
    return out
