"""Megatron-Core adapter: `use_mxa2a(model, dispatch="mxfp4", ...)` makes every
`MoEAlltoAllTokenDispatcher` of the model exchange its tokens with mxa2a.

Megatron-Core 0.16 moves tokens with `megatron.core.tensor_parallel.mappings.all_to_all(group, input,
output_split_sizes, input_split_sizes)` at three call sites of the dispatcher: `token_dispatch` sends
the permuted tokens and then the 1-D permuted probabilities, `token_combine` the expert outputs; the
backward of each is the reverse all-to-all. The adapter wraps those two methods on each dispatcher
instance (Megatron's own bodies run unchanged, with their sync points) and routes exactly the tensors
they pass to `mxa2a.comm.functional.all_to_all_single_autograd`, each with its wires; any other call of
that `all_to_all` (another dispatcher, another tensor) goes to Megatron's own function. The
probabilities default to "raw" (a 1-D float tensor no block codec applies to); naming a block wire
for them is an error. With a group of one rank Megatron skips the exchange, mxa2a still applies the
wire (its own rows encoded and decoded). Tested with megatron-core 0.16.1.
"""

from __future__ import annotations

import functools
import threading

import torch

from ..comm.functional import all_to_all_single_autograd, wire_key
from .wires import ExchangeWires, Wire

__all__ = ["use_mxa2a", "remove_mxa2a", "ExchangeWires"]

# id(tensor) -> (wire, grad_wire) for the tensors the wrapped methods are exchanging right now.
_sites = threading.local()


def _current_sites() -> dict:
    if not hasattr(_sites, "map"):
        _sites.map = {}
    return _sites.map


def _host_splits(splits):
    """Megatron passes numpy arrays (or tensors, or None); the functional op takes host int lists."""
    if splits is None:
        return None
    if isinstance(splits, torch.Tensor):
        return splits.tolist()
    return [int(s) for s in splits]


def _routed_all_to_all(original, group, input_, output_split_sizes_=None, input_split_sizes=None):
    """Megatron's `all_to_all`, except for a tensor a wrapped dispatcher method is exchanging."""
    site = _current_sites().get(id(input_))
    if site is None:
        return original(group, input_, output_split_sizes_, input_split_sizes)
    (wire, grad_wire), w = site
    return all_to_all_single_autograd(input_, _host_splits(output_split_sizes_), _host_splits(input_split_sizes),
                                      group, wire=wire, grad_wire=grad_wire, scale_mode=w.scale_mode,
                                      check=w.check)


def _install_router() -> None:
    from megatron.core.transformer.moe import token_dispatcher as td

    if not isinstance(td.all_to_all, functools.partial):
        td.all_to_all = functools.partial(_routed_all_to_all, td.all_to_all)


def _with_sites(method, pick):
    """Wrap a bound dispatcher method so that, while it runs, the tensors `pick(args)` names travel with
    their wires."""
    def wrapped(*args, **kwargs):
        sites = _current_sites()
        named = [(t, site) for t, site in pick(*args, **kwargs) if t is not None]
        for t, site in named:
            sites[id(t)] = site
        try:
            return method(*args, **kwargs)
        finally:
            for t, _site in named:
                sites.pop(id(t), None)
    return wrapped


def _patch(d, w: ExchangeWires, probs: tuple[str, str]) -> None:
    orig_dispatch, orig_combine = type(d).token_dispatch.__get__(d), type(d).token_combine.__get__(d)
    d.token_dispatch = _with_sites(orig_dispatch, lambda tokens, probs_, *a, **k: [
        (tokens, ((w.dispatch, w.dispatch_grad), w)), (probs_, (probs, w))])
    d.token_combine = _with_sites(orig_combine, lambda hidden, *a, **k: [
        (hidden, ((w.combine, w.combine_grad), w))])
    d._mxa2a_wires = w


def _dispatchers(model) -> list:
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    if isinstance(model, MoEAlltoAllTokenDispatcher):
        return [model]
    found = [m.token_dispatcher for m in model.modules()
             if isinstance(getattr(m, "token_dispatcher", None), MoEAlltoAllTokenDispatcher)]
    if not found:
        raise ValueError(f"model has no module with a MoEAlltoAllTokenDispatcher as its token_dispatcher "
                         f"(Megatron-Core's MoELayer with moe_token_dispatcher_type='alltoall'); got "
                         f"{type(model).__name__}")
    return found


def use_mxa2a(model, *, dispatch: Wire = "raw", combine: Wire = "raw", dispatch_grad: Wire = "raw",
              combine_grad: Wire = "raw", probs: Wire = "raw", probs_grad: Wire = "raw",
              scale_mode: str = "rceil", check: bool | str | None = None) -> int:
    """Route the token exchanges of every `MoEAlltoAllTokenDispatcher` in `model` (a module, or one
    dispatcher) through mxa2a.

    Arguments (each wire "raw", "bf16", "fp8", "mxfp4" or a WireCodec; "raw" = the exact bytes):
        dispatch / dispatch_grad: the permuted tokens, and their gradient on the way back.
        combine / combine_grad: the expert outputs, and their gradient on the way to the experts.
        probs / probs_grad: the 1-D permuted probabilities ("raw" or "bf16"; a block wire is an error).
        scale_mode, check: as in `mxa2a.comm.all_to_all_single`.
    Returns the number of dispatchers patched (ValueError when there is none); `remove_mxa2a` undoes it.
    """
    w = ExchangeWires(dispatch, combine, dispatch_grad, combine_grad, scale_mode, check).keys()
    found = _dispatchers(model)
    _install_router()
    for d in found:
        _patch(d, w, (wire_key(probs), wire_key(probs_grad)))
    return len(found)


def remove_mxa2a(model) -> None:
    """Give every dispatcher of `model` Megatron's own exchanges back (the router stays: it passes
    every tensor no patched dispatcher names to Megatron's `all_to_all`)."""
    for d in _dispatchers(model):
        for name in ("token_dispatch", "token_combine", "_mxa2a_wires"):
            d.__dict__.pop(name, None)
