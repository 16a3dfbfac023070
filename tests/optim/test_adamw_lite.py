"""AdamW-LITE (optim/adamw_lite.py): with the LITE terms off it is torch.optim.AdamW bit for bit; with
them on, two steps match the float64 formula of docs/OPTIM.md ("AdamW path with LITE"); the mask's
thresholds steer the sharp fraction to subspace_ratio; the state_dict round trip resumes identically."""

from __future__ import annotations

import pytest
import torch

from mxa2a.optim import AdamWLITE, sharpness_mask
from mxa2a.optim.adamw_lite import segment_sharpness_mask

from optim_oracle import lite_mask, resumes_identically

LR, WD, BETAS, EPS = 0.01, 0.1, (0.9, 0.99), 1e-8


@pytest.mark.parametrize("lite", [dict(subspace_ratio=1.0, chi=8.0), dict(subspace_ratio=0.1, chi=1.0)],
                         ids=["ratio_1", "chi_1"])
@pytest.mark.parametrize("shape", [(7,), (5, 9)])
def test_mask_off_is_torch_adamw_bit_for_bit(seed, lite, shape):
    w0 = torch.randn(shape)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours = AdamWLITE([a], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **lite)
    ref = torch.optim.AdamW([b], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    for _ in range(5):
        g = torch.randn(shape)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.equal(a.detach(), b.detach())
        assert torch.equal(ours.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"])


def test_lite_steps_match_float64_formula(seed):
    chi, ratio = 8.0, 0.1
    w0 = torch.randn(64)
    grads = [torch.randn(64) * torch.linspace(0.1, 3.0, 64) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = AdamWLITE([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, chi=chi, subspace_ratio=ratio)
    w, m, v, upper, lower = w0.double(), torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64), 1.0, 0.5
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        g = g.double()
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g ** 2
        sharp, upper, lower = lite_mask(v, upper, lower, ratio)
        flat = 1 - sharp
        upd = m / (v.sqrt() / (1 - BETAS[1] ** t) ** 0.5 + EPS)
        upd = upd + (chi - 1) * flat * upd
        w = w - LR * WD * w - LR * WD * (chi - 1) * flat * w - LR / (1 - BETAS[0] ** t) * upd
        assert torch.allclose(p.detach().double(), w, rtol=1e-5, atol=1e-6)
        assert abs(opt.state[p]["upper"].item() - upper) < 1e-6 and abs(opt.state[p]["lower"].item() - lower) < 1e-6


def test_mask_thresholds_steer_sharp_fraction_to_subspace_ratio(seed):
    v = torch.rand(4000) ** 4
    upper, lower = torch.ones(()), torch.full((), 0.5)
    for _ in range(200):
        p, upper, lower = sharpness_mask(v, upper, lower, 0.1)
    assert abs((p == 1).float().mean().item() - 0.1) < 0.03
    assert ((p >= 0) & (p <= 1)).all() and lower <= 0.95 * upper


def test_mask_is_per_matrix_over_a_stack(seed):
    v = torch.rand(3, 8, 8) * torch.tensor([1.0, 100.0, 1e-4]).view(3, 1, 1)
    p, _, _ = sharpness_mask(v, torch.ones(3, 1, 1), torch.full((3, 1, 1), 0.5), 0.1, dims=(-2, -1))
    for e in range(3):
        alone, _, _ = sharpness_mask(v[e], torch.ones(()), torch.full((), 0.5), 0.1)
        assert torch.allclose(p[e], alone)


@pytest.mark.parametrize("shape", [(9,), (4, 6)])
def test_state_dict_round_trip_resumes_identically(seed, shape):
    assert resumes_identically(lambda ps: AdamWLITE(ps, lr=LR, chi=8.0, subspace_ratio=0.1), shape)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="chi"):
        AdamWLITE([torch.nn.Parameter(torch.ones(3))], chi=0.5)
    with pytest.raises(ValueError, match="subspace_ratio"):
        AdamWLITE([torch.nn.Parameter(torch.ones(3))], subspace_ratio=0.0)


def test_segment_mask_equals_the_mask_of_each_segment(seed):
    lengths = [5, 1, 40, 12]
    v = torch.rand(sum(lengths)) ** 3
    upper, lower = torch.rand(4) + 0.5, torch.rand(4) * 0.4
    p, new_upper, new_lower = segment_sharpness_mask(v, lengths, upper, lower, 0.1)
    for i, (part, alone) in enumerate(zip(p.split(lengths), v.split(lengths))):
        ref, ref_upper, ref_lower = sharpness_mask(alone, upper[i], lower[i], 0.1)
        assert torch.allclose(part, ref, rtol=1e-5, atol=1e-6)
        assert torch.allclose(new_upper[i], ref_upper) and torch.allclose(new_lower[i], ref_lower)
