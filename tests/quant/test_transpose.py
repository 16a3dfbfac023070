"""Row-wise -> column-wise conversions: Triton == reference bit for bit on random bytes; the scaling-aware
FP8 transpose rounds subnormals (never flushes) and keeps NaN; lossless windows; tiles and bad input."""

import pytest
import torch
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, assert_same_values, decoded,
                             fp8_from_bytes, random_fp8, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import (fp8_rowwise_to_colwise, mxfp4_rowwise_to_colwise,
                                     mxfp4_rowwise_to_fp8_colwise)
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor, MXFP4Tensor

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

CONVERSIONS = {"fp8_rowwise_to_colwise": fp8_rowwise_to_colwise,
               "mxfp4_rowwise_to_colwise": mxfp4_rowwise_to_colwise,
               "mxfp4_rowwise_to_fp8_colwise": mxfp4_rowwise_to_fp8_colwise}


def both(fn, t):
    """Triton result, after checking it against the torch reference bit for bit."""
    got = to_device(fn(to_device(t, TRITON_DEVICE), backend="triton"), "cpu")
    assert_same_bits(got, fn(t, backend="torch"), fn.__name__)
    return got


# --- kernel == reference on random bytes --------------------------------------------------------------

@pytest.mark.parametrize("scale_range", ["all", "realistic", "top"])
def test_fp8_rowwise_to_colwise_matches_reference_on_random_bytes(seed, scale_range):
    q = random_fp8(256, 128, scale_range, nan_codes=scale_range == "all")
    out = both(fp8_rowwise_to_colwise, q)
    assert out.data.shape == (128, 256) and out.scales.shape == (128, 2)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_mxfp4_rowwise_to_colwise_matches_reference_on_random_bytes(seed, scale_range):
    x = random_mxfp4(96, 160, scale_range)  # 160 columns: a partial column block in the kernel
    out = both(mxfp4_rowwise_to_colwise, x)
    assert out.shape == (160, 96) and out.scales.shape == (160, 3) and out.scale_mode == x.scale_mode


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_mxfp4_rowwise_to_fp8_colwise_matches_reference_on_random_bytes(seed, scale_range):
    x = random_mxfp4(128, 96, scale_range)
    out = both(mxfp4_rowwise_to_fp8_colwise, x)
    assert out.shape == (96, 128) and out.scales.shape == (96, 1)


def test_references_are_the_two_step_paths(seed):
    x = random_mxfp4(128, 64, "all")
    dense_t = reference.dequantize_mxfp4(x, torch.float32).T.contiguous()
    assert_same_bits(mxfp4_rowwise_to_fp8_colwise(x, backend="torch"), reference.quantize_fp8(dense_t))
    for mode in ("rceil", "floor"):  # the decoded maximum never has a significand above 1.5
        xm = MXFP4Tensor(x.data, x.scales, mode)
        assert_same_bits(mxfp4_rowwise_to_colwise(xm, backend="torch"), reference.quantize_mxfp4(dense_t, "rceil"))


# --- the scaling-aware FP8 transpose ------------------------------------------------------------------

def test_fp8_rowwise_to_colwise_rounds_subnormals_instead_of_flushing():
    data = torch.zeros(128, 128, dtype=torch.uint8)
    scales = torch.full((128, 1), 127)
    scales[0], scales[4] = 130, 129       # kt = 130: most rows shift by -3, row 4 by -1
    cells = {(0, 0): 0x7E,                # 448, shift 0
             (1, 1): 0x08,                # 2^-6 -> 2^-9: the smallest subnormal, not 0
             (2, 2): 0x01,                # 2^-9 -> 2^-12 -> 0
             (3, 3): 0x0C,                # 1.5 * 2^-6 -> 1.5 * 2^-9 -> 2 * 2^-9 (ties to even)
             (4, 4): 0x03, (4, 5): 0x05, (4, 6): 0x07, (4, 7): 0x83,  # m * 2^-10: 1.5, 2.5, 3.5 ulps
             (5, 8): 0x81,                # -2^-12 -> -0
             (6, 9): 0x38}                # 1.0 -> 0.125
    for (i, j), b in cells.items():
        data[i, j] = b
    out = both(fp8_rowwise_to_colwise, fp8_from_bytes(data, scales))
    assert (out.scales == 130).all()
    want = torch.zeros(128, 128, dtype=torch.uint8)
    for (j, i), b in {(0, 0): 0x7E, (1, 1): 0x01, (3, 3): 0x02, (4, 4): 0x02, (5, 4): 0x02, (6, 4): 0x04,
                      (7, 4): 0x82, (8, 5): 0x80, (9, 6): 0x20}.items():
        want[j, i] = b
    assert torch.equal(out.data.view(torch.uint8), want)


