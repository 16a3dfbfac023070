"""Variants 2 and 3 of the direct conversions (`quant/kernels/convert.py`: integer-only, four codes per
32-bit word or table lookups, a general path for rare programs) equal the two-step references bit for bit: random bytes over
every scale range, activation-like data, every E4M3 / E2M1 code against every block exponent offset,
NaN / Inf / zero / subnormal corners, partial tiles (non-EVEN), strided and misaligned row views; and
the word-wise fast path alone is exact on the data it claims."""

import pytest
import torch
import triton
import triton.language as tl
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, convert_top_binade_pending,
                             fp8_from_bytes, random_fp8, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import fp8_to_mxfp4, mxfp4_to_fp8
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor, MXFP4Tensor
from mxa2a.quant.kernels import convert, launch
from mxa2a.quant.kernels.launch import LaunchConfig

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# (block_m, block_k, warps): EVEN and partial tiles depending on the shapes below.
TILES = [(4, 256, 4), (2, 128, 2), (1, 512, 4)]


def _f2m(t: FP8Tensor, mode: str, cfg: LaunchConfig, monkeypatch, out=None) -> MXFP4Tensor:
    monkeypatch.setitem(launch.CONFIGS, "fp8_to_mxfp4", cfg)
    got = fp8_to_mxfp4(to_device(t, TRITON_DEVICE), scale_mode=mode, backend="triton",
                       out=None if out is None else to_device(out, TRITON_DEVICE))
    return to_device(got, "cpu")


def _m2f(t: MXFP4Tensor, cfg: LaunchConfig, monkeypatch) -> FP8Tensor:
    monkeypatch.setitem(launch.CONFIGS, "mxfp4_to_fp8", cfg)
    return to_device(mxfp4_to_fp8(to_device(t, TRITON_DEVICE), backend="triton"), "cpu")


def check_f2m(t: FP8Tensor, monkeypatch, tiles=TILES, modes=("rceil", "floor"), what=""):
    for mode in modes:
        want = fp8_to_mxfp4(t, scale_mode=mode, backend="torch")
        for m, k, w in tiles:
            assert_same_bits(_f2m(t, mode, LaunchConfig(m, k, w, 2), monkeypatch), want,
                             f"fp8_to_mxfp4 v2 {m}x{k} {mode} {what}")


def check_m2f(t: MXFP4Tensor, monkeypatch, tiles=TILES, what=""):
    want = mxfp4_to_fp8(t, backend="torch")
    for m, k, w in tiles:
        for v in (2, 3):
            assert_same_bits(_m2f(t, LaunchConfig(m, k, w, v), monkeypatch), want,
                             f"mxfp4_to_fp8 v{v} {m}x{k} {what}")


def activation_like(rows: int, k: int) -> torch.Tensor:
    """Gaussian rows at magnitudes 2^-8 .. 2^8 (what the benchmark converts), a zero row, a zero block."""
    x = torch.randn(rows, k) * torch.exp2(torch.randint(-8, 9, (rows, 1)).float())
    x[1] = 0
    x[2, 32:64] = 0
    return x


# --- random bytes and activation-like data -------------------------------------------------------------

@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_fp8_to_mxfp4_v2_random_bytes(request, seed, monkeypatch, scale_range):
    if scale_range in ("top", "all"):  # random: may miss fp32's top binade
        request.applymarker(convert_top_binade_pending(strict=False))
    # 6 rows x 384: partial row and column tiles for block 4 x 256, EVEN for 2 x 128.
    check_f2m(random_fp8(6, 384, scale_range, nan_codes=scale_range == "all"), monkeypatch, what=scale_range)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_mxfp4_to_fp8_v2_random_bytes(seed, monkeypatch, scale_range):
    check_m2f(random_mxfp4(6, 384, scale_range), monkeypatch, what=scale_range)


def test_v2_activation_like_data(seed, monkeypatch):
    x = activation_like(8, 512)
    check_f2m(reference.quantize_fp8(x), monkeypatch, what="activations")
    check_m2f(reference.quantize_mxfp4(x), monkeypatch, what="activations")


# --- every code against every exponent offset -----------------------------------------------------------

