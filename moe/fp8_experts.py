"""The FP8 expert MLP (docs/RECIPE.md, forward steps 4-6 and "Backward"): SwiGLU experts whose six
GEMMs (forward, data gradient, weight gradient of both projections) run in block-scaled FP8.

    x --Q--> xq [M, H] --GEMM 1 (W_1 = [W_gate | W_up], 128x128)--> h [M, 2F] bf16
      --SwiGLU + Q--> zq [M, F] --GEMM 2 (W_down)--> y [M, H]
    backward: dyq = Q(dy); dz = dyq W_down (block transpose); dW_down = colwise(dyq)^T colwise(z)
              dhq = Q(SwiGLU'(h, dz)); dx = dhq W_1 (block transpose); dW_1 = colwise(dhq)^T colwise(x)
Q is the FP8 1x128 codec, skipped for x when the dispatcher already sent FP8 rows (`xq`). colwise
(`wgrad_operand`, the one place it happens) puts the rows in the group-aligned layout
(`gemm.gather_aligned_rows`: each expert's rows from a multiple of 128, zero rows between, so each
128-token column-wise scale tile holds one expert's tokens and the weight-gradient GEMM needs no token
masks), then `fp8_rowwise_to_colwise` of FP8 rows or `mxfp4_rowwise_to_fp8_colwise` of saved MXFP4
rows: scaling-aware, never a second quantization from BF16.
Saved for backward (`saved`): "fp8": x, z FP8 (1 B/elem + 1 byte per 128), h bf16 (2 B/elem);
"mxfp4": x, z as `fp8_to_mxfp4` of their FP8 rows and h as MXFP4 (0.53 B/elem each), so no bf16
activation outlives the forward pass (h is decoded to bf16 only inside backward). `recompute_h`: keep
no h; backward recomputes it by GEMM 1 from the kept x (MXFP4 rows through `mxfp4_to_fp8`): one more
GEMM, 2F elements less kept per row; equal to the forward's h when x's values are MXFP4 values (an
MXFP4 dispatch wire), else computed from the MXFP4-rounded x. `FP8ExpertWeights` keeps
the quantized weights and their block transposes between steps (about 1 B per weight element each).
"""

from __future__ import annotations

import functools

import torch

from ..gemm import (GemmConfig, GroupAlignedLayout, align_groups, empty_fp8_blocks, gather_aligned_rows,
                    grouped_gemm_fp8, grouped_gemm_fp8_wgrad, quantize_fp8_blocks_and_transpose,
                    swiglu_backward_quantize_fp8, swiglu_quantize_fp8)
from ..quant import (FP8Tensor, MXFP4Tensor, dequantize_mxfp4, fp8_rowwise_to_colwise, fp8_to_mxfp4,
                     mxfp4_rowwise_to_fp8_colwise, mxfp4_to_fp8, quantize_fp8, quantize_mxfp4)
from ..quant.formats import FP8_TILE

