"""mxa2a.moe: a reference MoE layer with expert-parallel dispatch through `mxa2a.comm`, the MoE
training losses and a small MoE language model (`shared/spec/MOE.md`).

- `router`: `TopKRouter` (softmax / sigmoid, scaling factor, aux-loss-free bias) and `RoutingRecord`.
- `experts`: `GroupedExperts` (stacked SwiGLU weights) and `SharedExperts`.
- `dispatch`: `ExpertParallelDispatcher` (plan / dispatch / combine) and `DispatchLayout`.
- `layer`: `MoELayerConfig` and `MoELayer`.
- `losses`: balancing, z-loss, specialization, coupling, bias update and routing metrics.
- `model`: `MoEModelConfig` and `MoEModel`, a small decoder-only MoE LM.
"""

from .dispatch import DispatchLayout, ExpertParallelDispatcher
from .experts import GroupedExperts, SharedExperts
from .layer import MoELayer, MoELayerConfig
from .model import MoEModel, MoEModelConfig, MoEModelOutput, routing_metrics
from .router import RoutingRecord, TopKRouter

__all__ = [
    "DispatchLayout", "ExpertParallelDispatcher", "GroupedExperts", "SharedExperts", "MoELayer",
    "MoELayerConfig", "MoEModel", "MoEModelConfig", "MoEModelOutput", "RoutingRecord", "TopKRouter",
    "routing_metrics",
]
