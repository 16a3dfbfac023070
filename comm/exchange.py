"""The exchange itself: one planned call's encode, collective(s) and decode.

`ExchangePlan` is a call validated locally (and, by `comm.header`, across ranks): 2-D row blocks whose
concatenation is the logical input / output, the split sizes, the codec and `row_bytes`.
`ExchangePlan.run` executes it: chunks=1 encodes every row into one packed `uint8 [N, row_bytes]` buffer
(zero copy for "raw" with contiguous tensors), makes ONE `dist.all_to_all_single` and decodes; chunks=c
> 1 encodes and decodes the rank's own rows locally and moves the others' in c collectives, overlapped
with encode / decode on two side streams on a GPU (a step per destination would need (W-1)*c
collectives for the same launches). Nothing here syncs the host; `AllToAllWork.wait()` on a CPU blocks.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..quant.formats import FP8Tensor
from ..quant.wire import RawWire, Rows, WireCodec
from .staging import release_rows, side_streams, take_rows

TAG_BYTES = 16  # the in-band tag of check="tagged": int32 [magic, format digest, call number, ~call number]


def _nrows(p: Rows) -> int:
    return (p.data if isinstance(p, FP8Tensor) else p).shape[0]


def _row_slice(p: Rows, a: int, b: int) -> Rows:
    if isinstance(p, FP8Tensor):
        return FP8Tensor(p.data[a:b], p.scales[a:b])
    return p[a:b]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share bytes."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


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


class ExchangePlan:
    """One call, validated, and its two schedules. `in_parts` / `out_parts` are 2-D row blocks (`[n, R]`
    tensors or FP8Tensors) whose concatenations are the logical input and output rows; `in_splits[j]`
    rows go to rank j and `out_splits[i]` come from rank i; every row is `row_bytes` on the wire.
    After `use_tag(tag)` (check="tagged"; `tag` int32 `[4]` on the device, this call's) every row carries
    the tag in its last `TAG_BYTES`, after the codec's `codec_row_bytes` rounded up to 16, and every
    decoded row is checked for it.
    Built once per call and never changed (a plain class: a frozen dataclass costs host time per call)."""

    def __init__(self, codec: WireCodec, in_parts: list[Rows], out_parts: list[Rows], in_splits: list[int],
                 out_splits: list[int], row_elems: int, codec_row_bytes: int, dtype: torch.dtype,
                 device: torch.device, chunks: int) -> None:
        self.codec, self.in_parts, self.out_parts = codec, in_parts, out_parts
        self.in_splits, self.out_splits = in_splits, out_splits
        self.row_elems, self.codec_row_bytes, self.dtype = row_elems, codec_row_bytes, dtype
        self.row_bytes = self.tag_offset = codec_row_bytes
        self.device, self.chunks, self.tag = device, chunks, None
        self.in_off = [0, *itertools.accumulate(in_splits)]
        self.out_off = [0, *itertools.accumulate(out_splits)]

    def tagged_row_bytes(self) -> int:
        """Row bytes with the tag: the codec's, rounded up to 16 (int32-aligned tags), + `TAG_BYTES`."""
        return -(-self.codec_row_bytes // TAG_BYTES) * TAG_BYTES + TAG_BYTES

    def use_tag(self, tag: torch.Tensor) -> None:
        self.row_bytes = self.tagged_row_bytes()
        self.tag_offset = self.row_bytes - TAG_BYTES
        self.tag = tag

    def run(self, group, async_op: bool) -> AllToAllWork | None:
        """Move the rows; an `AllToAllWork` when `async_op`, else None once the output is ready."""
        if self.chunks == 1:
            return self._run_single(group, async_op)
        return self._run_pipelined(group, async_op)

    def _encode(self, a: int, b: int, dst: torch.Tensor) -> None:
        """Encode logical input rows [a, b) into `dst` (`[b - a, row_bytes]`): one launch per input part
        the range touches (one for all_to_all_single)."""
        rows = dst
        if self.tag is not None:
            dst[:, self.tag_offset:].view(torch.int32).copy_(self.tag.expand(dst.shape[0], -1))
            rows = dst[:, :self.codec_row_bytes]
        for piece, off in _slices(self.in_parts, a, b):
            self.codec.encode(piece, rows[off:off + _nrows(piece)])

    def _decode(self, src: torch.Tensor, a: int, b: int) -> None:
        """Decode `src` (`[b - a, row_bytes]`) into logical output rows [a, b)."""
        rows = src
        if self.tag is not None:
            self._check_tags(src[:, self.tag_offset:].view(torch.int32), a)
            rows = src[:, :self.codec_row_bytes]
        for piece, off in _slices(self.out_parts, a, b):
            self.codec.decode(rows[off:off + _nrows(piece)], piece)

    def _fill_unreceived(self, recv: torch.Tensor) -> None:
        """Rows that never arrive decode to NaN (and fail the tag check), never to stale bytes."""
        if self.tag is None:
            self.codec.fill_unreceived(recv)
        else:
            self.codec.fill_unreceived(recv[:, :self.codec_row_bytes])
            recv[:, self.tag_offset:].fill_(0xFF)

    def _check_tags(self, tags: torch.Tensor, a: int) -> None:
        """Every received row (`tags` int32 `[n, 4]`, logical output rows from `a`) must carry this call's
        tag. On a CPU the check reads host memory and raises here; on a GPU it is `torch._assert_async`
        (no host sync: a failure is a device-side assert at the next sync, fatal to the CUDA context)."""
        if tags.shape[0] == 0:
            return
        bad = (tags != self.tag).any(dim=1)
        if tags.is_cuda:
            torch._assert_async(bad.any().logical_not())
            return
        if bool(bad.any()):
            rows = (bad.nonzero().flatten() + a).tolist()
            peers = sorted({next(i for i in range(len(self.out_splits)) if r < self.out_off[i + 1])
                            for r in rows})
            raise RuntimeError(
                f"mxa2a all-to-all: {len(rows)} of the rows expected from rank(s) {peers} did not arrive "
                f"with this call's tag (check='tagged'): the ranks disagree on the split sizes, the wire "
                f"format or the row size, or are out of step; those rows hold NaN, not data")

    # --- one collective over everything ---------------------------------------------------------
    def _zero_copy(self, parts: list[Rows]) -> torch.Tensor | None:
        if (isinstance(self.codec, RawWire) and self.tag is None and len(parts) == 1
                and isinstance(parts[0], torch.Tensor) and parts[0].is_contiguous()):
            return parts[0].view(torch.uint8)
        return None

    def _run_single(self, group, async_op: bool) -> AllToAllWork | None:
        n, m = self.in_off[-1], self.out_off[-1]
        send_direct, recv_direct = self._zero_copy(self.in_parts), self._zero_copy(self.out_parts)
        if send_direct is not None and recv_direct is not None and _overlap(send_direct, recv_direct):
            send_direct = None  # output is (part of) input: send a copy, or received rows overwrite sent ones
        staged = (n if send_direct is None else 0) + (m if recv_direct is None else 0)
        buf = take_rows(staged, self.row_bytes, self.device, async_op)
        send = send_direct
        if send is None:
            send = buf[:n]
            self._encode(0, n, send)
        recv = recv_direct
        if recv is None:
            recv = buf[staged - m:]
            self._fill_unreceived(recv)
        work = dist.all_to_all_single(recv, send, self.out_splits, self.in_splits, group=group,
                                      async_op=async_op)
        if not async_op:
            if recv_direct is None:
                self._decode(recv, 0, m)
            release_rows(self.device, async_op)
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

    def _run_pipelined(self, group, async_op: bool) -> AllToAllWork | None:
        me = dist.get_rank(group)
        c, rb, dev = self.chunks, self.row_bytes, self.device
        own = self.in_splits[me]  # == self.out_splits[me], checked by the caller
        n_send = self.in_off[-1] - own
        n_recv = self.out_off[-1] - own
        # One allocation for everything: [send (chunk-major) | recv (chunk-major) | own rows].
        buf = take_rows(n_send + n_recv + own, rb, dev, async_op)
        send, recv, mine = buf[:n_send], buf[n_send:n_send + n_recv], buf[n_send + n_recv:]

        cuda = dev.type == "cuda"
        if cuda:
            main = torch.cuda.current_stream(dev)
            enc, dec = side_streams(dev)
            enc.wait_stream(main)
            dec.wait_stream(main)
            if async_op:
                # The caller's stream joins the side streams only in wait(): until then, memory freed
                # (buf at return, the caller's tensors whenever) must stay reserved for them. `dec` waits
                # for every transfer, so NCCL's use is covered too.
                for s in (enc, dec):
                    buf.record_stream(s)
                    if self.tag is not None:
                        self.tag.record_stream(s)
                    for p in self.out_parts:
                        _record_stream(p, s)
                for p in self.in_parts:
                    _record_stream(p, enc)
            # A blocking call records no stream: the caller's stream waits for `enc` and `dec` before this
            # returns, so anything later allocated from `buf` (or the caller's tensors) in its order runs
            # after them (record_stream would keep the buffer from the next call until the GPU caught up).
        ctx_enc = torch.cuda.stream(enc) if cuda else contextlib.nullcontext()
        ctx_dec = torch.cuda.stream(dec) if cuda else contextlib.nullcontext()

        works, received = [], []  # per chunk: the collective, and (rows of recv, output row ranges)
        with ctx_enc:
            self._fill_unreceived(recv)
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
                works.append(dist.all_to_all_single(chunk_recv, chunk_send, r_rows, s_rows, group=group,
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
            release_rows(dev, async_op)
            return None
        return AllToAllWork(join, lambda: done[0].query() and done[1].query())
