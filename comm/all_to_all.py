"""Compressed all-to-all with the signatures of `torch.distributed.all_to_all_single` / `all_to_all`.

One call (chunks=1, the default `DEFAULT_CHUNKS`): one encode kernel into a packed buffer
`uint8 [N, row_bytes]`, ONE `dist.all_to_all_single` of that buffer with the caller's row splits, and one
decode kernel into the output; "raw" with contiguous tensors sends the caller's own memory (zero copy).
Before it, the format check of `comm.header` (by default once per call signature and group).

Pipelined (chunks=c > 1): the rows this rank sends to itself never cross a link: they are encoded and
decoded locally while the transfers run. The rows for the other ranks are cut into c row ranges per
split and exchanged by c collectives; on a GPU, encoding chunk k+1 (side stream `enc`) overlaps the
transfer of chunk k, and decoding chunk k (side stream `dec`) overlaps the transfer of chunk k+1.

Why chunks across all peers and not one step per destination: a step per destination (encode the rows
for peer p, send/recv them, decode the rows from peer p) needs (W-1)*c collectives for the same number
of codec launches, since each contiguous row range is one launch either way; chunking every split keeps
one collective per chunk. With W = 2 both are the same schedule: one launch per chunk and side.
For W > 2 a chunk is W-1 row ranges, so W-1 encode launches (one kernel over all of them would need a
row-gather encode in `mxa2a.quant`).

Bytes on the wire per row of H elements: raw = H * itemsize, bf16 = 2H, fp8 = H + H/128,
mxfp4 = H/2 + H/32, the last two padded up to a multiple of 16 bytes so every row and every peer's block
is 16-byte aligned (see `mxa2a.quant.wire`; H=7168: fp8 7232, mxfp4 3808), plus, on checked calls only, the header: one `all_gather`
of `10 + 2W` int64 per rank (W = group size), i.e. `8W(10 + 2W)` bytes received per rank.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import zlib
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..quant.formats import FP8Tensor
from ..quant.wire import RawWire, Rows, WireCodec, get_codec
from .header import agree, call_signature, resolve_check

# chunks=None means this. Measured on 2x H100 (NVLink, 1 GiB per rank, benchmarks/results/
# profile_a2a_2xh100.txt): mxfp4 1682 us at chunks=1, 2059 at 2, 3056 at 4: issuing the pipelined
# call costs as much host time as the GPU work it would hide, so 1 stays the default.
DEFAULT_CHUNKS = 1


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
        return DEFAULT_CHUNKS
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f"chunks must be None or an int >= 1, got {chunks!r}")
    return chunks


def _dtype_code(dtype: torch.dtype) -> int:
    return zlib.crc32(str(dtype).encode())


_codec_cache: dict = {}


def _codec(wire: str | WireCodec, scale_mode: str) -> WireCodec:
    """`get_codec`, remembered per (name, scale_mode): codec objects are frozen, so one serves every call."""
    if not isinstance(wire, str) or not isinstance(scale_mode, str):
        return get_codec(wire, scale_mode)
    codec = _codec_cache.get((wire, scale_mode))
    if codec is None:
        codec = _codec_cache[(wire, scale_mode)] = get_codec(wire, scale_mode)
    return codec


# ----------------------------------------------------------------------------------------------------
# The exchange.

class AllToAllWork:
    """Handle of an `async_op=True` call. `wait()` waits for the transfer and decodes into the output
    (on a GPU: enqueues what is left and makes the current stream wait, like a NCCL Work, without
    blocking the host; on CPU: blocks). `is_completed()` is non-blocking; once it returns True the
    output holds the result (on a GPU: in the current stream's order, as after `wait()`)."""

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


def _streams(device: torch.device) -> tuple:
    """(enc, dec): the two side streams of the pipelined exchange on `device`, made once per process."""
    streams = _side_streams.get(device)
    if streams is None:
        streams = _side_streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return streams


class _StagingBuffer:
    """The packed-row buffer of blocking calls on one CUDA device, reused from call to call.

    A fresh `torch.empty` per call cost host time on a GPU: ProcessGroupNCCL records its stream on the
    buffer, so the caching allocator cannot hand the block to the next call until the transfer is over,
    and allocating a new 0.3-1.5 GB block each call made the host wait for the GPU (host issue time close
    to the GPU time on 2x H100). Reuse is ordered on the device: a call's stream waits for the event
    recorded at the end of the previous call (no host sync). Async calls, whose lifetime the caller
    controls, allocate their own. The buffer keeps the largest size asked for; `release_staging_buffers()`
    frees it.
    """

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None
        self.done: torch.cuda.Event | None = None

    def take(self, rows: int, row_bytes: int, device: torch.device) -> torch.Tensor:
        if self.done is not None:
            torch.cuda.current_stream(device).wait_event(self.done)
        nbytes = rows * row_bytes
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = None  # back to the allocator before the larger block is taken
            self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return self.buf[:nbytes].view(rows, row_bytes)

    def release(self, device: torch.device) -> None:
        """Called at the end of a blocking call, in the caller's stream order."""
        self.done = torch.cuda.Event()
        self.done.record(torch.cuda.current_stream(device))


_staging: dict[torch.device, _StagingBuffer] = {}


def _staging_rows(rows: int, row_bytes: int, device: torch.device, async_op: bool) -> torch.Tensor:
    """A `[rows, row_bytes]` uint8 buffer: the device's staging buffer for blocking CUDA calls (release
    it with `_release_staging` at the end of the call), else a new tensor."""
    if not _uses_staging(device, async_op):
        return torch.empty((rows, row_bytes), dtype=torch.uint8, device=device)
    return _staging.setdefault(device, _StagingBuffer()).take(rows, row_bytes, device)


def _release_staging(device: torch.device, async_op: bool) -> None:
    if _uses_staging(device, async_op):
        _staging[device].release(device)


def _uses_staging(device: torch.device, async_op: bool) -> bool:
    # Under CUDA-graph capture the graph's own memory pool allocates, and waiting on an event recorded
    # outside the capture is not allowed: captured calls allocate like async ones.
    return (not async_op and device.type == "cuda"
            and not torch.cuda.is_current_stream_capturing())


def release_staging_buffers() -> None:
    """Free the staging buffers kept for blocking calls (e.g. after the last exchange of a phase)."""
    _staging.clear()


class _Exchange:
    """One planned exchange of the logical rows `in_parts` (concatenated) into `out_parts`."""

    def __init__(self, codec: WireCodec, in_parts: list[Rows], out_parts: list[Rows], in_splits: list[int],
                 out_splits: list[int], row_bytes: int, device: torch.device, group, chunks: int) -> None:
        self.codec, self.in_parts, self.out_parts = codec, in_parts, out_parts
        self.in_splits, self.out_splits = in_splits, out_splits
        self.row_bytes, self.device, self.group, self.chunks = row_bytes, device, group, chunks
        self.in_off = [0, *itertools.accumulate(in_splits)]
        self.out_off = [0, *itertools.accumulate(out_splits)]

    def _encode(self, a: int, b: int, dst: torch.Tensor) -> None:
        """Encode logical input rows [a, b) into `dst` (`[b - a, row_bytes]`): one launch per input part
        the range touches (one for all_to_all_single)."""
        for piece, off in _slices(self.in_parts, a, b):
            self.codec.encode(piece, dst[off:off + _nrows(piece)])

    def _decode(self, src: torch.Tensor, a: int, b: int) -> None:
        """Decode `src` (`[b - a, row_bytes]`) into logical output rows [a, b)."""
        for piece, off in _slices(self.out_parts, a, b):
            self.codec.decode(src[off:off + _nrows(piece)], piece)

    # --- one collective over everything ---------------------------------------------------------
    def _zero_copy(self, parts: list[Rows]) -> torch.Tensor | None:
        if (isinstance(self.codec, RawWire) and len(parts) == 1 and isinstance(parts[0], torch.Tensor)
                and parts[0].is_contiguous()):
            return parts[0].view(torch.uint8)
        return None

    def run_single(self, async_op: bool) -> AllToAllWork | None:
        n, m = self.in_off[-1], self.out_off[-1]
        send_direct, recv_direct = self._zero_copy(self.in_parts), self._zero_copy(self.out_parts)
        staged = (n if send_direct is None else 0) + (m if recv_direct is None else 0)
        buf = _staging_rows(staged, self.row_bytes, self.device, async_op)
        send = send_direct
        if send is None:
            send = buf[:n]
            self._encode(0, n, send)
        recv = recv_direct if recv_direct is not None else buf[staged - m:]
        work = dist.all_to_all_single(recv, send, self.out_splits, self.in_splits, group=self.group,
                                      async_op=async_op)
        if not async_op:
            if recv_direct is None:
                self._decode(recv, 0, m)
            _release_staging(self.device, async_op)
            return None

        def finish(_send: torch.Tensor = send) -> None:  # holds the send buffer until the transfer is over
            work.wait()
            if recv_direct is None:
                self._decode(recv, 0, m)

        return AllToAllWork(finish, work.is_completed)

    # --- the own rows locally, the others' in c collectives ----------------------------------------
    def _chunk_rows(self, splits: list[int], k: int, me: int) -> list[int]:
        c = self.chunks
        return [0 if j == me else s * (k + 1) // c - s * k // c for j, s in enumerate(splits)]

    def run_pipelined(self, async_op: bool) -> AllToAllWork | None:
        me = dist.get_rank(self.group)
        c, rb, dev = self.chunks, self.row_bytes, self.device
        own = self.in_splits[me]  # == self.out_splits[me], checked by the caller
        n_send = self.in_off[-1] - own
        n_recv = self.out_off[-1] - own
        # One allocation for everything: [send (chunk-major) | recv (chunk-major) | own rows].
        buf = _staging_rows(n_send + n_recv + own, rb, dev, async_op)
        send, recv, mine = buf[:n_send], buf[n_send:n_send + n_recv], buf[n_send + n_recv:]

        cuda = dev.type == "cuda"
        if cuda:
            main = torch.cuda.current_stream(dev)
            enc, dec = _streams(dev)
            enc.wait_stream(main)
            dec.wait_stream(main)
            if async_op:
                # The caller's stream joins the side streams only in wait(): until then, memory freed
                # (buf at return, the caller's tensors whenever) must stay reserved for them. `dec` waits
                # for every transfer, so NCCL's use is covered too.
                for s in (enc, dec):
                    buf.record_stream(s)
                    for p in self.out_parts:
                        _record_stream(p, s)
                for p in self.in_parts:
                    _record_stream(p, enc)
            # A blocking call records no stream: the caller's stream waits for `enc` and `dec` before this
            # returns, so anything later allocated from `buf` (or the caller's tensors) in its order runs
            # after them. record_stream here made each call's 1.5 N-row buffer unusable to the next
            # call until the GPU caught up, so back-to-back calls hit cudaMalloc and the host waited for
            # the GPU (host time ~ GPU time at chunks >= 4 on 2x H100).
        ctx_enc = torch.cuda.stream(enc) if cuda else contextlib.nullcontext()
        ctx_dec = torch.cuda.stream(dec) if cuda else contextlib.nullcontext()

        works, received = [], []  # per chunk: the collective, and (rows of recv, output row ranges)
        with ctx_enc:
            pos_s = pos_r = 0
            for k in range(c):
                s_rows = self._chunk_rows(self.in_splits, k, me)
                r_rows = self._chunk_rows(self.out_splits, k, me)
                ns, nr = sum(s_rows), sum(r_rows)
                chunk_send, chunk_recv = send[pos_s:pos_s + ns], recv[pos_r:pos_r + nr]
                q = 0
                for j, cnt in enumerate(s_rows):
                    if cnt:
                        a = self.in_off[j] + self.in_splits[j] * k // c
                        self._encode(a, a + cnt, chunk_send[q:q + cnt])
                        q += cnt
                # Issued on `enc` right after its own encode: NCCL waits for exactly that much of `enc`.
                works.append(dist.all_to_all_single(chunk_recv, chunk_send, r_rows, s_rows, group=self.group,
                                                    async_op=True))
                ranges = [(self.out_off[i] + self.out_splits[i] * k // c, cnt) for i, cnt in enumerate(r_rows)
                          if cnt]
                received.append((chunk_recv, ranges))
                pos_s, pos_r = pos_s + ns, pos_r + nr
            if own:  # overlaps the transfers in flight
                self._encode(self.in_off[me], self.in_off[me] + own, mine)
                self._decode(mine, self.out_off[me], self.out_off[me] + own)

        def decode_received() -> None:
            with ctx_dec:
                for work, (chunk_recv, ranges) in zip(works, received):
                    work.wait()  # on a GPU: `dec` waits for this chunk's transfer, the host does not
                    q = 0
                    for a, cnt in ranges:
                        self._decode(chunk_recv[q:q + cnt], a, a + cnt)
                        q += cnt

        if not cuda:
            if not async_op:
                decode_received()
                return None
            # work.wait() blocks a CPU host, so an async call decodes in wait().
            return AllToAllWork(lambda _buf=buf: decode_received(),
                                lambda: all(w.is_completed() for w in works))

        decode_received()
        done = (torch.cuda.Event(), torch.cuda.Event())
        done[0].record(enc)
        done[1].record(dec)

        def join() -> None:  # the caller's stream waits for the last encode / decode
            s = torch.cuda.current_stream(dev)
            s.wait_event(done[0])
            s.wait_event(done[1])

        if not async_op:
            join()
            _release_staging(dev, async_op)
            return None
        return AllToAllWork(join, lambda: done[0].query() and done[1].query())

    def run(self, async_op: bool) -> AllToAllWork | None:
        if self.chunks == 1:
            return self.run_single(async_op)
        return self.run_pipelined(async_op)


def _plan_fields(codec: WireCodec, chunks: int, row_elems: int, row_bytes: int,
                 dtype: torch.dtype) -> list[int]:
    """The header's format fields (see `comm.header.agree`)."""
    raw_dtype = _dtype_code(dtype) if isinstance(codec, RawWire) else 0
    return [codec.wire_id, codec.scale_mode_id, chunks, row_elems, raw_dtype, row_bytes]


def _sig_wire(codec: WireCodec | None, wire, scale_mode) -> tuple:
    """(wire, scale_mode) of the call signature: the resolved codec (which holds its scale_mode) when
    there is one, else the arguments as given."""
    return (codec, None) if codec is not None else (wire, scale_mode)


def _check_own_rows(in_splits: list[int], out_splits: list[int], me: int) -> None:
    """A rank's rows to itself are both sent and received by it: the two counts must agree."""
    if in_splits[me] != out_splits[me]:
        raise ValueError(f"this rank ({me}) sends {in_splits[me]} rows to itself (input_split_sizes[{me}]) "
                         f"but expects {out_splits[me]} from itself (output_split_sizes[{me}])")


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
        group, async_op: as in torch.distributed. With `async_op=True` returns an `AllToAllWork` whose
            `wait()` also finishes decoding into `output`; else returns None when `output` is ready
            (on a GPU: ready in the current stream's order).
        wire: "raw" (the input's bytes), "bf16", "fp8" (E4M3, 1x128 tiles, UE8M0 scales), "mxfp4" (E2M1,
            32-blocks, E8M0 scales) or a `mxa2a.quant.wire.WireCodec`. Same on every rank.
        scale_mode: "rceil" (default) or "floor", the MXFP4 scale rule (ignored by the other wires).
        chunks: None = `DEFAULT_CHUNKS` (1). 1 = one encode launch, one collective, one decode launch.
            c > 1 = pipelined (see the module docstring): own rows encoded and decoded locally, the
            others' rows in c collectives overlapped with encode / decode on two side streams (GPU); on
            CPU the result is the same. Same on every rank.
        check: the format check (`mxa2a.comm.header`) that every rank uses the same wire format,
            scale_mode, chunks and row shape, and matching splits, before any payload moves; on failure
            every rank raises the same exception. None (default) = the process default, environment
            variable MXA2A_CHECK (always / first / never, read once) else "first".
            - True / "always": every call all-gathers a header (`10 + 2W` int64 per rank) and reads it
              on the host: one extra collective and a host sync per call (on an NCCL-only group a
              device sync). Debug mode; also reports a bad argument on one rank on every rank.
            - "first": only the first call of each signature on a group checks (signature = op, wire,
              scale_mode, chunks, input/output dtypes, row_elems; NOT the splits). Later calls with that
              signature cost no collective and no sync. Guarantees: a misconfiguration present from the
              first call of a signature (e.g. one rank with another wire, dtype, row size or chunks, or
              with "always" while the others use "first") raises on every rank at that call. Not
              detected: a rank switching to another format later while the others keep an already
              verified signature (the ranks then fall out of step, as with torch.distributed: a hang
              until the group's timeout, or garbage), split sizes that disagree on later calls, and a
              bad argument on one rank of a verified call, which raises on that rank only.
            - False / "never": no header at all; a mismatch is undetected, as with torch.distributed.
            Every rank must use the same policy.

    Bytes on the wire: `row_bytes` per row, sent rows = N: mxfp4 17/32 byte per element (3.76x fewer than
    bf16), fp8 129/128, bf16 2, raw the input's itemsize; fp8 and mxfp4 rows are padded to a multiple of
    16 bytes (alignment for NCCL and the codecs; H=7168: fp8 7232, mxfp4 3808); plus the header on
    checked calls.

    Host syncs: only checked calls (see `check`). Nothing else syncs or reads tensor values: splits are
    host lists, as in torch.distributed. With `chunks > 1` on a CPU and `async_op=True`, decoding
    happens in `wait()`.
    """
    op = "all_to_all_single"
    world = dist.get_world_size(group)
    policy = resolve_check(check)
    local_error: BaseException | None = None
    codec = None
    fields = in_splits = out_splits = None
    hint = input.device if isinstance(input, (torch.Tensor, FP8Tensor)) else None
    c = chunks
    try:
        codec = _codec(wire, scale_mode)
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
        fields = _plan_fields(codec, c, row_elems, row_bytes, _dtype(input))
    except (TypeError, ValueError) as e:
        local_error = e
    sig = None
    if policy == "first":
        sig = call_signature(op, *_sig_wire(codec, wire, scale_mode), c, [input], [output])
    agree(op, group, world, hint, policy, sig, fields, in_splits, out_splits, local_error)
    _check_own_rows(in_splits, out_splits, dist.get_rank(group))
    ex = _Exchange(codec, [_as_2d(input)], [_as_2d(output)], in_splits, out_splits, row_bytes, input.device,
                   group, c)
    return ex.run(async_op)


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
    op = "all_to_all"
    world = dist.get_world_size(group)
    policy = resolve_check(check)
    local_error: BaseException | None = None
    codec = None
    fields = in_splits = out_splits = None
    hint = None
    c = chunks
    try:
        codec = _codec(wire, scale_mode)
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
        fields = _plan_fields(codec, c, row_elems, row_bytes, _dtype(first))
    except (TypeError, ValueError) as e:
        local_error = e
    sig = None
    if policy == "first" and isinstance(input_tensor_list, (list, tuple)) \
            and isinstance(output_tensor_list, (list, tuple)):
        sig = call_signature(op, *_sig_wire(codec, wire, scale_mode), c, input_tensor_list,
                             output_tensor_list)
    agree(op, group, world, hint, policy, sig, fields, in_splits, out_splits, local_error)
    _check_own_rows(in_splits, out_splits, dist.get_rank(group))
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
