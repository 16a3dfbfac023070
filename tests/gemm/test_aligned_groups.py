"""`align_groups` / `gather_aligned_rows`: the group-aligned layout against a plain-Python construction,
the Triton gather (interpreter on CPU) bit for bit against the torch one, for FP8 and MXFP4 rows."""

import dataclasses

import pytest
import torch

from gemm_data import offsets_of
from mxa2a.gemm import GroupAlignedLayout, align_groups, aligned_rows_bound, gather_aligned_rows
from mxa2a.quant import quantize_fp8, quantize_mxfp4

SIZES = {
    "mixed": [5, 0, 1, 130, 128, 40],
    "empty_first_and_last": [0, 300, 0],
    "single_rows": [1, 1, 1, 1],
    "all_empty": [0, 0],
}


def _expected(sizes: list[int]) -> tuple[list[int], list[int]]:
    """(padded cumulative ends, row map) built row by row."""
    ends, row_map, start = [], [], 0
    for s in sizes:
        padded = -(-s // 128) * 128
        row_map += list(range(start, start + s)) + [-1] * (padded - s)
        ends.append(len(row_map))
        start += s
    return ends, row_map


@pytest.mark.parametrize("case", sorted(SIZES))
def test_layout_starts_every_group_at_a_multiple_of_128(case):
    sizes = SIZES[case]
    layout = align_groups(offsets_of(sizes), sum(sizes))
    ends, row_map = _expected(sizes)
    assert layout.rows == aligned_rows_bound(sum(sizes), len(sizes)) >= ends[-1]
    assert layout.padded_offsets.tolist() == ends
    assert layout.row_map.tolist() == row_map + [-1] * (layout.rows - len(row_map))
    assert layout.padded_offsets.dtype == layout.row_map.dtype == torch.int32


def test_bound_holds_for_random_sizes(seed):
    for _ in range(200):
        g = int(torch.randint(1, 20, ()))
        sizes = torch.randint(0, 400, (g,)).tolist()
        assert sum(-(-s // 128) * 128 for s in sizes) <= aligned_rows_bound(sum(sizes), g)


def test_bad_offsets_never_map_outside_the_packed_rows():
    # decreasing, and past the 50 packed rows: wrong by contract, but the map stays inside [-1, 50)
    layout = align_groups(torch.tensor([40, 10, 90], dtype=torch.int32), 50)
    assert layout.row_map.min() >= -1 and layout.row_map.max() < 50
    assert layout.padded_offsets.max() <= layout.rows


def _rows(kind: str, m: int, k: int):
    x = torch.randn(m, k) * torch.exp2(torch.randint(-4, 5, (m, 1)).float())
    return quantize_fp8(x) if kind == "fp8" else quantize_mxfp4(x)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


@pytest.mark.parametrize("kind", ["fp8", "mxfp4"])
@pytest.mark.parametrize("case", ["mixed", "empty_first_and_last", "all_empty"])
def test_gather_copies_real_rows_and_zeros_padding(kind, case, seed):
    sizes = SIZES[case]
    m = sum(sizes)
    t = _rows(kind, m + 3, 384)  # 3 rows past the groups: never read
    t.scales[m:] = 255
    layout = align_groups(offsets_of(sizes), m)
    got = gather_aligned_rows(t, layout, backend="triton")
    ref = gather_aligned_rows(t, layout, backend="torch")
    assert type(got) is type(t) and got.shape == (layout.rows, 384)
    for name in ("data", "scales"):
        g, r, src = _bytes(getattr(got, name)), _bytes(getattr(ref, name)), _bytes(getattr(t, name))
        assert torch.equal(g, r), name
        real = layout.row_map >= 0
        assert torch.equal(g[real], src[layout.row_map[real].long()]), name
        assert (g[~real] == 0).all(), name


def test_gather_keeps_the_container_fields_and_odd_widths(seed):
    t = quantize_mxfp4(torch.randn(9, 96), scale_mode="floor")  # 48 data bytes, 3 scale bytes a row
    layout = align_groups(offsets_of([4, 5]), 9)
    got = gather_aligned_rows(t, layout, backend="triton")
    assert got.scale_mode == "floor"
    assert torch.equal(got.data, gather_aligned_rows(t, layout, backend="torch").data)
    assert torch.equal(got.data[128:133], t.data[4:9]) and torch.equal(got.scales[:4], t.scales[:4])


def test_bad_arguments_are_clear_errors():
    t = quantize_fp8(torch.randn(8, 128))
    with pytest.raises(TypeError, match="int32"):
        align_groups(offsets_of([4, 4]).long(), 8)
    with pytest.raises(ValueError, match="rows must be"):
        align_groups(offsets_of([4, 4]), -1)
    layout = align_groups(offsets_of([4, 4]), 8)
    with pytest.raises(ValueError, match="packed rows"):
        gather_aligned_rows(quantize_fp8(torch.randn(4, 128)), layout)
    with pytest.raises(TypeError, match="row-wise container"):
        gather_aligned_rows(t.data, layout)
    with pytest.raises(TypeError, match="GroupAlignedLayout"):
        gather_aligned_rows(t, offsets_of([4, 4]))
    assert dataclasses.is_dataclass(layout) and isinstance(layout, GroupAlignedLayout)


@pytest.mark.gpu
def test_gpu_layout_and_gather_do_not_sync_and_match_torch(seed):
    g, m, k = 64, 98304, 2048
    sizes = torch.distributions.Multinomial(m, torch.full((g,), 1.0 / g)).sample().long().tolist()
    offsets = offsets_of(sizes, "cuda")
    t = quantize_fp8(torch.randn(m, k, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layout = align_groups(offsets, m)
        got = gather_aligned_rows(t, layout)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = gather_aligned_rows(t, layout, backend="torch")
    assert torch.equal(_bytes(got.data), _bytes(ref.data)) and torch.equal(got.scales, ref.scales)
    assert layout.padded_offsets.tolist() == _expected(sizes)[0]
