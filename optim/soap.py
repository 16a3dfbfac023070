"""SOAP and SOAP-LITE for 2-D weights `[out, in]` and stacked expert weights `[E, out, in]`.

SOAP (Vyas et al. 2024, arXiv 2409.11321): Adam run in the eigenbasis of Shampoo's Kronecker factors
`L = EMA(G G^T)`, `R = EMA(G^T G)`. The first step only builds L, R and their eigenbases (eigh); each
later step rotates the gradient and the momentum into the basis (`Q_L^T X Q_R`), takes an Adam step
there and rotates back; every `precondition_frequency` Adam steps the bases are refreshed by one power
iteration and a QR (columns first sorted by their eigenvalue estimate, v permuted to match). A side
longer than `max_precond_dim` keeps the identity basis. Per expert of a stack: its own L, R, bases,
moments, bias-correction step and LITE factors; an idle expert (all-zero gradient) keeps all of them.
Parameters of one shape, settings and step count are stepped as one concatenated stack (one batched
rotation, eigh and QR per shape); no host sync.

SOAP-LITE is OUR construction from Algorithm 1 of the LITE paper (docs/OPTIM.md): the paper gives no
code for it. The choice made: the flat projector Q_k is diagonal in the Kronecker eigenbasis, `1 - p`
with p the AdamW path's sharpness mask (`adamw_lite.sharpness_mask`) applied to Adam's second moment
v in that basis (v estimates the curvature along each eigen-direction `q_L,i (x) q_R,j`), per matrix.
Then, in the rotated space, with N = m_hat / denom (SOAP's step) and D = g / denom (the preconditioned
gradient, P^{-1} g): `u = N + b1 D + (b2_t - b1)(1 - p) D`, `u += (chi_t - 1)(1 - p) u`, which expands
to Algorithm 1's `(I - Q) P^{-1}(m + b1 g) + chi Q P^{-1}(m + b2 g)` (as Muon-LITE's update does); the
weight decay along flat directions is multiplied by chi_t as in the other LITE paths.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from ._stacks import (as_stack, bucket_active, buckets, call_closure, concat, copy_rows, keep_idle,
                      stack_views)
from .adamw_lite import sharpness_mask


def _rotate(x: torch.Tensor, q_left: torch.Tensor | None, q_right: torch.Tensor | None) -> torch.Tensor:
    """`Q_L^T x Q_R` (a missing side is the identity)."""
    if q_left is not None:
        x = q_left.mT @ x
    if q_right is not None:
        x = x @ q_right
    return x


def _rotate_back(x: torch.Tensor, q_left: torch.Tensor | None, q_right: torch.Tensor | None) -> torch.Tensor:
    """`Q_L x Q_R^T`."""
    if q_left is not None:
        x = q_left @ x
    if q_right is not None:
        x = x @ q_right.mT
    return x


def _eigenbasis(stat: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of the symmetric `[E, k, k]` factor, columns by decreasing eigenvalue."""
    return torch.linalg.eigh(stat)[1].flip(-1)


