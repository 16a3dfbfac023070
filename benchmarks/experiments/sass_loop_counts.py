#!/usr/bin/env python3
"""An offline experiment (issue 19; figures in benchmarks/results/README.md, 2026-12-08 second
session): the Triton FP8 grouped GEMMs compiled for sm_90a by the installed Triton, assembled by its
ptxas and disassembled by its cuobjdump, without a GPU. Per variant: registers, spills and the
instructions of the main loop (the longest backward branch of the SASS) by kind, the count that says
whether a loop is issue-bound (a 64x128x128 FP8 MMA step is ~256 cycles at peak).

The integer arguments get the 16-byte divisibility the JIT gives real tensors: without it Triton's
software pipeliner leaves the loop unpipelined and the counts mean nothing.
    python3 benchmarks/experiments/sass_loop_counts.py   (mxa2a importable; Triton 3.6 is the GPU machine's)
"""
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

os.environ.pop("TRITON_INTERPRET", None)
from mxa2a.gemm.kernels import grouped_gemm as gg  # noqa: E402

POINTERS = dict(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", c_ptr="*i16", offs_ptr="*i32")
# (name, kernel, PREFETCH, step-major scales, scale pointer type); strides of 1 are constexprs, as
# the JIT specializes them: the step stride of row-major scales, or the row stride of step-major ones
ROWS_K, WGRAD_K = gg._grouped_gemm_rows_kernel, gg._grouped_gemm_wgrad_kernel
VARIANTS = [
    ("rows", ROWS_K, False, False, "*u8"),
    ("rows prefetch", ROWS_K, True, False, "*u8"),
    ("wgrad", WGRAD_K, False, False, "*u8"),
    ("wgrad prefetch", WGRAD_K, True, False, "*u8"),
    ("wgrad step-major", WGRAD_K, False, True, "*u8"),
    ("wgrad f32", WGRAD_K, False, False, "*fp32"),
    ("wgrad f32+prefetch+major", WGRAD_K, True, True, "*fp32"),
]
ROWS = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_G=64, OUT_BF16=True, B_BLOCKS=True, stride_ask=1, stride_bsk=1)
WGRAD = dict(BLOCK_N=64, BLOCK_K=128, OUT_BF16=True, ALIGNED=True)


def cubin_of(fn, consts: dict, scales: str, warps: int, stages: int, tmp: str) -> tuple[str, str]:
    order = list(inspect.signature(fn.fn).parameters)
    sig = {n: ("constexpr" if n in consts else POINTERS.get(n, scales if n in ("as_ptr", "bs_ptr") else "i32"))
           for n in order}
    attrs = {(order.index(n),): [["tt.divisibility", 16]] for n in order if sig[n] != "constexpr" and n != "G"}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 64), options=dict(num_warps=warps, num_stages=stages))
    ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    open(ptx, "w").write(k.asm["ptx"])
    log = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", ptx, "-o", cubin],
                         capture_output=True, text=True, check=True).stderr
    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    return log, subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout


def main_loop(sass: str) -> list[str]:
    """The instructions between the longest backward branch and its target."""
    lines = [re.sub(r"\s*/\* 0x[0-9a-f]+ \*/", "", l).strip() for l in sass.splitlines()]
    lines = [l for l in lines if re.match(r"/\*[0-9a-f]+\*/", l)]
    addr = lambda l: int(l[2:l.index("*/")], 16)  # noqa: E731
    back = [(addr(l) - int(m.group(1), 16), int(m.group(1), 16), addr(l))
            for l in lines if (m := re.search(r"BRA (0x[0-9a-f]+)", l)) and int(m.group(1), 16) < addr(l)]
    _, start, end = max(back)
    return [l for l in lines if start <= addr(l) <= end]


def main() -> int:
    print(f"# Triton {triton.__version__}, sm_90a, rows 64x128 tile (4 warps, 4 stages), weight gradient "
          f"64x128 (4 warps, 3 stages)")
    print(f"{'variant':>26} {'regs':>5} {'spill B':>8} {'loop':>5} {'FFMA':>5} {'FMUL':>5} {'select':>7} "
          f"{'LDG':>4} {'LDGSTS':>7} {'QGMMA':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn, prefetch, major, scales in VARIANTS:
            if fn is ROWS_K:
                consts, warps, stages = dict(ROWS, PREFETCH=prefetch), 4, 4
            else:
                ones = dict(stride_asn=1, stride_bsk=1) if major else dict(stride_ast=1, stride_bst=1)
                consts, warps, stages = dict(WGRAD, PREFETCH=prefetch, **ones), 4, 3
            log, sass = cubin_of(fn, consts, scales, warps, stages, tmp)
            regs = re.search(r"Used (\d+) registers", log).group(1)
            spill = re.search(r"(\d+) bytes spill stores", log).group(1)
            ops = collections.Counter(re.match(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", l).group(1)
                                      for l in main_loop(sass))
            print(f"{name:>26} {regs:>5} {spill:>8} {sum(ops.values()):>5} {ops['FFMA']:>5} {ops['FMUL']:>5} "
                  f"{ops['SEL'] + ops['FSEL']:>7} {ops['LDG']:>4} {ops['LDGSTS']:>7} {ops['QGMMA']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
