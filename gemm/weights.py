"""FP8 weights in 128x128 blocks (docs/RECIPE.md "Formats"): quantization and the exact block transpose.

A weight `[..., N, K]` gets one power-of-two scale per 128x128 block, `k = ceil(log2(amax / 448))` of
the block (the FP8 tile rule of docs/FORMATS.md applied to a block), elements `RNE_E4M3(w * 2^-k)`.
It is held as an `FP8Tensor` whose 1x128 row tiles repeat their block's scale on all 128 rows
(`scales [..., N, K/128]`), so the GEMM kernels read weights and activations the same way. The block
transpose `[..., K, N]` moves each block with its scale: exact, no rounding. On CUDA one Triton kernel
(`kernels/weights.py`) writes both in one pass; the torch path below is its reference (same bits).
"""

from __future__ import annotations

import torch

from ..quant.checks import pick_backend
from ..quant.formats import E4M3_DTYPE, E4M3_MAX, E8M0_BIAS, E8M0_NAN, FP8_MAX_SCALE_EXP, FP8_TILE, FP8Tensor

_CHUNK_ELEMENTS = 1 << 28  # fp32 temporaries of one chunk: 1 GiB each


def _check_blocks(shape: torch.Size, fn: str, name: str) -> None:
    if len(shape) < 2 or shape[-1] % FP8_TILE or shape[-2] % FP8_TILE or 0 in shape[-2:]:
        raise ValueError(f"{fn}: {name} must be [..., N, K] with N and K positive multiples of {FP8_TILE} "
                         f"(128x128 blocks), got shape {tuple(shape)}")


def quantize_fp8_blocks(w: torch.Tensor, *, backend: str = "auto") -> FP8Tensor:
    """Quantize `w` (fp32/bf16 `[..., N, K]`, N and K multiples of 128) to FP8 E4M3 in 128x128 blocks.

    Returns an `FP8Tensor`: `data` float8_e4m3fn `[..., N, K]`, `scales` uint8 `[..., N, K/128]`
    (each block's byte `k + 127` on its 128 rows; 255 for a block holding NaN/Inf, whose data is 0).
    `backend`: "auto" (Triton on CUDA, torch elsewhere), "triton", "torch"; the torch path runs a chunk
    of matrices at a time so that its fp32 temporaries stay under about 1 GiB. No host sync.
    """
    return quantize_fp8_blocks_and_transpose(w, backend=backend, transpose=False)[0]


