"""The per-token gather-sum of the dispatcher's backward (`moe/gather_sum.py`): the Triton kernel against
its torch reference bit for bit (interpreter on CPU, the real kernel on CUDA), the reference against the
slot-order definition written out, special values, and the dispatcher's gradient on the GPU."""

from __future__ import annotations

import pytest
import torch

from mxa2a.moe.dispatch import ExpertParallelDispatcher
from mxa2a.moe.gather_sum import gather_sum_reference, gather_sum_triton

from test_weighted_unpermute import DEVICE, assert_same_bits, routed_rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0, 2, 64), (5, 1, 64), (7, 3, 1024 + 96), (4, 6, 2048)])
def test_kernel_equals_reference_bit_for_bit(seed, dtype, shape):
    rows, inverse, _, _ = routed_rows(*shape, torch.float32)
    if dtype == torch.float16:
        rows = rows.clamp(-6e4, 6e4)  # routed_rows' scales go past fp16's range
    rows = rows.to(dtype).to(DEVICE)
    inverse = inverse.to(DEVICE)
    want = gather_sum_reference(rows.cpu(), inverse.cpu(), shape[1])
    assert_same_bits(gather_sum_triton(rows, inverse, shape[1]), want)


def test_kernel_reads_strided_rows(seed):
    rows, inverse, _, _ = routed_rows(6, 3, 2 * 80, torch.bfloat16, DEVICE)
    rows = rows[:, 1::2]  # row stride 160, column stride 2
    assert_same_bits(gather_sum_triton(rows, inverse, 3), gather_sum_reference(rows.cpu(), inverse.cpu(), 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_is_the_slot_order_definition(seed, dtype):
    rows, inverse, _, _ = routed_rows(6, 4, 96, dtype)
    got = gather_sum_reference(rows, inverse, 4)
    for t in range(6):
        acc = rows[inverse[t * 4]].float()
        for s in range(1, 4):
            acc = acc + rows[inverse[t * 4 + s]].float()
        assert_same_bits(got[t], acc.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_special_values_keep_their_meaning(seed, dtype):
    rows, inverse, _, _ = routed_rows(4, 2, 64, dtype, DEVICE)
    rows[inverse[0], 5] = float("nan")          # token 0: NaN stays NaN
    rows[inverse[2], :] = -0.0                  # token 1: -0 + -0 is -0, not +0
    rows[inverse[3], :] = -0.0
    rows[inverse[4], 7] = float("inf")          # token 2: Inf stays Inf
    rows[inverse[6], 9] = float("inf")          # token 3: Inf + -Inf is NaN
    rows[inverse[7], 9] = float("-inf")
    got = gather_sum_triton(rows, inverse, 2).cpu()
    assert torch.isnan(got[0, 5]) and torch.isfinite(got[0, :5]).all()
    assert torch.equal(torch.signbit(got[1]), torch.ones(64, dtype=torch.bool))
    assert got[2, 7] == float("inf")
    assert torch.isnan(got[3, 9])
    assert_same_bits(got, gather_sum_reference(rows.cpu(), inverse.cpu(), 2))


def test_bad_input_names_the_argument():
    rows, inverse, _, _ = routed_rows(4, 2, 32, torch.float32)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        gather_sum_reference(rows, inverse, 3)
    with pytest.raises(ValueError, match="inverse_permutation must be int64"):
        gather_sum_reference(rows, inverse[:-1], 2)
    with pytest.raises(ValueError, match="rows must be a floating-point"):
        gather_sum_reference(rows.to(torch.int32), inverse, 2)


@pytest.mark.gpu
def test_kernel_and_dispatcher_gradient_at_layer_shape_on_gpu(seed):
    rows, inverse, _, _ = routed_rows(4096, 6, 2048, torch.bfloat16, "cuda")
    want = gather_sum_reference(rows, inverse, 6)
    assert_same_bits(gather_sum_triton(rows, inverse, 6), want)

    num_tokens, top_k, hidden, experts = 4096, 6, 2048, 64
    ids = torch.rand(num_tokens, experts, device="cuda").topk(top_k, dim=1).indices
    dispatcher = ExpertParallelDispatcher(experts, hidden)
    layout = dispatcher.plan(ids)
    x = torch.randn(num_tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    sent = dispatcher.permute(x, layout)
    grad_rows = torch.randn_like(sent)
    (grad_x,) = torch.autograd.grad(sent, x, grad_rows)
    assert_same_bits(grad_x, gather_sum_reference(grad_rows, layout.inverse_permutation, top_k))
