"""Helpers shared by the optimizers: a 2-D weight as a stack of one, the idle-expert rule, the step loop.

Muon, Muon-LITE, SOAP and SOAP-LITE see every weight as a stack `[E, out, in]`: a 2-D `nn.Linear`
weight is a stack of one matrix, a `GroupedExperts` weight a stack of E experts (docs/OPTIM.md, "For
this library"). In a stack, an expert whose gradient is exactly zero this step (no token was routed to
it) is idle: its weight and every piece of its state stay as they were, selected on the device with
`torch.where`, so no host sync is needed.
"""

from __future__ import annotations

import torch


def as_stack(t: torch.Tensor) -> torch.Tensor:
    """`[out, in]` -> `[1, out, in]` (a view); `[E, out, in]` unchanged."""
    if t.ndim == 2:
        return t.unsqueeze(0)
    if t.ndim == 3:
        return t
    raise ValueError(f"matrix optimizers take 2-D weights [out, in] or expert stacks [E, out, in], "
                     f"got a parameter of shape {tuple(t.shape)}: give it to AdamW instead")


def active_experts(grad: torch.Tensor) -> torch.Tensor | None:
    """bool `[E, 1, 1]` (True where the expert's gradient has a nonzero entry) for a 3-D stack; None
    (every matrix active) for a 2-D weight."""
    if grad.ndim != 3:
        return None
    return grad.flatten(1).ne(0).any(1).view(-1, 1, 1)


def keep_idle(active: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` where the expert is active, `old` elsewhere (`active` broadcast over the trailing dims)."""
    if active is None:
        return new
    return torch.where(active.view(active.shape[0], *([1] * (new.ndim - 1))), new, old)


def call_closure(closure) -> float | None:
    """torch.optim's closure convention: re-evaluate the loss with gradients enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(group: dict) -> list[torch.Tensor]:
    return [p for p in group["params"] if p.grad is not None]


class PerParameterOptimizer(torch.optim.Optimizer):
    """`step()` calls `_step_param(p, group)` for every parameter that has a gradient."""

    @torch.no_grad()
    def step(self, closure=None) -> float | None:
        loss = call_closure(closure)
        for group in self.param_groups:
            for p in params_with_grad(group):
                self._step_param(p, group)
        return loss

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError
