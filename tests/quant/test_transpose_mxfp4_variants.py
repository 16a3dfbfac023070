"""The register-only variants of the MXFP4 row-wise -> column-wise kernels (`LaunchConfig.variant` 2, and
3 and 4 of `mxfp4_rowwise_to_colwise`) equal the torch references bit for bit, for several tiles and warp
counts: random many-binade bytes, NaN blocks, zero blocks, scale spreads above 2^14, partial column
tiles, strided wire rows, and the fall-backs (rows that are not 4-byte aligned; partial programs of
variant 4)."""

import pytest
import torch
from conversion_data import TRITON_DEVICE, assert_same_bits, banded_mxfp4, check_config, random_mxfp4, to_device

from mxa2a.quant.conversions import mxfp4_rowwise_to_colwise, mxfp4_rowwise_to_fp8_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels import launch
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

MX_CONFIGS = [LaunchConfig(32, 256, 1, 2), LaunchConfig(64, 512, 2, 2)]
FP8_CONFIGS = [LaunchConfig(128, 256, 1, 2), LaunchConfig(128, 512, 2, 2)]


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
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, x, monkeypatch)


@pytest.mark.parametrize("cfg", MX_CONFIGS, ids=str)
def test_mxfp4_colwise_variants_edge_cases_and_partial_tiles(seed, monkeypatch, cfg):
    for k in (512, 288):  # 288: a partial column tile for every block_k
        check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(128, k), monkeypatch)
    # 160 rows: the last program of a 64-row tile has one 32-row block
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(160, 256), monkeypatch)


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
    check_config(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg, x, monkeypatch)


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
def test_fp8_colwise_variants_edge_cases_and_partial_tiles(seed, monkeypatch, cfg):
    for k in (512, 288):
        check_config(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg, edge_mxfp4(128, k),
                     monkeypatch)


@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=str)
def test_fp8_colwise_variants_round_e4m3_subnormals(seed, monkeypatch, cfg):
    # One big row per tile, the others 2^8 .. 2^20 smaller: their values land on E4M3 subnormals and
    # below (rounded to nearest even, never flushed before rounding).
    x = random_mxfp4(128, 256, "realistic")
    scales = torch.full((128, 8), 140, dtype=torch.uint8)
    scales[1:] = (140 - torch.randint(8, 21, (127, 8))).to(torch.uint8)
    check_config(mxfp4_rowwise_to_fp8_colwise, "mxfp4_rowwise_to_fp8_colwise", cfg,
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


# --- Variants 3 and 4 of mxfp4_rowwise_to_colwise (packed fp16 arithmetic, exact fp32 fallback per program) ---
# Their fast path needs every 32-row block's scale bytes within 25 of each other and below 253; the data
# below puts blocks on both sides of those limits. Variant 4 takes whole programs (the shapes below are,
# for its configurations, unless said otherwise) and hands the others to variant 3. The interpreter runs
# them slowly: small shapes on CPU.
V3_CONFIGS = ([LaunchConfig(64, 128, 1, 3), LaunchConfig(64, 128, 2, 4)] if TRITON_DEVICE == "cpu" else
              [LaunchConfig(64, 128, 1, 3), LaunchConfig(128, 512, 2, 3), LaunchConfig(256, 256, 4, 3),
               LaunchConfig(64, 128, 2, 4), LaunchConfig(128, 256, 4, 4), LaunchConfig(32, 128, 1, 4),
               LaunchConfig(256, 512, 8, 4)])


def narrow_mxfp4(m: int, k: int, g: torch.Generator, spread: int = 26, lo: int = 0,
                 hi: int = 228) -> MXFP4Tensor:
    """Random codes; each 32-row block's scale bytes are base + [0, spread) with base in [lo, hi)."""
    return banded_mxfp4(m, k, g, 32, spread, lo, hi)


@pytest.mark.parametrize("cfg", V3_CONFIGS, ids=str)
def test_mxfp4_colwise_v3_fast_path_matches_reference(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    x = narrow_mxfp4(128, 256, g)
    data = x.data.clone()
    data[:, 0:4] = 0                        # all-zero columns (8 of them) in every block
    data[:, 4] &= 0x88                      # -0 and +0 columns
    data[5, 4] = 0x01                       # ... one of which has one nonzero value (0.5)
    data[64:96, 8:12] &= 0x11               # columns of only 0.5 / -0.5 / 0
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, MXFP4Tensor(data, x.scales), monkeypatch)
    # the bottom of E8M0 (scale-byte-0 clamp, fp32-subnormal maxima) and the top of the window
    for lo, hi in ((0, 3), (225, 228)):
        check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, narrow_mxfp4(64, 256, g, 26, lo, hi),
                     monkeypatch)


