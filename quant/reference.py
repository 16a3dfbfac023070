"""Pure-torch reference codecs: `docs/FORMATS.md`, line by line.

These functions define the bits every fast kernel must reproduce. They run on any device and favour
obviously-exact arithmetic over speed: values are widened to float64 (which holds every fp32 value,
every power of two 2^-e the formats use, and every product of the two without rounding), exponents come
from `torch.frexp` (exact), and rounding to the element grid is `torch.round` (half to even) on
`|y| / quantum` where the quantum is a power of two, so the division is exact too. No floating log2/exp2.

Conventions fixed here where the spec leaves freedom:
- A NaN/Inf FP8 tile stores element bytes 0x00 (like the MXFP4 rule "element codes 0") beside scale 255.
- Decoded NaNs are the canonical quiet NaN of the output dtype (fp32 0x7FC00000, bf16 0x7FC0,
  fp16 0x7E00), whatever the sign or payload of the NaN that caused them.
- Decoding rounds the exact value once to the output dtype (RNE; overflow gives +-Inf). For fp32 and
  bf16 output of MXFP4 this never rounds (FORMATS.md); fp16 output can underflow or overflow.
"""

from __future__ import annotations

import torch

from .checks import check_float_input, check_out_dtype
from .formats import (E2M1_MAX, E4M3_DTYPE, E4M3_MAX, E8M0_BIAS, E8M0_MIN_EXP, E8M0_NAN, FP8_MAX_SCALE_EXP,
                      FP8_TILE, MXFP4_BLOCK, MXFP4_MAX_SCALE_EXP, FP8Tensor, MXFP4Tensor, check_scale_mode)

__all__ = [
    "quantize_mxfp4", "dequantize_mxfp4", "quantize_fp8", "dequantize_fp8",
    "round_to_e2m1_codes", "e2m1_codes_to_values", "e4m3_rne", "floor_log2", "pow2",
]

_F32_MIN_NORMAL = 2.0 ** -126
_E2M1_CODE_OF_TWICE_MAG = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 8: 6, 12: 7}  # 2*|value| -> code
_E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """`floor(log2(a))` for positive finite float64 `a`, exactly (int64). From frexp: a = m * 2^x, m in [0.5, 1)."""
    _, x = torch.frexp(a)
    return x.to(torch.int64) - 1


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as float64 for integer `e` in [-1022, 1023], built from its bit pattern. (`torch.ldexp` is
    `x * pow(2, e)`, and CUDA's double `pow` is not exact for every integer exponent: seen on an H100,
    where it moved RNE ties.)"""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _nan_blocks(v: torch.Tensor) -> torch.Tensor:
    """[..., nb, block] -> [..., nb] bool: the block holds a NaN or +-Inf."""
    return (~torch.isfinite(v)).any(dim=-1)


def round_to_e2m1_codes(y: torch.Tensor) -> torch.Tensor:
    """Round scaled values `y` (any float dtype, finite) to E2M1 codes (uint8 0..15): magnitude to
    the nearest of 0, 0.5, 1, 1.5, 2, 3, 4, 6 with ties to even, saturating at 6; bit 3 is the sign
    of `y` (also for magnitudes that round to 0, and for -0)."""
    y = y.to(torch.float64)
    mag = y.abs()
    # Grid spacing is 0.5 below 2, 1 in [2, 4), 2 from 4 on; |y|/quantum is exact (power of two).
    quantum = torch.where(mag < 2, 0.5, torch.where(mag < 4, 1.0, 2.0)).to(torch.float64)
    rounded = torch.clamp(torch.round(mag / quantum) * quantum, max=E2M1_MAX)
    twice = (rounded * 2).to(torch.int64)
    code = torch.zeros_like(twice)
    for t, c in _E2M1_CODE_OF_TWICE_MAG.items():
        code = torch.where(twice == t, c, code)
    sign = torch.signbit(y).to(torch.int64)
    return (code | (sign << 3)).to(torch.uint8)


def e2m1_codes_to_values(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) -> float64 values (code 8 is -0.0)."""
    c = codes.to(torch.int64)
    mag = _E2M1_VALUES.to(codes.device)[c & 7]
    return torch.where((c & 8) != 0, -mag, mag)


