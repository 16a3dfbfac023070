"""`grouped_gemm_fp8` / `grouped_gemm_fp8_wgrad` (Triton, under the interpreter on CPU) against the
fp32 oracle of `mxa2a.gemm.reference`, within the fp32-accumulation bound of `gemm_data`."""

import dataclasses

import pytest
import torch

from gemm_data import accumulation_bound, colwise_of, fp8_rows, offsets_of
from mxa2a.gemm import (GemmConfig, align_groups, gather_aligned_rows, grouped_gemm_fp8, grouped_gemm_fp8_wgrad,
                        quantize_fp8_blocks)
from mxa2a.gemm import reference
from mxa2a.gemm.grouped import FORWARD_CONFIG, WGRAD_CONFIG
from mxa2a.gemm.kernels.grouped_gemm import decoded_scales
from mxa2a.quant import FP8Tensor, dequantize_fp8, fp8_rowwise_to_colwise, quantize_fp8

SMALL = GemmConfig(block_rows=16, block_cols=32, num_warps=4, num_stages=2)
WGRAD_SMALL = GemmConfig(block_rows=64, block_cols=64, num_warps=4, num_stages=2)

# Empty groups (first, middle, last), groups of 1 row, sizes that are no multiple of 128 or of the tile.
SIZES = {
    "mixed": [5, 0, 1, 17, 40],
    "leading_and_trailing_empty": [0, 33, 0],
    "single_rows": [1, 1, 1],
    "one_group": [50],
}


def _weights(g: int, n: int, k: int) -> FP8Tensor:
    w = quantize_fp8_blocks(torch.randn(g, -(-n // 128) * 128, k))
    return FP8Tensor(w.data[:, :n].contiguous(), w.scales[:, :n].contiguous())


def _bounds(offsets):
    ends = offsets.tolist()
    return list(zip([0] + ends[:-1], ends))


def _check_rows(out, ref, a, b, offsets, mma_bits=None):
    av, bv = dequantize_fp8(a, torch.float32), dequantize_fp8(b, torch.float32)
    for g, (s, e) in enumerate(_bounds(offsets)):
        bound = accumulation_bound(av[s:e], bv[g], mma_bits)
        err = (out[s:e].float() - ref[s:e]).abs()
        assert (err <= bound).all(), f"group {g} rows {s}:{e}: max error {err.max().item()}"


@pytest.mark.parametrize("case", sorted(SIZES))
def test_forward_matches_oracle(case, seed):
    sizes = SIZES[case]
    k, n = 256, 96  # N not a multiple of the column tile
    offsets = offsets_of(sizes)
    a, b = fp8_rows(sum(sizes), k), _weights(len(sizes), n, k)
    out = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, backend="triton", config=SMALL)
    _check_rows(out, reference.grouped_gemm_fp8(a, b, offsets, torch.float32), a, b, offsets)


@pytest.mark.parametrize("block_cols", [32, 256])
def test_block_scaled_weights_give_the_same_result_with_one_scale_per_block(block_cols, seed):
    sizes, k = [9, 0, 70], 384
    offsets = offsets_of(sizes)
    a = fp8_rows(sum(sizes), k)
    # every 128-row block of b at its own power-of-two scale, so the blocks' scale bytes differ
    w = torch.randn(3, 3, 128, k) * torch.exp2(torch.randint(-3, 4, (3, 3, 1, 1)).float())
    b = quantize_fp8_blocks(w.reshape(3, 384, k))
    assert len(set(b.scales[0, ::128, 0].tolist())) > 1 or len(set(b.scales[1, ::128, 0].tolist())) > 1
    cfg = GemmConfig(block_rows=16, block_cols=block_cols)
    per_row = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, backend="triton", config=cfg)
    per_block = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, backend="triton", config=cfg,
                                 b_block_scales=True)
    assert torch.equal(per_row, per_block)  # same products sa * sb, same order
    with pytest.raises(ValueError, match="b_block_scales"):
        grouped_gemm_fp8(a, _weights(3, 96, k), offsets, b_block_scales=True, config=cfg)


