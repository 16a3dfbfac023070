"""Finite inputs near the top of their dtype decode to finite values (FORMATS.md, "Scales near the top
of the input dtype"): the scale is capped so that 6 * 2^e (MXFP4) or 448 * 2^k (FP8) stays finite in
the input dtype, and elements above it saturate. Values just below / at / above each threshold, with
the decoded values worked out by hand; the Triton kernels (interpreter on CPU, compiled on a GPU) equal
the reference bit for bit on the same values and on random blocks crowded into the top binade."""

import pytest
import torch

from mxa2a.quant import dequantize_fp8, dequantize_mxfp4, quantize_fp8, quantize_mxfp4, reference
from quant_codec_cases import BIT_VIEW, TRITON_DEVICE, on_cpu, on_triton

F32_TOP, F16_TOP = 2.0 ** 127, 2.0 ** 15
F32_MAX, BF16_MAX, F16_MAX = (float(torch.finfo(d).max) for d in (torch.float32, torch.bfloat16, torch.float16))


def _next_up(v: float, dtype: torch.dtype) -> float:
    t = torch.tensor(v, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(float("inf"), dtype=dtype)))


def _next_down(v: float, dtype: torch.dtype) -> float:
    return float(torch.nextafter(torch.tensor(v, dtype=dtype), torch.tensor(0.0, dtype=dtype)))


def _cases(dtype: torch.dtype, factor_max: float, full: float) -> list[tuple[float, float]]:
    """(input, decoded) pairs: below the top binade (plain rceil: rounds up to 2^F, finite), the
    full-scale value itself (exact), just above it, just below / at / above the old Inf threshold
    `factor_max * 2^F`, and the dtype's max: everything in the capped range decodes to `full`."""
    top = F16_TOP if dtype == torch.float16 else F32_TOP
    dmax = {torch.float16: F16_MAX, torch.bfloat16: BF16_MAX, torch.float32: F32_MAX}[dtype]
    edge = factor_max * top
    return [(_next_down(top, dtype), top), (full, full), (_next_up(full, dtype), full),
            (_next_down(edge, dtype), full), (edge, full), (_next_up(edge, dtype), full), (dmax, full)]


# MXFP4: the old Inf threshold is 1.75 * 2^F (3.5 * 2^(F-1) rounds up to 4 * 2^(F-1) = 2^(F+1)); the
# capped scale 2^(F-2) gives at most 6 * 2^(F-2) = 1.5 * 2^F.  FP8: the old threshold is 1.9375 * 2^F
# (248 * 2^(F-7) rounds up to 256 * 2^(F-7)); the capped scale gives at most 448 * 2^(F-8) = 1.75 * 2^F.
MXFP4_CASES = {dt: _cases(dt, 1.75, 1.5 * (F16_TOP if dt == torch.float16 else F32_TOP))
               for dt in (torch.float32, torch.bfloat16, torch.float16)}
FP8_CASES = {dt: _cases(dt, 1.9375, 1.75 * (F16_TOP if dt == torch.float16 else F32_TOP))
             for dt in (torch.float32, torch.bfloat16, torch.float16)}
CAP = {"mxfp4": {torch.float32: 125, torch.bfloat16: 125, torch.float16: 13},
       "fp8": {torch.float32: 119, torch.bfloat16: 119, torch.float16: 7}}


def _one_per_block(values: list[float], dtype: torch.dtype, block: int) -> torch.Tensor:
    """Row i holds +-values[i] in one block (sign alternating), a smaller neighbour, zeros elsewhere."""
    x = torch.zeros(len(values), 2 * block, dtype=torch.float64)
    for i, v in enumerate(values):
        x[i, 3] = v if i % 2 == 0 else -v
        x[i, 4] = v / 64
    return x.to(dtype)


def _expected(values: list[tuple[float, float]]) -> torch.Tensor:
    """The decoded big element of each row of `_one_per_block`."""
    return torch.tensor([d if i % 2 == 0 else -d for i, (_, d) in enumerate(values)], dtype=torch.float64)


def _codec(name: str):
    if name == "mxfp4":
        return (lambda x, be: quantize_mxfp4(x, scale_mode="rceil", backend=be),
                lambda t, dt, be: dequantize_mxfp4(t, dt, backend=be), 32, MXFP4_CASES)
    return (lambda x, be: quantize_fp8(x, backend=be), lambda t, dt, be: dequantize_fp8(t, dt, backend=be),
            128, FP8_CASES)


def _assert_triton_equals_reference(codec: str, x: torch.Tensor) -> None:
    """Encode `x` with both backends (same bytes), decode to x's dtype with both (same bits, finite)."""
    quantize, dequantize, _, _ = _codec(codec)
    want = quantize(x, "torch")
    got = quantize(on_triton(x), "triton")
    d = on_cpu(dequantize(got, x.dtype, "triton"))
    got = on_cpu(got)
    assert torch.equal(got.scales, want.scales), codec
    assert torch.equal(got.data.view(torch.uint8), want.data.view(torch.uint8)), codec
    assert torch.isfinite(d).all(), codec
    assert torch.equal(d.view(BIT_VIEW[x.dtype]), dequantize(want, x.dtype, "torch").view(BIT_VIEW[x.dtype]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("codec", ["mxfp4", "fp8"])
def test_finite_inputs_near_the_dtype_max_decode_to_finite_values(codec, dtype):
    quantize, dequantize, block, cases = _codec(codec)
    x = _one_per_block([v for v, _ in cases[dtype]], dtype, block)
    t = quantize(x, "torch")
    d = dequantize(t, dtype, "torch")
    assert torch.isfinite(d).all(), f"{codec} {dtype}: {d[~torch.isfinite(d)].tolist()}"
    assert torch.equal(d[:, 3].double(), _expected(cases[dtype]))
    assert int(t.scales[:, 0].max()) - 127 == CAP[codec][dtype]  # the cap is reached, never passed
    if codec == "mxfp4":  # in the top binade (rows 1 on) rceil now takes floor's scale: same values
        floor = dequantize_mxfp4(quantize_mxfp4(x, scale_mode="floor", backend="torch"), dtype, backend="torch")
        assert torch.equal(floor[1:], d[1:]) and not torch.equal(floor[0], d[0])
    _assert_triton_equals_reference(codec, x)


def _top_binade_blocks(rows: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Random 32-blocks, each scaled so that its maximum lies in [0.9, 2) * 2^F (F the top binade of
    `dtype`), clamped to the dtype's max; FP8 tiles (4 blocks) take the largest of theirs."""
    top = F16_TOP if dtype == torch.float16 else F32_TOP
    dmax = {torch.float16: F16_MAX, torch.bfloat16: BF16_MAX, torch.float32: F32_MAX}[dtype]
    x = torch.rand(rows, k // 32, 32, dtype=torch.float64) * 2 - 1
    x = x / x.abs().amax(dim=-1, keepdim=True)
    peak = top * (0.9 + 1.1 * torch.rand(rows, k // 32, 1, dtype=torch.float64))
    return (x * peak).clamp(-dmax, dmax).reshape(rows, k).to(dtype)


def _check_random_top_binade(rows: int, k: int, dtype: torch.dtype) -> None:
    for codec in ("mxfp4", "fp8"):
        _assert_triton_equals_reference(codec, _top_binade_blocks(rows, k, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_equals_reference_on_random_top_binade_blocks(seed, dtype):
    _check_random_top_binade(4, 256, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_kernels_equal_reference_in_the_top_binade(seed, dtype):
    assert TRITON_DEVICE == "cuda"
    _check_random_top_binade(4096, 1024, dtype)
