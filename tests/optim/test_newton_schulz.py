"""Newton-Schulz against the SVD: msign, the sharp projector, the flat projector (optim/newton_schulz.py).

Bounds (spectral norm, fp32): the 6-step polynomial maps every singular value >= 1e-3 * 1.01 ||x||_F
into [0.9947, 1.0012] (optim/newton_schulz.py), so ||NS(x) - U V^T||_2 <= 0.0053 + fp32 rounding; we
assert 0.01 for such matrices, random and ill-conditioned (condition number 100)."""

from __future__ import annotations

import pytest
import torch

from mxa2a.optim import flat_projector, newton_schulz, sharp_projector

from optim_oracle import msign, sharp, with_spectrum

NS_BOUND = 0.01


def spectral(x: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(x.double(), ord=2).max().item()


@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (4, 20, 12)])
def test_newton_schulz_matches_svd_on_random_matrices(seed, shape):
    x = torch.randn(shape)
    assert spectral(newton_schulz(x) - msign(x)) <= NS_BOUND


def test_newton_schulz_matches_svd_on_ill_conditioned_matrices(seed):
    sigma = torch.logspace(0, -2, 16).tolist()  # condition number 100: sigma_min / ||x||_F ~ 4e-3
    x = torch.stack([with_spectrum(32, 16, sigma) for _ in range(3)]).float()
    assert spectral(newton_schulz(x) - msign(x)) <= NS_BOUND


def test_newton_schulz_never_amplifies_tiny_singular_values(seed):
    sigma = [1.0] * 4 + [1e-7] * 4
    x = with_spectrum(12, 8, sigma).float()
    s = torch.linalg.svdvals(newton_schulz(x).double())
    assert s.max() <= 1.0012 + 1e-4 and (s[-4:] < 0.5).all()


def test_newton_schulz_of_zero_is_zero():
    assert torch.equal(newton_schulz(torch.zeros(3, 5, 4)), torch.zeros(3, 5, 4))


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(5))


def _gapped(m: int, n: int, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks with singular values 3, 2.5, 2 above tau = 1.4 and the rest in [0.3, 1], gap >= 1.4x."""
    k = min(m, n)
    mats = [with_spectrum(m, n, [3.0, 2.5, 2.0] + torch.linspace(1.0, 0.3, k - 3).tolist())
            for _ in range(experts)]
    return torch.stack(mats).float(), torch.full((experts, 1, 1), 1.4)


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])
def test_sharp_projector_equals_svd_indicator(seed, shape):
    x, tau = _gapped(*shape, experts=3)
    p = sharp_projector(x, newton_schulz(x), tau)
    assert spectral(p - sharp(x, tau)) <= 2 * NS_BOUND


def test_flat_projector_is_symmetric_and_idempotent(seed):
    x, tau = _gapped(20, 12, experts=3)
    pf = flat_projector(sharp_projector(x, newton_schulz(x), tau)).double()
    assert spectral(pf - pf.mT) <= 1e-6
    assert spectral(pf @ pf - pf) <= 2 * NS_BOUND
    assert torch.allclose(torch.linalg.matrix_norm(pf) ** 2, torch.full((3,), 9.0, dtype=torch.float64),
                          atol=0.1)  # trace = n - 3 flat directions