def test_forward_bf16_output_is_the_rounded_fp32_result(seed):
    sizes, k, n = [9, 23], 128, 64
    offsets = offsets_of(sizes)
    a, b = fp8_rows(sum(sizes), k), _weights(2, n, k)
    out = grouped_gemm_fp8(a, b, offsets, backend="triton", config=SMALL)
    ref = reference.grouped_gemm_fp8(a, b, offsets, torch.float32)
    assert out.dtype == torch.bfloat16
    # one bf16 rounding (2^-8 relative) on top of the fp32 bound
    assert ((out.float() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-3 * ref.abs().max()).all()


def test_forward_with_row_tiles_of_128(seed):
    sizes, k, n = [130, 0, 127], 128, 128
    offsets = offsets_of(sizes)
    a, b = fp8_rows(sum(sizes), k), _weights(3, n, k)
    out = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, backend="triton",
                           config=GemmConfig(block_rows=128, block_cols=128))
    _check_rows(out, reference.grouped_gemm_fp8(a, b, offsets, torch.float32), a, b, offsets)


def test_nan_tile_gives_nan_rows_only(seed):
    sizes, k, n = [4, 4], 256, 32
    x = torch.randn(8, k)
    x[5, 200] = float("nan")
    a, b = quantize_fp8(x), _weights(2, n, k)
    out = grouped_gemm_fp8(a, b, offsets_of(sizes), out_dtype=torch.float32, backend="triton", config=SMALL)
    assert out[5].isnan().all() and not out[torch.arange(8) != 5].isnan().any()


