"""Memory of the exchange: the packed-row staging buffer of blocking calls, and the side streams of
pipelined ones, one of each per CUDA device, made once per process and reused from call to call.

Blocking CUDA calls take their packed rows from `take_rows` and hand them back with `release_rows` at
the end of the call, in the caller's stream order (the next call's stream waits on an event: no host
sync). Async calls, CPU calls and calls under CUDA-graph capture allocate a new tensor each time. The
buffer keeps the largest size asked for; `release_staging_buffers()` frees it.
"""

from __future__ import annotations

import torch

_side_streams: dict = {}


def side_streams(device: torch.device) -> tuple:
    """(enc, dec): the two side streams of the pipelined exchange on `device`, made once per process."""
    streams = _side_streams.get(device)
    if streams is None:
        streams = _side_streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return streams


class _StagingBuffer:
    """The packed-row buffer of blocking calls on one CUDA device, reused from call to call.

    Why not a fresh `torch.empty` per call: ProcessGroupNCCL records its stream on the buffer, so the
    caching allocator cannot hand the block to the next call until the transfer is over, and the host
    ends up waiting for the GPU. Reuse is ordered on the device: a call's stream waits for the event
    recorded at the end of the previous call (no host sync).
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


def take_rows(rows: int, row_bytes: int, device: torch.device, async_op: bool) -> torch.Tensor:
    """A `[rows, row_bytes]` uint8 buffer: the device's staging buffer for blocking CUDA calls (release
    it with `release_rows` at the end of the call), else a new tensor."""
    if not _uses_staging(device, async_op):
        return torch.empty((rows, row_bytes), dtype=torch.uint8, device=device)
    return _staging.setdefault(device, _StagingBuffer()).take(rows, row_bytes, device)


def release_rows(device: torch.device, async_op: bool) -> None:
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
