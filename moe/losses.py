"""Auxiliary losses and routing metrics of MoE training (`docs/MOE.md`, "Losses").

Each function takes tensors from `RoutingRecord`s and returns a scalar tensor; formulas are in the
docstrings. Notation: `p [T, E]` the full router distribution, `c [E]` the number of (token, slot)
assignments per expert, `k` top-k, `T` tokens. Functions that take `group` sum counts over it (one
small all-reduce, no host sync) so that the value is the global one when tokens are sharded.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist


def _counts(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.bincount(topk_ids.reshape(-1), minlength=num_experts).float()


def _check_probs_ids(probs: torch.Tensor, topk_ids: torch.Tensor, lead: int) -> None:
    if probs.dim() != lead + 1 or topk_ids.dim() != lead + 1 or probs.shape[:-1] != topk_ids.shape[:-1]:
        raise ValueError(f"probs and topk_ids must be [{'B, S' if lead == 2 else 'T'}, E] and "
                         f"[{'B, S' if lead == 2 else 'T'}, k] with the same leading dims, got "
                         f"{tuple(probs.shape)} and {tuple(topk_ids.shape)}")


def load_balancing_loss(probs: torch.Tensor, topk_ids: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Switch/GShard balancing: `L_lb = E * sum_i f_i * P_i`, `f_i = c_i / (T k)`, `P_i = mean_t p[t, i]`.

    probs fp32 `[T, E]`, topk_ids `[T, k]`. With `group`, `c` and `T` are summed over the group
    (so `f` is global; `P` stays local and carries the gradient). Equals 1 for uniform routing.
    """
    _check_probs_ids(probs, topk_ids, 1)
    num_tokens, num_experts = probs.shape
    k = topk_ids.shape[-1]
    counts = _counts(topk_ids, num_experts)
    total = torch.tensor([float(num_tokens)], device=probs.device)
    if group is not None:
        both = torch.cat([counts, total])
        dist.all_reduce(both, group=group)
        counts, total = both[:-1], both[-1:]
    f = counts / (total * k)
    return num_experts * (f * probs.mean(0)).sum()


