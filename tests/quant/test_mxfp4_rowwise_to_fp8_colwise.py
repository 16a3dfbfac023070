"""`mxfp4_rowwise_to_fp8_colwise` (`quant/kernels/mxfp4_rowwise_to_fp8_colwise.py`): the "f16x2_tiles"
kernel (whole programs), the "f16x2" kernel (by config and for partial programs), each on its fp16 path
and its exact fp32 fallback, the "f32_words" kernel (rows 4- but not 8-byte aligned, K not a multiple
of 128) and the "planes" kernel (rows not 4-byte aligned) equal the torch reference bit for bit: both
sides of every edge of the fp16 window (scale-byte spread 26 / 27 within a tile's block, largest byte
252 / 253 and 6 / 5, NaN rows) in either tile of a program, all-zero, -0 and single-value columns, the
scale-byte-0 clamp, E4M3 subnormals, random bytes, partial tiles, strided rows, the 2^14 lossless
window, shapes, bad input and bad configurations."""

import pytest
import torch
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, assert_same_values, banded_mxfp4,
                             check_config, check_transpose_shapes, decoded, edge_mxfp4, live_configs,
                             one_config_per_kernel, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import mxfp4_rowwise_to_fp8_colwise
from mxa2a.quant.formats import MXFP4Tensor
from mxa2a.quant.kernels.launch import LaunchConfig

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

TILES = LaunchConfig(256, 256, 4, "f16x2_tiles")   # the default: 2 tiles x 2 slabs
F16X2 = LaunchConfig(128, 256, 2, "f16x2")         # four chunks per warp
F16X2_SMALL = LaunchConfig(128, 128, 1, "f16x2")   # the interpreter's cost grows with block_k / num_warps
F32_WORDS = [LaunchConfig(128, 256, 1, "f32_words"), LaunchConfig(128, 512, 2, "f32_words")]
PLANES = LaunchConfig(128, 64, 4, "planes")
# On a GPU also the sweep's other tiles.
TILES_ALL = [TILES] if TRITON_DEVICE == "cpu" else [
    TILES, LaunchConfig(256, 512, 8, "f16x2_tiles"), LaunchConfig(512, 256, 8, "f16x2_tiles"),
    LaunchConfig(128, 256, 2, "f16x2_tiles"), LaunchConfig(256, 128, 2, "f16x2_tiles"),
    LaunchConfig(128, 128, 1, "f16x2_tiles"), LaunchConfig(1024, 128, 8, "f16x2_tiles")]
F16X2_ALL = [F16X2] if TRITON_DEVICE == "cpu" else [
    F16X2, LaunchConfig(128, 512, 4, "f16x2"), LaunchConfig(128, 512, 2, "f16x2"),
    LaunchConfig(128, 1024, 8, "f16x2"), LaunchConfig(128, 256, 1, "f16x2")]


def both(t: MXFP4Tensor, cfg: LaunchConfig | None = None, what: str = "") -> MXFP4Tensor:
    """Triton result (configuration `cfg`, default the tuned one), checked against the torch reference."""
    return check_config(mxfp4_rowwise_to_fp8_colwise, cfg, t, what)


def tile_mxfp4(m: int, k: int, g: torch.Generator, spread: int = 27, lo: int = 6, hi: int = 226) -> MXFP4Tensor:
    """Random codes; the scale bytes of each 128-row tile's block are base + [0, spread), base in [lo, hi):
    the fp16 window holds for spread <= 27 and 6 <= largest byte <= 252."""
    return banded_mxfp4(m, k, g, 128, spread, lo, hi)


def test_reference_is_the_two_step_path(seed):
    x = random_mxfp4(128, 64, "all")
    dense_t = reference.dequantize_mxfp4(x, torch.float32).T.contiguous()
    assert_same_bits(mxfp4_rowwise_to_fp8_colwise(x, backend="torch"), reference.quantize_fp8(dense_t))


