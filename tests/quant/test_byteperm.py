"""`byte_perm` (quant/kernels/byteperm.py) against PTX `prmt.b32`'s default mode written out in Python:
the shift-and-mask path under the interpreter, the inline PTX on a GPU, on random words and selectors."""

import pytest
import torch
import triton
import triton.language as tl
from conversion_data import TRITON_DEVICE

from mxa2a.quant.kernels.byteperm import byte_perm, use_asm


@triton.jit
def _byte_perm_kernel(a_ptr, b_ptr, s_ptr, o_ptr, N: tl.constexpr, ASM: tl.constexpr):
    i = tl.arange(0, N)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    s = tl.load(s_ptr + i)
    tl.store(o_ptr + i, byte_perm(a, b, s, ASM))


def prmt_reference(a: int, b: int, sel: int) -> int:
    """Byte n of the result is byte (sel >> 4n) & 7 of the 8-byte value b:a; with bit 3 of that selector
    nibble set, that byte's top bit replicated (0x00 or 0xFF)."""
    src = a | (b << 32)
    out = 0
    for n in range(4):
        nib = (sel >> (4 * n)) & 0xF
        byte = (src >> (8 * (nib & 7))) & 0xFF
        out |= ((0xFF if byte & 0x80 else 0) if nib & 8 else byte) << (8 * n)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_byte_perm_matches_prmt(seed):
    n = 256
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64) for _ in range(2))
    sel = torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64)
    sel[: n // 2] &= 0x77777777  # half without sign replication
    sel[:9] = torch.tensor([0x3210, 0x7654, 0x5140, 0x7362, 0x0000, 0x7777, 0x0123, 0x4567, 0xBA98])
    as_u32 = lambda t: t.to(torch.uint32).to(TRITON_DEVICE)
    out = torch.empty(n, dtype=torch.uint32, device=TRITON_DEVICE)
    _byte_perm_kernel[(1,)](as_u32(a), as_u32(b), as_u32(sel), out, N=n, ASM=use_asm())
    got = out.cpu().to(torch.int64) & 0xFFFFFFFF
    want = torch.tensor([prmt_reference(int(x), int(y), int(s)) for x, y, s in zip(a, b, sel)])
    assert torch.equal(got, want)
