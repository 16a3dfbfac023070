"""Compressed all-to-all with the signatures of `torch.distributed.all_to_all_single` / `all_to_all`.

One call = one header exchange (skipped with `check=False`: a check that every rank agrees on the format),
one encode kernel into a packed buffer `uint8 [N, row_bytes]`, ONE `dist.all_to_all_single` of that
buffer with the caller's row splits, and one decode kernel into the output. With `chunks=c > 1` the rows
of every split are cut into `c` row ranges and exchanged in `c` collectives, so that on a GPU encoding
chunk k+1 (side stream) overlaps the transfer of chunk k, and decoding chunk k (another side stream)
overlaps the transfer of chunk k+1.

Bytes on the wire per row of H elements: raw = H * itemsize, bf16 = 2H, fp8 = H + H/128,
mxfp4 = H/2 + H/32 (see `mxa2a.quant.wire`), plus the header: one `all_gather` of `8 + 2W` int64 per
rank (W = group size), i.e. `8W(8 + 2W)` bytes received per rank per call.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import zlib
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..quant.formats import FP8Tensor
from ..quant.wire import RawWire, Rows, WireCodec, get_codec

_HEADER_MAGIC = 0x6D786132  # "mxa2" : guards against a header colliding with some other collective
_HEADER_FIELDS = ("magic", "error", "wire", "scale_mode", "chunks", "row_elems", "raw dtype", "row_bytes")
_WIRE_NAMES = {1: "raw", 2: "bf16", 3: "fp8", 4: "mxfp4"}


# ----------------------------------------------------------------------------------------------------
# Row blocks: a 2-D `[n, R]` tensor or an FP8Tensor whose data is `[n, R]` and scales `[n, R/128]`.

def _nrows(p: Rows) -> int:
    return (p.data if isinstance(p, FP8Tensor) else p).shape[0]


def _row_slice(p: Rows, a: int, b: int) -> Rows:
    if isinstance(p, FP8Tensor):
        return FP8Tensor(p.data[a:b], p.scales[a:b])
    return p[a:b]


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


def _record_stream(t: Rows, stream) -> None:
    for x in (t.data, t.scales) if isinstance(t, FP8Tensor) else (t,):
        if x.is_cuda:
            x.record_stream(stream)


def _slices(parts: Sequence[Rows], a: int, b: int):
    """Yield (row block, offset within [a, b)) covering logical rows [a, b) of the concatenated parts."""
    pos = 0
    for p in parts:
        n = _nrows(p)
        lo, hi = max(a, pos), min(b, pos + n)
        if lo < hi:
            yield _row_slice(p, lo - pos, hi - pos), lo - a
        pos += n


# ----------------------------------------------------------------------------------------------------
# Validation (local) and the header check (across ranks).

def _check_rows_arg(name: str, t) -> None:
    if not isinstance(t, (torch.Tensor, FP8Tensor)):
        raise TypeError(f"{name} must be a torch.Tensor or an mxa2a FP8Tensor, got {type(t).__name__}")
    if len(t.shape) < 1:
        raise ValueError(f"{name} must have shape [N, *rest] (at least 1 dimension), got a 0-d tensor")


def _resolve_splits(name: str, splits, rows: int, tensor_name: str, world: int) -> list[int]:
    if splits is None or (isinstance(splits, (list, tuple)) and len(splits) == 0):
        if rows % world != 0:
            raise ValueError(f"{name} is None, so dim 0 of {tensor_name} ({rows} rows) must divide equally "
                             f"by the group size {world}")
        return [rows // world] * world
    if not isinstance(splits, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                        for s in splits):
        raise TypeError(f"{name} must be None or a list of {world} ints (rows of dim 0 per rank), "
                        f"got {splits!r}")
    if len(splits) != world:
        raise ValueError(f"{name} must have one entry per rank of the group ({world}), got {len(splits)}: "
                         f"{list(splits)}")
    if any(s < 0 for s in splits):
        raise ValueError(f"{name} must be non-negative, got {list(splits)}")
    if sum(splits) != rows:
        raise ValueError(f"{name} must sum to dim 0 of {tensor_name} ({rows} rows), got {list(splits)} "
                         f"(sum {sum(splits)})")
    return list(splits)


def _resolve_chunks(chunks) -> int:
    if chunks is None:
        return 1
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f"chunks must be None or an int >= 1, got {chunks!r}")
    return chunks


def _dtype_code(dtype: torch.dtype) -> int:
    return zlib.crc32(str(dtype).encode())


def _header_device(group, hint: torch.device | None) -> torch.device:
    """CPU when the group has a CPU backend (gloo, mpi, or 'cpu:gloo,cuda:nccl'), else the CUDA device."""
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        if hint is not None and hint.type == "cuda":
            return hint
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _exchange_header(fields: list[int], world: int, group, device: torch.device) -> list[list[int]]:
    """All-gather every rank's header. Syncs the host (reads the result); on an NCCL-only group this is
    also a device sync (the host waits for the work already queued on the current stream)."""
    mine = torch.tensor(fields, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    return torch.stack(gathered).tolist()


def _check_headers(op: str, headers: list[list[int]], world: int) -> None:
    """Raise the same exception on every rank when the ranks' headers disagree."""
    bad = [r for r, h in enumerate(headers) if h[0] != _HEADER_MAGIC]
    if bad:
        raise RuntimeError(f"{op}: ranks {bad} sent no mxa2a header: every rank of the group must call "
                           f"{op} (not torch.distributed's) at the same time")
    faulty = [r for r, h in enumerate(headers) if h[1] != 0]
    if faulty:
        raise RuntimeError(f"{op}: rank(s) {faulty} rejected their arguments (see the exception raised "
                           f"there); nothing was exchanged")
    for i, field in enumerate(_HEADER_FIELDS[2:], start=2):
        values = [h[i] for h in headers]
        if len(set(values)) > 1:
            if field == "wire":
                values = [_WIRE_NAMES.get(v, f"codec#{v}") for v in values]
            elif field == "scale_mode":
                values = [("-", "floor", "rceil")[v] if 0 <= v <= 2 else v for v in values]
            raise ValueError(f"{op}: ranks disagree on the {field} (by rank: {values}); every rank must "
                             f"use the same wire format, scale_mode, chunks and row shape")
    base = len(_HEADER_FIELDS)
    for i in range(world):
        for j in range(world):
            sent = headers[i][base + j]
            expected = headers[j][base + world + i]
            if sent != expected:
                raise ValueError(f"{op}: rank {i} sends {sent} rows to rank {j} (its input_split_sizes[{j}])"
                                 f" but rank {j} expects {expected} (its output_split_sizes[{i}])")


