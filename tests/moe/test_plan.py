"""Static dispatch plans (`moe/plan.py`) against the dynamic path, on CPU: EP size 1 in process and EP
size 2 over gloo.

Same routing -> same stable sorts -> the same permutation and row order -> the same floats, so static
and dynamic outputs and gradients are compared with `torch.equal` (bit for bit). Also: the plan's
contents, ranks that receive nothing, one count exchange per step however many layers (counted by
wrapping `torch.distributed.all_to_all_single`: count exchanges are its only int64 calls, payloads
travel as floats or bytes), `check=False` on the static all-to-alls, and the pre-dispatch round trip.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from dist_testing import run_distributed
from mxa2a.moe import (DispatchPlan, Grouter, GrouterConfig, MoELayer, MoELayerConfig, MoEModel,
                       MoEModelConfig, PredispatchLoader, build_plans, predispatch)
from mxa2a.moe import dispatch as dispatch_module
from mxa2a.moe import plan as plan_module
from mxa2a.moe.router import RoutingRecord

LAYOUT_FIELDS = ("num_tokens", "top_k", "permutation", "inverse_permutation", "send_splits", "recv_splits",
                 "regroup", "inverse_regroup", "tokens_per_local_expert", "expert_offsets")


def assert_same_layout(static, dynamic) -> None:
    for name in LAYOUT_FIELDS:
        a, b = getattr(static, name), getattr(dynamic, name)
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            assert a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b), name
        else:
            assert a == b, name
    assert static.static and not dynamic.static
    assert torch.equal(static.token_index, static.permutation // static.top_k)


def run_layer(layer: MoELayer, x: torch.Tensor, probe: torch.Tensor, **kwargs):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y, record = layer(x, **kwargs)
    loss = (y * probe).sum()
    if record.intermediates is not None:
        loss = loss + record.intermediates.square().sum()
    loss.backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


def assert_identical(a, b, what: str) -> None:
    y_a, dx_a, g_a = a
    y_b, dx_b, g_b = b
    assert torch.equal(y_a, y_b), f"{what}: output"
    assert torch.equal(dx_a, dx_b), f"{what}: input grad"
    assert g_a.keys() == g_b.keys(), what
    for name in g_a:
        assert torch.equal(g_a[name], g_b[name]), f"{what}: grad {name}"


def routed(layer: MoELayer, x: torch.Tensor) -> RoutingRecord:
    """The layer's own routing with detached tensors, to hand the same routing to both paths."""
    with torch.no_grad():
        r = layer.router(x)
    return RoutingRecord(r.probs, r.logits, r.topk_ids, r.gates.requires_grad_(True))


# --- EP size 1, in process ---------------------------------------------------------------------------

def test_plan_contents_and_layout_equal_the_dynamic_plan(seed):
    ids = torch.randint(0, 6, (13, 3))
    ids[:, 1] = (ids[:, 0] + 1) % 6  # distinct within a row is not required by the planner; keep it usual
    ids[:, 2] = (ids[:, 0] + 2) % 6
    plan = DispatchPlan.build(ids, 6)
    counts = torch.bincount(ids.reshape(-1), minlength=6)
    assert plan.tokens_per_expert == tuple(counts.tolist())
    layout = plan.layout
    assert sorted(layout.permutation.tolist()) == list(range(39))
    assert torch.equal(layout.inverse_permutation[layout.permutation], torch.arange(39))
    assert sum(layout.send_splits) == sum(layout.recv_splits) == 39
    assert layout.tokens_per_local_expert == tuple(counts.tolist())
    # rows in send order go to non-decreasing experts
    assert torch.all(ids.reshape(-1)[layout.permutation].diff() >= 0)
    dispatcher = MoELayer(MoELayerConfig(hidden=32, d_expert=8, num_experts=6, top_k=3)).dispatcher
    assert_same_layout(layout, dispatcher.plan(ids))
    # numpy uint8 ids (the pre-dispatch storage type) and [B, S, k] give the same plan
    plan_np = DispatchPlan.build(ids.numpy().astype(np.uint8).reshape(1, 13, 3), 6)
    assert_same_layout(plan_np.layout, dispatcher.plan(ids))


