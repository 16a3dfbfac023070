"""FP8 (E4M3, 1x128 tiles) Triton kernels vs the torch reference, bit for bit (data bytes, scale bytes,
decoded bits), on fresh random inputs and FORMATS.md's edge cases; E4M3 rounding against ml_dtypes;
the format's properties; strided `out=` / input views. Inputs and references are built on the CPU; every
Triton call runs on TRITON_DEVICE (the GPU when there is one, else the interpreter on CPU)."""

import math

import numpy as np
import pytest
import torch

from mxa2a.quant import FP8Tensor, dequantize_fp8, quantize_fp8, reference
from mxa2a.quant.kernels.fp8 import fp8_dequantize_triton, fp8_quantize_triton
from quant_codec_cases import BIT_VIEW, TRITON_DEVICE, edge_cases, on_cpu, on_triton, random_binades

# numpy (the interpreter) warns where fp32 overflows to Inf, which is the correctly rounded result here
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def assert_same_fp8(got: FP8Tensor, want: FP8Tensor) -> None:
    assert got.data.shape == want.data.shape and got.scales.shape == want.scales.shape
    assert torch.equal(got.scales, want.scales), "scale bytes differ"
    assert torch.equal(got.data.view(torch.uint8), want.data.view(torch.uint8)), "data bytes differ"


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(BIT_VIEW[got.dtype]), want.view(BIT_VIEW[want.dtype]))


def check_all_backends(x: torch.Tensor) -> None:
    want = reference.quantize_fp8(x)
    assert_same_fp8(on_cpu(quantize_fp8(on_triton(x), backend="triton")), want)
    for dtype in DTYPES:
        got = dequantize_fp8(on_triton(want), dtype, backend="triton")
        assert_same_bits(on_cpu(got), reference.dequantize_fp8(want, dtype))


