"""The bucketed step (optim/_stacks.py): parameters of one shape from groups with equal settings share
a bucket, different settings never do, a bucketed step moves every parameter as a step alone would,
and no optimizer's `step()` reads a device value on the host (a dispatch mode fails on any
`.item()`, `.tolist()`, `bool(tensor)` or data-dependent shape)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mxa2a.optim import SOAP, SOAPLITE, AdamWLITE, Muon, MuonLITE, Schedule, apply_schedule
from mxa2a.optim._stacks import buckets

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.masked_select.default, torch.ops.aten.unique_consecutive.default}


class FailOnHostRead(TorchDispatchMode):
    """Raises on the aten ops that copy a device value to the host (each a sync on CUDA)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"host read of a device value: {func}")
        return func(*args, **(kwargs or {}))


def test_buckets_merge_equal_settings_and_split_different():
    a, b, c, d = (torch.nn.Parameter(torch.ones(s)) for s in [(4, 4), (3, 4, 4), (4, 4), (4, 6)])
    for p in (a, b, c, d):
        p.grad = torch.ones_like(p)
    groups = [dict(params=[a, d], lr=1.0, role="hidden"), dict(params=[b], lr=1.0, role="experts"),
              dict(params=[c], lr=2.0, role="other")]
    found = buckets(groups, lambda p: tuple(p.shape[-2:]))
    assert [[id(p) for p in ps] for _, ps in found] == [[id(a), id(b)], [id(d)], [id(c)]]


MAKERS = {
    "muon": lambda gs: Muon(gs, lr=0.01),
    "muon_lite": lambda gs: MuonLITE(gs, lr=0.01, chi=2.0, b1=-0.25),
    "soap": lambda gs: SOAP(gs, lr=0.01, precondition_frequency=2),
    "soap_lite": lambda gs: SOAPLITE(gs, lr=0.01, precondition_frequency=2, chi=2.0, b1=-0.25),
    "adamw_lite": lambda gs: AdamWLITE(gs, lr=0.01, chi=8.0, subspace_ratio=0.1),
}
SHAPES = {"adamw_lite": [(7,), (3, 5), (7,), (40,)]}


@pytest.mark.parametrize("name", list(MAKERS))
def test_bucketed_step_moves_each_parameter_as_alone(seed, name):
    """Two groups of equal settings (one bucket per shape) against one optimizer per parameter."""
    shapes = SHAPES.get(name, [(6, 10), (3, 6, 10), (6, 10), (10, 6)])
    w0 = [torch.randn(s) for s in shapes]
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    alone = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = MAKERS[name]([dict(params=together[:2]), dict(params=together[2:])])
    opts = [MAKERS[name]([p]) for p in alone]
    for _ in range(5):
        for a, b in zip(together, alone):
            a.grad = torch.randn(a.shape) * torch.linspace(0.1, 3.0, a.shape[-1])
            b.grad = a.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    exact = name == "muon"  # batched eigh / QR and the LITE masks' means may round differently
    for a, b in zip(together, alone):
        if exact:
            assert torch.equal(a.detach(), b.detach())
        else:
            assert torch.allclose(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)  # measured <= 1.2e-6


@pytest.mark.parametrize("name", list(MAKERS))
def test_step_never_reads_a_device_value_on_the_host(seed, name):
    shapes = SHAPES.get(name, [(6, 10), (3, 6, 10), (6, 10)])
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = MAKERS[name]([dict(params=params)])
    schedule = Schedule(total_steps=20, warmup_steps=2)
    for step in range(4):  # the first steps build state (SOAP's eigh), later ones refresh
        for p in params:
            p.grad = torch.randn(p.shape)
        params[-1].grad[0] = 0.0  # an idle expert where the parameter is a stack
        apply_schedule(opt, step, schedule)
        if step >= 1:
            with FailOnHostRead():
                opt.step()
        else:
            opt.step()
