"""`mxfp4_rowwise_to_colwise` (`quant/kernels/mxfp4_rowwise_to_colwise.py`): the "f16x2_smem" kernel
(whole programs), the "f16x2" kernel (by config and for partial programs), each on its fp16 path and
its exact fp32 fallback, and the "planes" kernel (by config and for rows that are not 4-byte aligned)
equal the torch reference bit for bit: random many-binade bytes, NaN, zero and -0 blocks, both sides of
every edge of the fp16 window (scale-byte spread 25 / 26, largest byte 252 / 253, NaN rows), the
bottom of E8M0, partial row and column tiles, strided and misaligned rows, unaligned scale rows, the
program order and scale words of "f16x2_smem", lossless equal-scale tiles, bad input and configurations."""

import pytest
import torch
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, assert_same_values, banded_mxfp4,
                             check_config, check_transpose_shapes, decoded, edge_mxfp4, live_configs,
                             one_config_per_kernel, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import mxfp4_rowwise_to_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

# Small configurations of each kernel (the interpreter's cost grows with the tile).
SMEM = [LaunchConfig(64, 128, 2, "f16x2_smem"), LaunchConfig(32, 128, 1, "f16x2_smem")]
F16X2 = LaunchConfig(64, 128, 1, "f16x2")
PLANES = [LaunchConfig(32, 256, 1, "planes"), LaunchConfig(64, 512, 2, "planes")]
# On a GPU also the sweep's larger tiles.
WIDE = ([F16X2, SMEM[0]] if TRITON_DEVICE == "cpu" else
        [F16X2, LaunchConfig(128, 512, 2, "f16x2"), LaunchConfig(256, 256, 4, "f16x2"), SMEM[0],
         LaunchConfig(128, 256, 4, "f16x2_smem"), SMEM[1], LaunchConfig(256, 512, 8, "f16x2_smem")])


def both(t: MXFP4Tensor, cfg: LaunchConfig | None = None, what: str = "") -> MXFP4Tensor:
    """Triton result (configuration `cfg`, default the tuned one), checked against the torch reference."""
    return check_config(mxfp4_rowwise_to_colwise, cfg, t, what)


def narrow_mxfp4(m: int, k: int, g: torch.Generator, spread: int = 26, lo: int = 0,
                 hi: int = 228) -> MXFP4Tensor:
    """Random codes; each 32-row block's scale bytes are base + [0, spread) with base in [lo, hi): the
    fp16 window holds for spread <= 26."""
    return banded_mxfp4(m, k, g, 32, spread, lo, hi)


def test_reference_is_the_two_step_path(seed):
    x = random_mxfp4(128, 64, "all")
    dense_t = reference.dequantize_mxfp4(x, torch.float32).T.contiguous()
    for mode in ("rceil", "floor"):  # the decoded maximum never has a significand above 1.5
        xm = MXFP4Tensor(x.data, x.scales, mode)
        assert_same_bits(mxfp4_rowwise_to_colwise(xm, backend="torch"), reference.quantize_mxfp4(dense_t, "rceil"))


