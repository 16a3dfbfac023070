"""AdamW with LITE for the parameters the matrix optimizers do not take: 1-D weights (norms, biases),
embeddings, the output head and the router (docs/OPTIM.md, "AdamW path with LITE").

The curvature estimate is Adam's second moment v itself: an element is sharp where v is large. The
sharpness mask p in [0, 1] is 1 where `v >= u mean(v)`, 0 where `v < l mean(v)` and linear between; the
factors u, l adapt (x1.05 / x0.95) so that a fraction `subspace_ratio` of the elements is sharp and
about `subspace_ratio + min(1 - subspace_ratio, 0.1)` at least partly sharp. Flat elements (1 - p) get
the learning rate and the weight decay times `chi_t`; there is no damping term. With the LITE terms off
(chi_t = 1 or subspace_ratio >= 1) the arithmetic is `torch.optim.AdamW`'s, op for op. SOAP-LITE uses
the same mask on v in its eigenbasis (`sharpness_mask`). A step treats all parameters of a param group
at once (torch's foreach kernels, one mask over their concatenated second moments), with no host sync.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

from ._stacks import call_closure, params_with_grad

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
    return _mask(v, upper, lower, lambda x: x.mean(dim=dims, keepdim=True), lambda x: x,
                 subspace_ratio, smooth_ratio)


def segment_sharpness_mask(v: torch.Tensor, lengths: Sequence[int], upper: torch.Tensor, lower: torch.Tensor,
                           subspace_ratio: float, smooth_ratio: float = 0.1,
                           repeats: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sharpness_mask` of each segment of the 1-D `v` (consecutive `lengths`; factors `[S]`) with one
    set of kernels for all segments: segment means as foreach L1 norms (v >= 0) over the segments,
    spread back by `repeat_interleave` (`repeats`: the lengths as an int64 tensor on v's device, to
    reuse; None: made here). No host sync once `repeats` is given."""
    if repeats is None:
        repeats = torch.tensor(list(lengths), dtype=torch.int64, device=v.device)
    sizes, parts = [float(n) for n in lengths], list(lengths)
    mean = lambda x: torch.stack(torch._foreach_div(torch._foreach_norm(x.split(parts), 1), sizes))  # noqa: E731
    spread = lambda x: torch.repeat_interleave(x, repeats, output_size=v.numel())  # noqa: E731
    return _mask(v, upper, lower, mean, spread, subspace_ratio, smooth_ratio)


def _mask(v, upper, lower, mean, spread, subspace_ratio, smooth_ratio):
    """The mask of `sharpness_mask` given how to average over a unit (`mean`) and to broadcast a
    per-unit value back to v's elements (`spread`)."""
    avg = mean(v)
    hi, lo = spread(upper * avg), spread(lower * avg)
    ramp = ((v - lo) / (hi - lo + MASK_EPS)).clamp(0.0, 1.0)
    p = torch.where(v >= hi, torch.ones_like(v), ramp)
    frac_sharp = mean((v >= hi).to(v.dtype)).view_as(upper)
    frac_any = mean((v >= lo).to(v.dtype)).view_as(lower)
    smooth = min(1.0 - subspace_ratio, smooth_ratio)
    new_upper = upper * torch.where(frac_sharp > subspace_ratio, MASK_GROWTH, MASK_SHRINK)
    new_lower = lower * torch.where(frac_any > subspace_ratio + smooth, MASK_GROWTH, MASK_SHRINK)
    return p, new_upper, torch.minimum(new_lower, LOWER_CAP * new_upper)


def lite_active(subspace_ratio: float, chi_t: float) -> bool:
    """Whether the LITE terms change anything: a flat part exists and its ratio is not 1."""
    return subspace_ratio < 1.0 and chi_t != 1.0


class AdamWLITE(torch.optim.Optimizer):
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
        self._repeats: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = call_closure(closure)
        for group in self.param_groups:
            params = params_with_grad(group)
            if params:
                self._step_group(params, group)
        return loss

    def _step_group(self, params: list[torch.Tensor], group: dict) -> None:
        """All parameters of a group at once: foreach arithmetic, one batched mask. No host sync."""
        ratio = group["subspace_ratio"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if ratio < 1.0:
                    state["upper"] = torch.ones((), dtype=torch.float32, device=p.device)
                    state["lower"] = torch.full((), 0.5, dtype=torch.float32, device=p.device)
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        chi = group["chi"] if group["chi_t"] is None else group["chi_t"]
        lite = lite_active(ratio, chi)
        for s in states:
            s["step"] += 1
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        if ratio < 1.0:  # the thresholds adapt even while chi_t = 1 (warm-up)
            flats = self._flat_parts(exp_avg_sqs, states, ratio, group["smooth_ratio"])
        if lite:  # the flat part of the weight before decay, and the step's 1 + (chi - 1)(1 - p)
            flat_weights = torch._foreach_mul(flats, params)
            gains = torch._foreach_mul(flats, chi - 1)
            torch._foreach_add_(gains, 1)
        torch._foreach_mul_(params, 1 - lr * wd)
        steps = [s["step"] for s in states]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [(1 - beta2 ** t) ** 0.5 for t in steps])
        torch._foreach_add_(denom, eps)
        neg_step_sizes = [-(lr / (1 - beta1 ** t)) for t in steps]
        if lite:
            torch._foreach_add_(params, flat_weights, alpha=-lr * wd * (chi - 1))
            torch._foreach_addcdiv_(params, torch._foreach_mul(exp_avgs, gains), denom, neg_step_sizes)
        else:
            torch._foreach_addcdiv_(params, exp_avgs, denom, neg_step_sizes)

    def _flat_parts(self, exp_avg_sqs: list[torch.Tensor], states: list[dict], ratio: float,
                    smooth_ratio: float) -> list[torch.Tensor]:
        """`1 - p` per parameter, from one `sharpness_mask` over the concatenated second moments
        (each parameter its own segment), and the adapted factors written back."""
        uppers, lowers = [s["upper"] for s in states], [s["lower"] for s in states]
        if len(states) == 1:
            sharp, upper, lower = sharpness_mask(exp_avg_sqs[0], uppers[0], lowers[0], ratio, smooth_ratio)
            uppers[0].copy_(upper)
            lowers[0].copy_(lower)
            return [1 - sharp]
        numels = [v.numel() for v in exp_avg_sqs]
        v = torch.cat([x.reshape(-1) for x in exp_avg_sqs])
        key = (v.device, tuple(numels))
        if key not in self._repeats:  # built once per layout: a host-to-device copy syncs
            self._repeats[key] = torch.tensor(numels, dtype=torch.int64, device=v.device)
        sharp, upper, lower = segment_sharpness_mask(v, numels, torch.stack(uppers), torch.stack(lowers),
                                                     ratio, smooth_ratio, self._repeats[key])
        torch._foreach_copy_(uppers, list(upper.unbind()))
        torch._foreach_copy_(lowers, list(lower.unbind()))
        flat = 1 - sharp
        return [part.view_as(x) for part, x in zip(flat.split(numels), exp_avg_sqs)]
