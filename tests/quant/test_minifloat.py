"""The fp32 helpers of `quant/kernels/minifloat.py` (E4M3 / E2M1 rounding and decoding, powers of two)
agree with the torch reference exhaustively: every fp32 with 6 significant bits from 2^-149 to 2^8,
zero and the tie points. (The packed-word helpers there run inside every conversion test.)"""

import torch
import triton
import triton.language as tl
from conversion_data import TRITON_DEVICE

from mxa2a.quant import reference
from mxa2a.quant.formats import E4M3_DTYPE
from mxa2a.quant.kernels.minifloat import e2m1_abs_f32, e2m1_round, e4m3_abs_f32, e4m3_round, pow2_f32


@triton.jit
def _helpers_kernel(y_ptr, i_ptr, out_ptr, fout_ptr, N, BLOCK: tl.constexpr):
    j = tl.arange(0, BLOCK)
    m = j < N
    y = tl.load(y_ptr + j, mask=m, other=0.0)
    i = tl.load(i_ptr + j, mask=m, other=0)
    tl.store(out_ptr + 0 * N + j, e4m3_round(tl.minimum(y, 448.0)), mask=m)
    tl.store(out_ptr + 1 * N + j, e2m1_round(tl.minimum(y, 7.99)), mask=m)
    tl.store(fout_ptr + 0 * N + j, e4m3_abs_f32(i & 0x7F), mask=m)
    tl.store(fout_ptr + 1 * N + j, e2m1_abs_f32(i & 7), mask=m)
    tl.store(fout_ptr + 2 * N + j, pow2_f32(tl.minimum(tl.maximum(i - 128, -127), 127)), mask=m)


def test_fp32_helpers_round_and_decode_like_the_reference():
    # Every fp32 with 6 significant bits from 2^-149 (subnormal) to 2^8, zero, and the tie points.
    e = torch.arange(-149, 9, dtype=torch.float64)
    y = ((1 + torch.arange(64, dtype=torch.float64) / 64)[None, :] * torch.exp2(e)[:, None]).flatten()
    y = torch.cat([torch.zeros(1, dtype=torch.float64), y]).float()
    n = y.numel()
    i = torch.arange(n, dtype=torch.int32) % 256
    out = torch.empty(2, n, dtype=torch.int32)
    fout = torch.empty(3, n, dtype=torch.float32)
    dev = [a.to(TRITON_DEVICE) for a in (y, i, out, fout)]
    _helpers_kernel[(1,)](*dev, n, BLOCK=triton.next_power_of_2(n))
    out, fout = dev[2].cpu(), dev[3].cpu()
    assert torch.equal(out[0].long(), reference.e4m3_rne(y.clamp(max=448)).view(torch.uint8).long())
    assert torch.equal(out[1].clamp(max=7).long(), reference.round_to_e2m1_codes(y.clamp(max=7.99)).long())
    mags = (i & 0x7F).to(torch.uint8)
    finite = mags != 0x7F
    assert torch.equal(fout[0][finite], mags.view(E4M3_DTYPE).float()[finite])
    assert torch.equal(fout[1].double(), reference.e2m1_codes_to_values(i & 7))
    assert torch.equal(fout[2].double(), torch.exp2((i.double() - 128).clamp(-127, 127)))
