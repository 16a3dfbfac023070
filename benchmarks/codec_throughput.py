"""Codec throughput: GB/s of each MXFP4 / FP8 kernel next to the device-to-device copy bandwidth.

bf16 rows `[M, hidden]` of 16 MiB .. 1 GiB (x2 steps) through quantize_mxfp4 (rceil), dequantize_mxfp4,
quantize_fp8 (1x128) and dequantize_fp8, each first checked bit for bit against the torch reference.
GB/s counts bytes read + written (data and scales); the roofline is `dst.copy_(src)` of the bf16 bytes in
the same run. "time ms" is device time per call (a spin kernel holds the stream while the host queues a
burst, so launch time is not counted; inputs rotate over >= 256 MiB so the L2 never holds them); "call
ms" is one call between two events, host issue included. `--sweep` tries SWEEP_CONFIGS per kernel at
32 MiB and 256 MiB and times the table with each size class's winner. Without CUDA: a CPU smoke test
(torch reference timing, interpreter check) so `make bench-codec` works anywhere; not performance figures.

    python benchmarks/codec_throughput.py [--hidden 7168] [--sweep] [--json PATH] [--cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

MiB = 1 << 20
SWEEP_CONFIGS = [  # (BLOCK_M, BLOCK_K, num_warps, programs_per_sm); programs_per_sm 0 = one program a tile
    (8, 512, 4, 0), (16, 512, 4, 0), (16, 512, 8, 0), (4, 1024, 4, 0), (32, 256, 4, 0), (64, 256, 8, 0),
    (8, 512, 4, 2), (8, 512, 4, 4), (16, 512, 4, 4), (16, 512, 8, 2), (4, 1024, 4, 4), (32, 256, 8, 2),
]
SWEEP_MIB = {"small": 32, "large": 256}  # size classes: sizes below LARGE_FROM_MIB use the "small" winner
LARGE_FROM_MIB = 128


@dataclass(frozen=True)
class Row:
    kernel: str
    size_mib: float  # bf16 input (or output) size
    bytes_moved: int  # read + written
    ms: float  # device time per call (host issue hidden, see _cuda_device_ms)
    gbps: float
    copy_gbps: float
    pct_of_copy: float
    config: tuple  # (BLOCK_M, BLOCK_K, num_warps, programs_per_sm) or () for CPU
    call_ms: float = 0.0  # per-call time with the host's issue time included (events around one call)


def _bytes(kernel: str, n: int) -> int:
    """Bytes read + written by one call on n elements (bf16 side 2n)."""
    mx, f8 = n // 2 + n // 32, n + n // 128
    return {"quantize_mxfp4": 2 * n + mx, "dequantize_mxfp4": mx + 2 * n,
            "quantize_fp8": 2 * n + f8, "dequantize_fp8": f8 + 2 * n, "copy": 4 * n}[kernel]


def _cuda_median_ms(fn: Callable[[int], None], n_bufs: int, repeats: int) -> float:
    """Per-call time: events around one call, so the host's issue time (Python, checks, launch) counts."""
    for i in range(min(3, n_bufs)):  # warm-up (compiles)
        fn(i)
    torch.cuda.synchronize()
    times = []
    for r in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(r % n_bufs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


BURST = 8  # calls between one pair of events in device timing


def _cuda_device_ms(fn: Callable[[int], None], n_bufs: int, repeats: int) -> float:
    """Device time per call: a spin kernel holds the stream while the host queues the start event,
    BURST calls (rotating buffers) and the end event, so the GPU runs them back to back and host issue
    time is hidden. Median over `repeats` bursts of (elapsed / BURST)."""
    for i in range(min(3, n_bufs)):  # warm-up (compiles)
        fn(i)
    torch.cuda.synchronize()
    times = []
    for r in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1 ms of spinning: longer than issuing a burst on the host
        start.record()
        for j in range(BURST):
            fn((r * BURST + j) % n_bufs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / BURST)
    return statistics.median(times)


class CudaCase:
    """Buffers for one size: n_bufs rotating copies of every input and output."""

    def __init__(self, rows: int, hidden: int, n_bufs: int):
        from mxa2a.quant import FP8Tensor, MXFP4Tensor

        dev = "cuda"
        self.n = rows * hidden
        self.n_bufs = n_bufs
        self.x = [torch.randn(rows, hidden, device=dev, dtype=torch.bfloat16) for _ in range(n_bufs)]
        self.y = [torch.empty_like(self.x[0]) for _ in range(n_bufs)]
        u8 = dict(dtype=torch.uint8, device=dev)
        self.mx = [MXFP4Tensor(torch.empty(rows, hidden // 2, **u8), torch.empty(rows, hidden // 32, **u8))
                   for _ in range(n_bufs)]
        self.f8 = [FP8Tensor(torch.empty(rows, hidden, dtype=torch.float8_e4m3fn, device=dev),
                             torch.empty(rows, hidden // 128, **u8)) for _ in range(n_bufs)]

    def fns(self, cfg: dict) -> dict[str, Callable[[int], None]]:
        from mxa2a.quant.kernels.fp8 import fp8_dequantize_triton, fp8_quantize_triton
        from mxa2a.quant.kernels.mxfp4 import mxfp4_dequantize_triton, mxfp4_quantize_triton

        c = lambda k: cfg.get(k, {})  # noqa: E731
        return {
            "copy": lambda i: self.y[i].copy_(self.x[i]),
            "quantize_mxfp4": lambda i: mxfp4_quantize_triton(self.x[i], "rceil", out=self.mx[i],
                                                              **c("quantize_mxfp4")),
            "dequantize_mxfp4": lambda i: mxfp4_dequantize_triton(self.mx[i], torch.bfloat16, out=self.y[i],
                                                                  **c("dequantize_mxfp4")),
            "quantize_fp8": lambda i: fp8_quantize_triton(self.x[i], out=self.f8[i], **c("quantize_fp8")),
            "dequantize_fp8": lambda i: fp8_dequantize_triton(self.f8[i], torch.bfloat16, out=self.y[i],
                                                              **c("dequantize_fp8")),
        }


def check_bit_exact(x: torch.Tensor, backend: str) -> dict[str, bool]:
    """Each kernel vs the torch reference on the same input: data, scale and decoded bytes."""
    from mxa2a.quant import dequantize_fp8, dequantize_mxfp4, quantize_fp8, quantize_mxfp4, reference

    x = x.clone()
    x.view(-1)[123] = float("nan")  # one NaN block / tile on the way
    res = {}
    rm, gm = reference.quantize_mxfp4(x, "rceil"), quantize_mxfp4(x, scale_mode="rceil", backend=backend)
    res["quantize_mxfp4"] = torch.equal(rm.data, gm.data) and torch.equal(rm.scales, gm.scales)
    res["dequantize_mxfp4"] = torch.equal(reference.dequantize_mxfp4(rm).view(torch.int16),
                                          dequantize_mxfp4(rm, backend=backend).view(torch.int16))
    rf, gf = reference.quantize_fp8(x), quantize_fp8(x, backend=backend)
    res["quantize_fp8"] = (torch.equal(rf.data.view(torch.uint8), gf.data.view(torch.uint8))
                           and torch.equal(rf.scales, gf.scales))
    res["dequantize_fp8"] = torch.equal(reference.dequantize_fp8(rf).view(torch.int16),
                                        dequantize_fp8(rf, backend=backend).view(torch.int16))
    return res


def check_config(kern: str, cfg: dict, x: torch.Tensor) -> bool:
    """One kernel with launch config `cfg` vs the torch reference on `x`, bit for bit."""
    from mxa2a.quant import reference
    from mxa2a.quant.kernels.fp8 import fp8_dequantize_triton, fp8_quantize_triton
    from mxa2a.quant.kernels.mxfp4 import mxfp4_dequantize_triton, mxfp4_quantize_triton

    if kern == "quantize_mxfp4":
        r, g = reference.quantize_mxfp4(x, "rceil"), mxfp4_quantize_triton(x, "rceil", **cfg)
        return torch.equal(r.data, g.data) and torch.equal(r.scales, g.scales)
    if kern == "dequantize_mxfp4":
        t = reference.quantize_mxfp4(x, "rceil")
        return torch.equal(reference.dequantize_mxfp4(t).view(torch.int16),
                           mxfp4_dequantize_triton(t, torch.bfloat16, **cfg).view(torch.int16))
    if kern == "quantize_fp8":
        r, g = reference.quantize_fp8(x), fp8_quantize_triton(x, **cfg)
        return torch.equal(r.data.view(torch.uint8), g.data.view(torch.uint8)) and torch.equal(r.scales, g.scales)
    t = reference.quantize_fp8(x)
    return torch.equal(reference.dequantize_fp8(t).view(torch.int16),
                       fp8_dequantize_triton(t, torch.bfloat16, **cfg).view(torch.int16))


def run_cuda(args) -> dict:
    import triton

    hidden = args.hidden
    sizes = []
    s = args.min_mib
    while s <= args.max_mib:
        sizes.append(s)
        s *= 2
    kernels = ["quantize_mxfp4", "dequantize_mxfp4", "quantize_fp8", "dequantize_fp8"]

    rows_chk = max(1, (16 * MiB) // (2 * hidden))
    check = check_bit_exact(torch.randn(rows_chk, hidden, device="cuda", dtype=torch.bfloat16) * 3, "triton")
    print(f"bit-exact vs reference at {rows_chk} x {hidden} bf16: "
          + ", ".join(f"{k} {'OK' if v else 'MISMATCH'}" for k, v in check.items()), flush=True)

    from mxa2a.quant.kernels import fp8 as fp8_kernels, mxfp4 as mxfp4_kernels

    default = {}
    for kern, mod in (("quantize_mxfp4", mxfp4_kernels), ("dequantize_mxfp4", mxfp4_kernels),
                      ("quantize_fp8", fp8_kernels), ("dequantize_fp8", fp8_kernels)):
        bm, bk, nw = mod.default_blocks(hidden)
        default[kern] = dict(block_m=bm, block_k=bk, num_warps=nw, programs_per_sm=0)
    best: dict[str, dict[str, dict]] = {cls: dict(default) for cls in SWEEP_MIB}  # size class -> kernel -> cfg
    sweep = []
    if args.sweep:
        x_chk = torch.randn(1000, hidden, device="cuda", dtype=torch.bfloat16) * 3  # 1000 rows: ragged tiles
        x_chk.view(-1)[4321] = float("nan")
        for cls, mib in SWEEP_MIB.items():
            rows = (mib * MiB) // (2 * hidden)
            case = CudaCase(rows, hidden, max(1, -(-256 // mib)))
            for kern in kernels:
                results = []
                for bm, bk, nw, pps in SWEEP_CONFIGS:
                    if bk > triton.next_power_of_2(hidden) or (kern.endswith("fp8") and bk < 128):
                        continue
                    c = dict(block_m=bm, block_k=bk, num_warps=nw, programs_per_sm=pps)
                    if not check_config(kern, c, x_chk):
                        print(f"  sweep {kern} {c}: MISMATCH vs reference, skipped", flush=True)
                        sweep.append(dict(kernel=kern, size_class=cls, size_mib=mib, **c, mismatch=True))
                        continue
                    ms = _cuda_device_ms(case.fns({kern: c})[kern], case.n_bufs, args.repeats)
                    gbps = _bytes(kern, case.n) / ms / 1e6
                    results.append((c, ms, gbps))
                    sweep.append(dict(kernel=kern, size_class=cls, size_mib=mib, **c, ms=ms, gbps=gbps))
                    print(f"  sweep {cls:5s} {mib:4d} MiB {kern:17s} BLOCK_M={bm:3d} BLOCK_K={bk:5d} warps={nw} "
                          f"programs/SM={pps or '-':>2}: {ms:8.4f} ms {gbps:8.1f} GB/s", flush=True)
                if not results:
                    print(f"best {cls} {kern}: no config matched the reference; keeping the default", flush=True)
                    continue
                c, ms, g = max(results, key=lambda r: r[2])
                best[cls][kern] = c
                print(f"best {cls} {kern}: BLOCK_M={c['block_m']} BLOCK_K={c['block_k']} num_warps={c['num_warps']} "
                      f"programs_per_sm={c['programs_per_sm']} ({g:.1f} GB/s at {mib} MiB)", flush=True)
            del case
            torch.cuda.empty_cache()
        print("best configs (size class: kernel -> (BLOCK_M, BLOCK_K, num_warps, programs_per_sm)):")
        for cls, d in best.items():
            print(f"  {cls} (<{LARGE_FROM_MIB} MiB)" if cls == "small" else f"  {cls} (>={LARGE_FROM_MIB} MiB)",
                  {k: tuple(v.values()) for k, v in d.items()})

    table: list[Row] = []
    for mib in sizes:
        rows = (mib * MiB) // (2 * hidden)
        case = CudaCase(rows, hidden, max(1, -(-256 // mib)))
        cfgs = best["large" if mib >= LARGE_FROM_MIB else "small"]
        fns = case.fns(cfgs)
        copy_ms = _cuda_device_ms(fns["copy"], case.n_bufs, args.repeats)
        copy_gbps = _bytes("copy", case.n) / copy_ms / 1e6
        table.append(Row("copy", case.n * 2 / MiB, _bytes("copy", case.n), copy_ms, copy_gbps, copy_gbps,
                         100.0, (), _cuda_median_ms(fns["copy"], case.n_bufs, args.repeats)))
        for kern in kernels:
            ms = _cuda_device_ms(fns[kern], case.n_bufs, args.repeats)
            gbps = _bytes(kern, case.n) / ms / 1e6
            table.append(Row(kern, case.n * 2 / MiB, _bytes(kern, case.n), ms, gbps, copy_gbps,
                             100.0 * gbps / copy_gbps, tuple(cfgs[kern].values()),
                             _cuda_median_ms(fns[kern], case.n_bufs, args.repeats)))
        del case
        torch.cuda.empty_cache()
    return dict(mode="cuda", device=torch.cuda.get_device_name(), check=check, sweep=sweep,
                best_configs=best, rows=[asdict(r) for r in table],
                triton=triton.__version__)


def run_cpu(args) -> dict:
    """Smoke test: the torch reference timed on tiny sizes; the Triton interpreter checked bit for bit."""
    from mxa2a.quant import dequantize_fp8, dequantize_mxfp4, quantize_fp8, quantize_mxfp4

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    check = check_bit_exact(x, "triton") if interp else {}
    if interp:
        print("bit-exact Triton (interpreter) vs reference at 8 x 256 bf16: "
              + ", ".join(f"{k} {'OK' if v else 'MISMATCH'}" for k, v in check.items()))
    table: list[Row] = []
    for kib in (64, 256):
        rows = (kib * 1024) // (2 * args.hidden_cpu)
        x = torch.randn(rows, args.hidden_cpu, dtype=torch.bfloat16)
        n = x.numel()
        mx, f8 = quantize_mxfp4(x, backend="torch"), quantize_fp8(x, backend="torch")
        y = torch.empty_like(x)
        fns = {"copy": lambda: y.copy_(x),
               "quantize_mxfp4": lambda: quantize_mxfp4(x, backend="torch"),
               "dequantize_mxfp4": lambda: dequantize_mxfp4(mx, backend="torch"),
               "quantize_fp8": lambda: quantize_fp8(x, backend="torch"),
               "dequantize_fp8": lambda: dequantize_fp8(f8, backend="torch")}
        copy_gbps = None
        for kern, fn in fns.items():
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            ms = statistics.median(ts) * 1e3
            gbps = _bytes(kern, n) / ms / 1e6
            copy_gbps = copy_gbps or gbps
            table.append(Row(kern, n * 2 / MiB, _bytes(kern, n), ms, gbps, copy_gbps, 100 * gbps / copy_gbps, ()))
    return dict(mode="cpu-smoke (torch reference; NOT performance figures)", device=platform.processor() or "cpu",
                check=check, sweep=[], best_configs={}, rows=[asdict(r) for r in table])


def print_table(res: dict) -> None:
    print(f"\ncodec throughput on {res['device']} [{res['mode']}], GB/s = (bytes read + written) / time")
    print("time ms = device time per call (bursts of back-to-back calls, host issue hidden); call ms = one call "
          "between two events, the host's issue time included; config = BLOCK_M x BLOCK_K x warps x programs/SM")
    print(f"{'kernel':18s} {'MiB bf16':>9s} {'time ms':>9s} {'GB/s':>9s} {'copy GB/s':>10s} {'% copy':>7s} "
          f"{'call ms':>9s}  config")
    for r in res["rows"]:
        cfg = "x".join(map(str, r["config"])) if r["config"] else "-"
        print(f"{r['kernel']:18s} {r['size_mib']:9.1f} {r['ms']:9.4f} {r['gbps']:9.1f} "
              f"{r['copy_gbps']:10.1f} {r['pct_of_copy']:6.1f}% {r.get('call_ms', 0.0):9.4f}  {cfg}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=7168, help="row length K (multiple of 128)")
    p.add_argument("--min-mib", type=int, default=16)
    p.add_argument("--max-mib", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--sweep", action="store_true", help="try BLOCK_M/BLOCK_K/num_warps configs per kernel")
    p.add_argument("--json", help="write results here")
    p.add_argument("--cpu", action="store_true", help="CPU smoke mode even when CUDA is present")
    p.add_argument("--hidden-cpu", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hidden % 128:
        p.error(f"--hidden must be a multiple of 128, got {args.hidden}")

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    res = run_cuda(args) if cuda else run_cpu(args)
    res.update(torch=torch.__version__, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
               command=" ".join([sys.executable] + sys.argv), hidden=args.hidden if cuda else args.hidden_cpu)
    if "triton" not in res:
        try:
            import triton
            res["triton"] = triton.__version__
        except ImportError:
            res["triton"] = None
    print_table(res)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.json}")
    if any(r.get("mismatch") for r in res["sweep"]):
        sys.exit("bit-exactness check FAILED for a sweep config (see 'MISMATCH' above)")
    if res["check"] and not all(res["check"].values()):
        sys.exit("bit-exactness check FAILED")


if __name__ == "__main__":
    main()
