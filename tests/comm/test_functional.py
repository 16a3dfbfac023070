"""mxa2a.comm.functional on 2 gloo ranks: the functional all-to-all returns what torch's exchange of the
quantize-dequantized rows returns, bit for bit, for every group form torch's functional collectives take;
integer / bool tensors travel raw in every entry point; a float tensor the wire cannot encode raises
unless raw_fallback=True; the autograd form's gradient is the reverse exchange with grad_wire; and
torch.compile(fullgraph=True) gives the eager bits, forward and backward."""

from __future__ import annotations

import pytest
import torch
from comm_testing import assert_same_bits, my_splits, qdq, reference_exchange, split_matrix
from dist_testing import run_distributed


def _groups(world: int, device_type: str = "cpu"):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("ep",))
    pg = dist.group.WORLD
    return {"ProcessGroup": pg, "DeviceMesh": mesh, "(mesh, 0)": (mesh, 0), "name": pg.group_name,
            "ranks": list(range(world)), "None": None}


def _functional_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all, all_to_all_single as into
    from mxa2a.comm.functional import all_to_all_single, all_to_all_single_autograd

    groups = _groups(world)
    cases = [("uneven", "mxfp4", torch.float32, "DeviceMesh"), ("zeros", "fp8", torch.bfloat16, "ProcessGroup"),
             ("equal", "bf16", torch.float32, "name"), ("uneven", "raw", torch.bfloat16, "ranks"),
             ("ones", "mxfp4", torch.bfloat16, "(mesh, 0)"), ("uneven", "fp8", torch.float32, "None")]
    for i, (pattern, wire, dt, gname) in enumerate(cases):
        what = f"{pattern}, {wire}, {dt}, group {gname}, rank {rank}, seed {seed}"
        s = split_matrix(pattern, world, seed + i)
        n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=3)
        g = torch.Generator().manual_seed(seed * 31 + i * 7 + rank)
        x = torch.randn(n_in, 2, 128, generator=g).to(dt)
        y = all_to_all_single(x, outs, ins, groups[gname], wire=wire, check=i % 2 == 0)
        assert_same_bits(y, reference_exchange(qdq(x, wire, dt), n_out, outs, ins), what)

        # No codec applies to integers and bools: they travel raw whatever the wire, in every entry point.
        for t in (torch.randint(-2**40, 2**40, (n_in, 3), generator=g), torch.rand(n_in, 5, generator=g) > 0.5):
            want = reference_exchange(t, n_out, outs, ins)
            assert_same_bits(all_to_all_single(t, outs, ins, groups[gname], wire=wire), want, what + " int")
            got = torch.empty_like(want)
            into(got, t, outs, ins, groups[gname], wire=wire)
            assert_same_bits(got, want, what + " int, in place")
            out_list = [torch.empty(n, *t.shape[1:], dtype=t.dtype) for n in (outs or [3] * world)]
            all_to_all(out_list, list(t.split(ins or [3] * world)), groups[gname], wire=wire)
            assert_same_bits(torch.cat(out_list), want, what + " int, list form")

    # A float tensor the wire cannot encode: an error on every rank, unless the caller asks for raw.
    p = torch.randn(4, generator=torch.Generator().manual_seed(seed + rank))  # 1-D probabilities
    with pytest.raises(ValueError, match="blocks of 32"):
        all_to_all_single(p, None, None, groups["DeviceMesh"], wire="mxfp4", check=True)
    assert_same_bits(all_to_all_single(p, None, None, groups["DeviceMesh"], wire="mxfp4", raw_fallback=True),
                     reference_exchange(p, 4, None, None), "raw fallback")

    # Eager results are AsyncCollectiveTensors, as torch's: the exchange is pending until the first use.
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    from mxa2a.comm import functional

    pending = torch._C._distributed_c10d._get_work_registry_size
    for form, can in ((all_to_all_single, functional._CAN_DEFER),
                      (all_to_all_single_autograd, functional._CAN_DEFER_AUTOGRAD)):
        if not can:
            continue
        x = torch.randn(2 * world, 64, generator=g)
        n = pending()
        y = form(x, None, None, groups["DeviceMesh"], wire="mxfp4")
        assert isinstance(y, AsyncCollectiveTensor) and pending() == n + 1, (type(y), pending(), n)
        assert_same_bits(y * 1, reference_exchange(qdq(x, "mxfp4", x.dtype), 2 * world, None, None), "deferred")
        assert pending() == n

    # The autograd form: forward with wire, backward the reverse exchange of the gradient with grad_wire.
    s = split_matrix("uneven", world, seed)
    n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
    for wire, grad_wire in (("mxfp4", "fp8"), ("fp8", "raw"), ("raw", "mxfp4")):
        what = f"autograd {wire}/{grad_wire}, rank {rank}, seed {seed}"
        x = torch.randn(n_in, 256).requires_grad_()
        y = all_to_all_single_autograd(x, outs, ins, groups["DeviceMesh"], wire=wire, grad_wire=grad_wire)
        assert_same_bits(y.detach(), reference_exchange(qdq(x.detach(), wire, x.dtype), n_out, outs, ins), what)
        w = torch.randn(n_out, 256)
        (y * w).sum().backward()
        assert_same_bits(x.grad, reference_exchange(qdq(w, grad_wire, w.dtype), n_in, ins, outs), what + " grad")


