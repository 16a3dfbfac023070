"""MXFP4 Triton kernels vs the torch reference, bit for bit (data bytes, scale bytes, decoded bits), on
fresh random inputs and FORMATS.md's edge cases; plus the format's properties and the strided
`out=` / input views the comm layer uses. Inputs and references are built on the CPU; every Triton call
runs on TRITON_DEVICE (the GPU when there is one, else the interpreter on CPU, see tests/conftest.py)."""

import math

import numpy as np
import pytest
import torch

from mxa2a.quant import MXFP4Tensor, dequantize_mxfp4, quantize_mxfp4, reference
from mxa2a.quant.checks import rows_in
from mxa2a.quant.kernels.mxfp4 import mxfp4_dequantize_triton, mxfp4_quantize_triton
from quant_codec_cases import BIT_VIEW, TRITON_DEVICE, edge_cases, on_cpu, on_triton, random_binades

# numpy (the interpreter) warns where fp32 overflows to Inf, which is the correctly rounded result here
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["rceil", "floor"]
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def assert_same_mxfp4(got: MXFP4Tensor, want: MXFP4Tensor) -> None:
    assert got.data.shape == want.data.shape and got.scales.shape == want.scales.shape
    assert torch.equal(got.scales, want.scales), "scale bytes differ"
    assert torch.equal(got.data, want.data), "data bytes differ"


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(BIT_VIEW[got.dtype]), want.view(BIT_VIEW[want.dtype]))


def check_all_backends(x: torch.Tensor, mode: str) -> None:
    want = reference.quantize_mxfp4(x, mode)
    got = quantize_mxfp4(on_triton(x), scale_mode=mode, backend="triton")
    assert_same_mxfp4(on_cpu(got), want)
    for dtype in DTYPES:
        got_d = dequantize_mxfp4(on_triton(want), dtype, backend="triton")
        assert_same_bits(on_cpu(got_d), reference.dequantize_mxfp4(want, dtype))


