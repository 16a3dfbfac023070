"""The schedules of docs/OPTIM.md (optim/schedules.py) at the points the spec names."""

from __future__ import annotations

import math

import pytest
import torch

from mxa2a.optim import AdamWLITE, MuonLITE, Schedule, apply_schedule, damping_beta2, flat_lr_ratio, lr_factor

COS = Schedule(total_steps=1000, warmup_steps=100, kind="cosine", min_lr_ratio=0.1)
WSD = Schedule(total_steps=1000, warmup_steps=100, kind="wsd", min_lr_ratio=0.0, stable_ratio=0.8)


def test_lr_warms_up_then_follows_cosine_or_wsd():
    assert lr_factor(0, COS) == pytest.approx(0.01) and lr_factor(99, COS) == pytest.approx(1.0)
    assert lr_factor(550, COS) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(1000, COS) == pytest.approx(0.1)
    assert lr_factor(500, WSD) == 1.0 and lr_factor(799, WSD) == 1.0
    assert lr_factor(900, WSD) == pytest.approx(0.5) and lr_factor(1000, WSD) == pytest.approx(0.0)


def test_damping_beta2_ramps_from_b1_to_b2_until_t_b():
    # cosine: T_b = 0.5 * 900 + 100 = 550; WSD: T_f = 2 * 100 / 1000, T_b = 0.2 * 900 + 100 = 280
    assert damping_beta2(100, -0.25, 1.0, COS) == -0.25
    assert damping_beta2(325, -0.25, 1.0, COS) == pytest.approx(-0.25 + 1.25 * 0.5)
    assert damping_beta2(550, -0.25, 1.0, COS) == 1.0
    assert damping_beta2(190, 0.0, 1.0, WSD) == pytest.approx(0.5) and damping_beta2(280, 0.0, 1.0, WSD) == 1.0


def test_flat_ratio_is_1_in_warmup_ramps_under_cosine_and_is_chi_under_wsd():
    assert flat_lr_ratio(50, 2.0, COS) == 1.0 and flat_lr_ratio(50, 8.0, WSD) == 1.0
    assert flat_lr_ratio(101, 8.0, WSD) == 8.0
    # early: the ramp 1 + (chi - 1) progress / 0.5 binds; at the end the flat lr meets lr_min
    assert flat_lr_ratio(190, 2.0, COS) == pytest.approx(1.0 + 0.1 / 0.5)
    c = 0.5 * (1 + math.cos(math.pi * 0.9))
    assert flat_lr_ratio(910, 2.0, COS) == pytest.approx((0.1 + 1.9 * c) / (0.1 + 0.9 * c), rel=1e-6)
    assert flat_lr_ratio(1000, 2.0, COS) == pytest.approx(1.0, rel=1e-6)


def test_apply_schedule_writes_lr_b2_t_and_chi_t_into_the_groups():
    muon = MuonLITE([torch.nn.Parameter(torch.ones(4, 4))], lr=0.02, b1=-0.25, b2=1.0, chi=2.0)
    adam = AdamWLITE([torch.nn.Parameter(torch.ones(4))], lr=0.01, chi=8.0, subspace_ratio=0.1)
    apply_schedule([muon, adam], 325, COS)
    g, h = muon.param_groups[0], adam.param_groups[0]
    assert g["initial_lr"] == 0.02 and g["lr"] == pytest.approx(0.02 * lr_factor(325, COS))
    assert g["b2_t"] == damping_beta2(325, -0.25, 1.0, COS) and g["chi_t"] == flat_lr_ratio(325, 2.0, COS)
    assert h["chi_t"] == flat_lr_ratio(325, 8.0, COS) and "b2_t" not in h


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        Schedule(10, 1, kind="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        Schedule(10, 10)