def test_functional_matches_torch_exchange_of_quantized_rows(seed):
    run_distributed(_functional_body, 2, seed, timeout_s=240)


def _pending_input_body(rank: int, world: int, seed: int) -> None:
    import mxa2a.comm.functional as F
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    mesh = _groups(world)["DeviceMesh"]
    seen = []
    into = F._all_to_all_single_into

    def recording(out, inp, *args, **kwargs):
        seen.append(type(inp))
        return into(out, inp, *args, **kwargs)

    F._all_to_all_single_into = recording
    try:
        x = torch.randn(2 * world, 128, generator=torch.Generator().manual_seed(seed + rank))
        y = F.all_to_all_single(x, None, None, mesh, wire="fp8")
        pending = y.detach()  # a view op: still an AsyncCollectiveTensor, not waited
        assert isinstance(pending, AsyncCollectiveTensor)
        z = F.all_to_all_single(pending, None, None, mesh, wire="raw") + 0
        want = F.all_to_all_single(y + 0, None, None, mesh, wire="raw") + 0  # of the waited rows
        assert_same_bits(z, want, f"exchange of a pending result, rank {rank}, seed {seed}")
    finally:
        F._all_to_all_single_into = into
    # The codec kernels read the rows' data pointer: they must get the waited rows, never the wrapper.
    assert seen == [torch.Tensor] * 3, seen


def test_pending_result_as_input_is_waited_first(seed):
    run_distributed(_pending_input_body, 2, seed, timeout_s=120)


def _compile_body(rank: int, world: int, seed: int, backend: str, device_type: str = "cpu") -> None:
    from mxa2a.comm.functional import all_to_all_single, all_to_all_single_autograd

    mesh = _groups(world, device_type)["DeviceMesh"]
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    s = split_matrix("uneven", world, seed)
    n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
    counts = torch.tensor(ins, device=device)

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = all_to_all_single(counts, None, None, mesh, wire="mxfp4")  # int64: raw
        y = all_to_all_single_autograd(x * 2, outs, ins, mesh, wire="mxfp4", grad_wire="fp8")
        z = all_to_all_single(y.detach(), ins, outs, mesh, wire="fp8")
        return y, z, c

    # No compiled code from an earlier run of this machine: Inductor's FX graph and AOTAutograd caches do
    # not key on the ops' side-effect mark, and served a backward without the exchange after it changed.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    g = torch.Generator().manual_seed(seed * 13 + rank)
    x0, w = torch.randn(n_in, 128, generator=g).to(device), torch.randn(n_out, 128, generator=g).to(device)
    runs = []
    for f in (step, compiled):
        x = x0.clone().requires_grad_()
        y, z, c = f(x)
        y.backward(w)
        runs.append((y.detach(), z, c, x.grad))
    for name, got, want in zip(("y", "z", "counts", "grad"), runs[1], runs[0]):
        assert_same_bits(got, want, f"{name}, rank {rank}, seed {seed}, backend {backend}")


def test_compiled_fullgraph_gives_the_eager_bits(seed):
    run_distributed(_compile_body, 2, seed, "aot_eager", timeout_s=240)


@pytest.mark.slow
def test_inductor_compiled_gives_the_eager_bits(seed):
    run_distributed(_compile_body, 2, seed, "inductor", timeout_s=600)


@pytest.mark.slow
def test_inductor_keeps_the_exchange_of_a_rank_without_rows():
    """Rank 0 sends nothing and receives 1 row, rank 1 sends 1 + 3 (this seed's split matrix): rank 0's
    compiled backward has an empty result but must still run its exchange, or rank 1 fails in it (what
    Inductor did before the ops were marked side-effectful)."""
    run_distributed(_compile_body, 2, 4294862, "inductor", timeout_s=300)


@pytest.mark.gpu
def test_compiled_gives_the_eager_bits_on_gpu(seed):
    """One GPU, a 1-rank NCCL group: the Triton codecs inside the compiled op, inductor around it."""
    from comm_testing import run_nccl

    run_nccl(_compile_body, 1, seed, "inductor", "cuda")