def _agree(op: str, group, world: int, device_hint: torch.device | None, plan_fields: list[int] | None,
           in_splits: list[int] | None, out_splits: list[int] | None, local_error: BaseException | None,
           chunks: int, check: bool) -> None:
    if not check:
        if local_error is not None:
            raise local_error
        return
    if local_error is not None or plan_fields is None:
        fields = [_HEADER_MAGIC, 1] + [0] * (len(_HEADER_FIELDS) - 2) + [0] * (2 * world)
    else:
        fields = [_HEADER_MAGIC, 0] + plan_fields[:2] + [chunks] + plan_fields[2:] + in_splits + out_splits
    headers = _exchange_header(fields, world, group, _header_device(group, device_hint))
    if local_error is not None:
        raise local_error
    _check_headers(op, headers, world)


# ----------------------------------------------------------------------------------------------------
# The exchange.

class AllToAllWork:
    """Handle of an `async_op=True` call. `wait()` waits for the transfer and decodes into the output
    (on a GPU: enqueues the decode and makes the current stream wait, like a NCCL Work; on CPU: blocks).
    `is_completed()` is non-blocking; once it returns True the output holds the result (on a GPU: in
    the current stream's order, as after `wait()`)."""

    def __init__(self, finish: Callable[[], None], poll: Callable[[], bool]) -> None:
        self._finish = finish
        self._poll = poll
        self._done = False

    def wait(self, timeout=None) -> bool:
        if not self._done:
            self._finish()
            self._done = True
        return True

    def is_completed(self) -> bool:
        if not self._done and self._poll():
            self.wait()
        return self._done


_side_streams: dict = {}


def _streams(device: torch.device):
    if device not in _side_streams:
        _side_streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return _side_streams[device]


