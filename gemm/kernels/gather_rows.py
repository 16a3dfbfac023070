"""Triton row gather into a group-aligned buffer (`aligned_groups.gather_aligned_rows`).

One program copies `BLOCK_R` destination rows x `BLOCK_C` words (about 16 KiB): destination row r takes source row
`row_map[r]`, or zeros where `row_map[r] < 0` (the padding rows). One pass: each source byte is read
once, each destination byte written once, no separate zero fill. The rows are moved as the widest
integer words their width and alignment allow (8, 4, 2 or 1 bytes), whatever the container's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 16
BLOCK_BYTES = 1024  # bytes of a row per program


@triton.jit
def _gather_rows_kernel(src_ptr, dst_ptr, map_ptr, R, W, stride_src, stride_dst,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = r < R
    cmask = c < W
    s = tl.load(map_ptr + r, mask=rmask, other=-1)
    v = tl.load(src_ptr + s.to(tl.int64)[:, None] * stride_src + c[None, :],
                mask=(s >= 0)[:, None] & cmask[None, :], other=0)
    tl.store(dst_ptr + r.to(tl.int64)[:, None] * stride_dst + c[None, :], v,
             mask=rmask[:, None] & cmask[None, :])


_WORDS = ((8, torch.int64), (4, torch.int32), (2, torch.int16), (1, torch.uint8))


def _as_words(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both row tensors viewed as the widest integer words dividing every row's width, row stride
    and start address (bytes always do)."""
    e = src.element_size()
    for size, dtype in _WORDS:
        if all((t.shape[1] * e) % size == 0 and (t.stride(0) * e) % size == 0 and t.data_ptr() % size == 0
               for t in (src, dst)):
            return src.view(torch.uint8).view(dtype), dst.view(torch.uint8).view(dtype)
    raise AssertionError("unreachable: single bytes always divide")


def launch_gather_rows(src: torch.Tensor, dst: torch.Tensor, row_map: torch.Tensor) -> None:
    """`dst[r] = src[row_map[r]]` (zeros where `row_map[r] < 0`) on 2-D tensors of one dtype whose rows
    are contiguous; `row_map` int32 `[dst rows]` on their device, entries < `src` rows."""
    rows = dst.shape[0]
    if rows == 0 or dst.shape[1] == 0:
        return
    s, d = _as_words(src, dst)
    block_c = min(BLOCK_BYTES // s.element_size(), triton.next_power_of_2(d.shape[1]))
    # narrow rows (e.g. 11 scale bytes) take more rows a program, so that each still moves ~16 KiB
    block_r = min(256, max(BLOCK_R, BLOCK_R * BLOCK_BYTES // (block_c * s.element_size())))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(d.shape[1], block_c))
    _gather_rows_kernel[grid](s, d, row_map, rows, d.shape[1], s.stride(0), d.stride(0),
                              BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
