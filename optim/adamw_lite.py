"""AdamW with LITE for the parameters the matrix optimizers do not take: 1-D weights (norms, biases),
embeddings, the output head and the router (docs/OPTIM.md, "AdamW path with LITE").

The curvature estimate is Adam's second moment v itself: an element is sharp where v is large. The
sharpness mask p in [0, 1] is 1 where `v >= u mean(v)`, 0 where `v < l mean(v)` and linear between; the
factors u, l adapt (x1.05 / x0.95) so that a fraction `subspace_ratio` of the elements is sharp and
about `subspace_ratio + min(1 - subspace_ratio, 0.1)` at least partly sharp. Flat elements (1 - p) get
the learning rate and the weight decay times `chi_t`; there is no damping term. With the LITE terms off
(chi_t = 1 or subspace_ratio >= 1) the arithmetic is `torch.optim.AdamW`'s, op for op. SOAP-LITE uses
the same mask on v in its eigenbasis (`sharpness_mask`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ._stacks import PerParameterOptimizer

MASK_EPS = 1e-12          # (v - lo) / (hi - lo + MASK_EPS)
MASK_GROWTH, MASK_SHRINK = 1.05, 0.95
LOWER_CAP = 0.95          # l <= 0.95 u after each adaptation


def sharpness_mask(v: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, subspace_ratio: float,
                   smooth_ratio: float = 0.1, dims: Sequence[int] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask p (v's shape and dtype) and the adapted (upper, lower) factors.

    `upper` / `lower` broadcast against `v.mean(dims, keepdim=True)` (0-d for a whole tensor, `[E, 1, 1]`
    for a stack of E matrices with dims (-2, -1)); the returned factors have their shapes. The mask
    uses the factors as given; the new factors are for the next step. No host sync."""
    dims = tuple(range(v.ndim)) if dims is None else tuple(dims)
    mean = v.mean(dim=dims, keepdim=True)
    hi, lo = upper * mean, lower * mean
    ramp = ((v - lo) / (hi - lo + MASK_EPS)).clamp(0.0, 1.0)
    p = torch.where(v >= hi, torch.ones_like(v), ramp)
    frac_sharp = (v >= hi).to(v.dtype).mean(dim=dims, keepdim=True).view_as(upper)
    frac_any = (v >= lo).to(v.dtype).mean(dim=dims, keepdim=True).view_as(lower)
    smooth = min(1.0 - subspace_ratio, smooth_ratio)
    new_upper = upper * torch.where(frac_sharp > subspace_ratio, MASK_GROWTH, MASK_SHRINK)
    new_lower = lower * torch.where(frac_any > subspace_ratio + smooth, MASK_GROWTH, MASK_SHRINK)
    return p, new_upper, torch.minimum(new_lower, LOWER_CAP * new_upper)


def lite_active(subspace_ratio: float, chi_t: float) -> bool:
    """Whether the LITE terms change anything: a flat part exists and its ratio is not 1."""
    return subspace_ratio < 1.0 and chi_t != 1.0


class AdamWLITE(PerParameterOptimizer):
    """AdamW (decoupled decay, bias corrections, `denom = sqrt(v) / sqrt(1 - beta2^t) + eps`) with LITE:
    `W <- W (1 - lr wd) - lr wd (chi_t - 1)(1 - p) W - lr/(1 - beta1^t) (1 + (chi_t - 1)(1 - p)) m / denom`.

    Arguments (per group): lr, betas (0.9, 0.99 as in the LITE scripts), eps, weight_decay, chi (>= 1),
    subspace_ratio (1.0: no LITE), smooth_ratio, chi_t (scheduled chi; None: chi). State per parameter:
    `step` (int), `exp_avg`, `exp_avg_sq`, and with subspace_ratio < 1 `upper` / `lower` (0-d fp32,
    start 1.0 / 0.5). Differs from the LITE code in one place: eps is added after the bias correction
    (torch's order) instead of before it."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.1, chi: float = 1.0,
                 subspace_ratio: float = 1.0, smooth_ratio: float = 0.1,
                 chi_t: float | None = None) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}")
        if chi < 1.0:
            raise ValueError(f"chi must be >= 1, got {chi}")
        if not 0.0 < subspace_ratio <= 1.0:
            raise ValueError(f"subspace_ratio must be in (0, 1] (1: no LITE), got {subspace_ratio}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      chi=chi, subspace_ratio=subspace_ratio, smooth_ratio=smooth_ratio,
                                      chi_t=chi_t))

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        grad, state = p.grad, self.state[p]
        ratio = group["subspace_ratio"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if ratio < 1.0:
                state["upper"] = torch.ones((), dtype=torch.float32, device=p.device)
                state["lower"] = torch.full((), 0.5, dtype=torch.float32, device=p.device)
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        chi = group["chi"] if group["chi_t"] is None else group["chi_t"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        lite = lite_active(ratio, chi)
        before_decay = p.clone() if lite else None
        state["step"] += 1
        p.mul_(1 - lr * wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if ratio < 1.0:  # the thresholds adapt even while chi_t = 1 (warm-up)
            sharp, upper, lower = sharpness_mask(exp_avg_sq, state["upper"], state["lower"], ratio,
                                                 group["smooth_ratio"])
            state["upper"].copy_(upper)
            state["lower"].copy_(lower)
        step = state["step"]
        step_size = lr / (1 - beta1 ** step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
        if lite:
            flat = 1 - sharp
            p.add_(flat * before_decay, alpha=-lr * wd * (chi - 1))
            p.addcdiv_(exp_avg * (1 + (chi - 1) * flat), denom, value=-step_size)
        else:
            p.addcdiv_(exp_avg, denom, value=-step_size)
