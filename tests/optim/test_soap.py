"""SOAP and SOAP-LITE (optim/soap.py) against a float64 evaluation with exact eigh, the b = 0, chi = 1
reduction, per-expert state and the state_dict round trip.

The oracle: call 1 builds L = (1 - beta_s) G G^T, R = (1 - beta_s) G^T G and their eigenbases;
each later call is Adam on `Q_L^T G Q_R` (momentum kept in the parameter's space and rotated), rotated
back; SOAP-LITE adds docs/OPTIM.md's mask on v in that basis (our construction). Square gradients with
well-separated singular values make the bases unique up to sign, to which the step is invariant.
Bound: |W - oracle| <= 1e-3 lr elementwise (fp32 eigenvectors; measured about 1e-5 lr)."""

from __future__ import annotations

import pytest
import torch

from mxa2a.optim import SOAP, SOAPLITE

from optim_oracle import eigenbasis, idle_expert_is_kept, lite_mask, resumes_identically, with_spectrum

LR, WD, BETAS, SHAMPOO, EPS = 0.01, 0.1, (0.9, 0.95), 0.95, 1e-8
SIGMA = [3.0, 2.5, 2.0, 1.6, 1.2, 0.9, 0.6, 0.4]


def oracle(w, grads, lite=None):
    """float64 SOAP(-LITE) over `grads` (the first only builds the bases); returns the weights."""
    w = w.double()
    g1 = grads[0].double()
    ql, qr = eigenbasis((1 - SHAMPOO) * g1 @ g1.T), eigenbasis((1 - SHAMPOO) * g1.T @ g1)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    upper, lower = 1.0, 0.5
    for t, g in enumerate(grads[1:], start=1):
        g = g.double()
        g_rot = ql.T @ g @ qr
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g_rot ** 2
        denom = v.sqrt() / (1 - BETAS[1] ** t) ** 0.5 + EPS
        u = (ql.T @ m @ qr) / (1 - BETAS[0] ** t) / denom
        decay = w * (1 - LR * WD)
        if lite is not None:
            p, upper, lower = lite_mask(v, upper, lower, 0.1)
            d, flat = g_rot / denom, 1 - p
            u = u + lite["b1"] * d + (lite["b2"] - lite["b1"]) * flat * d
            u = u + (lite["chi"] - 1) * flat * u
            decay = decay - LR * WD * (lite["chi"] - 1) * ql @ (flat * (ql.T @ w @ qr)) @ qr.T
        w = decay - LR * ql @ u @ qr.T
    return w


@pytest.mark.parametrize("lite", [None, dict(b1=-0.25, b2=1.0, chi=2.0)], ids=["soap", "soap_lite"])
def test_soap_steps_match_float64_formula(seed, lite):
    w0 = torch.randn(8, 8)
    grads = [with_spectrum(8, 8, SIGMA).float()] + [torch.randn(8, 8) for _ in range(2)]
    p = torch.nn.Parameter(w0.clone())
    kw = dict(lr=LR, betas=BETAS, shampoo_beta=SHAMPOO, eps=EPS, weight_decay=WD)
    opt = SOAP([p], **kw) if lite is None else SOAPLITE([p], subspace_ratio=0.1, **kw, **lite)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    assert (p.detach().double() - oracle(w0, grads, lite)).abs().max() <= 1e-3 * LR


def test_first_step_only_builds_the_bases(seed):
    p = torch.nn.Parameter(torch.randn(2, 6, 4))
    w0 = p.detach().clone()
    opt = SOAP([p])
    p.grad = torch.randn(2, 6, 4)
    opt.step()
    assert torch.equal(p.detach(), w0) and opt.state[p]["q_left"].shape == (2, 6, 6)


@pytest.mark.parametrize("shape", [(6, 10), (3, 6, 10)])
def test_soap_lite_with_chi_1_and_no_damping_is_soap_bit_for_bit(seed, shape):
    w0 = torch.randn(shape)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    soap = SOAP([a], lr=LR, precondition_frequency=2)
    lite = SOAPLITE([b], lr=LR, precondition_frequency=2, b1=0.0, b2=0.0, chi=1.0)
    for _ in range(5):
        g = torch.randn(shape)
        a.grad, b.grad = g.clone(), g.clone()
        soap.step()
        lite.step()
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("cls", [SOAP, SOAPLITE])
def test_idle_expert_keeps_weight_and_state(seed, cls):
    """Three idle steps cross a basis refresh (every 2 Adam steps)."""
    states = idle_expert_is_kept(cls, (3, 6, 10), 2, 3, lr=LR, precondition_frequency=2,
                                 **({"chi": 2.0} if cls is SOAPLITE else {}))
    assert states["after"]["adam_step"].tolist() == [4.0, 1.0, 4.0]


@pytest.mark.parametrize("make", [lambda ps: SOAP(ps, lr=LR, precondition_frequency=2),
                                  lambda ps: SOAPLITE(ps, lr=LR, precondition_frequency=2, chi=2.0, b1=-0.25)],
                         ids=["soap", "soap_lite"])
@pytest.mark.parametrize("shape", [(10, 6), (2, 6, 10)])
def test_state_dict_round_trip_resumes_identically(seed, make, shape):
    assert resumes_identically(make, shape, steps_before=3, steps_after=3)