def sequence_balancing_loss(probs: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2/V3 sequence-wise balancing, per sequence b of length S:
    `f_{b,i} = c_{b,i} E / (S k)`, `P_{b,i} = mean_s p[b, s, i]`, `L_seq = mean_b sum_i f_{b,i} P_{b,i}`.

    probs fp32 `[B, S, E]`, topk_ids `[B, S, k]`. Equals 1 for uniform routing.
    """
    _check_probs_ids(probs, topk_ids, 2)
    batch, seq, num_experts = probs.shape
    k = topk_ids.shape[-1]
    counts = torch.zeros(batch, num_experts, device=probs.device)
    counts.scatter_add_(1, topk_ids.reshape(batch, -1), torch.ones(batch, seq * k, device=probs.device))
    f = counts * num_experts / (seq * k)
    return (f * probs.mean(1)).sum(-1).mean()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: `L_z = mean_t (logsumexp_e logits[t, e])^2`; logits `[T, E]`."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [T, E], got {tuple(logits.shape)}")
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def _pairwise_cosines(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines `[T, k, k]` of the k intermediates of each token, and the off-diagonal mask `[k, k]`."""
    if z.dim() != 3:
        raise ValueError(f"intermediates must be [T, k, d_expert], got {tuple(z.shape)}")
    z = z.float()
    unit = z / z.norm(dim=-1, keepdim=True).clamp_min(eps)
    cos = unit @ unit.transpose(-1, -2)
    k = z.shape[1]
    return cos, ~torch.eye(k, dtype=torch.bool, device=z.device)


def specialization_loss(intermediates: torch.Tensor | Sequence[torch.Tensor],
                        eps: float = 1e-12) -> torch.Tensor:
    """Intra-layer specialization: for each token, over the ordered pairs `(e, v)` of distinct
    co-activated routed experts, the squared cosine of their SwiGLU intermediates,
    `R_sp = mean_t mean_{e != v} (z_e . z_v)^2 / (|z_e|^2 |z_v|^2)`, then the mean over layers.

    `intermediates`: `[T, k, d_expert]` for one layer, or a sequence of them (one per layer). 0 for
    orthogonal, 1 for parallel intermediates; invariant to positive scaling of any `z`; gradients
    flow into the experts (and the input). With k = 1 there are no pairs and the value is 0.
    """
    if not isinstance(intermediates, torch.Tensor):
        layers = list(intermediates)
        if not layers:
            raise ValueError("intermediates must hold at least one layer")
        return torch.stack([specialization_loss(z, eps) for z in layers]).mean()
    cos, off = _pairwise_cosines(intermediates, eps)
    k = intermediates.shape[1]
    if k < 2:
        return (intermediates.float() * 0).sum()
    return cos.square()[:, off].mean()


def cross_layer_coupling_loss(probs: Sequence[torch.Tensor], topk_ids: Sequence[torch.Tensor]
                              ) -> torch.Tensor:
    """Cross-layer coupling: `m_t^l = sum_{e in topk_l(t)} p^l[t, e]` (top-k mass at layer l),
    `R_cp = - mean_{t, l} m_t^l * m_t^{l+1}` over the adjacent layer pairs `(l, l + 1)`.

    probs: one fp32 `[T, E]` per layer; topk_ids: one `[T, k]` per layer (same tokens in every
    layer). In [-1, 0]; -1 when every layer puts all its mass on its top-k. Needs >= 2 layers.
    """
    if len(probs) != len(topk_ids) or len(probs) < 2:
        raise ValueError(f"need probs and topk_ids for the same >= 2 layers, got {len(probs)} and "
                         f"{len(topk_ids)}")
    mass = []
    for p, ids in zip(probs, topk_ids):
        _check_probs_ids(p, ids, 1)
        mass.append(p.gather(-1, ids).sum(-1))  # (T,)
    if len({m.shape for m in mass}) != 1:
        raise ValueError(f"every layer must route the same tokens, got {[tuple(m.shape) for m in mass]}")
    m = torch.stack(mass)  # (L, T)
    return -(m[:-1] * m[1:]).mean()


@torch.no_grad()
def update_expert_bias(bias: torch.Tensor, topk_ids: torch.Tensor | None = None, rate: float = 1e-3,
                       group: Any = None, *, counts: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSeek-V3 aux-loss-free balancing, after each step: `b += rate * sign(mean(c) - c)`.

    `bias` fp32 `[E]` (the router's `expert_bias` buffer) is updated in place and returned. `c` is
    the assignment count per expert of this step (from `topk_ids [T, k]`, or given as `counts [E]`,
    e.g. summed over layers' steps), summed over `group` (the data-parallel group) if given.
    """
    if (topk_ids is None) == (counts is None):
        raise ValueError("give exactly one of topk_ids and counts")
    c = _counts(topk_ids, bias.numel()) if counts is None else counts.detach().float().clone()
    if c.shape != bias.shape:
        raise ValueError(f"counts must have the bias's shape {tuple(bias.shape)}, got {tuple(c.shape)}")
    if group is not None:
        dist.all_reduce(c, group=group)
    bias.add_(rate * torch.sign(c.mean() - c))
    return bias


# -- metrics (no gradients) ----------------------------------------------------------------------
@torch.no_grad()
def max_violation(counts: torch.Tensor) -> torch.Tensor:
    """MaxVio of one layer's load: `max_i c_i / mean_i c_i` (1 when perfectly balanced)."""
    c = counts.float()
    return c.max() / c.mean()


@torch.no_grad()
def routing_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean routing entropy in nats: `mean_t -sum_e p[t, e] log p[t, e]`; probs `[T, E]`."""
    return -torch.xlogy(probs.float(), probs.float()).sum(-1).mean()


@torch.no_grad()
def coactivated_cosine(intermediates: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean cosine (not squared) of the SwiGLU intermediates of co-activated expert pairs:
    `mean_t mean_{e != v} cos(z_e, z_v)`; `[T, k, d_expert]`. NaN when k = 1 (no pairs)."""
    cos, off = _pairwise_cosines(intermediates, eps)
    if intermediates.shape[1] < 2:
        return torch.tensor(float("nan"))
    return cos[:, off].mean()
