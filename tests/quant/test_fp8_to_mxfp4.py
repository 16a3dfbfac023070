"""`fp8_to_mxfp4` (`quant/kernels/fp8_to_mxfp4.py`): the "swar" kernel (fast path, its per-program
fallback to the "f32" body, EVEN and partial tiles) and the "f32" kernel (by config and for unaligned
rows) equal the two-step reference bit for bit: random bytes over every scale range, activation-like
data, every E4M3 code under every block maximum, pinned values, NaN / Inf / zero / subnormal corners,
strided wire rows, leading dimensions, empties, bad input and bad configurations."""

import pytest
import torch
import triton
import triton.language as tl
from conversion_data import (SCALE_RANGES, TRITON_DEVICE, assert_same_bits, check_config, decoded, fp8_from_bytes,
                             live_configs, one_config_per_kernel, random_fp8, random_mxfp4, to_device)

from mxa2a.quant import reference
from mxa2a.quant.conversions import fp8_to_mxfp4
from mxa2a.quant.formats import E4M3_DTYPE, FP8Tensor, MXFP4Tensor
from mxa2a.quant.kernels import fp8_to_mxfp4 as kernels
from mxa2a.quant.kernels.launch import CONFIGS, LaunchConfig

# Decoding to exact fp32 yields Inf from 2^128 on, as the two-step path does; numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# "swar" tiles (block_m, block_k, warps): EVEN and partial tiles depending on the shapes below.
SWAR_TILES = [(4, 256, 4), (2, 128, 2), (1, 512, 4)]


def both(t: FP8Tensor, scale_mode: str, cfg: LaunchConfig | None = None) -> MXFP4Tensor:
    """Triton result (configuration `cfg`, default the tuned one), checked against the torch reference."""
    got = check_config(fp8_to_mxfp4, cfg, t, scale_mode, scale_mode=scale_mode)
    assert got.scale_mode == scale_mode
    return got


def check_swar(t: FP8Tensor, tiles=SWAR_TILES, modes=("rceil", "floor")):
    for mode in modes:
        for m, k, w in tiles:
            both(t, mode, LaunchConfig(m, k, w, "swar"))


def activation_like(rows: int, k: int) -> torch.Tensor:
    """Gaussian rows at magnitudes 2^-8 .. 2^8 (what the benchmark converts), a zero row, a zero block."""
    x = torch.randn(rows, k) * torch.exp2(torch.randint(-8, 9, (rows, 1)).float())
    x[1] = 0
    x[2, 32:64] = 0
    return x


def test_reference_is_the_two_step_path(seed):
    q = random_fp8(4, 256, "all", nan_codes=True)
    for mode in ("rceil", "floor"):
        two_step = reference.quantize_mxfp4(reference.dequantize_fp8(q, torch.float32), mode)
        assert_same_bits(fp8_to_mxfp4(q, scale_mode=mode, backend="torch"), two_step)


# --- every kernel on random bytes and activation-like data ------------------------------------------------

@pytest.mark.parametrize("cfg", live_configs("fp8_to_mxfp4"), ids=str)
def test_every_kernel_gives_the_same_bits(seed, cfg):
    q = random_fp8(16, 256, "all", nan_codes=True)
    both(q, "rceil", cfg)
    both(q, "floor", cfg)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
@pytest.mark.parametrize("scale_mode", ["rceil", "floor"])
def test_default_matches_reference_on_random_bytes(seed, scale_range, scale_mode):
    both(random_fp8(5, 384, scale_range, nan_codes=scale_range == "all"), scale_mode)


@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_swar_random_bytes_partial_tiles(seed, scale_range):
    # 6 rows x 384: partial row and column tiles for block 4 x 256.
    check_swar(random_fp8(6, 384, scale_range, nan_codes=scale_range == "all"), tiles=SWAR_TILES[:1])


@pytest.mark.slow
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_swar_random_bytes_every_tile(seed, scale_range):
    # EVEN for 2 x 128, partial rows and columns for 4 x 256, partial columns for 1 x 512.
    check_swar(random_fp8(6, 384, scale_range, nan_codes=scale_range == "all"))


def test_swar_and_f32_on_activation_like_data(seed):
    q = reference.quantize_fp8(activation_like(8, 512))
    check_swar(q, tiles=SWAR_TILES[1:2])  # EVEN: whole tiles, no masks
    both(q, "floor", LaunchConfig(4, 256, 4, "f32"))


@pytest.mark.slow
def test_swar_on_activation_like_data_every_tile(seed):
    check_swar(reference.quantize_fp8(activation_like(8, 512)))


