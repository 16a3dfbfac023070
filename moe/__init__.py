"""mxa2a.moe: a reference MoE layer with expert-parallel dispatch through `mxa2a.comm`, the MoE
training losses and a small MoE language model (`docs/MOE.md`).

- `router`: `TopKRouter` (softmax / sigmoid, scaling factor, aux-loss-free bias) and `RoutingRecord`.
- `experts`: `GroupedExperts` (stacked SwiGLU weights) and `SharedExperts`.
- `fp8_experts`: `FP8ExpertMLP` / `FP8ExpertWeights`, the routed experts in block-scaled FP8
  (`expert_precision="fp8"`, docs/RECIPE.md), on the GEMMs of `mxa2a.gemm`.
- `dispatch`: `ExpertParallelDispatcher` (plan / dispatch / combine) and `DispatchLayout`.
- `layer`: `MoELayerConfig` and `MoELayer`.
- `recipe`: the `recipe=` presets ("bf16", "fp8", "fp8-mxfp4") and the checks of their fields.
- `losses`: balancing, z-loss, specialization, coupling, bias update and routing metrics.
- `model`: `MoEModelConfig` and `MoEModel`, a small decoder-only MoE LM.
- `grouter`: `Grouter` / `GrouterConfig` (frozen routing from token ids), `load_grouter`.
- `predispatch`: `predispatch` (store a Grouter's routing next to the tokens), `open_predispatched`,
  `PredispatchLoader`.
- `plan`: `DispatchPlan` / `build_plans`, static dispatch plans built on the host, one count exchange
  per step, no host sync inside the layers.
"""

from .dispatch import DispatchLayout, ExpertParallelDispatcher
from .experts import GroupedExperts, SharedExperts
from .grouter import Grouter, GrouterConfig, load_grouter
from .layer import MoELayer, MoELayerConfig
from .model import MoEModel, MoEModelConfig, MoEModelOutput, routing_metrics
from .plan import DispatchPlan, build_plans
from .predispatch import PredispatchLoader, open_predispatched, predispatch
from .router import RoutingRecord, TopKRouter

__all__ = [
    "DispatchLayout", "DispatchPlan", "ExpertParallelDispatcher", "GroupedExperts", "Grouter",
    "GrouterConfig", "MoELayer", "MoELayerConfig", "MoEModel", "MoEModelConfig", "MoEModelOutput",
    "PredispatchLoader", "RoutingRecord", "SharedExperts", "TopKRouter", "build_plans", "load_grouter",
    "open_predispatched", "predispatch", "routing_metrics",
]
