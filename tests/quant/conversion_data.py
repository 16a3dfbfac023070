"""Random quantized inputs and bit-level comparisons for the conversion tests.

Random containers are built from random bytes, not from quantized floats, so that every code and every
scale byte shows up (E4M3 subnormals, 448, scale bytes 0 / 254 / 255 and the overflow corner near the
top of the E8M0 range), next to "realistic" ranges where scales stay near 2^0.
"""

from __future__ import annotations

import pytest
import torch

from mxa2a.quant import reference
from mxa2a.quant.kernels import launch
from mxa2a.quant.formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor

# Where backend="triton" runs in the CPU-sized tests: the GPU when there is one (compiled kernels),
# else the Triton interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Scale-byte ranges [lo, hi) for the random inputs: every byte (NaN 255 included), realistic
# activations, the bottom (fp32 subnormals, clamp at -127) and the top (fp32 overflow) of E8M0.
SCALE_RANGES = {"all": (0, 256), "realistic": (112, 140), "bottom": (0, 12), "top": (240, 256)}


def random_fp8(rows: int, k: int, scale_range: str = "realistic", nan_codes: bool = False,
               device: str = "cpu") -> FP8Tensor:
    """Random E4M3 bytes (NaN codes 0x7F / 0xFF replaced unless `nan_codes`) and random scale bytes."""
    data = torch.randint(0, 256, (rows, k), dtype=torch.uint8, device=device)
    if not nan_codes:
        data = torch.where((data & 0x7F) == 0x7F, data & 0xF7, data)  # 0x7F -> 0x77, 0xFF -> 0xF7
    lo, hi = SCALE_RANGES[scale_range]
    scales = torch.randint(lo, hi, (rows, k // FP8_TILE), dtype=torch.uint8, device=device)
    return FP8Tensor(data.view(E4M3_DTYPE), scales)


def random_mxfp4(rows: int, k: int, scale_range: str = "realistic", device: str = "cpu",
                 scale_mode: str = "rceil") -> MXFP4Tensor:
    """Random packed E2M1 bytes (every code, -0 included) and random E8M0 scale bytes."""
    lo, hi = SCALE_RANGES[scale_range]
    data = torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8, device=device)
    scales = torch.randint(lo, hi, (rows, k // MXFP4_BLOCK), dtype=torch.uint8, device=device)
    return MXFP4Tensor(data, scales, scale_mode)


def banded_mxfp4(m: int, k: int, g: torch.Generator, rows: int, spread: int, lo: int,
                 hi: int) -> MXFP4Tensor:
    """Random codes; the scale bytes of each block of `rows` rows (one 32-column block) are
    base + [0, spread) with one base in [lo, hi) per band: data inside or just outside an exponent window."""
    data = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8, generator=g)
    base = torch.randint(lo, hi, (m // rows, 1, k // MXFP4_BLOCK), generator=g)
    off = torch.randint(0, spread, (m // rows, rows, k // MXFP4_BLOCK), generator=g)
    return MXFP4Tensor(data, (base + off).clamp(0, 255).reshape(m, k // MXFP4_BLOCK).to(torch.uint8))


def edge_mxfp4(m: int, k: int) -> MXFP4Tensor:
    """Random bytes with every kind of block: all scales, NaN rows, zero blocks, one nonzero, -0,
    a column of tiny values under huge row scales, and rows whose scales differ by more than 2^14."""
    t = random_mxfp4(m, k, "all")
    data, scales = t.data.clone(), t.scales.clone()
    data[:32, :16] = 0                     # a zero 32x32 tile
    data[32:64, 16:32] = 0x88              # -0 everywhere
    data[40, 20] = 0x07                    # one nonzero (6) among -0
    scales[0:32, 2 % (k // 32)] = 255      # NaN row block
    scales[64:96, 0] = 250                 # big scales, zero data except one tiny row:
    data[64:96, 0:16] = 0
    scales[70, 0], data[70, 3] = 1, 0x21   # column 6 and 7 of the tile: only row 70 is nonzero
    scales[96:128, 1] = torch.randint(100, 120, (32,)).to(torch.uint8)
    scales[100, 1] = 140                   # a spread of 2^20..2^40 within one tile
    return MXFP4Tensor(data, scales)


def to_device(t, device):
    """The same container with its tensors on `device` (a no-op, views kept, when already there)."""
    if isinstance(t, MXFP4Tensor):
        return MXFP4Tensor(t.data.to(device), t.scales.to(device), t.scale_mode)
    return FP8Tensor(t.data.to(device), t.scales.to(device))


def fp8_from_bytes(data: torch.Tensor, scales: torch.Tensor) -> FP8Tensor:
    return FP8Tensor(data.to(torch.uint8).view(E4M3_DTYPE), scales.to(torch.uint8))


def assert_same_bits(got, want, what: str = "") -> None:
    """Codes and scale bytes identical (FP8Tensor or MXFP4Tensor), with the first mismatch in the message."""
    assert type(got) is type(want), f"{what}: {type(got).__name__} vs {type(want).__name__}"
    gd, wd = got.data.view(torch.uint8).cpu(), want.data.view(torch.uint8).cpu()
    got_s, want_s = got.scales.cpu(), want.scales.cpu()
    assert gd.shape == wd.shape and got_s.shape == want_s.shape, (
        f"{what}: shapes {tuple(gd.shape)}/{tuple(got_s.shape)} vs {tuple(wd.shape)}/{tuple(want_s.shape)}")
    for name, g, w in (("scales", got_s, want_s), ("data", gd, wd)):
        bad = (g != w).nonzero()
        assert bad.numel() == 0, (f"{what}: {bad.shape[0]} {name} bytes differ, first at {tuple(bad[0].tolist())}: "
                                  f"got {int(g[tuple(bad[0])]):#04x}, want {int(w[tuple(bad[0])]):#04x}")


def check_config(fn, cfg, t, what: str = "", **kwargs):
    """`fn(t, config=cfg)` on TRITON_DEVICE equals its torch backend bit for bit (`cfg` None: the
    default configuration); returns the Triton result, on the CPU."""
    got = to_device(fn(to_device(t, TRITON_DEVICE), backend="triton", config=cfg, **kwargs), "cpu")
    assert_same_bits(got, fn(t, backend="torch", **kwargs), f"{fn.__name__} {cfg} {what}")
    return got


def check_transpose_shapes(fn, tile: int, rows_bad, t3, t0) -> None:
    """A transpose refuses rows that are not a multiple of `tile` (`rows_bad`, both backends), 3-D
    containers (`t3`) and plain tensors, and turns an empty `[0, K]` input `t0` into `[K, 0]`."""
    for backend in ("triton", "torch"):
        with pytest.raises(ValueError, match=f"multiple of {tile}"):
            fn(rows_bad, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        fn(t3)
    with pytest.raises(TypeError, match="Tensor"):
        fn(torch.zeros(128, 128))
    assert check_config(fn, None, t0).shape == (t0.shape[1], 0)


def one_config_per_kernel(name: str) -> list:
    """The default configuration of conversion `name` and the first sweep entry of each of its other kernels."""
    seen, subset = set(), []
    for c in [launch.CONFIGS[name], *launch.SWEEP[name]]:
        if c.variant not in seen:
            subset.append(c)
            seen.add(c.variant)
    return subset


def live_configs(name: str) -> list:
    """Configurations that run every kernel of conversion `name`: on a GPU the default and all of
    `launch.SWEEP[name]`; under the interpreter, which has no register layouts (configurations of one
    kernel run the same code there), `one_config_per_kernel(name)`."""
    if TRITON_DEVICE == "cuda":
        return [launch.CONFIGS[name]] + [c for c in launch.SWEEP[name] if c != launch.CONFIGS[name]]
    return one_config_per_kernel(name)


def decoded(t) -> torch.Tensor:
    """Exact fp32 values of a container (reference decoders)."""
    if isinstance(t, FP8Tensor):
        return reference.dequantize_fp8(t, torch.float32)
    return reference.dequantize_mxfp4(t, torch.float32)


def assert_same_values(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Equal values, NaN where NaN (the signs of zeros are compared too)."""
    assert got.shape == want.shape, f"{what}: {tuple(got.shape)} vs {tuple(want.shape)}"
    same = (got == want) | (got.isnan() & want.isnan())
    same &= (torch.signbit(got) == torch.signbit(want)) | got.isnan()
    bad = (~same).nonzero()
    assert bad.numel() == 0, (f"{what}: {bad.shape[0]} values differ, first at {tuple(bad[0].tolist())}: "
                              f"{got[tuple(bad[0])].item()} vs {want[tuple(bad[0])].item()}")
