"""On a GPU: an MoE layer driven by a static `DispatchPlan` makes no device->host synchronization in its
forward and backward (`torch.cuda.set_sync_debug_mode("error")` raises on any), gives the same output
as the dynamic path, and captures and replays in a CUDA graph.

EP size 1 on one GPU; EP size 2 over NCCL when two GPUs are present (one process per GPU, spawned as
in `tests/comm/comm_testing.py`). The first call of each layer runs before the debug mode is switched on:
it initializes NCCL communicators and compiles the Triton codecs, which is setup, not the step.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist

from mxa2a.moe import DispatchPlan, MoELayer, MoELayerConfig

pytestmark = pytest.mark.gpu

CASES = [  # (config kwargs, dtype)
    (dict(num_experts=8, top_k=2, n_shared=1), torch.bfloat16),             # grouped GEMM (offsets on device)
    (dict(num_experts=8, top_k=3, use_grouped_mm=False), torch.float32),    # expert loop on host counts
    (dict(num_experts=8, top_k=2, wire="mxfp4", grad_wire="fp8", emulate_wire=True), torch.bfloat16),
    (dict(num_experts=8, top_k=2, n_shared=1, expert_precision="fp8"), torch.bfloat16),  # FP8 experts
    (dict(num_experts=8, top_k=2, n_shared=1, recipe="fp8", emulate_wire=True), torch.bfloat16),
    (dict(num_experts=8, top_k=2, n_shared=1, recipe="fp8-mxfp4", emulate_wire=True), torch.bfloat16),
]


@contextmanager
def sync_debug(mode: str):
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _step(layer, x, probe, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y, _ = layer(x, **kwargs)
    (y.float() * probe).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}


def _plan_for(layer, x, group=None):
    """Route with the layer's own router (setup, may sync), then plan on the host."""
    with torch.no_grad():
        record = layer.router(x)
    ids, gates = record.topk_ids.cpu(), record.gates.cpu()
    return DispatchPlan.build(ids, layer.config.num_experts, group=group, gates=gates, device=x.device), record


def _check_no_sync(layer, x, probe, group=None):
    plan, record = _plan_for(layer, x, group)
    _step(layer, x, probe, plan=plan)                 # warm-up: communicators, Triton compilation
    torch.cuda.synchronize()
    with sync_debug("error"):
        static = _step(layer, x, probe, plan=plan)
    routing = type(record)(record.probs, record.logits, record.topk_ids, plan.gates)
    dynamic = _step(layer, x, probe, routing=routing)  # same routing, per-layer plan (syncs)
    assert torch.equal(static[0], dynamic[0])
    assert torch.equal(static[1], dynamic[1])
    for name in static[2]:
        assert torch.equal(static[2][name], dynamic[2][name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kwargs,dtype", CASES)
def test_static_layer_makes_no_host_sync_ep1(seed, kwargs, dtype):
    dev = torch.device("cuda")
    layer = MoELayer(MoELayerConfig(hidden=256, d_expert=128, **kwargs)).to(dev, dtype)
    x = torch.randn(96, 256, device=dev, dtype=dtype)
    probe = torch.randn(96, 256, device=dev)
    _check_no_sync(layer, x, probe)


def _graph_check(layer, x, probe, x_new, plan):
    """Capture forward + backward with the plan, replay on new input values, compare with eager."""
    static_x = x.detach().clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            layer.zero_grad(set_to_none=True)
            static_x.grad = None
            y, _ = layer(static_x, plan=plan)
            (y.float() * probe).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    layer.zero_grad(set_to_none=True)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, _ = layer(static_x, plan=plan)
        (static_y.float() * probe).sum().backward()
    with torch.no_grad():
        static_x.copy_(x_new)
    graph.replay()
    torch.cuda.synchronize()
    replayed = (static_y.clone(), static_x.grad.clone(),
                {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None})
    eager = _step(layer, x_new, probe, plan=plan)
    tol = dict(rtol=2e-2, atol=2e-2) if x.dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replayed[0], eager[0], **tol)
    torch.testing.assert_close(replayed[1], eager[1], **tol)
    for name, grad in eager[2].items():
        torch.testing.assert_close(replayed[2][name], grad, **tol, msg=f"grad {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kwargs,dtype", CASES)
def test_static_layer_captures_in_a_cuda_graph_ep1(seed, kwargs, dtype):
    dev = torch.device("cuda")
    layer = MoELayer(MoELayerConfig(hidden=256, d_expert=128, **kwargs)).to(dev, dtype)
    x = torch.randn(64, 256, device=dev, dtype=dtype)
    plan, _ = _plan_for(layer, x)
    _graph_check(layer, x, torch.randn(64, 256, device=dev), torch.randn_like(x), plan)


# --- EP size 2 over NCCL ---------------------------------------------------------------------------

def _run_nccl(body, world: int, *args, timeout_s: float = 300.0) -> None:
    from dist_testing import run_distributed
    run_distributed(body, world, *args, backend="nccl", timeout_s=timeout_s, pg_timeout_s=120.0)


def _ep_layer(kwargs: dict, dtype, seed: int) -> MoELayer:
    torch.manual_seed(seed)  # same full weights on every rank, each keeps its experts
    full = MoELayer(MoELayerConfig(hidden=256, d_expert=128, **kwargs))
    layer = MoELayer(MoELayerConfig(hidden=256, d_expert=128, **kwargs), group=dist.group.WORLD)
    local = layer.dispatcher.local_experts
    layer.load_state_dict({k: (v[local.start:local.stop] if k.startswith("experts.") else v)
                           for k, v in full.state_dict().items()})
    return layer.to(torch.device("cuda", torch.cuda.current_device()), dtype)


def _nccl_no_sync_body(rank: int, world: int, seed: int) -> None:
    dev = torch.device("cuda", rank)
    for i, (kwargs, dtype) in enumerate([
            (dict(num_experts=8, top_k=2, n_shared=1), torch.bfloat16),
            (dict(num_experts=8, top_k=2, wire="mxfp4", grad_wire="bf16"), torch.bfloat16),
            (dict(num_experts=8, top_k=3, wire="fp8", use_grouped_mm=False), torch.float32)]):
        layer = _ep_layer(kwargs, dtype, seed + i)
        g = torch.Generator(device=dev).manual_seed(seed + 10 * i + rank)
        x = torch.randn(80 + 16 * rank, 256, device=dev, dtype=dtype, generator=g)
        probe = torch.randn(80 + 16 * rank, 256, device=dev, generator=g)
        _check_no_sync(layer, x, probe, group=dist.group.WORLD)


def _nccl_graph_body(rank: int, world: int, seed: int) -> None:
    dev = torch.device("cuda", rank)
    layer = _ep_layer(dict(num_experts=8, top_k=2, wire="mxfp4"), torch.bfloat16, seed)
    g = torch.Generator(device=dev).manual_seed(seed + rank)
    x = torch.randn(64, 256, device=dev, dtype=torch.bfloat16, generator=g)
    plan, _ = _plan_for(layer, x, dist.group.WORLD)
    _graph_check(layer, x, torch.randn(64, 256, device=dev, generator=g),
                 torch.randn(64, 256, device=dev, dtype=torch.bfloat16, generator=g), plan)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_static_layer_makes_no_host_sync_ep2_nccl(seed):
    _run_nccl(_nccl_no_sync_body, 2, seed)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_static_layer_captures_in_a_cuda_graph_ep2_nccl(seed):
    _run_nccl(_nccl_graph_body, 2, seed)