@pytest.mark.parametrize("shape", [(1, 32), (0, 64), (3, 96), (2, 3, 64), (9, 512)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_triton_matches_reference_on_random_binades(seed, shape, dtype, mode):
    check_all_backends(random_binades(shape, dtype), mode)


@pytest.mark.parametrize("name", sorted(edge_cases(128)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference_on_edge_cases(name, dtype):
    x = edge_cases(128)[name].to(dtype)
    for mode in MODES:
        check_all_backends(x, mode)


@pytest.mark.parametrize("block_m,block_k,num_warps", [(1, 32, 1), (4, 64, 2), (2, 256, 4)])
def test_tile_sizes_do_not_change_bits(seed, block_m, block_k, num_warps):
    x = random_binades((5, 352), torch.bfloat16)
    want = reference.quantize_mxfp4(x, "rceil")
    got = mxfp4_quantize_triton(on_triton(x), "rceil", block_m=block_m, block_k=block_k, num_warps=num_warps)
    assert_same_mxfp4(on_cpu(got), want)
    d = mxfp4_dequantize_triton(on_triton(want), torch.bfloat16, block_m=block_m, block_k=block_k,
                                num_warps=num_warps)
    assert_same_bits(on_cpu(d), reference.dequantize_mxfp4(want, torch.bfloat16))


def test_every_byte_and_scale_decodes_exactly():
    # rows: scale byte b (all 16 blocks of the row); columns: all 256 data bytes.
    data = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(256, 1)
    scales = torch.arange(256, dtype=torch.int32).to(torch.uint8)[:, None].repeat(1, 16)
    t = MXFP4Tensor(data, scales)
    for dtype in DTYPES:
        got = dequantize_mxfp4(on_triton(t), dtype, backend="triton")
        assert_same_bits(on_cpu(got), reference.dequantize_mxfp4(t, dtype))
    # decode is exact: compare with a float64 computation straight from the definition.
    d = on_cpu(dequantize_mxfp4(on_triton(t), torch.float32, backend="triton")).double().numpy()
    codes = np.stack([np.arange(256) & 15, np.arange(256) >> 4], -1).reshape(-1)
    mag = E2M1[codes & 7] * np.where(codes & 8, -1.0, 1.0)
    for b in range(255):
        exact = mag * 2.0 ** (b - 127)
        exact = np.where(np.abs(exact) >= 2.0 ** 128, np.copysign(np.inf, exact), exact)  # past fp32 max
        np.testing.assert_array_equal(d[b], exact)
        assert (np.signbit(d[b]) == (codes >= 8)).all()
    assert np.isnan(d[255]).all()


@pytest.mark.parametrize("mode", MODES)
def test_error_is_at_most_half_a_grid_step(seed, mode):
    x = random_binades((6, 256), torch.float32)
    t = quantize_mxfp4(on_triton(x), scale_mode=mode, backend="triton")
    d = on_cpu(dequantize_mxfp4(t, torch.float32, backend="triton")).double()
    t = on_cpu(t)
    e = t.scales.double().sub(127).repeat_interleave(32, dim=-1)
    y = (x.double() * torch.exp2(-e)).abs()
    step = torch.where(y < 2, 0.5, torch.where(y < 4, 1.0, 2.0)).double() * torch.exp2(e)
    saturated = y > 6  # only `floor` block maxima with significand > 1.5
    err = (x.double() - d).abs()
    assert (err[~saturated] <= step[~saturated] / 2).all()
    if mode == "rceil":
        assert not saturated.any(), "rceil never saturates"
    else:
        assert (err[saturated] <= 0.25 * x.double().abs()[saturated]).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reencoding_decoded_values_gives_the_same_values(seed, mode, dtype):
    t = quantize_mxfp4(on_triton(random_binades((4, 256), torch.float32)), scale_mode=mode, backend="triton")
    d = dequantize_mxfp4(t, dtype, backend="triton")
    t2 = quantize_mxfp4(d, scale_mode=mode, backend="triton")
    assert_same_bits(on_cpu(dequantize_mxfp4(t2, dtype, backend="triton")), on_cpu(d))
    if mode == "floor":
        assert_same_mxfp4(on_cpu(t2), on_cpu(t))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_make_exactly_their_own_block_nan(seed, bad):
    x = random_binades((4, 256), torch.bfloat16)
    r, c = int(torch.randint(4, ())), int(torch.randint(256, ()))
    x[r, c] = bad
    t = quantize_mxfp4(on_triton(x), backend="triton")
    d = on_cpu(dequantize_mxfp4(t, torch.float32, backend="triton"))
    t = on_cpu(t)
    expect = torch.zeros_like(d, dtype=torch.bool)
    expect[r, c // 32 * 32:(c // 32 + 1) * 32] = True
    assert torch.equal(torch.isnan(d), expect)
    assert (t.scales == 255).sum().item() == 1


def test_non_contiguous_inputs_are_read_correctly(seed):
    # The views are taken on TRITON_DEVICE from bases moved there whole, so the kernel sees their strides.
    base = random_binades((128, 6), torch.float32, block=2)
    x = on_triton(base).t()  # [6, 128], last dim not contiguous: copied, never misread
    assert not x.is_contiguous()
    got = quantize_mxfp4(x, backend="triton")
    assert_same_mxfp4(on_cpu(got), reference.quantize_mxfp4(base.t().contiguous(), "rceil"))
    wide = random_binades((5, 320), torch.bfloat16)
    cols = on_triton(wide)[:, 64:192]  # row stride 320 != width 128: read in place
    assert cols.stride(0) == 320 and rows_in(cols).data_ptr() == cols.data_ptr()
    got = quantize_mxfp4(cols, backend="triton")
    assert_same_mxfp4(on_cpu(got), reference.quantize_mxfp4(wide[:, 64:192].contiguous(), "rceil"))
    base3 = random_binades((3, 4, 64), torch.float16)
    x3 = on_triton(base3)[:, ::2]  # 3-D, leading dims not mergeable
    got = quantize_mxfp4(x3, backend="triton")
    assert_same_mxfp4(on_cpu(got), reference.quantize_mxfp4(base3[:, ::2].contiguous(), "rceil"))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_out_views_into_a_packed_wire_buffer(seed, backend):
    device = TRITON_DEVICE if backend == "triton" else "cpu"  # the buffers live where the kernel runs
    n, h, pad = 5, 256, 3
    row = h // 2 + h // 32
    buf = torch.full((n, row + pad), 0xAB, dtype=torch.uint8, device=device)
    x = random_binades((n, h), torch.bfloat16)
    out = MXFP4Tensor(buf[:, :h // 2], buf[:, h // 2:row])
    got = quantize_mxfp4(x.to(device), backend=backend, out=out)
    assert got.data.data_ptr() == buf.data_ptr()
    want = reference.quantize_mxfp4(x, "rceil")
    host = buf.cpu()
    assert torch.equal(host[:, :h // 2], want.data) and torch.equal(host[:, h // 2:row], want.scales)
    assert host[:, row:].eq(0xAB).all(), "wrote past the row"
    # decode straight from the strided wire views, into a strided slice of a wider output
    dst = torch.full((n, h + 64), 7.0, dtype=torch.bfloat16, device=device)
    res = dequantize_mxfp4(MXFP4Tensor(buf[:, :h // 2], buf[:, h // 2:row]), backend=backend, out=dst[:, 32:32 + h])
    assert res.data_ptr() == dst[:, 32:].data_ptr()
    host = dst.cpu()
    assert_same_bits(host[:, 32:32 + h], reference.dequantize_mxfp4(want, torch.bfloat16))
    assert host[:, :32].eq(7).all() and host[:, 32 + h:].eq(7).all()


def test_empty_tensors():
    t = quantize_mxfp4(torch.zeros(0, 64, device=TRITON_DEVICE), backend="triton")
    assert t.data.shape == (0, 32) and t.scales.shape == (0, 2)
    assert dequantize_mxfp4(t, torch.float16, backend="triton").shape == (0, 64)
    t3 = quantize_mxfp4(torch.zeros(2, 0, 32, dtype=torch.bfloat16, device=TRITON_DEVICE), backend="triton")
    assert t3.data.shape == (2, 0, 16)


def test_triton_wrapper_rejects_bad_arguments():
    dev = TRITON_DEVICE  # every operand where the kernel would run, so only the named defect is wrong
    x = torch.randn(2, 64, device=dev)
    with pytest.raises(ValueError, match="block_k must be a power of two >= 32"):
        mxfp4_quantize_triton(x, block_k=48)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        buf = torch.zeros(32, 2, dtype=torch.uint8, device=dev)
        mxfp4_quantize_triton(x, out=MXFP4Tensor(buf.t(), torch.zeros(2, 2, dtype=torch.uint8, device=dev)))
    with pytest.raises(ValueError, match="out must be"):
        mxfp4_dequantize_triton(quantize_mxfp4(x, backend="triton"), torch.float32,
                                out=torch.zeros(2, 64, dtype=torch.float16, device=dev))
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4_quantize_triton(torch.zeros(2, 40, device=dev))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_gpu_matches_reference_at_scale(seed, dtype, mode):
    x = random_binades((4096, 7168), dtype).cuda()
    x[17, 100] = float("nan")
    want = reference.quantize_mxfp4(x, mode)
    got = quantize_mxfp4(x, scale_mode=mode)  # auto -> Triton on CUDA
    assert_same_mxfp4(got, want)
    for out_dtype in DTYPES:
        assert_same_bits(dequantize_mxfp4(want, out_dtype), reference.dequantize_mxfp4(want, out_dtype))
    for name, e in edge_cases(7168).items():
        e = e.to(dtype).cuda()
        assert_same_mxfp4(quantize_mxfp4(e, scale_mode=mode), reference.quantize_mxfp4(e, mode)), name
    # strided wire views on the GPU
    n, h = 1000, 7168
    buf = torch.zeros(n, h // 2 + h // 32, dtype=torch.uint8, device="cuda")
    quantize_mxfp4(x[:n], scale_mode=mode, out=MXFP4Tensor(buf[:, :h // 2], buf[:, h // 2:]))
    assert torch.equal(buf[:, :h // 2], want.data[:n]) and torch.equal(buf[:, h // 2:], want.scales[:n])