def test_fp8_rowwise_to_colwise_keeps_nan():
    data = torch.full((256, 256), 0x38, dtype=torch.uint8)  # 1.0
    data[200, 130] = 0x7F                                     # E4M3 NaN
    data[10, 140] = 0xFF                                      # -NaN
    scales = torch.full((256, 2), 127)
    scales[5, 0] = 255                                        # a NaN row tile
    q = fp8_from_bytes(data, scales)
    out = both(fp8_rowwise_to_colwise, q)
    nan = out.scales == 255
    want = torch.zeros(256, 2, dtype=torch.bool)
    want[:128, 0] = True        # columns of tile 0, rows 0..127: the NaN row tile
    want[130, 1] = want[140, 0] = True
    assert torch.equal(nan, want)
    assert int(out.data.view(torch.uint8)[:128, :128].sum()) == 0
    values = decoded(out)
    assert int(values.isnan().sum()) == 128 * 128 + 128 + 128
    src, got = decoded(q), values.T
    assert got[src.isnan()].isnan().all()                     # every NaN stays NaN
    assert torch.equal(got[~got.isnan()], src[~got.isnan()])  # the other values are exact


def test_fp8_rowwise_to_colwise_uses_max_row_exponent_not_amax():
    # Every row scale is 2^3 but the values are small: quantize_fp8(deq.T) would pick a smaller scale
    # for the tile; the scaling-aware transpose keeps kt = 3 and loses nothing.
    data = torch.randint(0, 0x39, (128, 128), dtype=torch.uint8)  # |q| <= 1.125
    q = fp8_from_bytes(data, torch.full((128, 1), 130))
    out = both(fp8_rowwise_to_colwise, q)
    assert (out.scales == 130).all()
    requantized = reference.quantize_fp8(decoded(q).T.contiguous())
    assert (requantized.scales < 130).all()
    assert_same_values(decoded(out), decoded(q).T, "same row scales: exact")


def test_fp8_rowwise_to_colwise_is_lossless_when_shifted_values_stay_normal(seed):
    # Row scales differ by up to 3 within each tile; all |q| >= 2^-3, so |q| * 2^-3 >= 2^-6 is normal.
    mag = torch.randint(0x20, 0x7F, (256, 256), dtype=torch.uint8)
    data = mag | (torch.randint(0, 2, mag.shape, dtype=torch.uint8) << 7)
    scales = 100 + torch.randint(0, 4, (256, 2))
    q = fp8_from_bytes(data, scales)
    assert_same_values(decoded(both(fp8_rowwise_to_colwise, q)), decoded(q).T, "lossless window")


# --- MXFP4 transposes: lossless windows ---------------------------------------------------------------