@pytest.mark.parametrize("kwargs", [
    dict(num_experts=8, top_k=2, n_shared=1, shared_gate=True),
    dict(num_experts=4, top_k=4, router_mode="sigmoid", return_intermediates=True),
    dict(num_experts=8, top_k=2, wire="mxfp4", grad_wire="fp8", emulate_wire=True, hidden=128),
])
def test_static_equals_dynamic_one_process(seed, kwargs):
    kwargs = {"hidden": 32, "d_expert": 8, **kwargs}
    layer = MoELayer(MoELayerConfig(**kwargs))
    x, probe = torch.randn(11, kwargs["hidden"]), torch.randn(11, kwargs["hidden"])
    record = routed(layer, x)
    plan = DispatchPlan.build(record.topk_ids, kwargs["num_experts"], gates=record.gates)
    dynamic = run_layer(layer, x, probe, routing=record)
    static = run_layer(layer, x, probe, routing=record, plan=plan)
    assert_identical(static, dynamic, "EP=1")
    # the plan's own routing gives the same forward (its gates are a detached copy)
    y_plan, _ = layer(x, plan=plan)
    assert torch.equal(y_plan.detach(), dynamic[0])


def test_plan_errors(seed):
    with pytest.raises(ValueError, match=r"expert ids in \[0, 4\)"):
        DispatchPlan.build(torch.tensor([[0, 4]]), 4)
    with pytest.raises(TypeError, match="integer expert ids"):
        DispatchPlan.build(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match=r"shape \[T, k\]"):
        DispatchPlan.build(torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="gates"):
        DispatchPlan.build(torch.zeros(3, 2, dtype=torch.long), 4, gates=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="list"):
        build_plans(torch.zeros(3, 2, dtype=torch.long), 4)
    layer = MoELayer(MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2))
    plan = DispatchPlan.build(torch.zeros(3, 2, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="plan was built for E=8"):
        layer(torch.randn(3, 32), plan=plan)
    with pytest.raises(ValueError, match="without gates"):
        DispatchPlan.build(torch.zeros(3, 2, dtype=torch.long), 4).routing()
    with pytest.raises(ValueError, match="either plan or layout"):
        p4 = DispatchPlan.build(torch.zeros(3, 2, dtype=torch.long), 4, gates=torch.ones(3, 2))
        layer(torch.randn(3, 32), plan=p4, layout=p4.layout)


def _model_reference(model: MoEModel, ids: torch.Tensor, record: RoutingRecord) -> torch.Tensor:
    """The model's forward with every layer given `record` and its dynamic layout (per layer)."""
    x = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
    for block in model.blocks:
        x = x + block.attn(block.ln_1(x))
        layout = block.moe.dispatcher.plan(record.topk_ids)
        y, _ = block.moe(block.ln_2(x), routing=record, layout=layout)
        x = x + y
    return model.lm_head(model.ln_f(x))


def test_model_static_path_equals_per_layer_dynamic_dispatch(seed):
    cfg = MoEModelConfig(moe=MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2),
                         vocab_size=50, seq_len=8, n_layers=3, n_heads=2, specialization_weight=0.1)
    model = MoEModel(cfg)
    ids = torch.randint(0, 50, (2, 8))
    grouter = Grouter(GrouterConfig(vocab_size=50, num_experts=4, top_k=2, d_model=16, n_layers=1,
                                    n_heads=2, max_seq_len=8))
    g_ids, g_gates = grouter.route(ids)
    plan = DispatchPlan.build(g_ids, 4, gates=g_gates)
    out = model(ids, ids, plan=plan)
    assert set(out.aux_losses) == {"specialization"} and torch.isfinite(out.loss)
    ref = _model_reference(model, ids, plan.routing())
    assert torch.equal(out.logits, ref)
    with pytest.raises(ValueError, match="plan covers"):
        model(ids[:1], plan=plan)
    out.loss.backward()  # gradients reach the experts through the static path
    assert model.blocks[0].moe.experts.w_down.grad.abs().sum() > 0