@convert_top_binade_pending(strict=True)  # scale byte 250 puts maxima in fp32's top binade
def test_fp8_to_mxfp4_v2_every_code_under_every_block_maximum(monkeypatch):
    # One 32-block per (largest code, row): the largest code mx (every nonzero E4M3 magnitude and NaN),
    # then 31 codes spread over 0..mx with random signs; tile scale bytes 127, 9 (the bottom of the
    # fast path), 1 (fp32 subnormal maxima) and 250 (Inf for large codes).
    g = torch.Generator().manual_seed(3)
    blocks = []
    for mx in range(1, 128):
        rest = torch.linspace(0, mx, 31).round().to(torch.int64)
        sign = torch.randint(0, 2, (32,), generator=g) << 7
        blocks.append(torch.cat([torch.tensor([mx]), rest]) | sign)
    blocks.append(torch.zeros(32, dtype=torch.int64))  # a zero block (128 blocks = 32 tiles)
    data = torch.stack(blocks).reshape(8, 512)
    for tb in (127, 9, 1, 250):
        t = fp8_from_bytes(data, torch.full((8, 4), tb))
        check_f2m(t, monkeypatch, tiles=[(4, 256, 4)], what=f"scale byte {tb}")


def test_mxfp4_to_fp8_v2_every_code_at_every_block_offset(monkeypatch):
    # Tiles whose largest block is 6 * 2^0 and whose other blocks sit 0..20 binades lower (E4M3
    # normals, exact subnormals, rounded and vanishing values), every code in every block.
    codes = torch.arange(32) % 16                                   # each code twice per block
    data = (codes[0::2] | (codes[1::2] << 4)).repeat(16, 4)         # [16 rows, 4 blocks * 16 bytes]
    top = torch.full((16, 1), 130)
    drops = torch.tensor([[0, a, b, c] for a, b, c in zip(range(0, 16), range(5, 21), range(2, 18))])
    scales = (top - drops).clamp(min=0)
    check_m2f(MXFP4Tensor(data.to(torch.uint8), scales.to(torch.uint8)), monkeypatch, tiles=[(4, 128, 2)],
              what="offsets")
    # The same at the bottom and the top of E8M0 (k clamped at -127; 2^128 overflow).
    for base in (3, 253):
        s = (torch.full((16, 4), base) - drops.clamp(max=base)).to(torch.uint8)
        check_m2f(MXFP4Tensor(data.to(torch.uint8), s), monkeypatch, tiles=[(16, 128, 4)], what=f"base {base}")


# --- corners ------------------------------------------------------------------------------------------------

def test_fp8_to_mxfp4_v2_nan_inf_zero_and_subnormal_blocks(monkeypatch):
    data = torch.full((4, 256), 0x38, dtype=torch.uint8)   # 1.0
    data[0, 40] = 0x7F                                       # E4M3 NaN: block 1 of row 0
    data[0, 64:96] = 0x80                                    # a block of -0: code 8, scale byte 0
    data[1, :32] = torch.arange(32) % 8                      # a block of subnormals only
    data[1, 200] = 0xFE                                      # -448
    data[2, 128] = 0x40                                      # 2 * 2^127 = 2^128 (Inf) in a 254 tile
    scales = torch.tensor([[127, 127], [127, 0], [100, 254], [255, 127]])  # NaN tile in row 3
    check_f2m(fp8_from_bytes(data, scales), monkeypatch, what="corners")


def test_mxfp4_to_fp8_v2_nan_and_overflow_tiles(monkeypatch):
    data = torch.full((2, 128), 0x33, dtype=torch.uint8)   # 1.5 everywhere
    scales = torch.full((2, 8), 127, dtype=torch.uint8)
    scales[0, 1] = 255                                      # NaN block: tile 0 of row 0 is NaN
    scales[1, 4:8] = 254
    data[1, 64] = 0x34                                      # 2 * 2^127: Inf, tile 1 of row 1 is NaN
    check_m2f(MXFP4Tensor(data, scales), monkeypatch, what="NaN tiles")


