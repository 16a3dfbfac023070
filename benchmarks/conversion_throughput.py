"""Throughput of the direct conversions against the two-step path and the copy roofline, on CUDA.

For each conversion of `mxa2a.quant.conversions` and size `M x K`: `direct` (the one-pass Triton kernel),
`two-step` (decode to BF16 with the codecs' Triton kernels, (transpose,) encode again) and `copy` (a
device-to-device copy of `(in + out) / 2` bytes, as many as the direct kernel reads plus writes: the
memory roofline of this run), as CUDA-event medians. Every direct result is first checked bit for bit
against the torch reference (first rows) and, where the two are the same function, the two-step path.
`--sweep` times every configuration of `kernels.launch.SWEEP` at the first size (passed as `config=`) and
uses the fastest (copy the winners into `launch.CONFIGS` to make them the defaults); sweep at a size well
above the L2, e.g. 65536 x 7168. Without CUDA: a tiny smoke test under the Triton interpreter.

    python benchmarks/conversion_throughput.py -m 65536 16384 [--sweep] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import Column, format_table, machine_description, median, time_cuda, time_host, write_json  # noqa: E402

from mxa2a.quant import codecs, conversions  # noqa: E402
from mxa2a.quant.formats import FP8Tensor, MXFP4Tensor  # noqa: E402
from mxa2a.quant.kernels import launch  # noqa: E402

CONVERSIONS = ("fp8_to_mxfp4", "mxfp4_to_fp8", "fp8_rowwise_to_colwise", "mxfp4_rowwise_to_colwise",
               "mxfp4_rowwise_to_fp8_colwise")
# The two-step path is the same function as the direct one (on inputs whose BF16 decode is exact)
# for all but the scaling-aware FP8 transpose, whose scale rule differs from requantization.
SAME_AS_TWO_STEP = set(CONVERSIONS) - {"fp8_rowwise_to_colwise"}


def make_inputs(m: int, k: int, device: str) -> tuple[FP8Tensor, MXFP4Tensor]:
    """Activation-like inputs: Gaussian rows with per-row magnitudes 2^-8..2^8, quantized by the codecs."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, generator=g, dtype=torch.float32)
    x *= torch.exp2(torch.randint(-8, 9, (m, 1), device=device, generator=g).float())
    x = x.to(torch.bfloat16)
    return codecs.quantize_fp8(x), codecs.quantize_mxfp4(x)


def direct_fn(name: str, q: FP8Tensor, x: MXFP4Tensor, backend: str = "triton",
              config: launch.LaunchConfig | None = None):
    f = getattr(conversions, name)
    arg = q if name.startswith("fp8") else x
    if backend == "torch":
        return lambda: f(arg, backend=backend)
    return lambda: f(arg, backend=backend, config=config)


def two_step_fn(name: str, q: FP8Tensor, x: MXFP4Tensor):
    bf16 = torch.bfloat16
    if name == "fp8_to_mxfp4":
        return lambda: codecs.quantize_mxfp4(codecs.dequantize_fp8(q, bf16))
    if name == "mxfp4_to_fp8":
        return lambda: codecs.quantize_fp8(codecs.dequantize_mxfp4(x, bf16))
    if name == "fp8_rowwise_to_colwise":
        return lambda: codecs.quantize_fp8(codecs.dequantize_fp8(q, bf16).T.contiguous())
    if name == "mxfp4_rowwise_to_colwise":
        return lambda: codecs.quantize_mxfp4(codecs.dequantize_mxfp4(x, bf16).T.contiguous())
    return lambda: codecs.quantize_fp8(codecs.dequantize_mxfp4(x, bf16).T.contiguous())


def nbytes(t) -> int:
    return t.data.numel() * t.data.element_size() + t.scales.numel()


def same_bits(a, b) -> bool:
    return (torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8))
            and torch.equal(a.scales, b.scales))


