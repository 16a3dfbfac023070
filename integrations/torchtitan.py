"""torchtitan adapter: `use_mxa2a(model, dispatch="mxfp4", ...)` makes every `AllToAllTokenDispatcher`
of the model (and its `TorchAOTokenDispatcher` subclass) exchange tokens with mxa2a.

torchtitan 0.3.0 moves tokens in two methods of the dispatcher, each with two code paths: the
functional `all_to_all_single(x, out_splits, in_splits, ep_mesh)` (under torch.compile, or with a
non-"spmd_types" backend) and `spmd_types.all_to_all` (the eager default, whose forward and backward
call the list form `torch.distributed.all_to_all`). The adapter replaces both methods on each
dispatcher instance (`_dispatch_token_exchange`, `_combine_token_exchange`), so both paths go through
`mxa2a.comm.functional.all_to_all_single_autograd` with the named wires; the int64 token-count
exchange (`_token_count_exchange`) is left to torch. Other dispatchers (DeepEP, HybridEP,
MinimalAsyncEP) are not touched. Tested with torchtitan 0.3.0.
"""

from __future__ import annotations

import types

import torch

from ..comm.functional import all_to_all_single_autograd
from .wires import ExchangeWires, Wire

__all__ = ["use_mxa2a", "remove_mxa2a", "ExchangeWires"]

_PATCHED = ("_dispatch_token_exchange", "_combine_token_exchange")


def _functional_path() -> bool:
    """torchtitan's own test for which of its two paths a call takes."""
    from torchtitan.distributed.utils import get_spmd_backend

    return (torch.compiler.is_compiling() or torch.compiler._is_non_strict_tracing()
            or get_spmd_backend() != "spmd_types")


def _group(dispatcher, pg):
    if _functional_path():
        return dispatcher.ep_mesh
    import spmd_types as spmd

    if spmd.is_type_checking():
        raise NotImplementedError("mxa2a.integrations.torchtitan does not support spmd type checking "
                                  "(spmd_typechecking=True); run with the default, False")
    return pg


def _dispatch_token_exchange(self, routed_input_ND: torch.Tensor, pg, output_splits: list[int],
                             input_splits: list[int]) -> torch.Tensor:
    w = self._mxa2a_wires
    return all_to_all_single_autograd(routed_input_ND, output_splits, input_splits, _group(self, pg),
                                      wire=w.dispatch, grad_wire=w.dispatch_grad, scale_mode=w.scale_mode,
                                      check=w.check)


def _combine_token_exchange(self, routed_output_RD: torch.Tensor, pg, input_splits: list[int],
                            output_splits: list[int]) -> torch.Tensor:
    w = self._mxa2a_wires
    return all_to_all_single_autograd(routed_output_RD, input_splits, output_splits, _group(self, pg),
                                      wire=w.combine, grad_wire=w.combine_grad, scale_mode=w.scale_mode,
                                      check=w.check)


def _dispatchers(model: torch.nn.Module) -> list:
    from torchtitan.models.common.token_dispatcher import AllToAllTokenDispatcher

    found = [m.token_dispatcher for m in model.modules()
             if isinstance(getattr(m, "token_dispatcher", None), AllToAllTokenDispatcher)]
    if not found:
        raise ValueError(f"model has no module with an AllToAllTokenDispatcher as its token_dispatcher "
                         f"(torchtitan's RoutedExperts with EP > 1); got {type(model).__name__}")
    return found


def use_mxa2a(model: torch.nn.Module, *, dispatch: Wire = "raw", combine: Wire = "raw",
              dispatch_grad: Wire = "raw", combine_grad: Wire = "raw", scale_mode: str = "rceil",
              check: bool | str | None = None) -> int:
    """Route the token exchanges of every `AllToAllTokenDispatcher` in `model` through mxa2a.

    Arguments (each wire "raw", "bf16", "fp8", "mxfp4" or a WireCodec; "raw" = torch's exact bytes):
        dispatch: tokens to their experts. dispatch_grad: their gradient, on the way back.
        combine: expert outputs to their tokens. combine_grad: their gradient, to the experts.
        scale_mode, check: as in `mxa2a.comm.all_to_all_single`.
    Returns the number of dispatchers patched (ValueError when there is none). Call it before the
    first forward (before torch.compile traces the model); `remove_mxa2a` undoes it.
    """
    wires = ExchangeWires(dispatch, combine, dispatch_grad, combine_grad, scale_mode, check).keys()
    found = _dispatchers(model)
    for d in found:
        d._mxa2a_wires = wires
        d._dispatch_token_exchange = types.MethodType(_dispatch_token_exchange, d)
        d._combine_token_exchange = types.MethodType(_combine_token_exchange, d)
    return len(found)


def remove_mxa2a(model: torch.nn.Module) -> None:
    """Give every dispatcher of `model` its own torchtitan exchanges back."""
    for d in _dispatchers(model):
        for name in (*_PATCHED, "_mxa2a_wires"):
            d.__dict__.pop(name, None)
