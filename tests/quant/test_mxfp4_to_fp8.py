"""`mxfp4_to_fp8` (`quant/kernels/mxfp4_to_fp8.py`): the "lut" kernel (fast path, its per-program
fallback to the "f32" body, EVEN and partial tiles) and the "f32" kernel (by config and for unaligned
rows) equal the two-step reference bit for bit: random bytes over every scale range, every code at every
block offset, pinned values, NaN and overflow tiles, the 2^14 lossless window and the round trip
through `fp8_to_mxfp4`, strided wire rows, leading dimensions, empties, bad input and bad configurations."""

import pytest
import torch
import triton
import triton.language as tl
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, assert_same_values, check_config,
                             decoded, live_configs, one_config_per_kernel, random_fp8, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import fp8_to_mxfp4, mxfp4_to_fp8
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor, MXFP4Tensor
from mxa2a.quant.kernels import mxfp4_to_fp8 as kernels
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# "lut" tiles (block_m, block_k, warps): EVEN and partial tiles depending on the shapes below.
LUT_TILES = [(4, 256, 4), (2, 128, 2), (1, 512, 4)]


def both(t: MXFP4Tensor, cfg: LaunchConfig | None = None) -> FP8Tensor:
    """Triton result (configuration `cfg`, default the tuned one), checked against the torch reference."""
    return check_config(mxfp4_to_fp8, cfg, t)


def check_lut(t: MXFP4Tensor, tiles=LUT_TILES):
    for m, k, w in tiles:
        both(t, LaunchConfig(m, k, w, "lut"))


def test_reference_is_the_two_step_path(seed):
    x = random_mxfp4(4, 256, "all")
    assert_same_bits(mxfp4_to_fp8(x, backend="torch"),
                     reference.quantize_fp8(reference.dequantize_mxfp4(x, torch.float32)))


# --- every kernel on random bytes ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", live_configs("mxfp4_to_fp8"), ids=str)
def test_every_kernel_gives_the_same_bits(seed, cfg):
    both(random_mxfp4(128, 384, "all"), cfg)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_default_matches_reference_on_random_bytes(seed, scale_range):
    both(random_mxfp4(5, 384, scale_range))


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_lut_random_bytes_full_and_partial_tiles(seed, scale_range):
    check_lut(random_mxfp4(6, 384, scale_range))


def test_block_scales_far_apart_equal_the_two_step_path(seed):
    # Scale bytes spread over 0..254 within each tile: far beyond the 2^14 window, so small blocks
    # round or vanish (the "lut" kernel's fallback), and the result must still be the two-step path's.
    x = random_mxfp4(8, 256, "all")
    x = MXFP4Tensor(x.data, torch.where(x.scales == 255, 254, x.scales))
    got = both(x)
    assert not torch.equal(decoded(got), decoded(x))  # lossy here, as it should be
    both(x, LaunchConfig(4, 256, 4, "f32"))


@pytest.mark.slow
def test_lut_every_code_at_every_block_offset():
    # Tiles whose largest block is 6 * 2^0 and whose other blocks sit 0..20 binades lower (E4M3
    # normals, exact subnormals, rounded and vanishing values), every code in every block.
    codes = torch.arange(32) % 16                                   # each code twice per block
    data = (codes[0::2] | (codes[1::2] << 4)).repeat(16, 4)         # [16 rows, 4 blocks * 16 bytes]
    top = torch.full((16, 1), 130)
    drops = torch.tensor([[0, a, b, c] for a, b, c in zip(range(0, 16), range(5, 21), range(2, 18))])
    scales = (top - drops).clamp(min=0)
    check_lut(MXFP4Tensor(data.to(torch.uint8), scales.to(torch.uint8)), tiles=[(4, 128, 2)])
    # The same at the bottom and the top of E8M0 (k clamped at -127; 2^128 overflow).
    for base in (3, 253):
        s = (torch.full((16, 4), base) - drops.clamp(max=base)).to(torch.uint8)
        check_lut(MXFP4Tensor(data.to(torch.uint8), s), tiles=[(16, 128, 4)])


# --- pinned values ------------------------------------------------------------------------------------------

