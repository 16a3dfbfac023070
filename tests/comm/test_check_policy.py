"""The format check policies of the compressed all-to-all (`mxa2a.comm.header`): "first" (the default)
exchanges the header once per call signature and group, not per call and not per split sizes;
a misconfiguration present from the first call raises on every rank; "always" checks every call,
"never" none; MXA2A_CHECK picks the default. Header exchanges are counted by wrapping
`header.exchange_header` in the spawned ranks."""

from __future__ import annotations

import os

import pytest
import torch
from comm_testing import assert_same_bits, my_splits, qdq, reference_exchange, split_matrix
from dist_testing import run_distributed


def _count_headers() -> list[int]:
    """Wrap the header exchange of this process; returns a one-element counter."""
    from mxa2a.comm import header

    count = [0]
    inner = header.exchange_header

    def counted(*args, **kwargs):
        count[0] += 1
        return inner(*args, **kwargs)

    header.exchange_header = counted
    return count


def _first_body(rank: int, world: int, seed: int) -> None:
    import torch.distributed as dist

    from mxa2a.comm import all_to_all, all_to_all_autograd, all_to_all_single
    from mxa2a.comm.header import default_check

    count = _count_headers()
    assert default_check() == "first"

    def exchange(pattern: str, i: int, wire="mxfp4", dt=torch.float32, h=128, **kw) -> None:
        s = split_matrix(pattern, world, seed + i)
        n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
        g = torch.Generator().manual_seed(seed * 101 + i * 7 + rank)
        x = torch.randn(n_in, h, generator=g).to(dt)
        out = torch.full((n_out, h), float("nan"), dtype=dt)
        all_to_all_single(out, x, outs, ins, wire=wire, **kw)
        want = reference_exchange(qdq(x, wire, dt, kw.get("scale_mode", "rceil")), n_out, outs, ins)
        assert_same_bits(out, want, f"{pattern} {wire} {dt} {kw} call {i}, rank {rank}")

    # One signature, split sizes changing every call: one header, on the first call only.
    for i, pattern in enumerate(("uneven", "zeros", "equal", "uneven", "ones")):
        exchange(pattern, i)
    assert count[0] == 1, count
    exchange("uneven", 10, check="first")  # the explicit policy shares the default's record
    assert count[0] == 1, count
    # Each new signature checks once: dtype, wire, row size, chunks, scale_mode.
    new_signatures = [dict(dt=torch.bfloat16), dict(wire="fp8"), dict(h=256), dict(chunks=2),
                      dict(scale_mode="floor"), dict(wire="raw")]
    for j, kw in enumerate(new_signatures):
        exchange("uneven", 20 + j, **kw)
        exchange("zeros", 40 + j, **kw)
        assert count[0] == 2 + j, (kw, count)
    n = count[0]
    exchange("uneven", 60, check=True)  # debug mode: every call
    exchange("uneven", 61, check="always")
    assert count[0] == n + 2, count
    exchange("uneven", 62, check=False)
    exchange("equal", 63, check="never", wire="fp8", dt=torch.float16)
    assert count[0] == n + 2, count

    # The list variant is another op; autograd forward and backward are all_to_all_single calls.
    s = split_matrix("uneven", world, seed)
    ins = [torch.randn(s[rank][j], 128) for j in range(world)]
    outs = [torch.empty(s[j][rank], 128) for j in range(world)]
    n = count[0]
    all_to_all(outs, ins)
    all_to_all(outs, ins)
    assert count[0] == n + 1, count
    n_in, n_out, i_s, o_s = my_splits(s, rank, world, equal_rows=2)
    x = torch.randn(n_in, 128, requires_grad=True)
    for _ in range(2):
        all_to_all_autograd(x, o_s, i_s, wire="mxfp4", grad_wire="bf16").sum().backward()
    assert count[0] == n + 2, count  # forward = the verified mxfp4 f32 signature; backward (bf16) new

    # Another group: its own record.
    group = dist.new_group(list(range(world)))
    n = count[0]
    for _ in range(2):
        out = torch.empty(4, 128)
        all_to_all_single(out, torch.randn(4, 128), group=group)
    assert count[0] == n + 1, count


def test_first_checks_once_per_signature_and_group_not_per_split(seed):
    run_distributed(_first_body, 2, seed, timeout_s=120)


