"""The fused gate-weighted unpermute (`moe/weighted_unpermute.py`): Triton kernels against their torch
references (interpreter on CPU, the real kernels on CUDA): the forward and `grad_rows` bit for bit,
`grad_gates` within the fp32-accumulation bound of two H-term sums; the forward definition checked by a
slot-by-slot recomputation, and the backward against autograd through the gather and sum."""

from __future__ import annotations

import pytest
import torch

from mxa2a.moe.weighted_unpermute import (weighted_unpermute, weighted_unpermute_backward_reference,
                                          weighted_unpermute_backward_triton, weighted_unpermute_reference,
                                          weighted_unpermute_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
U32 = 2.0 ** -24  # fp32 unit roundoff


def routed_rows(num_tokens: int, top_k: int, hidden: int, dtype: torch.dtype, device: str = "cpu"):
    """Rows in a random send order, their inverse permutation, the permutation and fp32 gates."""
    rows = torch.randn(num_tokens * top_k, hidden) * torch.exp2(torch.randint(-20, 20, (num_tokens * top_k, 1)).float())
    permutation = torch.randperm(num_tokens * top_k)
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel())
    gates = torch.rand(num_tokens, top_k)
    return (rows.to(dtype).to(device), inverse.to(device), permutation.to(device), gates.to(device))


