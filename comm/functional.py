"""The functional all-to-all: torch's `_functional_collectives.all_to_all_single(_autograd)` signatures
(return a new tensor, never write into one) with mxa2a's wire formats, traceable by torch.compile.

Both forms run the in-place `mxa2a.comm.all_to_all_single` into a new output, so bytes on the wire, the
`check` policy and host syncs are those of the in-place form. Eager: the exchange starts with
`async_op=True` and its work is registered with c10d, so the result is torch's AsyncCollectiveTensor,
waited (and decoded) at first use. Traced (torch.compile, make_fx): registered custom ops
(`torch.ops.mxa2a.all_to_all_single` and its autograd twin) with fake implementations, so
`torch.compile(fullgraph=True)` keeps the exchange as one opaque, blocking node; the codec kernels, the
header and its `zlib.crc32` signature never enter the graph, and the bits are the eager ones. Groups:
whatever torch's functional collectives take (`comm.groups`). Integer / bool tensors travel raw; a
float tensor the wire cannot encode is an error unless `raw_fallback=True`.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol

from ..quant.wire import WireCodec, get_codec
from .all_to_all import all_to_all_single as _all_to_all_single_into
from .groups import group_name

__all__ = ["all_to_all_single", "all_to_all_single_autograd", "wire_key"]

# WireCodec objects cannot be custom-op arguments: they travel as a key into this table.
_codecs_by_key: dict[str, WireCodec] = {}
_NAMES = ("raw", "bf16", "fp8", "mxfp4")


def wire_key(wire: str | WireCodec) -> str:
    """The string the custom ops take for `wire`: a wire name as it is, a WireCodec registered under
    its repr (frozen dataclass: equal codecs, one key). Call it outside a compiled region."""
    if isinstance(wire, str):
        return wire
    if not isinstance(wire, WireCodec):
        raise TypeError(f"wire must be one of {_NAMES} or a mxa2a.quant.wire.WireCodec, got {wire!r}")
    key = f"codec:{wire!r}"
    _codecs_by_key.setdefault(key, wire)
    return key


def _wire(key: str) -> str | WireCodec:
    return _codecs_by_key.get(key, key)


def _check_arg(check: bool | str | None) -> str:
    if check is None:
        return ""
    if check is True or check is False:
        return "always" if check else "never"
    return check


def _splits(name: str, splits) -> list[int]:
    if splits is None:
        return []
    if isinstance(splits, torch.Tensor):
        raise TypeError(f"{name} must be a list of ints (host values), got a tensor; call .tolist() first")
    if type(splits).__module__ == "numpy":  # a numpy integer array, as torch.distributed accepts
        return splits.tolist()
    return list(splits)


def _encodable(codec: WireCodec, x: torch.Tensor) -> bool:
    try:
        codec.check_input(x)
    except (TypeError, ValueError):
        return False
    return True


def _exchange(x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int], group: str,
              wire: str, scale_mode: str, raw_fallback: bool, check: str, async_op: bool = False):
    """The body of every form: a new output and the in-place exchange into it. Returns the output, or
    with `async_op` (output, AllToAllWork) with the output filled by the work's `wait()`."""
    from torch.distributed import distributed_c10d as c10d

    pg = c10d._resolve_process_group(group)
    if isinstance(x, funcol.AsyncCollectiveTensor):
        # The result of an earlier eager call, not waited yet: view ops such as detach() keep the wrapper,
        # whose data pointer is not the rows' (a Triton kernel reading it faults). Wait, take the rows.
        x = x.wait()
    codec = _wire(wire)
    if raw_fallback and x.dtype.is_floating_point and not _encodable(get_codec(codec, scale_mode), x):
        codec = "raw"
    rows = sum(output_split_sizes) if output_split_sizes else x.shape[0]
    out = x.new_empty((rows, *x.shape[1:]))
    work = _all_to_all_single_into(out, x.contiguous(), output_split_sizes or None, input_split_sizes or None,
                                   pg, async_op=async_op, wire=codec, scale_mode=scale_mode, check=check or None)
    return (out, work) if async_op else out


