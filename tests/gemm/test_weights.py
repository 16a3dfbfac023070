"""128x128 block weights: the block scale rule, RNE elements, and the exact block transpose."""

import pytest
import torch

from mxa2a.gemm import quantize_fp8_blocks, quantize_fp8_blocks_and_transpose, transpose_fp8_blocks
from mxa2a.quant import FP8Tensor, dequantize_fp8
from mxa2a.quant.formats import E4M3_DTYPE
from mxa2a.quant import reference as qref


def test_block_scale_is_the_fp8_rule_of_the_block_max(seed):
    w = torch.randn(2, 256, 384) * torch.exp2(torch.randint(-20, 20, (2, 256, 1)).float())
    t = quantize_fp8_blocks(w)
    blocks = w.reshape(2, 2, 128, 3, 128)
    # the 1x128 FP8 rule applied to a row holding the block's maximum gives the block's byte
    amax = blocks.abs().amax(dim=(2, 4))                                           # [2, 2, 3]
    row = torch.zeros(2, 2, 3, 128)
    row[..., 0] = amax
    want = qref.quantize_fp8(row).scales[..., 0]                                   # [2, 2, 3]
    assert torch.equal(t.scales[:, ::128, :], want)
    assert torch.equal(t.scales, t.scales[:, ::128, :].repeat_interleave(128, dim=1))


def test_elements_are_round_to_nearest_even(seed):
    w = torch.randn(128, 256) * 10
    t = quantize_fp8_blocks(w)
    k = t.scales.to(torch.int64) - 127                                               # [128, 2]
    y = w.reshape(128, 2, 128) * torch.exp2(-k.float()).unsqueeze(-1)
    assert torch.equal(t.data.view(torch.uint8), qref.e4m3_rne(y).view(torch.uint8).reshape(128, 256))


def test_block_transpose_is_exact(seed):
    t = quantize_fp8_blocks(torch.randn(3, 256, 128) * 5)
    tt = transpose_fp8_blocks(t)
    assert tt.shape == (3, 128, 256) and tt.scales.shape == (3, 128, 2)
    assert torch.equal(dequantize_fp8(tt, torch.float32), dequantize_fp8(t, torch.float32).transpose(1, 2))


def test_nan_block_is_nan_and_others_are_not():
    w = torch.randn(256, 256)
    w[3, 200] = float("nan")
    v = dequantize_fp8(quantize_fp8_blocks(w), torch.float32)
    assert v[:128, 128:].isnan().all() and not v[128:].isnan().any() and not v[:, :128].isnan().any()


def test_shapes_not_in_128_blocks_are_refused():
    with pytest.raises(ValueError, match="multiples of 128"):
        quantize_fp8_blocks(torch.randn(4, 200, 128))
    with pytest.raises(ValueError, match="multiples of 128"):
        quantize_fp8_blocks(torch.randn(128, 100))


@pytest.mark.gpu
def test_gpu_block_quantization_equals_cpu(seed):
    w = torch.randn(4, 256, 512) * torch.exp2(torch.randint(-30, 10, (4, 256, 1)).float())
    a, b = quantize_fp8_blocks(w), quantize_fp8_blocks(w.cuda())
    assert torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8).cpu())
    assert torch.equal(a.scales, b.scales.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_block_quantization_and_transpose_equal_the_torch_path(dtype, seed):
    w = (torch.randn(3, 256, 384) * torch.exp2(torch.randint(-40, 20, (3, 256, 1)).float())).to(dtype)
    w[1, 130, 300] = float("nan")
    w[2, :128, :128] = 0
    t, tt = quantize_fp8_blocks_and_transpose(w, backend="triton")
    want = quantize_fp8_blocks(w, backend="torch")
    want_t = transpose_fp8_blocks(want)
    for got, ref in ((t, want), (tt, want_t)):
        assert torch.equal(got.data.view(torch.uint8), ref.data.view(torch.uint8))
        assert torch.equal(got.scales, ref.scales)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_halves_written_in_place_equal_the_concatenated_weight(backend, seed):
    # gate and up quantized into the row halves of one [E, 2F, H] buffer and the column halves of its
    # transpose give the bits of quantizing the concatenation, and write nothing outside their halves
    e, f, h = 2, 256, 384
    gate, up = (torch.randn(e, f, h) * torch.exp2(torch.randint(-20, 20, (e, f, 1)).float()) for _ in "gu")
    up[1, 7, 300] = float("nan")
    want, want_t = quantize_fp8_blocks_and_transpose(torch.cat([gate, up], dim=1), backend="torch")
    w1 = FP8Tensor(torch.zeros(e, 2 * f, h, dtype=torch.uint8).view(E4M3_DTYPE),
                   torch.zeros(e, 2 * f, h // 128, dtype=torch.uint8))
    w1_t = FP8Tensor(torch.zeros(e, h, 2 * f, dtype=torch.uint8).view(E4M3_DTYPE),
                     torch.zeros(e, h, 2 * f // 128, dtype=torch.uint8))
    for w, part in ((gate, slice(0, f)), (up, slice(f, 2 * f))):
        out = (FP8Tensor(w1.data[:, part], w1.scales[:, part]),
               FP8Tensor(w1_t.data[:, :, part], w1_t.scales[:, :, part.start // 128:part.stop // 128]))
        assert quantize_fp8_blocks_and_transpose(w, backend=backend, out=out) is out
        if part.start == 0:  # the second half is still untouched
            assert not w1.data.view(torch.uint8)[:, f:].any() and not w1_t.scales[:, :, f // 128:].any()
    for got, ref in ((w1, want), (w1_t, want_t)):
        assert torch.equal(got.data.view(torch.uint8), ref.data.view(torch.uint8))
        assert torch.equal(got.scales, ref.scales)


def test_out_of_the_wrong_form_is_refused():
    w = torch.randn(2, 128, 256)
    t, tt = quantize_fp8_blocks_and_transpose(w)
    with pytest.raises(ValueError, match=r"out\[1\] must have data \(2, 256, 128\)"):
        quantize_fp8_blocks_and_transpose(w, out=(t, t))
    with pytest.raises(ValueError, match="None with transpose=False"):
        quantize_fp8_blocks_and_transpose(w, transpose=False, out=(t, tt))
    with pytest.raises(TypeError, match="out must be a pair"):
        quantize_fp8_blocks_and_transpose(w, out=t)
    strided = FP8Tensor(torch.empty(2, 256, 128, dtype=E4M3_DTYPE).transpose(1, 2), t.scales)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        quantize_fp8_blocks_and_transpose(w, out=(strided, tt))
