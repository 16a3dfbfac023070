"""mxa2a.integrations.torchtitan on 2 gloo ranks with torchtitan's own RoutedExperts (its
AllToAllTokenDispatcher and GroupedExperts, EP=2), on both of its code paths (spmd_types' list-form
all_to_all, balanced routing because gloo's list form needs equal sizes; the functional
all_to_all_single, uneven routing): all-raw wires give unpatched torchtitan's bits, forward and
backward; lossy wires give the bits of unpatched torchtitan with each exchange's rows (or gradient)
quantize-dequantized by the spec's reference codec."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchtitan")

from comm_testing import assert_same_bits, qdq  # noqa: E402
from dist_testing import run_distributed  # noqa: E402

D, F, E, K, B, L = 128, 64, 4, 2, 2, 8


class _QdqGrad(torch.autograd.Function):
    """Identity forward; backward quantize-dequantizes the gradient (what a gradient wire does)."""

    @staticmethod
    def forward(ctx, y, wire):
        ctx.wire = wire
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return qdq(g, ctx.wire, g.dtype), None


def _qdq_st(x, wire):
    """Forward rows as the wire delivers them, gradient straight through."""
    return x + (qdq(x.detach(), wire, x.dtype) - x).detach()


def _reference_exchange(original, wire, grad_wire):
    def exchange(x, pg, a, b):
        return _QdqGrad.apply(original(_qdq_st(x, wire), pg, a, b), grad_wire)
    return exchange


def _build(world: int, seed: int, mesh):
    from torchtitan.models.common.moe import GroupedExperts, RoutedExperts
    from torchtitan.models.common.token_dispatcher import AllToAllTokenDispatcher

    cfg = RoutedExperts.Config(inner_experts=GroupedExperts.Config(dim=D, hidden_dim=F, num_experts=E // world),
                               token_dispatcher=AllToAllTokenDispatcher.Config(num_experts=E, top_k=K))
    m = cfg.build()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    m.token_dispatcher.wire_meshes(ep_mesh=mesh)
    return m


def _inputs(seed: int, balanced: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g)
    scores = torch.rand(B, L, K, generator=g)
    if balanced:  # one expert on each rank per token: every rank sends B*L rows to every rank
        ids = torch.stack([torch.randint(0, E // 2, (B * L,), generator=g),
                           torch.randint(E // 2, E, (B * L,), generator=g)], -1)
    else:
        ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(B * L)])
    ids = ids.view(B, L, K)
    return x, scores, ids, torch.bincount(ids.flatten(), minlength=E)


def _step(m, x, scores, ids, counts, w):
    """Forward and backward; returns (output, input gradient, weight gradients)."""
    m.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    out = m(xr, scores, ids, counts)
    (out * w).sum().backward()
    return [out.detach(), xr.grad] + [p.grad for p in m.parameters()]


def _body(rank: int, world: int, seed: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torchtitan.distributed.spmd_types import set_spmd_meshes
    from torchtitan.distributed.utils import set_spmd_backend

    from mxa2a.integrations.torchtitan import remove_mxa2a, use_mxa2a

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    set_spmd_meshes(dense_mesh=mesh, sparse_mesh=mesh)
    names = ["output", "input grad", "w1 grad", "w2 grad", "w3 grad"]
    lossy = dict(dispatch="fp8", combine="mxfp4", dispatch_grad="mxfp4", combine_grad="fp8")
    for backend, balanced in (("spmd_types", True), ("functional", False)):
        set_spmd_backend(backend)
        m = _build(world, seed + rank, mesh)
        args = _inputs(seed * 7 + rank, balanced)
        w = torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed + 99 + rank))
        want = _step(m, *args, w)
        assert use_mxa2a(m) == 1
        for name, got, ref in zip(names, _step(m, *args, w), want):
            assert_same_bits(got, ref, f"raw wires, {backend} path, {name}, rank {rank}, seed {seed}")

        use_mxa2a(m, **lossy)
        got = _step(m, *args, w)
        remove_mxa2a(m)
        d = m.token_dispatcher
        d._dispatch_token_exchange = _reference_exchange(d._dispatch_token_exchange, "fp8", "mxfp4")
        d._combine_token_exchange = _reference_exchange(d._combine_token_exchange, "mxfp4", "fp8")
        ref = _step(m, *args, w)
        for name, a, b in zip(names, got, ref):
            assert_same_bits(a, b, f"lossy wires, {backend} path, {name}, rank {rank}, seed {seed}")
        assert not torch.equal(got[0], want[0]), "lossy wires gave the exact output"


def test_torchtitan_dispatcher_on_both_paths(seed):
    run_distributed(_body, 2, seed, timeout_s=300)
