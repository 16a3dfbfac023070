"""Direct FP8 <-> MXFP4 conversions: the Triton kernels equal the two-step references bit for bit
(codes and scale bytes), on random bytes and on FORMATS.md's edge cases; pinned values; the lossless
window; strided wire-row views; bad input."""

import pytest
import torch
import triton
import triton.language as tl
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, assert_same_values,
                             convert_top_binade_pending, decoded, fp8_from_bytes, random_fp8, random_mxfp4,
                             to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import fp8_to_mxfp4, mxfp4_to_fp8
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor, MXFP4Tensor
from mxa2a.quant.kernels.minifloat import e2m1_abs_f32, e2m1_round, e4m3_abs_f32, e4m3_round, pow2_f32


def both_fp8_to_mxfp4(t: FP8Tensor, scale_mode: str) -> MXFP4Tensor:
    """Triton result, after checking it against the torch reference bit for bit."""
    got = to_device(fp8_to_mxfp4(to_device(t, TRITON_DEVICE), scale_mode=scale_mode, backend="triton"), "cpu")
    assert_same_bits(got, fp8_to_mxfp4(t, scale_mode=scale_mode, backend="torch"), f"fp8_to_mxfp4 {scale_mode}")
    assert got.scale_mode == scale_mode
    return got


def both_mxfp4_to_fp8(t: MXFP4Tensor) -> FP8Tensor:
    got = to_device(mxfp4_to_fp8(to_device(t, TRITON_DEVICE), backend="triton"), "cpu")
    assert_same_bits(got, mxfp4_to_fp8(t, backend="torch"), "mxfp4_to_fp8")
    return got


def test_reference_is_the_two_step_path(seed):
    q = random_fp8(4, 256, "all", nan_codes=True)
    for mode in ("rceil", "floor"):
        two_step = reference.quantize_mxfp4(reference.dequantize_fp8(q, torch.float32), mode)
        assert_same_bits(fp8_to_mxfp4(q, scale_mode=mode, backend="torch"), two_step)
    x = random_mxfp4(4, 256, "all")
    assert_same_bits(mxfp4_to_fp8(x, backend="torch"),
                     reference.quantize_fp8(reference.dequantize_mxfp4(x, torch.float32)))

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


# --- the fp32 helpers, exhaustively ------------------------------------------------------------------

@triton.jit
def _helpers_kernel(y_ptr, i_ptr, out_ptr, fout_ptr, N, BLOCK: tl.constexpr):
    j = tl.arange(0, BLOCK)
    m = j < N
    y = tl.load(y_ptr + j, mask=m, other=0.0)
    i = tl.load(i_ptr + j, mask=m, other=0)
    tl.store(out_ptr + 0 * N + j, e4m3_round(tl.minimum(y, 448.0)), mask=m)
    tl.store(out_ptr + 1 * N + j, e2m1_round(tl.minimum(y, 7.99)), mask=m)
    tl.store(fout_ptr + 0 * N + j, e4m3_abs_f32(i & 0x7F), mask=m)
    tl.store(fout_ptr + 1 * N + j, e2m1_abs_f32(i & 7), mask=m)
    tl.store(fout_ptr + 2 * N + j, pow2_f32(tl.minimum(tl.maximum(i - 128, -127), 127)), mask=m)


def test_fp32_helpers_round_and_decode_like_the_reference():
    # Every fp32 with 6 significant bits from 2^-149 (subnormal) to 2^8, zero, and the tie points.
    e = torch.arange(-149, 9, dtype=torch.float64)
    y = ((1 + torch.arange(64, dtype=torch.float64) / 64)[None, :] * torch.exp2(e)[:, None]).flatten()
    y = torch.cat([torch.zeros(1, dtype=torch.float64), y]).float()
    n = y.numel()
    i = torch.arange(n, dtype=torch.int32) % 256
    out = torch.empty(2, n, dtype=torch.int32)
    fout = torch.empty(3, n, dtype=torch.float32)
    dev = [a.to(TRITON_DEVICE) for a in (y, i, out, fout)]
    _helpers_kernel[(1,)](*dev, n, BLOCK=triton.next_power_of_2(n))
    out, fout = dev[2].cpu(), dev[3].cpu()
    assert torch.equal(out[0].long(), reference.e4m3_rne(y.clamp(max=448)).view(torch.uint8).long())
    assert torch.equal(out[1].clamp(max=7).long(), reference.round_to_e2m1_codes(y.clamp(max=7.99)).long())
    mags = (i & 0x7F).to(torch.uint8)
    finite = mags != 0x7F
    assert torch.equal(fout[0][finite], mags.view(E4M3_DTYPE).float()[finite])
    assert torch.equal(fout[1].double(), reference.e2m1_codes_to_values(i & 7))
    assert torch.equal(fout[2].double(), torch.exp2((i.double() - 128).clamp(-127, 127)))


