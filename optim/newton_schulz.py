"""Orthogonalization by Newton-Schulz iteration, and the sharp / flat projectors Muon-LITE builds from it.

`newton_schulz(x)` approximates `msign(x) = U V^T` (x = U diag(sigma) V^T) for a matrix or a stack of
matrices `[..., m, n]` with a few quintic polynomial steps, all matrix products (three batched GEMM
kernels a step, the polynomial's sums folded into them), so a stack of E experts is orthogonalized in
one batched call. `sharp_projector` and `flat_projector` are the two extra
operators of Muon-LITE (docs/OPTIM.md, "Muon-LITE as the public code does it"): the partial isometry
onto the singular directions above a threshold, and the input-side projector onto the rest.

Accuracy (a property of the coefficients, checked by tests/optim/test_newton_schulz.py): after the
default 6 steps every singular value at least 1e-3 * 1.01 * ||x||_F maps into [0.9947, 1.0012], so
`||newton_schulz(x) - U V^T||_2 <= 0.0053` in exact arithmetic for such x; smaller singular values map
into [0, 1.0012] (never amplified past 1).
"""

from __future__ import annotations

import torch

# Quintic steps X <- a X + b (X X^T) X + c (X X^T)^2 X, the "Polar Express" coefficients (Amsel et al.
# 2025, arXiv 2505.16932) as used by the LITE code, each but the last divided by (1.01, 1.01^3, 1.01^5)
# for a safety margin against rounding; steps past the table repeat its last row.
_POLAR_EXPRESS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
)
NS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = tuple(
    (a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in _POLAR_EXPRESS) + ((1.875, -1.25, 0.375),)
NS_STEPS = 6
NORM_MARGIN = 1.01   # the input is divided by NORM_MARGIN * ||x||_F + NORM_EPS: singular values < 1
NORM_EPS = 1e-8


def newton_schulz(x: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """`msign(x)` for x `[..., m, n]` (any float dtype; computed in x's dtype), batched over the
    leading dims. Runs on the transpose when m > n, so the Gram matrices are `min(m, n)` square.
    A zero matrix gives zeros."""
    if x.ndim < 2:
        raise ValueError(f"x must be a matrix or a stack of matrices [..., m, n], got shape {tuple(x.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tall = x.size(-2) > x.size(-1)
    y = x.mT if tall else x
    y = y / (y.norm(dim=(-2, -1), keepdim=True) * NORM_MARGIN + NORM_EPS)
    shape = y.shape
    y = y.reshape(-1, *shape[-2:])                        # (batch, min, max)
    for i in range(steps):
        a, b, c = NS_COEFFICIENTS[min(i, len(NS_COEFFICIENTS) - 1)]
        gram = torch.bmm(y, y.mT)                         # (batch, min, min)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)   # b gram + c gram^2, one kernel
        y = torch.baddbmm(y, poly, y, beta=a)                     # a y + poly y
    y = y.reshape(shape)
    return y.mT if tall else y


def sharp_projector(m: torch.Tensor, o: torch.Tensor, tau: torch.Tensor,
                    steps: int = NS_STEPS) -> torch.Tensor:
    """`U diag(1[sigma_i > tau]) V^T` for m = U diag(sigma) V^T, given `o = newton_schulz(m)` and
    tau broadcastable to m (`[..., 1, 1]`): `(o + msign(m / tau - o)) / 2`, since m / tau - o has the
    singular values sigma_i / tau - 1 on the same singular vectors. Directions with sigma_i close to
    tau (relative gap below about 1 %) are split between the two sides."""
    return (o + newton_schulz(m / tau - o, steps)) * 0.5


def flat_projector(p_sharp: torch.Tensor) -> torch.Tensor:
    """`I_n - P^T P` `[..., n, n]` for a sharp projector P `[..., m, n]`: the projector onto the
    input-side (right singular) directions that are not sharp."""
    n = p_sharp.size(-1)
    eye = torch.eye(n, dtype=p_sharp.dtype, device=p_sharp.device)
    return eye - p_sharp.mT @ p_sharp