def quantize_mxfp4(x: torch.Tensor, scale_mode: str = "rceil") -> MXFP4Tensor:
    """MXFP4-encode `x` (fp32/bf16/fp16 `[..., K]`, K a multiple of 32) -> `MXFP4Tensor` with contiguous
    `data` uint8 `[..., K/2]` and `scales` uint8 `[..., K/32]`, exactly per FORMATS.md (with the scale
    cap `e <= MXFP4_MAX_SCALE_EXP[x.dtype]` of its section "Scales near the top of the input dtype")."""
    check_scale_mode(scale_mode)
    check_float_input(x, MXFP4_BLOCK, "quantize_mxfp4")
    lead, k = x.shape[:-1], x.shape[-1]
    v = x.to(torch.float64).reshape(*lead, k // MXFP4_BLOCK, MXFP4_BLOCK)  # exact widening

    # 1. NaN / Inf blocks.
    bad = _nan_blocks(v)
    # 2. Shared exponent e.
    amax = torch.where(bad, 0.0, v.abs().amax(dim=-1))
    tiny = amax < _F32_MIN_NORMAL  # 0 or an fp32 subnormal
    f = floor_log2(torch.where(tiny, 1.0, amax))
    e = f - 2
    if scale_mode == "rceil":
        e = e + (amax / pow2(f) > 1.5).to(torch.int64)
    # The upper clamp keeps 6 * 2^e finite in x's dtype: in its top binade rceil takes floor's scale.
    e = torch.where(tiny, E8M0_MIN_EXP, e).clamp(E8M0_MIN_EXP, MXFP4_MAX_SCALE_EXP[x.dtype])
    scales = torch.where(bad, E8M0_NAN, e + E8M0_BIAS).to(torch.uint8)
    # 3. Elements: y = v * 2^-e (exact in float64), RNE to E2M1 with saturation, sign kept.
    y = torch.where(bad.unsqueeze(-1), 0.0, v) * pow2(-e).unsqueeze(-1)
    codes = round_to_e2m1_codes(y)
    codes = torch.where(bad.unsqueeze(-1), 0, codes).reshape(*lead, k)
    # Packing: element 2i in the low nibble, 2i+1 in the high nibble.
    pairs = codes.reshape(*lead, k // 2, 2)
    data = (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()
    return MXFP4Tensor(data, scales.reshape(*lead, k // MXFP4_BLOCK).contiguous(), scale_mode)


def dequantize_mxfp4(t: MXFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Decode an `MXFP4Tensor` to `dtype` (fp32/bf16/fp16) `[..., K]`: `(-1)^s * E2M1[c & 7] * 2^(b-127)`,
    every element of a block with `b = 255` NaN."""
    check_out_dtype(dtype, "dequantize_mxfp4")
    lead, kh = t.data.shape[:-1], t.data.shape[-1]
    k = 2 * kh
    d = t.data.to(torch.int64)
    codes = torch.stack([d & 0xF, d >> 4], dim=-1).reshape(*lead, k // MXFP4_BLOCK, MXFP4_BLOCK)
    b = t.scales.to(torch.int64)
    val = e2m1_codes_to_values(codes) * pow2(b - E8M0_BIAS).unsqueeze(-1)  # exact in float64
    out = _round_once(val, dtype)
    nan = (b == E8M0_NAN).unsqueeze(-1).expand_as(codes)
    return torch.where(nan, _canonical_nan(dtype, t.data.device), out).reshape(*lead, k)


def e4m3_rne(y: torch.Tensor) -> torch.Tensor:
    """Round finite `y` with `|y| <= 448` to the nearest E4M3 value, ties to even, subnormals included
    (spacing 2^-9 below 2^-6, else 2^(floor(log2|y|) - 3)); returns float8_e4m3fn (exact conversion of
    an already-representable value; -0 stays -0)."""
    y64 = y.to(torch.float64)
    mag = y64.abs()
    fy = floor_log2(torch.where(mag > 0, mag, 1.0)).clamp(min=-6)
    quantum = pow2(fy - 3)
    r = torch.round(mag / quantum) * quantum
    if bool((r > E4M3_MAX).any()):
        raise ValueError("e4m3_rne: |y| must be <= 448 (the codecs never need saturation)")
    r = torch.where(torch.signbit(y64), -r, r)
    return r.to(torch.float32).to(E4M3_DTYPE)  # r is exactly representable: no rounding here


def quantize_fp8(x: torch.Tensor) -> FP8Tensor:
    """FP8-encode `x` (fp32/bf16/fp16 `[..., K]`, K a multiple of 128) -> `FP8Tensor` with contiguous
    `data` float8_e4m3fn `[..., K]` and `scales` uint8 `[..., K/128]` (byte k + 127; 255 = NaN tile).
    `k <= FP8_MAX_SCALE_EXP[x.dtype]`; elements above 448 * 2^k (only there) saturate to 448."""
    check_float_input(x, FP8_TILE, "quantize_fp8")
    lead, k = x.shape[:-1], x.shape[-1]
    v = x.to(torch.float64).reshape(*lead, k // FP8_TILE, FP8_TILE)
    bad = _nan_blocks(v)
    amax = torch.where(bad, 0.0, v.abs().amax(dim=-1))
    tiny = amax < _F32_MIN_NORMAL
    # k = ceil(log2(amax / 448)): the smallest k with amax <= 448 * 2^k. With f = floor(log2 amax)
    # it is f - 8 or f - 7 (448 = 1.75 * 2^8), decided by an exact comparison.
    f = floor_log2(torch.where(tiny, 1.0, amax))
    kk = f - 8 + (amax > E4M3_MAX * pow2(f - 8)).to(torch.int64)
    # The upper clamp keeps 448 * 2^k finite in x's dtype; elements above it there saturate to 448.
    kk = torch.where(tiny, E8M0_MIN_EXP, kk).clamp(E8M0_MIN_EXP, FP8_MAX_SCALE_EXP[x.dtype])
    scales = torch.where(bad, E8M0_NAN, kk + E8M0_BIAS).to(torch.uint8)
    y = torch.where(bad.unsqueeze(-1), 0.0, v) * pow2(-kk).unsqueeze(-1)
    q = e4m3_rne(y.clamp(-E4M3_MAX, E4M3_MAX)).view(torch.uint8)
    q = torch.where(bad.unsqueeze(-1), 0, q).to(torch.uint8).view(E4M3_DTYPE)
    return FP8Tensor(q.reshape(*lead, k).contiguous(), scales.reshape(*lead, k // FP8_TILE).contiguous())


def dequantize_fp8(t: FP8Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Decode an `FP8Tensor` to `dtype` `[..., K]`: `e4m3 * 2^(b-127)`, NaN for E4M3 NaN bytes and for
    every element of a tile with `b = 255`."""
    check_out_dtype(dtype, "dequantize_fp8")
    lead, k = t.data.shape[:-1], t.data.shape[-1]
    q = t.data.view(torch.uint8).to(torch.int64).reshape(*lead, k // FP8_TILE, FP8_TILE)
    # E4M3 value from its bits: exponent field E, mantissa M; E = 0 is subnormal.
    ef, mf = (q >> 3) & 0xF, q & 7
    sig = torch.where(ef == 0, mf, mf + 8)
    b = t.scales.to(torch.int64).unsqueeze(-1)
    val = sig.to(torch.float64) * pow2(torch.clamp(ef, min=1) - 10 + b - E8M0_BIAS)
    val = torch.where((q & 0x80) != 0, -val, val)
    out = _round_once(val, dtype)
    nan = ((q & 0x7F) == 0x7F) | (b == E8M0_NAN)
    return torch.where(nan, _canonical_nan(dtype, q.device), out).reshape(*lead, k)


# --- shared checks and helpers ---

def _round_once(val: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Decoded values have <= 4 significant bits and exponents >= -136, so float64 -> fp32 is exact
    # (or overflows to Inf, which is the correctly rounded result); fp32 -> dtype is the one rounding.
    return val.to(torch.float32).to(dtype)


def _canonical_nan(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    bits = {torch.float32: (0x7FC00000, torch.int32), torch.bfloat16: (0x7FC0, torch.int16),
            torch.float16: (0x7E00, torch.int16)}[dtype]
    return torch.tensor(bits[0], dtype=bits[1], device=device).view(dtype)
