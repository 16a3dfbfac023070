"""Learning-rate, damping and flat-ratio schedules (docs/OPTIM.md, "Schedules"), as small functions of
the step that the training loop applies to the optimizers' param groups.

- `lr_factor`: linear warm-up, then cosine down to `min_lr_ratio`, or warmup-stable-decay (constant,
  then linear down to `min_lr_ratio` over the last `1 - stable_ratio` of the steps).
- `damping_beta2`: `b2_t = b1` during warm-up, linear from b1 to b2 until `T_b = T_f (T - warmup) +
  warmup`, then b2 (`T_f` = 0.5 under cosine, `2 warmup / T` under WSD, unless given).
- `flat_lr_ratio`: `chi_t = 1` during warm-up; under cosine the flat learning rate follows its own
  cosine from `chi lr_max` down to the same `lr_min`, ramped in linearly over `T_f`; under WSD chi.
`apply_schedule(optimizers, step, schedule)` writes `lr` (from each group's `initial_lr`), `b2_t` and
`chi_t` into every group that has them; the optimizers read nothing else from the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

SCHEDULE_KINDS = ("cosine", "wsd")


@dataclass(frozen=True)
class Schedule:
    """`total_steps` T, `warmup_steps`, `kind` ("cosine" or "wsd"), `min_lr_ratio` (lr_min / lr_max),
    `stable_ratio` (WSD: fraction of T before the decay), `flat_warmup` (T_f; None: the default of kind)."""

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    stable_ratio: float = 0.8
    flat_warmup: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {self.warmup_steps}, {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.stable_ratio <= 1.0:
            raise ValueError(f"stable_ratio must be in [0, 1], got {self.stable_ratio}")

    @property
    def t_flat(self) -> float:
        if self.flat_warmup is not None:
            return self.flat_warmup
        return 0.5 if self.kind == "cosine" else 2 * self.warmup_steps / self.total_steps


def _cosine_decay(step: int, s: Schedule) -> float:
    """0.5 (1 + cos(pi progress)) after warm-up, progress in [0, 1]."""
    progress = min(1.0, (step - s.warmup_steps) / (s.total_steps - s.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, s: Schedule) -> float:
    """lr_t / lr_max at 0-based `step`."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "cosine":
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * _cosine_decay(step, s)
    decay_start = max(s.warmup_steps, int(s.stable_ratio * s.total_steps))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, s.total_steps - decay_start))
    return 1.0 - (1.0 - s.min_lr_ratio) * progress


def damping_beta2(step: int, b1: float, b2: float, s: Schedule) -> float:
    """b2_t: b1 through warm-up, linear to b2 at T_b, then b2."""
    t_b = int(s.t_flat * (s.total_steps - s.warmup_steps)) + s.warmup_steps
    if step <= s.warmup_steps:
        return b1
    if step >= t_b:
        return b2
    return b1 + (b2 - b1) * (step - s.warmup_steps) / (t_b - s.warmup_steps)


def flat_lr_ratio(step: int, chi: float, s: Schedule) -> float:
    """chi_t: 1 through warm-up; WSD: chi; cosine: the ratio of the flat cosine (chi lr_max -> lr_min)
    to the main one, capped by the linear ramp `1 + (chi - 1) progress / T_f`."""
    if step <= s.warmup_steps or chi == 1.0:
        return 1.0
    if s.kind == "wsd":
        return chi
    c, lo = _cosine_decay(step, s), s.min_lr_ratio
    ratio = (lo + (chi - lo) * c) / (lo + (1.0 - lo) * c + 1e-9)
    progress = (step - s.warmup_steps) / (s.total_steps - s.warmup_steps)
    return min(ratio, 1.0 + progress * (chi - 1.0) / s.t_flat)


def apply_schedule(optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer], step: int,
                   s: Schedule) -> None:
    """Set `lr`, and `b2_t` / `chi_t` where a group has b2 / chi, for 0-based `step`. The first call
    records each group's `lr` as `initial_lr` (kept in the state_dict, as torch's LR schedulers do)."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    factor = lr_factor(step, s)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
            if "b2" in group and "b1" in group:
                group["b2_t"] = damping_beta2(step, group["b1"], group["b2"], s)
            if "chi" in group:
                group["chi_t"] = flat_lr_ratio(step, group["chi"], s)
