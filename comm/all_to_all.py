"""Compressed all-to-all with the signatures of `torch.distributed.all_to_all_single` / `all_to_all`.

A call has four steps, each made once: resolve the codec (`mxa2a.quant.wire`) and validate the
arguments locally into an `ExchangePlan`; agree across ranks (`comm.header`: by default a header
all-to-all on the first call of each signature, the only host sync); run the plan (`comm.exchange`:
one encode launch into a packed `uint8 [N, row_bytes]` buffer, ONE `dist.all_to_all_single`, one
decode launch). A local error is raised on every rank of a checked call, on its own rank otherwise.
Bytes on the wire per row of H elements: raw H * itemsize, bf16 2H, fp8 H + H/128, mxfp4 H/2 + H/32,
the last two padded to a multiple of 16 (H=7168: fp8 7232, mxfp4 3808); checked calls add the header,
`8W(10 + 2W)` bytes received per rank (W = group size).
"""

from __future__ import annotations

import math
import operator
import zlib
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..quant.formats import FP8Tensor
from ..quant.wire import RawWire, Rows, WireCodec, get_codec
from .exchange import AllToAllWork, ExchangePlan
from .groups import resolve_group
from .header import USES_SIGNATURES, agree, call_signature, next_call_number, resolve_check
from .staging import release_staging_buffers

__all__ = ["AllToAllWork", "all_to_all", "all_to_all_single", "release_staging_buffers", "DEFAULT_CHUNKS"]

# chunks=None means this: on 2x H100 the pipelined call costs as much host time as the GPU work it
# would hide (benchmarks/results/README.md, "comm history"), so 1 stays the default.
DEFAULT_CHUNKS = 1


# ----------------------------------------------------------------------------------------------------
# Public API.

