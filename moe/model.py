"""A small decoder-only MoE language model for tests, examples and benchmarks.

nanoGPT-shaped (config, attention, block, model) with every MLP replaced by a `MoELayer`. The loss is
the language-modelling cross-entropy plus the auxiliary losses of `losses.py`, each weighted by the
config; the per-layer routing records are collected in the forward pass so that cross-layer terms
(coupling) are computed once per step. With `group` set, the MoE layers are expert-parallel over it and
the load-balancing counts are summed over it (tokens are assumed sharded over the same group).

Two routing paths: dynamic (default), each layer's router picks its experts and the dispatcher
exchanges counts per layer; static (`forward(ids, plan=...)`), one `moe.plan.DispatchPlan` built from a
frozen Grouter's (or pre-dispatched) ids and gates drives every layer, with no host sync inside the
layers. On the static path the router-distribution losses (balancing, z, coupling) are not computed:
the routing is fixed outside the model, so they would be constants with no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .checks import check_int, check_number
from .layer import MoELayer, MoELayerConfig
from .recipe import check_recipe
from .router import RoutingRecord


@dataclass(frozen=True)
class MoEModelConfig:
    """Model shape (`moe.hidden` is the model width) and the weights of the auxiliary losses
    (0 turns a loss off; `specialization_weight > 0` makes the layers return their intermediates).
    `recipe` ("bf16", "fp8", "fp8-mxfp4"; None = the one `moe` names) sets the layers' recipe, as
    `replace(moe, recipe=...)` does: fields set by hand on `moe` keep their value."""

    moe: MoELayerConfig
    vocab_size: int = 256
    seq_len: int = 128
    n_layers: int = 2
    n_heads: int = 4
    lb_weight: float = 0.01
    seq_lb_weight: float = 0.0
    z_weight: float = 0.0
    specialization_weight: float = 0.0
    coupling_weight: float = 0.0
    recipe: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.moe, MoELayerConfig):
            raise TypeError(f"moe must be a MoELayerConfig, got {type(self.moe).__name__}")
        if self.recipe is not None and self.recipe != self.moe.recipe:
            object.__setattr__(self, "moe", replace(self.moe, recipe=check_recipe(self.recipe)))
        for name in ("vocab_size", "seq_len", "n_layers", "n_heads"):
            check_int(getattr(self, name), name)
        for name in ("lb_weight", "seq_lb_weight", "z_weight", "specialization_weight", "coupling_weight"):
            check_number(getattr(self, name), name, allow_zero=True)
        if self.moe.hidden % self.n_heads != 0:
            raise ValueError(f"hidden ({self.moe.hidden}) must be divisible by n_heads ({self.n_heads})")
        if self.coupling_weight and self.n_layers < 2:
            raise ValueError("coupling_weight > 0 needs n_layers >= 2 (it couples adjacent layers)")


@dataclass
class MoEModelOutput:
    logits: torch.Tensor                       # (B, S, vocab)
    loss: torch.Tensor | None                  # lm_loss + weighted aux losses (None without targets)
    lm_loss: torch.Tensor | None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted, by name
    records: list[RoutingRecord] = field(default_factory=list)        # one per MoE layer


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(x).split(hidden, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, nh, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, hidden))


class Block(nn.Module):
    def __init__(self, config: MoEModelConfig, moe_config: MoELayerConfig, group: Any) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(moe_config.hidden)
        self.attn = CausalSelfAttention(moe_config.hidden, config.n_heads)
        self.ln_2 = nn.LayerNorm(moe_config.hidden)
        self.moe = MoELayer(moe_config, group)

    def forward(self, x: torch.Tensor, plan: Any = None) -> tuple[torch.Tensor, RoutingRecord]:
        x = x + self.attn(self.ln_1(x))
        y, record = self.moe(self.ln_2(x), plan=plan)
        return x + y, record


class MoEModel(nn.Module):
    def __init__(self, config: MoEModelConfig, group: Any = None) -> None:
        super().__init__()
        self.config, self.group = config, group
        moe_config = config.moe
        if config.specialization_weight and not moe_config.return_intermediates:
            moe_config = replace(moe_config, return_intermediates=True)
        hidden = moe_config.hidden
        self.wte = nn.Embedding(config.vocab_size, hidden)
        self.wpe = nn.Embedding(config.seq_len, hidden)
        self.blocks = nn.ModuleList(Block(config, moe_config, group) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                plan: Any = None) -> MoEModelOutput:
        """ids int64 `[B, S]` (S <= seq_len); targets `[B, S]` or None.

        `plan`: a `moe.plan.DispatchPlan` of these B * S tokens (with gates), e.g. from
        `DispatchPlan.build(grouter_ids, E, group=..., gates=grouter_gates, device=...)`: every MoE layer
        then takes its routing and layout from it instead of its router (the static path). The records'
        `probs` / `logits` are then None and only the specialization loss is computed."""
        batch, seq = ids.shape
        if seq > self.config.seq_len:
            raise ValueError(f"sequence length {seq} exceeds seq_len={self.config.seq_len}")
        pos = torch.arange(seq, device=ids.device)
        x = self.wte(ids) + self.wpe(pos)                        # (B, S, H)
        records = []
        if plan is not None and plan.num_tokens != batch * seq:
            raise ValueError(f"plan covers {plan.num_tokens} tokens, ids have B * S = {batch * seq}")
        for block in self.blocks:
            x, record = block(x, plan)
            records.append(record)
        logits = self.lm_head(self.ln_f(x))                      # (B, S, vocab)
        out = MoEModelOutput(logits=logits, loss=None, lm_loss=None, records=records)
        if targets is not None:
            out.lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
            out.aux_losses = self.aux_losses(records, batch)
            weights = self.aux_weights()
            out.loss = out.lm_loss + sum(weights[n] * v for n, v in out.aux_losses.items())
        return out

    def aux_weights(self) -> dict[str, float]:
        c = self.config
        return {"load_balancing": c.lb_weight, "sequence_balancing": c.seq_lb_weight, "z": c.z_weight,
                "specialization": c.specialization_weight, "coupling": c.coupling_weight}

    def aux_losses(self, records: list[RoutingRecord], batch: int) -> dict[str, torch.Tensor]:
        """The auxiliary losses with a nonzero weight, unweighted, averaged over layers."""
        w = self.aux_weights()
        if records and records[0].probs is None:  # static routing: only the experts' own loss applies
            w = {n: (v if n == "specialization" else 0.0) for n, v in w.items()}
        out: dict[str, torch.Tensor] = {}
        mean = lambda values: torch.stack(values).mean()  # noqa: E731
        if w["load_balancing"]:
            out["load_balancing"] = mean([losses.load_balancing_loss(r.probs, r.topk_ids, self.group)
                                          for r in records])
        if w["sequence_balancing"]:
            out["sequence_balancing"] = mean([losses.sequence_balancing_loss(
                r.probs.view(batch, -1, r.num_experts), r.topk_ids.view(batch, -1, r.top_k))
                for r in records])
        if w["z"]:
            out["z"] = mean([losses.z_loss(r.logits) for r in records])
        if w["specialization"]:
            out["specialization"] = losses.specialization_loss([r.intermediates for r in records])
        if w["coupling"]:
            out["coupling"] = losses.cross_layer_coupling_loss([r.probs for r in records],
                                                               [r.topk_ids for r in records])
        return out

    @torch.no_grad()
    def update_expert_biases(self, records: list[RoutingRecord], rate: float,
                             group: Any = None) -> None:
        """Aux-loss-free balancing step for every layer whose router has an expert bias."""
        for block, record in zip(self.blocks, records):
            bias = block.moe.router.expert_bias
            if bias is not None:
                losses.update_expert_bias(bias, record.topk_ids, rate, group)


@torch.no_grad()
def routing_metrics(records: list[RoutingRecord], group: Any = None) -> dict[str, float]:
    """Per-layer MaxVio (`maxvio/<l>`, counts summed over `group`), mean routing entropy and, when
    intermediates are present and k > 1, the mean co-activated cosine. Syncs the host (returns floats)."""
    import torch.distributed as dist

    out: dict[str, float] = {}
    for layer, r in enumerate(records):
        counts = r.expert_counts().float()
        if group is not None:
            dist.all_reduce(counts, group=group)
        out[f"maxvio/{layer}"] = losses.max_violation(counts).item()
    out["entropy"] = torch.stack([losses.routing_entropy(r.probs) for r in records]).mean().item()
    if records and records[0].intermediates is not None and records[0].top_k > 1:
        out["coactivated_cosine"] = torch.stack(
            [losses.coactivated_cosine(r.intermediates) for r in records]).mean().item()
    return out
