"""Public direct conversions between quantized formats, never through a BF16 tensor in memory.

Each function equals its two-step reference (`reference_conversions.py`; `docs/FORMATS.md`, "Direct
conversions" and "Row-wise to column-wise conversion") bit for bit, codes and scale bytes, and on CUDA
runs as one Triton kernel (`kernels/<name>.py`) that reads the input once and writes the output once.
`backend="auto"` runs Triton on CUDA tensors and the torch reference elsewhere; `"triton"` / `"torch"`
force one (Triton on CPU tensors only under TRITON_INTERPRET=1); `config=` picks the Triton kernel and its
launch parameters (`kernels.launch.LaunchConfig`; default: the tuned `kernels.launch.CONFIGS`; ignored by
the torch backend). None of these functions synchronizes the host. Inputs may be strided row views
(contiguous last dimension), read in place; `out=` containers are written in place and may be such views
too (e.g. the two halves of a packed wire row `uint8 [N, K/2 + K/32]`). When each conversion loses
nothing: `docs/FORMATS.md`, "Direct conversions", "Lossless windows".
"""

from __future__ import annotations

import torch

from . import reference_conversions as ref
from .checks import check_container, check_out_tensor, pick_backend
from .formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor, check_scale_mode
from .kernels.launch import LaunchConfig

__all__ = ["fp8_to_mxfp4", "mxfp4_to_fp8", "fp8_rowwise_to_colwise", "mxfp4_rowwise_to_colwise",
           "mxfp4_rowwise_to_fp8_colwise"]


