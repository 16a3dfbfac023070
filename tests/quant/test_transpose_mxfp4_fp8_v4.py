"""Variant 4 of `mxfp4_rowwise_to_fp8_colwise` (`quant/kernels/transpose_mxfp4_fp8.py`: T tiles x S slabs
of 128 x 128 per program, one warp each, variant 3's arithmetic, the T tiles' scale bytes of a column
gathered across warps into one store) equals the torch reference bit for bit: fast path with zero, -0
and sparse columns in every tile and slab, the window edges in either tile (one program takes one path),
the scale-byte-0 clamp and the top of the window, random scale bytes (fallback), and the wrapper's
switch to variant 3 where the input is not a whole number of programs, and its configuration checks."""

import pytest
import torch
from conversion_data import TRITON_DEVICE, banded_mxfp4, check_config, random_mxfp4, to_device

from mxa2a.quant.conversions import mxfp4_rowwise_to_fp8_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels import launch
from mxa2a.quant.kernels.launch import LaunchConfig

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

# The interpreter runs it slowly: the default configuration (2 tiles x 2 slabs) on one-program shapes.
CONFIGS = ([LaunchConfig(256, 256, 4, 4)] if TRITON_DEVICE == "cpu" else
           [LaunchConfig(256, 256, 4, 4), LaunchConfig(256, 512, 8, 4), LaunchConfig(512, 256, 8, 4),
            LaunchConfig(128, 256, 2, 4), LaunchConfig(256, 128, 2, 4), LaunchConfig(128, 128, 1, 4),
            LaunchConfig(1024, 128, 8, 4)])
NAME = "mxfp4_rowwise_to_fp8_colwise"


def check(cfg, t, monkeypatch, what=""):
    check_config(mxfp4_rowwise_to_fp8_colwise, NAME, cfg, t, monkeypatch, what)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_fp8_colwise_v4_fast_path_matches_reference(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    m, k = cfg.block_m, cfg.block_k
    x = banded_mxfp4(m, k, g, 128, 27, 6, 226)
    data = x.data.clone()
    for r0 in range(0, m, 128):                  # in every tile and slab
        for c0 in range(0, k // 2, 64):
            data[r0:r0 + 128, c0:c0 + 2] = 0           # all-zero columns
            data[r0:r0 + 128, c0 + 2] &= 0x88          # -0 and +0 columns, one with a single 0.5
            data[r0 + 5, c0 + 2] = 0x01
            data[r0 + 64:r0 + 96, c0 + 8:c0 + 12] &= 0x11   # only 0.5 / -0.5 / 0 in a quarter of the rows
    check(cfg, MXFP4Tensor(data, x.scales), monkeypatch, "zero and sparse columns")
    # the scale-byte-0 clamp (largest bytes 6..8) and the top of the window (largest byte 252)
    for lo, hi in ((6, 7), (226, 227)):
        check(cfg, banded_mxfp4(m, k, g, 128, 27, lo, hi), monkeypatch, f"bytes from {lo}")


@pytest.mark.parametrize("cfg", CONFIGS[:1], ids=str)
@pytest.mark.parametrize("tile", [0, 1])
def test_fp8_colwise_v4_window_edges(seed, monkeypatch, cfg, tile):
    g = torch.Generator().manual_seed(seed)
    m, k = cfg.block_m, cfg.block_k
    r = 128 * tile
    # One edge per tensor, in tile `tile`: spread 26, largest byte 252 (fast); spread 27, byte 253,
    # largest byte 5, a NaN row (fallback for the whole program).
    for rows, value in (((r, r + 127), (74, 100)), ((r, r + 127), (252, 252)), ((r, r + 127), (73, 100)),
                        ((r + 5, r + 6), (253, 253)), ((r + 3, r + 4), (5, 0)), ((r + 7, r + 8), (255, 255))):
        x = banded_mxfp4(m, k, g, 128, 1, 100, 101)
        s = x.scales.clone()
        if value[0] <= 6:
            s[:, 1] = 0
        elif value[0] >= 252:
            s[:, 1] = 240
        s[rows[0], 1], s[rows[1], 1] = value
        data = x.data.clone()
        data[:, 16:20] = 0                   # columns 32-39: only the smallest-scale row is nonzero
        data[rows[0], 16:18] = 0x11
        check(cfg, MXFP4Tensor(data, s), monkeypatch, f"rows {rows} bytes {value}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("scale_range", ["all", "realistic"])
def test_fp8_colwise_v4_random_bytes(seed, monkeypatch, cfg, scale_range):
    check(cfg, random_mxfp4(cfg.block_m, cfg.block_k, scale_range), monkeypatch, scale_range)


@pytest.mark.parametrize("cfg", CONFIGS[:1], ids=str)
def test_fp8_colwise_v4_partial_programs_use_variant_3(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    m, k = cfg.block_m, cfg.block_k
    check(cfg, banded_mxfp4(m + 128, k, g, 128, 27, 6, 226), monkeypatch, "rows not a whole program")
    check(cfg, banded_mxfp4(m, k + 128, g, 128, 27, 6, 226), monkeypatch, "columns not a whole program")


@pytest.mark.parametrize("bad", [LaunchConfig(256, 256, 2, 4), LaunchConfig(384, 128, 3, 4),
                                 LaunchConfig(256, 1024, 16, 4), LaunchConfig(256, 200, 4, 4),
                                 LaunchConfig(128, 256, 8, 3)], ids=str)
def test_fp8_colwise_v3_v4_reject_bad_configurations(monkeypatch, bad):
    monkeypatch.setitem(launch.CONFIGS, NAME, bad)
    x = random_mxfp4(256, 256, "realistic")
    with pytest.raises(ValueError, match="CONFIGS"):
        mxfp4_rowwise_to_fp8_colwise(to_device(x, TRITON_DEVICE), backend="triton")
