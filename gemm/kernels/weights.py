"""Triton 128x128-block FP8 quantization of weights, writing the block transpose in the same pass.

Program (e, i, j) reads block (i, j) of matrix e of `w [E, N, K]` (fp32/bf16 bits), takes
k = ceil(log2(amax / 448)) of the whole block (`quant.kernels.fp8.fp8_scale_exponent`), encodes every
element RNE (`fp8_codes`, bit-exact with the torch path of `gemm/weights.py`), and stores the codes at
block (i, j) of `[E, N, K]` and, transposed, at block (j, i) of `[E, K, N]`, with the scale byte on the
block's 128 rows of each scale array.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...quant.kernels.fp8 import fp8_codes, fp8_scale_exponent
from ...quant.kernels.mxfp4 import _load_f32_bits


@triton.jit
def _fp8_block_quantize_kernel(w_ptr, d_ptr, s_ptr, dt_ptr, st_ptr, NB, KB,
                               stride_we, stride_wn, stride_de, stride_dn, stride_se, stride_sn,
                               stride_dte, stride_dtn, stride_ste, stride_stn,
                               IN_KIND: tl.constexpr, K_MAX: tl.constexpr, WRITE_T: tl.constexpr):
    pid = tl.program_id(0)
    e = (pid // (NB * KB)).to(tl.int64)
    nb = (pid % (NB * KB)) // KB
    kb = pid % KB
    rows = (nb * 128 + tl.arange(0, 128)).to(tl.int64)
    cols = (kb * 128 + tl.arange(0, 128)).to(tl.int64)
    inside = (rows[:, None] < NB * 128) & (cols[None, :] < KB * 128)
    bits = _load_f32_bits(w_ptr, e * stride_we + rows[:, None] * stride_wn + cols[None, :], inside, IN_KIND)
    k, sbyte = fp8_scale_exponent(tl.max(tl.max(bits & 0x7FFFFFFF, axis=1), axis=0), K_MAX)
    code = fp8_codes(bits, k, sbyte == 255).to(tl.uint8)
    srow = (tl.zeros([128], dtype=tl.int32) + sbyte).to(tl.uint8)
    tl.store(d_ptr + e * stride_de + rows[:, None] * stride_dn + cols[None, :], code)
    tl.store(s_ptr + e * stride_se + rows * stride_sn + kb, srow)
    if WRITE_T:
        tl.store(dt_ptr + e * stride_dte + cols[:, None] * stride_dtn + rows[None, :], tl.trans(code))
        tl.store(st_ptr + e * stride_ste + cols * stride_stn + nb, srow)


def launch_block_quantize(w3, data, scales, data_t, scales_t, in_kind: int, k_max: int) -> None:
    """w3 `[E, N, K]` bit view (last dim contiguous); outputs uint8 views `[E, N, K]`, `[E, N, K/128]`
    and, when `data_t` is not None, `[E, K, N]`, `[E, K, N/128]`."""
    e, n, k = w3.shape
    write_t = data_t is not None
    dt, st = (data_t, scales_t) if write_t else (data, scales)
    _fp8_block_quantize_kernel[(e * (n // 128) * (k // 128),)](
        w3, data, scales, dt, st, n // 128, k // 128,
        w3.stride(0), w3.stride(1), data.stride(0), data.stride(1), scales.stride(0), scales.stride(1),
        dt.stride(0), dt.stride(1), st.stride(0), st.stride(1), IN_KIND=in_kind, K_MAX=k_max, WRITE_T=write_t,
        num_warps=4)
