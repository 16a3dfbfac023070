"""The FP8 expert MLP (docs/RECIPE.md, forward steps 4-6 and "Backward"): SwiGLU experts whose six
GEMMs (forward, data gradient, weight gradient of both projections) run in block-scaled FP8.

    x --Q--> xq [M, H] --GEMM 1 (W_1 = [W_gate | W_up], 128x128)--> h [M, 2F] bf16
      --SwiGLU + Q--> zq [M, F] --GEMM 2 (W_down)--> y [M, H]
    backward: dyq = Q(dy); dz = dyq W_down (block transpose); dW_down = colwise(dyq)^T colwise(zq)
              dhq = Q(SwiGLU'(h, dz)); dx = dhq W_1 (block transpose); dW_1 = colwise(dhq)^T colwise(xq)
Q is the FP8 1x128 codec; colwise is `quant.fp8_rowwise_to_colwise` (scaling-aware, never a second
quantization from BF16) of the rows put in the group-aligned layout (`gemm.gather_aligned_rows`:
each expert's rows from a multiple of 128, zero rows between), so each 128-token column-wise scale
tile holds one expert's tokens and the weight-gradient GEMM runs without token masks.
Saved for backward (RECIPE.md "What must hold"): xq [M, H] and zq [M, F] FP8 (1 B/elem + 1 scale byte
per 128), h [M, 2F] bf16 (2 B/elem; kept, not recomputed from x: the alternative is not measured yet).
Until the MXFP4 activations land, x is saved in FP8 (RECIPE.md allows it). `FP8ExpertWeights` keeps
the quantized weights and their block transposes between steps (4 FP8 copies' worth: W_1, W_down, and
their transposes, about 1 B per weight element each).
"""

from __future__ import annotations

import functools

import torch

from ..gemm import (GemmConfig, GroupAlignedLayout, align_groups, gather_aligned_rows, grouped_gemm_fp8,
                    grouped_gemm_fp8_wgrad, quantize_fp8_blocks_and_transpose, swiglu_backward_quantize_fp8,
                    swiglu_quantize_fp8)
from ..quant import FP8Tensor, fp8_rowwise_to_colwise, quantize_fp8
from ..quant.formats import E4M3_DTYPE, FP8_TILE