def token_grads(num_tokens: int, hidden: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """grad_y `[T, H]`: normal values scaled by a power of two per token."""
    scale = torch.exp2(torch.randint(-20, 20, (num_tokens, 1)).float())
    return (torch.randn(num_tokens, hidden) * scale).to(dtype).to(device)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bits, except that NaN only has to be NaN (torch's own fp32 -> bf16 casts give NaN payloads
    that depend on the code path: 0xFFFF on CPU)."""
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    ia, ib = (t.view(bits)[~torch.isnan(t)] for t in (a, b))
    assert torch.equal(ia, ib), f"{(ia != ib).sum().item()} elements differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 1, 64), (7, 3, 1024 + 96), (4, 6, 2048)])
def test_kernel_equals_reference_bit_for_bit(seed, dtype, shape):
    rows, inverse, _, gates = routed_rows(*shape, dtype, DEVICE)
    want = weighted_unpermute_reference(rows.cpu(), inverse.cpu(), gates.cpu())
    assert_same_bits(weighted_unpermute_triton(rows, inverse, gates), want)


def test_reference_is_the_slot_order_definition(seed):
    rows, inverse, _, gates = routed_rows(6, 4, 96, torch.bfloat16)
    got = weighted_unpermute_reference(rows, inverse, gates)
    for t in range(6):
        acc = rows[inverse[t * 4]].float() * gates[t, 0]
        for s in range(1, 4):
            acc = acc + rows[inverse[t * 4 + s]].float() * gates[t, s]
        assert_same_bits(got[t], acc.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_special_values_keep_their_meaning(seed, dtype):
    rows, inverse, _, gates = routed_rows(3, 2, 64, dtype, DEVICE)
    rows[inverse[0], 5] = float("nan")          # token 0: NaN stays NaN
    rows[inverse[2], :] = -0.0                  # token 1: -0 * g + -0 * g is -0, not +0
    rows[inverse[3], :] = -0.0
    rows[inverse[4], 7] = float("inf")          # token 2: Inf stays Inf
    got = weighted_unpermute_triton(rows, inverse, gates).cpu()
    assert torch.isnan(got[0, 5]) and torch.isfinite(got[0, :5]).all()
    assert torch.equal(torch.signbit(got[1]), torch.ones(64, dtype=torch.bool))
    assert got[2, 7] == float("inf")
    assert_same_bits(got, weighted_unpermute_reference(rows.cpu(), inverse.cpu(), gates.cpu()))


def test_backward_equals_autograd_of_the_gather_and_sum(seed):
    rows, inverse, permutation, gates = routed_rows(9, 3, 128, torch.float32)
    rows.requires_grad_(True)
    gates.requires_grad_(True)
    probe = torch.randn(9, 128)
    (weighted_unpermute(rows, inverse, permutation, gates) * probe).sum().backward()
    got_rows, got_gates = rows.grad.clone(), gates.grad.clone()
    rows.grad = gates.grad = None
    slots = rows.index_select(0, inverse).view(9, 3, 128)
    ((slots * gates.unsqueeze(-1)).sum(1) * probe).sum().backward()
    assert torch.equal(got_rows, rows.grad)
    torch.testing.assert_close(got_gates, gates.grad, rtol=1e-6, atol=1e-6)


def test_bad_input_names_the_argument():
    rows, inverse, _, gates = routed_rows(4, 2, 32, torch.float32)
    with pytest.raises(ValueError, match="gates must be fp32"):
        weighted_unpermute_reference(rows, inverse, gates.double())
    with pytest.raises(ValueError, match="inverse_permutation must be int64"):
        weighted_unpermute_reference(rows, inverse[:-1], gates)
    with pytest.raises(ValueError, match="rows must have T \\* k"):
        weighted_unpermute_reference(rows[:-1], inverse, gates)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        weighted_unpermute_reference(rows.t(), inverse, gates)


def assert_grad_gates_within_bound(got: torch.Tensor, want: torch.Tensor, rows: torch.Tensor,
                                   inverse: torch.Tensor, grad_y: torch.Tensor) -> None:
    """Both sides add the same H fp32 products, each in its own order, so each is within gamma_H of the
    exact sum of them times sum |product| (as `tests/gemm/gemm_data.accumulation_bound`); non-finite
    entries must agree exactly (NaN as NaN)."""
    got, want, rows, inverse, grad_y = (t.cpu() for t in (got, want, rows, inverse, grad_y))
    num_tokens, top_k = want.shape
    hidden = rows.shape[1]
    products = rows.index_select(0, inverse).view(num_tokens, top_k, hidden).float() * grad_y.float().unsqueeze(1)
    gamma = hidden * U32 / (1 - hidden * U32)
    bound = 2 * gamma * products.abs().sum(-1)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN positions differ"
    assert torch.equal(got[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)])
    excess = (got[finite] - want[finite]).abs() - bound[finite]
    assert (excess <= 0).all(), f"{(excess > 0).sum().item()} grad_gates beyond the bound"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(0, 2, 64), (5, 1, 64), (7, 3, 1024 + 96), (4, 6, 2048)])
def test_backward_kernel_equals_reference(seed, dtype, shape):
    rows, inverse, permutation, gates = routed_rows(*shape, dtype, DEVICE)
    grad_y = token_grads(shape[0], shape[2], dtype, DEVICE)
    got_rows, got_gates = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates)
    want_rows, want_gates = weighted_unpermute_backward_reference(grad_y.cpu(), rows.cpu(), inverse.cpu(),
                                                                  permutation.cpu(), gates.cpu())
    assert_same_bits(got_rows, want_rows)
    assert_grad_gates_within_bound(got_gates, want_gates, rows, inverse, grad_y)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_special_values_keep_their_meaning(seed, dtype):
    rows, inverse, permutation, gates = routed_rows(4, 3, 96, dtype, DEVICE)
    grad_y = token_grads(4, 96, dtype, DEVICE)
    grad_y[0, 5] = float("nan")                 # token 0: every slot's row gradient and gate gradient NaN
    grad_y[1, :] = -0.0                         # token 1: row gradients -0, gate gradients 0
    rows[inverse[2 * 3 + 1], 7] = float("inf")  # token 2, slot 1: its gate gradient +-Inf
    rows[inverse[3 * 3 + 2], 9] = float("nan")  # token 3, slot 2: its gate gradient NaN, row gradients finite
    got_rows, got_gates = (t.cpu() for t in weighted_unpermute_backward_triton(grad_y, rows, inverse, gates))
    inv = inverse.cpu()
    assert torch.isnan(got_rows[inv[0:3], 5]).all() and torch.isnan(got_gates[0]).all()
    assert torch.equal(torch.signbit(got_rows[inv[3:6]]), torch.ones(3, 96, dtype=torch.bool))
    assert torch.equal(got_gates[1], torch.zeros(3))
    assert torch.isinf(got_gates[2, 1]) and torch.isfinite(got_gates[2, [0, 2]]).all()
    assert torch.isnan(got_gates[3, 2]) and torch.isfinite(got_rows[inv[9:12]]).all()
    want_rows, want_gates = weighted_unpermute_backward_reference(grad_y.cpu(), rows.cpu(), inv,
                                                                  permutation.cpu(), gates.cpu())
    assert_same_bits(got_rows, want_rows)
    assert_grad_gates_within_bound(got_gates, want_gates, rows, inverse, grad_y)


def test_backward_kernel_computes_only_what_is_asked(seed):
    rows, inverse, _, gates = routed_rows(3, 2, 64, torch.bfloat16, DEVICE)
    grad_y = token_grads(3, 64, torch.bfloat16, DEVICE)
    both = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates)
    rows_only = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates, need_gates=False)
    gates_only = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates, need_rows=False)
    assert rows_only[1] is None and gates_only[0] is None
    assert_same_bits(rows_only[0], both[0])
    assert torch.equal(gates_only[1], both[1])


def test_backward_kernel_reads_strided_grad(seed):
    rows, inverse, permutation, gates = routed_rows(5, 2, 64, torch.float32, DEVICE)
    wide = token_grads(5, 128, torch.float32, DEVICE)
    grad_y = wide[:, ::2]                       # column stride 2
    got_rows, _ = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates)
    want_rows, _ = weighted_unpermute_backward_reference(grad_y.cpu(), rows.cpu(), inverse.cpu(),
                                                         permutation.cpu(), gates.cpu())
    assert_same_bits(got_rows, want_rows)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 6, 2048), (257, 1, 2048 + 96)])
def test_backward_kernel_at_layer_shape_on_gpu(seed, shape):
    rows, inverse, permutation, gates = routed_rows(*shape, torch.bfloat16, "cuda")
    grad_y = token_grads(shape[0], shape[2], torch.bfloat16, "cuda")
    want_rows, want_gates = weighted_unpermute_backward_reference(grad_y, rows, inverse, permutation, gates)
    got_rows, got_gates = weighted_unpermute_backward_triton(grad_y, rows, inverse, gates)
    assert_same_bits(got_rows, want_rows)
    assert_grad_gates_within_bound(got_gates, want_gates, rows, inverse, grad_y)
    rows.requires_grad_(True)
    gates.requires_grad_(True)
    weighted_unpermute(rows, inverse, permutation, gates).backward(grad_y)
    assert_same_bits(rows.grad, want_rows)
    assert torch.equal(gates.grad, got_gates)
