"""Format agreement across the ranks of a compressed all-to-all: the `check` policy, the signatures
verified per process group, and the header the ranks exchange before the payload moves.

A rank decoding another rank's MXFP4 bytes as FP8 (or rows of another length) would get numbers, not
an error; the header turns such a mismatch into the same exception on every rank. Header: `10 + 2W`
int64 per rank (magic, error flag, policy, wire, scale_mode, chunks, row_elems, raw dtype, row_bytes,
signature digest, then the W input and W output splits), one all-to-all read on the host: a host
sync (on an NCCL-only group a device sync). Policies: "always" checks every call; "first" (default)
the first call of each signature (op, wire, scale_mode, chunks, dtypes, row_elems; not the splits) on
a group; "tagged" as "first" plus a 16-byte tag in every row checked on receipt (comm.exchange);
"never" no call. The signature digest and the policy travel in the header, so ranks that disagree on
either raise at the first check instead of falling out of step.
"""

from __future__ import annotations

import math
import os
import weakref
import zlib
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..quant.formats import FP8Tensor

CHECK_POLICIES = ("always", "first", "never", "tagged")
USES_SIGNATURES = ("first", "tagged")  # the policies that check the first call of each signature only
CHECK_ENV = "MXA2A_CHECK"
DEFAULT_CHECK = "first"

HEADER_MAGIC = 0x6D786132  # "mxa2": guards against a header colliding with some other collective
# Order = order of comparison, so the most basic disagreement is the one reported.
HEADER_FIELDS = ("magic", "error", "check policy", "wire", "scale_mode", "chunks", "row_elems", "raw dtype",
                 "row_bytes", "call signature")
_WIRE_NAMES = {1: "raw", 2: "bf16", 3: "fp8", 4: "mxfp4"}

_env_default: str | None = None
# group -> signatures verified on it; weak keys, so a destroyed group's entries go with it.
_verified: "weakref.WeakKeyDictionary | dict" = weakref.WeakKeyDictionary()


_call_numbers: "weakref.WeakKeyDictionary | dict" = weakref.WeakKeyDictionary()


def next_call_number(group) -> int:
    """1, 2, 3, ... per process group: the call number that check="tagged" puts in every row. Ranks
    that make the same calls on a group count the same; a rank out of step shows as a wrong number."""
    global _call_numbers
    key = group if group is not None else dist.group.WORLD
    try:
        n = _call_numbers.get(key, 0) + 1
        _call_numbers[key] = n
    except TypeError:  # a ProcessGroup without weak references: keep it alive instead
        _call_numbers = dict(_call_numbers)
        n = _call_numbers[key] = _call_numbers.get(key, 0) + 1
    return n


def default_check() -> str:
    """The policy used when `check=None`: `MXA2A_CHECK` (always / first / never), read once per
    process at the first call, else "first"."""
    global _env_default
    if _env_default is None:
        value = os.environ.get(CHECK_ENV, DEFAULT_CHECK).strip().lower() or DEFAULT_CHECK
        if value not in CHECK_POLICIES:
            raise ValueError(f"environment variable {CHECK_ENV} must be one of {CHECK_POLICIES}, "
                             f"got {value!r}")
        _env_default = value
    return _env_default


def resolve_check(check: bool | str | None) -> str:
    """`check` argument -> "always" | "first" | "never"."""
    if check is None:
        return default_check()
    if check is True:
        return "always"
    if check is False:
        return "never"
    if isinstance(check, str) and check in CHECK_POLICIES:
        return check
    raise ValueError(f"check must be None (the default: {CHECK_ENV} or 'first'), True / 'always', "
                     f"'first', 'tagged', or False / 'never', got {check!r}")


def reset_verified() -> None:
    """Forget every verified signature (tests; or after re-creating groups)."""
    _verified.clear()


def _kind(t: object):
    if isinstance(t, FP8Tensor):
        return "FP8Tensor"
    if isinstance(t, torch.Tensor):
        return t.dtype
    return None


def _kinds(ts: Sequence[object]) -> tuple:
    if len(ts) == 1:
        return (_kind(ts[0]),)
    return tuple(sorted({_kind(t) for t in ts}, key=str))


def call_signature(op: str, wire: object, scale_mode: object, chunks: object, inputs: Sequence[object],
                   outputs: Sequence[object]) -> tuple | None:
    """What must be the same on every rank for them to check on the same calls: (op, wire, scale_mode,
    chunks, input kinds, output kinds, row_elems), read from the arguments as given (so that a call whose
    arguments are rejected still has one); None when not even that can be read. `wire` is a name or a
    codec object (the caller passes the resolved codec when there is one, so "mxfp4" and MXFP4Wire()
    are one signature); a kind is a dtype or "FP8Tensor"."""
    if not inputs or not outputs:
        return None
    in_kinds, out_kinds = _kinds(inputs), _kinds(outputs)
    if None in in_kinds or None in out_kinds:
        return None
    shape = inputs[0].shape
    row_elems = math.prod(shape[1:]) if len(shape) >= 1 else -1
    if not isinstance(wire, str):
        try:
            hash(wire)
        except TypeError:
            wire = repr(wire)
    return (op, wire, scale_mode, chunks, in_kinds, out_kinds, row_elems)


