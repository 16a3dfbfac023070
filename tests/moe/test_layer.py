"""MoELayer on one process (EP size 1): against a token-by-token dense reference, router modes,
grouped GEMM path, errors, and where the auxiliary losses send their gradients."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mxa2a.moe import MoELayer, MoELayerConfig, MoEModel, MoEModelConfig, losses


def dense_reference(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_j gates[t, j] * SwiGLU_{ids[t, j]}(x[t]) + shared(x[t]), one token at a time."""
    record = layer.router(x)
    ex = layer.experts
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros(x.shape[1])
        for j in range(record.topk_ids.shape[1]):
            e = record.topk_ids[t, j]
            z = F.silu(ex.w_gate[e] @ x[t]) * (ex.w_up[e] @ x[t])
            acc = acc + record.gates[t, j] * (ex.w_down[e] @ z)
        rows.append(acc)
    y = torch.stack(rows)
    return y + layer.shared(x) if layer.shared is not None else y


@pytest.mark.parametrize("mode,top_k,n_shared,gated", [
    ("softmax", 2, 0, False), ("softmax", 1, 1, True), ("sigmoid", 4, 2, False), ("sigmoid", 3, 1, True)])
def test_layer_matches_dense_reference(seed, mode, top_k, n_shared, gated):
    cfg = MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=top_k, n_shared=n_shared,
                         shared_gate=gated, router_mode=mode, scaling_factor=1.5)
    layer = MoELayer(cfg)
    x = torch.randn(2, 6, 32)
    y, record = layer(x)
    assert y.shape == x.shape and record.topk_ids.shape == (12, top_k)
    torch.testing.assert_close(y.view(12, 32), dense_reference(layer, x.view(12, 32)), rtol=1e-5, atol=1e-6)


def test_router_modes_gates_and_bias(seed):
    cfg = MoELayerConfig(hidden=32, d_expert=8, num_experts=6, top_k=2, router_mode="softmax",
                         scaling_factor=2.5)
    layer = MoELayer(cfg)
    x = torch.randn(10, 32)
    r = layer.router(x)
    logits = x @ layer.router.weight.t()
    top = logits.topk(2, -1)
    torch.testing.assert_close(r.gates, 2.5 * top.values.softmax(-1))
    torch.testing.assert_close(r.probs, logits.softmax(-1))
    assert torch.equal(r.topk_ids, top.indices)

    sig = MoELayer(replace(cfg, router_mode="sigmoid", scaling_factor=1.0, expert_bias=True))
    bias = sig.router.expert_bias
    bias[5] = 100.0  # selection only: expert 5 always chosen, its gate is still its own score
    r = sig.router(x)
    scores = torch.sigmoid(x @ sig.router.weight.t())
    assert (r.topk_ids == 5).any(-1).all()
    chosen = scores.gather(-1, r.topk_ids)
    torch.testing.assert_close(r.gates, chosen / chosen.sum(-1, keepdim=True))
    torch.testing.assert_close(r.probs.sum(-1), torch.ones(10))


def test_grouped_mm_path_matches_loop_with_an_empty_expert(seed):
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm not available")
    cfg = MoELayerConfig(hidden=32, d_expert=16, num_experts=4, top_k=1)
    layer = MoELayer(cfg)
    x = torch.randn(9, 32)
    counts = (3, 0, 4, 2)
    try:
        y_gmm, z_gmm = layer.experts._forward_grouped_mm(x, counts, None, True)
    except RuntimeError as err:  # builds whose _grouped_mm has no CPU kernel
        pytest.skip(f"torch._grouped_mm does not run on CPU here: {err}")
    y_loop, z_loop = layer.experts._forward_loop(x, counts, True)
    torch.testing.assert_close(y_gmm, y_loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_gmm, z_loop, rtol=1e-5, atol=1e-6)


def test_intermediates_are_the_routed_experts_swiglu(seed):
    cfg = MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2, return_intermediates=True)
    layer = MoELayer(cfg)
    x = torch.randn(5, 32)
    _, r = layer(x)
    ex = layer.experts
    for t in range(5):
        for j in range(2):
            e = r.topk_ids[t, j]
            z = F.silu(ex.w_gate[e] @ x[t]) * (ex.w_up[e] @ x[t])
            torch.testing.assert_close(r.intermediates[t, j], z, rtol=1e-5, atol=1e-6)


def test_emulate_raw_wire_is_identity(seed):
    cfg = MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2)
    layer = MoELayer(cfg)
    twin = MoELayer(replace(cfg, emulate_wire=True))
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(6, 32)
    assert torch.equal(layer(x)[0], twin(x)[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_k=5), "top_k"),
    (dict(hidden=48, wire="mxfp4"), "multiple of 32"),
    (dict(hidden=64, wire="fp8"), "multiple of 128"),
    (dict(hidden=64, grad_wire="fp8"), "grad_wire"),
    (dict(wire="fp4"), "wire must be one of"),
    (dict(router_mode="relu"), "router_mode"),
    (dict(expert_bias=True), "sigmoid"),
    (dict(d_expert=0), "d_expert"),
])
def test_bad_config_raises(kwargs, match):
    base = dict(hidden=64, d_expert=8, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match=match):
        MoELayerConfig(**{**base, **kwargs})


