"""Muon and Muon-LITE for 2-D weights `[out, in]` and stacked expert weights `[E, out, in]`.

Muon (the baseline): Nesterov momentum, then the update orthogonalized by Newton-Schulz and scaled by
`0.2 sqrt(max(out, in))` so that its RMS matches AdamW's (the Moonlight convention), with decoupled
weight decay. Muon-LITE (docs/OPTIM.md, "Muon-LITE as the public code does it") adds, per matrix: the
sharp subspace of the momentum's singular directions (about `subspace_ratio` of them, tracked by an
adaptive threshold), Hessian damping `b1 H + (b2_t - b1) H P_flat` with `H = msign(g)`, and the
learning rate (and weight decay) times `chi_t` along the flat input directions `P_flat`.
An expert stack is orthogonalized with one batched Newton-Schulz over E and keeps its LITE threshold
per expert; an expert with an all-zero gradient is idle and keeps its weight and state (`_stacks.py`).
All parameters whose matrices have the same shape and whose groups have the same settings (e.g. the
expert stacks of every layer and the square attention projections) are concatenated and
orthogonalized together, so a step costs a few kernels per shape and no host sync.
`b2_t` and `chi_t` come from the training loop (`schedules.apply_schedule`); without it they equal
`b2` and `chi`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from ._stacks import (as_stack, bucket_active, buckets, call_closure, concat, copy_rows, keep_idle,
                      stack_views)
from .newton_schulz import NS_STEPS, flat_projector, newton_schulz, sharp_projector

TAU_EPS = 1e-9          # tau = s ||M||_F + TAU_EPS
THRESHOLD_GROWTH = 1.05  # s *= 1.05 when more than k* directions are sharp, else *= 0.95
THRESHOLD_SHRINK = 0.95


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def muon_scale(shape: torch.Size) -> float:
    """`0.2 sqrt(max(out, in))`: the orthogonal update's RMS is `1 / sqrt(max)`; this makes it 0.2."""
    return 0.2 * math.sqrt(max(shape[-2], shape[-1]))


class Muon(torch.optim.Optimizer):
    """`W <- W (1 - lr wd) - lr 0.2 sqrt(max(m, n)) NS(M)` with `mom = theta mom + (1 - theta) g` and
    the Nesterov look-ahead `M = mom + g (1 - theta) / theta`.

    Arguments: params (2-D or 3-D tensors, or param-group dicts), lr, momentum (theta, in (0, 1)),
    weight_decay, ns_steps (Newton-Schulz steps). State per parameter: `momentum` (the parameter's
    shape and dtype), `step` (int)."""

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, momentum: float = 0.95,
                 weight_decay: float = 0.1, ns_steps: int = NS_STEPS, **extra_defaults: Any) -> None:
        _check_range("lr", lr, 0.0)
        _check_range("momentum", momentum, 1e-6, 1.0)
        _check_range("weight_decay", weight_decay, 0.0)
        if not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be a positive int, got {ns_steps!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      ns_steps=ns_steps, **extra_defaults))
        for group in self.param_groups:
            for p in group["params"]:
                as_stack(p)  # rejects 1-D and 4-D parameters at construction

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = call_closure(closure)
        for group, params in buckets(self.param_groups, lambda p: (tuple(p.shape[-2:]), p.dtype, p.device)):
            self._step_bucket(params, group)
        return loss

    def _step_bucket(self, params: list[torch.Tensor], group: dict) -> None:
        """One step of every parameter whose matrices have the same shape (and whose groups have the
        same settings), as one stack: the matrices of all of them (E of each stack, 1 of each 2-D
        weight) go through one batched Newton-Schulz. No host sync."""
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["momentum"] = torch.zeros_like(p)
                self._init_state(state, p)
        states = [self.state[p] for p in params]
        weights, moms = stack_views(params), stack_views([s["momentum"] for s in states])
        w, g, mom_old = concat(weights), concat(stack_views([p.grad for p in params])), concat(moms)
        active = bucket_active(params)
        extra = {k: concat([s[k] for s in states]) for k in self._per_expert_state}
        theta, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        mom = mom_old * theta + g * (1 - theta)
        look = mom + g * ((1 - theta) / theta)
        update, flat_decay = self._direction(look, g, w, extra, group, active)
        new_w = w * (1 - lr * wd)
        if flat_decay is not None:
            new_w = new_w - flat_decay
        copy_rows(weights, keep_idle(active, new_w - (lr * muon_scale(w.shape)) * update, w))
        copy_rows(moms, keep_idle(active, mom, mom_old))
        for k in self._per_expert_state:
            copy_rows([s[k] for s in states], extra[k])
        for s in states:
            s["step"] += 1

    _per_expert_state: tuple[str, ...] = ()

    def _init_state(self, state: dict, p: torch.Tensor) -> None:
        pass

    def _direction(self, look, g, w, extra, group, active):
        """(update `[E, m, n]`, extra weight decay to subtract or None); `extra` holds the per-expert
        state tensors `[E]` named by `_per_expert_state`, updated in place."""
        return newton_schulz(look, group["ns_steps"]), None


