"""Public block-scaled FP8 grouped GEMMs: argument checks, backend choice, launch configuration.

- `grouped_gemm_fp8(a, b, offsets)`: `out[r] = a[r] @ b[g]^T` for the rows of group g. The forward
  GEMMs (x by W_1 = [W_gate | W_up], z by W_down) and the data-gradient GEMMs (dy by the block
  transpose of W_down, dh by that of W_1) are all this call.
- `grouped_gemm_fp8_wgrad(a_t, b_t, offsets)`: `out[g] = a_t[:, group g] @ b_t[:, group g]^T`, the
  weight gradients dW = dy^T z, reducing over the tokens of each group. The operands are column-wise
  (1x128 tiles along tokens), made by `quant.fp8_rowwise_to_colwise` from the row-wise tensors. Fast
  form: `offsets` a `GroupAlignedLayout` and the row-wise tensors first put in that layout by
  `gather_aligned_rows` (`aligned_groups.py`: each group's tokens start at a multiple of 128, so every
  scale tile is one group's). Also taken: packed `offsets` (row count padded to a multiple of 128, rows
  past `offsets[-1]` never read), where a tile may straddle two groups and share its scale (slower).
`offsets` is the int32 device tensor of cumulative group ends (`torch._grouped_mm`'s `offs`): groups
may be empty or of any size; nothing reads it on the host. `backend="auto"`: Triton on CUDA, the torch
reference (`reference.py`, one host sync) elsewhere.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from ..quant.checks import check_container, pick_backend
from ..quant.formats import FP8_TILE, FP8Tensor
from . import reference
from .aligned_groups import GroupAlignedLayout

OUT_DTYPES = (torch.bfloat16, torch.float32)


KERNELS = ("auto", "triton", "sm90")


@dataclass(frozen=True)
class GemmConfig:
    """Launch configuration of one grouped GEMM kernel: the output tile `block_rows x block_cols`
    (powers of two >= 16), warps per program, software-pipeline stages (the TMA ring's depth for
    sm90), optionally a register cap per thread (`max_registers`, so that more programs fit on an SM;
    Triton kernels only), and which kernel: "triton" (`kernels/grouped_gemm.py`, any CUDA GPU and the
    interpreter), "sm90" (`kernels/grouped_gemm_sm90.py`, Gluon, Hopper only: persistent and
    warp-specialized, a loader warp feeding a TMA ring, 64 rows per MMA warpgroup so block_rows =
    16 * num_warps, the promotion overlapping the MMAs; same bits; 128x128 block weights
    (b_block_scales) and group-aligned weight gradients only; `SM90_FORWARD_CONFIG` and
    `SM90_WGRAD_CONFIG` are its defaults; compiled and checked offline, not yet run on a GPU), "auto"
    (the kernel measured fastest: triton for now). `prefetch_scales` (Triton kernels; the packed
    weight-gradient loop ignores it): each step's scale bytes are loaded one step ahead, so that their
    latency is not on the path from one MMA to the next (same bits; not yet measured). `f32_scales`
    (weight gradients, both kernels): the scale bytes are decoded to fp32 once per call, so that the
    loop does not decode a thread's 16-32 column scales every step (same bits; not yet measured)."""

    block_rows: int = 64
    block_cols: int = 128
    num_warps: int = 4
    num_stages: int = 4
    max_registers: int | None = None
    kernel: str = "triton"
    prefetch_scales: bool = False
    f32_scales: bool = False

    def __post_init__(self) -> None:
        for name in ("block_rows", "block_cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"GemmConfig.{name} must be a power of two >= 16, got {v!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"GemmConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        for name in ("prefetch_scales", "f32_scales"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GemmConfig.{name} must be a bool, got {getattr(self, name)!r}")


# The fastest swept configurations on one H100 over the expert shapes of benchmarks/gemm_throughput.py
# (benchmarks/results/gemm_throughput_h100.*): 64-row tiles, one warpgroup, two or three programs per
# SM, so that one program's MMA overlaps another's fp32 promotion (Triton waits for each wgmma).
FORWARD_CONFIG = GemmConfig(block_rows=64, block_cols=128, num_warps=4, num_stages=4)
WGRAD_CONFIG = GemmConfig(block_rows=64, block_cols=128, num_warps=4, num_stages=3)
# The persistent warp-specialized sm90 kernels: 64 rows per MMA warpgroup (block_rows = 16 * num_warps);
# the weight gradient keeps two MMAs in flight only with block_cols <= 64 (registers).
SM90_FORWARD_CONFIG = GemmConfig(block_rows=128, block_cols=128, num_warps=8, num_stages=4, kernel="sm90")
SM90_WGRAD_CONFIG = GemmConfig(block_rows=128, block_cols=64, num_warps=8, num_stages=4, kernel="sm90")


@functools.lru_cache(maxsize=None)
def _sm90_available(device_index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(device_index)[0] != 9:
        return False
    try:
        from .kernels import grouped_gemm_sm90  # noqa: F401  (Gluon: Triton >= 3.6)
    except ImportError:
        return False
    return True


def _kernel_for(config: GemmConfig, device: torch.device, fn: str) -> str:
    """The kernel `config.kernel` resolves to on `device` (a CUDA device: the Triton path)."""
    # "auto" is the kernel measured fastest: Triton on every GPU so far (the earlier sm90 kernels were
    # slower; the warp-specialized ones have not run on a GPU yet, benchmarks/results/README.md)
    if config.kernel in ("triton", "auto") or device.type != "cuda":
        if config.kernel == "sm90":
            raise ValueError(f"{fn}: config.kernel='sm90' needs a Hopper GPU, got tensors on {device}")
        return "triton"
    if not _sm90_available(device.index if device.index is not None else torch.cuda.current_device()):
        raise ValueError(f"{fn}: config.kernel='sm90' needs a Hopper (sm90) GPU and Triton's Gluon "
                         f"(Triton >= 3.6), not under TRITON_INTERPRET; use kernel='triton' or 'auto'")
    return "sm90"


def _sm90_shape_error(config: GemmConfig, fn: str, b_block_scales: bool = True) -> str | None:
    """Why the sm90 kernels cannot take `config` (None: they can)."""
    if config.block_rows != 16 * config.num_warps or config.block_rows % 64:
        return (f"{fn}: the sm90 kernels need block_rows = 16 * num_warps, a multiple of 64 (one 64-row MMA "
                f"warpgroup each), got block_rows={config.block_rows}, num_warps={config.num_warps}")
    if not b_block_scales:
        return f"{fn}: the sm90 kernel takes b_block_scales=True weights (128x128 blocks) only"
    if config.block_cols > FP8_TILE:
        return f"{fn}: the sm90 kernels take config.block_cols <= {FP8_TILE}, got {config.block_cols}"
    return None


def _check_fp8(t: object, rank: int, fn: str, name: str, form: str) -> FP8Tensor:
    check_container(t, FP8Tensor, fn, name)
    if t.data.dim() != rank:
        raise ValueError(f"{fn}: {name} must be {form}, got shape {tuple(t.shape)}")
    if t.shape[-1] % FP8_TILE:
        raise ValueError(f"{fn}: the reduction dimension of {name} must be a multiple of {FP8_TILE}, "
                         f"got shape {tuple(t.shape)}")
    if t.data.stride(-1) != 1:  # the scales may be strided either way (the kernels take both strides)
        t = FP8Tensor(t.data.contiguous(), t.scales)
    return t


def _check_offsets(offsets: object, groups: int, device: torch.device, fn: str) -> torch.Tensor:
    if not isinstance(offsets, torch.Tensor) or offsets.dtype != torch.int32 or offsets.dim() != 1:
        raise TypeError(f"{fn}: offsets must be a 1-D torch.int32 tensor of cumulative group ends, got "
                        f"{offsets.dtype if isinstance(offsets, torch.Tensor) else type(offsets).__name__}")
    if offsets.numel() != groups:
        raise ValueError(f"{fn}: offsets must have one entry per group ({groups}), got {offsets.numel()}")
    if offsets.device != device:
        raise ValueError(f"{fn}: offsets must be on {device}, got {offsets.device}")
    return offsets.contiguous()


def _check_out_dtype(out_dtype: object, fn: str) -> None:
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{fn}: out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")


def grouped_gemm_fp8(a: FP8Tensor, b: FP8Tensor, offsets: torch.Tensor, *,
                     out_dtype: torch.dtype = torch.bfloat16, backend: str = "auto",
                     config: GemmConfig | None = None, b_block_scales: bool = False) -> torch.Tensor:
    """Grouped `a @ b[g]^T` over row groups.

    Arguments: `a` FP8 `[M, K]` (1x128 tiles along K, rows grouped), `b` FP8 `[G, N, K]` (any 1x128
    row tiles; 128x128 block weights from `quantize_fp8_blocks`), `offsets` int32 `[G]` (cumulative
    row ends, non-decreasing, at most M). K must be a multiple of 128. `b_block_scales=True` promises
    that b's scales are constant over each 128 rows (a 128x128 block weight, N a multiple of 128): the
    kernel then reads one scale per block and step (faster); the result is the same.
    Returns `[M, N]` in `out_dtype` (bf16 or fp32); rows at or past `offsets[-1]` are left unwritten
    by the Triton kernel (the reference writes 0). No host sync on the Triton path.
    """
    fn = "grouped_gemm_fp8"
    a = _check_fp8(a, 2, fn, "a", "2-D [M, K]")
    b = _check_fp8(b, 3, fn, "b", "3-D [G, N, K]")
    if a.shape[1] != b.shape[2]:
        raise ValueError(f"{fn}: a [M, K] and b [G, N, K] must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{fn}: a is on {a.device} but b on {b.device}")
    offsets = _check_offsets(offsets, b.shape[0], a.device, fn)
    _check_out_dtype(out_dtype, fn)
    config = config or FORWARD_CONFIG
    if b_block_scales and (b.shape[1] % FP8_TILE or config.block_cols > 2 * FP8_TILE):
        raise ValueError(f"{fn}: b_block_scales needs N a multiple of {FP8_TILE} and config.block_cols <= "
                         f"{2 * FP8_TILE}, got N = {b.shape[1]}, block_cols = {config.block_cols}")
    if pick_backend(backend, a.device, fn) == "torch":
        return reference.grouped_gemm_fp8(a, b, offsets, out_dtype)
    out = torch.empty(a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)
    if _kernel_for(config, a.device, fn) == "sm90":
        why = _sm90_shape_error(config, fn, b_block_scales)
        if why:
            raise ValueError(why)
        from .kernels.grouped_gemm_sm90 import launch_rows_ws
        launch_rows_ws(a, b, offsets, out, config)
    else:
        from .kernels.grouped_gemm import launch_rows
        launch_rows(a, b, offsets, out, config, b_block_scales)
    return out


def grouped_gemm_fp8_wgrad(a_t: FP8Tensor, b_t: FP8Tensor, offsets: torch.Tensor | GroupAlignedLayout, *,
                           out_dtype: torch.dtype = torch.float32, backend: str = "auto",
                           config: GemmConfig | None = None) -> torch.Tensor:
    """Per-group `a_t[:, s:e] @ b_t[:, s:e]^T`, reducing over the tokens s:e of each group.

    Arguments: `a_t` FP8 `[N, T]`, `b_t` FP8 `[K, T]`, both column-wise (1x128 tiles along the token
    axis T, a multiple of 128, e.g. from `fp8_rowwise_to_colwise`), and `offsets` either
    - a `GroupAlignedLayout` (from `align_groups`): the operands' tokens are in its group-aligned
      layout (`gather_aligned_rows` before the conversion), T == `layout.rows`; group g's tokens are
      `padded_offsets[g-1]` up to its size, its padding tokens must be zero (the gather makes them so:
      not checked, the kernel reads them as part of the group's tiles, without masks); or
    - int32 `[G]` packed cumulative token ends (at most T): a token tile straddling two groups serves
      both with its one scale (masked first and last tiles, slower).
    Returns `[G, N, K]` in `out_dtype` (fp32 default, or bf16); an empty group gives zeros.
    """
    fn = "grouped_gemm_fp8_wgrad"
    a_t = _check_fp8(a_t, 2, fn, "a_t", "2-D [N, T] (column-wise)")
    b_t = _check_fp8(b_t, 2, fn, "b_t", "2-D [K, T] (column-wise)")
    if a_t.shape[1] != b_t.shape[1]:
        raise ValueError(f"{fn}: a_t [N, T] and b_t [K, T] must share T, got {tuple(a_t.shape)} and "
                         f"{tuple(b_t.shape)}")
    if a_t.device != b_t.device:
        raise ValueError(f"{fn}: a_t is on {a_t.device} but b_t on {b_t.device}")
    aligned = isinstance(offsets, GroupAlignedLayout)
    if aligned:
        layout = offsets
        if layout.tile != FP8_TILE or layout.rows != a_t.shape[1]:
            raise ValueError(f"{fn}: a GroupAlignedLayout must have tile {FP8_TILE} and rows == T of the "
                             f"operands ({a_t.shape[1]}), got tile {layout.tile}, rows {layout.rows}")
        offsets = _check_offsets(layout.padded_offsets, layout.groups, a_t.device, fn)
    else:
        offsets = _check_offsets(offsets, offsets.numel() if isinstance(offsets, torch.Tensor) else 0,
                                 a_t.device, fn)
    _check_out_dtype(out_dtype, fn)
    if pick_backend(backend, a_t.device, fn) == "torch":
        return reference.grouped_gemm_fp8_wgrad(a_t, b_t, layout if aligned else offsets, out_dtype)
    config = config or WGRAD_CONFIG
    out = torch.empty(offsets.numel(), a_t.shape[0], b_t.shape[0], dtype=out_dtype, device=a_t.device)
    if _kernel_for(config, a_t.device, fn) == "sm90":
        if not aligned:
            raise ValueError(f"{fn}: config.kernel='sm90' takes offsets as a GroupAlignedLayout only "
                             "(align_groups); packed offsets need kernel='triton' or 'auto'")
        why = _sm90_shape_error(config, fn)
        if why:
            raise ValueError(why)
        from .kernels.grouped_gemm_sm90 import launch_wgrad_ws
        launch_wgrad_ws(a_t, b_t, offsets, out, config, overlap=config.block_cols <= 64)
        return out
    from .kernels.grouped_gemm import launch_wgrad
    launch_wgrad(a_t, b_t, offsets, out, config, aligned=aligned)
    return out