def all_to_all_single(output: torch.Tensor | FP8Tensor, input: torch.Tensor | FP8Tensor,
                      output_split_sizes: list[int] | None = None, input_split_sizes: list[int] | None = None,
                      group: dist.ProcessGroup | None = None, async_op: bool = False, *,
                      wire: str | WireCodec = "mxfp4", scale_mode: str = "rceil",
                      chunks: int | None = None, check: bool | str | None = None) -> AllToAllWork | None:
    """Drop-in for `torch.distributed.all_to_all_single` that sends `input` encoded with `wire`.

    Arguments:
        output: `[M, *rest]` contiguous tensor (float32/bfloat16/float16; any dtype equal to the input's for
            "raw"), or an FP8Tensor (wires "fp8" and "mxfp4"). Receives the decoded rows, in place.
        input: `[N, *rest]` tensor or FP8Tensor. Rows have prod(rest) elements; the encoded axis is the last
            one, a multiple of 32 ("mxfp4") or 128 ("fp8"), else ValueError.
        output_split_sizes / input_split_sizes: rows of dim 0 received from / sent to each rank of the
            group; None = equal split (dim 0 divisible by the group size), exactly as in torch.distributed.
            A rank's rows to itself must be as many as its rows from itself (else ValueError).
        group, async_op: as in torch.distributed; `group` may also be a 1-D DeviceMesh, a group name or
            a list of ranks, as torch's functional collectives accept (`mxa2a.comm.groups`). With `async_op=True` returns an `AllToAllWork` whose
            `wait()` also finishes decoding into `output`; else returns None when `output` is ready
            (on a GPU: ready in the current stream's order).
        wire: "raw" (the input's bytes), "bf16", "fp8" (E4M3, 1x128 tiles, UE8M0 scales), "mxfp4" (E2M1,
            32-blocks, E8M0 scales) or a `mxa2a.quant.wire.WireCodec`. Same on every rank. Integer and
            bool tensors always travel "raw", whatever `wire` says (no codec applies to them).
        scale_mode: "rceil" (default) or "floor", the MXFP4 scale rule (ignored by the other wires).
        chunks: None = `DEFAULT_CHUNKS` (1). 1 = one encode launch, one collective, one decode launch.
            c > 1 = pipelined (see the module docstring): own rows encoded and decoded locally, the
            others' rows in c collectives overlapped with encode / decode on two side streams (GPU); on
            CPU the result is the same. Same on every rank.
        check: the format check (`mxa2a.comm.header`) that every rank uses the same wire format,
            scale_mode, chunks and row shape, and matching splits, before any payload moves; on failure
            every rank raises the same exception. None (default) = the process default, environment
            variable MXA2A_CHECK (always / first / tagged / never, read once) else "first".
            - True / "always": every call exchanges a header (`10 + 2W` int64 per rank) and reads it
              on the host: one extra collective and a host sync per call (on an NCCL-only group a
              device sync). Debug mode; also reports a bad argument on one rank on every rank.
            - "first": only the first call of each signature on a group checks (signature = op, wire,
              scale_mode, chunks, input/output dtypes, row_elems; NOT the splits). Later calls with that
              signature cost no collective and no sync. Guarantees: a misconfiguration present from the
              first call of a signature (e.g. one rank with another wire, dtype, row size or chunks, or
              with "always" while the others use "first") raises on every rank at that call. Not
              detected: a rank switching to another format later while the others keep an already
              verified signature (the ranks then fall out of step, as with torch.distributed: a hang
              until the group's timeout, an abort in gloo, or NaN rows), split sizes that disagree on
              later calls (rows that never arrive decode to NaN), and a bad argument on one rank of a
              verified call, which raises on that rank only.
            - "tagged": "first" plus a 16-byte tag in every row (magic, format digest, call number),
              compared on receipt: a rank that receives rows of another format, too few rows, or rows
              of another call raises (CPU) or fails `torch._assert_async` (GPU, no host sync).
            - False / "never": no header at all; a mismatch is undetected, as with torch.distributed.
            Every rank must use the same policy.

    Bytes on the wire: `row_bytes` per row, sent rows = N: mxfp4 17/32 byte per element (3.76x fewer than
    bf16), fp8 129/128, bf16 2, raw the input's itemsize; fp8 and mxfp4 rows are padded to a multiple of
    16 bytes (alignment for NCCL and the codecs; H=7168: fp8 7232, mxfp4 3808); plus the header on
    checked calls; "tagged" rounds each row up to 16 bytes and adds 16.

    Host syncs: only checked calls (see `check`). Nothing else syncs or reads tensor values: splits are
    host lists, as in torch.distributed. With `chunks > 1` on a CPU and `async_op=True`, decoding
    happens in `wait()`.
    """
    group = resolve_group(group)
    world = dist.get_world_size(group)
    hint = input.device if isinstance(input, (torch.Tensor, FP8Tensor)) else None

    def plan(codec: WireCodec, c: int) -> ExchangePlan:
        _check_rows_arg("input", input)
        _check_rows_arg("output", output)
        codec.check_input(input)
        codec.check_output(output)
        _check_pair_compat(codec, output, input)
        in_splits = _resolve_splits("input_split_sizes", input_split_sizes, input.shape[0], "input", world)
        out_splits = _resolve_splits("output_split_sizes", output_split_sizes, output.shape[0], "output",
                                     world)
        return _plan(codec, c, [input], [output], in_splits, out_splits)

    return _call("all_to_all_single", plan, [input], [output], hint, group, world, async_op, wire,
                 scale_mode, chunks, check)


