"""mxa2a.integrations.megatron. On CPU (2 gloo ranks): Megatron-Core's own `token_dispatch` and
`token_combine` bodies of a MoEAlltoAllTokenDispatcher (made without its CUDA-only __init__, with
drop_and_pad set so that no CUDA stream is touched) send their tokens, 1-D probabilities and expert
outputs through mxa2a: each equals torch's exchange of the reference codec's rows, forward and backward;
all-raw wires give unpatched Megatron's bits (equal splits: its uneven path allocates on CUDA); other
calls of the same `all_to_all` stay Megatron's. On one GPU: the real dispatcher end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core")

from comm_testing import assert_same_bits, my_splits, qdq, reference_exchange, split_matrix  # noqa: E402
from dist_testing import run_distributed  # noqa: E402


def _cpu_dispatcher(group, in_splits, out_splits):
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    d = object.__new__(MoEAlltoAllTokenDispatcher)
    d.ep_group, d.drop_and_pad, d.tokens_per_expert = group, True, None
    d.input_splits = None if in_splits is None else np.array(in_splits)
    d.output_splits = None if out_splits is None else np.array(out_splits)
    return d


def _exchange(d, x, p, w_tokens, w_probs, w_out):
    """token_dispatch, an elementwise 'expert', token_combine; backward of a weighted sum."""
    x, p = x.clone().requires_grad_(), p.clone().requires_grad_()
    tokens, probs = d.token_dispatch(x, p)
    back = d.token_combine(tokens * 3)
    ((tokens * w_tokens).sum() + (probs * w_probs).sum() + (back * w_out).sum()).backward()
    return tokens.detach(), probs.detach(), back.detach(), x.grad, p.grad


def _cpu_body(rank: int, world: int, seed: int) -> None:
    import torch.distributed as dist
    from megatron.core.transformer.moe import token_dispatcher as td

    from mxa2a.integrations.megatron import remove_mxa2a, use_mxa2a

    group = dist.group.WORLD
    g = torch.Generator().manual_seed(seed * 11 + rank)
    for pattern in ("equal", "uneven"):
        s = split_matrix(pattern, world, seed)
        n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=3)
        x, p = torch.randn(n_in, 256, generator=g), torch.rand(n_in, generator=g)
        w_t, w_p = torch.randn(n_out, 256, generator=g), torch.randn(n_out, generator=g)
        w_o = torch.randn(n_in, 256, generator=g)
        d = _cpu_dispatcher(group, ins, outs)
        what = f"{pattern}, rank {rank}, seed {seed}"
        if pattern == "equal":  # Megatron's own path runs on CPU only with equal splits
            want = _exchange(d, x, p, w_t, w_p, w_o)
            assert use_mxa2a(d) == 1
            for name, a, b in zip(("tokens", "probs", "combined", "x grad", "p grad"),
                                  _exchange(d, x, p, w_t, w_p, w_o), want):
                assert_same_bits(a, b, f"raw wires vs unpatched, {name}, {what}")
        use_mxa2a(d, dispatch="fp8", dispatch_grad="mxfp4", combine="mxfp4", combine_grad="fp8")
        tokens, probs, back, gx, gp = _exchange(d, x, p, w_t, w_p, w_o)
        sent = qdq(x, "fp8", x.dtype)
        assert_same_bits(tokens, reference_exchange(sent, n_out, outs, ins), "tokens " + what)
        assert_same_bits(probs, reference_exchange(p, n_out, outs, ins), "probs travel raw " + what)
        assert_same_bits(back, reference_exchange(qdq(tokens * 3, "mxfp4", x.dtype), n_in, ins, outs),
                         "combined " + what)
        # d/d(tokens) = w_t + 3 * (reverse exchange of w_o with combine_grad); back to x with dispatch_grad.
        d_tokens = w_t + 3 * reference_exchange(qdq(w_o, "fp8", x.dtype), n_out, outs, ins)
        assert_same_bits(gx, reference_exchange(qdq(d_tokens, "mxfp4", x.dtype), n_in, ins, outs),
                         "x grad " + what)
        assert_same_bits(gp, reference_exchange(w_p, n_in, ins, outs), "p grad " + what)
        remove_mxa2a(d)
        assert "token_dispatch" not in d.__dict__

    # A call no patched dispatcher names stays Megatron's; a block wire for the 1-D probabilities is an error.
    t = torch.randn(2 * world, 8, generator=g)
    assert_same_bits(td.all_to_all(group, t), reference_exchange(t, 2 * world, None, None), "other call")
    d = _cpu_dispatcher(group, None, None)
    use_mxa2a(d, probs="mxfp4")
    with pytest.raises(ValueError, match="blocks of 32"):
        d.token_dispatch(torch.randn(2 * world, 64), torch.rand(2 * world))


def test_megatron_dispatcher_call_sites_on_cpu(seed):
    run_distributed(_cpu_body, 2, seed, timeout_s=300)


def _gpu_dispatcher(group, experts: int, hidden: int, device):
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=1, hidden_size=hidden, num_attention_heads=4, num_moe_experts=experts,
                            moe_router_topk=2, moe_token_dispatcher_type="alltoall", use_cpu_initialization=True)
    pgs = ProcessGroupCollection(ep=group, expt_tp=group, tp_ep=group)
    return MoEAlltoAllTokenDispatcher(experts, list(range(experts)), cfg, pg_collection=pgs)


def _moe_pass(d, x, routing_map, probs, w):
    """Megatron's dispatcher end to end around a per-expert scaling 'expert'; returns output and grads."""
    x, probs = x.clone().requires_grad_(), probs.clone().requires_grad_()
    tokens, p = d.dispatch_preprocess(x, routing_map, probs)
    tokens, p = d.token_dispatch(tokens, p)
    tokens, tokens_per_expert, p = d.dispatch_postprocess(tokens, p)
    scale = torch.repeat_interleave(torch.arange(1, len(tokens_per_expert) + 1, device=x.device, dtype=x.dtype),
                                    torch.as_tensor(tokens_per_expert, device=x.device))
    y = tokens * scale[:, None] * p[:, None].to(x.dtype)
    out = d.combine_postprocess(d.token_combine(d.combine_preprocess(y)))
    (out.float() * w).sum().backward()
    return out.detach(), x.grad, probs.grad


