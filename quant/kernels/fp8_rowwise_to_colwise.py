"""`fp8_rowwise_to_colwise`: the scaling-aware FP8 transpose, row tiles of `[M, K]` -> tiles of `[K, M]`.

Per 128x128 tile the column-wise scale byte is the largest row scale byte `kt`; each value moves down
`d = kt - k_row` binades (`_shift_round`: the code minus `8d` while it stays normal, else one fp32
multiply into the subnormal range: RNE, never flushed); an E4M3 NaN or a NaN row scale makes its
column-wise tile NaN. Equals `reference_conversions.fp8_rowwise_to_colwise` bit for bit. One program
per 128x128 tile, BLOCK_K columns at a time. Kernels (`variant`):
- "words" (default): int32 words from load to store; a thread holds 4x4-byte blocks, rounds each byte
  and transposes the block with 8 byte permutes (`byteperm.py`):
      in:  rows 4g .. 4g+3, one word each = columns 4c .. 4c+3   ->   out: 4 words, column 4c+b each,
           holding rows 4g .. 4g+3 (one output word); only words cross shared memory
  Needs 4-byte aligned input rows (else "bytes").
- "bytes": one byte per element, rows ordered so that a thread's 4 rows are consecutive and their
  output bytes pack into one int32 word before the shared-memory transpose.
With a row map (MAPPED) both read output row r's values from input row `row_map[r]` (masked loads: a
zero row where it is out of range), so a row gather costs no pass of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import rows_in
from ..formats import E4M3_DTYPE, FP8_TILE, FP8Tensor
from .byteperm import byte_perm, use_asm
from .launch import LaunchConfig, pick_config
from .minifloat import bit_or


@triton.jit
def _shift_round(mag, dd, g):
    """E4M3 magnitude code of |q| * 2^-d, rounded to nearest even, for magnitude codes `mag` (0..0x7E),
    `dd = d << 3` and `g` = 2^(-20-d) as fp32 (0 when that is below 2^-149), per row.

    If the shifted value stays normal (exponent field E > d) its code is `mag - dd` exactly. Otherwise
    the value is below 2^-6 and its code is RNE(|q| * 2^-d / 2^-9) (8 when it rounds up to 2^-6): the
    fp32 `mag << 20` is |q| * 2^-120 (E4M3 subnormals land on fp32 subnormals), times 2^(-20-d) it is
    |q| * 2^-d * 2^-140 < 2^-126, and fp32 rounds that product to a multiple of 2^-149, i.e. to the
    E4M3 subnormal step 2^-9 scaled by 2^-140; its bits are the code. For a normal result those bits
    are the value / 2^-9 >= the code, and `mag - dd >= 8`; for a subnormal one `mag - dd < 8`, so
    `min(bits, max(mag - dd, 8))` picks the right one in both cases."""
    n = ((mag << 20).to(tl.float32, bitcast=True) * g[:, None]).to(tl.int32, bitcast=True)
    return tl.minimum(n, tl.maximum(mag - dd[:, None], 8))


@triton.jit
def _row_factors(kt, rbyte):
    """`dd` and `g` of `_shift_round` for rows with scale bytes `rbyte` in a tile of scale byte `kt`."""
    d = kt - rbyte  # >= 0
    e = -20 - d  # exponent of g; below -149 g is 0 (|q| * 2^-d < 2^-120 rounds to 0 either way)
    g_bits = tl.where(e >= -126, (e + 127) << 23, tl.where(e >= -149, 1 << (tl.maximum(e, -149) + 149), 0))
    dd = tl.minimum(d, 16) << 3  # d >= 16 leaves no normal result: mag - 128 < 8 picks the product
    return dd, g_bits.to(tl.float32, bitcast=True)


@triton.jit
def _nan_columns(mag, BLOCK_K: tl.constexpr):
    """1 for the columns of `mag` [128, BLOCK_K] (rows ordered as `_packed_rows` gives them) holding the
    E4M3 NaN magnitude 0x7F. The column maxima of each thread's 4 rows are packed 4 columns to a word
    (little endian), a byte's top bit set by +1 only at 0x7F, so the cross-thread reduction over rows
    is an OR of BLOCK_K / 4 words instead of a maximum of BLOCK_K values."""
    m4 = tl.max(tl.reshape(mag, (4, 32, BLOCK_K)), axis=0)  # [32, BLOCK_K], max of rows 4j .. 4j + 3
    pk = tl.sum(tl.reshape(m4, (32, BLOCK_K // 4, 4)) << (8 * tl.arange(0, 4))[None, None, :], axis=2)
    flags = tl.reduce((pk + 0x01010101) & -0x7F7F7F80, 0, bit_or)  # [BLOCK_K / 4]; -0x7F7F7F80 is 0x80808080
    return tl.reshape((flags[:, None] >> (8 * tl.arange(0, 4) + 7)[None, :]) & 1, (BLOCK_K,)) != 0


@triton.jit
def _source_rows(rows, map_ptr, M_IN, MAPPED: tl.constexpr):
    """Input rows (int64) of output rows `rows` and whether each is a real row: `rows` themselves, or
    `row_map[rows]`, real where inside `[0, M_IN)` (else a zero row: masked loads give 0)."""
    if MAPPED:
        src = tl.load(map_ptr + rows)
        return src.to(tl.int64), (src >= 0) & (src < M_IN)
    else:
        return rows.to(tl.int64), rows >= 0


@triton.jit
def _packed_rows(pid_m, M, qs_ptr, stride_qs, tile, map_ptr, M_IN, EVEN: tl.constexpr, MAPPED: tl.constexpr):
    """Rows of one 128-row block in the "bytes" kernel's order and their per-row factors: tensor row i holds
    memory row 4 * (i % 32) + i // 32, so the rows a thread holds (i, i + 32, ...) are 4 consecutive
    memory rows and their output bytes pack into one int32 word in registers; only words go through
    the shared-memory transpose. Returns the rows' validity, int64 input rows, kt, dd and g of
    `_shift_round`."""
    i = tl.arange(0, 128)
    rows = pid_m * 128 + 4 * (i % 32) + i // 32
    r64, real = _source_rows(rows, map_ptr, M_IN, MAPPED)
    ok = real & (rows < M)
    if EVEN and not MAPPED:
        rbyte = tl.load(qs_ptr + r64 * stride_qs + tile).to(tl.int32)
    else:
        rbyte = tl.load(qs_ptr + r64 * stride_qs + tile, mask=ok, other=0).to(tl.int32)
    kt = tl.max(rbyte, axis=0)  # byte 255 (NaN) is the largest, so a NaN row makes the tile NaN
    dd, g = _row_factors(kt, rbyte)
    return ok, r64, kt, dd, g


@triton.jit
def _packed_chunk(q_ptr, o_ptr, os_ptr, ok, r64, kt, dd, g, pid_m, cols, M, K, stride_q, stride_o,
                  stride_os, BLOCK_K: tl.constexpr, EVEN: tl.constexpr, MAPPED: tl.constexpr):
    """Converts input columns `cols` [BLOCK_K] of the 128 input rows `r64` (order of `_packed_rows`;
    `ok`: real rows) and stores them as output rows: 4 output bytes per int32 word, transposed as words."""
    if EVEN and not MAPPED:
        code = tl.load(q_ptr + r64[:, None] * stride_q + cols[None, :]).to(tl.int32)
    else:
        code = tl.load(q_ptr + r64[:, None] * stride_q + cols[None, :],
                       mask=ok[:, None] & (cols < K)[None, :], other=0).to(tl.int32)
    mag = code & 0x7F
    c = _shift_round(mag, dd, g) | (code & 0x80)
    col_nan = _nan_columns(mag, BLOCK_K) | (kt == 255)
    # Word (j, col) = output bytes of memory rows 4j .. 4j + 3 of that column, little endian.
    word = tl.sum(tl.reshape(c, (4, 32, BLOCK_K)) << (8 * tl.arange(0, 4))[:, None, None], axis=0)
    word = tl.where(col_nan[None, :], 0, word)
    w_t = tl.trans(word)  # [BLOCK_K, 32]: output row = input column, 32 words = its 128 bytes
    c64 = cols.to(tl.int64)
    o32 = o_ptr.to(tl.pointer_type(tl.int32))  # the output is ours: contiguous, M % 128 == 0
    ocols = pid_m * 32 + tl.arange(0, 32)
    oscale = tl.where(col_nan, 255, kt).to(tl.uint8)
    if EVEN:
        tl.store(o32 + c64[:, None] * (stride_o // 4) + ocols[None, :], w_t)
        tl.store(os_ptr + c64 * stride_os + pid_m, oscale)
    else:
        col_ok = cols < K
        tl.store(o32 + c64[:, None] * (stride_o // 4) + ocols[None, :], w_t,
                 mask=col_ok[:, None] & (ocols < M // 4)[None, :])
        tl.store(os_ptr + c64 * stride_os + pid_m, oscale, mask=col_ok)


@triton.jit
def _fp8_rowwise_to_colwise_bytes_kernel(q_ptr, qs_ptr, o_ptr, os_ptr, M, K,
                                         stride_q, stride_qs, stride_o, stride_os, map_ptr, M_IN,
                                         BLOCK_K: tl.constexpr, EVEN: tl.constexpr, MAPPED: tl.constexpr):
    # One program: a whole 128x128 tile, BLOCK_K columns at a time (the per-row work done once).
    # M: output columns (rows of the transposed input); M_IN: input rows (MAPPED only).
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    ok, r64, kt, dd, g = _packed_rows(pid_m, M, qs_ptr, stride_qs, pid_t, map_ptr, M_IN, EVEN, MAPPED)
    for k0 in range(0, 128, BLOCK_K):
        cols = pid_t * 128 + k0 + tl.arange(0, BLOCK_K)
        _packed_chunk(q_ptr, o_ptr, os_ptr, ok, r64, kt, dd, g, pid_m, cols, M, K, stride_q, stride_o,
                      stride_os, BLOCK_K, EVEN, MAPPED)


@triton.jit
def _row_word(code, mag, dd, g, ASM: tl.constexpr):
    """Input words `[32, NW]` (4 codes of one row each, little endian; `mag` = code & 0x7F7F7F7F) -> their
    codes through `_shift_round` (`dd`, `g` per row), packed the same way, sign bits included."""
    out = code & -0x7F7F7F80  # the sign bits (0x80808080)
    zero = tl.zeros_like(mag)
    for i in tl.static_range(4):
        b = byte_perm(mag, zero, tl.full(mag.shape, 0x4440 + i, tl.int32), ASM)  # byte i of mag (0..0x7F)
        out += _shift_round(b, dd, g) << (8 * i)  # < 0x80: adds into a clear byte
    return out


@triton.jit
def _fp8_rowwise_to_colwise_words_kernel(q_ptr, qs_ptr, o_ptr, os_ptr, M, K,
                                         stride_q, stride_qs, stride_o, stride_os, map_ptr, M_IN,
                                         BLOCK_K: tl.constexpr, ASM: tl.constexpr, MAPPED: tl.constexpr):
    # Words throughout. One program per 128x128 tile, BLOCK_K columns at a time; tensors are
    # [32 row groups, BLOCK_K / 4 word columns], one per row a of each group (rows 4g + a), so a thread
    # holds 4x4-byte blocks: each row's word is rounded with `_shift_round`'s arithmetic per byte and
    # repacked, then the 4x4 block is transposed with 8 byte permutes into 4 words that each hold 4
    # consecutive rows of one column (an output word), and only words go through the shared-memory
    # transpose. NaN columns come from an OR of per-byte NaN flags over the rows. Needs 4-byte aligned
    # input rows and full tiles (wrapper; valid containers always give full tiles).
    NW: tl.constexpr = BLOCK_K // 4
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    gi = tl.arange(0, 32)
    q32 = q_ptr.to(tl.pointer_type(tl.int32))
    o32 = o_ptr.to(tl.pointer_type(tl.int32))
    r0 = pid_m * 128 + 4 * gi
    s0, ok0 = _source_rows(r0, map_ptr, M_IN, MAPPED)
    s1, ok1 = _source_rows(r0 + 1, map_ptr, M_IN, MAPPED)
    s2, ok2 = _source_rows(r0 + 2, map_ptr, M_IN, MAPPED)
    s3, ok3 = _source_rows(r0 + 3, map_ptr, M_IN, MAPPED)
    rb0 = _load_rows(qs_ptr + s0 * stride_qs + pid_t, ok0, MAPPED).to(tl.int32)
    rb1 = _load_rows(qs_ptr + s1 * stride_qs + pid_t, ok1, MAPPED).to(tl.int32)
    rb2 = _load_rows(qs_ptr + s2 * stride_qs + pid_t, ok2, MAPPED).to(tl.int32)
    rb3 = _load_rows(qs_ptr + s3 * stride_qs + pid_t, ok3, MAPPED).to(tl.int32)
    kt = tl.max(tl.maximum(tl.maximum(rb0, rb1), tl.maximum(rb2, rb3)), axis=0)  # NaN (255) is the largest
    dd0, g0 = _row_factors(kt, rb0)
    dd1, g1 = _row_factors(kt, rb1)
    dd2, g2 = _row_factors(kt, rb2)
    dd3, g3 = _row_factors(kt, rb3)
    a0 = s0[:, None] * (stride_q // 4)
    a1 = s1[:, None] * (stride_q // 4)
    a2 = s2[:, None] * (stride_q // 4)
    a3 = s3[:, None] * (stride_q // 4)
    ocols = pid_m * 32 + gi
    for k0 in range(0, 128, BLOCK_K):
        wc = (pid_t * 128 + k0) // 4 + tl.arange(0, NW)
        x0 = _load_rows(q32 + a0 + wc[None, :], ok0[:, None], MAPPED)
        x1 = _load_rows(q32 + a1 + wc[None, :], ok1[:, None], MAPPED)
        x2 = _load_rows(q32 + a2 + wc[None, :], ok2[:, None], MAPPED)
        x3 = _load_rows(q32 + a3 + wc[None, :], ok3[:, None], MAPPED)
        m0 = x0 & 0x7F7F7F7F
        m1 = x1 & 0x7F7F7F7F
        m2 = x2 & 0x7F7F7F7F
        m3 = x3 & 0x7F7F7F7F
        # E4M3 NaN (0x7F) per byte: + 1 sets the byte's top bit only there.
        flags = (m0 + 0x01010101) | (m1 + 0x01010101) | (m2 + 0x01010101) | (m3 + 0x01010101)
        nan4 = tl.reduce(flags & -0x7F7F7F80, 0, bit_or)  # [NW]: bit 8b + 7 for NaN column 4c + b
        y0 = _row_word(x0, m0, dd0, g0, ASM)
        y1 = _row_word(x1, m1, dd1, g1, ASM)
        y2 = _row_word(x2, m2, dd2, g2, ASM)
        y3 = _row_word(x3, m3, dd3, g3, ASM)
        # 4x4 byte transpose: c_b = byte b of y0, y1, y2, y3 (column 4c + b, rows 4g .. 4g + 3).
        t0 = byte_perm(y0, y1, tl.full(y0.shape, 0x5140, tl.int32), ASM)
        t1 = byte_perm(y0, y1, tl.full(y0.shape, 0x7362, tl.int32), ASM)
        t2 = byte_perm(y2, y3, tl.full(y0.shape, 0x5140, tl.int32), ASM)
        t3 = byte_perm(y2, y3, tl.full(y0.shape, 0x7362, tl.int32), ASM)
        base = pid_t * 128 + k0 + 4 * tl.arange(0, NW)
        _store_column_words(byte_perm(t0, t2, tl.full(y0.shape, 0x5410, tl.int32), ASM), nan4, 0, kt, base,
                            o32, os_ptr, ocols, pid_m, stride_o, stride_os)
        _store_column_words(byte_perm(t0, t2, tl.full(y0.shape, 0x7632, tl.int32), ASM), nan4, 1, kt, base,
                            o32, os_ptr, ocols, pid_m, stride_o, stride_os)
        _store_column_words(byte_perm(t1, t3, tl.full(y0.shape, 0x5410, tl.int32), ASM), nan4, 2, kt, base,
                            o32, os_ptr, ocols, pid_m, stride_o, stride_os)
        _store_column_words(byte_perm(t1, t3, tl.full(y0.shape, 0x7632, tl.int32), ASM), nan4, 3, kt, base,
                            o32, os_ptr, ocols, pid_m, stride_o, stride_os)


@triton.jit
def _load_rows(ptrs, ok, MAPPED: tl.constexpr):
    """`ptrs`' values, 0 where a mapped row is not real (unmasked without a row map)."""
    if MAPPED:
        return tl.load(ptrs, mask=ok, other=0)
    else:
        return tl.load(ptrs)