def all_to_all(output_tensor_list: list[torch.Tensor | FP8Tensor],
               input_tensor_list: list[torch.Tensor | FP8Tensor], group: dist.ProcessGroup | None = None,
               async_op: bool = False, *, wire: str | WireCodec = "mxfp4", scale_mode: str = "rceil",
               chunks: int | None = None, check: bool | str | None = None) -> AllToAllWork | None:
    """Drop-in for `torch.distributed.all_to_all`: `input_tensor_list[j]` goes to rank j, and
    `output_tensor_list[i]` receives what rank i sent, all encoded with `wire`.

    The lists hold one tensor (or FP8Tensor) per rank of the group, each `[n_j, *rest]` with the same
    number of elements per row; the tensors are encoded into ONE packed buffer (one encode kernel per
    tensor, no concatenated copy) and exchanged with one `all_to_all_single` with splits `n_j`; outputs
    must be contiguous. Everything else (wires, bytes on the wire, `check` and host syncs, `chunks`,
    return value) is as in `all_to_all_single`.
    """
    group = resolve_group(group)
    world = dist.get_world_size(group)
    first = input_tensor_list[0] if isinstance(input_tensor_list, (list, tuple)) and input_tensor_list else None
    hint = first.device if isinstance(first, (torch.Tensor, FP8Tensor)) else None

    def plan(codec: WireCodec, c: int) -> ExchangePlan:
        for name, lst in (("input_tensor_list", input_tensor_list),
                          ("output_tensor_list", output_tensor_list)):
            if not isinstance(lst, (list, tuple)) or len(lst) != world:
                got = len(lst) if isinstance(lst, (list, tuple)) else type(lst).__name__
                raise ValueError(f"{name} must be a list with one tensor per rank of the group ({world}), "
                                 f"got {got}")
            for j, t in enumerate(lst):
                _check_rows_arg(f"{name}[{j}]", t)
        for t in input_tensor_list:
            codec.check_input(t)
        for t in output_tensor_list:
            codec.check_output(t)
        for j, t in enumerate(input_tensor_list):
            _check_list_input(codec, t, first, j)
        for j, t in enumerate(output_tensor_list):
            _check_pair_compat(codec, t, first, out_name=f"output_tensor_list[{j}]",
                               in_name="input_tensor_list[0]")
        return _plan(codec, c, list(input_tensor_list), list(output_tensor_list),
                     [t.shape[0] for t in input_tensor_list], [t.shape[0] for t in output_tensor_list])

    lists = all(isinstance(x, (list, tuple)) for x in (input_tensor_list, output_tensor_list))
    return _call("all_to_all", plan, input_tensor_list if lists else [], output_tensor_list if lists else [],
                 hint, group, world, async_op, wire, scale_mode, chunks, check)


# ----------------------------------------------------------------------------------------------------
# The steps of a call.

def _call(op: str, plan: Callable[[WireCodec, int], ExchangePlan], inputs: Sequence, outputs: Sequence,
          hint: torch.device | None, group, world: int, async_op: bool, wire, scale_mode, chunks,
          check) -> AllToAllWork | None:
    """Resolve and validate (`plan`), agree across ranks, run. A local TypeError / ValueError is held
    until `agree`, which raises it on every rank of a checked call and on this rank otherwise."""
    policy = resolve_check(check)
    codec, c, p, local_error = None, chunks, None, None
    try:
        codec = _codec(wire, scale_mode)
        if _no_codec_applies(inputs):
            codec = _RAW
        c = _resolve_chunks(chunks)
        p = plan(codec, c)
    except (TypeError, ValueError) as e:
        local_error = e
    sig = None
    if policy in USES_SIGNATURES:
        sig = call_signature(op, *_sig_wire(codec, wire, scale_mode), c, inputs, outputs)
        if sig is not None and policy == "tagged":
            sig += ("tagged",)
    tagged = policy == "tagged"
    agree(op, group, world, hint, policy, sig, None if p is None else _header_fields(p, tagged),
          None if p is None else p.in_splits, None if p is None else p.out_splits, local_error)
    _check_own_rows(p.in_splits, p.out_splits, dist.get_rank(group))
    if tagged:
        p.use_tag(_call_tag(p, group))
    return p.run(group, async_op)


TAG_MAGIC = 0x6D786174  # "mxat"


def _call_tag(p: ExchangePlan, group) -> torch.Tensor:
    """This call's in-band tag (check="tagged"): int32 [magic, digest of the format, call number on the
    group, its complement], on the plan's device without a host sync (pinned, non-blocking copy)."""
    n = next_call_number(group) & 0x7FFFFFFF
    digest = zlib.crc32(repr(_header_fields(p, True)).encode()) & 0x7FFFFFFF
    tag = torch.tensor([TAG_MAGIC, digest, n, ~n], dtype=torch.int32)
    if p.device.type != "cuda":
        return tag
    return tag.pin_memory().to(p.device, non_blocking=True)


