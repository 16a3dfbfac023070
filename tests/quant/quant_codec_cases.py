"""Inputs shared by the codec tests: random values spanning many binades, and FORMATS.md's edge cases
as named builders (each returns a float64 tensor `[rows, K]`, cast by the test to the input dtype); and
where the Triton backend runs (`TRITON_DEVICE`) with the moves to and from it.

Inputs and references are built on the CPU, so a seed gives the same values on every machine; only the
kernel calls run on `TRITON_DEVICE`, and their results come back with `on_cpu` for the bitwise checks."""

from __future__ import annotations

import torch

from mxa2a.quant import FP8Tensor, MXFP4Tensor

# Where backend="triton" runs in the CPU-sized tests: the GPU when there is one (compiled kernels, so
# the tensors must be CUDA tensors), else the Triton interpreter on CPU tensors (tests/conftest.py sets
# TRITON_INTERPRET=1 only when there is no GPU).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0)
BINADE_RANGE = {torch.float32: (-60, 60), torch.bfloat16: (-60, 60), torch.float16: (-10, 8)}
BIT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def random_binades(shape: tuple, dtype: torch.dtype, block: int = 32) -> torch.Tensor:
    """randn scaled by 2^r per `block` (r uniform in BINADE_RANGE[dtype]) and, for one element in 8,
    by a further 2^r' (r' in [-12, 12]); fp32 also gets one block per row near the subnormal range."""
    lo, hi = BINADE_RANGE[dtype]
    *lead, k = shape
    x = torch.randn(*lead, k // block, block, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(lo, hi + 1, (*lead, k // block, 1)).double())
    x = x.reshape(*lead, k)
    pick = torch.rand(x.shape) < 0.125
    x = torch.where(pick, x * torch.exp2(torch.randint(-12, 13, x.shape).double()), x)
    if dtype == torch.float32 and x.numel() and k >= 2 * block:
        x[..., :block] *= 2.0 ** -100  # fp32 subnormal and near-subnormal elements
    if dtype == torch.float16:
        x = x.clamp(-60000, 60000)
    return x.to(dtype)


def _row(k: int, values, fill: float = 0.0) -> list[float]:
    v = list(values)
    return v + [fill] * (k - len(v))


def edge_cases(k: int) -> dict[str, torch.Tensor]:
    """FORMATS.md's edge cases (rows of length k, k a multiple of 128), by name."""
    f32max = float(torch.finfo(torch.float32).max)
    sub = 2.0 ** -127
    g = torch.Generator().manual_seed(1234)
    cases: dict[str, list[list[float]]] = {
        "all_zero_block": [[0.0] * k],
        "one_nonzero": [_row(k, [0.0] * 7 + [1.75]), _row(k, [0.0] * 3 + [-3.0]), _row(k, [1.5])],
        "negative_zero_and_tiny_negatives": [_row(k, [-0.0, -1e-3, 4.0, -1e-30, -0.0]),
                                             [-0.0] * k],
        "fp32_subnormals": [_row(k, [sub, 1.5 * sub, -sub, 2.0 ** -149, 2.0 ** -126]),
                            [2.0 ** -149 * (i + 1) for i in range(k)]],
        "near_fp32_max": [_row(k, [f32max, -f32max / 2, 2.0 ** 127, f32max / 3]),
                          [f32max * (1 - i / k) for i in range(k)]],
    }
    ties = []
    for s in (-120, -20, -3, 0, 5, 60, 100):
        for sign in (1.0, -1.0):
            ties.append(_row(k, [sign * t * 2.0 ** s for t in TIES] + [-sign * t * 2.0 ** s for t in TIES]))
    cases["tie_vectors"] = ties
    # E4M3 subnormal codes 0x01..0x07 and 448 (0x7E) in a tile whose amax is 448 (k = 0).
    cases["e4m3_subnormals_and_448"] = [_row(k, [j * 2.0 ** -9 for j in range(1, 8)] + [448.0, -448.0]
                                              + [-j * 2.0 ** -9 for j in range(1, 8)] + [2.0 ** -10, 3 * 2.0 ** -11])]
    t = torch.randn(2, k, generator=g, dtype=torch.float64)
    t[:, 32:64] = 0.0
    cases["tile_with_a_zero_32_block"] = t.tolist()
    out = {name: torch.tensor(rows, dtype=torch.float64) for name, rows in cases.items()}
    for name, bad in (("nan_block", float("nan")), ("pos_inf_block", float("inf")),
                      ("neg_inf_block", float("-inf"))):
        x = torch.randn(3, k, generator=g, dtype=torch.float64)
        x[1, 37] = bad
        x[2, k - 1] = bad
        out[name] = x
    return out


def to_device(obj, device):
    """A tensor, `MXFP4Tensor` or `FP8Tensor` with its tensors on `device`. Tensors already there are kept
    as they are (views, strides); a copy to another device makes a non-dense view contiguous, so a test
    that needs a strided view on the device moves the whole base there and takes the view after."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, MXFP4Tensor):
        return MXFP4Tensor(obj.data.to(device), obj.scales.to(device), obj.scale_mode)
    if isinstance(obj, FP8Tensor):
        return FP8Tensor(obj.data.to(device), obj.scales.to(device))
    raise TypeError(f"to_device: expected a tensor or a quantized container, got {type(obj).__name__}")


def on_triton(obj):
    """`obj` on TRITON_DEVICE, ready for backend="triton" or a `*_triton` kernel wrapper."""
    return to_device(obj, TRITON_DEVICE)


def on_cpu(obj):
    """`obj` back on the CPU, for comparison with the CPU reference."""
    return to_device(obj, "cpu")
