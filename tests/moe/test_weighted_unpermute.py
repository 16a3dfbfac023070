"""The fused gate-weighted unpermute (`moe/weighted_unpermute.py`): Triton kernel against its torch
reference bit for bit (interpreter on CPU, the real kernel on CUDA), the definition itself checked by a
slot-by-slot float64-free recomputation, and the backward against autograd through the reference."""

from __future__ import annotations

import pytest
import torch

from mxa2a.moe.weighted_unpermute import (weighted_unpermute, weighted_unpermute_reference,
                                          weighted_unpermute_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def routed_rows(num_tokens: int, top_k: int, hidden: int, dtype: torch.dtype, device: str = "cpu"):
    """Rows in a random send order, their inverse permutation, the permutation and fp32 gates."""
    rows = torch.randn(num_tokens * top_k, hidden) * torch.exp2(torch.randint(-20, 20, (num_tokens * top_k, 1)).float())
    permutation = torch.randperm(num_tokens * top_k)
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel())
    gates = torch.rand(num_tokens, top_k)
    return (rows.to(dtype).to(device), inverse.to(device), permutation.to(device), gates.to(device))


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