class MuonLITE(Muon):
    """Muon with LITE (docs/OPTIM.md): with `O = NS(M)`, `tau = s ||M||_F + 1e-9`,
    `P_sharp = (O + NS(M / tau - O)) / 2`, `P_flat = I - P_sharp^T P_sharp`, `H = NS(g)`:
    `upd = O + b1 H + (b2_t - b1) H P_flat`, then `upd += (chi_t - 1) upd P_flat`;
    `W <- W (1 - lr wd) - lr wd (chi_t - 1) W P_flat - lr 0.2 sqrt(max(m, n)) upd`.
    The threshold s (per expert, start `1 / sqrt(min(m, n))`, at most 1) grows x1.05 while more than
    `k* = min(int(subspace_ratio min(m, n)) + 1, min(m, n) - 1)` directions are sharp, else shrinks
    x0.95. With chi = 1 and b1 = b2 = 0 the update is Muon's, bit for bit.

    Extra arguments (per group): b1, b2 (damping, b2 >= b1), chi (>= 1, flat learning-rate ratio),
    subspace_ratio (in (0, 1)); `b2_t` / `chi_t` (the scheduled values, None: b2 / chi). Defaults are
    the published MoE setting for hidden matrices (b1 = 0, b2 = 1, chi = 1, ratio 0.1). Costs three
    Newton-Schulz orthogonalizations per step (Muon: one; NS(M) and NS(g) share one batched call) and
    three `n x n` products. Extra state: `threshold` (fp32 `[E]`, s per expert)."""

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, momentum: float = 0.95,
                 weight_decay: float = 0.1, ns_steps: int = NS_STEPS, b1: float = 0.0, b2: float = 1.0,
                 chi: float = 1.0, subspace_ratio: float = 0.1, b2_t: float | None = None,
                 chi_t: float | None = None) -> None:
        if b2 < b1:
            raise ValueError(f"b2 must be >= b1 (Hessian damping), got b1={b1}, b2={b2}")
        _check_range("chi", chi, 1.0)
        _check_range("subspace_ratio", subspace_ratio, 0.0, 1.0)
        super().__init__(params, lr, momentum, weight_decay, ns_steps, b1=b1, b2=b2, chi=chi,
                         subspace_ratio=subspace_ratio, b2_t=b2_t, chi_t=chi_t)
        for group in self.param_groups:
            for p in group["params"]:
                if min(p.shape[-2:]) < 2:
                    raise ValueError(f"MuonLITE needs matrices with min(out, in) >= 2 (a sharp and a flat "
                                     f"direction), got a parameter of shape {tuple(p.shape)}")

    _per_expert_state = ("threshold",)

    def _init_state(self, state: dict, p: torch.Tensor) -> None:
        experts = p.shape[0] if p.ndim == 3 else 1
        state["threshold"] = torch.full((experts,), 1.0 / math.sqrt(min(p.shape[-2:])),
                                        dtype=torch.float32, device=p.device)

    def _direction(self, look, g, w, extra, group, active):
        steps, (m, n) = group["ns_steps"], look.shape[-2:]
        b1 = group["b1"]
        b2 = group["b2"] if group["b2_t"] is None else group["b2_t"]
        chi = group["chi"] if group["chi_t"] is None else group["chi_t"]
        o, h = newton_schulz(torch.cat([look, g]), steps).split(look.shape[0])  # NS(M), H = NS(g): one call
        s = extra["threshold"]
        tau = s.view(-1, 1, 1).to(look.dtype) * look.norm(dim=(-2, -1), keepdim=True) + TAU_EPS
        p_sharp = sharp_projector(look, o, tau, steps)
        k = min(int(group["subspace_ratio"] * min(m, n)) + 1, min(m, n) - 1)
        too_many = p_sharp.float().norm(dim=(-2, -1)) > math.sqrt(k)              # (E,)
        new_s = (s * torch.where(too_many, THRESHOLD_GROWTH, THRESHOLD_SHRINK)).clamp(max=1.0)
        s.copy_(keep_idle(active, new_s, s))
        p_flat = flat_projector(p_sharp)                                            # (E, n, n)
        update = o + b1 * h + (b2 - b1) * (h @ p_flat)
        update = update + (chi - 1) * (update @ p_flat)
        flat_decay = (group["lr"] * group["weight_decay"] * (chi - 1)) * (w @ p_flat)
        return update, flat_decay