def test_predispatch_round_trip_gives_the_grouter_plan(seed, tmp_path):
    cfg = GrouterConfig(vocab_size=64, num_experts=8, top_k=2, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
    grouter = Grouter(cfg).freeze()
    tokens = np.random.default_rng(seed).integers(0, 64, size=(6, 8)).astype(np.int32)
    data = predispatch(grouter, tokens, tmp_path / "pd", batch_size=3)
    for b, batch in enumerate(PredispatchLoader(data, batch_size=3)):
        stored = DispatchPlan.build(batch.expert_ids, 8, gates=batch.gates)
        ids, gates = grouter.route(torch.from_numpy(tokens[3 * b:3 * b + 3].astype(np.int64)))
        live = DispatchPlan.build(ids, 8, gates=gates)
        assert torch.equal(stored.topk_ids, live.topk_ids)
        assert torch.equal(stored.gates, live.gates)
        assert torch.equal(stored.send_counts, live.send_counts)
        for name in LAYOUT_FIELDS:
            a, b_ = getattr(stored.layout, name), getattr(live.layout, name)
            assert (torch.equal(a, b_) if isinstance(a, torch.Tensor) else a == b_), name


# --- EP size 2 over gloo ---------------------------------------------------------------------------

class _CountingA2A:
    """Wraps `dist.all_to_all_single`; int64 calls are the count exchanges."""

    def __init__(self) -> None:
        self.inner, self.int64_calls = dist.all_to_all_single, 0

    def __call__(self, output, input, *args, **kwargs):
        if input.dtype == torch.int64:
            self.int64_calls += 1
        return self.inner(output, input, *args, **kwargs)


def _ep_layer(cfg: MoELayerConfig, seed: int) -> MoELayer:
    torch.manual_seed(seed)
    full = MoELayer(replace(cfg, wire="raw", grad_wire="raw"))
    ep = MoELayer(cfg, group=dist.group.WORLD)
    local = ep.dispatcher.local_experts
    ep.load_state_dict({k: (v[local.start:local.stop] if k.startswith("experts.") else v)
                        for k, v in full.state_dict().items()})
    return ep


def _check_static_equals_dynamic(rank: int, ws: int, seed: int) -> None:
    group = dist.group.WORLD
    cases = [dict(num_experts=8, top_k=2, n_shared=1, return_intermediates=True),
             dict(num_experts=4, top_k=3, wire="mxfp4", grad_wire="bf16"),
             dict(num_experts=8, top_k=2, wire="fp8", grad_wire="mxfp4", hidden=128)]
    for i, kwargs in enumerate(cases):
        kwargs = {"hidden": 64, "d_expert": 16, **kwargs}
        layer = _ep_layer(MoELayerConfig(**kwargs), seed + i)
        g = torch.Generator().manual_seed(seed + 100 * i + rank)
        x, probe = torch.randn(7 + rank, kwargs["hidden"], generator=g), torch.randn(7 + rank, kwargs["hidden"], generator=g)
        record = routed(layer, x)
        plan = DispatchPlan.build(record.topk_ids, kwargs["num_experts"], group=group, gates=record.gates)
        dynamic_layout = layer.dispatcher.plan(record.topk_ids)
        assert_same_layout(plan.layout, dynamic_layout)
        # plan contents across ranks: what I send to rank r is what r expects from me
        sends = [None] * ws
        dist.all_gather_object(sends, plan.layout.send_splits)
        assert plan.layout.recv_splits == tuple(sends[s][rank] for s in range(ws))
        assert sum(plan.layout.tokens_per_local_expert) == sum(plan.layout.recv_splits)
        assert plan.recv_counts.sum().item() == sum(plan.layout.recv_splits)
        dynamic = run_layer(layer, x, probe, routing=record)
        checks = []
        inner = dispatch_module.all_to_all_autograd
        dispatch_module.all_to_all_autograd = lambda *a, **k: (checks.append(k["check"]), inner(*a, **k))[1]
        try:
            static = run_layer(layer, x, probe, routing=record, plan=plan)
        finally:
            dispatch_module.all_to_all_autograd = inner
        assert checks and all(c is False for c in checks), checks
        assert_identical(static, dynamic, f"EP=2 case {i}")


def _check_empty_ranks(rank: int, ws: int, seed: int) -> None:
    cfg = MoELayerConfig(hidden=64, d_expert=16, num_experts=4, top_k=2)
    layer = _ep_layer(cfg, seed)
    x, probe = torch.randn(5, 64), torch.randn(5, 64)
    ids = torch.tensor([[0, 1]] * 5)  # every token to rank 0's experts: rank 1 receives nothing
    gates = torch.full((5, 2), 0.5, requires_grad=True)
    record = RoutingRecord(None, None, ids, gates)
    plan = DispatchPlan.build(ids, 4, group=dist.group.WORLD, gates=gates)
    assert plan.layout.send_splits == (10, 0)
    assert plan.layout.recv_splits == ((10, 10) if rank == 0 else (0, 0))
    assert plan.layout.tokens_per_local_expert == ((10, 10) if rank == 0 else (0, 0))
    assert_identical(run_layer(layer, x, probe, routing=record, plan=plan),
                     run_layer(layer, x, probe, routing=record), "empty ranks")
    # a rank with no tokens at all
    n = 0 if rank == 1 else 4
    ids0, g0 = torch.zeros(n, 2, dtype=torch.long), torch.ones(n, 2)
    ids0[:, 1] = 3
    plan0 = DispatchPlan.build(ids0, 4, group=dist.group.WORLD, gates=g0)
    y0, _ = layer(torch.randn(n, 64), plan=plan0)
    assert y0.shape == (n, 64)


def _check_one_exchange_per_step(rank: int, ws: int, seed: int) -> None:
    cfg = MoEModelConfig(moe=MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2, wire_check=False),
                         vocab_size=40, seq_len=6, n_layers=3, n_heads=2)
    torch.manual_seed(seed)
    model = MoEModel(cfg, group=dist.group.WORLD)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(seed + rank))
    grouter = Grouter(GrouterConfig(vocab_size=40, num_experts=4, top_k=2, d_model=16, n_layers=1, n_heads=2,
                                    max_seq_len=6))
    counter = _CountingA2A()
    dist.all_to_all_single = counter
    plan_module.dist.all_to_all_single = counter
    try:
        g_ids, g_gates = grouter.route(ids)
        plan = DispatchPlan.build(g_ids, 4, group=dist.group.WORLD, gates=g_gates)
        out = model(ids, ids, plan=plan)
        out.loss.backward()
        assert counter.int64_calls == 1, counter.int64_calls      # one per step, not one per layer
        counter.int64_calls = 0
        model(ids, ids).loss.backward()
        assert counter.int64_calls == cfg.n_layers                 # the dynamic path: one per layer
        counter.int64_calls = 0
        # several micro-batches of one step: still one exchange, and the same plans as one by one
        more = torch.randint(0, 4, (5, 2))
        plans = build_plans([g_ids, more], 4, group=dist.group.WORLD, gates=[g_gates, torch.ones(5, 2)])
        assert counter.int64_calls == 1
        for a, b in zip(plans, [plan, DispatchPlan.build(more, 4, group=dist.group.WORLD)]):
            assert a.layout.recv_splits == b.layout.recv_splits and torch.equal(a.layout.regroup, b.layout.regroup)
    finally:
        dist.all_to_all_single = counter.inner
        plan_module.dist.all_to_all_single = counter.inner
    # static model output equals every layer running the dynamic dispatcher on the same routing
    assert torch.equal(out.logits, _model_reference(model, ids, plan.routing()))


def _body(rank: int, ws: int, seed: int) -> None:
    _check_static_equals_dynamic(rank, ws, seed)
    _check_empty_ranks(rank, ws, seed)
    _check_one_exchange_per_step(rank, ws, seed)
    with pytest.raises(ValueError, match="EP size 1"):
        MoELayer(MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2), group=dist.group.WORLD)(
            torch.randn(2, 32), plan=DispatchPlan.build(torch.zeros(2, 2, dtype=torch.long), 4,
                                                        gates=torch.ones(2, 2)))


def test_static_dispatch_ep2_gloo(seed):
    run_distributed(_body, 2, seed, timeout_s=150)


def test_static_routing_record_knows_its_expert_count():
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(10)])
    plan = DispatchPlan.build(ids, 8, gates=torch.full((10, 2), 0.5))
    record = plan.routing()
    assert record.probs is None and record.num_experts == 8
    assert torch.equal(record.expert_counts(), torch.bincount(ids.reshape(-1), minlength=8))
