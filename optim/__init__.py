"""mxa2a.optim: Muon, SOAP and AdamW with LITE for MoE training (docs/OPTIM.md). Depends on torch only.

- `newton_schulz`: batched `msign` by Newton-Schulz, the sharp and flat projectors of Muon-LITE.
- `muon`: `Muon`, `MuonLITE` (2-D weights and expert stacks `[E, out, in]`, per-expert state).
- `soap`: `SOAP`, `SOAPLITE` (Adam in the Kronecker eigenbasis; SOAP-LITE is our construction).
- `adamw_lite`: `AdamWLITE` for embeddings, norms, head and router, and the `sharpness_mask`.
- `schedules`: `Schedule`, cosine / warmup-stable-decay learning rate, `b2_t`, `chi_t`, `apply_schedule`.
- `param_groups`: roles by module type (`param_groups`) and `build_optimizers(model, family, lr)`.
Expert parallel: each rank steps the experts it holds; replicated parameters need their gradients
all-reduced before `step()` (the training loop's job; see `param_groups`).
"""

from .adamw_lite import AdamWLITE, sharpness_mask
from .muon import Muon, MuonLITE
from .newton_schulz import flat_projector, newton_schulz, sharp_projector
from .param_groups import FAMILIES, LITE_DEFAULTS, ParamGroups, build_optimizers, param_groups
from .schedules import Schedule, apply_schedule, damping_beta2, flat_lr_ratio, lr_factor
from .soap import SOAP, SOAPLITE

__all__ = [
    "AdamWLITE", "FAMILIES", "LITE_DEFAULTS", "Muon", "MuonLITE", "ParamGroups", "SOAP", "SOAPLITE",
    "Schedule", "apply_schedule", "build_optimizers", "damping_beta2", "flat_lr_ratio", "flat_projector",
    "lr_factor", "newton_schulz", "param_groups", "sharp_projector", "sharpness_mask",
]
