"""The reference codecs against FORMATS.md: element rounding checked against ml_dtypes, the spec's edge
cases by name with expected bits worked out by hand from the spec, and the public argument checks."""

import math

import numpy as np
import pytest
import torch

from mxa2a.quant import (FP8Tensor, MXFP4Tensor, dequantize_fp8, dequantize_mxfp4, quantize_fp8,
                         quantize_mxfp4, reference)

TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0]


def _block(values, fill=0.0, dtype=torch.float32):
    """One 32-element block starting with `values`, rest `fill`, as a [1, 32] tensor."""
    v = list(values) + [fill] * (32 - len(values))
    return torch.tensor([v], dtype=torch.float64).to(dtype)


def _codes(t: MXFP4Tensor) -> torch.Tensor:
    d = t.data.to(torch.int64)
    return torch.stack([d & 15, d >> 4], dim=-1).reshape(*d.shape[:-1], -1)


# --- element rounding, checked against an independent implementation ---

def test_e2m1_rounding_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    grid = np.arange(-6.0, 6.0 + 1 / 64, 1 / 64)  # every tie and every code, both signs
    rnd = np.random.default_rng(0).uniform(-6, 6, 4000)
    y = np.concatenate([grid, rnd, -np.array(TIES[:-2]), np.array([0.0, -0.0, 1e-30, -1e-30])])
    y = y.astype(np.float32)
    want = y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    got = reference.round_to_e2m1_codes(torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(got, want)


def test_e2m1_saturates_at_6():
    y = torch.tensor([6.0, 6.5, 7.0, 8.0, 1e30, -7.0])
    assert reference.round_to_e2m1_codes(y).tolist() == [7, 7, 7, 7, 7, 15]


def _e4m3_probe_values() -> np.ndarray:
    """Every E4M3 value, every midpoint between neighbours (ties), and random values, |y| <= 448."""
    pos = np.array(sorted({float(v) for v in np.arange(0, 127, dtype=np.uint8).view(np.uint8)
                           .astype(np.uint8).view(__import__("ml_dtypes").float8_e4m3fn)
                           .astype(np.float64)}))
    mids = (pos[1:] + pos[:-1]) / 2
    rng = np.random.default_rng(1)
    rnd = np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-14, 8, 20000))
    y = np.concatenate([pos, mids, rnd, np.nextafter(mids, 0), np.nextafter(mids, 1000)])
    y = y[y <= 448]
    return np.concatenate([y, -y]).astype(np.float32)


def test_e4m3_rounding_matches_ml_dtypes_and_torch():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = _e4m3_probe_values()
    want = y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    got = reference.e4m3_rne(torch.from_numpy(y)).view(torch.uint8).numpy()
    np.testing.assert_array_equal(got, want)
    # torch's own fp32 -> float8_e4m3fn cast is also RNE, subnormals included, for |y| <= 448.
    via_torch = torch.from_numpy(y).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(via_torch, want)


# --- MXFP4 edge cases of FORMATS.md, by name ---

@pytest.mark.parametrize("mode", ["floor", "rceil"])
def test_all_zero_block_gets_smallest_scale_and_zero_codes(mode):
    t = reference.quantize_mxfp4(torch.zeros(2, 64), mode)
    assert t.scales.tolist() == [[0, 0], [0, 0]]
    assert t.data.eq(0).all()


@pytest.mark.parametrize("mode,value,byte,code", [
    ("floor", 1.0, 125, 6), ("rceil", 1.0, 125, 6),     # e = -2: y = 4
    ("floor", 1.75, 125, 7), ("rceil", 1.75, 126, 6),   # floor saturates 7 -> 6; rceil: y = 3.5 -> 4
    ("floor", 1.5, 125, 7), ("rceil", 1.5, 125, 7),     # 1.5 is not > 1.5: y = 6 exactly
    ("rceil", -3.0, 126, 15),
])
def test_block_with_one_nonzero(mode, value, byte, code):
    t = reference.quantize_mxfp4(_block([0.0] * 5 + [value]), mode)
    assert t.scales.tolist() == [[byte]]
    codes = _codes(t)[0].tolist()
    assert codes[5] == code and codes[:5] == [0] * 5 and codes[6:] == [0] * 26


def test_negative_zero_and_tiny_negatives_keep_the_sign_bit():
    t = reference.quantize_mxfp4(_block([-0.0, -1e-3, 1e-3, 0.0, 4.0]), "rceil")
    assert _codes(t)[0, :5].tolist() == [8, 8, 0, 0, 6]
    d = dequantize_mxfp4(t, torch.float32, backend="torch")[0, :4]
    assert torch.signbit(d).tolist() == [True, True, False, False]


