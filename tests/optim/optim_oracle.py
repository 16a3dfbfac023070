"""Float64 evaluations of the docs/OPTIM.md formulas, written from the spec with exact SVD / eigh
(no Newton-Schulz): the references the optimizers are compared with."""

from __future__ import annotations

import math

import torch


def msign(x: torch.Tensor) -> torch.Tensor:
    """U V^T of x [..., m, n] by SVD, float64."""
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


def sharp(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """U diag(1[sigma > tau]) V^T, float64 (tau broadcast per matrix)."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    keep = (s > tau.double().reshape(*s.shape[:-1], 1)).double()
    return (u * keep.unsqueeze(-2)) @ vh


def with_spectrum(m: int, n: int, sigma: list[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """A float64 m x n matrix U diag(sigma) V^T with random orthonormal U, V."""
    k = min(m, n)
    assert len(sigma) == k
    u = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=generator))[0]
    return (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T


def muon_step(w, g, mom, lr, wd, theta, lite=None):
    """One Muon(-LITE) step on float64 stacks [E, m, n]; lite = dict(b1, b2, chi, s) or None.
    Returns (new w, new momentum, P_flat or None)."""
    w, g, mom = w.double(), g.double(), mom.double()
    mom = theta * mom + (1 - theta) * g
    look = mom + g * (1 - theta) / theta
    o = msign(look)
    scale = 0.2 * math.sqrt(max(w.shape[-2:]))
    if lite is None:
        return w * (1 - lr * wd) - lr * scale * o, mom, None
    tau = lite["s"] * look.norm(dim=(-2, -1)) + 1e-9
    p_sharp = sharp(look, tau)
    p_flat = torch.eye(w.shape[-1], dtype=torch.float64) - p_sharp.mT @ p_sharp
    h = msign(g)
    b1, b2, chi = lite["b1"], lite["b2"], lite["chi"]
    upd = o + b1 * h + (b2 - b1) * h @ p_flat
    upd = upd + (chi - 1) * upd @ p_flat
    new_w = w * (1 - lr * wd) - lr * wd * (chi - 1) * w @ p_flat - lr * scale * upd
    return new_w, mom, p_flat


def resumes_identically(make_opt, shape: tuple[int, ...], steps_before: int = 3, steps_after: int = 3) -> bool:
    """Run `make_opt([p])` for steps_before steps, save param + state_dict, run steps_after more; then
    rebuild from the saved copies and run the same steps: True if both end bit for bit equal."""
    import copy

    grads = [torch.randn(shape) for _ in range(steps_before + steps_after)]
    p = torch.nn.Parameter(torch.randn(shape))
    opt = make_opt([p])

    def run(param, optimizer, gs):
        for g in gs:
            param.grad = g.clone()
            optimizer.step()

    run(p, opt, grads[:steps_before])
    saved_p, saved_state = p.detach().clone(), copy.deepcopy(opt.state_dict())
    run(p, opt, grads[steps_before:])
    q = torch.nn.Parameter(saved_p)
    resumed = make_opt([q])
    resumed.load_state_dict(saved_state)
    run(q, resumed, grads[steps_before:])
    return torch.equal(p.detach(), q.detach())


def lite_mask(v: torch.Tensor, upper: float, lower: float, ratio: float, smooth: float = 0.1):
    """docs/OPTIM.md's sharpness mask of v (float64, whole tensor) and the adapted (upper, lower)."""
    v = v.double()
    hi, lo = upper * v.mean(), lower * v.mean()
    p = torch.where(v >= hi, 1.0, torch.where(v < lo, 0.0, (v - lo) / (hi - lo)))
    smooth = min(1 - ratio, smooth)
    new_upper = upper * (1.05 if (v >= hi).double().mean() > ratio else 0.95)
    new_lower = lower * (1.05 if (v >= lo).double().mean() > ratio + smooth else 0.95)
    return p, new_upper, min(new_lower, 0.95 * new_upper)


def eigenbasis(stat: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigh(stat.double())[1]


def idle_expert_is_kept(opt_cls, shape: tuple[int, int, int], busy_steps: int, idle_steps: int, **kw) -> dict:
    """Step `opt_cls([p], **kw)` busy_steps times with random gradients, then idle_steps times with
    expert 1's gradient zero. Asserts expert 1's weight and every per-expert state tensor are unchanged
    and expert 0's weight moved; returns the optimizer's state of p."""
    p = torch.nn.Parameter(torch.randn(shape))
    opt = opt_cls([p], **kw)
    for _ in range(busy_steps):
        p.grad = torch.randn(shape)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape[:1] == shape[:1]}
    w_before = p.detach().clone()
    for _ in range(idle_steps):
        g = torch.randn(shape)
        g[1] = 0
        p.grad = g
        opt.step()
    assert torch.equal(p.detach()[1], w_before[1]) and not torch.equal(p.detach()[0], w_before[0])
    for key, old in before.items():
        assert torch.equal(opt.state[p][key][1], old[1]), key
    return {"before": before, "after": opt.state[p]}
