"""Triton MXFP4 encode / decode (FORMATS.md "MXFP4"), bit-exact with `quant/reference.py`.

Hopper has no FP4/E8M0 instructions. The block maximum and the scale come from fp32 bit patterns
(integer max of |bits|, exponent field, one significand comparison), the scale capped at `E_MAX` so
that 6 * 2^e stays finite in the input dtype (FORMATS.md, "Scales near the top of the input dtype").
Elements are scaled by the exact power of two 2^-e (a normal fp32 for every e in [-127, 125]) with
one fp32 multiply, which is exact: |y| < 8, and a result below 2^-126 rounds to code 0 whatever its
low bits. Rounding to E2M1 is
hardware round-to-nearest-even: adding C = 1.5 * 2^(22 + r), whose ulp is the E2M1 spacing of y's
range r (0: y < 2, 1: [2, 4), 2: [4, 8)), leaves RNE(y / spacing) in C's low significand bits.
Decoding multiplies the E2M1 value (its bits dropped into an fp32 pattern, times 2^126) by the scale
2^(b-127). fp32 `mul`/`add` here are IEEE with subnormals (Triton emits `mul.f32`/`add.f32`
without `.ftz`), which the exact subnormal cases rely on. No log2/exp2, no float <-> int conversion.
Each program handles a [BLOCK_M, BLOCK_K] tile of a row-major `[M, K]` view whose rows may have any
stride (slices of a packed wire buffer are read and written in place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_float_input, check_out_dtype, rows_in, rows_out
from ..formats import MXFP4_BLOCK, MXFP4_MAX_SCALE_EXP, MXFP4Tensor, check_scale_mode

_IN_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@triton.jit
def _load_f32_bits(ptr, offs, mask, IN_KIND: tl.constexpr):
    """Load fp32/bf16/fp16 elements (passed as int32/int16 bit views) and return fp32 bit patterns (int32)."""
    raw = tl.load(ptr + offs, mask=mask, other=0)
    if IN_KIND == 0:
        bits = raw
    elif IN_KIND == 1:
        bits = raw.to(tl.int32) << 16  # bf16 is the top half of fp32
    else:
        bits = raw.to(tl.float16, bitcast=True).to(tl.float32).to(tl.int32, bitcast=True)  # exact
    return bits


@triton.jit
def _mxfp4_quantize_tile(pid_m, pid_k, x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s,
                         IN_KIND: tl.constexpr, RCEIL: tl.constexpr, E_MAX: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rmask[:, None] & (cols < K)[None, :]
    bits = _load_f32_bits(x_ptr, rows[:, None] * stride_x + cols[None, :], mask, IN_KIND)

    a = tl.reshape(bits & 0x7FFFFFFF, [BLOCK_M, NB, 32])  # |v| bits; ordered like |v|
    sign = tl.reshape((bits >> 28) & 8, [BLOCK_M, NB, 32])  # sign bit moved to code bit 3
    amax = tl.max(a, axis=2)  # [BLOCK_M, NB]
    bad = amax >= 0x7F800000  # NaN/Inf bits are above every finite one
    e = (amax >> 23) - 129  # f - 2
    if RCEIL:
        e += ((amax & 0x7FFFFF) > 0x400000).to(tl.int32)  # significand > 1.5
    e = tl.where(amax < 0x800000, -127, e)  # zero or subnormal block maximum
    e = tl.minimum(tl.maximum(e, -127), E_MAX)  # 6 * 2^E_MAX is the input dtype's largest grid value
    sbyte = tl.where(bad, 255, e + 127)

    # y = |v| * 2^-e (exact); then E2M1 RNE with saturation through the magic-number add.
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e
    y = a.to(tl.float32, bitcast=True) * inv[:, :, None]
    # range r of y: 0 below 2, 1 in [2, 4), 2 in [4, 8) (y < 8 always: e >= floor(log2 amax) - 2)
    r = tl.maximum((y.to(tl.int32, bitcast=True) >> 23) - 127, 0)
    c_bits = r * 8388608 + 0x4AC00000  # 1.5 * 2^(22 + r), ulp 2^(r-1) = the E2M1 spacing
    # RNE(y / 2^(r-1)) is the low part of y + C; code = that + 2r (0.5-steps below 2, then +2, +4)
    code = (y + c_bits.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - (r * 8388606 + 0x4AC00000)
    code = tl.minimum(code, 7)  # saturate at 6: floor block maxima above 1.5 * 2^f, and rceil at E_MAX
    code = tl.where(bad[:, :, None], 0, code | sign)

    lo, hi = tl.split(tl.reshape(code, [BLOCK_M, BLOCK_K // 2, 2]))
    byte = (lo | (hi << 4)).to(tl.uint8)
    dcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    tl.store(data_ptr + rows[:, None] * stride_d + dcols[None, :], byte,
             mask=rmask[:, None] & (dcols < K // 2)[None, :])
    scols = pid_k * NB + tl.arange(0, NB)
    tl.store(scales_ptr + rows[:, None] * stride_s + scols[None, :], sbyte.to(tl.uint8),
             mask=rmask[:, None] & (scols < K // 32)[None, :])


@triton.jit
def _mxfp4_quantize_kernel(x_ptr, data_ptr, scales_ptr, M, K, stride_x, stride_d, stride_s, tiles_k, n_tiles,
                           IN_KIND: tl.constexpr, RCEIL: tl.constexpr, E_MAX: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_K: tl.constexpr, PERSISTENT: tl.constexpr, NUM_STAGES: tl.constexpr):
    # PERSISTENT: a 1-D grid of a few programs per SM walks the tiles (row-major over [tiles_m, tiles_k])
    # with a stride of the grid size; the loop is software-pipelined so a tile's loads are in flight while
    # the previous one is computed, and per-program start-up cost is paid once per SM slot.
    if PERSISTENT:
        for t in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
            _mxfp4_quantize_tile(t // tiles_k, t % tiles_k, x_ptr, data_ptr, scales_ptr, M, K,
                                 stride_x, stride_d, stride_s, IN_KIND, RCEIL, E_MAX, BLOCK_M, BLOCK_K)
    else:
        _mxfp4_quantize_tile(tl.program_id(0), tl.program_id(1), x_ptr, data_ptr, scales_ptr, M, K,
                             stride_x, stride_d, stride_s, IN_KIND, RCEIL, E_MAX, BLOCK_M, BLOCK_K)


@triton.jit
def _store_from_f32_bits(ptr, offs, mask, bits, is_nan, OUT_KIND: tl.constexpr, EXACT_BF16: tl.constexpr):
    """Store fp32 bit patterns as fp32/bf16/fp16 (one RNE rounding; canonical NaN where is_nan).
    EXACT_BF16: every value is a bf16 value already (low 16 bits zero), so bf16 is the top half."""
    if OUT_KIND == 0:
        tl.store(ptr + offs, tl.where(is_nan, 0x7FC00000, bits), mask=mask)
    elif OUT_KIND == 1:
        if EXACT_BF16:
            r = bits >> 16
        else:  # RNE on the bit pattern (the carry never reaches the sign bit for non-NaN values)
            r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(ptr + offs, tl.where(is_nan, 0x7FC0, r).to(tl.int16), mask=mask)
    else:
        h = bits.to(tl.float32, bitcast=True).to(tl.float16).to(tl.int16, bitcast=True)
        tl.store(ptr + offs, tl.where(is_nan, 0x7E00, h.to(tl.int32)).to(tl.int16), mask=mask)


@triton.jit
def _mxfp4_dequantize_tile(pid_m, pid_k, data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o,
                           OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < M
    dcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    byte = tl.load(data_ptr + rows[:, None] * stride_d + dcols[None, :],
                   mask=rmask[:, None] & (dcols < K // 2)[None, :], other=0).to(tl.int32)
    scols = pid_k * NB + tl.arange(0, NB)
    b = tl.load(scales_ptr + rows[:, None] * stride_s + scols[None, :],
                mask=rmask[:, None] & (scols < K // 32)[None, :], other=0).to(tl.int32)

    code = tl.reshape(tl.join(byte & 15, byte >> 4), [BLOCK_M, NB, 32])  # element 2i = low nibble
    # E2M1 bits dropped into an fp32 pattern (sign, 2 exponent bits, 1 mantissa bit) read as
    # value * 2^-126, code 1 (0.5) as the subnormal 2^-127; both products below are exact.
    v = (((code & 8) << 28) | ((code & 7) << 22)).to(tl.float32, bitcast=True) * 8.507059173023462e37  # 2^126
    b3 = b[:, :, None]
    scale = tl.where(b3 == 0, 0x400000, tl.minimum(b3, 254) << 23).to(tl.float32, bitcast=True)  # 2^(b-127)
    bits = tl.reshape((v * scale).to(tl.int32, bitcast=True), [BLOCK_M, BLOCK_K])
    is_nan = tl.reshape(tl.broadcast_to(b3 == 255, [BLOCK_M, NB, 32]), [BLOCK_M, BLOCK_K])

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    _store_from_f32_bits(out_ptr, rows[:, None] * stride_o + cols[None, :],
                         rmask[:, None] & (cols < K)[None, :], bits, is_nan, OUT_KIND, EXACT_BF16=True)


@triton.jit
def _mxfp4_dequantize_kernel(data_ptr, scales_ptr, out_ptr, M, K, stride_d, stride_s, stride_o, tiles_k, n_tiles,
                             OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             PERSISTENT: tl.constexpr, NUM_STAGES: tl.constexpr):
    if PERSISTENT:  # as in _mxfp4_quantize_kernel
        for t in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
            _mxfp4_dequantize_tile(t // tiles_k, t % tiles_k, data_ptr, scales_ptr, out_ptr, M, K,
                                   stride_d, stride_s, stride_o, OUT_KIND, BLOCK_M, BLOCK_K)
    else:
        _mxfp4_dequantize_tile(tl.program_id(0), tl.program_id(1), data_ptr, scales_ptr, out_ptr, M, K,
                               stride_d, stride_s, stride_o, OUT_KIND, BLOCK_M, BLOCK_K)


def default_blocks(k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) used when the caller gives none: 4 x 1024 for wide rows, the best
    of the sweep for both MXFP4 kernels at 256 MiB on an H100 (benchmarks/results/codec_throughput_h100.json:
    quantize 89 % and dequantize 90 % of the copy bandwidth, against 84 % / 88 % for 16 x 512)."""
    block_k = min(1024, triton.next_power_of_2(k))
    return max(1, 4096 // block_k), block_k, 4


def _blocks(k: int, block_m: int | None, block_k: int | None, num_warps: int | None,
            min_k: int = 32) -> tuple[int, int, int]:
    dm, dk, dw = default_blocks(k)
    bm, bk, nw = block_m or dm, block_k or dk, num_warps or dw
    if bk < min_k or bk & (bk - 1) or bm < 1 or bm & (bm - 1):
        raise ValueError(f"block_k must be a power of two >= {min_k} and block_m a power of two, got {bm}, {bk}")
    return bm, bk, nw


_SM_COUNT: dict[int, int] = {}
PERSISTENT_STAGES = 3  # software-pipeline depth of the persistent tile loop


def launch_grid(device: torch.device, m: int, k: int, bm: int, bk: int,
                programs_per_sm: int | None) -> tuple[tuple[int, ...], int, int, bool]:
    """(grid, tiles_k, n_tiles, persistent) for [m, k] in [bm, bk] tiles. programs_per_sm 0/None: one
    program per tile (2-D grid); p > 0: min(n_tiles, p * SM count) programs striding over the tiles
    (the SM count of a CUDA device is cached; elsewhere (interpreter) it is taken as 1)."""
    tiles_m, tiles_k = triton.cdiv(m, bm), triton.cdiv(k, bk)
    n_tiles = tiles_m * tiles_k
    if not programs_per_sm:
        return (tiles_m, tiles_k), tiles_k, n_tiles, False
    if programs_per_sm < 0:
        raise ValueError(f"programs_per_sm must be >= 0, got {programs_per_sm}")
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in _SM_COUNT:
            _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        sms = _SM_COUNT[idx]
    else:
        sms = 1
    return (min(n_tiles, programs_per_sm * sms),), tiles_k, n_tiles, True


def mxfp4_quantize_triton(x: torch.Tensor, scale_mode: str = "rceil", *, out: MXFP4Tensor | None = None,
                          block_m: int | None = None, block_k: int | None = None,
                          num_warps: int | None = None, programs_per_sm: int | None = None) -> MXFP4Tensor:
    """Encode fp32/bf16/fp16 `x` `[..., K]` to MXFP4 with the Triton kernel (see `codecs.quantize_mxfp4`).
    `out` (optional) is written in place; its data/scales may be strided row views. block_m / block_k /
    num_warps / programs_per_sm are launch tuning (see `launch_grid`); results are identical for all."""
    fn = "quantize_mxfp4"
    check_scale_mode(scale_mode)
    check_float_input(x, MXFP4_BLOCK, fn)
    k = x.shape[-1]
    lead = tuple(x.shape[:-1])
    if out is None:
        out = MXFP4Tensor(torch.empty(lead + (k // 2,), dtype=torch.uint8, device=x.device),
                          torch.empty(lead + (k // MXFP4_BLOCK,), dtype=torch.uint8, device=x.device),
                          scale_mode)
    elif (tuple(out.data.shape) != lead + (k // 2,) or out.data.device != x.device
          or out.scales.device != x.device):
        raise ValueError(f"{fn}: out must hold data {lead + (k // 2,)} and scales "
                         f"{lead + (k // MXFP4_BLOCK,)} on {x.device}, got {tuple(out.data.shape)} "
                         f"and {tuple(out.scales.shape)} on {out.data.device}")
    xr = rows_in(x).view(_BITS_VIEW[x.dtype])
    dr = rows_out(out.data, fn, "out.data")
    sr = rows_out(out.scales, fn, "out.scales")
    m = xr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid, tiles_k, n_tiles, pers = launch_grid(x.device, m, k, bm, bk, programs_per_sm)
        _mxfp4_quantize_kernel[grid](xr, dr, sr, m, k, xr.stride(0), dr.stride(0), sr.stride(0), tiles_k, n_tiles,
                                     IN_KIND=_IN_KIND[x.dtype], RCEIL=scale_mode == "rceil",
                                     E_MAX=MXFP4_MAX_SCALE_EXP[x.dtype], BLOCK_M=bm, BLOCK_K=bk, PERSISTENT=pers, NUM_STAGES=PERSISTENT_STAGES,
                                     num_warps=nw)
    return MXFP4Tensor(out.data, out.scales, scale_mode)


def decode_output(shape: tuple, dtype: torch.dtype, device: torch.device, out: torch.Tensor | None,
                  fn: str) -> torch.Tensor:
    """The tensor a decode kernel writes: `out` if it is `dtype` `[*shape]` on `device`, else a new one."""
    check_out_dtype(dtype, fn)
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        raise ValueError(f"{fn}: out must be {dtype} {shape} on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def mxfp4_dequantize_triton(t: MXFP4Tensor, dtype: torch.dtype = torch.bfloat16, *,
                            out: torch.Tensor | None = None, block_m: int | None = None,
                            block_k: int | None = None, num_warps: int | None = None,
                            programs_per_sm: int | None = None) -> torch.Tensor:
    """Decode an `MXFP4Tensor` to `dtype` `[..., K]` with the Triton kernel (see `codecs.dequantize_mxfp4`).
    The container's data/scales may be strided row views; they are read in place."""
    fn = "dequantize_mxfp4"
    if not isinstance(t, MXFP4Tensor):
        raise TypeError(f"{fn}: t must be a MXFP4Tensor, got {type(t).__name__}")
    shape = tuple(t.shape)
    k = shape[-1]
    out = decode_output(shape, dtype, t.device, out, fn)
    dr = rows_in(t.data)
    sr = rows_in(t.scales)
    orow = rows_out(out, fn, "out").view(_BITS_VIEW[dtype])
    m = dr.shape[0]
    bm, bk, nw = _blocks(k, block_m, block_k, num_warps)
    if m > 0:
        grid, tiles_k, n_tiles, pers = launch_grid(t.device, m, k, bm, bk, programs_per_sm)
        _mxfp4_dequantize_kernel[grid](dr, sr, orow, m, k, dr.stride(0), sr.stride(0), orow.stride(0),
                                       tiles_k, n_tiles, OUT_KIND=_IN_KIND[dtype], BLOCK_M=bm, BLOCK_K=bk,
                                       PERSISTENT=pers, NUM_STAGES=PERSISTENT_STAGES, num_warps=nw)
    return out
