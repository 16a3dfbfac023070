"""`fp8_rowwise_to_colwise` (`quant/kernels/fp8_rowwise_to_colwise.py`): the "words" kernel and the
"bytes" kernel (by config, for unaligned rows, and its masked body) equal the torch reference bit for
bit: every (code, shift) pair, random many-binade bytes, E4M3 subnormals rounded (never flushed), NaN
elements and NaN row tiles, huge scale spreads, the max-row-exponent scale rule, the lossless window,
strided rows, shapes, empties, bad input and bad configurations."""

import pytest
import torch
import triton
from conversion_data import (TRITON_DEVICE, assert_same_bits, assert_same_values, check_config,
                             check_transpose_shapes, decoded, fp8_from_bytes, live_configs, random_fp8, to_device)

from mxa2a.quant import reference
from mxa2a.quant import reference_conversions as ref
from mxa2a.quant.conversions import fp8_rowwise_to_colwise
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor
from mxa2a.quant.kernels import fp8_rowwise_to_colwise as kernels
from mxa2a.quant.kernels.launch import LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# Both kernels at the sweep's tile widths and warp counts on a GPU; one of each under the interpreter.
CONFIGS = live_configs("fp8_rowwise_to_colwise")


def both(t: FP8Tensor, cfg: LaunchConfig | None = None) -> FP8Tensor:
    """Triton result (configuration `cfg`, default the tuned one), checked against the torch reference."""
    return check_config(fp8_rowwise_to_colwise, cfg, t)