def fp8_to_mxfp4(t: FP8Tensor, *, scale_mode: str = "rceil", backend: str = "auto",
                 out: MXFP4Tensor | None = None, config: LaunchConfig | None = None) -> MXFP4Tensor:
    """FP8 (E4M3, 1x128 tiles) `[..., K]` -> MXFP4 `[..., K]`, equal to
    `quantize_mxfp4(dequantize_fp8(t, fp32), scale_mode)` bit for bit.

    Per 32-block the scale is pure exponent arithmetic, `e = floor(log2 max|q|) + k - 2` (+1 with
    "rceil" when the significand of max|q| is above 1.5); the element codes depend on `q` alone unless
    `e` is clamped at -127. NaN tiles, E4M3 NaN elements and values of 2^128 or more (Inf in fp32)
    make their block NaN (scale byte 255, codes 0).

    Returns `MXFP4Tensor` with `data` uint8 `[..., K/2]`, `scales` uint8 `[..., K/32]`; with `out=`
    (uint8 views of exactly those shapes, e.g. `MXFP4Tensor(buf[:, :K//2], buf[:, K//2:])`), the
    results are written into them and a container over them is returned. Lossless window: module doc.
    """
    fn = "fp8_to_mxfp4"
    check_container(t, FP8Tensor, fn)
    check_scale_mode(scale_mode)
    be = pick_backend(backend, t.device, fn)
    if out is not None:
        lead, k = tuple(t.shape[:-1]), t.shape[-1]
        check_container(out, MXFP4Tensor, fn, "out")
        check_out_tensor(out.data, lead + (k // 2,), torch.uint8, t.device, fn, "out.data")
        check_out_tensor(out.scales, lead + (k // MXFP4_BLOCK,), torch.uint8, t.device, fn, "out.scales")
    if be == "torch":
        r = ref.fp8_to_mxfp4(t, scale_mode)
        if out is None:
            return r
        out.data.copy_(r.data)
        out.scales.copy_(r.scales)
        return MXFP4Tensor(out.data, out.scales, scale_mode)
    from .kernels.fp8_to_mxfp4 import fp8_to_mxfp4_triton
    return fp8_to_mxfp4_triton(t, scale_mode, out=out, config=config)


def mxfp4_to_fp8(t: MXFP4Tensor, *, backend: str = "auto", out: FP8Tensor | None = None,
                 config: LaunchConfig | None = None) -> FP8Tensor:
    """MXFP4 `[..., K]` (K a multiple of 128) -> FP8 (E4M3, 1x128 tiles), equal to
    `quantize_fp8(dequantize_mxfp4(t, fp32))` bit for bit.

    The tile scale is `k = F - 8` with `F` the exponent of the tile's largest value (an E2M1
    significand is 1 or 1.5, below 448's 1.75), clamped at -127. Lossless while every block scale in a
    tile is within 2^14 of the tile's largest and scale bytes stay <= 252 (module doc); beyond that,
    small blocks round like any E4M3 value (RNE, subnormals kept). NaN blocks make their tile NaN
    (scale byte 255, data bytes 0).

    Returns `FP8Tensor` with `data` float8_e4m3fn `[..., K]`, `scales` uint8 `[..., K/128]`; with `out=`
    (views of exactly those shapes and dtypes) the results are written into them.
    """
    fn = "mxfp4_to_fp8"
    check_container(t, MXFP4Tensor, fn)
    k = t.shape[-1]
    if k % FP8_TILE != 0:
        raise ValueError(f"{fn}: the last dimension K of t must be a multiple of {FP8_TILE} (one FP8 tile), "
                         f"got shape {tuple(t.shape)}")
    be = pick_backend(backend, t.device, fn)
    if out is not None:
        lead = tuple(t.shape[:-1])
        check_container(out, FP8Tensor, fn, "out")
        check_out_tensor(out.data, lead + (k,), E4M3_DTYPE, t.device, fn, "out.data")
        check_out_tensor(out.scales, lead + (k // FP8_TILE,), torch.uint8, t.device, fn, "out.scales")
    if be == "torch":
        r = ref.mxfp4_to_fp8(t)
        if out is None:
            return r
        out.data.copy_(r.data)
        out.scales.copy_(r.scales)
        return FP8Tensor(out.data, out.scales)
    from .kernels.mxfp4_to_fp8 import mxfp4_to_fp8_triton
    return mxfp4_to_fp8_triton(t, out=out, config=config)


def fp8_rowwise_to_colwise(t: FP8Tensor, *, row_map: torch.Tensor | None = None, backend: str = "auto",
                           config: LaunchConfig | None = None) -> FP8Tensor:
    """Scaling-aware transpose: FP8 row-wise tiles of `[M, K]` (M a multiple of 128) -> FP8 tiles of the
    transposed `[K, M]` matrix: `data` float8_e4m3fn `[K, M]`, `scales` uint8 `[K, M/128]`.

    For each 128-row block and column the target exponent is `kt = max` of the 128 row exponents; each
    value becomes `RNE_E4M3(value * 2^-kt)`, written transposed (this is NOT
    `quantize_fp8(dequantize_fp8(t).T)`, whose scale follows the largest value). Nothing saturates;
    E4M3 subnormals are rounded to nearest-even, never flushed; NaN (a scale byte 255 tile or an E4M3
    NaN element) makes its column-wise tile NaN (scale 255, data bytes 0), never a number. Exact
    unless a shifted value drops below the E4M3 normal range (module doc).

    `row_map`: int32 `[M']` (M' a multiple of 128) on t's device: transpose
    `gather_rows(t, row_map)` instead (row r = row `row_map[r]` of t, zero where negative or >= M; t
    may then have any row count), in the same single pass, e.g. `GroupAlignedLayout.row_map`.
    """
    fn = "fp8_rowwise_to_colwise"
    check_container(t, FP8Tensor, fn)
    if row_map is None:
        _check_transpose_rows(t.shape, FP8_TILE, fn)
    else:
        _check_row_map(row_map, t, FP8_TILE, fn)
    if pick_backend(backend, t.device, fn) == "torch":
        return ref.fp8_rowwise_to_colwise(t if row_map is None else ref.gather_rows(t, row_map))
    from .kernels.fp8_rowwise_to_colwise import fp8_rowwise_to_colwise_triton
    return fp8_rowwise_to_colwise_triton(t, row_map=row_map, config=config)


def mxfp4_rowwise_to_colwise(t: MXFP4Tensor, *, backend: str = "auto",
                             config: LaunchConfig | None = None) -> MXFP4Tensor:
    """MXFP4 row-wise `[M, K]` (M a multiple of 32) -> MXFP4 blocks of the transposed `[K, M]`
    matrix: `data` uint8 `[K, M/2]`, `scales` uint8 `[K, M/32]`, equal to
    `quantize_mxfp4(dequantize_mxfp4(t, fp32).T, t.scale_mode)` bit for bit (32x32 tiles).

    A decoded maximum has significand 1 or 1.5, so "floor" and "rceil" give the same bits here:
    `e = floor(log2 amax) - 2`, clamped at -127. Lossless when each 32x32 tile's row scales are
    equal (module doc); NaN blocks make every column block they touch NaN.
    """
    fn = "mxfp4_rowwise_to_colwise"
    check_container(t, MXFP4Tensor, fn)
    _check_transpose_rows(t.shape, MXFP4_BLOCK, fn)
    if pick_backend(backend, t.device, fn) == "torch":
        return ref.mxfp4_rowwise_to_colwise(t)
    from .kernels.mxfp4_rowwise_to_colwise import mxfp4_rowwise_to_colwise_triton
    return mxfp4_rowwise_to_colwise_triton(t, config=config)


def mxfp4_rowwise_to_fp8_colwise(t: MXFP4Tensor, *, backend: str = "auto",
                                 config: LaunchConfig | None = None) -> FP8Tensor:
    """MXFP4 row-wise `[M, K]` (M a multiple of 128) -> FP8 tiles of the transposed `[K, M]` matrix:
    `data` float8_e4m3fn `[K, M]`, `scales` uint8 `[K, M/128]`, equal to
    `quantize_fp8(dequantize_mxfp4(t, fp32).T)` bit for bit.

    Lossless while, for each column, the block scales of the 128 rows of a tile are within 2^14 of
    their largest and scale bytes stay <= 252 (module doc); NaN blocks make their tiles NaN.
    """
    fn = "mxfp4_rowwise_to_fp8_colwise"
    check_container(t, MXFP4Tensor, fn)
    _check_transpose_rows(t.shape, FP8_TILE, fn)
    if pick_backend(backend, t.device, fn) == "torch":
        return ref.mxfp4_rowwise_to_fp8_colwise(t)
    from .kernels.mxfp4_rowwise_to_fp8_colwise import mxfp4_rowwise_to_fp8_colwise_triton
    return mxfp4_rowwise_to_fp8_colwise_triton(t, config=config)


def _check_row_map(row_map: object, t, tile: int, fn: str) -> None:
    if len(t.shape) != 2:
        raise ValueError(f"{fn}: t must be 2-D [M, K] (the rows to gather and transpose), got shape "
                         f"{tuple(t.shape)}")
    if not isinstance(row_map, torch.Tensor) or row_map.dtype != torch.int32 or row_map.dim() != 1:
        got = f"{row_map.dtype} {tuple(row_map.shape)}" if isinstance(row_map, torch.Tensor) else type(row_map).__name__
        raise TypeError(f"{fn}: row_map must be a 1-D torch.int32 tensor (source row of each output row), got {got}")
    if row_map.numel() % tile:
        raise ValueError(f"{fn}: row_map must have a multiple of {tile} entries (one column-wise block spans "
                         f"{tile} rows), got {row_map.numel()}")
    if row_map.device != t.device:
        raise ValueError(f"{fn}: row_map is on {row_map.device} but t on {t.device}")


def _check_transpose_rows(shape: torch.Size, tile: int, fn: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"{fn}: t must be 2-D [M, K] (the matrix to transpose), got shape {tuple(shape)}")
    if shape[0] % tile != 0:
        raise ValueError(f"{fn}: the number of rows M must be a multiple of {tile} (one column-wise "
                         f"block spans {tile} rows; pad the input), got shape {tuple(shape)}")
