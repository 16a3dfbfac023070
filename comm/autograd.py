"""The differentiable all-to-all: forward sends activations with one wire format, backward sends their
gradient the opposite way (splits swapped) with another (`grad_wire`, exact "raw" by default).

The gradient of a lossy codec is taken as the identity (straight-through), so the backward of
`y = all_to_all(x)` is exactly the reverse all-to-all of `dL/dy`, sent with `grad_wire`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..quant.wire import WireCodec
from .all_to_all import all_to_all_single


def _out_rows(splits: list[int] | None, fallback: int) -> int:
    return fallback if not splits else sum(splits)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, output_split_sizes, input_split_sizes, group, wire, grad_wire,
                scale_mode, check):
        out = x.new_empty((_out_rows(output_split_sizes, x.shape[0]), *x.shape[1:]))
        all_to_all_single(out, x, output_split_sizes, input_split_sizes, group, wire=wire,
                          scale_mode=scale_mode, check=check)
        ctx.splits = (output_split_sizes, input_split_sizes)
        ctx.group, ctx.grad_wire, ctx.scale_mode, ctx.check = group, grad_wire, scale_mode, check
        ctx.in_rows = x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        output_split_sizes, input_split_sizes = ctx.splits
        grad_in = grad_out.new_empty((ctx.in_rows, *grad_out.shape[1:]))
        # The reverse exchange: what came from rank i goes back to rank i.
        all_to_all_single(grad_in, grad_out.contiguous(), input_split_sizes, output_split_sizes, ctx.group,
                          wire=ctx.grad_wire, scale_mode=ctx.scale_mode, check=ctx.check)
        return grad_in, None, None, None, None, None, None, None


def all_to_all_autograd(x: torch.Tensor, output_split_sizes: list[int] | None,
                        input_split_sizes: list[int] | None, group: dist.ProcessGroup | None = None, *,
                        wire: str | WireCodec = "mxfp4", grad_wire: str | WireCodec = "raw",
                        scale_mode: str = "rceil", check: bool | str | None = None) -> torch.Tensor:
    """Differentiable `all_to_all_single`: returns a new tensor `[sum(output_split_sizes), *rest]` of x's
    dtype (x is `[N, *rest]`, float32/bfloat16/float16; None splits = equal split).

    Forward: `all_to_all_single(y, x, output_split_sizes, input_split_sizes, group, wire=wire)`.
    Backward: `all_to_all_single(dx, dy, input_split_sizes, output_split_sizes, group, wire=grad_wire)`,
    the straight-through gradient. Bytes on the wire, format check (`check`, None = the process default,
    "first") and host syncs: see `all_to_all_single`. Under "first" the backward exchange is checked on
    the first call of its own signature (`grad_wire`, the gradient's dtype); after that neither forward
    nor backward syncs the host.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _AllToAll.apply(x, output_split_sizes, input_split_sizes, group, wire, grad_wire, scale_mode,
                           check)
