"""The reference MoE layer: config, router, experts, dispatcher, layer (in the order data flows).

`MoELayer` is plain PyTorch that runs on one device with all experts when no process group is given;
expert parallelism comes from the `ExpertParallelDispatcher` it builds from `group`, which is the
only part that knows about ranks (`docs/MOE.md`, "Reference MoE layer").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..quant.formats import check_scale_mode
from .checks import check_bool, check_int, check_number
from .dispatch import DispatchLayout, ExpertParallelDispatcher, check_wire
from .experts import GroupedExperts, SharedExperts
from .router import ROUTER_MODES, RoutingRecord, TopKRouter


@dataclass(frozen=True)
class MoELayerConfig:
    """Static description of one MoE layer (the process group is not configuration: it is passed
    to `MoELayer` at construction, as `group`).

    - `hidden`: model width H; `d_expert`: width of one routed expert's SwiGLU intermediate.
    - `num_experts` E routed experts, `top_k` of them per token.
    - `n_shared` shared experts (0: none) fused into one SwiGLU of width `n_shared * d_expert`,
      optionally gated by `sigmoid(x w_s)` (`shared_gate`).
    - `router_mode` "softmax" or "sigmoid"; `scaling_factor` multiplies the gates; `expert_bias`
      enables the aux-loss-free selection bias (sigmoid mode only).
    - `wire` / `grad_wire` / `scale_mode`: what the expert-parallel all-to-alls send (see
      `mxa2a.comm`); the hidden size must suit them (multiple of 32 for mxfp4, 128 for fp8).
    - `emulate_wire`: with EP size 1, quantize-dequantize where the all-to-alls would be.
    - `wire_check`: comm's `check` for the all-to-alls: None (default) = comm's policy (the format is
      verified on the first call of each signature, then no per-call host sync), True = every call
      (debug; one host sync each), False = never.
    - `return_intermediates`: put the SwiGLU intermediates `[T, k, d_expert]` into the routing record
      (needed by the specialization loss; with EP they travel back over a "raw" all-to-all).
    - `use_grouped_mm`: None = `torch._grouped_mm` for bf16 CUDA inputs, a loop otherwise.
    - `expert_precision`: "bf16" (default) or "fp8": the routed experts' GEMMs in block-scaled FP8
      (docs/RECIPE.md; hidden and d_expert multiples of 128; see `moe/fp8_experts.py`).
    """

    hidden: int
    d_expert: int
    num_experts: int
    top_k: int
    n_shared: int = 0
    shared_gate: bool = False
    router_mode: str = "softmax"
    scaling_factor: float = 1.0
    expert_bias: bool = False
    wire: Any = "raw"
    grad_wire: Any = "raw"
    scale_mode: str = "rceil"
    emulate_wire: bool = False
    wire_check: bool | None = None
    return_intermediates: bool = False
    use_grouped_mm: bool | None = None
    expert_precision: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("hidden", "d_expert", "num_experts", "top_k"):
            check_int(getattr(self, name), name)
        check_int(self.n_shared, "n_shared", minimum=0)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}")
        check_number(self.scaling_factor, "scaling_factor")
        for name in ("shared_gate", "expert_bias", "emulate_wire", "return_intermediates"):
            check_bool(getattr(self, name), name)
        for name in ("wire_check", "use_grouped_mm"):
            check_bool(getattr(self, name), name, allow_none=True)
        if self.expert_bias and self.router_mode != "sigmoid":
            raise ValueError("expert_bias (aux-loss-free balancing) requires router_mode='sigmoid'")
        check_scale_mode(self.scale_mode)
        check_wire(self.wire, self.hidden, "wire")
        check_wire(self.grad_wire, self.hidden, "grad_wire")


class MoELayer(nn.Module):
    """`y = sum_{e in topk(x)} g_e * expert_e(x) + shared(x)` for tokens `x [..., H]`.

    `group`: the expert-parallel process group (None: one process holds all E experts). With EP size
    n, this module holds experts `dispatcher.local_experts` only (`E / n` of them); router and shared
    experts are replicated. `forward` returns `(y, record)`: `y` has x's shape and dtype, `record` is
    the `RoutingRecord` of the flattened tokens (for the losses).
    """

    def __init__(self, config: MoELayerConfig, group: Any = None) -> None:
        super().__init__()
        self.config = config
        self.dispatcher = ExpertParallelDispatcher(
            config.num_experts, config.hidden, group, wire=config.wire, grad_wire=config.grad_wire,
            scale_mode=config.scale_mode, emulate_wire=config.emulate_wire,
            wire_check=config.wire_check)
        self.router = TopKRouter(config.hidden, config.num_experts, config.top_k,
                                 mode=config.router_mode, scaling_factor=config.scaling_factor,
                                 expert_bias=config.expert_bias)
        self.experts = GroupedExperts(self.dispatcher.num_local, config.hidden, config.d_expert,
                                      use_grouped_mm=config.use_grouped_mm,
                                      precision=config.expert_precision)
        self.shared = (SharedExperts(config.hidden, config.n_shared * config.d_expert,
                                     gated=config.shared_gate) if config.n_shared else None)

    def forward(self, x: torch.Tensor, *, routing: RoutingRecord | None = None,
                layout: DispatchLayout | None = None, plan: Any = None) -> tuple[torch.Tensor, RoutingRecord]:
        """x `[..., H]` -> (y `[..., H]`, RoutingRecord over the T flattened tokens).

        `routing` replaces the router (e.g. precomputed routing); `layout` replaces the dispatcher's
        `plan` step and must be built from the same `topk_ids`. `plan` (a `moe.plan.DispatchPlan`, the
        static path) gives both: its layout, and its routing unless `routing` is given. With a plan (or
        any layout with `static=True`) nothing in this layer reads a device value or syncs the host:
        split sizes and rows per expert are host ints, the expert loop (grouped GEMM off) splits by them,
        and the all-to-alls skip comm's format check.
        """
        cfg = self.config
        if x.shape[-1] != cfg.hidden:
            raise ValueError(f"x must have last dimension hidden={cfg.hidden}, got shape {tuple(x.shape)}")
        shape = x.shape
        x = x.reshape(-1, cfg.hidden)                                   # (T, H)
        if plan is not None:
            if layout is not None:
                raise ValueError("pass either plan or layout, not both (a plan carries its layout)")
            layout = self.dispatcher.layout_from_plan(plan)
            if routing is None:
                routing = plan.routing()
        record = self.router(x) if routing is None else routing
        if layout is None:
            layout = self.dispatcher.plan(record.topk_ids)
        x_local = self.dispatcher.dispatch(x, layout)                   # (N_local, H) by local expert
        y_local, z_local = self.experts(x_local, layout.tokens_per_local_expert,
                                        offsets=layout.expert_offsets,
                                        return_intermediates=cfg.return_intermediates)
        y = self.dispatcher.combine(y_local, layout, record.gates)      # (T, H)
        if cfg.return_intermediates:
            z = self.dispatcher.return_rows(z_local, layout, wire="raw", grad_wire="raw")  # (T, k, d_expert)
            record = replace(record, intermediates=z)
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(shape), record