def _plan(codec: WireCodec, c: int, inputs: list[Rows], outputs: list[Rows], in_splits: list[int],
          out_splits: list[int]) -> ExchangePlan:
    row_elems = _row_elems(inputs[0])
    dtype = _dtype(inputs[0])
    return ExchangePlan(codec, [_as_2d(t) for t in inputs], [_as_2d(t) for t in outputs], in_splits,
                        out_splits, row_elems, codec.row_bytes(row_elems, dtype), dtype,
                        _device(inputs[0]), c)


def _header_fields(p: ExchangePlan, tagged: bool) -> list[int]:
    """The header's format fields (see `comm.header.agree`)."""
    raw_dtype = _dtype_code(p.dtype) if isinstance(p.codec, RawWire) else 0
    row_bytes = p.tagged_row_bytes() if tagged else p.codec_row_bytes
    return [p.codec.wire_id, p.codec.scale_mode_id, p.chunks, p.row_elems, raw_dtype, row_bytes]


def _sig_wire(codec: WireCodec | None, wire, scale_mode) -> tuple:
    """(wire, scale_mode) of the call signature: the resolved codec (which holds its scale_mode) when
    there is one, else the arguments as given."""
    return (codec, None) if codec is not None else (wire, scale_mode)


_RAW = RawWire()


def _no_codec_applies(inputs: Sequence) -> bool:
    """Integer and bool rows have no lossy encoding: they travel raw whatever the wire (the token counts
    and indices of a dispatcher go through the same call as its activations)."""
    return bool(inputs) and all(isinstance(t, torch.Tensor) and not t.dtype.is_floating_point
                                and not t.dtype.is_complex for t in inputs)


def _check_own_rows(in_splits: list[int], out_splits: list[int], me: int) -> None:
    """A rank's rows to itself are both sent and received by it: the two counts must agree."""
    if in_splits[me] != out_splits[me]:
        raise ValueError(f"this rank ({me}) sends {in_splits[me]} rows to itself (input_split_sizes[{me}]) "
                         f"but expects {out_splits[me]} from itself (output_split_sizes[{me}])")


# ----------------------------------------------------------------------------------------------------
# Public API.


# ----------------------------------------------------------------------------------------------------
# Local validation.

def _row_elems(t: Rows) -> int:
    return math.prod(t.shape[1:])


def _as_2d(t: Rows) -> Rows:
    n = t.shape[0]
    if isinstance(t, FP8Tensor):
        return FP8Tensor(t.data.reshape(n, _row_elems(t)), t.scales.reshape(n, math.prod(t.scales.shape[1:])))
    return t.reshape(n, _row_elems(t))


def _is_contiguous(t: Rows) -> bool:
    if isinstance(t, FP8Tensor):
        return t.data.is_contiguous() and t.scales.is_contiguous()
    return t.is_contiguous()


def _device(t: Rows) -> torch.device:
    return t.device


def _dtype(t: Rows) -> torch.dtype:
    return t.data.dtype if isinstance(t, FP8Tensor) else t.dtype


def _check_rows_arg(name: str, t) -> None:
    if not isinstance(t, (torch.Tensor, FP8Tensor)):
        raise TypeError(f"{name} must be a torch.Tensor or an mxa2a FP8Tensor, got {type(t).__name__}")
    if len(t.shape) < 1:
        raise ValueError(f"{name} must have shape [N, *rest] (at least 1 dimension), got a 0-d tensor")