@pytest.mark.parametrize("sizes", [[5, 0, 1, 100, 30], [0, 0, 256], [1, 0]], ids=["mixed", "empty_first", "tiny"])
def test_wgrad_matches_oracle(sizes, seed):
    total = sum(sizes)
    rows = -(-total // 128) * 128
    offsets = offsets_of(sizes)
    a_t, b_t = colwise_of(rows, 256, total), colwise_of(rows, 128, total)
    out = grouped_gemm_fp8_wgrad(a_t, b_t, offsets, backend="triton", config=WGRAD_SMALL)
    ref = reference.grouped_gemm_fp8_wgrad(a_t, b_t, offsets)
    assert out.shape == (len(sizes), 256, 128)
    av, bv = dequantize_fp8(a_t, torch.float32), dequantize_fp8(b_t, torch.float32)
    for g, (s, e) in enumerate(_bounds(offsets)):
        assert ((out[g] - ref[g]).abs() <= accumulation_bound(av[:, s:e], bv[:, s:e])).all(), f"group {g}"
        if e == s:
            assert (out[g] == 0).all()


def test_wgrad_straddling_tile_reads_only_its_groups_tokens(seed):
    # Group 0 = tokens 0..9, group 1 = 10..127: one token tile serves both; NaN-free values of the
    # other group must not leak in (masked), so each group equals its own slice of the oracle.
    x = torch.randn(128, 128)
    y = torch.randn(128, 128)
    a_t, b_t = fp8_rowwise_to_colwise(quantize_fp8(y)), fp8_rowwise_to_colwise(quantize_fp8(x))
    offsets = offsets_of([10, 118])
    out = grouped_gemm_fp8_wgrad(a_t, b_t, offsets, backend="triton", config=SMALL)
    av, bv = dequantize_fp8(a_t, torch.float32), dequantize_fp8(b_t, torch.float32)
    torch.testing.assert_close(out[0], av[:, :10] @ bv[:, :10].t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[1], av[:, 10:] @ bv[:, 10:].t(), rtol=1e-5, atol=1e-4)


def _aligned_operands(sizes, n, k, device="cpu", nan_row=None):
    """Column-wise operands of random rows put in the group-aligned layout, and the layout."""
    m = sum(sizes)
    layout = align_groups(offsets_of(sizes, device), m)
    y, x = torch.randn(m, n, device=device), torch.randn(m, k, device=device)
    if nan_row is not None:
        x[nan_row, 3] = float("nan")
    a_t, b_t = (fp8_rowwise_to_colwise(gather_aligned_rows(quantize_fp8(v), layout)) for v in (y, x))
    return a_t, b_t, layout


@pytest.mark.parametrize("sizes", [[5, 0, 1, 100, 30], [0, 0, 256], [1, 0], [129, 127, 0, 128]],
                         ids=["mixed", "empty_first", "tiny", "around_128"])
def test_aligned_wgrad_matches_oracle(sizes, seed):
    a_t, b_t, layout = _aligned_operands(sizes, 256, 128)
    out = grouped_gemm_fp8_wgrad(a_t, b_t, layout, backend="triton", config=WGRAD_SMALL)
    ref = reference.grouped_gemm_fp8_wgrad(a_t, b_t, layout)
    assert out.shape == ref.shape == (len(sizes), 256, 128)
    av, bv = dequantize_fp8(a_t, torch.float32), dequantize_fp8(b_t, torch.float32)
    starts = [0] + layout.padded_offsets.tolist()[:-1]
    for g, (s, n) in enumerate(zip(starts, sizes)):
        assert ((out[g] - ref[g]).abs() <= accumulation_bound(av[:, s:s + n], bv[:, s:s + n])).all(), f"group {g}"
        assert (out[g] == 0).all() if n == 0 else ref[g].abs().sum() > 0


def test_aligned_wgrad_keeps_a_nan_in_its_group(seed):
    sizes = [10, 118, 3]  # packed, groups 0 and 1 would share one token tile
    a_t, b_t, layout = _aligned_operands(sizes, 128, 128, nan_row=12)
    out = grouped_gemm_fp8_wgrad(a_t, b_t, layout, backend="triton", config=WGRAD_SMALL)
    assert out[1].isnan().any() and not out[0].isnan().any() and not out[2].isnan().any()


def _step_major(t: FP8Tensor) -> FP8Tensor:
    """The same values with the scales stored step-major (a transposed view of a [K/128, M] buffer)."""
    return FP8Tensor(t.data, t.scales.t().contiguous().t())


@pytest.mark.parametrize("block_cols, b_blocks", [(32, False), (32, True), (256, True)])
def test_prefetched_and_step_major_scales_give_the_same_bits(block_cols, b_blocks, seed):
    sizes, k = [9, 0, 70, 1], 384
    offsets = offsets_of(sizes)
    a = fp8_rows(sum(sizes), k)
    b = quantize_fp8_blocks(torch.randn(4, 256, k) * torch.exp2(torch.randint(-3, 4, (4, 256, 1)).float()))
    base = GemmConfig(block_rows=16, block_cols=block_cols, num_stages=2)
    want = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, backend="triton", config=base,
                            b_block_scales=b_blocks)
    for cfg, x in ((GemmConfig(16, block_cols, num_stages=2, prefetch_scales=True), a), (base, _step_major(a))):
        got = grouped_gemm_fp8(x, b, offsets, out_dtype=torch.float32, backend="triton", config=cfg,
                               b_block_scales=b_blocks)
        assert torch.equal(got, want), cfg


