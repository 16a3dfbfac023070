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


def _compile_body(rank: int, world: int, seed: int, backend: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torchtitan.distributed.spmd_types import set_spmd_meshes

    from mxa2a.integrations.torchtitan import use_mxa2a

    torch._dynamo.config.capture_scalar_outputs = True  # the split sizes are .tolist() values, as in torchtitan
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    set_spmd_meshes(dense_mesh=mesh, sparse_mesh=mesh)
    m = _build(world, seed + rank, mesh)
    args = _inputs(seed * 7 + rank, balanced=False)
    w = torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed + 5 + rank))
    use_mxa2a(m, dispatch="mxfp4", combine="fp8", dispatch_grad="fp8", combine_grad="mxfp4")
    eager = _step(m, *args, w)  # eager: the spmd_types path; compiled: the functional path
    compiled = _step(torch.compile(m, fullgraph=True, backend=backend), *args, w)
    for name, a, b in zip(["output", "input grad", "w1 grad", "w2 grad", "w3 grad"], compiled, eager):
        assert_same_bits(a, b, f"compiled ({backend}) vs eager, {name}, rank {rank}, seed {seed}")


def test_torchtitan_compiled_fullgraph_gives_the_eager_bits(seed):
    run_distributed(_compile_body, 2, seed, "aot_eager", timeout_s=300)


def _inductor_body(rank: int, world: int, seed: int) -> None:
    """Inductor fuses the model's own math differently from eager (bf16 intermediates), so its bits are
    compared with unpatched torchtitan compiled the same way (raw wires), and the lossy wires' error with
    the eager one's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torchtitan.distributed.spmd_types import set_spmd_meshes

    from mxa2a.integrations.torchtitan import remove_mxa2a, use_mxa2a

    from torchtitan.distributed.utils import set_spmd_backend

    torch._dynamo.config.capture_scalar_outputs = True
    # Unpatched torchtitan 0.3.0 does not compile under the spmd_types backend with this torch (dynamo
    # fails on current_spmd_mesh().get_group("ep")): both sides use the functional backend.
    set_spmd_backend("functional")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    set_spmd_meshes(dense_mesh=mesh, sparse_mesh=mesh)
    m = _build(world, seed + rank, mesh)
    args = _inputs(seed * 7 + rank, balanced=False)
    w = torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed + 5 + rank))
    lossy = dict(dispatch="mxfp4", combine="fp8", dispatch_grad="fp8", combine_grad="mxfp4")

    unpatched = _step(torch.compile(m, fullgraph=True), *args, w)
    use_mxa2a(m)
    raw = _step(torch.compile(m, fullgraph=True), *args, w)
    for name, a, b in zip(["output", "input grad", "w1 grad", "w2 grad", "w3 grad"], raw, unpatched):
        assert_same_bits(a, b, f"inductor, raw wires vs unpatched, {name}, rank {rank}, seed {seed}")
    use_mxa2a(m, **lossy)
    torch._dynamo.reset()
    compiled_err = (_step(torch.compile(m, fullgraph=True), *args, w)[0] - raw[0]).abs().max()
    remove_mxa2a(m)
    exact = _step(m, *args, w)[0]
    use_mxa2a(m, **lossy)
    eager_err = (_step(m, *args, w)[0] - exact).abs().max()
    assert compiled_err <= 2 * eager_err, f"rank {rank}: compiled error {compiled_err}, eager {eager_err}"


@pytest.mark.slow
def test_torchtitan_inductor_matches_unpatched_inductor(seed):
    run_distributed(_inductor_body, 2, seed, timeout_s=600)


@pytest.mark.slow
def test_torchtitan_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "torchtitan_ep.py"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), "--tokens", "64", "--dim", "128", "--experts", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = {line.split("  ")[0].strip(): line for line in run.stdout.splitlines() if "rel. error" in line}
    assert "output rel. error 0.00e+00   input grad 0.00e+00" in lines["raw"], run.stdout
    assert "0.00e+00" not in lines["mxfp4 both, fp8 gradients"], run.stdout