def _resolve_splits(name: str, splits, rows: int, tensor_name: str, world: int) -> list[int]:
    """None / [] = equal split; else what torch.distributed takes: a list, tuple or numpy array of
    integers (Python or numpy; bool and floats refused), one per rank of the group, summing to `rows`."""
    if splits is None or (isinstance(splits, (list, tuple)) and len(splits) == 0):
        if rows % world != 0:
            raise ValueError(f"{name} is None, so dim 0 of {tensor_name} ({rows} rows) must divide equally "
                             f"by the group size {world}")
        return [rows // world] * world
    ints = _as_ints(splits)
    if ints is None:
        raise TypeError(f"{name} must be None or a list of {world} ints (rows of dim 0 per rank), "
                        f"got {splits!r}")
    if len(ints) != world:
        raise ValueError(f"{name} must have one entry per rank of the group ({world}), got {len(ints)}: "
                         f"{ints}")
    if any(s < 0 for s in ints):
        raise ValueError(f"{name} must be non-negative, got {ints}")
    if sum(ints) != rows:
        raise ValueError(f"{name} must sum to dim 0 of {tensor_name} ({rows} rows), got {ints} "
                         f"(sum {sum(ints)})")
    return ints


def _as_ints(splits) -> list[int] | None:
    """`splits` as Python ints, or None when it is not a list / tuple / 1-D numpy array of integers."""
    if type(splits).__module__ == "numpy" and getattr(splits, "ndim", None) == 1:
        splits = splits.tolist()  # numpy integer arrays; a float array gives floats, refused below
    if not isinstance(splits, (list, tuple)):
        return None
    out = []
    for v in splits:
        if isinstance(v, (bool, float)) or type(v).__module__ == "numpy" and type(v).__name__.startswith("bool"):
            return None
        try:
            out.append(operator.index(v))  # int and numpy integers
        except TypeError:
            return None
    return out


def _resolve_chunks(chunks) -> int:
    if chunks is None:
        return DEFAULT_CHUNKS
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f"chunks must be None or an int >= 1, got {chunks!r}")
    return chunks


def _dtype_code(dtype: torch.dtype) -> int:
    return zlib.crc32(str(dtype).encode())


_codec_cache: dict = {}


_codec_cache: dict = {}


def _codec(wire: str | WireCodec, scale_mode: str) -> WireCodec:
    """`get_codec`, remembered per (name, scale_mode): codec objects are frozen, so one serves every call."""
    if not isinstance(wire, str) or not isinstance(scale_mode, str):
        return get_codec(wire, scale_mode)
    codec = _codec_cache.get((wire, scale_mode))
    if codec is None:
        codec = _codec_cache[(wire, scale_mode)] = get_codec(wire, scale_mode)
    return codec


def _check_pair_compat(codec: WireCodec, out: Rows, inp: Rows, out_name: str = "output",
                       in_name: str = "input") -> None:
    """Local checks between an output and the input it will receive rows like."""
    if _device(out) != _device(inp):
        raise ValueError(f"{out_name} is on {_device(out)} but {in_name} on {_device(inp)}")
    if _row_elems(out) != _row_elems(inp):
        raise ValueError(f"{out_name} rows must hold as many elements as {in_name} rows: {out_name} has "
                         f"shape {tuple(out.shape)}, {in_name} {tuple(inp.shape)}")
    if isinstance(codec, RawWire) and _dtype(out) != _dtype(inp):
        raise TypeError(f"wire 'raw' sends the input's own bytes: {out_name} must have {in_name}'s dtype "
                        f"{_dtype(inp)}, got {_dtype(out)}")
    if not _is_contiguous(out):
        raise ValueError(f"{out_name} must be contiguous (it is written in place)")


def _check_list_input(codec: WireCodec, t: Rows, first: Rows, j: int) -> None:
    name = f"input_tensor_list[{j}]"
    if _device(t) != _device(first):
        raise ValueError(f"{name} is on {_device(t)} but input_tensor_list[0] on {_device(first)}")
    if _row_elems(t) != _row_elems(first):
        raise ValueError(f"every input tensor's rows must hold the same number of elements: {name} has shape "
                         f"{tuple(t.shape)}, input_tensor_list[0] {tuple(first.shape)}")
    if isinstance(codec, RawWire) and _dtype(t) != _dtype(first):
        raise TypeError(f"wire 'raw' needs one dtype: {name} is {_dtype(t)}, input_tensor_list[0] "
                        f"{_dtype(first)}")
