"""Wire codecs: how a row of values becomes the bytes that cross the link, and back (docs/COMM.md).

`comm/` asks a codec for `row_bytes(row_elems, dtype)`, lets it `encode` 2-D input rows `[N, H]` into
a packed `uint8 [N, row_bytes]` buffer (a row slice of it may be passed), exchanges the buffer and lets
it `decode` received rows into the output. Every row is self-contained:
- "raw": the input's own bytes (any dtype); "bf16": H bf16 values (2 bytes each);
- "fp8": `[H E4M3 | H/128 UE8M0 scales | pad]`; "mxfp4": `[H/2 E2M1 | H/32 E8M0 scales | pad]`.
The quantizing wires pad rows to a multiple of `ROW_ALIGN` = 16 bytes, so every row and every peer's
block is 16-byte aligned (H=7168: fp8 7232, mxfp4 3808); pad bytes are never written nor read.
Encoding and decoding go through the public `mxa2a.quant` functions with `out=` views of the packed
rows (one kernel launch each, no intermediate tensor, no host sync); FP8Tensor rows move without bf16.
`fill_unreceived` makes receive rows decode to NaN until they arrive (the scale bytes, or every byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

# The public functions of the package (its __init__ has run by the time this module is imported).
from . import dequantize_fp8, dequantize_mxfp4, fp8_to_mxfp4, mxfp4_to_fp8, quantize_fp8, quantize_mxfp4
from .checks import BACKENDS, pick_backend
from .formats import (E4M3_DTYPE, E8M0_NAN, FLOAT_INPUT_DTYPES, FP8_TILE, MXFP4_BLOCK, FP8Tensor,
                      MXFP4Tensor, check_scale_mode)

# Quantized wire rows are padded to a multiple of this many bytes (see the module docstring).
ROW_ALIGN = 16

Rows = Union[torch.Tensor, FP8Tensor]  # a 2-D block of rows: [N, H] values, or FP8 data [N, H] + scales


def _pad(nbytes: int) -> int:
    return -(-nbytes // ROW_ALIGN) * ROW_ALIGN


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_backend_device(backend: str, device: torch.device) -> None:
    if backend != "auto":  # "triton" on a CPU tensor needs TRITON_INTERPRET=1: say so before any collective
        pick_backend(backend, device, "wire codec")


def _check_float(what: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_INPUT_DTYPES:
        raise TypeError(f"{what} must be float32, bfloat16 or float16 for this wire format, got {t.dtype}")


def _check_block(what: str, shape: torch.Size | tuple, block: int, wire: str) -> None:
    if len(shape) < 2 or shape[-1] % block != 0:
        raise ValueError(f"wire {wire!r} encodes the last dimension in blocks of {block}: {what} must have "
                         f"shape [N, ..., H] with H a multiple of {block}, got {tuple(shape)}")


class WireCodec:
    """Base of the wire codecs. Subclasses are frozen dataclasses; their fields are the format's settings.

    `wire_id` identifies the format in the header that ranks compare before exchanging (see `comm/`).
    """

    name: str = ""
    wire_id: int = 0
    block: int = 1  # the last dimension must be a multiple of this

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        """Bytes of one encoded row of `row_elems` values whose source dtype is `dtype`."""
        raise NotImplementedError

    def check_input(self, x: Rows) -> None:
        """Raise TypeError/ValueError if `x` ([N, *rest] values or an FP8Tensor) cannot be sent."""
        raise NotImplementedError

    def check_output(self, out: Rows) -> None:
        """Raise TypeError/ValueError if `out` cannot receive this wire format."""
        raise NotImplementedError

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        """Encode `x` (2-D `[N, H]` values or FP8Tensor, rows strided, last dim contiguous) into
        `out_rows` (`uint8 [N, row_bytes]`, may be a row slice of a larger buffer)."""
        raise NotImplementedError

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        """Decode `rows` (`uint8 [N, row_bytes]`) into `out` (2-D `[N, H]` values or FP8Tensor)."""
        raise NotImplementedError

    def fill_unreceived(self, rows: torch.Tensor) -> None:
        """Make receive rows (`uint8 [N, row_bytes]`) decode to NaN until a transfer overwrites them, so
        that rows which never arrive (split sizes that disagree between ranks) are never numbers. This
        default sets every byte to 0xFF (NaN in every float dtype); the quantizing wires set only the
        scale bytes (255 = NaN block / tile)."""
        rows.fill_(0xFF)

    @property
    def scale_mode_id(self) -> int:
        return 0


@dataclass(frozen=True)
class RawWire(WireCodec):
    """The input's own bytes, unchanged (the baseline: identical to `dist.all_to_all_single`).
    Any dtype; the output must have the input's dtype."""

    name = "raw"
    wire_id = 1

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        return row_elems * dtype.itemsize

    def check_input(self, x: Rows) -> None:
        if isinstance(x, FP8Tensor):
            raise TypeError("an FP8Tensor input needs wire 'fp8' or 'mxfp4', not 'raw'")

    def check_output(self, out: Rows) -> None:
        if isinstance(out, FP8Tensor):
            raise TypeError("an FP8Tensor output needs wire 'fp8' or 'mxfp4', not 'raw'")

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        out_rows.view(x.dtype).copy_(x)  # any strides of x (x.view(uint8) needs a contiguous last dim)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        out.view(torch.uint8).copy_(rows)