def quantize_fp8_blocks_and_transpose(w: torch.Tensor, *, backend: str = "auto", transpose: bool = True,
                                      out: tuple[FP8Tensor, FP8Tensor | None] | None = None,
                                      ) -> tuple[FP8Tensor, FP8Tensor | None]:
    """`(quantize_fp8_blocks(w), transpose_fp8_blocks(of it))` in one pass over `w` on the Triton path
    (the second is None with `transpose=False`).

    `out`: `(blocks, blocks_t)` to write into instead of new tensors (`blocks_t` None with
    `transpose=False`): FP8Tensors of the result's shapes on w's device, each viewable as
    `[-1, rows, cols]` with a contiguous last dimension; slices of a larger buffer qualify (rows
    `[:, :F]` of an `[E, 2F, H]` weight, columns `[:, :, :F]` of its `[E, H, 2F]` transpose, with the
    scale columns `[:, :, :F/128]`), so halves of a fused weight are written in place. Returns `out`."""
    fn = "quantize_fp8_blocks"
    if not isinstance(w, torch.Tensor) or w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{fn}: w must be a float32/bfloat16/float16 tensor, got "
                        f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
    _check_blocks(w.shape, fn, "w")
    lead, n, k = w.shape[:-2], w.shape[-2], w.shape[-1]
    if out is not None:
        _check_out(out, w, transpose, fn)
    if pick_backend(backend, w.device, fn) == "triton":
        return _quantize_blocks_triton(w.detach(), transpose, out)
    mats = w.detach().reshape(-1, n, k)
    data = torch.empty(mats.shape, dtype=E4M3_DTYPE, device=w.device)
    scales = torch.empty(mats.shape[0], n, k // FP8_TILE, dtype=torch.uint8, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // (n * k))
    for i in range(0, mats.shape[0], step):
        data[i:i + step], scales[i:i + step] = _quantize_blocks(mats[i:i + step])
    t = FP8Tensor(data.reshape(*lead, n, k), scales.reshape(*lead, n, k // FP8_TILE))
    tt = transpose_fp8_blocks(t) if transpose else None
    if out is None:
        return t, tt
    for dst, src in zip(out, (t, tt)):
        if dst is not None:
            dst.data.copy_(src.data)
            dst.scales.copy_(src.scales)
    return out


def _check_out(out, w: torch.Tensor, transpose: bool, fn: str) -> None:
    n, k = w.shape[-2], w.shape[-1]
    want = [(w.shape, (*w.shape[:-1], k // FP8_TILE))]
    want.append(((*w.shape[:-2], k, n), (*w.shape[:-2], k, n // FP8_TILE)) if transpose else None)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{fn}: out must be a pair (blocks, blocks_t), got {type(out).__name__}")
    for name, t, shapes in zip(("out[0]", "out[1]"), out, want):
        if shapes is None:
            if t is not None:
                raise ValueError(f"{fn}: {name} must be None with transpose=False")
            continue
        if not isinstance(t, FP8Tensor):
            raise TypeError(f"{fn}: {name} must be an FP8Tensor, got {type(t).__name__}")
        if tuple(t.data.shape) != tuple(shapes[0]) or tuple(t.scales.shape) != tuple(shapes[1]):
            raise ValueError(f"{fn}: {name} must have data {tuple(shapes[0])} and scales {tuple(shapes[1])}, "
                             f"got {tuple(t.data.shape)} and {tuple(t.scales.shape)}")
        if t.device != w.device:
            raise ValueError(f"{fn}: {name} is on {t.device}, w on {w.device}")
        for part in (t.data, t.scales):
            if part.stride(-1) != 1 or _as_matrices(part) is None:
                raise ValueError(f"{fn}: {name} must be viewable as [-1, rows, cols] with a contiguous last "
                                 f"dimension, got strides {part.stride()}")


def _as_matrices(t: torch.Tensor) -> torch.Tensor | None:
    """`t [..., rows, cols]` as a `[-1, rows, cols]` view, None when no view has that shape."""
    try:
        return t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:
        return None


def empty_fp8_blocks(lead: tuple, n: int, k: int, device,
                     transpose: bool = True) -> tuple[FP8Tensor, FP8Tensor | None]:
    """Uninitialized buffers of a `[*lead, n, k]` 128x128-block FP8 weight and (with `transpose`) of
    its block transpose `[*lead, k, n]`: what `quantize_fp8_blocks_and_transpose(out=)` writes into."""
    def empty(r: int, c: int) -> FP8Tensor:
        return FP8Tensor(torch.empty(*lead, r, c, dtype=E4M3_DTYPE, device=device),
                         torch.empty(*lead, r, c // FP8_TILE, dtype=torch.uint8, device=device))
    return empty(n, k), (empty(k, n) if transpose else None)


def _quantize_blocks_triton(w: torch.Tensor, transpose: bool,
                            out: tuple[FP8Tensor, FP8Tensor | None] | None = None,
                            ) -> tuple[FP8Tensor, FP8Tensor | None]:
    from ..quant.kernels.mxfp4 import _BITS_VIEW, _IN_KIND
    from .kernels.weights import launch_block_quantize

    lead, n, k = w.shape[:-2], w.shape[-2], w.shape[-1]
    w3 = w.reshape(-1, n, k)
    if w3.stride(-1) != 1:
        w3 = w3.contiguous()
    e = w3.shape[0]
    t, tt = empty_fp8_blocks(lead, n, k, w.device, transpose) if out is None else out
    if e:
        launch_block_quantize(w3.view(_BITS_VIEW[w.dtype]), _as_matrices(t.data.view(torch.uint8)),
                              _as_matrices(t.scales),
                              _as_matrices(tt.data.view(torch.uint8)) if transpose else None,
                              _as_matrices(tt.scales) if transpose else None, _IN_KIND[w.dtype],
                              FP8_MAX_SCALE_EXP[w.dtype])
    return (t, tt) if out is None else out


def _quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lead, n, k = w.shape[:-2], w.shape[-2], w.shape[-1]
    v = w.to(torch.float32).reshape(*lead, n // FP8_TILE, FP8_TILE, k // FP8_TILE, FP8_TILE)
    amax = v.abs().amax(dim=(-3, -1), keepdim=True)                       # [..., N/128, 1, K/128, 1]
    bad = ~torch.isfinite(amax)
    # k = ceil(log2(amax / 448)) from the fp32 bits: f - 8, plus 1 when the significand is above 1.75.
    bits = torch.where(bad, 0.0, amax).view(torch.int32)
    kk = (bits >> 23) - 135 + ((bits & 0x7FFFFF) > 0x600000).to(torch.int32)
    # zero / subnormal amax: k = -127; at most FP8_MAX_SCALE_EXP, so that 448 * 2^k stays finite in w's
    # dtype (docs/FORMATS.md, "Scales near the top of the input dtype")
    kk = torch.where(bits < 0x800000, -127, kk).clamp(-127, FP8_MAX_SCALE_EXP[w.dtype])
    inv = ((127 - kk) << 23).view(torch.float32)                          # 2^-k, a normal fp32
    y = (torch.where(bad, 0.0, v) * inv).clamp(-E4M3_MAX, E4M3_MAX)      # exact; saturates only where capped
    q = y.to(E4M3_DTYPE)                                                  # RNE
    sbyte = torch.where(bad, E8M0_NAN, kk + E8M0_BIAS).to(torch.uint8)
    scales = sbyte.expand(*lead, n // FP8_TILE, FP8_TILE, k // FP8_TILE, 1)
    return q.reshape(*lead, n, k), scales.reshape(*lead, n, k // FP8_TILE)


def block_scales(t: FP8Tensor) -> torch.Tensor:
    """The per-block scale bytes `[..., N/128, K/128]` of a 128x128 block weight."""
    return t.scales[..., ::FP8_TILE, :]


def transpose_fp8_blocks(t: FP8Tensor) -> FP8Tensor:
    """Block transpose of a 128x128 block weight `[..., N, K]` -> `[..., K, N]` (scales `[..., K, N/128]`):
    each block keeps its scale, so this is exact. `t` must come from `quantize_fp8_blocks`."""
    _check_blocks(t.shape, "transpose_fp8_blocks", "t")
    bs = block_scales(t).transpose(-2, -1)                                  # [..., K/128, N/128]
    scales = bs.repeat_interleave(FP8_TILE, dim=-2)                         # [..., K, N/128]
    return FP8Tensor(t.data.transpose(-2, -1).contiguous(), scales.contiguous())
