"""SwiGLU experts: routed experts held as stacked weights, and the shared experts.

Routed experts compute `down(silu(x W_gate) * (x W_up))` on rows already grouped by expert (the
dispatcher's output): `GroupedExperts` owns the `E_local` experts of this rank as three stacked
weights and runs one grouped GEMM per projection on CUDA (`torch._grouped_mm`, bf16) or a loop over
experts elsewhere. Shared experts (DeepSeekMoE) see every token: a plain SwiGLU MLP of width
`n_shared * d_expert`, optionally scaled by a sigmoid gate `sigmoid(x w_s)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
    """

    def __init__(self, num_local: int, hidden: int, d_expert: int, *,
                 use_grouped_mm: bool | None = None) -> None:
        super().__init__()
        self.num_local, self.hidden, self.d_expert = num_local, hidden, d_expert
        self.use_grouped_mm = use_grouped_mm
        self.w_gate = nn.Parameter(torch.empty(num_local, d_expert, hidden))
        self.w_up = nn.Parameter(torch.empty(num_local, d_expert, hidden))
        self.w_down = nn.Parameter(torch.empty(num_local, hidden, d_expert))
        for w in (self.w_gate, self.w_up):
            nn.init.normal_(w, std=hidden ** -0.5)
        nn.init.normal_(self.w_down, std=d_expert ** -0.5)

    def forward(self, x: torch.Tensor, tokens_per_expert: Sequence[int], *,
                offsets: torch.Tensor | None = None,
                return_intermediates: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(tokens_per_expert) != self.num_local:
            raise ValueError(f"tokens_per_expert must have {self.num_local} entries (one per local "
                             f"expert), got {len(tokens_per_expert)}")
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
