"""Wire row layout: quantized rows are padded to 16 bytes, the views skip the pad, and the pad is never read."""

import pytest
import torch

from mxa2a.quant import dequantize_fp8, dequantize_mxfp4, quantize_fp8, quantize_mxfp4
from mxa2a.quant.wire import ROW_ALIGN, FP8Wire, MXFP4Wire


@pytest.mark.parametrize("h", [128, 256, 384, 7168, 7296])
def test_row_bytes_are_16_byte_multiples_of_data_plus_scales(h):
    assert FP8Wire().row_bytes(h, torch.bfloat16) == -(-(h + h // 128) // 16) * 16
    assert MXFP4Wire().row_bytes(h, torch.bfloat16) == -(-(h // 2 + h // 32) // 16) * 16
    assert FP8Wire().row_bytes(7168, torch.bfloat16) == 7232 and MXFP4Wire().row_bytes(7168, torch.float32) == 3808
    assert FP8Wire().row_bytes(h, torch.float16) % ROW_ALIGN == 0


@pytest.mark.parametrize("codec", [FP8Wire(), MXFP4Wire("rceil"), MXFP4Wire("floor")], ids=lambda c: repr(c))
@pytest.mark.parametrize("h", [128, 384])
def test_encode_decode_leave_the_pad_alone(codec, h, seed):
    x = torch.randn(5, h, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(seed))
    rb = codec.row_bytes(h, x.dtype)
    rows = torch.full((5, rb), 0xA5, dtype=torch.uint8)
    codec.encode(x, rows)
    used = h + h // 128 if isinstance(codec, FP8Wire) else h // 2 + h // 32
    assert rb > used and bool((rows[:, used:] == 0xA5).all())  # pad untouched by the encoder
    if isinstance(codec, FP8Wire):
        ref = quantize_fp8(x, backend="torch")
        assert torch.equal(rows[:, :h], ref.data.view(torch.uint8)) and torch.equal(rows[:, h:used], ref.scales)
        expect = dequantize_fp8(ref, torch.float32, backend="torch")
    else:
        ref = quantize_mxfp4(x, scale_mode=codec.scale_mode, backend="torch")
        assert torch.equal(rows[:, :h // 2], ref.data) and torch.equal(rows[:, h // 2:used], ref.scales)
        expect = dequantize_mxfp4(ref, torch.float32, backend="torch")
    rows[:, used:] = 0xFF  # garbage in the pad must not change the decoded values
    out = torch.empty(5, h, dtype=torch.float32)
    codec.decode(rows, out)
    assert torch.equal(out, expect)


@pytest.mark.parametrize("wire", [FP8Wire, MXFP4Wire], ids=lambda c: c.name)
def test_triton_backend_matches_the_torch_reference(wire, seed):
    """backend="triton" (what "auto" picks for CUDA tensors) gives the reference's bytes and values."""
    h = 256
    x = torch.randn(3, h, dtype=torch.float32, generator=torch.Generator().manual_seed(seed))
    x[1, 5] = float("nan")
    fast_codec, ref_codec = wire(backend="triton"), wire(backend="torch")
    rb = fast_codec.row_bytes(h, x.dtype)
    fast = torch.zeros(3, rb, dtype=torch.uint8)
    fast_codec.encode(x, fast)
    ref = torch.zeros(3, rb, dtype=torch.uint8)
    ref_codec.encode(x, ref)
    assert torch.equal(fast, ref)
    want = torch.empty(3, h, dtype=torch.bfloat16)
    ref_codec.decode(ref, want)
    got = torch.empty(3, h, dtype=torch.bfloat16)
    fast_codec.decode(fast, got)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_codec_backend_is_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        MXFP4Wire(backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        FP8Wire(backend="fast")