@pytest.mark.parametrize("s", [-130, -100, -3, 0, 1, 7, 100, 120])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_tie_vectors(s, sign):
    vals = [sign * v * 2.0 ** s for v in TIES]
    x = _block(vals)
    # floor: amax = 7 * 2^s -> f = s + 2 -> e = s, y = the ties themselves.
    # rceil: 7 has significand 1.75 > 1.5 -> e = s + 1, y = ties / 2.
    expect = {"floor": ([0, 2, 2, 4, 4, 6, 6, 7, 7], s),
              "rceil": ([0, 1, 1, 2, 2, 4, 4, 5, 6], s + 1)}
    for mode, (codes, e) in expect.items():
        if s + 2 < -126:  # amax subnormal: e = -127, rescaled ties
            continue
        t = reference.quantize_mxfp4(x, mode)
        assert t.scales.tolist() == [[e + 127]], mode
        sbit = 8 if sign < 0 else 0
        assert _codes(t)[0, :9].tolist() == [c | sbit for c in codes], mode


def test_fp32_subnormals():
    sub = 2.0 ** -127  # fp32 subnormal
    t = reference.quantize_mxfp4(_block([sub, 1.5 * sub, -sub, 2.0 ** -149]), "rceil")
    assert t.scales.tolist() == [[0]]  # amax subnormal -> e = -127
    assert _codes(t)[0, :4].tolist() == [2, 3, 10, 0]  # y = v * 2^127: 1, 1.5, -1, 2^-22
    # amax = 2^-126 (smallest normal): f - 2 = -128 clamps to -127, y = 2.
    t = reference.quantize_mxfp4(_block([2.0 ** -126, sub]), "floor")
    assert t.scales.tolist() == [[0]] and _codes(t)[0, :2].tolist() == [4, 2]


def test_values_near_fp32_max():
    big = float(torch.finfo(torch.float32).max)
    x = _block([big, -big / 2, 2.0 ** 127])
    t = reference.quantize_mxfp4(x, "floor")  # f = 127, e = 125, y(max) ~ 8 saturates
    assert t.scales.tolist() == [[252]] and _codes(t)[0, :3].tolist() == [7, 14, 6]
    # rceil would take e = 126 and round the maximum up to 4 * 2^126 = 2^128, +Inf in fp32 and bf16;
    # in fp32's top binade it takes floor's scale instead, so it saturates like floor.
    t = reference.quantize_mxfp4(x, "rceil")
    assert t.scales.tolist() == [[252]] and _codes(t)[0, :3].tolist() == [7, 14, 6]
    d = dequantize_mxfp4(t, torch.float32, backend="torch")
    assert d[0, :3].tolist() == [1.5 * 2.0 ** 127, -(2.0 ** 127), 2.0 ** 127]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_block_only_that_block_is_nan(bad):
    x = torch.randn(2, 128)
    x[1, 40] = bad
    t = reference.quantize_mxfp4(x, "rceil")
    assert t.scales[1, 1].item() == 255
    assert _codes(t)[1, 32:64].eq(0).all()
    d = dequantize_mxfp4(t, torch.float32, backend="torch")
    nan = torch.isnan(d)
    assert nan[1, 32:64].all() and nan.sum().item() == 32


# --- FP8 edge cases ---

def test_fp8_scale_exponent_is_exact_ceil_log2():
    amax = torch.tensor([448.0, 448.5, 449.0, 1.0, 3.5, 2.0 ** 20, 1.75 * 2 ** 20, 1.8 * 2 ** 20])
    x = torch.zeros(len(amax), 128)
    x[:, 3] = amax
    t = reference.quantize_fp8(x)
    want = [math.ceil(math.log2(a / 448.0)) + 127 for a in amax.tolist()]
    assert t.scales[:, 0].tolist() == want


def test_e4m3_subnormal_codes_448_and_nan():
    # tile amax 448 -> k = 0: elements keep their value; j * 2^-9 are the subnormal codes j.
    x = torch.zeros(1, 256)
    x[0, :7] = torch.arange(1, 8) * 2.0 ** -9
    x[0, 7] = 448.0
    x[0, 8] = -448.0
    x[0, 130] = float("nan")
    x[0, 131] = 1.0
    t = reference.quantize_fp8(x)
    q = t.data.view(torch.uint8)[0]
    assert t.scales[0].tolist() == [127, 255]
    assert q[:9].tolist() == [1, 2, 3, 4, 5, 6, 7, 0x7E, 0xFE]
    assert q[128:].eq(0).all()  # NaN tile: data bytes 0 by convention
    d = dequantize_fp8(t, torch.float32, backend="torch")[0]
    assert torch.equal(d[:9], x[0, :9]) and torch.isnan(d[128:]).all()
    # an E4M3 NaN byte decodes to NaN whatever the scale
    raw = torch.zeros(1, 128, dtype=torch.uint8)
    raw[0, 5] = 0x7F
    raw[0, 6] = 0xFF
    d = dequantize_fp8(FP8Tensor(raw.view(torch.float8_e4m3fn), torch.tensor([[127]], dtype=torch.uint8)),
                       torch.float32, backend="torch")
    assert torch.isnan(d[0]).sum().item() == 2 and torch.isnan(d[0, 5:7]).all()


