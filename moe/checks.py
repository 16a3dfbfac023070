"""Argument checks shared by the configs and modules of `moe/`.

Configuration is validated where it is built (a frozen dataclass's `__post_init__`, a module's
`__init__`), so that a wrong type or range fails there with the argument's name, not later inside
torch. Python's `bool` is an `int` subclass; these checks refuse it where an int is meant
(`top_k=True`) and refuse ints where a bool is meant (`shared_gate=1`).
"""

from __future__ import annotations

import math
from numbers import Real


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """`value` must be an int (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_bool(value: object, name: str, *, allow_none: bool = False) -> None:
    """`value` must be a bool (or None when `allow_none`)."""
    if isinstance(value, bool) or (allow_none and value is None):
        return
    expected = "a bool or None" if allow_none else "a bool"
    raise TypeError(f"{name} must be {expected}, got {value!r}")


def check_number(value: object, name: str, *, allow_zero: bool = False) -> float:
    """`value` must be a finite real number (not a bool), > 0 (or >= 0 when `allow_zero`)."""
    if (not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value)
            or value < 0 or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)