@pytest.mark.slow
def test_swar_every_code_under_every_block_maximum():
    # One 32-block per (largest code, row): the largest code mx (every nonzero E4M3 magnitude and NaN),
    # then 31 codes spread over 0..mx with random signs; tile scale bytes 127, 9 (the bottom of the
    # fast path), 1 (fp32 subnormal maxima) and 250 (Inf for large codes).
    g = torch.Generator().manual_seed(3)
    blocks = []
    for mx in range(1, 128):
        rest = torch.linspace(0, mx, 31).round().to(torch.int64)
        sign = torch.randint(0, 2, (32,), generator=g) << 7
        blocks.append(torch.cat([torch.tensor([mx]), rest]) | sign)
    blocks.append(torch.zeros(32, dtype=torch.int64))  # a zero block (128 blocks = 32 tiles)
    data = torch.stack(blocks).reshape(8, 512)
    for tb in (127, 9, 1, 250):
        check_swar(fp8_from_bytes(data, torch.full((8, 4), tb)), tiles=[(4, 256, 4)])


def test_swar_nan_inf_zero_and_subnormal_blocks():
    data = torch.full((4, 256), 0x38, dtype=torch.uint8)   # 1.0
    data[0, 40] = 0x7F                                       # E4M3 NaN: block 1 of row 0
    data[0, 64:96] = 0x80                                    # a block of -0: code 8, scale byte 0
    data[1, :32] = torch.arange(32) % 8                      # a block of subnormals only
    data[1, 200] = 0xFE                                      # -448
    data[2, 128] = 0x40                                      # 2 * 2^127 = 2^128 (Inf) in a 254 tile
    scales = torch.tensor([[127, 127], [127, 0], [100, 254], [255, 127]])  # NaN tile in row 3
    check_swar(fp8_from_bytes(data, scales))


# --- pinned values ------------------------------------------------------------------------------------------

def test_448_per_scale_mode():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 0] = 0x7E  # 448 * 2^0 = 1.75 * 2^8
    q = fp8_from_bytes(data, torch.tensor([[127]]))
    r = both(q, "rceil")   # e = 8 - 2 + 1: 448 / 128 = 3.5 -> 4 (ties to even)
    assert r.scales.tolist() == [[134, 0, 0, 0]] and r.data[0, 0] == 6
    f = both(q, "floor")   # e = 6: 448 / 64 = 7 -> saturates to 6
    assert f.scales.tolist() == [[133, 0, 0, 0]] and f.data[0, 0] == 7
    assert int(r.data.sum()) == 6 and int(f.data.sum()) == 7  # zero blocks: codes 0, scale byte 0


def test_e4m3_subnormals():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, :8] = torch.tensor([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81])  # m * 2^-9, -2^-9
    q = fp8_from_bytes(data, torch.tensor([[127]]))

    def codes(t):
        d = t.data[0, :4].to(torch.int64)
        return torch.stack([d & 15, d >> 4], -1).flatten().tolist()

    r = both(q, "rceil")   # amax 1.75 * 2^-7: e = -8, y = m / 2
    assert r.scales[0, 0] == 127 - 8 and codes(r) == [1, 2, 3, 4, 4, 5, 6, 9]
    f = both(q, "floor")   # e = -9, y = m: 5 -> 4 (tie), 7 -> 6 (saturates)
    assert f.scales[0, 0] == 127 - 9 and codes(f) == [2, 4, 5, 6, 6, 7, 7, 10]


def test_codes_depend_on_q_alone(seed):
    q = random_fp8(3, 256, "realistic")
    a = both(q, "rceil")
    shifted = FP8Tensor(q.data, q.scales + 5)
    b = both(shifted, "rceil")
    live = a.scales != 0  # blocks not clamped at the bottom (zero blocks stay at byte 0)
    assert torch.equal(a.data, b.data)
    assert torch.equal(b.scales[live].to(torch.int64) - a.scales[live].to(torch.int64),
                       torch.full_like(a.scales[live], 5, dtype=torch.int64))


def test_nan_tile_and_nan_element_make_only_their_blocks_nan():
    data = torch.full((2, 256), 0x38, dtype=torch.uint8)  # 1.0 everywhere
    data[1, 40] = 0x7F                                    # E4M3 NaN in block 1 of row 1
    q = fp8_from_bytes(data, torch.tensor([[255, 127], [127, 127]]))
    for mode in ("rceil", "floor"):
        t = both(q, mode)
        nan = t.scales == 255
        assert nan.tolist() == [[True] * 4 + [False] * 4, [False, True] + [False] * 6]
        assert int(t.data[0, :64].sum()) == 0 and int(t.data[1, 16:32].sum()) == 0
        assert decoded(t).isnan().sum() == 128 + 32