@pytest.mark.parametrize("shape", [(1, 128), (0, 256), (3, 384), (2, 3, 128), (7, 512)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference_on_random_binades(seed, shape, dtype):
    check_all_backends(random_binades(shape, dtype, block=128))


def test_triton_matches_reference_on_tiny_fp32_tiles(seed):
    # amax in or near the fp32 subnormal range: k = -127, elements scaled by up to 2^127.
    x = random_binades((4, 256), torch.float32, block=128).double()
    x = x / x.abs().amax(dim=-1, keepdim=True) * torch.exp2(torch.tensor([-149.0, -140.0, -127.0, -118.0]))[:, None]
    check_all_backends(x.float())


@pytest.mark.parametrize("name", sorted(edge_cases(256)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference_on_edge_cases(name, dtype):
    check_all_backends(edge_cases(256)[name].to(dtype))


@pytest.mark.parametrize("block_m,block_k,num_warps", [(1, 128, 1), (4, 256, 2)])
def test_tile_sizes_do_not_change_bits(seed, block_m, block_k, num_warps):
    x = random_binades((5, 384), torch.bfloat16, block=128)
    want = reference.quantize_fp8(x)
    got = fp8_quantize_triton(on_triton(x), block_m=block_m, block_k=block_k, num_warps=num_warps)
    assert_same_fp8(on_cpu(got), want)
    d = fp8_dequantize_triton(on_triton(want), torch.float32, block_m=block_m, block_k=block_k, num_warps=num_warps)
    assert_same_bits(on_cpu(d), reference.dequantize_fp8(want, torch.float32))


def test_e4m3_element_rounding_matches_ml_dtypes(seed):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    # one tile per row with amax exactly 448 (k = 0), so elements are rounded as they are
    y = torch.ldexp(torch.rand(64, 128) + 1, torch.randint(-14, 9, (64, 128))).float().clamp(max=448)
    y = torch.where(torch.rand(y.shape) < 0.5, -y, y)
    y[:, 0] = 448.0
    ties = torch.tensor(np.arange(0, 2 ** -6, 2 ** -10), dtype=torch.float32)  # subnormal ties
    y[0, 1:1 + len(ties)] = ties
    got = on_cpu(quantize_fp8(on_triton(y), backend="triton"))
    assert (got.scales == 127).all()
    want = y.numpy().astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(got.data.view(torch.uint8).numpy(), want)


def test_every_byte_and_scale_decodes_exactly():
    data = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(256, 1)
    scales = torch.arange(256, dtype=torch.int32).to(torch.uint8)[:, None].repeat(1, 2)
    t = FP8Tensor(data.view(torch.float8_e4m3fn), scales)
    for dtype in DTYPES:
        got = dequantize_fp8(on_triton(t), dtype, backend="triton")
        assert_same_bits(on_cpu(got), reference.dequantize_fp8(t, dtype))
    d = on_cpu(dequantize_fp8(on_triton(t), torch.float32, backend="triton")).double().numpy()
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).double().numpy()
    for b in range(255):
        exact = e4m3 * 2.0 ** (b - 127)
        exact = np.where(np.abs(exact) >= 2.0 ** 128, np.copysign(np.inf, exact), exact)
        np.testing.assert_array_equal(d[b], exact)  # NaN bytes 0x7F / 0xFF compare equal as NaN
    assert np.isnan(d[255]).all()


def test_error_is_at_most_half_an_e4m3_step(seed):
    x = random_binades((6, 512), torch.float32, block=128)
    t = quantize_fp8(on_triton(x), backend="triton")
    d = on_cpu(dequantize_fp8(t, torch.float32, backend="triton")).double()
    t = on_cpu(t)
    k = t.scales.double().sub(127).repeat_interleave(128, dim=-1)
    y = (x.double() * torch.exp2(-k)).abs()
    assert (y <= 448).all()
    _, ex = torch.frexp(torch.where(y > 0, y, 1.0))
    step = torch.exp2(torch.clamp(ex.double() - 1, min=-6) - 3) * torch.exp2(k)
    assert ((x.double() - d).abs() <= step / 2).all()


def test_reencoding_decoded_values_gives_the_same_values(seed):
    # Values, not bytes: a tile maximum that rounded down to 448 * 2^(k-1) re-encodes with scale k - 1.
    t = quantize_fp8(on_triton(random_binades((4, 256), torch.float32, block=128)), backend="triton")
    d = dequantize_fp8(t, torch.float32, backend="triton")
    again = dequantize_fp8(quantize_fp8(d, backend="triton"), torch.float32, backend="triton")
    assert_same_bits(on_cpu(again), on_cpu(d))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_make_exactly_their_own_tile_nan(seed, bad):
    x = random_binades((3, 512), torch.bfloat16, block=128)
    r, c = int(torch.randint(3, ())), int(torch.randint(512, ()))
    x[r, c] = bad
    t = quantize_fp8(on_triton(x), backend="triton")
    d = on_cpu(dequantize_fp8(t, torch.float32, backend="triton"))
    expect = torch.zeros_like(d, dtype=torch.bool)
    expect[r, c // 128 * 128:(c // 128 + 1) * 128] = True
    assert torch.equal(torch.isnan(d), expect)


def test_non_contiguous_inputs_and_strided_out_views(seed):
    # Views and buffers are made on TRITON_DEVICE, so the kernel sees their strides.
    base = random_binades((256, 3), torch.float32, block=1)
    x = on_triton(base).t()  # last dim not contiguous: copied
    assert not x.is_contiguous()
    assert_same_fp8(on_cpu(quantize_fp8(x, backend="triton")), reference.quantize_fp8(base.t().contiguous()))
    n, h, pad = 4, 256, 5
    row = h + h // 128
    buf = torch.full((n, row + pad), 0xCD, dtype=torch.uint8, device=TRITON_DEVICE)
    y = random_binades((n, h), torch.bfloat16, block=128)
    out = FP8Tensor(buf[:, :h].view(torch.float8_e4m3fn), buf[:, h:row])
    quantize_fp8(on_triton(y), backend="triton", out=out)
    want = reference.quantize_fp8(y)
    host = buf.cpu()
    assert torch.equal(host[:, :h], want.data.view(torch.uint8)) and torch.equal(host[:, h:row], want.scales)
    assert host[:, row:].eq(0xCD).all()
    dst = torch.zeros(n, 2 * h, device=TRITON_DEVICE)
    dequantize_fp8(out, torch.float32, backend="triton", out=dst[:, h:])
    host = dst.cpu()
    assert_same_bits(host[:, h:], reference.dequantize_fp8(want, torch.float32))
    assert host[:, :h].eq(0).all()


def test_empty_tensors():
    t = quantize_fp8(torch.zeros(0, 128, dtype=torch.float16, device=TRITON_DEVICE), backend="triton")
    assert t.data.shape == (0, 128) and t.scales.shape == (0, 1)
    assert dequantize_fp8(t, torch.float32, backend="triton").shape == (0, 128)


def test_triton_wrapper_rejects_bad_arguments():
    dev = TRITON_DEVICE  # every operand where the kernel would run, so only the named defect is wrong
    with pytest.raises(ValueError, match="block_k must be a power of two >= 128"):
        fp8_quantize_triton(torch.randn(1, 128, device=dev), block_k=64)
    with pytest.raises(ValueError, match=r"multiple of 128, got shape \(1, 96\)"):
        fp8_quantize_triton(torch.randn(1, 96, device=dev))
    with pytest.raises(ValueError, match="out must be"):
        fp8_dequantize_triton(quantize_fp8(torch.randn(1, 128, device=dev), backend="triton"), torch.float32,
                              out=torch.zeros(1, 256, device=dev))


def test_scale_inv_matches_the_scale_bytes(seed):
    t = on_cpu(quantize_fp8(on_triton(random_binades((2, 256), torch.float32, block=128)), backend="triton"))
    k = t.scales.to(torch.int64) - 127
    assert torch.equal(t.scale_inv(), torch.tensor([[math.ldexp(1.0, int(v)) for v in r] for r in k.tolist()]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_matches_reference_at_scale(seed, dtype):
    x = random_binades((4096, 7168), dtype, block=128).cuda()
    x[5, 1000] = float("inf")
    want = reference.quantize_fp8(x)
    assert_same_fp8(quantize_fp8(x), want)
    for out_dtype in DTYPES:
        assert_same_bits(dequantize_fp8(want, out_dtype), reference.dequantize_fp8(want, out_dtype))
    for name, e in edge_cases(7168).items():
        e = e.to(dtype).cuda()
        assert_same_fp8(quantize_fp8(e), reference.quantize_fp8(e)), name
    n, h = 1000, 7168
    buf = torch.zeros(n, h + h // 128, dtype=torch.uint8, device="cuda")
    quantize_fp8(x[:n], out=FP8Tensor(buf[:, :h].view(torch.float8_e4m3fn), buf[:, h:]))
    assert torch.equal(buf[:, :h], want.data[:n].view(torch.uint8)) and torch.equal(buf[:, h:], want.scales[:n])
