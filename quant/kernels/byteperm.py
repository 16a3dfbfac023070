"""`byte_perm`: the PTX byte permute (`prmt.b32`), for the table-lookup conversion kernels.

`byte_perm(a, b, sel)` picks four bytes out of the eight of `b:a` (bytes 0-3 from `a`, 4-7 from `b`):
byte n of the result is byte `(sel >> 4n) & 7`, or, where bit 3 of that selector nibble is set, that
byte's top bit copied into all eight bits (0x00 or 0xFF; PTX's sign replication). With a table of eight
bytes in `a`, `b` and four 3-bit codes in the low nibbles of `sel`, it is four table lookups in one
instruction; with selector 0xBA98 it turns the top bit of each byte of `a` into a byte mask.

On a GPU it is one `prmt` (inline PTX); under the Triton interpreter, which cannot run PTX, the same
function is computed from shifts and masks (`ASM=False`). The GPU tests compare both paths' kernels
with the torch references, the CPU tests the interpreter path.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def use_asm() -> bool:
    """Whether kernels may emit inline PTX (False under TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") != "1"


@triton.jit
def byte_perm(a, b, sel, ASM: tl.constexpr):
    """Bytes `(sel >> 4n) & 7` (n = 0..3) of the 8-byte value `b:a`, sign-replicated where selector bit
    `4n + 3` is set; 32-bit integer tensors of one shape and type (the result's)."""
    if ASM:
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel],
                                         dtype=a.dtype, is_pure=True, pack=1)
    else:
        out = tl.zeros_like(sel)
        for n in tl.static_range(4):
            i = (sel >> (4 * n)) & 7
            src = tl.where(i < 4, a, b)
            byte = (src >> ((i & 3) * 8)) & 0xFF
            byte = tl.where(((sel >> (4 * n + 3)) & 1) != 0, tl.where(byte >= 0x80, 0xFF, 0), byte)
            out |= byte << (8 * n)
        return out