@triton.jit
def _store_column_words(words, nan4, B: tl.constexpr, kt, base, o32, os_ptr, ocols, pid_m, stride_o,
                        stride_os):
    """Stores output rows `base + B` (input columns 4c + B): `words` [32, NW] holds rows 4g .. 4g + 3."""
    col_nan = (((nan4 >> (8 * B + 7)) & 1) != 0) | (kt == 255)
    w_t = tl.trans(tl.where(col_nan[None, :], 0, words))  # [NW, 32]: one output row per line
    k64 = (base + B).to(tl.int64)
    tl.store(o32 + k64[:, None] * (stride_o // 4) + ocols[None, :], w_t)
    tl.store(os_ptr + k64 * stride_os + pid_m, tl.where(col_nan, 255, kt).to(tl.uint8))


def fp8_rowwise_to_colwise_triton(t: FP8Tensor, *, row_map: torch.Tensor | None = None,
                                  config: LaunchConfig | None = None) -> FP8Tensor:
    """FP8 row-wise `[M, K]` -> FP8 tiles of the transposed `[K, M]` matrix, one Triton pass; with
    `row_map` `[M']` the rows `row_map` names, `[K, M']` (contract and argument checks:
    `mxa2a.quant.conversions.fp8_rowwise_to_colwise`). `config`: launch configuration (default
    `launch.CONFIGS["fp8_rowwise_to_colwise"]`). Asynchronous on the current CUDA stream (no host sync)."""
    cfg = pick_config("fp8_rowwise_to_colwise", config)
    if cfg.block_m != 128 or 128 % cfg.block_k:
        raise ValueError(f"fp8_rowwise_to_colwise: needs block_m 128 and block_k dividing 128 (one program per "
                         f"128x128 tile), got config = {cfg}")
    q = rows_in(t.data.view(torch.uint8))
    qs = rows_in(t.scales)
    m_in, K = q.shape
    mapped = row_map is not None
    M = row_map.numel() if mapped else m_in
    out = FP8Tensor(torch.empty(K, M, dtype=E4M3_DTYPE, device=t.device),
                    torch.empty(K, M // FP8_TILE, dtype=torch.uint8, device=t.device))
    if M == 0 or K == 0:
        return out
    o = out.data.view(torch.uint8)
    args = (q, qs, o, out.scales, M, K, q.stride(0), qs.stride(0), o.stride(0), out.scales.stride(0),
            row_map if mapped else qs, m_in)
    full = M % FP8_TILE == 0 and K % FP8_TILE == 0
    if cfg.variant == "words" and full and q.data_ptr() % 4 == 0 and q.stride(0) % 4 == 0:  # reads int32 words
        grid = (M // FP8_TILE, K // FP8_TILE)  # one program per 128x128 tile
        _fp8_rowwise_to_colwise_words_kernel[grid](*args, BLOCK_K=cfg.block_k, ASM=use_asm(), MAPPED=mapped,
                                                   num_warps=cfg.num_warps)
        return out
    if cfg.variant == "words":
        cfg = LaunchConfig(128, 32, cfg.num_warps, "bytes")  # misaligned rows: the byte-wise kernel
    # Valid containers always give full tiles (M and K are multiples of 128); the masked body is there
    # for safety only.
    grid = (M // FP8_TILE, triton.cdiv(K, FP8_TILE))  # one program per 128x128 tile
    _fp8_rowwise_to_colwise_bytes_kernel[grid](*args, BLOCK_K=cfg.block_k, EVEN=full, MAPPED=mapped,
                                               num_warps=cfg.num_warps)
    return out
