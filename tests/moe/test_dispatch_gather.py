"""The dispatcher's token gather: same rows as `index_select`, and a backward that sums each token's
k row gradients in a fixed order (reproducible bit for bit, unlike `index_add_`'s atomics on CUDA)."""

import torch

from mxa2a.moe.dispatch import ExpertParallelDispatcher


def test_gather_backward_equals_index_select_backward(seed):
    T, k, H, E = 37, 3, 16, 8
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    dispatcher = ExpertParallelDispatcher(E, H)
    layout = dispatcher.plan(ids)
    x = torch.randn(T, H, dtype=torch.float64, requires_grad=True)
    rows = dispatcher.permute(x, layout)
    g = torch.randn_like(rows)
    (grad,) = torch.autograd.grad(rows, x, g)

    x_ref = x.detach().clone().requires_grad_(True)
    rows_ref = x_ref.index_select(0, layout.permutation // k)
    (grad_ref,) = torch.autograd.grad(rows_ref, x_ref, g)
    assert torch.equal(rows, rows_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    # The fixed order: token t's gradient is the slot-ordered sum of its k rows' gradients.
    inv = layout.inverse_permutation
    want = g[inv].view(T, k, H)
    assert torch.equal(grad, (want[:, 0] + want[:, 1]) + want[:, 2])