def test_fp8_tile_with_a_zero_32_block():
    x = torch.randn(1, 128)
    x[0, 32:64] = 0
    t = reference.quantize_fp8(x)
    assert t.data.view(torch.uint8)[0, 32:64].eq(0).all()
    m = reference.quantize_mxfp4(x, "rceil")
    assert m.scales[0, 1].item() == 0 and m.scales[0, 0].item() != 0


# --- bad input ---

@pytest.mark.parametrize("fn,block", [(quantize_mxfp4, 32), (quantize_fp8, 128)])
def test_bad_inputs_raise(fn, block):
    with pytest.raises(TypeError, match="x must be float32"):
        fn(torch.zeros(2, block, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be float32"):
        fn(torch.zeros(2, block, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"multiple of %d, got shape \(2, %d\)" % (block, block + 16)):
        fn(torch.zeros(2, block + 16))
    with pytest.raises(ValueError, match="multiple"):
        fn(torch.zeros(()))
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(torch.zeros(2, block), backend="cuda")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([1.0] * block)


def test_bad_scale_mode_and_dtype_raise():
    with pytest.raises(ValueError, match="scale_mode must be one of"):
        quantize_mxfp4(torch.zeros(1, 32), scale_mode="ceil")
    t = quantize_mxfp4(torch.zeros(1, 32))
    with pytest.raises(TypeError, match="dtype must be"):
        dequantize_mxfp4(t, torch.int8)
    with pytest.raises(TypeError, match="t must be a MXFP4Tensor"):
        dequantize_mxfp4(torch.zeros(1, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="t must be a FP8Tensor"):
        dequantize_fp8(t)


def test_bad_out_containers_raise():
    x = torch.randn(4, 64)
    good = quantize_mxfp4(x)
    with pytest.raises(ValueError, match=r"out.data must have shape \(4, 32\)"):
        quantize_mxfp4(x, out=MXFP4Tensor(torch.zeros(4, 16, dtype=torch.uint8),
                                          torch.zeros(4, 1, dtype=torch.uint8)))
    with pytest.raises(TypeError, match="out must be a MXFP4Tensor"):
        quantize_mxfp4(x, out=good.data)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        buf = torch.zeros(32, 4, dtype=torch.uint8)
        quantize_mxfp4(x, out=MXFP4Tensor(buf.t(), torch.zeros(4, 2, dtype=torch.uint8)))
    with pytest.raises(TypeError, match="out must have dtype torch.bfloat16"):
        dequantize_mxfp4(good, out=torch.zeros(4, 64))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 64\)"):
        dequantize_mxfp4(good, torch.float32, out=torch.zeros(4, 65))
    x8 = torch.randn(2, 128)
    with pytest.raises(ValueError, match="out.data must have shape"):
        quantize_fp8(x8, out=FP8Tensor(torch.zeros(2, 256, dtype=torch.float8_e4m3fn),
                                       torch.zeros(2, 2, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="must be on"):
        quantize_fp8(x8, out=FP8Tensor(torch.zeros(2, 128, dtype=torch.float8_e4m3fn, device="meta"),
                                       torch.zeros(2, 1, dtype=torch.uint8, device="meta")))
    with pytest.raises(ValueError, match="rows overlap"):
        dequantize_fp8(quantize_fp8(x8), torch.float32,
                       out=torch.zeros(1, 128).expand(2, 128))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    # The premise (CPU tensors, interpreter off) holds on every machine: the check reads the environment
    # at call time and refuses before any kernel is launched, with or without a GPU.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        quantize_mxfp4(torch.zeros(1, 32), backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dequantize_mxfp4(reference.quantize_mxfp4(torch.zeros(1, 32), "rceil"), backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        quantize_fp8(torch.zeros(1, 128), backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dequantize_fp8(reference.quantize_fp8(torch.zeros(1, 128)), backend="triton")


@pytest.mark.gpu
def test_triton_backend_on_cuda_needs_no_interpreter(monkeypatch):
    # The other side of the rule: CUDA tensors run the compiled kernels with TRITON_INTERPRET unset.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 128)
    t, want = quantize_mxfp4(x.cuda(), backend="triton"), reference.quantize_mxfp4(x, "rceil")
    assert t.device.type == "cuda"
    assert torch.equal(t.data.cpu(), want.data) and torch.equal(t.scales.cpu(), want.scales)
    q, want8 = quantize_fp8(x.cuda(), backend="triton"), reference.quantize_fp8(x)
    assert torch.equal(q.data.view(torch.uint8).cpu(), want8.data.view(torch.uint8))
    assert torch.equal(q.scales.cpu(), want8.scales)