class FP8ExpertWeights:
    """128x128-block FP8 copies of `w_1 = [w_gate | w_up]` `[E, 2F, H]` and `w_down` `[E, H, F]`, with
    their block transposes, rebuilt only when a master weight changed: the cache key is each weight's
    `data_ptr()` and autograd version counter (`param._version`, bumped by every in-place update such as
    an optimizer step). Writes through `param.data` do not bump it: call `refresh` after those. A
    refresh writes into the same buffers, so a captured CUDA graph sees the new weights."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self.w1 = self.w1_t = self.w2 = self.w2_t = None
        self.refreshes = 0  # how many times the weights were quantized (tests, logs)

    def get(self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> "FP8ExpertWeights":
        key = tuple((w.data_ptr(), w._version, tuple(w.shape), w.device) for w in (w_gate, w_up, w_down))
        if key != self._key:
            self.refresh(w_gate, w_up, w_down)
            self._key = key
        return self

    @torch.no_grad()
    def refresh(self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> None:
        self.refreshes += 1
        w1, w1_t = quantize_fp8_blocks_and_transpose(torch.cat([w_gate, w_up], dim=1))
        w2, w2_t = quantize_fp8_blocks_and_transpose(w_down)
        fresh = {"w1": w1, "w1_t": w1_t, "w2": w2, "w2_t": w2_t}
        for name, t in fresh.items():
            old = getattr(self, name)
            if old is not None and old.data.shape == t.data.shape and old.device == t.device:
                old.data.copy_(t.data)
                old.scales.copy_(t.scales)
            else:
                setattr(self, name, t)


def _padded_fp8(m: int, width: int, device: torch.device) -> FP8Tensor:
    """An FP8 buffer of `ceil(m / 128) * 128` rows whose rows past m are zero (data and scale bytes)."""
    rows = -(-m // FP8_TILE) * FP8_TILE
    data = torch.empty(rows, width, dtype=E4M3_DTYPE, device=device)
    scales = torch.empty(rows, width // FP8_TILE, dtype=torch.uint8, device=device)
    data.view(torch.uint8)[m:].zero_()
    scales[m:].zero_()
    return FP8Tensor(data, scales)


def _rows(t: FP8Tensor, m: int) -> FP8Tensor:
    return FP8Tensor(t.data[:m], t.scales[:m])


def _quantize_padded(x: torch.Tensor, backend: str) -> FP8Tensor:
    q = _padded_fp8(x.shape[0], x.shape[1], x.device)
    quantize_fp8(x, backend=backend, out=_rows(q, x.shape[0]))
    return q


def _wgrad_operand(rows: FP8Tensor, layout: GroupAlignedLayout, backend: str) -> FP8Tensor:
    """The column-wise weight-gradient operand `[W, layout.rows]` of saved row-wise FP8 `rows`
    (`[M', W]`, M' >= the layout's packed rows): gathered group-aligned, then transposed scaling-aware."""
    return fp8_rowwise_to_colwise(gather_aligned_rows(rows, layout, backend=backend), backend=backend)


class FP8ExpertMLP(torch.autograd.Function):
    """`y = SwiGLU experts(x)` in FP8 on rows grouped by `offsets` (int32 cumulative ends); gradients
    for x and the three master weights (returned in their dtypes). `configs`: the launch
    configurations of the row-grouped and the weight-gradient GEMMs (None: the defaults)."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, offsets, weights: FP8ExpertWeights, backend: str,
                configs: tuple[GemmConfig | None, GemmConfig | None] = (None, None)):
        m, f = x.shape[0], w_gate.shape[1]
        gemm = functools.partial(grouped_gemm_fp8, backend=backend, config=configs[0], b_block_scales=True)
        xq = _quantize_padded(x, backend)                                                    # (Mp, H)
        h = gemm(_rows(xq, m), weights.w1, offsets, out_dtype=torch.bfloat16)                # (M, 2F)
        zq = _padded_fp8(m, f, x.device)                                                      # (Mp, F)
        swiglu_quantize_fp8(h, backend=backend, out=_rows(zq, m))
        y = gemm(_rows(zq, m), weights.w2, offsets, out_dtype=x.dtype)                        # (M, H)
        ctx.save_for_backward(xq.data, xq.scales, h, zq.data, zq.scales, offsets)
        ctx.weights, ctx.backend, ctx.x_dtype, ctx.configs = weights, backend, x.dtype, configs
        ctx.w_dtypes = (w_gate.dtype, w_up.dtype, w_down.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        xd, xs, h, zd, zs, offsets = ctx.saved_tensors
        xq, zq, weights, be = FP8Tensor(xd, xs), FP8Tensor(zd, zs), ctx.weights, ctx.backend
        gd, ud, dd = ctx.w_dtypes
        # The weight gradients leave the kernel in the weights' dtype when that is bf16 (one rounding of
        # the fp32 accumulator, as a cast would do), else in fp32.
        w_out = torch.bfloat16 if gd == ud == dd == torch.bfloat16 else torch.float32
        gemm = functools.partial(grouped_gemm_fp8, backend=be, config=ctx.configs[0], b_block_scales=True)
        wgrad = functools.partial(grouped_gemm_fp8_wgrad, backend=be, config=ctx.configs[1], out_dtype=w_out)
        m, f = h.shape[0], h.shape[1] // 2
        layout = align_groups(offsets, m)
        colwise = functools.partial(_wgrad_operand, layout=layout, backend=be)                  # (W, Ta)
        dyq = _quantize_padded(dy.contiguous(), be)                                           # (Mp, H)
        dz = gemm(_rows(dyq, m), weights.w2_t, offsets, out_dtype=torch.bfloat16)            # (M, F)
        dw_down = wgrad(colwise(dyq), colwise(zq), layout)                                    # (E, H, F)
        dhq = _padded_fp8(m, 2 * f, h.device)                                                 # (Mp, 2F)
        swiglu_backward_quantize_fp8(h, dz, backend=be, out=_rows(dhq, m))
        dx = gemm(_rows(dhq, m), weights.w1_t, offsets, out_dtype=ctx.x_dtype)               # (M, H)
        dw_1 = wgrad(colwise(dhq), colwise(xq), layout)                                       # (E, 2F, H)
        return dx, dw_1[:, :f].to(gd), dw_1[:, f:].to(ud), dw_down.to(dd), None, None, None, None