def _refresh(stat: torch.Tensor, q: torch.Tensor, v: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One power iteration with QR on the sorted basis; v's rows (side -2) or columns (-1) follow the sort."""
    estimate = (q.mT @ stat @ q).diagonal(dim1=-2, dim2=-1)             # (E, k)
    order = estimate.argsort(dim=-1, descending=True)
    q = q.gather(-1, order.unsqueeze(-2).expand_as(q))
    index = order.unsqueeze(-1) if side == -2 else order.unsqueeze(-2)
    v = v.gather(side, index.expand_as(v))
    return torch.linalg.qr(stat @ q).Q, v


class SOAP(torch.optim.Optimizer):
    """Adam in the Kronecker eigenbasis (see the module docstring for the steps).

    Arguments (per group): lr, betas (Adam's, (0.95, 0.95) as in SOAP), shampoo_beta (EMA of L and R),
    eps, weight_decay (decoupled), precondition_frequency, max_precond_dim. State per parameter (fp32,
    per expert): `exp_avg` (the parameter's space), `exp_avg_sq` (rotated space), `left` / `right`
    (`[E, out, out]` / `[E, in, in]` or None), `q_left` / `q_right`, `adam_step` `[E]`, `step` (int,
    calls including the first)."""

    def __init__(self, params: Iterable[Any], lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
                 precondition_frequency: int = 10, max_precond_dim: int = 4096,
                 **extra_defaults: Any) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in (*betas, shampoo_beta)):
            raise ValueError(f"betas and shampoo_beta must be in [0, 1), got {betas!r}, {shampoo_beta!r}")
        if not isinstance(precondition_frequency, int) or precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be a positive int, got {precondition_frequency!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps,
                                      weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                                      max_precond_dim=max_precond_dim, **extra_defaults))
        for group in self.param_groups:
            for p in group["params"]:
                as_stack(p)

    _per_expert_extra: tuple[str, ...] = ()   # SOAP-LITE's mask factors
    _STATE = ("exp_avg", "exp_avg_sq", "adam_step", "left", "right", "q_left", "q_right")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = call_closure(closure)
        key = lambda p: (tuple(p.shape[-2:]), p.dtype, p.device, self.state[p].get("step", 0))  # noqa: E731
        for group, params in buckets(self.param_groups, key):
            self._step_bucket(params, group)
        return loss

    def _step_bucket(self, params: list[torch.Tensor], group: dict) -> None:
        """One step of every parameter of one shape, settings and step count, as one stack."""
        states = [self.state[p] for p in params]
        g = concat(stack_views([p.grad for p in params])).float()            # (sum E, m, n)
        if not states[0]:
            self._init_bucket(states, g, group, [p.shape[0] if p.ndim == 3 else 1 for p in params])
            return  # the first gradient only builds the bases (as in SOAP)
        state = {k: None if states[0][k] is None else concat([s[k] for s in states])
                 for k in self._STATE + self._per_expert_extra}
        keys = [k for k, v in state.items() if v is not None]
        state["step"] = states[0]["step"]
        weights = stack_views(params)
        w = concat(weights)
        active = bucket_active(params)
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        ql, qr = state["q_left"], state["q_right"]
        g_rot = _rotate(g, ql, qr)
        m = state["exp_avg"] * beta1 + g * (1 - beta1)
        v = state["exp_avg_sq"] * beta2 + g_rot.square() * (1 - beta2)
        t = keep_idle(active, state["adam_step"] + 1, state["adam_step"]).view(-1, 1, 1)
        denom = v.sqrt() / (1 - beta2 ** t).sqrt() + group["eps"]
        step_rot = _rotate(m, ql, qr) / (1 - beta1 ** t) / denom
        step_rot, flat_decay = self._lite(step_rot, g_rot / denom, v, w, state, group, active)
        new_w = w.float() * (1 - lr * wd)
        if flat_decay is not None:
            new_w = new_w - flat_decay
        new_w = new_w - lr * _rotate_back(step_rot, ql, qr)
        copy_rows(weights, keep_idle(active, new_w.to(w.dtype), w))
        state["exp_avg"].copy_(keep_idle(active, m, state["exp_avg"]))
        state["adam_step"].copy_(t.view(-1))
        self._update_bases(state, g, v, group, active)
        for k in keys:
            copy_rows([s[k] for s in states], state[k])
        for s in states:
            s["step"] += 1

    def _init_bucket(self, states: list[dict], g: torch.Tensor, group: dict, experts: list[int]) -> None:
        """Build L, R and their eigenbases for the stacked first gradients, then split per parameter."""
        built: dict = {}
        self._init_state(built, g, group)
        for key, value in built.items():
            parts = [None] * len(states) if value is None else (
                [value] if len(states) == 1 else [x.clone() for x in value.split(experts)])
            for s, part in zip(states, parts):
                s[key] = part
        for s in states:
            s["step"] = 1

    def _init_state(self, state: dict, g: torch.Tensor, group: dict) -> None:
        big = group["max_precond_dim"]
        experts, m, n = g.shape
        state["exp_avg"] = torch.zeros_like(g)
        state["exp_avg_sq"] = torch.zeros_like(g)
        state["adam_step"] = torch.zeros(experts, dtype=torch.float32, device=g.device)
        state["left"] = (1 - group["shampoo_beta"]) * (g @ g.mT) if m <= big else None
        state["right"] = (1 - group["shampoo_beta"]) * (g.mT @ g) if n <= big else None
        state["q_left"] = _eigenbasis(state["left"]) if m <= big else None
        state["q_right"] = _eigenbasis(state["right"]) if n <= big else None
        self._init_extra(state, experts, g.device)

    def _init_extra(self, state: dict, experts: int, device: torch.device) -> None:
        pass

    def _update_bases(self, state: dict, g: torch.Tensor, v: torch.Tensor, group: dict,
                      active: torch.Tensor | None) -> None:
        beta = group["shampoo_beta"]
        refresh = (state["step"] % group["precondition_frequency"]) == 0
        for side, key, gram in ((-2, "left", lambda: g @ g.mT), (-1, "right", lambda: g.mT @ g)):
            stat = state[key]
            if stat is None:
                continue
            new_stat = stat * beta + gram() * (1 - beta)
            stat.copy_(keep_idle(active, new_stat, stat))
            if refresh:
                q, v_sorted = _refresh(stat, state["q_" + key], v, side)
                state["q_" + key].copy_(keep_idle(active, q, state["q_" + key]))
                v = keep_idle(active, v_sorted, v)
        state["exp_avg_sq"].copy_(keep_idle(active, v, state["exp_avg_sq"]))

    def _lite(self, step_rot, precond_grad, v, w, state, group, active):
        """(step in the rotated space, extra weight decay or None): plain SOAP has no LITE terms."""
        return step_rot, None


