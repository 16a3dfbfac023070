"""Top-k router and the routing record it returns.

The router turns hidden states into a choice of `top_k` experts per token and their gate weights
(`docs/MOE.md`, "Reference MoE layer"). It also hands back everything the auxiliary losses need
(full distribution, logits, ids, gates) as a `RoutingRecord`, so a model can compute losses that span
layers (cross-layer coupling) after the forward pass instead of inside each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_bool, check_int, check_number

ROUTER_MODES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class RoutingRecord:
    """What one MoE layer decided for `T` tokens, kept for the losses and metrics.

    - `probs`: fp32 `[T, E]`, the full router distribution (softmax over all E; in sigmoid mode the
      sigmoid scores normalized to sum 1). Differentiable.
    - `logits`: fp32 `[T, E]`, the raw router scores `x W_r^T`. Differentiable.
    - `topk_ids`: int64 `[T, k]`, the chosen experts, distinct within a row.
    - `gates`: fp32 `[T, k]`, the weights of the chosen experts (renormalized over the k, except in
      sigmoid mode with k = 1, times `scaling_factor`). Differentiable.
    - `intermediates`: `[T, k, d_expert]` SwiGLU intermediates `silu(x W_gate) * (x W_up)` of the
      routed expert of each (token, slot), in the layer's dtype, or None when not requested.
      Differentiable with respect to the experts and the input.
    - `static_num_experts`: E for a record made from a static plan (`DispatchPlan.routing()`), whose
      `probs` and `logits` are None: the router distribution belongs to the frozen Grouter.
    """

    probs: torch.Tensor | None
    logits: torch.Tensor | None
    topk_ids: torch.Tensor
    gates: torch.Tensor
    intermediates: torch.Tensor | None = None
    static_num_experts: int | None = None

    @property
    def num_experts(self) -> int:
        if self.probs is not None:
            return self.probs.shape[-1]
        if self.static_num_experts is None:
            raise ValueError("this RoutingRecord has no router distribution and no static_num_experts")
        return self.static_num_experts

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[-1]

    def expert_counts(self) -> torch.Tensor:
        """int64 `[E]`: number of (token, slot) assignments per expert (no host sync)."""
        return torch.bincount(self.topk_ids.reshape(-1), minlength=self.num_experts)


class TopKRouter(nn.Module):
    """Linear scores `s = x W_r^T` (fp32), then top-k selection.

    - `mode="softmax"`: top-k of the logits, gates = softmax over those k logits.
    - `mode="sigmoid"`: scores = sigmoid(logits); top-k of `scores + expert_bias` (the bias is used for
      selection only: aux-loss-free balancing); gates = the chosen scores, renormalized to sum 1 when
      k > 1. With k = 1 the gate is the score itself (as in Megatron-Core and DeepSeek-V3): a
      renormalized single gate is the constant 1, and the task loss would not reach the router.
    Gates are then multiplied by `scaling_factor`.

    `expert_bias` is a buffer (not a parameter: it is moved by `losses.update_expert_bias`, not by the
    optimizer); it exists only when `expert_bias=True`, which requires sigmoid mode.
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, *, mode: str = "softmax",
                 scaling_factor: float = 1.0, expert_bias: bool = False) -> None:
        super().__init__()
        if mode not in ROUTER_MODES:
            raise ValueError(f"router mode must be one of {ROUTER_MODES}, got {mode!r}")
        check_int(hidden, "hidden")
        check_int(num_experts, "num_experts")
        if check_int(top_k, "top_k") > num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        check_bool(expert_bias, "expert_bias")
        if expert_bias and mode != "sigmoid":
            raise ValueError("expert_bias (aux-loss-free balancing) requires mode='sigmoid'")
        self.hidden, self.num_experts, self.top_k = hidden, num_experts, top_k
        self.mode, self.scaling_factor = mode, check_number(scaling_factor, "scaling_factor")
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        nn.init.normal_(self.weight, std=hidden ** -0.5)
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(num_experts, dtype=torch.float32))
        else:
            self.expert_bias = None

    def forward(self, x: torch.Tensor) -> RoutingRecord:
        """x `[T, hidden]` (any float dtype) -> RoutingRecord for T tokens."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 even under autocast
            logits = F.linear(x.float(), self.weight.float())  # (T, E), fp32 by contract
        if self.mode == "softmax":
            top_logits, topk_ids = torch.topk(logits, self.top_k, dim=-1)
            gates = torch.softmax(top_logits, dim=-1)
            probs = torch.softmax(logits, dim=-1)
        else:
            scores = torch.sigmoid(logits)
            select = scores if self.expert_bias is None else scores + self.expert_bias
            topk_ids = torch.topk(select, self.top_k, dim=-1).indices
            chosen = scores.gather(-1, topk_ids)
            gates = chosen / chosen.sum(-1, keepdim=True) if self.top_k > 1 else chosen
            probs = scores / scores.sum(-1, keepdim=True)
        return RoutingRecord(probs=probs, logits=logits, topk_ids=topk_ids,
                             gates=gates * self.scaling_factor)
