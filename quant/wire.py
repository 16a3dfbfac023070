"""Wire codecs: how a row of values becomes the bytes that cross the link, and back.

`comm/` only moves bytes. It asks a codec for `row_bytes(row_elems, dtype)`, lets it `encode` input rows
into a packed buffer `uint8 [N, row_bytes]`, exchanges that buffer with one `all_to_all_single`, and lets
the codec `decode` the received rows into the output. Every encoded row is self-contained:

| wire      | one row of H elements on the wire        | bytes per element | vs bf16 |
| --------- | ---------------------------------------- | ----------------- | ------- |
| `"raw"`   | the input's own bytes                    | itemsize          | 1x      |
| `"bf16"`  | H bf16 values                            | 2                 | 1x      |
| `"fp8"`   | `[H E4M3 bytes | H/128 UE8M0 scale bytes | pad]` | 129/128 (+ pad)   | 1.98x   |
| `"mxfp4"` | `[H/2 E2M1 bytes | H/32 E8M0 scale bytes | pad]`  | 17/32 (+ pad)     | 3.76x   |

Padded rows: the quantizing wires ("fp8", "mxfp4") append 0-15 pad bytes so that `row_bytes` is a multiple of
`ROW_ALIGN` = 16 (COMM.md's row is `[data | scales]`; the pad follows it). Why: the packed buffer is one
`[N, row_bytes]` tensor and every peer's block starts at a row boundary; with 16-byte rows every block and
every row is 16-byte aligned, which NCCL's copy loops and the codecs' vector loads/stores need to run at
full speed (an unpadded fp8 row of H=7168 is 7224 bytes, only 8-byte aligned, and measured 2x slower on
2x H100). The pad bytes are never written by the encoder, never read by the decoder and carry no meaning
(they are sent, uninitialized). Examples, H=7168: fp8 7224 -> 7232 bytes, mxfp4 3808 (already aligned).
The data and scale views are unchanged: `buf[:, :data_bytes]` and `buf[:, data_bytes:data_bytes + scale_bytes]`.

The quantizing codecs write their output through the `out=` argument of the `mxa2a.quant` codecs, as two
strided views of the packed buffer (`buf[:, :data_bytes]` and `buf[:, data_bytes:data_bytes + scale_bytes]`): one kernel launch,
no intermediate tensor. Decoding reads the same views in place.

FP8 tensors (`FP8Tensor`, data + 1x128 tile scales) may be encoded and decoded directly: on the MXFP4 wire
through `fp8_to_mxfp4` / `mxfp4_to_fp8` (never through bf16), on the FP8 wire as a plain byte copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from .formats import (E4M3_DTYPE, FLOAT_INPUT_DTYPES, FP8_TILE, MXFP4_BLOCK, FP8Tensor, MXFP4Tensor,
                      check_scale_mode)

# Quantized wire rows are padded to a multiple of this many bytes (see the module docstring).
ROW_ALIGN = 16

Rows = Union[torch.Tensor, FP8Tensor]  # a 2-D block of rows: [N, H] values, or FP8 data [N, H] + scales


def _codecs():
    # Imported when first used: the package `mxa2a.quant` imports this module in its __init__.
    from .. import quant
    return quant


# Tests set this to run the direct Triton path below on CPU tensors under TRITON_INTERPRET=1.
_TRITON_ON_CPU = False


def _direct(t: Rows) -> bool:
    """Whether to launch the Triton wrapper directly. The public codecs would pick Triton for CUDA
    tensors too; going straight to `mxa2a.quant.kernels` skips their argument checks, which the comm
    layer has already made once per call (`check_input` / `check_output`) and which cost ~50 us of
    host time per launch on a loaded CPU. Same kernels, same bits."""
    return t.device.type == "cuda" or _TRITON_ON_CPU


def _trusted(cls: type, **fields):
    """A frozen container over views this module cut from a wire buffer, without `__post_init__`'s checks:
    the views are right by construction (`_view`), and building a checked container costs ~15 us a launch."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def _pad(nbytes: int) -> int:
    return -(-nbytes // ROW_ALIGN) * ROW_ALIGN


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
        out_rows.copy_(x.view(torch.uint8))

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
    padded to a multiple of `ROW_ALIGN` (16) bytes (H=7168: 7224 -> 7232); the pad is never read."""

    name = "fp8"
    wire_id = 3
    block = FP8_TILE

    def row_bytes(self, row_elems: int, dtype: torch.dtype) -> int:
        return _pad(row_elems + row_elems // FP8_TILE)

    def check_input(self, x: Rows) -> None:
        if not isinstance(x, FP8Tensor):
            _check_float("input", x)
        _check_block("input", x.shape, FP8_TILE, self.name)

    def check_output(self, out: Rows) -> None:
        if not isinstance(out, FP8Tensor):
            _check_float("output", out)
        _check_block("output", out.shape, FP8_TILE, self.name)

    @staticmethod
    def _view(rows: torch.Tensor) -> FP8Tensor:
        # row_bytes = 129 t + pad (t = H/128 tiles, pad < 16 < 129), so t = row_bytes // 129.
        t = rows.shape[1] // (FP8_TILE + 1)
        h = t * FP8_TILE
        return _trusted(FP8Tensor, data=rows[:, :h].view(E4M3_DTYPE), scales=rows[:, h:h + t])

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        dst = self._view(out_rows)
        if isinstance(x, FP8Tensor):
            dst.data.copy_(x.data)
            dst.scales.copy_(x.scales)
        elif _direct(x):
            from .kernels.fp8 import fp8_quantize_triton
            fp8_quantize_triton(x, out=dst)
        else:
            _codecs().quantize_fp8(x, out=dst)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        src = self._view(rows)
        if isinstance(out, FP8Tensor):
            out.data.copy_(src.data)
            out.scales.copy_(src.scales)
        elif _direct(out):
            from .kernels.fp8 import fp8_dequantize_triton
            fp8_dequantize_triton(src, out.dtype, out=out)
        else:
            _codecs().dequantize_fp8(src, out.dtype, out=out)


@dataclass(frozen=True)
class MXFP4Wire(WireCodec):
    """MXFP4 (E2M1 + E8M0 per 32): row = `[H/2 data | H/32 scales | pad]` bytes, padded to a multiple of
    `ROW_ALIGN` (16) bytes (H=7168: 3808, no pad); the pad is never read. `scale_mode` is "rceil"
    (never saturates; the default for communication) or "floor" (the OCP rule)."""

    scale_mode: str = "rceil"
    name = "mxfp4"
    wire_id = 4
    block = MXFP4_BLOCK

    def __post_init__(self) -> None:
        check_scale_mode(self.scale_mode)

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
        return _trusted(MXFP4Tensor, data=rows[:, :h2], scales=rows[:, h2:h2 + b], scale_mode=self.scale_mode)

    def encode(self, x: Rows, out_rows: torch.Tensor) -> None:
        dst = self._view(out_rows)
        if isinstance(x, FP8Tensor):
            if _direct(x):
                from .kernels.convert import fp8_to_mxfp4_triton
                fp8_to_mxfp4_triton(x, self.scale_mode, out=dst)
            else:
                _codecs().fp8_to_mxfp4(x, scale_mode=self.scale_mode, out=dst)
        elif _direct(x):
            from .kernels.mxfp4 import mxfp4_quantize_triton
            mxfp4_quantize_triton(x, self.scale_mode, out=dst)
        else:
            _codecs().quantize_mxfp4(x, scale_mode=self.scale_mode, out=dst)

    def decode(self, rows: torch.Tensor, out: Rows) -> None:
        src = self._view(rows)
        if isinstance(out, FP8Tensor):
            if _direct(out):
                from .kernels.convert import mxfp4_to_fp8_triton
                mxfp4_to_fp8_triton(src, out=out)
            else:
                _codecs().mxfp4_to_fp8(src, out=out)
        elif _direct(out):
            from .kernels.mxfp4 import mxfp4_dequantize_triton
            mxfp4_dequantize_triton(src, out.dtype, out=out)
        else:
            _codecs().dequantize_mxfp4(src, out.dtype, out=out)


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
