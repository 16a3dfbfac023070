"""Format facts and the quantized-tensor containers.

Constants are those of `docs/FORMATS.md` (OCP Microscaling v1.0 for MXFP4; E4M3 with 1x128
power-of-two tiles for FP8). `MXFP4Tensor` and `FP8Tensor` are the only way quantized data travels
between the codecs, `comm/` and `moe/`: frozen dataclasses that check their fields when built and
know the logical shape of what they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# --- MXFP4: E2M1 elements, one E8M0 scale per 32 (FORMATS.md, "MXFP4") ---
MXFP4_BLOCK = 32
E2M1_MAX = 6.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # by code 0..7; bit 3 is the sign
E8M0_BIAS = 127
E8M0_NAN = 255  # scale byte of a block that held NaN or Inf
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127

# --- FP8: E4M3 elements, one UE8M0 power-of-two scale per 128 (FORMATS.md, "FP8") ---
FP8_TILE = 128
E4M3_MAX = 448.0
E4M3_DTYPE = torch.float8_e4m3fn

# --- Scales near the top of the input dtype (FORMATS.md, "Scales near the top of the input dtype") ---
# The largest scale exponent whose full-scale value (6 * 2^e for MXFP4, 448 * 2^k for FP8) is finite in
# the input dtype: its top binade (2^127 for fp32 / bf16, 2^15 for fp16) minus 2 (6 = 1.5 * 2^2) or 8
# (448 = 1.75 * 2^8). One more would let an element round to 2^128 (2^16): +-Inf in that dtype.
MXFP4_MAX_SCALE_EXP = {torch.float32: 125, torch.bfloat16: 125, torch.float16: 13}
FP8_MAX_SCALE_EXP = {torch.float32: 119, torch.bfloat16: 119, torch.float16: 7}

SCALE_MODES = ("floor", "rceil")
FLOAT_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_scale_mode(scale_mode: str) -> str:
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    return scale_mode


def _check_pair(name: str, data: torch.Tensor, scales: torch.Tensor, data_dtype: torch.dtype,
                data_per_scale: int, elems_per_data: int, block: int) -> None:
    if not isinstance(data, torch.Tensor) or data.dtype != data_dtype:
        got = data.dtype if isinstance(data, torch.Tensor) else type(data).__name__
        raise TypeError(f"{name}.data must be a {data_dtype} tensor, got {got}")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.uint8:
        got = scales.dtype if isinstance(scales, torch.Tensor) else type(scales).__name__
        raise TypeError(f"{name}.scales must be a torch.uint8 tensor (E8M0 bytes), got {got}")
    if data.dim() < 1 or scales.dim() != data.dim():
        raise ValueError(f"{name}: data and scales must have the same rank >= 1, "
                         f"got data {tuple(data.shape)} and scales {tuple(scales.shape)}")
    if data.shape[:-1] != scales.shape[:-1] or data.shape[-1] != scales.shape[-1] * data_per_scale:
        k = data.shape[-1] * elems_per_data
        raise ValueError(f"{name}: for data of shape {tuple(data.shape)} (K = {k}) scales must have shape "
                         f"{tuple(data.shape[:-1]) + (k // block,)}, got {tuple(scales.shape)}")
    if data.device != scales.device:
        raise ValueError(f"{name}: data is on {data.device} but scales on {scales.device}")


@dataclass(frozen=True)
class MXFP4Tensor:
    """MXFP4 values: `data` uint8 `[..., K/2]` (two E2M1 codes a byte, element 2i in the low nibble)
    and `scales` uint8 `[..., K/32]` (E8M0 bytes, 255 = NaN block). `scale_mode` records how the
    scales were chosen (`"floor"` or `"rceil"`); decoding does not depend on it."""

    data: torch.Tensor
    scales: torch.Tensor
    scale_mode: str = "rceil"

    def __post_init__(self) -> None:
        _check_pair("MXFP4Tensor", self.data, self.scales, torch.uint8,
                    MXFP4_BLOCK // 2, 2, MXFP4_BLOCK)
        check_scale_mode(self.scale_mode)

    @property
    def shape(self) -> torch.Size:
        """Logical shape `[..., K]` of the values held."""
        return torch.Size((*self.data.shape[:-1], self.data.shape[-1] * 2))

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scales.numel()

    def numel(self) -> int:
        return self.data.numel() * 2


@dataclass(frozen=True)
class FP8Tensor:
    """FP8 values: `data` float8_e4m3fn `[..., K]` and `scales` uint8 `[..., K/128]`, one UE8M0 byte
    `k + 127` per 1x128 tile meaning `value = data * 2^k` (255 = NaN tile)."""

    data: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        _check_pair("FP8Tensor", self.data, self.scales, E4M3_DTYPE, FP8_TILE, 1, FP8_TILE)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scales.numel()

    def numel(self) -> int:
        return self.data.numel()

    def scale_inv(self) -> torch.Tensor:
        """The tile scales as fp32 `2^k` (NaN for byte 255): the form DeepEP / DeepGEMM take."""
        b = self.scales.to(torch.int32)
        # From the bit pattern (ldexp is not exact on CUDA): byte 0 is the fp32 subnormal 2^-127.
        out = torch.where(b == 0, 0x400000, b << 23).view(torch.float32)
        return torch.where(b == E8M0_NAN, torch.full_like(out, float("nan")), out)