# --- every kernel, both paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", live_configs("mxfp4_rowwise_to_colwise"), ids=str)
def test_every_kernel_gives_the_same_bits(seed, cfg):
    # Whole programs for "f16x2_smem" (the default is one 256 x 512 program), 288 columns (partial
    # column blocks) for the others; random bytes take the fp32 fallback, narrow blocks the fp16 path
    # (for "f16x2" in the window tests below, whose small tile the interpreter runs faster).
    g = torch.Generator().manual_seed(seed)
    m, k = (cfg.block_m, cfg.block_k) if cfg.variant == "f16x2_smem" else (64, 288)
    out = both(random_mxfp4(m, k, "all"), cfg, "random bytes")
    assert out.shape == (k, m) and out.scales.shape == (k, m // 32)
    if cfg.variant != "f16x2" or TRITON_DEVICE == "cuda":
        both(narrow_mxfp4(m, k, g), cfg, "narrow blocks")


@pytest.mark.parametrize("scale_range", ["all"])
def test_default_matches_reference_on_random_bytes(seed, scale_range):
    x = random_mxfp4(96, 160, scale_range)  # not whole programs: the default hands them to "f16x2"
    out = both(x)
    assert out.shape == (160, 96) and out.scales.shape == (160, 3) and out.scale_mode == x.scale_mode


@pytest.mark.slow
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
@pytest.mark.parametrize("cfg", PLANES + WIDE, ids=str)
def test_kernels_match_reference_on_random_bytes(seed, cfg, scale_range):
    both(random_mxfp4(64, 512, scale_range), cfg)


@pytest.mark.parametrize("cfg", [PLANES[0], F16X2], ids=str)
def test_edge_blocks_and_partial_tiles(seed, cfg):
    both(edge_mxfp4(160, 288), cfg, "160 x 288: partial row and column tiles")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", PLANES + WIDE, ids=str)
def test_edge_blocks_and_partial_tiles_every_config(seed, cfg):
    for k in (512, 288):
        both(edge_mxfp4(128, k), cfg)
    both(edge_mxfp4(160, 256), cfg)


# --- the fp16 window ----------------------------------------------------------------------------------------

def window_case(g: torch.Generator, rows: tuple[int, int], value: tuple[int, int]) -> MXFP4Tensor:
    """Narrow blocks with one edge in block column 1 of the first 32 rows: rows `rows` get scale bytes
    `value`; columns 32-39 are nonzero only in row 0 (the smallest scale), 0.5 in four of them."""
    x = narrow_mxfp4(64, 128, g, spread=1, lo=100, hi=101)
    s = x.scales.clone()
    if value[0] >= 252:
        s[0:32, 1] = 240                 # a block near the top: only the largest byte decides
    s[rows[0], 1], s[rows[1], 1] = value
    data = x.data.clone()
    data[1:32, 16:20] = 0
    data[0, 16:18] = 0x11
    return MXFP4Tensor(data, s)


# One edge per tensor (a program takes one path): spread 25 and largest byte 252 (fp16 path), spread
# 26, byte 253 (6 * 2^126 * 4 would be Inf) and a NaN row (fp32 fallback).
EDGES = [((0, 31), (75, 100)), ((0, 31), (252, 252)), ((0, 31), (74, 100)), ((5, 6), (253, 253)),
         ((7, 8), (255, 255))]


@pytest.mark.parametrize("cfg", [F16X2, SMEM[0]], ids=str)
@pytest.mark.parametrize("edge", [EDGES[0], EDGES[2]], ids=["spread25", "spread26"])
def test_window_spread_edge(seed, cfg, edge):
    both(window_case(torch.Generator().manual_seed(seed), *edge), cfg, f"rows {edge[0]} bytes {edge[1]}")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", WIDE, ids=str)
def test_window_edges_and_partial_tiles(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    for rows, value in EDGES:
        both(window_case(g, rows, value), cfg, f"rows {rows} bytes {value}")
    # 160 rows, 288 columns: partial row and column tiles on both paths
    both(narrow_mxfp4(160, 288, g), cfg)
    both(edge_mxfp4(160, 288), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", WIDE, ids=str)
def test_fast_path_zero_sparse_columns_and_e8m0_ends(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    x = narrow_mxfp4(128, 256, g)
    data = x.data.clone()
    data[:, 0:4] = 0                        # all-zero columns (8 of them) in every block
    data[:, 4] &= 0x88                      # -0 and +0 columns
    data[5, 4] = 0x01                       # ... one of which has one nonzero value (0.5)
    data[64:96, 8:12] &= 0x11               # columns of only 0.5 / -0.5 / 0
    both(MXFP4Tensor(data, x.scales), cfg)
    # the bottom of E8M0 (scale-byte-0 clamp, fp32-subnormal maxima) and the top of the window
    for lo, hi in ((0, 3), (225, 228)):
        both(narrow_mxfp4(64, 256, g, 26, lo, hi), cfg)


def test_fast_path_zero_sparse_columns_and_e8m0_bottom(seed):
    g = torch.Generator().manual_seed(seed)
    x = narrow_mxfp4(64, 128, g, 26, 0, 3)  # the scale-byte-0 clamp, fp32-subnormal maxima
    data = x.data.clone()
    data[:, 0:4] = 0                        # all-zero columns
    data[:, 4] &= 0x88                      # -0 and +0 columns
    data[5, 4] = 0x01                       # ... one of which has one nonzero value (0.5)
    both(MXFP4Tensor(data, x.scales), F16X2)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [F16X2, SMEM[0]], ids=str)
def test_window_scan_reads_unaligned_scale_rows(seed, cfg):
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
            both(MXFP4Tensor(x.data, buf[:, start:start + 8]), cfg)


def test_window_scan_reads_an_odd_scale_row_stride(seed):
    g = torch.Generator().manual_seed(seed)
    x = narrow_mxfp4(64, 128, g, spread=1, lo=100, hi=101)
    buf = torch.zeros(64, 5, dtype=torch.uint8)
    buf[:, :4] = x.scales
    both(MXFP4Tensor(x.data, buf[:, :4]), F16X2)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [LaunchConfig(64, 64, 1, "f16x2"), LaunchConfig(64, 256, 1, "f16x2")], ids=str)
def test_f16x2_one_chunk_and_chunk_pairs(seed, cfg):
    # The fast path converts 64-column chunks in pairs: block_k 64 has a single chunk, 256 two pairs.
    both(narrow_mxfp4(64, 288, torch.Generator().manual_seed(seed)), cfg)


# --- f16x2_smem: whole programs ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", SMEM[1:], ids=str)
def test_smem_whole_programs_mix_both_paths(seed, cfg):
    # Narrow blocks (fp16 path) in every program but one, which has a NaN block (fp32 path).
    x = narrow_mxfp4(64, 128, torch.Generator().manual_seed(seed))
    s = x.scales.clone()
    s[32:64, 2] = 255
    both(MXFP4Tensor(x.data, s), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", SMEM, ids=str)
def test_smem_whole_programs_mix_both_paths_wide(seed, cfg):
    # edge_mxfp4 has NaN rows, scale spreads above 2^14 and zero tiles in some programs (fp32 path) and
    # narrow blocks in others (fp16 path); all programs whole, so "f16x2_smem" runs every one.
    both(edge_mxfp4(128, 256), cfg)
    x = narrow_mxfp4(128, 256, torch.Generator().manual_seed(seed))
    s = x.scales.clone()
    s[64:96, 4] = 255
    both(MXFP4Tensor(x.data, s), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("cfg, rows, cols", [(SMEM[0], 320, 384), (LaunchConfig(256, 512, 8, "f16x2_smem"), 256, 1024)],
                         ids=str)
def test_smem_program_order_and_scale_words(seed, cfg, rows, cols):
    # "f16x2_smem" walks the grid 4 row blocks at a time (5 row blocks: a group of 4, then one of 1) and
    # holds a program's scale bytes in 1, 2 or 4 words per thread (block_k 128, 256, 512; here 1 and 4,
    # and 2 in the GPU list of WIDE), two chunks per word. Scale bytes differ per row and block, so a
    # byte from the wrong row, block or chunk shows.
    both(narrow_mxfp4(rows, cols, torch.Generator().manual_seed(seed), 26, 100, 120), cfg)


@pytest.mark.slow
def test_smem_partial_programs_use_f16x2(seed):
    g = torch.Generator().manual_seed(seed)
    both(narrow_mxfp4(96, 128, g), SMEM[0], "96 rows: not a whole 64-row program")


# --- views, lossless, shapes, bad input and configurations ---------------------------------------------------

@pytest.mark.parametrize("extra", [8, 5])  # 5: rows not 4-byte aligned, the wrapper falls back to "planes"
def test_reads_strided_and_misaligned_rows(seed, extra):
    x = edge_mxfp4(128, 256)
    wire = torch.empty(128, 128 + 8 + extra, dtype=torch.uint8)
    wire[:, :128], wire[:, 128:136] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :128], wire[:, 128:136])
    got = both(view, SMEM[1], f"+{extra}")
    assert_same_bits(got, mxfp4_rowwise_to_colwise(x, backend="torch"), f"+{extra}")


def test_lossless_with_equal_row_scales(seed):
    m, k = 64, 128
    data = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8)
    per_tile = torch.randint(1, 250, (m // 32, 1, k // 32))
    x = MXFP4Tensor(data, per_tile.expand(m // 32, 32, k // 32).reshape(m, k // 32).to(torch.uint8))
    assert_same_values(decoded(both(x, SMEM[0])), decoded(x).T, "equal row scales")


def test_bad_shapes_are_refused_and_empty_input_gives_empty_output():
    t3 = MXFP4Tensor(torch.zeros(2, 128, 64, dtype=torch.uint8), torch.zeros(2, 128, 4, dtype=torch.uint8))
    check_transpose_shapes(mxfp4_rowwise_to_colwise, 32, random_mxfp4(48, 64), t3, random_mxfp4(0, 256))


def test_rejects_configs_it_cannot_tile():
    x = to_device(random_mxfp4(64, 128, "realistic"), TRITON_DEVICE)
    # f16x2_smem: 64 rows for 4 warps of 32; block_k not a multiple of 64, or not 128, 256 or 512;
    # f16x2: 128 rows for 4 x 64; an unknown kernel name
    for cfg in (LaunchConfig(64, 128, 4, "f16x2_smem"), LaunchConfig(64, 96, 1, "f16x2_smem"),
                LaunchConfig(64, 64, 1, "f16x2_smem"), LaunchConfig(64, 1024, 2, "f16x2_smem"),
                LaunchConfig(128, 128, 4, "f16x2"), LaunchConfig(64, 128, 1, "swar")):
        with pytest.raises(ValueError, match="config = LaunchConfig"):
            mxfp4_rowwise_to_colwise(x, backend="triton", config=cfg)


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_matches_reference_at_size(seed, scale_range):
    x = random_mxfp4(1024, 7200, scale_range, device="cuda")  # 7200: a partial column block ("f16x2")
    both(x)
    whole = random_mxfp4(1024, 7168, scale_range, device="cuda")  # whole "f16x2_smem" programs
    for cfg in one_config_per_kernel("mxfp4_rowwise_to_colwise"):
        both(whole, cfg)
        both(x, cfg)