class _Exchange:
    """One planned exchange of the logical rows `in_parts` (concatenated) into `out_parts`."""

    def __init__(self, codec: WireCodec, in_parts: list[Rows], out_parts: list[Rows], in_splits: list[int],
                 out_splits: list[int], row_bytes: int, device: torch.device, group, chunks: int) -> None:
        self.codec, self.in_parts, self.out_parts = codec, in_parts, out_parts
        self.in_splits, self.out_splits = in_splits, out_splits
        self.row_bytes, self.device, self.group, self.chunks = row_bytes, device, group, chunks
        self.in_off = [0] + list(itertools.accumulate(in_splits))
        self.out_off = [0] + list(itertools.accumulate(out_splits))

    # --- one collective over everything ---------------------------------------------------------
    def _zero_copy(self, parts: list[Rows]) -> torch.Tensor | None:
        if (isinstance(self.codec, RawWire) and len(parts) == 1 and isinstance(parts[0], torch.Tensor)
                and parts[0].is_contiguous()):
            return parts[0].view(torch.uint8)
        return None

    def run_single(self, async_op: bool) -> AllToAllWork | None:
        n, m = self.in_off[-1], self.out_off[-1]
        send = self._zero_copy(self.in_parts)
        if send is None:
            send = torch.empty((n, self.row_bytes), dtype=torch.uint8, device=self.device)
            for piece, off in _slices(self.in_parts, 0, n):
                self.codec.encode(piece, send[off:off + _nrows(piece)])
        recv_direct = self._zero_copy(self.out_parts)
        recv = recv_direct if recv_direct is not None else torch.empty(
            (m, self.row_bytes), dtype=torch.uint8, device=self.device)
        work = dist.all_to_all_single(recv, send, self.out_splits, self.in_splits, group=self.group,
                                      async_op=async_op)

        def finish(_send: torch.Tensor = send) -> None:  # holds the send buffer until the transfer is over
            if work is not None:
                work.wait()
            if recv_direct is None:
                for piece, off in _slices(self.out_parts, 0, m):
                    self.codec.decode(recv[off:off + _nrows(piece)], piece)

        if not async_op:
            finish()
            return None
        return AllToAllWork(finish, work.is_completed)

    # --- c collectives, each over a row range of every split ---------------------------------------
    def _chunk(self, splits: list[int], offsets: list[int],
               k: int) -> tuple[list[int], list[tuple[int, int]]]:
        c = self.chunks
        counts, ranges = [], []
        for s, o in zip(splits, offsets):
            lo, hi = s * k // c, s * (k + 1) // c
            counts.append(hi - lo)
            ranges.append((o + lo, o + hi))
        return counts, ranges

    def run_chunked(self, async_op: bool) -> AllToAllWork | None:
        cuda = self.device.type == "cuda"
        if cuda:
            main = torch.cuda.current_stream(self.device)
            enc, dec = _streams(self.device)
            enc.wait_stream(main)
            dec.wait_stream(main)
            for p in self.in_parts:
                _record_stream(p, enc)
            for p in self.out_parts:
                _record_stream(p, dec)
        ctx_enc = (lambda: torch.cuda.stream(enc)) if cuda else contextlib.nullcontext
        ctx_dec = (lambda: torch.cuda.stream(dec)) if cuda else contextlib.nullcontext

        def issue(k: int):
            s_counts, s_ranges = self._chunk(self.in_splits, self.in_off[:-1], k)
            r_counts, r_ranges = self._chunk(self.out_splits, self.out_off[:-1], k)
            with ctx_enc():
                send = torch.empty((sum(s_counts), self.row_bytes), dtype=torch.uint8, device=self.device)
                recv = torch.empty((sum(r_counts), self.row_bytes), dtype=torch.uint8, device=self.device)
                pos = 0
                for a, b in s_ranges:
                    for piece, off in _slices(self.in_parts, a, b):
                        self.codec.encode(piece, send[pos + off:pos + off + _nrows(piece)])
                    pos += b - a
                work = dist.all_to_all_single(recv, send, r_counts, s_counts, group=self.group,
                                              async_op=True)
            if cuda:
                # Freed after dec has waited for the transfer, so the allocator cannot hand them to
                # another stream while NCCL still reads or writes them.
                send.record_stream(dec)
                recv.record_stream(dec)
            return work, send, recv, r_ranges

        def finish(item) -> None:
            work, _send, recv, r_ranges = item
            with ctx_dec():
                work.wait()
                pos = 0
                for a, b in r_ranges:
                    for piece, off in _slices(self.out_parts, a, b):
                        self.codec.decode(recv[pos + off:pos + off + _nrows(piece)], piece)
                    pos += b - a

        pending: collections.deque = collections.deque()
        works = []
        # On a CPU, work.wait() blocks the host, so an async call only issues and wait() decodes.
        defer = async_op and not cuda
        for k in range(self.chunks):
            item = issue(k)
            works.append(item[0])
            pending.append(item)
            if not defer and len(pending) > 1:
                finish(pending.popleft())

        if not defer:
            while pending:
                finish(pending.popleft())

        def complete() -> None:
            while pending:
                finish(pending.popleft())
            if cuda:
                torch.cuda.current_stream(self.device).wait_stream(dec)

        if not async_op:
            if cuda:
                main.wait_stream(dec)
            return None
        return AllToAllWork(complete, lambda: all(w.is_completed() for w in works))

    def run(self, async_op: bool) -> AllToAllWork | None:
        if self.chunks == 1:
            return self.run_single(async_op)
        return self.run_chunked(async_op)