@pytest.mark.parametrize("sizes", [[5, 0, 1, 100, 30], [129, 127, 0, 128], [0, 0]], ids=["mixed", "around_128", "empty"])
def test_wgrad_prefetched_and_step_major_scales_give_the_same_bits(sizes, seed):
    a_t, b_t, layout = _aligned_operands(sizes, 256, 128, nan_row=3 if sum(sizes) > 3 else None)
    want = grouped_gemm_fp8_wgrad(a_t, b_t, layout, backend="triton", config=WGRAD_SMALL)
    fetch = GemmConfig(64, 64, num_stages=2, prefetch_scales=True)
    f32 = GemmConfig(64, 64, num_stages=2, f32_scales=True)
    every = GemmConfig(64, 64, num_stages=2, prefetch_scales=True, f32_scales=True)
    for cfg, x, y in ((fetch, a_t, b_t), (WGRAD_SMALL, _step_major(a_t), _step_major(b_t)),
                      (fetch, _step_major(a_t), _step_major(b_t)), (f32, a_t, b_t),
                      (every, _step_major(a_t), _step_major(b_t))):
        got = grouped_gemm_fp8_wgrad(x, y, layout, backend="triton", config=cfg)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), cfg  # NaNs included
    packed = offsets_of(sizes)
    rows = fp8_rowwise_to_colwise(quantize_fp8(torch.randn(-(-max(sum(sizes), 1) // 128) * 128, 128)))
    for cfg in (fetch, f32):
        assert torch.equal(grouped_gemm_fp8_wgrad(rows, rows, packed, backend="triton", config=cfg),
                           grouped_gemm_fp8_wgrad(rows, rows, packed, backend="triton", config=WGRAD_SMALL))


def test_decoded_scales_are_the_fp32_tile_scales():
    b = torch.randint(0, 256, (96, 40), dtype=torch.uint8)
    b[0, :3] = torch.tensor([0, 255, 127], dtype=torch.uint8)
    for scales in (b, b.t().contiguous().t()):  # row-major, and a transposed view (kept one)
        got = decoded_scales(scales)
        want = FP8Tensor(torch.zeros(96, 40 * 128, dtype=torch.float8_e4m3fn), scales).scale_inv()
        assert got.stride() == scales.stride() or scales.is_contiguous()
        assert torch.equal(got.view(torch.int32)[~want.isnan()], want.view(torch.int32)[~want.isnan()])
        assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()


def test_f32_scales_keep_byte_0_and_nan_tiles(seed):
    # scale bytes 0 (2^-127) and 255 (NaN) in both operands: the same bits as the byte-decoding loop
    sizes = [130, 126]
    a_t, b_t, layout = _aligned_operands(sizes, 128, 128)
    sa, sb = a_t.scales.clone(), b_t.scales.clone()
    sa[5, 0], sb[7, 1], sa[9, 2] = 255, 0, 0
    a_t, b_t = FP8Tensor(a_t.data, sa), FP8Tensor(b_t.data, sb)
    want = grouped_gemm_fp8_wgrad(a_t, b_t, layout, backend="triton", config=WGRAD_SMALL)
    got = grouped_gemm_fp8_wgrad(a_t, b_t, layout, backend="triton",
                                 config=GemmConfig(64, 64, num_stages=2, f32_scales=True))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)) and want.isnan().any()


def test_bad_arguments_are_clear_errors():
    a, b = fp8_rows(8, 256), _weights(2, 32, 256)
    off = offsets_of([4, 4])
    with pytest.raises(ValueError, match="share K"):
        grouped_gemm_fp8(fp8_rows(8, 128), b, off)
    with pytest.raises(ValueError, match="scales must have shape"):
        FP8Tensor(torch.zeros(8, 200, dtype=torch.float8_e4m3fn), torch.zeros(8, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_fp8(torch.randn(8, 200))
    with pytest.raises(TypeError, match="int32"):
        grouped_gemm_fp8(a, b, off.long())
    with pytest.raises(ValueError, match="one entry per group"):
        grouped_gemm_fp8(a, b, offsets_of([8]))
    with pytest.raises(ValueError, match="3-D"):
        grouped_gemm_fp8(a, a, off)
    with pytest.raises(TypeError, match="out_dtype"):
        grouped_gemm_fp8(a, b, off, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="share T"):
        grouped_gemm_fp8_wgrad(colwise_of(128, 128, 8), colwise_of(256, 128, 8), off)
    with pytest.raises(ValueError, match="power of two"):
        GemmConfig(block_rows=96)
    with pytest.raises(TypeError, match="prefetch_scales must be a bool"):
        GemmConfig(prefetch_scales=1)
    with pytest.raises(TypeError, match="f32_scales must be a bool"):
        GemmConfig(f32_scales="yes")
    a_t, b_t, layout = _aligned_operands([4, 4], 128, 128)
    with pytest.raises(ValueError, match="rows == T"):
        grouped_gemm_fp8_wgrad(colwise_of(128, 128, 8), colwise_of(128, 128, 8), layout)


@pytest.mark.gpu
@pytest.mark.parametrize("g,n,k,skew", [(64, 2816, 2048, False), (64, 2048, 1408, True), (8, 4096, 7168, True)])
def test_gpu_forward_and_wgrad_at_real_shapes(g, n, k, skew, seed):
    dev, m = "cuda", 8192
    p = torch.distributions.Dirichlet(torch.full((g,), 0.3 if skew else 50.0)).sample()
    sizes = torch.distributions.Multinomial(m, p).sample().long().tolist()
    sizes[0], sizes[-1] = 0, sizes[-1] + sizes[0]
    offsets = offsets_of(sizes, dev)
    a, b = fp8_rows(m, k, dev), quantize_fp8_blocks(torch.randn(g, n, k, device=dev))
    out = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, b_block_scales=True)
    # Hopper's FP8 MMA accumulates the 4 chained k=32 instructions of one 128-step with ~13-14 bits of
    # the largest addend, truncating (DeepSeek-V3 report, section 3.3.2): up to ~4 * 2^-13 = 2^-11 of
    # sum |a b| per step; the kernel promotes to fp32 after every step. Bound: 2^-9 of sum |a b|.
    _check_rows(out, reference.grouped_gemm_fp8(a, b, offsets, torch.float32), a, b, offsets, mma_bits=9)
    a_t, b_t = colwise_of(m, n, m, dev), colwise_of(m, k, m, dev)
    wg = grouped_gemm_fp8_wgrad(a_t, b_t, offsets)
    wr = reference.grouped_gemm_fp8_wgrad(a_t, b_t, offsets)
    av, bv = dequantize_fp8(a_t, torch.float32), dequantize_fp8(b_t, torch.float32)
    for i, (s, e) in enumerate(_bounds(offsets)):
        err, mag = (wg[i] - wr[i]).abs(), av[:, s:e].abs() @ bv[:, s:e].abs().t()
        assert (err <= accumulation_bound(av[:, s:e], bv[:, s:e], 9)).all(), \
            f"group {i}: max error / sum|ab| = {(err / mag.clamp_min(1e-30)).max().item():.3g}"
    a_t, b_t, layout = _aligned_operands(sizes, n, k, dev)
    wg = grouped_gemm_fp8_wgrad(a_t, b_t, layout)
    wr = reference.grouped_gemm_fp8_wgrad(a_t, b_t, layout)
    av, bv = dequantize_fp8(a_t, torch.float32), dequantize_fp8(b_t, torch.float32)
    starts = [0] + layout.padded_offsets.tolist()[:-1]
    for i, (s, rows) in enumerate(zip(starts, sizes)):
        err = (wg[i] - wr[i]).abs()
        assert (err <= accumulation_bound(av[:, s:s + rows], bv[:, s:s + rows], 9)).all(), f"aligned group {i}"
    # prefetched scale bytes and step-major scales: the same bits as the defaults
    for fetch in (dataclasses.replace(WGRAD_CONFIG, prefetch_scales=True), dataclasses.replace(WGRAD_CONFIG, f32_scales=True)):
        assert torch.equal(grouped_gemm_fp8_wgrad(a_t, b_t, layout, config=fetch), wg)
    assert torch.equal(grouped_gemm_fp8_wgrad(_step_major(a_t), _step_major(b_t), layout), wg)
    fetch = dataclasses.replace(FORWARD_CONFIG, prefetch_scales=True)
    assert torch.equal(grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, b_block_scales=True, config=fetch), out)
