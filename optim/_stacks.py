"""Helpers shared by the optimizers: a 2-D weight as a stack of one, the idle-expert rule, buckets.

Muon, Muon-LITE, SOAP and SOAP-LITE see every weight as a stack `[E, out, in]`: a 2-D `nn.Linear`
weight is a stack of one matrix, a `GroupedExperts` weight a stack of E experts (docs/OPTIM.md, "For
this library"). In a stack, an expert whose gradient is exactly zero this step (no token was routed to
it) is idle: its weight and every piece of its state stay as they were, selected on the device with
`torch.where`, so no host sync is needed. A step works on buckets: all parameters (of any param group
with the same settings) whose matrices have one shape are concatenated into one stack, stepped with
batched kernels, and split back (`buckets`, `concat`, `copy_rows`), so the kernel count of a step
grows with the number of shapes, not of parameters.
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


def bucket_active(params: list[torch.Tensor]) -> torch.Tensor | None:
    """bool `[sum E, 1, 1]`: the active matrices of a bucket's concatenated stack (a 2-D weight is
    always active); None when the bucket holds no expert stack."""
    if all(p.ndim == 2 for p in params):
        return None
    return concat([torch.ones(1, 1, 1, dtype=torch.bool, device=p.device) if p.ndim == 2
                   else active_experts(p.grad) for p in params])


def keep_idle(active: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` where the expert is active, `old` elsewhere (`active` broadcast over the trailing dims)."""
    if active is None:
        return new
    return torch.where(active.view(active.shape[0], *([1] * (new.ndim - 1))), new, old)


def concat(ts: list[torch.Tensor]) -> torch.Tensor:
    """The stacks `ts` concatenated along dim 0 (the tensor itself when there is one)."""
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def copy_rows(dst: list[torch.Tensor], src: torch.Tensor) -> None:
    """Copy consecutive dim-0 slices of `src` into the tensors `dst` (one foreach kernel)."""
    if len(dst) == 1:
        if dst[0] is not src:
            dst[0].copy_(src)
        return
    torch._foreach_copy_(dst, list(src.split([d.shape[0] for d in dst])))


def stack_views(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [as_stack(t) for t in ts]


def group_settings(group: dict) -> tuple:
    """A hashable key of a param group's settings (everything but its parameters and role)."""
    return tuple(sorted((k, v if not isinstance(v, list) else tuple(v))
                        for k, v in group.items() if k not in ("params", "role")))


def buckets(param_groups: list[dict], key) -> list[tuple[dict, list[torch.Tensor]]]:
    """`(group, params)` for every bucket of parameters with a gradient that share the group settings
    and `key(p)` (e.g. shape, dtype, device), in first-seen order; `group` is the first group of the
    bucket (all its groups have equal settings)."""
    found: dict[tuple, tuple[dict, list[torch.Tensor]]] = {}
    for group in param_groups:
        settings = group_settings(group)
        for p in params_with_grad(group):
            found.setdefault((settings, key(p)), (group, []))[1].append(p)
    return list(found.values())


def call_closure(closure) -> float | None:
    """torch.optim's closure convention: re-evaluate the loss with gradients enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(group: dict) -> list[torch.Tensor]:
    return [p for p in group["params"] if p.grad is not None]
