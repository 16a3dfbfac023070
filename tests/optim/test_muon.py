"""Muon and Muon-LITE (optim/muon.py) against the float64 formulas of docs/OPTIM.md (exact SVD in
place of Newton-Schulz, tests/optim/optim_oracle.py), the chi = 1, b1 = b2 = 0 reduction to Muon, the
per-expert state of stacks and the state_dict round trip.

Bound: the weights after one step differ from the oracle by at most `lr * 0.2 sqrt(max(m, n)) * B`
in spectral norm per matrix, B = 0.01 for Muon (one Newton-Schulz, see test_newton_schulz.py) and
0.03 for Muon-LITE (three Newton-Schulz results times coefficients up to 1.25; measured 0.005; flipping
the sign of b1 moves the weights by 0.5, dropping chi or b2 by 2 or more)."""

from __future__ import annotations

import math

import pytest
import torch

from mxa2a.optim import Muon, MuonLITE

from optim_oracle import idle_expert_is_kept, muon_step, resumes_identically, with_spectrum

LR, WD, THETA = 0.02, 0.1, 0.95


def spectral(x: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(x.double(), ord=2).max().item()


def _gapped_stack(experts: int, m: int, n: int) -> torch.Tensor:
    """Gradients whose 3 top singular values clear tau (s = 1/sqrt(min(m, n)) at step 1) by >= 1.3x."""
    k = min(m, n)
    return torch.stack([with_spectrum(m, n, [3.0, 2.5, 2.0] + torch.linspace(1.0, 0.3, k - 3).tolist())
                        for _ in range(experts)]).float()


@pytest.mark.parametrize("shape", [(24, 16), (3, 16, 24)])
def test_muon_step_matches_float64_formula(seed, shape):
    w0, g = torch.randn(shape), torch.randn(shape)
    p = torch.nn.Parameter(w0.clone())
    p.grad = g.clone()
    opt = Muon([p], lr=LR, momentum=THETA, weight_decay=WD)
    opt.step()
    stack = lambda t: t.reshape(-1, *shape[-2:])  # noqa: E731
    want, mom, _ = muon_step(stack(w0), stack(g), torch.zeros_like(stack(g)), LR, WD, THETA)
    scale = 0.2 * math.sqrt(max(shape[-2:]))
    assert spectral(stack(p.detach()) - want) <= LR * scale * 0.01
    assert torch.allclose(opt.state[p]["momentum"].double(), mom.view(shape), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("m, n", [(20, 12), (12, 20)])
def test_muon_lite_step_matches_float64_formula(seed, m, n):
    lite = dict(b1=-0.25, b2=1.0, chi=2.0)
    w0, g = torch.randn(2, m, n), _gapped_stack(2, m, n)
    p = torch.nn.Parameter(w0.clone())
    p.grad = g.clone()
    opt = MuonLITE([p], lr=LR, momentum=THETA, weight_decay=WD, subspace_ratio=0.1, **lite)
    opt.step()
    s0 = 1 / math.sqrt(min(m, n))
    want, _, p_flat = muon_step(w0, g, torch.zeros_like(g), LR, WD, THETA, dict(lite, s=s0))
    assert spectral(p.detach() - want) <= LR * 0.2 * math.sqrt(max(m, n)) * 0.03
    assert torch.allclose(torch.linalg.matrix_norm(p_flat) ** 2,
                          torch.full((2,), n - 3.0, dtype=torch.float64))  # 3 sharp directions
    # k* = int(0.1 min) + 1 = 2 < 3 sharp directions, so the threshold grows.
    assert torch.allclose(opt.state[p]["threshold"], torch.full((2,), s0 * 1.05))


@pytest.mark.parametrize("shape", [(12, 8), (3, 8, 12)])
def test_muon_lite_with_chi_1_and_no_damping_is_muon_bit_for_bit(seed, shape):
    w0 = torch.randn(shape)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    muon = Muon([a], lr=LR, weight_decay=WD)
    lite = MuonLITE([b], lr=LR, weight_decay=WD, b1=0.0, b2=0.0, chi=1.0)
    for _ in range(3):
        g = torch.randn(shape)
        a.grad, b.grad = g.clone(), g.clone()
        muon.step()
        lite.step()
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("cls", [Muon, MuonLITE])
def test_idle_expert_keeps_weight_and_state(seed, cls):
    states = idle_expert_is_kept(cls, (3, 8, 12), 1, 1, lr=LR, **({"chi": 2.0} if cls is MuonLITE else {}))
    for key, old in states["before"].items():  # the busy experts' state did move
        assert not torch.equal(states["after"][key][0], old[0]), key


def test_expert_stack_steps_like_separate_matrices(seed):
    """Per-expert state: a stack of 3 experts moves as 3 independent 2-D weights would."""
    w0 = torch.randn(3, 10, 6)
    stack = torch.nn.Parameter(w0.clone())
    singles = [torch.nn.Parameter(w0[e].clone()) for e in range(3)]
    opt_stack = MuonLITE([stack], lr=LR, chi=2.0, b1=-0.25)
    opt_single = MuonLITE(singles, lr=LR, chi=2.0, b1=-0.25)
    for _ in range(4):
        g = torch.randn(3, 10, 6) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
        stack.grad = g.clone()
        for e, p in enumerate(singles):
            p.grad = g[e].clone()
        opt_stack.step()
        opt_single.step()
    for e, p in enumerate(singles):
        assert torch.allclose(stack.detach()[e], p.detach(), atol=1e-5)
        assert torch.equal(opt_stack.state[stack]["threshold"][e], opt_single.state[p]["threshold"][0])


@pytest.mark.parametrize("make", [lambda ps: Muon(ps, lr=LR), lambda ps: MuonLITE(ps, lr=LR, chi=2.0, b1=-0.25)],
                         ids=["muon", "muon_lite"])
@pytest.mark.parametrize("shape", [(12, 8), (2, 8, 12)])
def test_state_dict_round_trip_resumes_identically(seed, make, shape):
    assert resumes_identically(make, shape)


def test_muon_rejects_vectors_and_bad_settings():
    with pytest.raises(ValueError, match="AdamW"):
        Muon([torch.nn.Parameter(torch.ones(4))])
    with pytest.raises(ValueError, match="b2 must be >= b1"):
        MuonLITE([torch.nn.Parameter(torch.ones(4, 4))], b1=1.0, b2=0.0)
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.ones(4, 4))], momentum=1.0)


def test_same_shape_parameters_step_as_if_alone(seed):
    """Parameters of one shape are orthogonalized together; each still moves as it would alone."""
    shapes = [(8, 12), (2, 8, 12), (8, 12)]
    w0 = [torch.randn(s) for s in shapes]
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    alone = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = MuonLITE(together, lr=LR, chi=2.0, b1=-0.25)
    opts = [MuonLITE([p], lr=LR, chi=2.0, b1=-0.25) for p in alone]
    for _ in range(3):
        for a, b, s in zip(together, alone, shapes):
            a.grad = torch.randn(s)
            b.grad = a.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(together, alone):
        assert torch.allclose(a.detach(), b.detach(), atol=1e-5)
        assert torch.equal(opt.state[a]["threshold"], [o for o in opts if b in o.state][0].state[b]["threshold"])