def _gpu_body(rank: int, world: int, seed: int) -> None:
    """EP=1 (a 1-rank NCCL group): Megatron skips its exchange, mxa2a applies the named wire to its own
    rows; rows are quantized row-wise, so fp8 dispatch = unpatched Megatron on fp8-rounded tokens."""
    import torch.distributed as dist

    from mxa2a.integrations.megatron import remove_mxa2a, use_mxa2a

    device = torch.device("cuda", rank)
    group = dist.new_group(list(range(world)))
    T, H, E = 64, 256, 4
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(T, H, generator=g, device=device).to(torch.bfloat16)
    logits = torch.randn(T, E, generator=g, device=device)
    top = logits.topk(2, dim=-1)
    routing_map = torch.zeros(T, E, dtype=torch.bool, device=device).scatter_(1, top.indices, True)
    probs = torch.zeros(T, E, device=device).scatter_(1, top.indices, top.values.softmax(-1))
    w = torch.randn(T, H, generator=g, device=device)
    d = _gpu_dispatcher(group, E, H, device)
    names = ("output", "x grad", "probs grad")
    want = _moe_pass(d, x, routing_map, probs, w)
    use_mxa2a(d)
    for name, a, b in zip(names, _moe_pass(d, x, routing_map, probs, w), want):
        assert_same_bits(a, b, f"gpu raw wires vs unpatched, {name}, seed {seed}")
    use_mxa2a(d, dispatch="fp8")
    got = _moe_pass(d, x, routing_map, probs, w)
    remove_mxa2a(d)
    ref = _moe_pass(d, qdq(x, "fp8", x.dtype), routing_map, probs, w)
    for name, a, b in zip(names, got, ref):
        assert_same_bits(a, b, f"gpu fp8 dispatch vs unpatched on fp8 tokens, {name}, seed {seed}")
    use_mxa2a(d, dispatch="mxfp4", combine="mxfp4", dispatch_grad="fp8", combine_grad="mxfp4")
    lossy = _moe_pass(d, x, routing_map, probs, w)
    err = (lossy[0].float() - want[0].float()).abs().max() / want[0].float().abs().max()
    assert 0 < err < 0.5, f"mxfp4 both ways: relative max error {err}"


@pytest.mark.gpu
def test_megatron_dispatcher_on_one_gpu(seed):
    from comm_testing import run_nccl

    run_nccl(_gpu_body, 1, seed)