def every_code_and_shift() -> FP8Tensor:
    """Tile 0: row i has shift d = i (0..127) below kt = 200, each row holds all 256 codes (tiles 0-1).
    Tile 2: d from 254 (byte 0 under kt = 254) down to 0, the extreme spreads."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes = torch.where((codes & 0x7F) == 0x7F, codes & 0xF7, codes)  # no NaN: every column stays finite
    data = torch.cat([codes.repeat(128, 1), codes[:128].repeat(128, 1)], dim=1)  # [128, 384]
    scales = torch.empty(128, 3, dtype=torch.int64)
    scales[:, 0] = scales[:, 1] = 200 - torch.arange(128)
    scales[:, 2] = torch.clamp(254 - 2 * torch.arange(128), min=0)
    scales[5, 2] = 254 - 20
    return fp8_from_bytes(data, scales)


# --- every kernel -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_every_code_at_every_shift(cfg):
    both(every_code_and_shift(), cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("scale_range", ["all", "realistic", "bottom", "top"])
def test_random_bytes(seed, cfg, scale_range):
    both(random_fp8(256, 256, scale_range, nan_codes=scale_range in ("all", "bottom")), cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_subnormals_nan_and_spreads(seed, cfg):
    data = torch.randint(0, 256, (256, 256), dtype=torch.uint8)
    data = torch.where((data & 0x7F) == 0x7F, data & 0xF7, data)
    data[:, :16] = torch.randint(0, 16, (256, 16), dtype=torch.uint8) | 0x80 * torch.randint(0, 2, (256, 16),
                                                                                            dtype=torch.uint8)
    data[3, 40] = 0x7F           # a NaN element: column 40 of rows 0..127 is one NaN tile
    data[200, 77] = 0xFF         # -NaN in the second row block
    scales = 120 + torch.randint(0, 12, (256, 2))
    scales[7, 1] = 255           # a NaN row tile: columns 128..255 of rows 0..127
    scales[130, 0] = 254         # a huge spread: everything else in that tile shifts by >= 120
    scales[140, 1] = 0
    both(fp8_from_bytes(data, scales), cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("extra", [6, 5])  # row stride 264 (words in place) or 263 ("words" falls back to "bytes")
def test_strided_row_views(seed, cfg, extra):
    q = random_fp8(128, 256, "all", nan_codes=True)
    wire = torch.empty(128, 256 + 2 + extra, dtype=torch.uint8)
    wire[:, :256] = q.data.view(torch.uint8)
    wire[:, 256:258] = q.scales
    view = FP8Tensor(wire[:, :256].view(E4M3_DTYPE), wire[:, 256:258])
    got = both(view, cfg)
    assert got.data.shape == (256, 128) and got.scales.shape == (256, 1)


@pytest.mark.parametrize("block_k", [32, 128])
def test_bytes_masked_body(seed, block_k):
    # The wrapper always picks EVEN for valid containers (M, K multiples of 128); the masked body must
    # still be right, so launch it directly.
    q = to_device(random_fp8(256, 256, "all", nan_codes=True), TRITON_DEVICE)
    M, K = q.shape
    data = q.data.view(torch.uint8)
    o = torch.empty(K, M, dtype=torch.uint8, device=TRITON_DEVICE)
    os_ = torch.empty(K, M // 128, dtype=torch.uint8, device=TRITON_DEVICE)
    grid = (M // 128, triton.cdiv(K, 128))  # one program per 128x128 tile
    kernels._fp8_rowwise_to_colwise_bytes_kernel[grid](
        data, q.scales, o, os_, M, K, data.stride(0), q.scales.stride(0), o.stride(0), os_.stride(0),
        q.scales, M, BLOCK_K=block_k, EVEN=False, MAPPED=False, num_warps=4)
    assert_same_bits(fp8_from_bytes(o.cpu(), os_.cpu()), ref.fp8_rowwise_to_colwise(to_device(q, "cpu")))


# --- the fused row gather (row_map) -------------------------------------------------------------------------

def some_row_map(m_in: int, m_out: int) -> torch.Tensor:
    """Random source rows with padding (-1), out-of-range entries (zero rows too), repeats, and one
    128-row block of padding only."""
    row_map = torch.randint(-1, m_in, (m_out,), dtype=torch.int32)
    row_map[:5] = -1
    row_map[5], row_map[6] = m_in, m_in + 1000
    row_map[7:9] = 3
    row_map[128:256] = -1
    return row_map


def mapped(q: FP8Tensor, row_map: torch.Tensor, cfg: LaunchConfig | None = None) -> FP8Tensor:
    """The fused gather + transpose on TRITON_DEVICE, checked against gathering then transposing in
    torch (and the torch backend of the fused call)."""
    want = ref.fp8_rowwise_to_colwise(ref.gather_rows(q, row_map))
    got = fp8_rowwise_to_colwise(to_device(q, TRITON_DEVICE), row_map=row_map.to(TRITON_DEVICE),
                                 backend="triton", config=cfg)
    assert_same_bits(to_device(got, "cpu"), want, f"row_map {cfg}")
    assert_same_bits(fp8_rowwise_to_colwise(q, row_map=row_map, backend="torch"), want, "row_map torch")
    return got


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m_in", [200, 384])
def test_row_map_equals_gather_then_transpose(seed, cfg, m_in):
    got = mapped(random_fp8(m_in, 256, "all", nan_codes=True), some_row_map(m_in, 384), cfg)
    assert got.shape == (256, 384) and (got.scales[:, 1] == 0).all()  # the padding block: 2^-127 times 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_row_map_on_strided_rows(seed, cfg):
    # row stride 263: "words" falls back to the bytes kernel, which gathers too
    q = random_fp8(160, 256, "all", nan_codes=True)
    wire = torch.empty(160, 263, dtype=torch.uint8)
    wire[:, :256] = q.data.view(torch.uint8)
    wire[:, 256:258] = q.scales
    mapped(FP8Tensor(wire[:, :256].view(E4M3_DTYPE), wire[:, 256:258]), some_row_map(160, 256), cfg)


@pytest.mark.parametrize("block_k", [32, 128])
def test_row_map_bytes_masked_body(seed, block_k):
    q = to_device(random_fp8(100, 256, "all", nan_codes=True), TRITON_DEVICE)
    row_map = some_row_map(100, 256).to(TRITON_DEVICE)
    m_in, K = q.shape
    M = row_map.numel()
    data = q.data.view(torch.uint8)
    o = torch.empty(K, M, dtype=torch.uint8, device=TRITON_DEVICE)
    os_ = torch.empty(K, M // 128, dtype=torch.uint8, device=TRITON_DEVICE)
    kernels._fp8_rowwise_to_colwise_bytes_kernel[(M // 128, triton.cdiv(K, 128))](
        data, q.scales, o, os_, M, K, data.stride(0), q.scales.stride(0), o.stride(0), os_.stride(0),
        row_map, m_in, BLOCK_K=block_k, EVEN=False, MAPPED=True, num_warps=4)
    want = ref.fp8_rowwise_to_colwise(ref.gather_rows(to_device(q, "cpu"), row_map.cpu()))
    assert_same_bits(fp8_from_bytes(o.cpu(), os_.cpu()), want)


def test_bad_row_maps_are_refused():
    q = random_fp8(128, 128)
    for bad, err, match in [(torch.zeros(128, dtype=torch.int64), TypeError, "1-D torch.int32"),
                            (torch.zeros(1, 128, dtype=torch.int32), TypeError, "1-D torch.int32"),
                            ([0] * 128, TypeError, "1-D torch.int32"),
                            (torch.zeros(100, dtype=torch.int32), ValueError, "multiple of 128 entries")]:
        with pytest.raises(err, match=match):
            fp8_rowwise_to_colwise(q, row_map=bad)
    t3 = FP8Tensor(torch.zeros(2, 128, 128, dtype=E4M3_DTYPE), torch.zeros(2, 128, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2-D"):
        fp8_rowwise_to_colwise(t3, row_map=torch.zeros(128, dtype=torch.int32))
    assert fp8_rowwise_to_colwise(q, row_map=torch.zeros(0, dtype=torch.int32)).shape == (128, 0)


# --- the scale rule, rounding and NaN (default kernel) ------------------------------------------------------

def test_rounds_subnormals_instead_of_flushing():
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
    out = both(fp8_from_bytes(data, scales))
    assert (out.scales == 130).all()
    want = torch.zeros(128, 128, dtype=torch.uint8)
    for (j, i), b in {(0, 0): 0x7E, (1, 1): 0x01, (3, 3): 0x02, (4, 4): 0x02, (5, 4): 0x02, (6, 4): 0x04,
                      (7, 4): 0x82, (8, 5): 0x80, (9, 6): 0x20}.items():
        want[j, i] = b
    assert torch.equal(out.data.view(torch.uint8), want)


def test_keeps_nan():
    data = torch.full((256, 256), 0x38, dtype=torch.uint8)  # 1.0
    data[200, 130] = 0x7F                                     # E4M3 NaN
    data[10, 140] = 0xFF                                      # -NaN
    scales = torch.full((256, 2), 127)
    scales[5, 0] = 255                                        # a NaN row tile
    q = fp8_from_bytes(data, scales)
    out = both(q)
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


def test_uses_max_row_exponent_not_amax():
    # Every row scale is 2^3 but the values are small: quantize_fp8(deq.T) would pick a smaller scale
    # for the tile; the scaling-aware transpose keeps kt = 3 and loses nothing.
    data = torch.randint(0, 0x39, (128, 128), dtype=torch.uint8)  # |q| <= 1.125
    q = fp8_from_bytes(data, torch.full((128, 1), 130))
    out = both(q)
    assert (out.scales == 130).all()
    requantized = reference.quantize_fp8(decoded(q).T.contiguous())
    assert (requantized.scales < 130).all()
    assert_same_values(decoded(out), decoded(q).T, "same row scales: exact")


def test_lossless_when_shifted_values_stay_normal(seed):
    # Row scales differ by up to 3 within each tile; all |q| >= 2^-3, so |q| * 2^-3 >= 2^-6 is normal.
    mag = torch.randint(0x20, 0x7F, (256, 256), dtype=torch.uint8)
    data = mag | (torch.randint(0, 2, mag.shape, dtype=torch.uint8) << 7)
    q = fp8_from_bytes(data, 100 + torch.randint(0, 4, (256, 2)))
    assert_same_values(decoded(both(q)), decoded(q).T, "lossless window")


# --- shapes, bad input and bad configurations ---------------------------------------------------------------

def test_bad_shapes_are_refused_and_empty_input_gives_empty_output():
    t3 = FP8Tensor(torch.zeros(2, 128, 128, dtype=E4M3_DTYPE), torch.zeros(2, 128, 1, dtype=torch.uint8))
    check_transpose_shapes(fp8_rowwise_to_colwise, 128, random_fp8(192, 128), t3, random_fp8(0, 256))


@pytest.mark.parametrize("bad, match", [(LaunchConfig(128, 64, 4, "v9"), "variant"),
                                        (LaunchConfig(64, 64, 4, "bytes"), "block_m 128"),
                                        (LaunchConfig(128, 256, 4, "words"), "dividing 128")], ids=str)
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        fp8_rowwise_to_colwise(to_device(random_fp8(128, 128), TRITON_DEVICE), backend="triton", config=bad)


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_cuda_at_size(seed, cfg):
    for scale_range in ("all", "realistic"):
        q = random_fp8(1024, 7168, scale_range, nan_codes=scale_range == "all", device="cuda")
        both(q, cfg)
    padded = torch.empty(1024, 7168 + 16, dtype=torch.uint8, device="cuda")
    padded[:, :7168] = q.data.view(torch.uint8)
    both(FP8Tensor(padded[:, :7168].view(E4M3_DTYPE), q.scales), cfg)
    mapped(to_device(q, "cpu"), some_row_map(1024, 1280), cfg)