class SOAPLITE(SOAP):
    """SOAP with LITE, our construction (module docstring). Extra arguments (per group): b1, b2
    (b2 >= b1), chi (>= 1), subspace_ratio (in (0, 1)), smooth_ratio, b2_t / chi_t (scheduled; None:
    b2 / chi). Extra state: `upper` / `lower` (fp32 `[E]`, start 1.0 / 0.5). Defaults: b1 = 0, b2 = 1,
    chi = 1, ratio 0.1 (the published MoE setting for Muon-LITE's hidden matrices)."""

    def __init__(self, params: Iterable[Any], lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
                 precondition_frequency: int = 10, max_precond_dim: int = 4096, b1: float = 0.0,
                 b2: float = 1.0, chi: float = 1.0, subspace_ratio: float = 0.1, smooth_ratio: float = 0.1,
                 b2_t: float | None = None, chi_t: float | None = None) -> None:
        if b2 < b1:
            raise ValueError(f"b2 must be >= b1 (Hessian damping), got b1={b1}, b2={b2}")
        if chi < 1.0:
            raise ValueError(f"chi must be >= 1, got {chi}")
        if not 0.0 < subspace_ratio < 1.0:
            raise ValueError(f"subspace_ratio must be in (0, 1), got {subspace_ratio}")
        super().__init__(params, lr, betas, shampoo_beta, eps, weight_decay, precondition_frequency,
                         max_precond_dim, b1=b1, b2=b2, chi=chi, subspace_ratio=subspace_ratio,
                         smooth_ratio=smooth_ratio, b2_t=b2_t, chi_t=chi_t)

    _per_expert_extra = ("upper", "lower")

    def _init_extra(self, state: dict, experts: int, device: torch.device) -> None:
        state["upper"] = torch.ones(experts, dtype=torch.float32, device=device)
        state["lower"] = torch.full((experts,), 0.5, dtype=torch.float32, device=device)

    def _lite(self, step_rot, precond_grad, v, w, state, group, active):
        b1 = group["b1"]
        b2 = group["b2"] if group["b2_t"] is None else group["b2_t"]
        chi = group["chi"] if group["chi_t"] is None else group["chi_t"]
        upper, lower = state["upper"].view(-1, 1, 1), state["lower"].view(-1, 1, 1)
        sharp, new_upper, new_lower = sharpness_mask(v, upper, lower, group["subspace_ratio"],
                                                     group["smooth_ratio"], dims=(-2, -1))
        state["upper"].copy_(keep_idle(active, new_upper, upper).view(-1))
        state["lower"].copy_(keep_idle(active, new_lower, lower).view(-1))
        flat = 1 - sharp
        update = step_rot + b1 * precond_grad + (b2 - b1) * (flat * precond_grad)
        update = update + (chi - 1) * (flat * update)
        ql, qr = state["q_left"], state["q_right"]
        flat_decay = (group["lr"] * group["weight_decay"] * (chi - 1)) * _rotate_back(
            flat * _rotate(w.float(), ql, qr), ql, qr)
        return update, flat_decay