def _expect(exc_type: type, text: str, fn, what: str) -> None:
    with pytest.raises(exc_type) as info:
        fn()
    assert text in str(info.value), f"{what}: {info.value}"


def _mismatch_body(rank: int, world: int) -> None:
    from mxa2a.comm import all_to_all_single

    count = _count_headers()
    x, out = torch.randn(4, 128), torch.empty(4, 128)

    def call(**kw):
        return lambda: all_to_all_single(out, x, **kw)

    # A misconfiguration from the start is caught at the first call on every rank, and again on the
    # next call (a signature counts as verified only once every rank agreed).
    for attempt in range(2):
        _expect(ValueError, "ranks disagree on the wire (by rank: ['mxfp4', 'fp8'])",
                call(wire=("mxfp4", "fp8")[rank]), f"wire, attempt {attempt}")
    assert count[0] == 2, count
    _expect(ValueError, "ranks disagree on the call signature",
            lambda: all_to_all_single(out.to((torch.float32, torch.bfloat16)[rank]), x), "output dtype")
    _expect(ValueError, "ranks disagree on the check policy (by rank: ['always', 'first'])",
            call(check=("always", "first")[rank]), "policy")
    _expect(ValueError, "ranks disagree on the chunks", call(chunks=(1, 3)[rank]), "chunks")
    # A bad argument on the first call of a signature: raised there, reported on the other rank.
    bad = call(input_split_sizes=[1, 2]) if rank == 1 else call()
    _expect(ValueError if rank == 1 else RuntimeError,
            "input_split_sizes must sum" if rank == 1 else "rank(s) [1] rejected their arguments", bad,
            "first-call local error")
    # The group is fine afterwards, and the signature is verified now.
    n = count[0]
    for _ in range(3):
        all_to_all_single(out, x)
        assert_same_bits(out, reference_exchange(qdq(x, "mxfp4", torch.float32), 4, None, None), "after")
    assert count[0] == n + 1, count


def test_first_call_mismatch_raises_on_every_rank():
    run_distributed(_mismatch_body, 2, timeout_s=120, pg_timeout_s=20)


def _env_body(rank: int, world: int, policy: str, want_headers: int) -> None:
    os.environ["MXA2A_CHECK"] = policy
    from mxa2a.comm import all_to_all_single
    from mxa2a.comm.header import default_check

    count = _count_headers()
    for _ in range(3):
        out = torch.empty(4, 64)
        all_to_all_single(out, torch.randn(4, 64))
    assert default_check() == policy
    assert count[0] == want_headers, count


@pytest.mark.parametrize("policy, want", [("always", 3), ("never", 0)])
def test_environment_variable_sets_the_default_policy(policy, want):
    run_distributed(_env_body, 2, policy, want, timeout_s=60)


def _own_rows_body(rank: int, world: int) -> None:
    from mxa2a.comm import all_to_all_single
    all_to_all_single(torch.empty(2, 64), torch.randn(2, 64))  # verifies the signature
    for check in ("first", False):  # no header: the local check catches it
        with pytest.raises(ValueError,
                           match=r"sends 2 rows to itself \(input_split_sizes\[0\]\) but expects 3"):
            all_to_all_single(torch.empty(3, 64), torch.randn(2, 64), check=check)


def test_rows_to_itself_must_match_rows_from_itself_without_a_header():
    run_distributed(_own_rows_body, 1, timeout_s=60)


def test_resolve_check_and_bad_environment(monkeypatch):
    from mxa2a.comm import header
    assert [header.resolve_check(c) for c in (True, False, "always", "first", "never")] == \
        ["always", "never", "always", "first", "never"]
    with pytest.raises(ValueError, match="check must be None"):
        header.resolve_check("sometimes")
    monkeypatch.setattr(header, "_env_default", None)
    monkeypatch.setenv("MXA2A_CHECK", "often")
    with pytest.raises(ValueError, match="environment variable MXA2A_CHECK must be one of"):
        header.resolve_check(None)
    monkeypatch.setenv("MXA2A_CHECK", "Never")
    assert header.resolve_check(None) == "never"
    monkeypatch.setenv("MXA2A_CHECK", "always")
    assert header.resolve_check(None) == "never"  # read once per process