# --- every kernel, both paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", live_configs("mxfp4_rowwise_to_fp8_colwise"), ids=str)
def test_every_kernel_gives_the_same_bits(seed, cfg):
    # Random bytes (the f16x2 kernels' fp32 fallback); whole programs for "f16x2_tiles", 128 columns for
    # the others (a partial program for most). The fp16 path: the window and view tests below.
    m, k = (cfg.block_m, cfg.block_k) if cfg.variant == "f16x2_tiles" else (128, 128)
    out = both(random_mxfp4(m, k, "all"), cfg, "random bytes")
    assert out.shape == (k, m) and out.scales.shape == (k, m // 128)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", live_configs("mxfp4_rowwise_to_fp8_colwise"), ids=str)
def test_every_kernel_on_narrow_tiles(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    m, k = (cfg.block_m, cfg.block_k) if cfg.variant == "f16x2_tiles" else (128, 384)
    both(tile_mxfp4(m, k, g), cfg, "narrow tiles")


@pytest.mark.parametrize("shape, scale_range", [((128, 256), "all"), ((128, 96), "realistic")], ids=str)
def test_default_matches_reference_on_random_bytes(seed, shape, scale_range):
    # Not whole programs: 128 x 256 goes to "f16x2", 128 x 96 (K % 128 != 0) to "f32_words".
    out = both(random_mxfp4(*shape, scale_range))
    assert out.shape == shape[::-1] and out.scales.shape == (shape[1], 1)


@pytest.mark.slow
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
@pytest.mark.parametrize("cfg", F16X2_ALL + F32_WORDS + [PLANES], ids=str)
def test_kernels_match_reference_on_random_bytes_and_partial_tiles(seed, cfg, scale_range):
    # 384 columns: with 256-column programs the last one is half full (masked loads and stores)
    both(random_mxfp4(128, 384, scale_range), cfg, scale_range)


@pytest.mark.slow
@pytest.mark.parametrize("scale_range", ["all", "realistic"])
@pytest.mark.parametrize("cfg", TILES_ALL, ids=str)
def test_tiles_random_bytes(seed, cfg, scale_range):
    both(random_mxfp4(cfg.block_m, cfg.block_k, scale_range), cfg, scale_range)


@pytest.mark.parametrize("cfg", F32_WORDS[:1] + [PLANES], ids=str)
def test_edge_blocks_subnormals_and_partial_tiles(seed, cfg):
    both(edge_mxfp4(128, 288), cfg, "288 columns: a partial column tile")
    # One big row per tile, the others 2^8 .. 2^20 smaller: their values land on E4M3 subnormals and
    # below (rounded to nearest even, never flushed before rounding).
    x = random_mxfp4(128, 256, "realistic")
    scales = torch.full((128, 8), 140, dtype=torch.uint8)
    scales[1:] = (140 - torch.randint(8, 21, (127, 8))).to(torch.uint8)
    both(MXFP4Tensor(x.data, scales), cfg, "E4M3 subnormals")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", F32_WORDS + F16X2_ALL, ids=str)
def test_edge_blocks_subnormals_and_partial_tiles_every_config(seed, cfg):
    for k in (512, 288):
        both(edge_mxfp4(128, k), cfg)
    x = random_mxfp4(128, 256, "realistic")
    scales = torch.full((128, 8), 140, dtype=torch.uint8)
    scales[1:] = (140 - torch.randint(8, 21, (127, 8))).to(torch.uint8)
    both(MXFP4Tensor(x.data, scales), cfg)


# --- the fp16 window ----------------------------------------------------------------------------------------

def window_case(g: torch.Generator, m: int, k: int, rows: tuple[int, int], value: tuple[int, int]) -> MXFP4Tensor:
    """Narrow tiles with one edge in block column 1: rows `rows` get scale bytes `value`; columns 32-39
    are nonzero only in the smallest-scale row, 0.5 in four of them."""
    x = tile_mxfp4(m, k, g, spread=1, lo=100, hi=101)
    s = x.scales.clone()
    if value[0] <= 6:
        s[:, 1] = 0                      # a block of tiny scales: largest byte value[0]
    elif value[0] >= 252:
        s[:, 1] = 240                    # a block near the top: only the largest byte decides
    s[rows[0], 1], s[rows[1], 1] = value
    data = x.data.clone()
    data[:, 16:20] = 0
    data[rows[0], 16:18] = 0x11
    return MXFP4Tensor(data, s)


def edges(r: int) -> list:
    """One edge per tensor, in the tile at row r (a program takes one path): spread 26, largest byte
    252 and 6 (fp16 path); spread 27, byte 253, largest byte 5 and a NaN row (fp32 fallback)."""
    return [((r, r + 127), (74, 100)), ((r, r + 127), (252, 252)), ((r + 3, r + 4), (6, 0)),
            ((r, r + 127), (73, 100)), ((r + 5, r + 6), (253, 253)), ((r + 3, r + 4), (5, 0)),
            ((r + 7, r + 8), (255, 255))]


@pytest.mark.parametrize("edge", [0, 3], ids=["spread26", "spread27"])
def test_window_spread_edge(seed, edge):
    # The default kernel on both sides of the spread edge (the window check is shared with "f16x2").
    rows, value = edges(0)[edge]
    both(window_case(torch.Generator().manual_seed(seed), TILES.block_m, TILES.block_k, rows, value), TILES,
         f"{rows} {value}")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", F16X2_ALL, ids=str)
def test_f16x2_window_edges(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    for rows, value in edges(0):
        both(window_case(g, 128, 256, rows, value), cfg, f"rows {rows} bytes {value}")
    both(tile_mxfp4(256, 384, g), cfg, "fast path, partial column tiles")


@pytest.mark.slow
@pytest.mark.parametrize("tile", [0, 1])
def test_tiles_window_edges_in_either_tile(seed, tile):
    g = torch.Generator().manual_seed(seed)
    for rows, value in edges(128 * tile):
        if value != (6, 0):
            both(window_case(g, TILES.block_m, TILES.block_k, rows, value), TILES, f"rows {rows} bytes {value}")


def zero_and_sparse_columns(x: MXFP4Tensor, m: int, k: int) -> MXFP4Tensor:
    """All-zero, -0 / +0, single-0.5 and 0.5-only columns in every 128 x 128 tile of `x`."""
    data = x.data.clone()
    for r0 in range(0, m, 128):
        for c0 in range(0, k // 2, 64):
            data[r0:r0 + 128, c0:c0 + 2] = 0                 # all-zero columns
            data[r0:r0 + 128, c0 + 2] &= 0x88                # -0 and +0 columns, one with a single 0.5
            data[r0 + 5, c0 + 2] = 0x01
            data[r0 + 64:r0 + 96, c0 + 8:c0 + 12] &= 0x11    # only 0.5 / -0.5 / 0 in a quarter of the rows
    return MXFP4Tensor(data, x.scales)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [F16X2, TILES], ids=str)
def test_fast_path_zero_and_sparse_columns_at_the_scale_byte_0_clamp(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    m, k = cfg.block_m, cfg.block_k
    both(zero_and_sparse_columns(tile_mxfp4(m, k, g, 27, 6, 7), m, k), cfg)  # largest bytes 6..8


@pytest.mark.slow
@pytest.mark.parametrize("cfg", TILES_ALL + F16X2_ALL, ids=str)
def test_fast_path_zero_sparse_columns_and_window_ends(seed, cfg):
    g = torch.Generator().manual_seed(seed)
    m, k = cfg.block_m, cfg.block_k
    both(zero_and_sparse_columns(tile_mxfp4(m, k, g), m, k), cfg, "zero and sparse columns")
    # the scale-byte-0 clamp (largest bytes 6..8) and the top of the window (largest byte 252)
    for lo, hi in ((6, 7), (226, 227)):
        both(tile_mxfp4(m, k, g, 27, lo, hi), cfg, f"bytes from {lo}")


# --- fallbacks: partial programs, unaligned words ------------------------------------------------------------

@pytest.mark.slow
def test_tiles_partial_programs_use_f16x2(seed):
    g = torch.Generator().manual_seed(seed)
    both(tile_mxfp4(TILES.block_m + 128, TILES.block_k, g), TILES, "rows not a whole program")


@pytest.mark.slow
def test_tiles_partial_columns_use_f16x2(seed):
    g = torch.Generator().manual_seed(seed)
    both(tile_mxfp4(TILES.block_m, TILES.block_k + 128, g), TILES, "columns not a whole program")


@pytest.mark.parametrize("extra", [4, 8, 3])  # row strides 72 (f16x2), 76 (f32_words), 71 (planes)
def test_reads_strided_and_misaligned_rows(seed, extra):
    # Narrow tiles: the fp16 path of "f16x2" where the rows are 8-byte aligned.
    x = tile_mxfp4(128, 128, torch.Generator().manual_seed(seed))
    wire = torch.zeros(128, 64 + 4 + extra, dtype=torch.uint8)
    wire[:, :64], wire[:, 64:68] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :64], wire[:, 64:68])
    assert_same_bits(both(view, F16X2_SMALL), mxfp4_rowwise_to_fp8_colwise(x, backend="torch"),
                     f"stride {68 + extra}")


def test_k_not_a_multiple_of_128_uses_f32_words(seed):
    both(tile_mxfp4(128, 96, torch.Generator().manual_seed(seed)), F16X2, "K = 96 (scale rows of 3 bytes)")


# --- lossless, shapes, bad input and configurations ---------------------------------------------------------

def test_lossless_inside_the_2_pow_14_window(seed):
    m, k = 128, 64
    data = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8)
    top = torch.randint(20, 231, (1, k // 32))
    x = MXFP4Tensor(data, (top - torch.randint(0, 15, (m, k // 32))).to(torch.uint8))
    assert_same_values(decoded(both(x)), decoded(x).T, "2^14 window")


def test_bad_shapes_are_refused_and_empty_input_gives_empty_output():
    t3 = MXFP4Tensor(torch.zeros(2, 128, 64, dtype=torch.uint8), torch.zeros(2, 128, 4, dtype=torch.uint8))
    check_transpose_shapes(mxfp4_rowwise_to_fp8_colwise, 128, random_mxfp4(192, 64), t3, random_mxfp4(0, 256))


@pytest.mark.parametrize("bad", [LaunchConfig(256, 256, 2, "f16x2_tiles"), LaunchConfig(384, 128, 3, "f16x2_tiles"),
                                 LaunchConfig(256, 1024, 16, "f16x2_tiles"), LaunchConfig(256, 200, 4, "f16x2_tiles"),
                                 LaunchConfig(128, 256, 8, "f16x2"), LaunchConfig(128, 256, 8, "f16x2_smem")], ids=str)
def test_rejects_bad_configurations(bad):
    x = random_mxfp4(256, 256, "realistic")
    with pytest.raises(ValueError, match="config = LaunchConfig"):
        mxfp4_rowwise_to_fp8_colwise(to_device(x, TRITON_DEVICE), backend="triton", config=bad)


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_matches_reference_at_size(seed, scale_range):
    x = random_mxfp4(1024, 7200, scale_range, device="cuda")  # 7200: K % 128 != 0, "f32_words"
    both(x)
    whole = random_mxfp4(1024, 7168, scale_range, device="cuda")  # whole "f16x2_tiles" programs
    for cfg in one_config_per_kernel("mxfp4_rowwise_to_fp8_colwise"):
        both(whole, cfg)
    wire = torch.empty(1024, 3600 + 225 + 7, dtype=torch.uint8, device="cuda")
    wire[:, :3600], wire[:, 3600:3825] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :3600], wire[:, 3600:3825])
    assert_same_bits(mxfp4_rowwise_to_fp8_colwise(view, backend="triton"),
                     mxfp4_rowwise_to_fp8_colwise(x, backend="torch"), "CUDA strided rows")
    for cfg in F32_WORDS + [PLANES]:
        both(x, cfg)


# Each f16x2 / f16x2_tiles specialization takes Triton 3.6 about 20 s to compile for sm90 (most of it in
# the TritonGPUCoalesce pass), so the sweep's other tiles run as separate slow tests that can be split
# over processes.
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("cfg", TILES_ALL[1:] + F16X2_ALL[1:], ids=str)
def test_cuda_sweep_tiles_at_size(seed, cfg):
    for scale_range in sorted(SCALE_RANGES):
        both(random_mxfp4(1024, 7168, scale_range, device="cuda"), cfg, scale_range)
