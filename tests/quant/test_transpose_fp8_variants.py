"""Every kernel variant of the scaling-aware FP8 transpose (`quant/kernels/transpose_fp8.py`) equals the
torch reference bit for bit, for several tile widths and warp counts: random many-binade bytes, every
(code, shift) pair, E4M3 subnormals, NaN elements and NaN row tiles, huge scale spreads, strided rows."""

import pytest
import torch
import triton
from conversion_data import TRITON_DEVICE, assert_same_bits, fp8_from_bytes, random_fp8, to_device

from mxa2a.quant import reference_conversions as ref
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor
from mxa2a.quant.kernels import launch, transpose_fp8
from mxa2a.quant.kernels.launch import LaunchConfig

# (block_k, num_warps, variant); block_m is always 128 for this kernel. The configurations proposed
# for the benchmark sweep, plus a few more warp counts.
CONFIGS = [(64, 4, 0), (128, 8, 0), (64, 4, 1), (32, 2, 1), (32, 2, 2), (64, 4, 2), (128, 4, 2), (128, 8, 2),
           (32, 1, 3), (32, 2, 3), (64, 2, 3), (64, 4, 3), (128, 8, 3), (128, 4, 4), (32, 1, 4)]
IDS = [f"k{k}-w{w}-v{v}" for k, w, v in CONFIGS]


def run(t: FP8Tensor, cfg, monkeypatch) -> FP8Tensor:
    k, w, v = cfg
    monkeypatch.setitem(launch.CONFIGS, "fp8_rowwise_to_colwise", LaunchConfig(128, k, w, v))
    got = to_device(transpose_fp8.fp8_rowwise_to_colwise_triton(to_device(t, TRITON_DEVICE)), "cpu")
    assert_same_bits(got, ref.fp8_rowwise_to_colwise(t), f"fp8_rowwise_to_colwise {cfg}")
    return got


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


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_every_code_at_every_shift(cfg, monkeypatch):
    run(every_code_and_shift(), cfg, monkeypatch)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("scale_range", ["all", "realistic", "bottom", "top"])
def test_random_bytes(seed, cfg, scale_range, monkeypatch):
    q = random_fp8(256, 256, scale_range, nan_codes=scale_range in ("all", "bottom"))
    run(q, cfg, monkeypatch)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_subnormals_nan_and_spreads(seed, cfg, monkeypatch):
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
    run(fp8_from_bytes(data, scales), cfg, monkeypatch)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_strided_row_views(seed, cfg, monkeypatch):
    q = random_fp8(128, 256, "all", nan_codes=True)
    wire = torch.empty(128, 256 + 2 + 5, dtype=torch.uint8)
    wire[:, :256] = q.data.view(torch.uint8)
    wire[:, 256:258] = q.scales
    view = FP8Tensor(wire[:, :256].view(E4M3_DTYPE), wire[:, 256:258])
    got = run(view, cfg, monkeypatch)
    assert got.data.shape == (256, 128) and got.scales.shape == (256, 1)


def test_empty_and_unknown_variant(monkeypatch):
    monkeypatch.setitem(launch.CONFIGS, "fp8_rowwise_to_colwise", LaunchConfig(128, 64, 4, 1))
    empty = transpose_fp8.fp8_rowwise_to_colwise_triton(to_device(random_fp8(0, 256), TRITON_DEVICE))
    assert empty.data.shape == (256, 0) and empty.scales.shape == (256, 0)
    monkeypatch.setitem(launch.CONFIGS, "fp8_rowwise_to_colwise", LaunchConfig(128, 64, 4, 9))
    with pytest.raises(ValueError, match="variant"):
        transpose_fp8.fp8_rowwise_to_colwise_triton(to_device(random_fp8(128, 128), TRITON_DEVICE))


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("block_k", [32, 128])
def test_masked_paths(seed, block_k, variant):
    # The wrapper always picks EVEN for valid containers (M, K multiples of 128); the masked body must
    # still be right, so launch it directly.
    q = to_device(random_fp8(256, 256, "all", nan_codes=True), TRITON_DEVICE)
    M, K = q.shape
    data = q.data.view(torch.uint8)
    o = torch.empty(K, M, dtype=torch.uint8, device=TRITON_DEVICE)
    os_ = torch.empty(K, M // 128, dtype=torch.uint8, device=TRITON_DEVICE)
    grid = (M // 128, triton.cdiv(K, 128 if variant == 3 else block_k))  # v3: one program per 128x128 tile
    getattr(transpose_fp8, f"_fp8_rowwise_to_colwise_v{variant}_kernel")[grid](
        data, q.scales, o, os_, M, K, data.stride(0), q.scales.stride(0), o.stride(0), os_.stride(0),
        BLOCK_K=block_k, EVEN=False, num_warps=4)
    assert_same_bits(fp8_from_bytes(o.cpu(), os_.cpu()), ref.fp8_rowwise_to_colwise(to_device(q, "cpu")))


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cuda_at_size(seed, cfg, monkeypatch):
    for scale_range in ("all", "realistic"):
        q = random_fp8(1024, 7168, scale_range, nan_codes=scale_range == "all", device="cuda")
        k, w, v = cfg
        monkeypatch.setitem(launch.CONFIGS, "fp8_rowwise_to_colwise", LaunchConfig(128, k, w, v))
        assert_same_bits(transpose_fp8.fp8_rowwise_to_colwise_triton(q),
                         ref.fp8_rowwise_to_colwise(to_device(q, "cpu")), f"CUDA {cfg} {scale_range}")