def _plan_fields(codec: WireCodec, row_elems: int, row_bytes: int, dtype: torch.dtype) -> list[int]:
    raw_dtype = _dtype_code(dtype) if isinstance(codec, RawWire) else 0
    return [codec.wire_id, codec.scale_mode_id, row_elems, raw_dtype, row_bytes]


# ----------------------------------------------------------------------------------------------------
# Public API.

def all_to_all_single(output: torch.Tensor | FP8Tensor, input: torch.Tensor | FP8Tensor,
                      output_split_sizes: list[int] | None = None, input_split_sizes: list[int] | None = None,
                      group: dist.ProcessGroup | None = None, async_op: bool = False, *,
                      wire: str | WireCodec = "mxfp4", scale_mode: str = "rceil",
                      chunks: int | None = None, check: bool = True) -> AllToAllWork | None:
    """Drop-in for `torch.distributed.all_to_all_single` that sends `input` encoded with `wire`.

    Arguments:
        output: `[M, *rest]` contiguous tensor (float32/bfloat16/float16; any dtype equal to the input's for
            "raw"), or an FP8Tensor (wires "fp8" and "mxfp4"). Receives the decoded rows, in place.
        input: `[N, *rest]` tensor or FP8Tensor. Rows have prod(rest) elements; the encoded axis is the last
            one, a multiple of 32 ("mxfp4") or 128 ("fp8"), else ValueError.
        output_split_sizes / input_split_sizes: rows of dim 0 received from / sent to each rank of the
            group; None = equal split (dim 0 divisible by the group size), exactly as in torch.distributed.
        group, async_op: as in torch.distributed. With `async_op=True` returns an `AllToAllWork` whose
            `wait()` also finishes decoding into `output`; else returns None when `output` is ready
            (on a GPU: ready in the current stream's order).
        wire: "raw" (the input's bytes), "bf16", "fp8" (E4M3, 1x128 tiles, UE8M0 scales), "mxfp4" (E2M1,
            32-blocks, E8M0 scales) or a `mxa2a.quant.wire.WireCodec`. Same on every rank.
        scale_mode: "rceil" (default) or "floor", the MXFP4 scale rule (ignored by the other wires).
        chunks: None or 1 = one collective; c > 1 cuts every split into c row ranges and pipelines
            encode / transfer / decode over c collectives (on GPU on two side streams; on CPU the
            exchange is the same, only less overlapped). Same on every rank.
        check: True (default) = exchange and compare the header below before sending anything. False
            skips it (no extra collective, no host sync); then, as with torch.distributed, every rank
            must pass the same wire / scale_mode / chunks / row shape and matching splits, or the
            exchange may hang until the process-group timeout or decode garbage, and a bad argument
            raises only on its own rank. Same on every rank.

    Bytes on the wire: `row_bytes` per row, sent rows = N: mxfp4 17/32 byte per element (3.76x fewer than
    bf16), fp8 129/128, bf16 2, raw the input's itemsize. Plus a header: one `all_gather` of `8 + 2W` int64
    per rank, which checks that every rank uses the same wire format, scale_mode, chunks, row shape and
    matching splits, and raises the same exception on every rank otherwise (nothing is sent then).

    Host syncs: the header check (`check=True`) reads its result on the host every call (on an NCCL-only
    group it is a device sync; on a group with a CPU backend, e.g. "cpu:gloo,cuda:nccl", it only waits
    for the network). Nothing else syncs: splits are host lists, as in torch.distributed.
    With `chunks > 1` on a CPU and `async_op=True`, decoding happens in `wait()`.
    """
    op = "all_to_all_single"
    world = dist.get_world_size(group)
    local_error: BaseException | None = None
    fields = in_splits = out_splits = None
    hint = input.device if isinstance(input, (torch.Tensor, FP8Tensor)) else None
    try:
        codec = get_codec(wire, scale_mode)
        c = _resolve_chunks(chunks)
        _check_rows_arg("input", input)
        _check_rows_arg("output", output)
        codec.check_input(input)
        codec.check_output(output)
        _check_pair_compat(codec, output, input)
        in_splits = _resolve_splits("input_split_sizes", input_split_sizes, input.shape[0], "input", world)
        out_splits = _resolve_splits("output_split_sizes", output_split_sizes, output.shape[0], "output",
                                     world)
        row_elems = _row_elems(input)
        row_bytes = codec.row_bytes(row_elems, _dtype(input))
        fields = _plan_fields(codec, row_elems, row_bytes, _dtype(input))
    except (TypeError, ValueError) as e:
        local_error = e
    _agree(op, group, world, hint, fields, in_splits, out_splits, local_error,
           c if local_error is None else 0, check)
    ex = _Exchange(codec, [_as_2d(input)], [_as_2d(output)], in_splits, out_splits, row_bytes, input.device,
                   group, c)
    return ex.run(async_op)


