"""The torch references must give the same bits on every device: they are the oracle of the CUDA
kernels, so a reference that rounds differently on CUDA (as `torch.ldexp`, through CUDA's double
`pow`, once did) would make a correct kernel look wrong, or a wrong one right."""

import pytest
import torch
from quant_codec_cases import random_binades

from mxa2a.quant import reference
from mxa2a.quant.reference import pow2


def test_pow2_is_exact_over_the_double_range():
    e = torch.arange(-1022, 1024)
    want = torch.tensor([2.0 ** int(k) for k in e], dtype=torch.float64)
    assert torch.equal(pow2(e), want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_references_agree_between_cpu_and_cuda(seed, dtype):
    x = random_binades((512, 1024), dtype)
    for mode in ("rceil", "floor"):
        a, b = reference.quantize_mxfp4(x, mode), reference.quantize_mxfp4(x.cuda(), mode)
        assert torch.equal(a.data, b.data.cpu()) and torch.equal(a.scales, b.scales.cpu())
        d_cpu, d_gpu = reference.dequantize_mxfp4(a, torch.float32), reference.dequantize_mxfp4(b, torch.float32)
        assert torch.equal(d_cpu.view(torch.int32), d_gpu.cpu().view(torch.int32))
    a, b = reference.quantize_fp8(x), reference.quantize_fp8(x.cuda())
    assert torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8).cpu())
    assert torch.equal(a.scales, b.scales.cpu())
    d_cpu, d_gpu = reference.dequantize_fp8(a, torch.float32), reference.dequantize_fp8(b, torch.float32)
    assert torch.equal(d_cpu.view(torch.int32), d_gpu.cpu().view(torch.int32))
