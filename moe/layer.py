"""The reference MoE layer: config, router, experts, dispatcher, layer (in the order data flows).

`MoELayer` is plain PyTorch that runs on one device with all experts when no process group is given;
expert parallelism comes from the `ExpertParallelDispatcher` it builds from `group`, which is the
only part that knows about ranks (`docs/MOE.md`, "Reference MoE layer").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..quant.formats import check_scale_mode
from .checks import check_bool, check_int, check_number
from .dispatch import DispatchLayout, ExpertParallelDispatcher, check_wire
from .recipe import RECIPE_FIELDS, check_recipe_fields, resolve_recipe
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
    - `recipe`: "bf16" (default), "fp8" or "fp8-mxfp4" (docs/RECIPE.md; table in `moe/recipe.py`):
      fills each of the seven fields below that is left None; a field given by hand wins.
      `dataclasses.replace(cfg, recipe=...)` moves the fields the old recipe filled to the new one's.
    - `wire` / `grad_wire`: what the dispatch all-to-all sends forward / its gradient backward (dx);
      `combine_wire` / `combine_grad_wire`: the same for the combine all-to-all (its gradient is dy,
      sent to the experts). `scale_mode`: the MXFP4 scale rule. See `mxa2a.comm`; the hidden size must
      suit the wires (multiple of 32 for mxfp4, 128 for fp8).
    - `fp8_dispatch`: quantize the tokens to FP8 1x128 once, before the permute, and dispatch FP8 rows
      (wire "fp8" or "mxfp4") straight into the FP8 expert GEMMs (needs expert_precision="fp8").
    - `saved_activations`: what the FP8 expert MLP keeps for backward: "fp8" (x, z in FP8; h bf16) or
      "mxfp4" (x, z and h in MXFP4); "bf16" for the bf16 experts (what autograd keeps).
      `recompute_h`: the FP8 MLP keeps no h and recomputes it in backward (one more GEMM; not part of
      any recipe).
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
    recipe: str = "bf16"
    wire: Any = None
    grad_wire: Any = None
    combine_wire: Any = None
    combine_grad_wire: Any = None
    fp8_dispatch: bool | None = None
    saved_activations: str | None = None
    scale_mode: str = "rceil"
    emulate_wire: bool = False
    wire_check: bool | None = None
    return_intermediates: bool = False
    use_grouped_mm: bool | None = None
    expert_precision: str | None = None
    recompute_h: bool = False
    _recipe_filled: tuple = field(default=(), repr=False, compare=False)  # see moe/recipe.py

    def __post_init__(self) -> None:
        fields, filled = resolve_recipe(self.recipe, {n: getattr(self, n) for n in RECIPE_FIELDS},
                                        self._recipe_filled)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_recipe_filled", filled)
        check_recipe_fields(fields)
        if self.recompute_h is True and self.expert_precision != "fp8":
            raise ValueError(f"recompute_h=True recomputes the FP8 expert MLP's GEMM-1 output: it needs "
                             f"expert_precision='fp8', got {self.expert_precision!r}")
        for name in ("hidden", "d_expert", "num_experts", "top_k"):
            check_int(getattr(self, name), name)
        check_int(self.n_shared, "n_shared", minimum=0)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}")
        check_number(self.scaling_factor, "scaling_factor")
        for name in ("shared_gate", "expert_bias", "emulate_wire", "return_intermediates", "recompute_h"):
            check_bool(getattr(self, name), name)
        for name in ("wire_check", "use_grouped_mm"):
            check_bool(getattr(self, name), name, allow_none=True)
        if self.expert_bias and self.router_mode != "sigmoid":
            raise ValueError("expert_bias (aux-loss-free balancing) requires router_mode='sigmoid'")
        check_scale_mode(self.scale_mode)
        for name in ("wire", "grad_wire", "combine_wire", "combine_grad_wire"):
            check_wire(getattr(self, name), self.hidden, name)


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
            combine_wire=config.combine_wire, combine_grad_wire=config.combine_grad_wire,
            scale_mode=config.scale_mode, emulate_wire=config.emulate_wire,
            wire_check=config.wire_check)
        self.router = TopKRouter(config.hidden, config.num_experts, config.top_k,
                                 mode=config.router_mode, scaling_factor=config.scaling_factor,
                                 expert_bias=config.expert_bias)
        self.experts = GroupedExperts(self.dispatcher.num_local, config.hidden, config.d_expert,
                                      use_grouped_mm=config.use_grouped_mm,
                                      precision=config.expert_precision,
                                      saved_activations=config.saved_activations,
                                      scale_mode=config.scale_mode, recompute_h=config.recompute_h)
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
        if cfg.fp8_dispatch:  # FP8 rows into the FP8 GEMMs; x_local is their autograd link
            x_local, x_fp8 = self.dispatcher.dispatch_fp8(x, layout, backend=self.experts.fp8_backend)
        else:
            x_local, x_fp8 = self.dispatcher.dispatch(x, layout), None  # (N_local, H) by local expert
        y_local, z_local = self.experts(x_local, layout.tokens_per_local_expert,
                                        offsets=layout.expert_offsets,
                                        return_intermediates=cfg.return_intermediates, x_fp8=x_fp8)
        y = self.dispatcher.combine(y_local, layout, record.gates)      # (T, H)
        if cfg.return_intermediates:
            z = self.dispatcher.return_rows(z_local, layout, wire="raw", grad_wire="raw")  # (T, k, d_expert)
            record = replace(record, intermediates=z)
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(shape), record
