"""Group-aligned row layout for the weight-gradient GEMM's operands (as torchtitan and DeepGEMM align
expert groups): every group starts at a multiple of 128 rows, so no 128-token scale tile of a
column-wise operand spans two groups and the GEMM needs no token masks.

    packed rows  |g0 g0 g0|g1|g2 g2 ...        offsets        = cumulative group ends
    aligned rows |g0 g0 g0 0 .. 0|g1 0 .. 0|g2 g2 .. 0|0 ..    padded_offsets = cumulative ends, each
                  <--- 128 ----->                               group rounded up to 128 rows

`align_groups(offsets, rows)` computes the layout on the device (padded offsets and the row map, no host
sync) for a static buffer of `aligned_rows_bound(rows, groups)` rows; `gather_aligned_rows(t, layout)`
copies the rows of any row-wise container with `data` and `scales` (`FP8Tensor`, `MXFP4Tensor`) into
it, the padding rows zero (data 0, scale byte 0), the bytes of every real row unchanged; FP8 rows skip
that copy: `quant.fp8_rowwise_to_colwise(t, row_map=layout.row_map)` gathers as it transposes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..quant.checks import pick_backend
from ..quant.reference_conversions import gather_rows
from ..quant.formats import FP8_TILE


@dataclass(frozen=True)
class GroupAlignedLayout:
    """Where the rows of `offsets`' groups go in a group-aligned buffer.

    `offsets` int32 `[G]`: cumulative group ends of the packed rows (`torch._grouped_mm`'s `offs`);
    `padded_offsets` int32 `[G]`: cumulative group ends in the aligned buffer, multiples of `tile`
    (group g holds aligned rows `padded_offsets[g-1]` up to its start plus its size, then zero rows);
    `row_map` int32 `[rows]`: the packed row each aligned row copies, -1 for a padding row;
    `packed_rows`: rows of the packed tensors the map reads (every entry is below it)."""

    offsets: torch.Tensor
    padded_offsets: torch.Tensor
    row_map: torch.Tensor
    packed_rows: int
    tile: int = FP8_TILE

    @property
    def rows(self) -> int:
        """Rows of the aligned buffer: the static bound `aligned_rows_bound(packed_rows, groups)`."""
        return self.row_map.numel()

    @property
    def groups(self) -> int:
        return self.offsets.numel()

    @property
    def device(self) -> torch.device:
        return self.row_map.device


def aligned_rows_bound(rows: int, groups: int, tile: int = FP8_TILE) -> int:
    """The most rows `groups` groups of `rows` packed rows in total take once each is rounded up to
    `tile`: sum ceil(s_g / tile) * tile <= tile * floor((rows + (tile - 1) * groups) / tile)."""
    return (rows + (tile - 1) * groups) // tile * tile


def align_groups(offsets: torch.Tensor, rows: int, tile: int = FP8_TILE) -> GroupAlignedLayout:
    """The group-aligned layout of `rows` packed rows grouped by `offsets` (int32 `[G]`, cumulative
    ends, non-decreasing, at most `rows`), computed on `offsets`' device without a host sync.

    Not checked (it would need the values on the host): that `offsets` is non-decreasing and at most
    `rows`. Where it is not, the map still never points outside `[0, rows)`: such rows are left out
    (padding), so the result is wrong but no memory outside the tensors is read.
    """
    fn = "align_groups"
    if not isinstance(offsets, torch.Tensor) or offsets.dtype != torch.int32 or offsets.dim() != 1:
        raise TypeError(f"{fn}: offsets must be a 1-D torch.int32 tensor of cumulative group ends, got "
                        f"{offsets.dtype if isinstance(offsets, torch.Tensor) else type(offsets).__name__}")
    if not isinstance(rows, int) or rows < 0:
        raise ValueError(f"{fn}: rows must be an int >= 0 (rows of the packed tensors), got {rows!r}")
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"{fn}: tile must be a positive int, got {tile!r}")
    g, dev = offsets.numel(), offsets.device
    bound = aligned_rows_bound(rows, g, tile)
    if g == 0:
        return GroupAlignedLayout(offsets, offsets.clone(), torch.full((bound,), -1, dtype=torch.int32, device=dev),
                                  rows, tile)
    ends = offsets.to(torch.int64)
    sizes = torch.diff(ends, prepend=ends.new_zeros(1)).clamp_(min=0)
    padded = (sizes + tile - 1) // tile * tile
    padded_ends = padded.cumsum(0)
    r = torch.arange(bound, device=dev)
    grp = torch.searchsorted(padded_ends, r, right=True).clamp_(max=g - 1)   # (bound,) group of each row
    local = r - (padded_ends - padded)[grp]
    src = ends[grp] - sizes[grp] + local
    valid = (local < sizes[grp]) & (src >= 0) & (src < rows)
    row_map = torch.where(valid, src, -1).to(torch.int32)
    return GroupAlignedLayout(offsets, padded_ends.clamp(max=bound).to(torch.int32), row_map, rows, tile)


def _check_rows_container(t: object, fn: str) -> None:
    fields = {f.name for f in dataclasses.fields(t)} if dataclasses.is_dataclass(t) else set()
    if not {"data", "scales"} <= fields:
        raise TypeError(f"{fn}: t must be a row-wise container with data and scales (FP8Tensor, MXFP4Tensor), "
                        f"got {type(t).__name__}")
    if t.data.dim() != 2 or t.scales.dim() != 2:
        raise ValueError(f"{fn}: t must be 2-D [M, K] rows, got data {tuple(t.data.shape)}")


def gather_aligned_rows(t, layout: GroupAlignedLayout, *, backend: str = "auto"):
    """The rows of the row-wise container `t` (`[M, K]`, M >= `layout.packed_rows`; rows past it are
    not read) in the group-aligned layout: a container of the same type `[layout.rows, K]`, padding
    rows zero (data bytes 0, scale bytes 0 = 2^-127 times zero), real rows bit for bit `t`'s. One
    pass on CUDA (Triton), no host sync; `backend="torch"` indexes in torch."""
    fn = "gather_aligned_rows"
    _check_rows_container(t, fn)
    if not isinstance(layout, GroupAlignedLayout):
        raise TypeError(f"{fn}: layout must be a GroupAlignedLayout (from align_groups), got {type(layout).__name__}")
    if t.data.shape[0] < layout.packed_rows:
        raise ValueError(f"{fn}: t has {t.data.shape[0]} rows but layout maps {layout.packed_rows} packed rows")
    if t.device != layout.device:
        raise ValueError(f"{fn}: t is on {t.device} but layout on {layout.device}")
    if pick_backend(backend, t.device, fn) == "torch":
        return gather_rows(t, layout.row_map)
    from .kernels.gather_rows import launch_gather_rows
    out = {}
    for name in ("data", "scales"):
        src = getattr(t, name)
        src = src if src.stride(-1) == 1 else src.contiguous()
        out[name] = torch.empty(layout.rows, src.shape[1], dtype=src.dtype, device=src.device)
        launch_gather_rows(src, out[name], layout.row_map)
    return dataclasses.replace(t, **out)