def test_pinned_tile():
    codes = torch.zeros(128, dtype=torch.uint8)
    codes[:8] = torch.arange(8)            # block 0: 0, 0.5 ... 6 at 2^0 -> tile k = 2 - 8 = -6
    codes[32:35] = torch.tensor([1, 3, 5])  # block 1 at 2^-16: 0.5, 1.5, 3 -> 2^-11, 0.75 * 2^-9, 1.5 * 2^-9
    codes[35] = 9                           # -0.5 at 2^-16 -> rounds to -0
    codes[96:98] = 15                       # block 3 at 2^-127: -6 * 2^-127 -> -0
    data = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 64)
    x = MXFP4Tensor(data, torch.tensor([[127, 111, 250, 0]], dtype=torch.uint8))  # block 2 is all zero
    q = both(x)
    assert q.scales.tolist() == [[127 - 6]]
    b = q.data.view(torch.uint8)[0]
    want0 = (torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]) * 64).to(E4M3_DTYPE).view(torch.uint8)
    assert torch.equal(b[:8], want0)
    assert b[32:36].tolist() == [0x00, 0x01, 0x02, 0x80]  # subnormals rounded to nearest-even, -0 kept
    assert b[96:98].tolist() == [0x80, 0x80]


def test_nan_block_and_overflow_make_their_tile_nan():
    data = torch.full((1, 192), 0x33, dtype=torch.uint8)  # 1.5 everywhere
    scales = torch.full((1, 12), 127, dtype=torch.uint8)
    scales[0, 1] = 255                                     # NaN block in tile 0
    scales[0, 4:8] = 254                                   # tile 1: 1.5 * 2^127, finite
    scales[0, 8] = 254
    data[0, 128] = 0x34                                    # tile 2: 2 * 2^127 = 2^128 -> Inf
    q = both(MXFP4Tensor(data.reshape(1, 192), scales))
    assert q.scales.tolist() == [[255, 127 + 127 - 8, 255]]
    d = q.data.view(torch.uint8)[0]
    assert int(d[:128].sum()) == 0 and int(d[256:].sum()) == 0
    assert (d[128:256] == 0x7C).all()                     # 1.5 * 2^8 = 384


def test_lut_nan_and_overflow_tiles():
    data = torch.full((2, 128), 0x33, dtype=torch.uint8)   # 1.5 everywhere
    scales = torch.full((2, 8), 127, dtype=torch.uint8)
    scales[0, 1] = 255                                      # NaN block: tile 0 of row 0 is NaN
    scales[1, 4:8] = 254
    data[1, 64] = 0x34                                      # 2 * 2^127: Inf, tile 1 of row 1 is NaN
    check_lut(MXFP4Tensor(data, scales))


# --- lossless window ----------------------------------------------------------------------------------------

