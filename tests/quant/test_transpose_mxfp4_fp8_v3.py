"""Variant 3 of `mxfp4_rowwise_to_fp8_colwise` (`quant/kernels/transpose_mxfp4_fp8.py`: packed fp16
arithmetic, exact fp32 fallback per program) equals the torch reference bit for bit: on both sides of
every edge of its fp16 window (scale-byte spread 26 / 27 within a tile's block, largest byte 252 / 253
and 6 / 5, NaN rows), all-zero, -0 and single-value columns, the scale-byte-0 clamp, partial column
tiles, and the wrapper's fall-backs for inputs it cannot read as whole words."""

import pytest
import torch
from conversion_data import TRITON_DEVICE, assert_same_bits, banded_mxfp4, check_config, random_mxfp4, to_device

from mxa2a.quant.conversions import mxfp4_rowwise_to_fp8_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels import launch
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

# The interpreter runs it slowly: one configuration (four chunks per program) on small shapes on CPU.
CONFIGS = ([LaunchConfig(128, 256, 2, 3)] if TRITON_DEVICE == "cpu" else
           [LaunchConfig(128, 256, 2, 3), LaunchConfig(128, 512, 4, 3), LaunchConfig(128, 512, 2, 3), LaunchConfig(128, 1024, 8, 3),
            LaunchConfig(128, 256, 1, 3)])
NAME = "mxfp4_rowwise_to_fp8_colwise"


def check(cfg, t, monkeypatch, what=""):
    check_config(mxfp4_rowwise_to_fp8_colwise, NAME, cfg, t, monkeypatch, what)


def tile_mxfp4(m: int, k: int, g: torch.Generator, spread: int = 27, lo: int = 6,
               hi: int = 226) -> MXFP4Tensor:
    """Random codes; the scale bytes of each 128-row tile's block are base + [0, spread), base in [lo, hi)."""
    return banded_mxfp4(m, k, g, 128, spread, lo, hi)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_fp8_colwise_v3_fast_path_matches_reference(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    x = tile_mxfp4(128, 256, g)
    data = x.data.clone()
    data[:, 0:4] = 0                        # all-zero columns (8 of them)
    data[:, 4] &= 0x88                      # -0 and +0 columns
    data[5, 4] = 0x01                       # ... one of which has one nonzero value (0.5)
    data[64:96, 8:12] &= 0x11               # columns of only 0.5 / -0.5 / 0 in a quarter of the rows
    check(cfg, MXFP4Tensor(data, x.scales), monkeypatch, "zero and sparse columns")
    # the scale-byte-0 clamp (largest bytes 6..8) and the top of the window (largest byte 252)
    for lo, hi in ((6, 7), (226, 227)):
        check(cfg, tile_mxfp4(128, 256, g, 27, lo, hi), monkeypatch, f"bytes from {lo}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_fp8_colwise_v3_window_edges(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    # One edge per tensor (a program takes one path): spread 26, largest byte 252 and 6 (fast); spread
    # 27, byte 253, largest byte 5 and a NaN row (fallback).
    for rows, value in (((0, 127), (74, 100)), ((0, 127), (252, 252)), ((3, 4), (6, 0)),
                        ((0, 127), (73, 100)), ((5, 6), (253, 253)), ((3, 4), (5, 0)), ((7, 8), (255, 255))):
        x = tile_mxfp4(128, 256, g, spread=1, lo=100, hi=101)
        s = x.scales.clone()
        if value[0] <= 6:
            s[:, 1] = 0                      # a block of tiny scales: largest byte value[0]
        elif value[0] >= 252:
            s[:, 1] = 240                    # a block near the top: only the largest byte decides
        s[rows[0], 1], s[rows[1], 1] = value
        data = x.data.clone()
        data[1:, 16:20] = 0                  # columns 32-39: only row 0 (the smallest scale) is nonzero,
        data[0, 16:18] = 0x11                # with 0.5 in four of them (its smallest decoded value)
        check(cfg, MXFP4Tensor(data, s), monkeypatch, f"rows {rows} bytes {value}")
    check(cfg, tile_mxfp4(256, 384, g), monkeypatch, "fast path, partial column tiles")


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("scale_range", ["all", "realistic", "bottom", "top"])
def test_fp8_colwise_v3_random_bytes_and_partial_tiles(seed, monkeypatch, cfg, scale_range):
    # 384 columns: with 256-column programs the last one is half full (masked loads and stores)
    check(cfg, random_mxfp4(128, 384, scale_range), monkeypatch, scale_range)


@pytest.mark.parametrize("cfg", CONFIGS[:1], ids=str)
def test_fp8_colwise_v3_falls_back_for_unaligned_words(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    x = tile_mxfp4(128, 256, g)
    # K = 96 (scale rows of 3 bytes) and a code row stride that is not a multiple of 8 bytes
    check(cfg, tile_mxfp4(128, 96, g), monkeypatch, "K = 96")
    wire = torch.zeros(128, 128 + 8 + 4, dtype=torch.uint8)
    wire[:, :128], wire[:, 128:136] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :128], wire[:, 128:136])
    monkeypatch.setitem(launch.CONFIGS, NAME, cfg)
    got = mxfp4_rowwise_to_fp8_colwise(to_device(view, TRITON_DEVICE), backend="triton")
    assert_same_bits(to_device(got, "cpu"), mxfp4_rowwise_to_fp8_colwise(x, backend="torch"), "stride 140")