# ----------------------------------------------------------------------------------------------------
# Eager calls: the result is an AsyncCollectiveTensor, as torch's, waited (and decoded) at first use.

_C10D = torch._C._distributed_c10d
_CAN_DEFER = hasattr(_C10D, "_register_work") and hasattr(_C10D, "PythonCallbackWork")
# Where torch's wrapper passes gradients through (`_wrap_tensor_autograd`); elsewhere the autograd form
# waits at once.
_CAN_DEFER_AUTOGRAD = _CAN_DEFER and hasattr(funcol, "_wrap_tensor_autograd")


def _eager() -> bool:
    return not funcol._are_we_tracing()


def _defer(out: torch.Tensor, work) -> None:
    """Register `work` as `out`'s pending collective: `wait_tensor(out)` (which an AsyncCollectiveTensor
    calls at first use) runs `work.wait()`."""
    _C10D._register_work(out, _C10D.PythonCallbackWork(lambda timeout: work.wait() or True))


class _DeferredAllToAll(torch.autograd.Function):
    """The eager autograd form: forward starts the exchange (waited at first use), backward is the
    blocking reverse exchange with grad_wire, as the custom op's backward."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, wire, grad_wire, scale_mode, raw_fallback, check):
        out, work = _exchange(x, out_splits, in_splits, group, wire, scale_mode, raw_fallback, check, True)
        _defer(out, work)
        ctx.args = (out_splits, in_splits, group, grad_wire, scale_mode, raw_fallback, check)
        ctx.in_rows = x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        return _backward(ctx, grad)


def _fake_out(x: torch.Tensor, output_split_sizes: list[int]) -> torch.Tensor:
    rows = sum(output_split_sizes) if output_split_sizes else x.shape[0]
    return x.new_empty((rows, *x.shape[1:]))


@torch.library.custom_op("mxa2a::all_to_all_single", mutates_args=())
def _op(x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int], group: str, wire: str,
        scale_mode: str, raw_fallback: bool, check: str) -> torch.Tensor:
    return _exchange(x, output_split_sizes, input_split_sizes, group, wire, scale_mode, raw_fallback, check)


@_op.register_fake
def _(x, output_split_sizes, input_split_sizes, group, wire, scale_mode, raw_fallback, check):
    return _fake_out(x, output_split_sizes)


@torch.library.custom_op("mxa2a::all_to_all_single_autograd", mutates_args=())
def _op_autograd(x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int], group: str,
                 wire: str, grad_wire: str, scale_mode: str, raw_fallback: bool, check: str) -> torch.Tensor:
    return _exchange(x, output_split_sizes, input_split_sizes, group, wire, scale_mode, raw_fallback, check)


@_op_autograd.register_fake
def _(x, output_split_sizes, input_split_sizes, group, wire, grad_wire, scale_mode, raw_fallback, check):
    return _fake_out(x, output_split_sizes)


def _setup_context(ctx, inputs, output) -> None:
    x, out_splits, in_splits, group, _wire_, grad_wire, scale_mode, raw_fallback, check = inputs
    ctx.args = (out_splits, in_splits, group, grad_wire, scale_mode, raw_fallback, check)
    ctx.in_rows = x.shape[0]


def _backward(ctx, grad: torch.Tensor):
    out_splits, in_splits, group, grad_wire, scale_mode, raw_fallback, check = ctx.args
    # The reverse exchange (straight-through for a lossy forward wire): what came from rank i goes back.
    back = in_splits
    if not in_splits and out_splits:  # the input was split equally: so is the gradient that comes back
        back = [ctx.in_rows // len(out_splits)] * len(out_splits)
    dx = torch.ops.mxa2a.all_to_all_single(grad, back, out_splits, group, grad_wire, scale_mode, raw_fallback,
                                           check)
    return dx, None, None, None, None, None, None, None, None


_op_autograd.register_autograd(_backward, setup_context=_setup_context)

# A collective has an effect its schema cannot show: every rank must run it. Marked side-effectful, the
# compiler keeps it where its result is unused or empty on this rank (Inductor dropped the backward
# exchange of a rank with no input rows, and its peers failed in that exchange).
torch.fx.node.has_side_effect(torch.ops.mxa2a.all_to_all_single.default)
torch.fx.node.has_side_effect(torch.ops.mxa2a.all_to_all_single_autograd.default)


def all_to_all_single(input: torch.Tensor, output_split_sizes: list[int] | None,
                      input_split_sizes: list[int] | None, group=None, tag: str = "", *,
                      wire: str | WireCodec = "mxfp4", scale_mode: str = "rceil", raw_fallback: bool = False,
                      check: bool | str | None = None) -> torch.Tensor:
    """Functional all-to-all: returns a new `[sum(output_split_sizes), *rest]` tensor of `input`'s dtype
    (None splits = equal split, output rows = input rows), as torch's
    `_functional_collectives.all_to_all_single`, with rows sent encoded by `wire`. Not differentiable
    (as torch's); use `all_to_all_single_autograd` for a gradient.

    Arguments:
        input: `[N, *rest]` tensor. Float rows are encoded with `wire` (last dim a multiple of 32 for
            "mxfp4", 128 for "fp8"); integer and bool tensors always travel raw.
        output_split_sizes / input_split_sizes: host lists of rows from / to each rank, or None.
        group: ProcessGroup, 1-D DeviceMesh, (DeviceMesh, dim), group name or list of ranks (None = world).
        tag: accepted for torch's signature and ignored (as in torch, where it is deprecated).
        wire, scale_mode, check: as in the in-place `mxa2a.comm.all_to_all_single`. Under torch.compile
            pass `wire` as a name, or a WireCodec's `wire_key(codec)` computed outside the compiled code.
        raw_fallback: False (default): a float tensor `wire` cannot encode (e.g. 1-D, or a last dim that
            is not a multiple of the block) raises ValueError / TypeError on every rank of a checked call.
            True: such a tensor is sent raw instead (every rank must decide alike: same shapes' rule).

    Returns, in eager mode, torch's `AsyncCollectiveTensor`: the rows are encoded and the transfer
    started before the call returns (on a GPU: queued, the host not blocked); the first operation on the
    result (or `torch.ops._c10d_functional.wait_tensor`) waits for the transfer and decodes, so work
    issued in between overlaps it, as with torch's. Under torch.compile the op is one blocking node that
    Inductor does not reorder (torch's own collectives can be moved for overlap; these cannot). A torch
    without `PythonCallbackWork` gets a finished tensor.
    """
    args = (input, _splits("output_split_sizes", output_split_sizes),
            _splits("input_split_sizes", input_split_sizes), group_name(group), wire_key(wire), scale_mode,
            raw_fallback, _check_arg(check))
    if _CAN_DEFER and _eager():
        out, work = _exchange(*args, async_op=True)
        _defer(out, work)
        return funcol.AsyncCollectiveTensor(out)
    return torch.ops.mxa2a.all_to_all_single(*args)


def all_to_all_single_autograd(input: torch.Tensor, output_split_sizes: list[int] | None,
                               input_split_sizes: list[int] | None, group=None, tag: str = "", *,
                               wire: str | WireCodec = "mxfp4", grad_wire: str | WireCodec = "raw",
                               scale_mode: str = "rceil", raw_fallback: bool = False,
                               check: bool | str | None = None) -> torch.Tensor:
    """Differentiable `all_to_all_single` (torch's `all_to_all_single_autograd`): forward sends `input`
    with `wire`; backward sends the output's gradient the opposite way (splits swapped) with
    `grad_wire` ("raw" by default: the exact gradient of the lossy forward's straight-through estimate).
    Arguments and return as in `all_to_all_single` (an AsyncCollectiveTensor in eager mode where torch
    has `_wrap_tensor_autograd`, else a finished tensor); `raw_fallback` applies to both directions.
    """
    args = (input, _splits("output_split_sizes", output_split_sizes),
            _splits("input_split_sizes", input_split_sizes), group_name(group), wire_key(wire),
            wire_key(grad_wire), scale_mode, raw_fallback, _check_arg(check))
    if _CAN_DEFER_AUTOGRAD and _eager():
        return funcol._maybe_wrap_tensor(_DeferredAllToAll.apply(*args))
    return torch.ops.mxa2a.all_to_all_single_autograd(*args)
