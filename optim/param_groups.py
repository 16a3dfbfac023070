"""Parameter groups by module type, and the optimizers of each family built from them.

Every trainable parameter gets a role from the module that owns it (docs/OPTIM.md, "For this library"):
`experts` (3-D stacked weights `[E, out, in]`, e.g. `GroupedExperts`), `hidden` (2-D weights of
`nn.Linear`), `router` (`TopKRouter`), `embedding` (`nn.Embedding`), `norm` (LayerNorm, RMSNorm, ...),
`head` (the module passed as `head`; `MoEModel.lm_head` by default), `other` (biases and the rest).
Frozen parameters (a Grouter) are skipped. A parameter shared by two modules (the tied embedding and
head of `MoEModel`) takes the head's role: no LITE, the published setting for the head. The matrix
optimizer (Muon / SOAP, with or without LITE) takes `hidden` and `experts`; AdamW(-LITE) the rest.
The MoE types are recognised without importing `mxa2a.moe` (only if it is already loaded).

Expert parallel: each rank builds its optimizers from its own model, so it steps the experts it holds
(its slice of every stack, with per-expert state) and no optimizer state is exchanged. Replicated
parameters (attention, router, norms, embeddings, shared experts) must see gradients all-reduced over
the data-parallel group BEFORE `step()`: that is the training loop's job (see `sync_gradients` in
examples/train_tiny_moe.py); the optimizers never communicate.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adamw_lite import AdamWLITE
from .muon import Muon, MuonLITE
from .soap import SOAP, SOAPLITE

ROLES = ("experts", "hidden", "router", "embedding", "norm", "head", "other")
MATRIX_ROLES = ("experts", "hidden")
FAMILIES = ("adamw", "muon", "muon_lite", "soap", "soap_lite")

# The published MoE setting (docs/OPTIM.md): b1 = 0, b2 = 1, chi = 1 on hidden matrices, chi = 8 on
# embeddings and norms, subspace ratio 0.1; head and router without LITE.
LITE_DEFAULTS: dict[str, dict[str, float]] = {
    "experts": dict(b1=0.0, b2=1.0, chi=1.0, subspace_ratio=0.1),
    "hidden": dict(b1=0.0, b2=1.0, chi=1.0, subspace_ratio=0.1),
    "embedding": dict(chi=8.0, subspace_ratio=0.1),
    "norm": dict(chi=8.0, subspace_ratio=0.1),
    "head": dict(chi=1.0, subspace_ratio=1.0),
    "router": dict(chi=1.0, subspace_ratio=1.0),
    "other": dict(chi=1.0, subspace_ratio=1.0),
}
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


@dataclass
class ParamGroups:
    """Trainable parameters by role (`params[role]`, `names[role]`, in module order)."""

    params: dict[str, list[nn.Parameter]] = field(default_factory=lambda: {r: [] for r in ROLES})
    names: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in ROLES})

    def groups(self, roles: tuple[str, ...], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """torch param-group dicts, one per non-empty role, each with `settings[role]` and its `role`."""
        return [dict(params=self.params[r], role=r, **settings.get(r, {}))
                for r in roles if self.params[r]]


def _moe_type(module: str, name: str) -> type | None:
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def module_role(module: nn.Module, param: nn.Parameter) -> str:
    """The role of `param`, a direct parameter of `module`, by the module's type and the tensor's rank."""
    router = _moe_type("mxa2a.moe.router", "TopKRouter")
    if router is not None and isinstance(module, router):
        return "router"
    if param.ndim == 3:
        return "experts"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, nn.Linear) and param.ndim == 2:
        return "hidden"
    return "other"


def default_head(model: nn.Module) -> nn.Module | None:
    moe_model = _moe_type("mxa2a.moe.model", "MoEModel")
    return model.lm_head if moe_model is not None and isinstance(model, moe_model) else None


def param_groups(model: nn.Module, head: nn.Module | None = None) -> ParamGroups:
    """Sort `model`'s trainable parameters by role. `head`: the output head (None: `lm_head` of an
    `MoEModel`, else no head role)."""
    head = default_head(model) if head is None else head
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    out, seen = ParamGroups(), set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            role = "head" if id(p) in head_ids else module_role(module, p)
            out.params[role].append(p)
            out.names[role].append(f"{module_name}.{name}" if module_name else name)
    return out


def build_optimizers(model: nn.Module, family: str, lr: float, *, weight_decay: float = 0.1,
                     head: nn.Module | None = None, lite: dict[str, dict[str, float]] | None = None,
                     overrides: dict[str, dict[str, Any]] | None = None) -> list[torch.optim.Optimizer]:
    """The optimizers of one family for `model`: `[matrix optimizer, AdamW(-LITE)]` (either left out
    when it has no parameters), or `[torch.optim.AdamW]` for "adamw".

    `lr` and `weight_decay` apply to every group; `lite` replaces `LITE_DEFAULTS` per role (LITE
    families only); `overrides[role]` is merged last into that role's group (any optimizer argument,
    e.g. `{"router": {"lr": 1e-3}}`)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    groups = param_groups(model, head)
    overrides = overrides or {}
    unknown = set(overrides) - set(ROLES)
    if unknown:
        raise ValueError(f"overrides has unknown roles {sorted(unknown)}; roles are {ROLES}")
    if family == "adamw":
        settings = {r: dict(overrides.get(r, {})) for r in ROLES}
        return [torch.optim.AdamW(groups.groups(ROLES, settings), lr=lr, weight_decay=weight_decay,
                                  betas=(0.9, 0.99))]
    use_lite = family.endswith("_lite")
    table = {**LITE_DEFAULTS, **(lite or {})}
    settings = {}
    for role in ROLES:
        s = dict(lr=lr, weight_decay=weight_decay)
        if use_lite:
            s.update(table[role])
        elif role not in MATRIX_ROLES:
            s.update(subspace_ratio=1.0)
        s.update(overrides.get(role, {}))
        settings[role] = s
    matrix_cls = {"muon": Muon, "muon_lite": MuonLITE, "soap": SOAP, "soap_lite": SOAPLITE}[family]
    rest = tuple(r for r in ROLES if r not in MATRIX_ROLES)
    optimizers: list[torch.optim.Optimizer] = []
    if any(groups.params[r] for r in MATRIX_ROLES):
        optimizers.append(matrix_cls(groups.groups(MATRIX_ROLES, settings), lr=lr))
    if any(groups.params[r] for r in rest):
        optimizers.append(AdamWLITE(groups.groups(rest, settings), lr=lr))
    return optimizers
