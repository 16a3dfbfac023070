"""SwiGLU experts: routed experts held as stacked weights, and the shared experts.

Routed experts compute `down(silu(x W_gate) * (x W_up))` on rows already grouped by expert (the
dispatcher's output): `GroupedExperts` owns the `E_local` experts of this rank as three stacked
weights and runs one grouped GEMM per projection on CUDA (`torch._grouped_mm`, bf16) or a loop over
experts elsewhere; with `precision="fp8"` the routed experts run the block-scaled FP8 recipe of
`fp8_experts.py` (docs/RECIPE.md) instead, forward and backward. Shared experts (DeepSeekMoE) see every token: a plain SwiGLU MLP of width
`n_shared * d_expert`, optionally scaled by a sigmoid gate `sigmoid(x w_s)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import FP8Tensor
from .fp8_experts import SAVED_FORMATS, FP8ExpertMLP, FP8ExpertWeights

EXPERT_PRECISIONS = ("bf16", "fp8")


def _grouped_mm_available(x: torch.Tensor, hidden: int, d_expert: int) -> bool:
    # The CUDA grouped GEMM takes bf16 with 16-byte aligned rows (dims multiple of 8 elements).
    return (x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and hidden % 8 == 0 and d_expert % 8 == 0)


class GroupedExperts(nn.Module):
    """`num_local` SwiGLU experts as stacked weights (nn.Linear layout, `[out, in]` per expert):
    `w_gate`, `w_up` `[E_local, d_expert, hidden]`, `w_down` `[E_local, hidden, d_expert]`.

    `forward(x, tokens_per_expert)` takes rows `x [N, hidden]` grouped by local expert (the first
    `tokens_per_expert[0]` rows go to expert 0, and so on) and returns `y [N, hidden]` in the same
    order, plus the SwiGLU intermediates `z [N, d_expert]` when `return_intermediates=True`.
    `tokens_per_expert` is a host sequence of ints (used by the loop) and, for the grouped GEMM,
    optionally `offsets`, the int32 device tensor of its cumulative sums (then no host sync at all).

    `precision`: "bf16" (the GEMMs in the input dtype) or "fp8" (`FP8ExpertMLP`: FP8 GEMMs with
    128x128-block weights, quantized once per weight update and cached; hidden and d_expert multiples
    of 128). `fp8_backend`: "auto" (Triton on CUDA, the torch reference elsewhere), "triton", "torch";
    `fp8_gemm_configs`: launch configurations `(GemmConfig | None, GemmConfig | None)` of the
    row-grouped and the weight-gradient GEMMs (None: `mxa2a.gemm`'s defaults). `saved_activations`
    ("fp8" / "mxfp4", fp8 only; "bf16" for bf16), `scale_mode`, `recompute_h`: what the FP8 MLP keeps
    for backward (`fp8_experts.py`).
    `forward(..., x_fp8=rows)` (fp8 only): the rows already in FP8 (`dispatch_fp8`), x their autograd link.
    """

    def __init__(self, num_local: int, hidden: int, d_expert: int, *,
                 use_grouped_mm: bool | None = None, precision: str = "bf16",
                 fp8_backend: str = "auto", saved_activations: str | None = None,
                 scale_mode: str = "rceil", recompute_h: bool = False) -> None:
        super().__init__()
        if precision not in EXPERT_PRECISIONS:
            raise ValueError(f"expert_precision must be one of {EXPERT_PRECISIONS}, got {precision!r}")
        if precision == "fp8" and (hidden % 128 or d_expert % 128):
            raise ValueError(f"expert_precision='fp8' needs hidden and d_expert to be multiples of 128 "
                             f"(128x128 weight blocks), got hidden={hidden}, d_expert={d_expert}")
        saved_activations = saved_activations or ("fp8" if precision == "fp8" else "bf16")
        allowed = SAVED_FORMATS if precision == "fp8" else ("bf16",)
        if saved_activations not in allowed:
            raise ValueError(f"saved_activations must be one of {allowed} with precision={precision!r}, "
                             f"got {saved_activations!r}")
        if recompute_h and precision != "fp8":
            raise ValueError("recompute_h (recompute the FP8 MLP's GEMM-1 output in backward) needs "
                             "precision='fp8'")
        self.saved_activations, self.scale_mode, self.recompute_h = saved_activations, scale_mode, recompute_h
        self.num_local, self.hidden, self.d_expert = num_local, hidden, d_expert
        self.use_grouped_mm = use_grouped_mm
        self.precision, self.fp8_backend = precision, fp8_backend
        self.fp8_weights = FP8ExpertWeights()
        self.fp8_gemm_configs: tuple = (None, None)  # (row-grouped GEMMs, weight-gradient GEMMs)
        self.w_gate = nn.Parameter(torch.empty(num_local, d_expert, hidden))
        self.w_up = nn.Parameter(torch.empty(num_local, d_expert, hidden))
        self.w_down = nn.Parameter(torch.empty(num_local, hidden, d_expert))
        for w in (self.w_gate, self.w_up):
            nn.init.normal_(w, std=hidden ** -0.5)
        nn.init.normal_(self.w_down, std=d_expert ** -0.5)

    def forward(self, x: torch.Tensor, tokens_per_expert: Sequence[int], *,
                offsets: torch.Tensor | None = None, return_intermediates: bool = False,
                x_fp8: FP8Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(tokens_per_expert) != self.num_local:
            raise ValueError(f"tokens_per_expert must have {self.num_local} entries (one per local "
                             f"expert), got {len(tokens_per_expert)}")
        if x_fp8 is not None and (self.precision != "fp8" or tuple(x_fp8.shape) != tuple(x.shape)):
            raise ValueError(f"x_fp8 (FP8 rows {tuple(x_fp8.shape)}) needs precision='fp8' and the shape of "
                             f"x {tuple(x.shape)}; this module has precision={self.precision!r}")
        if self.precision == "fp8":
            return self._forward_fp8(x, tokens_per_expert, offsets, return_intermediates, x_fp8)
        use_gmm = self.use_grouped_mm if self.use_grouped_mm is not None else _grouped_mm_available(
            x, self.hidden, self.d_expert)
        if use_gmm:
            return self._forward_grouped_mm(x, tokens_per_expert, offsets, return_intermediates)
        return self._forward_loop(x, tokens_per_expert, return_intermediates)

    def _forward_loop(self, x, tokens_per_expert, return_intermediates):
        ys, zs = [], []
        for e, rows in enumerate(torch.split(x, list(tokens_per_expert), dim=0)):
            w_gate, w_up, w_down = (w[e].to(x.dtype) for w in (self.w_gate, self.w_up, self.w_down))
            z = F.silu(rows @ w_gate.t()) * (rows @ w_up.t())  # (n_e, d_expert)
            ys.append(z @ w_down.t())                          # (n_e, hidden)
            zs.append(z)
        y = torch.cat(ys, 0) if ys else x.new_zeros(0, self.hidden)
        z = (torch.cat(zs, 0) if zs else x.new_zeros(0, self.d_expert)) if return_intermediates else None
        return y, z

    def _forward_grouped_mm(self, x, tokens_per_expert, offsets, return_intermediates):
        if offsets is None:
            offsets = torch.tensor(list(tokens_per_expert), device=x.device).cumsum(0).to(torch.int32)
        w_gate, w_up, w_down = (w.to(x.dtype).transpose(-2, -1)
                                for w in (self.w_gate, self.w_up, self.w_down))
        z = F.silu(torch._grouped_mm(x, w_gate, offs=offsets)) * torch._grouped_mm(x, w_up, offs=offsets)
        y = torch._grouped_mm(z, w_down, offs=offsets)
        return y, (z if return_intermediates else None)


    def _forward_fp8(self, x, tokens_per_expert, offsets, return_intermediates, x_fp8=None):
        if return_intermediates:
            raise ValueError("return_intermediates is not supported with expert_precision='fp8' (the SwiGLU "
                             "output exists only as FP8 inside the expert MLP)")
        if offsets is None:
            offsets = torch.tensor(list(tokens_per_expert), device=x.device).cumsum(0).to(torch.int32)
        weights = self.fp8_weights.get(self.w_gate, self.w_up, self.w_down)
        y = FP8ExpertMLP.apply(x, self.w_gate, self.w_up, self.w_down, offsets, weights, self.fp8_backend,
                               self.fp8_gemm_configs, x_fp8, self.saved_activations, self.scale_mode,
                               self.recompute_h)
        return y, None

    def refresh_fp8_weights(self) -> None:
        """Re-quantize the FP8 weights now (after writes the version counters miss, e.g. through
        `param.data`, or between optimizer steps when the step runs outside a captured graph)."""
        self.fp8_weights.refresh(self.w_gate, self.w_up, self.w_down)


class SharedExperts(nn.Module):
    """`n_shared` always-on experts fused into one SwiGLU MLP of width `n_shared * d_expert`;
    with `gated=True` the output is scaled per token by `sigmoid(x w_s)` (w_s `[hidden]`)."""

    def __init__(self, hidden: int, width: int, *, gated: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.gate = nn.Linear(hidden, 1, bias=False) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[T, hidden]` -> `[T, hidden]`."""
        y = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x))
        return y