def window_mxfp4(rows: int, k: int, spread: int) -> MXFP4Tensor:
    """Random codes; per FP8 tile a largest block scale in [20, 230] and the other blocks up to
    `spread` below it."""
    data = torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8)
    top = torch.randint(20, 231, (rows, k // 128, 1))
    drop = torch.randint(0, spread + 1, (rows, k // 128, 4))
    drop[..., 0] = 0
    return MXFP4Tensor(data, (top - drop).reshape(rows, k // 32).to(torch.uint8))


def test_lossless_inside_the_2_pow_14_window_and_back(seed):
    x = window_mxfp4(6, 256, 14)
    q = both(x)
    assert_same_values(decoded(q), decoded(x), "MXFP4 -> FP8 inside the window")
    for mode in ("rceil", "floor"):  # and back: FP8 -> MXFP4 gives the same values again
        back = check_config(fp8_to_mxfp4, None, q, mode, scale_mode=mode)
        assert_same_values(decoded(back), decoded(x), f"MXFP4 -> FP8 -> MXFP4 {mode}")


def test_window_edge():
    # A 6 at 2^0 and a 0.5 in a block 14 (kept) or 15 (lost) binades lower.
    for drop, kept in ((14, True), (15, False)):
        codes = torch.zeros(128, dtype=torch.uint8)
        codes[0], codes[32] = 7, 1
        data = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 64)
        x = MXFP4Tensor(data, torch.tensor([[127, 127 - drop, 127, 127]], dtype=torch.uint8))
        same = torch.equal(decoded(both(x)), decoded(x))
        assert same == kept, f"drop {drop}"


# --- views, shapes, empties ---------------------------------------------------------------------------------

def test_reads_packed_wire_rows_and_writes_fp8_rows_in_place(seed):
    n, k = 5, 256
    src = random_mxfp4(n, k, "all")
    for backend, dev in (("triton", TRITON_DEVICE), ("torch", "cpu")):
        wire = torch.full((n, k // 2 + k // 32), 0xAA, dtype=torch.uint8, device=dev)
        wire[:, :k // 2], wire[:, k // 2:] = src.data, src.scales
        x = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:])
        back = torch.full((n, k + k // 128 + 1), 0x55, dtype=torch.uint8, device=dev)
        out8 = FP8Tensor(back[:, :k].view(E4M3_DTYPE), back[:, k:k + k // 128])
        got = mxfp4_to_fp8(x, backend=backend, out=out8)
        assert got.data.data_ptr() == back.data_ptr()
        assert_same_bits(out8, reference.quantize_fp8(decoded(src)), f"from wire ({backend})")
        assert (back[:, -1] == 0x55).all()  # the padding byte is not touched


@pytest.mark.parametrize("pad", [4, 3])  # word-aligned row stride ("lut" in place) or not (the "f32" kernel)
def test_lut_strided_wire_rows(seed, pad):
    n, k = 5, 256
    x = reference.quantize_mxfp4(torch.randn(n, k) * torch.exp2(torch.randint(-8, 9, (n, 1)).float()))
    wire = torch.full((n, k // 2 + k // 32 + pad), 0xAA, dtype=torch.uint8)
    wire[:, :k // 2], wire[:, k // 2:k // 2 + k // 32] = x.data, x.scales
    check_lut(MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:k // 2 + k // 32]), tiles=[(2, 128, 2), (4, 256, 4)])


def test_keeps_leading_dims_and_handles_empty(seed):
    x = random_mxfp4(6, 128)
    t = MXFP4Tensor(x.data.reshape(2, 3, 64), x.scales.reshape(2, 3, 4))
    assert both(t).shape == (2, 3, 128)
    assert both(MXFP4Tensor(t.data[:0], t.scales[:0])).scales.shape == (0, 3, 1)


def test_non_contiguous_inputs_are_read_correctly(seed):
    x = random_mxfp4(8, 256)
    both(MXFP4Tensor(x.data[::2], x.scales[::2]))


# --- the fast path alone ------------------------------------------------------------------------------------

@triton.jit
def _skip_tile(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
               pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass


@pytest.mark.skipif(TRITON_DEVICE == "cuda", reason="swaps a jit function, which only the interpreter sees")
def test_lut_fast_path_alone_is_exact_where_taken(seed, monkeypatch):
    # With the fallback body made a no-op, programs that take the fast path still give the reference
    # bits, and data that needs the fallback visibly does not.
    monkeypatch.setattr(kernels, "_mxfp4_to_fp8_f32_tile", _skip_tile)
    cfg = LaunchConfig(4, 256, 4, "lut")
    x = torch.randn(8, 512) * torch.exp2(torch.randint(-8, 9, (8, 1)).float())
    x[1] = 0
    x[3, 256:384] = float("nan")
    xm = reference.quantize_mxfp4(x)
    both(xm, cfg)
    far = MXFP4Tensor(xm.data, xm.scales.clone())
    far.scales[0, 1] = far.scales[0, 0] - 20  # a block 2^20 below its tile: the fallback
    with pytest.raises(AssertionError):
        both(far, cfg)


# --- bad input and bad configurations -----------------------------------------------------------------------

def test_bad_inputs_are_refused_with_clear_errors():
    q = random_fp8(2, 128)
    x = random_mxfp4(2, 128)
    with pytest.raises(TypeError, match="MXFP4Tensor"):
        mxfp4_to_fp8(q)
    with pytest.raises(ValueError, match="backend"):
        mxfp4_to_fp8(x, backend="cuda")
    with pytest.raises(ValueError, match="multiple of 128"):
        mxfp4_to_fp8(random_mxfp4(2, 96))
    with pytest.raises(ValueError, match="out.data"):
        mxfp4_to_fp8(x, out=FP8Tensor(torch.zeros(2, 256, dtype=E4M3_DTYPE), torch.zeros(2, 2, dtype=torch.uint8)))


@pytest.mark.parametrize("bad, match", [(LaunchConfig(2, 1024, 2, "swar"), "variant"),
                                        (LaunchConfig(2, 96, 2, "lut"), "multiple of 128")], ids=str)
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        mxfp4_to_fp8(to_device(random_mxfp4(2, 128), TRITON_DEVICE), backend="triton", config=bad)


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_matches_reference_at_size(seed, scale_range):
    x = random_mxfp4(1000, 7168, scale_range, device="cuda")
    for cfg in one_config_per_kernel("mxfp4_to_fp8"):
        both(x, cfg)
    wire = torch.empty(1000, 7168 // 2 + 7168 // 32, dtype=torch.uint8, device="cuda")
    wire[:, :3584], wire[:, 3584:] = x.data, x.scales
    src = MXFP4Tensor(wire[:, :3584], wire[:, 3584:])
    out8 = FP8Tensor(torch.empty(1000, 7168 + 64, dtype=E4M3_DTYPE, device="cuda")[:, :7168],
                     torch.empty(1000, 56, dtype=torch.uint8, device="cuda"))
    assert_same_bits(mxfp4_to_fp8(src, backend="triton", out=out8), mxfp4_to_fp8(src, backend="torch"),
                     "CUDA from wire rows")