def test_hidden_size_mismatch_and_bad_expert_ids_raise():
    layer = MoELayer(MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2))
    with pytest.raises(ValueError, match="hidden=32"):
        layer(torch.randn(3, 16))
    with pytest.raises(ValueError, match="expert ids in"):
        layer.dispatcher.plan(torch.tensor([[0, 4]]))


def _grad_norms(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    blk = model.blocks[-1].moe  # the last layer: nothing downstream of it routes on its experts
    norm = lambda p: 0.0 if p.grad is None else p.grad.abs().sum().item()  # noqa: E731
    return {"router": norm(blk.router.weight), "w_gate": norm(blk.experts.w_gate),
            "w_down": norm(blk.experts.w_down), "attn": norm(model.blocks[0].attn.qkv.weight)}


def test_aux_losses_send_gradients_where_they_should(seed):
    moe = MoELayerConfig(hidden=32, d_expert=16, num_experts=4, top_k=2)
    model = MoEModel(MoEModelConfig(moe=moe, seq_len=8, n_layers=2, n_heads=2, lb_weight=1.0,
                                    seq_lb_weight=1.0, z_weight=1.0, specialization_weight=1.0,
                                    coupling_weight=1.0))
    ids = torch.randint(0, 256, (2, 8))
    out = model(ids, ids)
    aux = out.aux_losses
    assert set(aux) == {"load_balancing", "sequence_balancing", "z", "specialization", "coupling"}
    for name in ("load_balancing", "sequence_balancing", "z", "coupling"):
        g = _grad_norms(model, aux[name])
        assert g["router"] > 0 and g["w_gate"] == 0 and g["w_down"] == 0, (name, g)
    g = _grad_norms(model, aux["specialization"])
    assert g["w_gate"] > 0 and g["router"] == 0 and g["w_down"] == 0, g
    g = _grad_norms(model, out.loss)
    assert all(v > 0 for v in g.values()), g
    total = out.lm_loss + sum(aux.values())
    torch.testing.assert_close(out.loss, total)


def test_update_expert_biases_moves_sigmoid_router(seed):
    moe = MoELayerConfig(hidden=32, d_expert=16, num_experts=4, top_k=1, router_mode="sigmoid",
                         expert_bias=True)
    model = MoEModel(MoEModelConfig(moe=moe, seq_len=8, n_layers=1, n_heads=2))
    out = model(torch.randint(0, 256, (2, 8)))
    model.update_expert_biases(out.records, rate=0.01)
    counts = out.records[0].expert_counts().float()
    expected = 0.01 * torch.sign(counts.mean() - counts)
    assert torch.equal(model.blocks[0].moe.router.expert_bias, expected)


def test_precomputed_routing_and_layout_give_the_same_output(seed):
    """The seam for static plans: routing and layout handed in reproduce the dynamic path exactly."""
    cfg = MoELayerConfig(hidden=32, d_expert=8, num_experts=4, top_k=2, n_shared=1)
    layer = MoELayer(cfg)
    x = torch.randn(7, 32)
    y, record = layer(x)
    layout = layer.dispatcher.plan(record.topk_ids)
    assert sum(layout.tokens_per_local_expert) == 14 and layout.regroup is None
    assert torch.equal(layout.permutation[layout.inverse_permutation], torch.arange(14))
    y2, _ = layer(x, routing=record, layout=layout)
    assert torch.equal(y, y2)


@pytest.mark.gpu
def test_cuda_bf16_grouped_mm_matches_loop(seed):
    cfg = MoELayerConfig(hidden=128, d_expert=64, num_experts=8, top_k=2)
    layer = MoELayer(cfg).cuda()
    loop = MoELayer(replace(cfg, use_grouped_mm=False)).cuda()
    loop.load_state_dict(layer.state_dict())
    x = torch.randn(64, 128, device="cuda", dtype=torch.bfloat16)
    y, _ = layer(x)
    y_loop, _ = loop(x)
    torch.testing.assert_close(y, y_loop, rtol=2e-2, atol=2e-2)


def test_routing_metrics_are_maxvio_entropy_and_cosine_of_the_records(seed):
    """`routing_metrics` (otherwise run only by the slow example test) against the losses it wraps."""
    from mxa2a.moe import routing_metrics

    moe = MoELayerConfig(hidden=32, d_expert=16, num_experts=4, top_k=2)
    model = MoEModel(MoEModelConfig(moe=moe, seq_len=8, n_layers=2, n_heads=2, specialization_weight=1.0))
    records = model(torch.randint(0, 256, (2, 8))).records
    m = routing_metrics(records)
    assert set(m) == {"maxvio/0", "maxvio/1", "entropy", "coactivated_cosine"}
    for layer, r in enumerate(records):
        assert m[f"maxvio/{layer}"] == losses.max_violation(r.expert_counts().float()).item() >= 1.0
    entropy = torch.stack([losses.routing_entropy(r.probs) for r in records]).mean().item()
    assert m["entropy"] == entropy
    cosine = torch.stack([losses.coactivated_cosine(r.intermediates) for r in records]).mean().item()
    assert m["coactivated_cosine"] == cosine