@dataclass(frozen=True)
class BF16Wire(WireCodec):
    """Values cast to bfloat16 on the wire (round to nearest even); decoded by a cast to the output dtype."""

    name = "bf16"
    wire_id = 2

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        return row_elems * 2

    def check_input(self, x: Rows) -> None:
        if isinstance(x, FP8Tensor):
            raise TypeError("an FP8Tensor input needs wire 'fp8' or 'mxfp4' (FP8 is never widened to bf16)")
        _check_float("input", x)

    def check_output(self, out: Rows) -> None:
        if isinstance(out, FP8Tensor):
            raise TypeError("an FP8Tensor output needs wire 'fp8' or 'mxfp4', not 'bf16'")
        _check_float("output", out)

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        out_rows.view(torch.bfloat16).copy_(x)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        out.copy_(rows.view(torch.bfloat16))


@dataclass(frozen=True)
class FP8Wire(WireCodec):
    """E4M3 with one UE8M0 power-of-two scale per 1x128 tile: row = `[H data | H/128 scales | pad]` bytes,
    padded to a multiple of `ROW_ALIGN` (16) bytes (H=7168: 7224 -> 7232); the pad is never read.
    `backend` is passed to the `mxa2a.quant` codecs ("auto": Triton on CUDA, the torch reference elsewhere)."""

    backend: str = "auto"
    name = "fp8"
    wire_id = 3
    block = FP8_TILE

    def __post_init__(self) -> None:
        _check_backend(self.backend)

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        return _pad(row_elems + row_elems // FP8_TILE)

    def check_input(self, x: Rows) -> None:
        if not isinstance(x, FP8Tensor):
            _check_float("input", x)
        _check_block("input", x.shape, FP8_TILE, self.name)
        _check_backend_device(self.backend, x.device)

    def check_output(self, out: Rows) -> None:
        if not isinstance(out, FP8Tensor):
            _check_float("output", out)
        _check_block("output", out.shape, FP8_TILE, self.name)

    @staticmethod
    def _view(rows: torch.Tensor) -> FP8Tensor:
        # row_bytes = 129 t + pad (t = H/128 tiles, pad < 16 < 129), so t = row_bytes // 129.
        t = rows.shape[1] // (FP8_TILE + 1)
        h = t * FP8_TILE
        return FP8Tensor(rows[:, :h].view(E4M3_DTYPE), rows[:, h:h + t])

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        dst = self._view(out_rows)
        if isinstance(x, FP8Tensor):
            dst.data.copy_(x.data)
            dst.scales.copy_(x.scales)
        else:
            quantize_fp8(x, backend=self.backend, out=dst)

    def fill_unreceived(self, rows: torch.Tensor) -> None:
        t = rows.shape[1] // (FP8_TILE + 1)
        rows[:, t * FP8_TILE:t * FP8_TILE + t].fill_(E8M0_NAN)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        src = self._view(rows)
        if isinstance(out, FP8Tensor):
            out.data.copy_(src.data)
            out.scales.copy_(src.scales)
        else:
            dequantize_fp8(src, out.dtype, backend=self.backend, out=out)


@dataclass(frozen=True)
class MXFP4Wire(WireCodec):
    """MXFP4 (E2M1 + E8M0 per 32): row = `[H/2 data | H/32 scales | pad]` bytes, padded to a multiple of
    `ROW_ALIGN` (16) bytes (H=7168: 3808, no pad); the pad is never read. `scale_mode` is "rceil"
    (never saturates; the default for communication) or "floor" (the OCP rule). `backend` is passed to
    the `mxa2a.quant` codecs ("auto": Triton on CUDA, the torch reference elsewhere)."""

    scale_mode: str = "rceil"
    backend: str = "auto"
    name = "mxfp4"
    wire_id = 4
    block = MXFP4_BLOCK

    def __post_init__(self) -> None:
        check_scale_mode(self.scale_mode)
        _check_backend(self.backend)

    @property
    def scale_mode_id(self) -> int:
        return 1 + ("floor", "rceil").index(self.scale_mode)

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        return _pad(row_elems // 2 + row_elems // MXFP4_BLOCK)

    def check_input(self, x: Rows) -> None:
        if isinstance(x, FP8Tensor):
            _check_block("input", x.shape, FP8_TILE, self.name)
        else:
            _check_float("input", x)
            _check_block("input", x.shape, MXFP4_BLOCK, self.name)
        _check_backend_device(self.backend, x.device)

    def check_output(self, out: Rows) -> None:
        if isinstance(out, FP8Tensor):
            _check_block("output", out.shape, FP8_TILE, self.name)
        else:
            _check_float("output", out)
            _check_block("output", out.shape, MXFP4_BLOCK, self.name)

    def _view(self, rows: torch.Tensor) -> MXFP4Tensor:
        # row_bytes = 17 b + pad (b = H/32 blocks, pad < 16 < 17), so b = row_bytes // 17.
        b = rows.shape[1] // 17
        h2 = b * 16
        return MXFP4Tensor(rows[:, :h2], rows[:, h2:h2 + b], self.scale_mode)

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        dst = self._view(out_rows)
        if isinstance(x, FP8Tensor):
            fp8_to_mxfp4(x, scale_mode=self.scale_mode, backend=self.backend, out=dst)
        else:
            quantize_mxfp4(x, scale_mode=self.scale_mode, backend=self.backend, out=dst)

    def fill_unreceived(self, rows: torch.Tensor) -> None:
        b = rows.shape[1] // 17
        rows[:, b * 16:b * 17].fill_(E8M0_NAN)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        src = self._view(rows)
        if isinstance(out, FP8Tensor):
            mxfp4_to_fp8(src, backend=self.backend, out=out)
        else:
            dequantize_mxfp4(src, out.dtype, backend=self.backend, out=out)


WIRE_NAMES = ("raw", "bf16", "fp8", "mxfp4")


def get_codec(wire: str | WireCodec, scale_mode: str = "rceil") -> WireCodec:
    """Resolve a wire name ("raw", "bf16", "fp8", "mxfp4") or pass a codec object through unchanged.
    `scale_mode` applies to the name "mxfp4"; a codec object keeps its own settings."""
    if isinstance(wire, WireCodec):
        return wire
    check_scale_mode(scale_mode)
    if wire == "raw":
        return RawWire()
    if wire == "bf16":
        return BF16Wire()
    if wire == "fp8":
        return FP8Wire()
    if wire == "mxfp4":
        return MXFP4Wire(scale_mode)
    raise ValueError(f"wire must be one of {WIRE_NAMES} or a mxa2a.quant.wire.WireCodec, got {wire!r}")
