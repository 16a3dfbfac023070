"""The losses and metrics of moe/losses.py against hand-computed values and their defining properties."""

import math

import pytest
import torch

from mxa2a.moe import losses


def test_load_balancing_hand_computed():
    # T=2, E=2, k=1: token 0 -> expert 0, token 1 -> expert 0. f = [1, 0], P = [(0.75+0.5)/2, ...]
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    ids = torch.tensor([[0], [0]])
    assert losses.load_balancing_loss(probs, ids).item() == pytest.approx(2 * (1.0 * 0.625 + 0 * 0.375))


def test_load_balancing_is_one_for_uniform_routing():
    num_experts, k = 8, 2
    probs = torch.full((num_experts * 3, num_experts), 1 / num_experts)
    ids = torch.stack([torch.arange(num_experts * 3) % num_experts,
                       (torch.arange(num_experts * 3) + 1) % num_experts], 1)
    assert losses.load_balancing_loss(probs, ids).item() == pytest.approx(1.0)
    assert losses.sequence_balancing_loss(probs.view(3, num_experts, num_experts),
                                          ids.view(3, num_experts, k)).item() == pytest.approx(1.0)


def test_load_balancing_gradient_reaches_probs_only():
    logits = torch.randn(6, 4, requires_grad=True)
    probs = logits.softmax(-1)
    ids = logits.topk(2, -1).indices
    losses.load_balancing_loss(probs, ids).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sequence_balancing_hand_computed():
    # B=2, S=2, E=2, k=1. Sequence 0: both tokens -> expert 1; sequence 1: one token each.
    probs = torch.tensor([[[0.2, 0.8], [0.4, 0.6]], [[0.5, 0.5], [0.9, 0.1]]])
    ids = torch.tensor([[[1], [1]], [[0], [1]]])
    # seq 0: f = [0, 2], P = [0.3, 0.7] -> 1.4; seq 1: f = [1, 1], P = [0.7, 0.3] -> 1.0
    assert losses.sequence_balancing_loss(probs, ids).item() == pytest.approx((1.4 + 1.0) / 2)


def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    expected = (math.log(2) ** 2 + (1 + math.log(2)) ** 2) / 2
    assert losses.z_loss(logits).item() == pytest.approx(expected)


def test_specialization_zero_for_orthogonal_one_for_parallel():
    eye = torch.eye(4)
    orthogonal = eye[:3].unsqueeze(0).repeat(5, 1, 1)                  # (T=5, k=3, D=4)
    assert losses.specialization_loss(orthogonal).item() == pytest.approx(0.0)
    parallel = torch.randn(5, 1, 4).repeat(1, 3, 1) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1)
    assert losses.specialization_loss(parallel).item() == pytest.approx(1.0, rel=1e-6)
    antiparallel = parallel * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1)
    assert losses.specialization_loss(antiparallel).item() == pytest.approx(1.0, rel=1e-6)


def test_specialization_hand_computed_and_scale_invariant(seed):
    # One token, k=2: z_a = (1, 0), z_b = (1, 1): cos^2 = 1/2 for both ordered pairs.
    z = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert losses.specialization_loss(z).item() == pytest.approx(0.5)
    z = torch.randn(7, 3, 16)
    scale = torch.rand(7, 3, 1) * 10 + 0.1
    assert torch.allclose(losses.specialization_loss(z), losses.specialization_loss(z * scale), rtol=1e-5)
    # mean over layers
    z2 = torch.randn(7, 3, 16)
    both = losses.specialization_loss([z, z2])
    assert torch.allclose(both, (losses.specialization_loss(z) + losses.specialization_loss(z2)) / 2)


def test_specialization_k1_is_zero_with_a_gradient():
    z = torch.randn(4, 1, 8, requires_grad=True)
    value = losses.specialization_loss(z)
    value.backward()
    assert value.item() == 0.0 and z.grad is not None


def test_coupling_hand_computed_and_bounds(seed):
    p1 = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    p2 = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.3, 0.4]])
    ids1, ids2 = torch.tensor([[0], [2]]), torch.tensor([[1], [2]])
    # m1 = [0.5, 0.8], m2 = [0.2, 0.4] -> -(0.1 + 0.32) / 2
    assert losses.cross_layer_coupling_loss([p1, p2], [ids1, ids2]).item() == pytest.approx(-0.21)
    layers = [torch.randn(9, 6).softmax(-1) for _ in range(3)]
    ids = [p.topk(2, -1).indices for p in layers]
    value = losses.cross_layer_coupling_loss(layers, ids).item()
    assert -1.0 <= value <= 0.0
    # all mass on the top-k (probability exactly zero elsewhere) -> -1
    onehot = [torch.zeros(9, 6).scatter_(1, i, 0.5) for i in ids]
    assert losses.cross_layer_coupling_loss(onehot, ids).item() == pytest.approx(-1.0)


def test_coupling_gradient_reaches_every_router():
    logits = [torch.randn(5, 4, requires_grad=True) for _ in range(3)]
    probs = [lg.softmax(-1) for lg in logits]
    losses.cross_layer_coupling_loss(probs, [p.topk(2, -1).indices for p in probs]).backward()
    assert all(lg.grad is not None and lg.grad.abs().sum() > 0 for lg in logits)


def test_update_expert_bias_moves_toward_balance():
    bias = torch.zeros(4)
    ids = torch.tensor([[0], [0], [0], [1], [2], [2]])  # c = [3, 1, 2, 0], mean 1.5
    losses.update_expert_bias(bias, ids, rate=0.1)
    assert torch.equal(bias, torch.tensor([-0.1, 0.1, -0.1, 0.1]))
    losses.update_expert_bias(bias, counts=torch.tensor([1.0, 1.0, 1.0, 1.0]), rate=0.1)
    assert torch.equal(bias, torch.tensor([-0.1, 0.1, -0.1, 0.1]))  # sign(0) = 0: no move


def test_metrics_hand_computed():
    assert losses.max_violation(torch.tensor([3, 1, 2, 2])).item() == pytest.approx(1.5)
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert losses.routing_entropy(probs).item() == pytest.approx(math.log(2) / 2)
    z = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert losses.coactivated_cosine(z).item() == pytest.approx(1 / math.sqrt(2))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="probs and topk_ids"):
        losses.load_balancing_loss(torch.rand(4, 3), torch.zeros(5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 2 layers"):
        losses.cross_layer_coupling_loss([torch.rand(4, 3)], [torch.zeros(4, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match="intermediates"):
        losses.specialization_loss(torch.rand(4, 8))