@pytest.mark.parametrize("cfg", V3_CONFIGS, ids=str)
def test_mxfp4_colwise_v3_window_edges_and_partial_tiles(seed, monkeypatch, cfg):
    g = torch.Generator().manual_seed(seed)
    # One edge per tensor (a program takes one path): spread 25 and largest byte 252 (fast), spread 26,
    # byte 253 (6 * 2^126 * 4 would be Inf) and a NaN row (fallback).
    for rows, value in (((0, 31), (75, 100)), ((0, 31), (252, 252)), ((0, 31), (74, 100)),
                        ((5, 6), (253, 253)), ((7, 8), (255, 255))):
        x = narrow_mxfp4(64, 128, g, spread=1, lo=100, hi=101)
        s = x.scales.clone()
        if value[0] >= 252:
            s[0:32, 1] = 240                 # a block near the top: only the largest byte decides
        s[rows[0], 1], s[rows[1], 1] = value
        data = x.data.clone()
        data[1:32, 16:20] = 0                # columns 32-39: only row 0 (the smallest scale) is nonzero,
        data[0, 16:18] = 0x11                # with 0.5 in four of them (its smallest decoded value)
        check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, MXFP4Tensor(data, s), monkeypatch)
    # 160 rows, 288 columns: partial row and column tiles on both paths
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, narrow_mxfp4(160, 288, g), monkeypatch)
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(160, 288), monkeypatch)


@pytest.mark.parametrize("cfg", V3_CONFIGS, ids=str)
def test_mxfp4_colwise_v3_window_scan_reads_unaligned_scale_rows(seed, monkeypatch, cfg):
    # The window scan reads 4 scale bytes per load only from 4-byte aligned rows; scale views at an odd
    # offset or with an odd row stride take its byte loads. Both decisions, spread 25 (fast) and 26.
    g = torch.Generator().manual_seed(seed)
    for value in (75, 74):
        x = narrow_mxfp4(64, 256, g, spread=1, lo=100, hi=101)
        s = x.scales.clone()
        s[0, 5], s[31, 5] = value, 100
        for width, start in ((12, 1), (9, 0)):
            buf = torch.zeros(64, width, dtype=torch.uint8)
            buf[:, start:start + 8] = s
            view = MXFP4Tensor(x.data, buf[:, start:start + 8])
            check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, view, monkeypatch)


@pytest.mark.parametrize("cfg", [LaunchConfig(64, 64, 1, 3), LaunchConfig(64, 256, 1, 3)], ids=str)
def test_mxfp4_colwise_v3_one_chunk_and_chunk_pairs(seed, monkeypatch, cfg):
    # The fast path converts 64-column chunks in pairs: block_k 64 has a single chunk, 256 two pairs.
    g = torch.Generator().manual_seed(seed)
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, narrow_mxfp4(64, 288, g), monkeypatch)


@pytest.mark.parametrize("cfg", [LaunchConfig(64, 128, 2, 4), LaunchConfig(32, 128, 1, 4)], ids=str)
def test_mxfp4_colwise_v4_whole_programs_mix_both_paths(seed, monkeypatch, cfg):
    # edge_mxfp4 has NaN rows, scale spreads above 2^14 and zero tiles in some programs (fp32 path) and
    # narrow blocks in others (fp16 path); all programs whole, so variant 4 runs every one.
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, edge_mxfp4(128, 256), monkeypatch)
    g = torch.Generator().manual_seed(seed)
    x = narrow_mxfp4(128, 256, g)
    s = x.scales.clone()
    s[64:96, 4] = 255                       # one NaN block: that program takes the fp32 path
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, MXFP4Tensor(x.data, s), monkeypatch)


@pytest.mark.parametrize("cfg, rows, cols", [(LaunchConfig(64, 128, 2, 4), 320, 384),
                                              (LaunchConfig(256, 512, 8, 4), 256, 1024)], ids=str)
def test_mxfp4_colwise_v4_program_order_and_scale_words(seed, monkeypatch, cfg, rows, cols):
    # Variant 4 walks the grid 4 row blocks at a time (5 row blocks: a group of 4, then one of 1) and
    # holds a program's scale bytes in 1, 2 or 4 words per thread (block_k 128, 256, 512; here 1 and 4,
    # and 2 in the GPU list of V3_CONFIGS), two chunks per word. Scale bytes differ per row and block, so
    # a byte from the wrong row, block or chunk shows.
    g = torch.Generator().manual_seed(seed)
    check_config(mxfp4_rowwise_to_colwise, "mxfp4_rowwise_to_colwise", cfg, narrow_mxfp4(rows, cols, g, 26, 100, 120),
                 monkeypatch)


def test_mxfp4_colwise_v4_rejects_configs_it_cannot_tile(monkeypatch):
    x = to_device(random_mxfp4(64, 128, "realistic"), TRITON_DEVICE)
    # variant 4: 64 rows for 4 warps of 32; block_k not a multiple of 64, or not 128, 256 or 512;
    # variant 3: 128 rows for 4 x 64
    for cfg in (LaunchConfig(64, 128, 4, 4), LaunchConfig(64, 96, 1, 4), LaunchConfig(64, 64, 1, 4),
                LaunchConfig(64, 1024, 2, 4), LaunchConfig(128, 128, 4, 3)):
        monkeypatch.setitem(launch.CONFIGS, "mxfp4_rowwise_to_colwise", cfg)
        with pytest.raises(ValueError, match="CONFIGS\\['mxfp4_rowwise_to_colwise'\\]"):
            mxfp4_rowwise_to_colwise(x, backend="triton")