def test_mxfp4_rowwise_to_colwise_is_lossless_with_equal_row_scales(seed):
    m, k = 64, 96
    data = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8)
    per_tile = torch.randint(1, 250, (m // 32, 1, k // 32))
    x = MXFP4Tensor(data, per_tile.expand(m // 32, 32, k // 32).reshape(m, k // 32).to(torch.uint8))
    assert_same_values(decoded(both(mxfp4_rowwise_to_colwise, x)), decoded(x).T, "equal row scales")


def test_mxfp4_rowwise_to_fp8_colwise_is_lossless_inside_the_2_pow_14_window(seed):
    m, k = 128, 64
    data = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8)
    top = torch.randint(20, 231, (1, k // 32))
    x = MXFP4Tensor(data, (top - torch.randint(0, 15, (m, k // 32))).to(torch.uint8))
    assert_same_values(decoded(both(mxfp4_rowwise_to_fp8_colwise, x)), decoded(x).T, "2^14 window")


# --- views, tiles, bad input --------------------------------------------------------------------------

def test_transposes_read_strided_wire_rows(seed):
    m, k = 128, 128
    x = random_mxfp4(m, k, "all")
    wire = torch.empty(m, k // 2 + k // 32, dtype=torch.uint8)
    wire[:, :k // 2], wire[:, k // 2:] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:])
    for fn in (mxfp4_rowwise_to_colwise, mxfp4_rowwise_to_fp8_colwise):
        assert_same_bits(both(fn, view), fn(x, backend="torch"), fn.__name__)
    q = random_fp8(m, k, "all")
    padded = torch.empty(m, k + 16, dtype=torch.uint8)
    padded[:, :k] = q.data.view(torch.uint8)
    view8 = FP8Tensor(padded[:, :k].view(E4M3_DTYPE), q.scales)
    assert_same_bits(both(fp8_rowwise_to_colwise, view8), fp8_rowwise_to_colwise(q, backend="torch"))


@pytest.mark.parametrize("name", sorted(CONVERSIONS))
def test_rows_not_a_multiple_of_the_tile_are_refused(name):
    fn = CONVERSIONS[name]
    tile = 32 if name == "mxfp4_rowwise_to_colwise" else 128
    rows = tile + tile // 2
    t = random_fp8(rows, 128) if name.startswith("fp8") else random_mxfp4(rows, 64)
    for backend in ("triton", "torch"):
        with pytest.raises(ValueError, match=f"multiple of {tile}"):
            fn(t, backend=backend)


@pytest.mark.parametrize("name", sorted(CONVERSIONS))
def test_transposes_take_2d_input_and_handle_empty(name):
    fn = CONVERSIONS[name]
    if name.startswith("fp8"):
        t3 = FP8Tensor(torch.zeros(2, 128, 128, dtype=E4M3_DTYPE), torch.zeros(2, 128, 1, dtype=torch.uint8))
        t0 = random_fp8(0, 256)
    else:
        t3 = MXFP4Tensor(torch.zeros(2, 128, 64, dtype=torch.uint8), torch.zeros(2, 128, 4, dtype=torch.uint8))
        t0 = random_mxfp4(0, 256)
    with pytest.raises(ValueError, match="2-D"):
        fn(t3)
    with pytest.raises(TypeError, match="Tensor"):
        fn(torch.zeros(128, 128))
    empty = both(fn, t0)
    assert empty.shape == (256, 0)


# --- CUDA ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_transposes_match_reference_at_size(seed, scale_range):
    q = random_fp8(1024, 7168, scale_range, nan_codes=scale_range == "all", device="cuda")
    both(fp8_rowwise_to_colwise, q)
    x = random_mxfp4(1024, 7200, scale_range, device="cuda")  # 7200: a partial column block
    both(mxfp4_rowwise_to_colwise, x)
    both(mxfp4_rowwise_to_fp8_colwise, x)
    wire = torch.empty(1024, 3600 + 225 + 7, dtype=torch.uint8, device="cuda")
    wire[:, :3600], wire[:, 3600:3825] = x.data, x.scales
    view = MXFP4Tensor(wire[:, :3600], wire[:, 3600:3825])
    assert_same_bits(mxfp4_rowwise_to_fp8_colwise(view, backend="triton"),
                     mxfp4_rowwise_to_fp8_colwise(x, backend="torch"), "CUDA strided rows")