def test_value_of_2_pow_128_is_inf_in_the_two_step_path():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 0] = 0x40   # 2.0 * 2^127 = 2^128: Inf in fp32 -> NaN block
    data[0, 32] = 0x3F  # 1.875 * 2^127: finite, in fp32's top binade: rceil takes floor's e = 125
    t = both(fp8_from_bytes(data, torch.tensor([[254]])), "rceil")
    assert t.scales[0, 0] == 255 and t.scales[0, 1] == 127 + 127 - 2
    assert t.data[0, 16] & 0xF == 7  # 1.875 * 2^127 / 2^125 = 7.5 saturates to 6 (code 7)


def test_zero_and_negative_zero_blocks():
    data = torch.zeros(1, 128, dtype=torch.uint8)
    data[0, 1] = 0x80  # -0
    data[0, 64] = 0x01
    t = both(fp8_from_bytes(data, torch.tensor([[0]])), "rceil")  # 2^-136: fp32 subnormal
    assert t.scales.tolist() == [[0, 0, 0, 0]]
    assert t.data[0, 0] == 0x80  # element 1 (high nibble) is -0, code 8
    assert t.data[0, 32] == 0    # 2^-136 * 2^127 = 2^-9 rounds to 0


# --- views, shapes, empties ---------------------------------------------------------------------------------