def all_to_all(output_tensor_list: list[torch.Tensor | FP8Tensor],
               input_tensor_list: list[torch.Tensor | FP8Tensor], group: dist.ProcessGroup | None = None,
               async_op: bool = False, *, wire: str | WireCodec = "mxfp4", scale_mode: str = "rceil",
               chunks: int | None = None, check: bool = True) -> AllToAllWork | None:
    """Drop-in for `torch.distributed.all_to_all`: `input_tensor_list[j]` goes to rank j, and
    `output_tensor_list[i]` receives what rank i sent, all encoded with `wire`.

    The lists hold one tensor (or FP8Tensor) per rank of the group, each `[n_j, *rest]` with the same
    number of elements per row; the tensors are encoded into ONE packed buffer (one encode kernel per
    tensor, no concatenated copy) and exchanged with one `all_to_all_single` with splits `n_j`; outputs
    must be contiguous. Everything else (wires, bytes on the wire, header check, host syncs, `chunks`,
    return value) is as in `all_to_all_single`.
    """
    op = "all_to_all"
    world = dist.get_world_size(group)
    local_error: BaseException | None = None
    fields = in_splits = out_splits = None
    hint = None
    try:
        codec = get_codec(wire, scale_mode)
        c = _resolve_chunks(chunks)
        for name, lst in (("input_tensor_list", input_tensor_list),
                          ("output_tensor_list", output_tensor_list)):
            if not isinstance(lst, (list, tuple)) or len(lst) != world:
                got = len(lst) if isinstance(lst, (list, tuple)) else type(lst).__name__
                raise ValueError(f"{name} must be a list with one tensor per rank of the group ({world}), "
                                 f"got {got}")
            for j, t in enumerate(lst):
                _check_rows_arg(f"{name}[{j}]", t)
        hint = input_tensor_list[0].device
        for j, t in enumerate(input_tensor_list):
            codec.check_input(t)
        for j, t in enumerate(output_tensor_list):
            codec.check_output(t)
        first = input_tensor_list[0]
        for j, t in enumerate(input_tensor_list):
            _check_list_input(codec, t, first, j)
        for j, t in enumerate(output_tensor_list):
            _check_pair_compat(codec, t, first, out_name=f"output_tensor_list[{j}]",
                               in_name="input_tensor_list[0]")
        in_splits = [t.shape[0] for t in input_tensor_list]
        out_splits = [t.shape[0] for t in output_tensor_list]
        row_elems = _row_elems(first)
        row_bytes = codec.row_bytes(row_elems, _dtype(first))
        fields = _plan_fields(codec, row_elems, row_bytes, _dtype(first))
    except (TypeError, ValueError) as e:
        local_error = e
    _agree(op, group, world, hint, fields, in_splits, out_splits, local_error,
           c if local_error is None else 0, check)
    ex = _Exchange(codec, [_as_2d(t) for t in input_tensor_list], [_as_2d(t) for t in output_tensor_list],
                   in_splits, out_splits, row_bytes, hint, group, c)
    return ex.run(async_op)


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
    if out is not inp and not _is_contiguous(out):
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
