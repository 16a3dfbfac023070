"""The register-only variants of the MXFP4 row-wise -> column-wise kernels (`LaunchConfig.variant` 2)
equal the torch references bit for bit, for several tiles and warp counts: random many-binade bytes,
NaN blocks, zero blocks, scale spreads above 2^14, partial column tiles, strided wire rows, and the
fall-back for rows that are not 4-byte aligned."""

import pytest
import torch
from conversion_data import TRITON_DEVICE, assert_same_bits, random_mxfp4, to_device

from mxa2a.quant.conversions import mxfp4_rowwise_to_colwise, mxfp4_rowwise_to_fp8_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels import launch
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

MX_CONFIGS = [LaunchConfig(32, 256, 1, 2), LaunchConfig(64, 512, 2, 2)]
FP8_CONFIGS = [LaunchConfig(128, 256, 1, 2), LaunchConfig(128, 512, 2, 2)]


def check(fn, name, cfg, t, monkeypatch):
    monkeypatch.setitem(launch.CONFIGS, name, cfg)
    got = to_device(fn(to_device(t, TRITON_DEVICE), backend="triton"), "cpu")
    assert_same_bits(got, fn(t, backend="torch"), f"{name} {cfg}")
    return got


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


@pytest.mark.parametrize("cfg", MX_CONFIGS, ids=str)
@pytest.mark.parametrize("scale_range", ["all", "realistic", "bottom", "top"])
def test_mxfp4_colwise_variants_match_reference(seed, monkeypatch, cfg, scale_range):
    x = random_mxfp4(64, 512, scale_range)
    check(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, x, monkeypatch)


@pytest.mark.parametrize("cfg", MX_CONFIGS, ids=str)
def test_mxfp4_colwise_variants_edge_cases_and_partial_tiles(seed, monkeypatch, cfg):
    for k in (512, 288):  # 288: a partial column tile for every block_k
        check(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(128, k), monkeypatch)
    # 160 rows: the last program of a 64-row tile has one 32-row block
    check(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(160, 256), monkeypatch)


@pytest.mark.parametrize("cfg", MX_CONFIGS, ids=str)
def test_mxfp4_colwise_variants_read_strided_and_misaligned_rows(seed, monkeypatch, cfg):
    x = edge_mxfp4(128, 256)
    for extra in (8, 5):  # 5: rows not 4-byte aligned, the wrapper falls back to variant 1
        wire = torch.empty(128, 128 + 8 + extra, dtype=torch.uint8)
        wire[:, :128], wire[:, 128:136] = x.data, x.scales
        view = MXFP4Tensor(wire[:, :128], wire[:, 128:136])
        monkeypatch.setitem(launch.CONFIGS, "mxfp4_rowwise_to_colwise", cfg)
        got = mxfp4_rowwise_to_colwise(to_device(view, TRITON_DEVICE), backend="triton")
        want = mxfp4_rowwise_to_colwise(x, backend="torch")
        assert_same_bits(to_device(got, "cpu"), want, f"{cfg} +{extra}")


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
@pytest.mark.parametrize("scale_range", ["all", "realistic", "bottom", "top"])
def test_fp8_colwise_variants_match_reference(seed, monkeypatch, cfg, scale_range):
    x = random_mxfp4(128, 512, scale_range)
    check(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg, x, monkeypatch)


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
def test_fp8_colwise_variants_edge_cases_and_partial_tiles(seed, monkeypatch, cfg):
    for k in (512, 288):
        check(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg, edge_mxfp4(128, k),
              monkeypatch)


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
def test_fp8_colwise_variants_round_e4m3_subnormals(seed, monkeypatch, cfg):
    # One big row per tile, the others 2^8 .. 2^20 smaller: their values land on E4M3 subnormals and
    # below (rounded to nearest even, never flushed before rounding).
    x = random_mxfp4(128, 256, "realistic")
    scales = torch.full((128, 8), 140, dtype=torch.uint8)
    scales[1:] = (140 - torch.randint(8, 21, (127, 8))).to(torch.uint8)
    check(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg,
          MXFP4Tensor(x.data, scales), monkeypatch)


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
def test_fp8_colwise_variants_read_strided_and_misaligned_rows(seed, monkeypatch, cfg):
    x = edge_mxfp4(128, 256)
    for extra in (8, 5):
        wire = torch.empty(128, 128 + 8 + extra, dtype=torch.uint8)
        wire[:, :128], wire[:, 128:136] = x.data, x.scales
        view = MXFP4Tensor(wire[:, :128], wire[:, 128:136])
        monkeypatch.setitem(launch.CONFIGS, "mxfp4_rowwise_to_fp8_colwise", cfg)
        got = mxfp4_rowwise_to_fp8_colwise(to_device(view, TRITON_DEVICE), backend="triton")
        want = mxfp4_rowwise_to_fp8_colwise(x, backend="torch")
        assert_same_bits(to_device(got, "cpu"), want, f"{cfg} +{extra}")