def test_writes_packed_wire_rows_in_place(seed):
    n, k = 5, 256
    src = random_fp8(n, k, "all")
    for backend, dev in (("triton", TRITON_DEVICE), ("torch", "cpu")):
        fp8_wire = torch.full((n, k + k // 128 + 3), 0xAA, dtype=torch.uint8, device=dev)  # padded FP8 rows
        fp8_wire[:, :k] = src.data.view(torch.uint8)
        fp8_wire[:, k:k + k // 128] = src.scales
        q = FP8Tensor(fp8_wire[:, :k].view(E4M3_DTYPE), fp8_wire[:, k:k + k // 128])
        wire = torch.full((n, k // 2 + k // 32 + 1), 0xAA, dtype=torch.uint8, device=dev)
        out = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:k // 2 + k // 32])
        got = fp8_to_mxfp4(q, backend=backend, out=out)
        assert got.data.data_ptr() == wire.data_ptr()
        assert_same_bits(got, reference.quantize_mxfp4(decoded(src), "rceil"), f"into wire ({backend})")
        assert (wire[:, -1] == 0xAA).all()  # the padding byte is not touched


@pytest.mark.parametrize("pad", [4, 3])  # word-aligned row stride ("swar" in place) or not (the "f32" kernel)
def test_swar_strided_wire_rows(seed, pad):
    n, k = 5, 256
    q = reference.quantize_fp8(activation_like(n, k))
    fp8_rows = torch.full((n, k + pad), 0x55, dtype=torch.uint8)
    fp8_rows[:, :k] = q.data.view(torch.uint8)
    qv = FP8Tensor(fp8_rows[:, :k].view(E4M3_DTYPE), q.scales)
    wire = torch.full((n, k // 2 + k // 32 + pad), 0xAA, dtype=torch.uint8, device=TRITON_DEVICE)
    out = MXFP4Tensor(wire[:, :k // 2], wire[:, k // 2:k // 2 + k // 32])
    got = fp8_to_mxfp4(to_device(qv, TRITON_DEVICE), scale_mode="rceil", backend="triton", out=out,
                       config=LaunchConfig(2, 128, 2, "swar"))
    assert got.data.data_ptr() == wire.data_ptr()  # written in place, on the device of `wire`
    assert_same_bits(to_device(got, "cpu"), fp8_to_mxfp4(q, backend="torch"), f"into wire rows, pad {pad}")
    assert (wire[:, k // 2 + k // 32:].cpu() == 0xAA).all()


def test_keeps_leading_dims_and_handles_empty(seed):
    q = random_fp8(6, 128).data.reshape(2, 3, 128)
    s = random_fp8(6, 128).scales.reshape(2, 3, 1)
    t = both(FP8Tensor(q, s), "rceil")
    assert t.shape == (2, 3, 128) and t.scales.shape == (2, 3, 4)
    empty = both(FP8Tensor(q[:0], s[:0]), "floor")
    assert empty.shape == (0, 3, 128)


def test_non_contiguous_inputs_are_read_correctly(seed):
    base = random_fp8(4, 512)
    both(FP8Tensor(base.data[:, ::2], base.scales[:, ::2]), "rceil")  # column stride 2: copied, never misread


# --- the fast path alone ------------------------------------------------------------------------------------

@triton.jit
def _skip_tile(q_ptr, qs_ptr, x_ptr, xs_ptr, M, K, stride_q, stride_qs, stride_x, stride_xs,
               pid_m, pid_k, RCEIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass


@pytest.mark.skipif(TRITON_DEVICE == "cuda", reason="swaps a jit function, which only the interpreter sees")
def test_swar_fast_path_alone_is_exact_where_taken(seed, monkeypatch):
    # With the fallback body made a no-op, programs that take the fast path still give the reference
    # bits (the outputs start as 0xAA), and data that needs the fallback visibly does not.
    monkeypatch.setattr(kernels, "_fp8_to_mxfp4_f32_tile", _skip_tile)
    cfg = LaunchConfig(4, 256, 4, "swar")
    x = activation_like(8, 512)
    x[3, 256:384] = float("nan")
    q = reference.quantize_fp8(x)

    def run(t, mode):
        out = MXFP4Tensor(torch.full((8, 256), 0xAA, dtype=torch.uint8), torch.full((8, 16), 0xAA, dtype=torch.uint8))
        return to_device(fp8_to_mxfp4(to_device(t, TRITON_DEVICE), scale_mode=mode, backend="triton",
                                      out=to_device(out, TRITON_DEVICE), config=cfg), "cpu")

    for mode in ("rceil", "floor"):
        assert_same_bits(run(q, mode), fp8_to_mxfp4(q, scale_mode=mode, backend="torch"), f"fast path alone {mode}")
    tiny = q.data.view(torch.uint8).clone()
    tiny[0, :32] = 0x01  # a block of subnormals next to 448-sized values: the fallback
    assert (run(FP8Tensor(tiny.view(E4M3_DTYPE), q.scales), "rceil").scales[:4, :8] == 0xAA).all()  # that program only


# --- bad input and bad configurations -----------------------------------------------------------------------

def test_bad_inputs_are_refused_with_clear_errors():
    q = random_fp8(2, 128)
    with pytest.raises(TypeError, match="FP8Tensor"):
        fp8_to_mxfp4(torch.zeros(2, 128))
    with pytest.raises(ValueError, match="scale_mode"):
        fp8_to_mxfp4(q, scale_mode="nearest")
    with pytest.raises(ValueError, match="backend"):
        fp8_to_mxfp4(q, backend="cuda")
    with pytest.raises(TypeError, match="out"):
        fp8_to_mxfp4(q, out=torch.zeros(2, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out.data"):
        fp8_to_mxfp4(q, out=random_mxfp4(3, 128))
    wide = torch.zeros(2, 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        fp8_to_mxfp4(q, out=MXFP4Tensor(wide[:, ::2], torch.zeros(2, 4, dtype=torch.uint8)))


@pytest.mark.parametrize("bad, error, match", [(LaunchConfig(2, 1024, 1, "lut"), ValueError, "variant"),
                                               (LaunchConfig(2, 64, 1, "swar"), ValueError, "multiple of 128"),
                                               ((2, 1024, 1, "swar"), TypeError, "LaunchConfig")], ids=str)
def test_bad_configs_are_refused(bad, error, match):
    q = to_device(random_fp8(2, 128), TRITON_DEVICE)
    with pytest.raises(error, match=match):
        fp8_to_mxfp4(q, backend="triton", config=bad)
    assert CONFIGS["fp8_to_mxfp4"].variant == "swar"


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scale_range", sorted(SCALE_RANGES))
def test_cuda_matches_reference_at_size(seed, scale_range):
    q = random_fp8(1000, 7168, scale_range, nan_codes=scale_range == "all", device="cuda")
    for mode in ("rceil", "floor"):
        for cfg in one_config_per_kernel("fp8_to_mxfp4"):
            both(q, mode, cfg)
    wire = torch.empty(1000, 7168 // 2 + 7168 // 32, dtype=torch.uint8, device="cuda")
    got = fp8_to_mxfp4(q, backend="triton", out=MXFP4Tensor(wire[:, :3584], wire[:, 3584:]))
    assert_same_bits(got, fp8_to_mxfp4(q, backend="torch"), "CUDA into wire rows")