# --- kernel == reference on random bytes --------------------------------------------------------------

@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
@pytest.mark.parametrize("scale_mode", ["rceil", "floor"])
def test_fp8_to_mxfp4_matches_reference_on_random_bytes(request, seed, scale_range, scale_mode):
    if scale_mode == "rceil" and scale_range in ("top", "all"):  # random: may miss the top binade
        request.applymarker(convert_top_binade_pending(strict=False))
    both_fp8_to_mxfp4(random_fp8(5, 384, scale_range, nan_codes=scale_range == "all"), scale_mode)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_mxfp4_to_fp8_matches_reference_on_random_bytes(seed, scale_range):
    both_mxfp4_to_fp8(random_mxfp4(5, 384, scale_range))


def test_mxfp4_to_fp8_with_block_scales_far_apart_equals_two_step_path(seed):
    # Scale bytes spread over 0..254 within each tile: far beyond the 2^14 window, so small blocks
    # round or vanish, and the result must still be the two-step path's.
    x = random_mxfp4(8, 256, "all")
    x = MXFP4Tensor(x.data, torch.where(x.scales == 255, 254, x.scales))
    got = both_mxfp4_to_fp8(x)
    assert not torch.equal(decoded(got), decoded(x))  # lossy here, as it should be


# --- pinned values ------------------------------------------------------------------------------------

def test_fp8_to_mxfp4_448_per_scale_mode():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 0] = 0x7E  # 448 * 2^0 = 1.75 * 2^8
    q = fp8_from_bytes(data, torch.tensor([[127]]))
    r = both_fp8_to_mxfp4(q, "rceil")   # e = 8 - 2 + 1: 448 / 128 = 3.5 -> 4 (ties to even)
    assert r.scales.tolist() == [[134, 0, 0, 0]] and r.data[0, 0] == 6
    f = both_fp8_to_mxfp4(q, "floor")   # e = 6: 448 / 64 = 7 -> saturates to 6
    assert f.scales.tolist() == [[133, 0, 0, 0]] and f.data[0, 0] == 7
    assert int(r.data.sum()) == 6 and int(f.data.sum()) == 7  # zero blocks: codes 0, scale byte 0


def test_fp8_to_mxfp4_e4m3_subnormals():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, :8] = torch.tensor([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81])  # m * 2^-9, -2^-9
    q = fp8_from_bytes(data, torch.tensor([[127]]))

    def codes(t):
        d = t.data[0, :4].to(torch.int64)
        return torch.stack([d & 15, d >> 4], -1).flatten().tolist()

    r = both_fp8_to_mxfp4(q, "rceil")   # amax 1.75 * 2^-7: e = -8, y = m / 2
    assert r.scales[0, 0] == 127 - 8 and codes(r) == [1, 2, 3, 4, 4, 5, 6, 9]
    f = both_fp8_to_mxfp4(q, "floor")   # e = -9, y = m: 5 -> 4 (tie), 7 -> 6 (saturates)
    assert f.scales[0, 0] == 127 - 9 and codes(f) == [2, 4, 5, 6, 6, 7, 7, 10]


def test_fp8_to_mxfp4_codes_depend_on_q_alone(seed):
    q = random_fp8(3, 256, "realistic")
    a = both_fp8_to_mxfp4(q, "rceil")
    shifted = FP8Tensor(q.data, q.scales + 5)
    b = both_fp8_to_mxfp4(shifted, "rceil")
    live = a.scales != 0  # blocks not clamped at the bottom (zero blocks stay at byte 0)
    assert torch.equal(a.data, b.data)
    assert torch.equal(b.scales[live].to(torch.int64) - a.scales[live].to(torch.int64),
                       torch.full_like(a.scales[live], 5, dtype=torch.int64))


