"""SwiGLU + FP8 quantization kernels against the torch reference (same fp32 formulas; the codec is
bit-exact, sigmoid may differ in its last fp32 bit, so values may differ by one E4M3 step, rarely)."""

import pytest
import torch

from mxa2a.gemm import swiglu_backward_quantize_fp8, swiglu_quantize_fp8
from mxa2a.gemm import reference
from mxa2a.quant import FP8Tensor, dequantize_fp8


def _assert_close_fp8(got: FP8Tensor, want: FP8Tensor, exact_fraction: float = 0.999):
    g, w = dequantize_fp8(got, torch.float32), dequantize_fp8(want, torch.float32)
    same = (g == w) | (g.isnan() & w.isnan())
    assert same.float().mean() >= exact_fraction
    # a differing element is one E4M3 step apart: at most 2^-3 of its magnitude (2^-9 * scale below 2^-6)
    tol = torch.maximum(w.abs(), g.abs()) * 2.0 ** -3 + 2.0 ** -9 * w.abs().amax(-1, keepdim=True) / 448 * 4
    assert ((g - w).abs() <= tol)[~same].all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swiglu_quantize_matches_reference(dtype, seed):
    h = (torch.randn(37, 512) * 3).to(dtype)
    _assert_close_fp8(swiglu_quantize_fp8(h, backend="triton"), reference.swiglu_quantize_fp8(h))


def test_swiglu_backward_quantize_matches_reference(seed):
    h = (torch.randn(37, 512) * 3).bfloat16()
    dz = torch.randn(37, 256).bfloat16()
    _assert_close_fp8(swiglu_backward_quantize_fp8(h, dz, backend="triton"),
                      reference.swiglu_backward_quantize_fp8(h, dz))


def test_swiglu_backward_is_the_derivative(seed):
    h = torch.randn(8, 256, dtype=torch.float64, requires_grad=True)
    gate, up = h.chunk(2, -1)
    dz = torch.randn(8, 128, dtype=torch.float64)
    (torch.nn.functional.silu(gate) * up).backward(dz)
    torch.testing.assert_close(reference.swiglu_backward(h.detach(), dz), h.grad.float(), rtol=1e-6, atol=1e-6)


def test_out_buffer_rows_are_written_in_place(seed):
    h = torch.randn(5, 256)
    buf = FP8Tensor(torch.zeros(128, 128, dtype=torch.float8_e4m3fn), torch.zeros(128, 1, dtype=torch.uint8))
    out = swiglu_quantize_fp8(h, backend="triton", out=FP8Tensor(buf.data[:5], buf.scales[:5]))
    assert out.data.data_ptr() == buf.data.data_ptr()
    assert (buf.data[5:].view(torch.uint8) == 0).all() and (buf.scales[5:] == 0).all()
    assert (buf.scales[:5] != 0).all()


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="F a multiple of 128"):
        swiglu_quantize_fp8(torch.randn(4, 200))
    with pytest.raises(ValueError, match="dz"):
        swiglu_backward_quantize_fp8(torch.randn(4, 256), torch.randn(4, 256))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        swiglu_quantize_fp8(torch.randn(4, 256).half())