def _digest(sig: tuple) -> int:
    return zlib.crc32(repr(sig).encode())


def _verified_on(group) -> set:
    global _verified
    key = group if group is not None else dist.group.WORLD
    try:
        return _verified.setdefault(key, set())
    except TypeError:  # a torch build whose ProcessGroup takes no weak references: keep it alive instead
        _verified = dict(_verified)
        return _verified.setdefault(key, set())


def header_device(group, hint: torch.device | None) -> torch.device:
    """CPU when the group has a CPU backend (gloo, mpi, or 'cpu:gloo,cuda:nccl'), else the CUDA device."""
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        if hint is not None and hint.type == "cuda":
            return hint
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange_header(fields: list[int], world: int, group, device: torch.device) -> list[list[int]]:
    """Every rank's header, by an all-to-all of `world` copies of this rank's (not an all_gather: gloo's
    ring all_gather leaves a rank that is not next to a dead peer waiting for the whole group timeout,
    while in an all-to-all every rank talks to every peer and sees it die). Syncs the host (reads the
    result); on an NCCL-only group this is also a device sync."""
    mine = torch.tensor(fields, dtype=torch.int64, device=device)
    gathered = torch.empty((world, mine.numel()), dtype=torch.int64, device=device)
    dist.all_to_all_single(gathered, mine.expand(world, -1).contiguous(), group=group)
    return gathered.tolist()


def check_headers(op: str, headers: list[list[int]], world: int) -> None:
    """Raise the same exception on every rank when the ranks' headers disagree."""
    bad = [r for r, h in enumerate(headers) if h[0] != HEADER_MAGIC]
    if bad:
        raise RuntimeError(f"{op}: ranks {bad} sent no mxa2a header: every rank of the group must call "
                           f"{op} (not torch.distributed's) at the same time, with the same check policy")
    faulty = [r for r, h in enumerate(headers) if h[1] != 0]
    if faulty:
        raise RuntimeError(f"{op}: rank(s) {faulty} rejected their arguments (see the exception raised "
                           f"there); nothing was exchanged")
    first_policy = CHECK_POLICIES[headers[0][2] - 1] in USES_SIGNATURES
    for i, field in enumerate(HEADER_FIELDS[2:], start=2):
        values = [h[i] for h in headers]
        if len(set(values)) <= 1:
            continue
        if field == "call signature":
            if not first_policy:  # only check="first" needs identical calls (to check on the same ones)
                continue
            raise ValueError(f"{op}: ranks disagree on the call signature (op, input/output dtypes or "
                             f"codec; digests by rank: {values}); with check='first' every rank must make "
                             f"the same call, as the ranks decide from it when to check. Pass check=True "
                             f"to let ranks differ in input/output dtypes")
        if field == "wire":
            values = [_WIRE_NAMES.get(v, f"codec#{v}") for v in values]
        elif field == "scale_mode":
            values = [("-", "floor", "rceil")[v] if 0 <= v <= 2 else v for v in values]
        elif field == "check policy":
            values = [CHECK_POLICIES[v - 1] if 1 <= v <= 3 else v for v in values]
        raise ValueError(f"{op}: ranks disagree on the {field} (by rank: {values}); every rank must "
                         f"use the same check policy, wire format, scale_mode, chunks and row shape")
    base = len(HEADER_FIELDS)
    for i in range(world):
        for j in range(world):
            sent = headers[i][base + j]
            expected = headers[j][base + world + i]
            if sent != expected:
                raise ValueError(f"{op}: rank {i} sends {sent} rows to rank {j} (its input_split_sizes[{j}])"
                                 f" but rank {j} expects {expected} (its output_split_sizes[{i}])")


def agree(op: str, group, world: int, device_hint: torch.device | None, policy: str, sig: tuple | None,
          plan_fields: list[int] | None, in_splits: list[int] | None, out_splits: list[int] | None,
          local_error: BaseException | None) -> None:
    """Apply `policy` to one call: raise the local error, or exchange and compare headers, or neither.

    `plan_fields` = [wire_id, scale_mode_id, chunks, row_elems, raw_dtype, row_bytes] (None when the
    arguments were rejected locally). With "first", a call whose signature was verified on this group
    exchanges nothing: a local error then raises on its own rank only (the others go on into the
    payload exchange, as with torch.distributed). A signature that is new, or that cannot be read
    from the arguments, is checked; it counts as verified only when every rank's header agreed.
    """
    if policy == "never":
        if local_error is not None:
            raise local_error
        return
    verified = None
    if policy in USES_SIGNATURES:
        verified = _verified_on(group)
        if sig is not None and sig in verified:
            if local_error is not None:
                raise local_error
            return
    policy_id = 1 + CHECK_POLICIES.index(policy)
    if local_error is not None or plan_fields is None:
        fields = [HEADER_MAGIC, 1, policy_id] + [0] * (len(HEADER_FIELDS) - 3) + [0] * (2 * world)
    else:
        digest = _digest(sig) if sig is not None else 0
        fields = [HEADER_MAGIC, 0, policy_id] + plan_fields + [digest] + in_splits + out_splits
    headers = exchange_header(fields, world, group, header_device(group, device_hint))
    if local_error is not None:
        raise local_error
    check_headers(op, headers, world)
    if verified is not None and sig is not None:
        verified.add(sig)