def test_fp8_to_mxfp4_nan_tile_and_nan_element_make_only_their_blocks_nan():
    data = torch.full((2, 256), 0x38, dtype=torch.uint8)  # 1.0 everywhere
    data[1, 40] = 0x7F                                    # E4M3 NaN in block 1 of row 1
    q = fp8_from_bytes(data, torch.tensor([[255, 127], [127, 127]]))
    for mode in ("rceil", "floor"):
        t = both_fp8_to_mxfp4(q, mode)
        nan = t.scales == 255
        assert nan.tolist() == [[True] * 4 + [False] * 4, [False, True] + [False] * 6]
        assert int(t.data[0, :64].sum()) == 0 and int(t.data[1, 16:32].sum()) == 0
        assert decoded(t).isnan().sum() == 128 + 32


@convert_top_binade_pending(strict=True)
def test_fp8_to_mxfp4_value_of_2_pow_128_is_inf_in_the_two_step_path():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 0] = 0x40   # 2.0 * 2^127 = 2^128: Inf in fp32 -> NaN block
    data[0, 32] = 0x3F  # 1.875 * 2^127: finite, in fp32's top binade: rceil takes floor's e = 125
    t = both_fp8_to_mxfp4(fp8_from_bytes(data, torch.tensor([[254]])), "rceil")
    assert t.scales[0, 0] == 255 and t.scales[0, 1] == 127 + 127 - 2


def test_fp8_to_mxfp4_zero_and_negative_zero_blocks():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 1] = 0x80  # -0
    data[0, 64] = 0x01
    t = both_fp8_to_mxfp4(fp8_from_bytes(data, torch.tensor([[0]])), "rceil")  # 2^-136: fp32 subnormal
    assert t.scales.tolist() == [[0, 0, 0, 0]]
    assert t.data[0, 0] == 0x80  # element 1 (high nibble) is -0, code 8
    assert t.data[0, 32] == 0    # 2^-136 * 2^127 = 2^-9 rounds to 0


def test_mxfp4_to_fp8_pinned_tile():
    codes = torch.zeros(128, dtype=torch.uint8)
    codes[:8] = torch.arange(8)            # block 0: 0, 0.5 ... 6 at 2^0 -> tile k = 2 - 8 = -6
    codes[32:35] = torch.tensor([1, 3, 5])  # block 1 at 2^-16: 0.5, 1.5, 3 -> 2^-11, 0.75 * 2^-9, 1.5 * 2^-9
    codes[35] = 9                           # -0.5 at 2^-16 -> rounds to -0
    codes[96:98] = 15                       # block 3 at 2^-127: -6 * 2^-127 -> -0
    data = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 64)
    x = MXFP4Tensor(data, torch.tensor([[127, 111, 250, 0]], dtype=torch.uint8))  # block 2 is all zero
    q = both_mxfp4_to_fp8(x)
    assert q.scales.tolist() == [[127 - 6]]
    b = q.data.view(torch.uint8)[0]
    want0 = (torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]) * 64).to(E4M3_DTYPE).view(torch.uint8)
    assert torch.equal(b[:8], want0)
    assert b[32:36].tolist() == [0x00, 0x01, 0x02, 0x80]  # subnormals rounded to nearest-even, -0 kept
    assert b[96:98].tolist() == [0x80, 0x80]


def test_mxfp4_to_fp8_nan_block_and_overflow_make_their_tile_nan():
    data = torch.full((1, 192), 0x33, dtype=torch.uint8)  # 1.5 everywhere
    scales = torch.full((1, 12), 127, dtype=torch.uint8)
    scales[0, 1] = 255                                     # NaN block in tile 0
    scales[0, 4:8] = 254                                   # tile 1: 1.5 * 2^127, finite
    scales[0, 8] = 254
    data[0, 128] = 0x34                                    # tile 2: 2 * 2^127 = 2^128 -> Inf
    q = both_mxfp4_to_fp8(MXFP4Tensor(data.reshape(1, 192), scales))
    assert q.scales.tolist() == [[255, 127 + 127 - 8, 255]]
    d = q.data.view(torch.uint8)[0]
    assert int(d[:128].sum()) == 0 and int(d[256:].sum()) == 0
    assert (d[128:256] == 0x7C).all()                     # 1.5 * 2^8 = 384