def check(name: str, q: FP8Tensor, x: MXFP4Tensor, check_rows: int,
          config: launch.LaunchConfig | None = None) -> str:
    """Bit-exact checks before timing; raises on a mismatch, returns what was checked."""
    got = direct_fn(name, q, x, config=config)()
    rows = min(check_rows, q.shape[0])
    rows -= rows % 128
    qs, xs = FP8Tensor(q.data[:rows], q.scales[:rows]), MXFP4Tensor(x.data[:rows], x.scales[:rows])
    want = direct_fn(name, qs, xs, backend="torch")()
    part = direct_fn(name, qs, xs, config=config)()
    if not same_bits(part, want):
        raise SystemExit(f"{name}: Triton result differs from the torch reference on the first {rows} rows")
    checked = f"ref[{rows} rows]"
    if name in SAME_AS_TWO_STEP:
        if not same_bits(got, two_step_fn(name, q, x)()):
            raise SystemExit(f"{name}: direct result differs from the two-step path")
        checked += "+two-step"
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--rows", type=int, nargs="+", default=None,
                        help="row counts M (multiples of 128; default 8192 16384 32768 65536)")
    parser.add_argument("-k", "--cols", type=int, default=None, help="columns K (multiple of 128; default 7168)")
    parser.add_argument("--only", nargs="+", choices=CONVERSIONS, default=list(CONVERSIONS))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--check-rows", type=int, default=2048, help="rows checked against the torch reference")
    parser.add_argument("--sweep", action="store_true", help="time every launch configuration first, use the best")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rows_list = args.rows or ([8192, 16384, 32768, 65536] if cuda else [128])
    k = args.cols or (7168 if cuda else 256)
    if not cuda:
        print("# no CUDA device: smoke test under the Triton interpreter, times are meaningless")
        args.iters, args.warmup = 1, 0
    for m in rows_list:
        if m % 128 or k % 128:
            raise SystemExit(f"M and K must be multiples of 128, got M={m}, K={k}")

    def timed(fn) -> float:
        if cuda:
            return median(time_cuda(fn, args.iters, args.warmup, queue_ahead=True))
        return median(time_host(fn, args.iters, args.warmup))

    chosen = {}
    configs = dict(launch.CONFIGS)  # the sweep's winners replace the defaults for the table
    if args.sweep:
        q, x = make_inputs(rows_list[0], k, device)
        for name in args.only:
            check(name, q, x, args.check_rows)
            times = []
            for cfg in launch.SWEEP[name]:
                times.append((timed(direct_fn(name, q, x, config=cfg)), cfg))
            best_us, best = min(times, key=lambda t: t[0])
            configs[name] = best
            chosen[name] = {"block_m": best.block_m, "block_k": best.block_k, "num_warps": best.num_warps,
                            "variant": best.variant,
                            "us": best_us, "all": [{"cfg": str(c), "us": t} for t, c in times]}
            print(f"# {name}: best {best} at M={rows_list[0]}: {best_us:.1f} us "
                  f"(of {len(times)} configurations)")
        del q, x

    results = []
    for m in rows_list:
        q, x = make_inputs(m, k, device)
        for name in args.only:
            cfg = configs[name]
            checked = check(name, q, x, args.check_rows, cfg)
            direct, two_step = direct_fn(name, q, x, config=cfg), two_step_fn(name, q, x)
            out = direct()
            moved = nbytes(q if name.startswith("fp8") else x) + nbytes(out)
            src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            t_direct, t_two, t_copy = timed(direct), timed(two_step), timed(lambda: dst.copy_(src))
            results.append({
                "conversion": name, "M": m, "K": k, "bytes_moved": moved,
                "direct_us": t_direct, "two_step_us": t_two, "copy_us": t_copy,
                "direct_GBps": moved / t_direct / 1e3, "copy_GBps": moved / t_copy / 1e3,
                "speedup_vs_two_step": t_two / t_direct, "roofline_fraction": t_copy / t_direct,
                "checked": checked, "config": str(cfg),
            })
            del src, dst, out
        del q, x
        if cuda:
            torch.cuda.empty_cache()

    columns = [Column("conversion", "conversion", "{}", 28), Column("M", "M", "{}", 6), Column("K", "K", "{}", 5),
               Column("direct_us", "direct us", "{:.1f}", 10), Column("two_step_us", "2-step us", "{:.1f}", 10),
               Column("copy_us", "copy us", "{:.1f}", 9), Column("direct_GBps", "GB/s", "{:.0f}", 6),
               Column("speedup_vs_two_step", "x 2-step", "{:.2f}", 8),
               Column("roofline_fraction", "% copy", "{:.0%}", 7), Column("checked", "bit-exact vs", "{}", 20)]
    print(format_table(columns, results))
    if cuda:
        worst_speedup = min(r["speedup_vs_two_step"] for r in results)
        worst_roof = min(r["roofline_fraction"] for r in results)
        print(f"# worst speedup vs two-step {worst_speedup:.2f}x (target >= 1.6x); "
              f"worst fraction of copy roofline {worst_roof:.0%} (target >= 70%)")
    if args.json:
        write_json(args.json, {"benchmark": "conversion_throughput", "machine": machine_description(),
                               "iters": args.iters, "warmup": args.warmup, "sweep": chosen, "results": results})


if __name__ == "__main__":
    main()