SAVED_FORMATS = ("fp8", "mxfp4")


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
        e, f, h = w_gate.shape
        if self.w1 is None or self.w1.shape != (e, 2 * f, h) or self.w1.device != w_gate.device \
                or self.w2.shape != tuple(w_down.shape):
            self.w1, self.w1_t = empty_fp8_blocks((e,), 2 * f, h, w_gate.device)
            self.w2, self.w2_t = empty_fp8_blocks((e,), *w_down.shape[1:], w_down.device)
        # gate and up go straight into the row halves of w1 and the column halves of w1_t (no
        # concatenated copy of the master weights, no second buffer)
        for w, part in ((w_gate, slice(0, f)), (w_up, slice(f, 2 * f))):
            out = (FP8Tensor(self.w1.data[:, part], self.w1.scales[:, part]),
                   FP8Tensor(self.w1_t.data[:, :, part],
                             self.w1_t.scales[:, :, part.start // FP8_TILE:part.stop // FP8_TILE]))
            quantize_fp8_blocks_and_transpose(w, out=out)
        quantize_fp8_blocks_and_transpose(w_down, out=(self.w2, self.w2_t))


def _keep_rows(q: FP8Tensor, saved: str, scale_mode: str, backend: str) -> FP8Tensor | MXFP4Tensor:
    """What backward keeps of the FP8 rows `q`: those rows or, with `saved="mxfp4"`, their MXFP4 form by
    `fp8_to_mxfp4`. Row-wise, any row count: `wgrad_operand` reads them through the group-aligned row map."""
    return q if saved == "fp8" else fp8_to_mxfp4(q, scale_mode=scale_mode, backend=backend)


def wgrad_operand(rows: FP8Tensor | MXFP4Tensor, layout: GroupAlignedLayout, backend: str) -> FP8Tensor:
    """The column-wise FP8 operand `[K, layout.rows]` of a weight-gradient GEMM from row-wise rows
    `[M', K]` (M' >= the layout's packed rows): a saved activation (FP8 or MXFP4 rows) or an FP8
    gradient, gathered group-aligned, then transposed scaling-aware (FP8 rows: both in one pass,
    through the layout's row map). The one place the recipe turns rows into columns (docs/RECIPE.md
    "Backward")."""
    if isinstance(rows, FP8Tensor):
        return fp8_rowwise_to_colwise(rows, row_map=layout.row_map, backend=backend)
    return mxfp4_rowwise_to_fp8_colwise(gather_aligned_rows(rows, layout, backend=backend), backend=backend)


def _flatten(*ts) -> tuple[list[torch.Tensor], list]:
    """Containers -> (tensors for save_for_backward, how to rebuild them)."""
    tensors, kinds = [], []
    for t in ts:
        if isinstance(t, (FP8Tensor, MXFP4Tensor)):
            tensors += [t.data, t.scales]
            kinds.append((type(t), getattr(t, "scale_mode", None)))
        else:
            tensors.append(t)
            kinds.append(None)
    return tensors, kinds


def _unflatten(tensors, kinds) -> list:
    out, it = [], iter(tensors)
    for kind in kinds:
        if kind is None:
            out.append(next(it))
        elif kind[0] is MXFP4Tensor:
            out.append(MXFP4Tensor(next(it), next(it), kind[1]))
        else:
            out.append(FP8Tensor(next(it), next(it)))
    return out


class FP8ExpertMLP(torch.autograd.Function):
    """`y = SwiGLU experts(x)` in FP8 on rows grouped by `offsets` (int32 cumulative ends); gradients
    for x and the three master weights (returned in their dtypes). `configs`: the launch
    configurations of the row-grouped and the weight-gradient GEMMs (None: the defaults).
    `xq`: the rows already in FP8 (`ExpertParallelDispatcher.dispatch_fp8`); x is then only the
    autograd link (its dtype is dx's) and the rows enter GEMM 1 as they are. `saved`: "fp8" or
    "mxfp4" (module docstring); `scale_mode`: the MXFP4 scale rule of the saved rows; `recompute_h`:
    keep no h, recompute it in backward (module docstring)."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, offsets, weights: FP8ExpertWeights, backend: str,
                configs: tuple[GemmConfig | None, GemmConfig | None] = (None, None),
                xq: FP8Tensor | None = None, saved: str = "fp8", scale_mode: str = "rceil",
                recompute_h: bool = False):
        m, f = x.shape[0], w_gate.shape[1]
        gemm = functools.partial(grouped_gemm_fp8, backend=backend, config=configs[0], b_block_scales=True)
        if xq is None:
            xq = quantize_fp8(x, backend=backend)                                            # (M, H)
        h = gemm(xq, weights.w1, offsets, out_dtype=torch.bfloat16)                          # (M, 2F)
        zq = swiglu_quantize_fp8(h, backend=backend)                                         # (M, F)
        y = gemm(zq, weights.w2, offsets, out_dtype=x.dtype)                                 # (M, H)
        keep = functools.partial(_keep_rows, saved=saved, scale_mode=scale_mode, backend=backend)
        if recompute_h:
            h_kept = None
        else:
            h_kept = quantize_mxfp4(h, scale_mode=scale_mode, backend=backend) if saved == "mxfp4" else h
        tensors, ctx.kinds = _flatten(keep(xq), h_kept, keep(zq))
        ctx.save_for_backward(*tensors, offsets)
        ctx.weights, ctx.backend, ctx.x_dtype, ctx.configs, ctx.m = weights, backend, x.dtype, configs, m
        ctx.w_dtypes = (w_gate.dtype, w_up.dtype, w_down.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        *tensors, offsets = ctx.saved_tensors
        x_kept, h, z_kept = _unflatten(tensors, ctx.kinds)
        weights, be, m = ctx.weights, ctx.backend, ctx.m
        gemm = functools.partial(grouped_gemm_fp8, backend=be, config=ctx.configs[0], b_block_scales=True)
        if h is None:  # recompute_h: GEMM 1 again, from the kept x
            x_rows = mxfp4_to_fp8(x_kept, backend=be) if isinstance(x_kept, MXFP4Tensor) else x_kept
            h = gemm(x_rows, weights.w1, offsets, out_dtype=torch.bfloat16)                  # (M, 2F)
        elif isinstance(h, MXFP4Tensor):
            h = dequantize_mxfp4(h, torch.bfloat16, backend=be)                              # (M, 2F)
        gd, ud, dd = ctx.w_dtypes
        # The weight gradients leave the kernel in the weights' dtype when that is bf16 (one rounding of
        # the fp32 accumulator, as a cast would do), else in fp32.
        w_out = torch.bfloat16 if gd == ud == dd == torch.bfloat16 else torch.float32
        wgrad = functools.partial(grouped_gemm_fp8_wgrad, backend=be, config=ctx.configs[1], out_dtype=w_out)
        f = h.shape[1] // 2
        layout = align_groups(offsets, m)
        colwise = functools.partial(wgrad_operand, layout=layout, backend=be)                   # (W, Ta)
        dyq = quantize_fp8(dy.contiguous(), backend=be)                                       # (M, H)
        dz = gemm(dyq, weights.w2_t, offsets, out_dtype=torch.bfloat16)                      # (M, F)
        dw_down = wgrad(colwise(dyq), colwise(z_kept), layout)                                # (E, H, F)
        dhq = swiglu_backward_quantize_fp8(h, dz, backend=be)                                 # (M, 2F)
        dx = gemm(dhq, weights.w1_t, offsets, out_dtype=ctx.x_dtype)                         # (M, H)
        dh_t, x_t = colwise(dhq), colwise(x_kept)                                             # (2F, Ta), (H, Ta)
        # dW_gate and dW_up as two GEMMs on the row halves of dh^T: each gradient contiguous, as
        # autograd wants it (halves of one [E, 2F, H] result would each be copied)
        dw_gate = wgrad(FP8Tensor(dh_t.data[:f], dh_t.scales[:f]), x_t, layout)               # (E, F, H)
        dw_up = wgrad(FP8Tensor(dh_t.data[f:], dh_t.scales[f:]), x_t, layout)                 # (E, F, H)
        return (dx, dw_gate.to(gd), dw_up.to(ud), dw_down.to(dd), None, None, None, None,
                None, None, None, None)