# --- lossless windows ---------------------------------------------------------------------------------

def window_mxfp4(rows: int, k: int, spread: int) -> MXFP4Tensor:
    """Random codes; per FP8 tile a largest block scale in [20, 230] and the other blocks up to
    `spread` below it."""
    data = torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8)
    top = torch.randint(20, 231, (rows, k // 128, 1))
    drop = torch.randint(0, spread + 1, (rows, k // 128, 4))
    drop[..., 0] = 0
    return MXFP4Tensor(data, (top - drop).reshape(rows, k // 32).to(torch.uint8))


def test_mxfp4_to_fp8_is_lossless_inside_the_2_pow_14_window(seed):
    x = window_mxfp4(6, 256, 14)
    q = both_mxfp4_to_fp8(x)
    assert_same_values(decoded(q), decoded(x), "MXFP4 -> FP8 inside the window")
    for mode in ("rceil", "floor"):  # and back: FP8 -> MXFP4 gives the same values again
        assert_same_values(decoded(both_fp8_to_mxfp4(q, mode)), decoded(x), f"MXFP4 -> FP8 -> MXFP4 {mode}")


def test_mxfp4_to_fp8_window_edge():
    # A 6 at 2^0 and a 0.5 in a block 14 (kept) or 15 (lost) binades lower.
    for drop, kept in ((14, True), (15, False)):
        codes = torch.zeros(128, dtype=torch.uint8)
        codes[0], codes[32] = 7, 1
        data = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 64)
        x = MXFP4Tensor(data, torch.tensor([[127, 127 - drop, 127, 127]], dtype=torch.uint8))
        same = torch.equal(decoded(both_mxfp4_to_fp8(x)), decoded(x))
        assert same == kept, f"drop {drop}"


# --- views, shapes, empties ---------------------------------------------------------------------------

def test_conversions_read_and_write_packed_wire_rows(seed):
    n, k = 5, 256
    src = random_fp8(n, k, "all")
    for backend, dev in (("triton", TRITON_DEVICE), ("torch", "cpu")):
        fp8_wire = torch.full((n, k + k // 128 + 3), 0xAA, dtype=torch.uint8, device=dev)  # padded FP8 rows
        fp8_wire[:, :k] = src.data.view(torch.uint8)
        fp8_wire[:, k:k + k // 128] = src.scales
        q = FP8Tensor(fp8_wire[:, :k].view(E4M3_DTYPE), fp8_wire[:, k:k + k // 128])
        wire = torch.full((n, k // 2 + k // 32), 0xAA, dtype=torch.uint8, device=dev)
        out = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:])
        got = fp8_to_mxfp4(q, backend=backend, out=out)
        assert got.data.data_ptr() == wire.data_ptr()
        assert_same_bits(got, reference.quantize_mxfp4(decoded(src), "rceil"), f"into wire ({backend})")

        back = torch.full((n, k + k // 128 + 1), 0x55, dtype=torch.uint8, device=dev)
        out8 = FP8Tensor(back[:, :k].view(E4M3_DTYPE), back[:, k:k + k // 128])
        mxfp4_to_fp8(got, backend=backend, out=out8)
        assert_same_bits(out8, reference.quantize_fp8(decoded(got)), f"from wire ({backend})")
        assert (back[:, -1] == 0x55).all()  # the padding byte is not touched


def test_conversions_keep_leading_dims_and_handle_empty(seed):
    q = random_fp8(6, 128).data.reshape(2, 3, 128)
    s = random_fp8(6, 128).scales.reshape(2, 3, 1)
    t = both_fp8_to_mxfp4(FP8Tensor(q, s), "rceil")
    assert t.shape == (2, 3, 128) and t.scales.shape == (2, 3, 4)
    assert both_mxfp4_to_fp8(t).shape == (2, 3, 128)
    empty = both_fp8_to_mxfp4(FP8Tensor(q[:0], s[:0]), "floor")
    assert empty.shape == (0, 3, 128)
    assert both_mxfp4_to_fp8(empty).scales.shape == (0, 3, 1)


def test_non_contiguous_inputs_are_read_correctly(seed):
    base = random_fp8(4, 512)
    q = FP8Tensor(base.data[:, ::2], base.scales[:, ::2])  # column stride 2: copied, never misread
    both_fp8_to_mxfp4(q, "rceil")
    x = random_mxfp4(8, 256)
    both_mxfp4_to_fp8(MXFP4Tensor(x.data[::2], x.scales[::2]))


# --- bad input ----------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_clear_errors():
    q = random_fp8(2, 128)
    x = random_mxfp4(2, 128)
    with pytest.raises(TypeError, match="FP8Tensor"):
        fp8_to_mxfp4(torch.zeros(2, 128))
    with pytest.raises(TypeError, match="MXFP4Tensor"):
        mxfp4_to_fp8(q)
    with pytest.raises(ValueError, match="scale_mode"):
        fp8_to_mxfp4(q, scale_mode="nearest")
    with pytest.raises(ValueError, match="backend"):
        mxfp4_to_fp8(x, backend="cuda")
    with pytest.raises(ValueError, match="multiple of 128"):
        mxfp4_to_fp8(random_mxfp4(2, 96))
    with pytest.raises(TypeError, match="out"):
        fp8_to_mxfp4(q, out=torch.zeros(2, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out.data"):
        fp8_to_mxfp4(q, out=random_mxfp4(3, 128))
    wide = torch.zeros(2, 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        fp8_to_mxfp4(q, out=MXFP4Tensor(wide[:, ::2], torch.zeros(2, 4, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="out.data"):
        mxfp4_to_fp8(x, out=FP8Tensor(torch.zeros(2, 256, dtype=E4M3_DTYPE), torch.zeros(2, 2, dtype=torch.uint8)))


# --- CUDA ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_conversions_match_reference_at_size(seed, scale_range):
    q = random_fp8(1000, 7168, scale_range, nan_codes=scale_range == "all", device="cuda")
    for mode in ("rceil", "floor"):
        both_fp8_to_mxfp4(q, mode)
    x = random_mxfp4(1000, 7168, scale_range, device="cuda")
    both_mxfp4_to_fp8(x)
    wire = torch.empty(1000, 7168 // 2 + 7168 // 32, dtype=torch.uint8, device="cuda")
    got = fp8_to_mxfp4(q, backend="triton", out=MXFP4Tensor(wire[:, :3584], wire[:, 3584:]))
    assert_same_bits(got, fp8_to_mxfp4(q, backend="torch"), "CUDA into wire rows")
    out8 = FP8Tensor(torch.empty(1000, 7168 + 64, dtype=E4M3_DTYPE, device="cuda")[:, :7168],
                     torch.empty(1000, 56, dtype=torch.uint8, device="cuda"))
    assert_same_bits(mxfp4_to_fp8(got, backend="triton", out=out8), mxfp4_to_fp8(got, backend="torch"),
                     "CUDA from wire rows")


# --- launch configurations ----------------------------------------------------------------------------

def test_every_sweep_config_gives_the_same_bits(seed, monkeypatch):
    from mxa2a.quant import conversions
    from mxa2a.quant.kernels import launch

    q = random_fp8(128, 256, "all", nan_codes=True)
    x = random_mxfp4(128, 384, "all")
    xt = random_mxfp4(128, 288, "all")  # 288: partial column blocks for every block_k of the transposes
    for name, configs in launch.SWEEP.items():
        fn = getattr(conversions, name)
        arg = q if name.startswith("fp8") else x if name == "mxfp4_to_fp8" else xt
        want = fn(arg, backend="torch")
        if TRITON_DEVICE == "cpu":
            # The interpreter has no register layouts, so configurations of one variant run the same code
            # there: the first of each variant and the default (all of them on a GPU).
            default, seen, subset = launch.CONFIGS[name], set(), []
            for c in configs:
                if c == default or c.variant not in seen:
                    subset.append(c)
                    seen.add(c.variant)
            configs = subset
        for cfg in configs:
            monkeypatch.setitem(launch.CONFIGS, name, cfg)
            assert_same_bits(fn(to_device(arg, TRITON_DEVICE), backend="triton"), want, f"{name} {cfg}")
