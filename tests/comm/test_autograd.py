"""all_to_all_autograd on 2 gloo ranks: forward equals all_to_all_single with `wire`; backward equals the
reverse exchange (splits swapped) of the incoming gradient with `grad_wire` (straight-through)."""

from __future__ import annotations

import torch
from comm_testing import assert_same_bits, my_splits, qdq, reference_exchange, split_matrix
from dist_testing import run_distributed


def _autograd_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all_autograd, all_to_all_single

    cases = [("uneven", "mxfp4", "raw", torch.float32), ("zeros", "fp8", "mxfp4", torch.float32),
             ("uneven", "mxfp4", "fp8", torch.bfloat16), ("equal", "bf16", "bf16", torch.float32),
             ("uneven", "raw", "mxfp4", torch.bfloat16), ("ones", "raw", "raw", torch.float32)]
    for i, (pattern, wire, grad_wire, dt) in enumerate(cases):
        what = f"{pattern}, wire={wire}, grad_wire={grad_wire}, {dt}, rank {rank}, seed {seed}"
        s = split_matrix(pattern, world, seed + i)
        n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
        g = torch.Generator().manual_seed(seed * 17 + i * 5 + rank)
        x = torch.randn(n_in, 2, 128, generator=g).to(dt).requires_grad_()
        y = all_to_all_autograd(x, outs, ins, wire=wire, grad_wire=grad_wire, check=i % 2 == 0)
        assert y.dtype == dt and y.shape == (n_out, 2, 128) and y.requires_grad, what
        want_y = torch.empty(n_out, 2, 128, dtype=dt)
        all_to_all_single(want_y, x.detach(), outs, ins, wire=wire)
        assert_same_bits(y.detach(), want_y, what + " (forward)")
        assert_same_bits(y.detach(), reference_exchange(qdq(x.detach(), wire, dt), n_out, outs, ins),
                         what + " (forward vs reference)")
        w = torch.randn(n_out, 2, 128, generator=g).to(dt)
        (y * w).sum().backward()
        # d(sum(y*w))/dy = w exactly; its reverse exchange with grad_wire is the gradient of x.
        want_grad = reference_exchange(qdq(w, grad_wire, dt), n_in, ins, outs)
        assert_same_bits(x.grad, want_grad, what + " (backward)")

    # Two exchanges in one graph (there and back, exact wire): the gradient makes the round trip too.
    s = split_matrix("uneven", world, seed)
    n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
    x = torch.randn(n_in, 64).requires_grad_()
    z = all_to_all_autograd(all_to_all_autograd(x, outs, ins, wire="raw") * 2, ins, outs, wire="raw")
    assert torch.equal(z, 2 * x.detach())
    w = torch.randn(n_in, 64)
    (z * w).sum().backward()
    assert torch.equal(x.grad, 2 * w)

    # No gradient wanted: a plain tensor comes back.
    y = all_to_all_autograd(torch.randn(4, 64), None, None)
    assert not y.requires_grad and y.shape == (4, 64)


def test_backward_is_reverse_exchange_of_gradient_with_grad_wire(seed):
    run_distributed(_autograd_body, 2, seed, timeout_s=120)