# --- row views ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad", [4, 3])  # word-aligned row stride (variant 2 in place) or not (variant 1)
def test_v2_strided_wire_rows(seed, monkeypatch, pad):
    n, k = 5, 256
    q = reference.quantize_fp8(activation_like(n, k))
    cfg = LaunchConfig(2, 128, 2, 2)
    fp8_rows = torch.full((n, k + pad), 0x55, dtype=torch.uint8)
    fp8_rows[:, :k] = q.data.view(torch.uint8)
    qv = FP8Tensor(fp8_rows[:, :k].view(E4M3_DTYPE), q.scales)
    wire = torch.full((n, k // 2 + k // 32 + pad), 0xAA, dtype=torch.uint8, device=TRITON_DEVICE)
    out = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:k // 2 + k // 32])
    monkeypatch.setitem(launch.CONFIGS, "fp8_to_mxfp4", cfg)
    got = fp8_to_mxfp4(to_device(qv, TRITON_DEVICE), scale_mode="rceil", backend="triton", out=out)
    assert got.data.data_ptr() == wire.data_ptr()  # written in place, on the device of `wire`
    assert_same_bits(to_device(got, "cpu"), fp8_to_mxfp4(q, backend="torch"), f"into wire rows, pad {pad}")
    assert (wire[:, k // 2 + k // 32:].cpu() == 0xAA).all()
    check_m2f(MXFP4Tensor(wire[:, :k // 2].cpu(), wire[:, k // 2:k // 2 + k // 32].cpu()), monkeypatch,
              tiles=[(2, 128, 2), (4, 256, 4)], what=f"from wire rows, pad {pad}")


# --- the fast path alone ------------------------------------------------------------------------------------

@triton.jit
def _skip_f2m(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
              pid_m, pid_k, RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass


@triton.jit
def _skip_m2f(x_ptr, xs_ptr, q_ptr, qs_ptr, M, K, stride_x, stride_xs, stride_q, stride_qs,
              pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass


@pytest.mark.skipif(TRITON_DEVICE == "cuda", reason="swaps a jit function, which only the interpreter sees")
def test_v2_fast_path_alone_is_exact_where_taken(seed, monkeypatch):
    # With the general path made a no-op, programs that take the fast path still give the reference bits
    # (the outputs start as 0xAA), and data that needs the general path visibly does not.
    monkeypatch.setattr(convert, "_fp8_to_mxfp4_v1_tile", _skip_f2m)
    monkeypatch.setattr(convert, "_mxfp4_to_fp8_v1_tile", _skip_m2f)
    cfg = LaunchConfig(4, 256, 4, 2)
    x = activation_like(8, 512)
    x[3, 256:384] = float("nan")
    q = reference.quantize_fp8(x)
    for mode in ("rceil", "floor"):
        out = MXFP4Tensor(torch.full((8, 256), 0xAA, dtype=torch.uint8), torch.full((8, 16), 0xAA, dtype=torch.uint8))
        assert_same_bits(_f2m(q, mode, cfg, monkeypatch, out=out), fp8_to_mxfp4(q, scale_mode=mode, backend="torch"),
                         f"fast path alone {mode}")
    xm = reference.quantize_mxfp4(x)
    for v in (2, 3):
        assert_same_bits(_m2f(xm, LaunchConfig(4, 256, 4, v), monkeypatch), mxfp4_to_fp8(xm, backend="torch"),
                         f"fast path alone, v{v}")

    tiny = q.data.view(torch.uint8).clone()
    tiny[0, :32] = 0x01  # a block of subnormals next to 448-sized values: general path
    qt = FP8Tensor(tiny.view(E4M3_DTYPE), q.scales)
    out = MXFP4Tensor(torch.full((8, 256), 0xAA, dtype=torch.uint8), torch.full((8, 16), 0xAA, dtype=torch.uint8))
    assert (_f2m(qt, "rceil", cfg, monkeypatch, out=out).scales[:4, :8] == 0xAA).all()  # that program only
    far = MXFP4Tensor(xm.data, xm.scales.clone())
    far.scales[0, 1] = far.scales[0, 0] - 20  # a block 2^20 below its tile: general path
    for v in (2, 3):
        with pytest.raises(AssertionError):
            assert_same_bits(_m2f(far, LaunchConfig(4, 256, 4, v), monkeypatch), mxfp4_to_fp8(far, backend="torch"))
