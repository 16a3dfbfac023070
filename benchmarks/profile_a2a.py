#!/usr/bin/env python3
"""Where the time of one compressed all-to-all goes: whole-call timings per (wire, chunks) and a
torch.profiler view of a few calls on rank 0.

    python benchmarks/profile_a2a.py --nproc 2 --size 1G --wire nccl,mxfp4 --chunks 1,2,4,8 [--check first]
    torchrun --nproc-per-node 8 benchmarks/profile_a2a.py ...   (or mpirun; CPU: --nproc 2 --size 64K)
Per setting ("nccl" = plain torch.distributed bf16, once): `time`, the whole call by CUDA events, calls back
to back, median of `-n`, slowest rank (algbw = logical bf16 bytes / time); `host`, host microseconds to
issue one queued call (host >= time: launch-bound, not bandwidth-bound); unless `--no-profile`, rank 0's
top ops by device and CPU time over `--profile-calls` calls and, per call, GPU kernel time by kind
(encode / decode / nccl / other), busy time and the overlap won. Every rank sends `size // (2 * hidden)`
bf16 rows (rounded down to a multiple of the world size), split equally.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede mxa2a imports

import _bench_common as bc  # noqa: E402

WIRES = ("nccl", "raw", "bf16", "fp8", "mxfp4")
CHECKS = ("first", "always", "never")


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--chunks must be a comma-separated list of ints >= 1, "
                                         f"got {text!r}")
    return list(dict.fromkeys(values))


def _csv_wires(text: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items or any(t not in WIRES for t in items):
        raise argparse.ArgumentTypeError(f"--wire must be a comma-separated list of {', '.join(WIRES)}, "
                                         f"got {text!r}")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time and profile mxa2a.comm.all_to_all_single per wire and chunks.")
    p.add_argument("--size", type=bc.size_arg,
                   help="logical bf16 bytes each rank sends (default 1G on GPU, 64K on CPU)")
    p.add_argument("--hidden", type=int, default=7168, help="row length H (7168)")
    p.add_argument("--wire", type=_csv_wires, default=["mxfp4"],
                   help="comma separated: nccl, raw, bf16, fp8, mxfp4")
    p.add_argument("--chunks", type=_csv_ints, default=[1], help="comma separated chunk counts (1,2,4,8)")
    p.add_argument("--check", choices=CHECKS,
                   help="format check policy (default: mxa2a's, MXA2A_CHECK or first)")
    p.add_argument("-n", "--iters", type=int, default=10, help="timed calls per setting (10)")
    p.add_argument("-w", "--warmup", type=int, default=3, help="untimed warm-up calls per setting (3)")
    p.add_argument("--profile-calls", type=int, default=3, help="calls under torch.profiler (3)")
    p.add_argument("--rows", type=int, default=25, help="rows of each profiler table (25)")
    p.add_argument("--no-profile", action="store_true", help="timings only")
    p.add_argument("--trace", metavar="DIR", help="also write a Chrome trace per setting (rank 0) here")
    p.add_argument("--json", metavar="PATH", help="write the timings, profiles and machine description")
    p.add_argument("--nproc", help="spawn N local ranks ('auto': every local GPU, or 2 on CPU)")
    return p


# --- measurement -------------------------------------------------------------------------------------

def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def time_call(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> dict[str, Any]:
    """Whole-call times (us) and the host time to issue one call while calls queue back to back."""
    if device.type == "cuda":
        times = bc.time_cuda(fn, iters, warmup)
    else:
        times = bc.time_host(fn, iters, warmup, barrier=dist.barrier)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    host_us = (time.perf_counter() - t0) * 1e6 / iters
    _sync(device)
    return {"time_us": _max_over_ranks(bc.median(times), device), "times_us": times,
            "host_us": _max_over_ranks(host_us, device)}


def _kind_of(kernel: str) -> str:
    k = kernel.lower()
    if "nccl" in k:
        return "nccl"
    if "dequant" in k or "decode" in k or "mxfp4_to_fp8" in k:
        return "decode"
    if "quant" in k or "encode" in k or "fp8_to_mxfp4" in k:
        return "encode"
    return "other"


def timeline_summary(prof, calls: int) -> dict[str, float] | None:
    """Per call: device time by kind, the union of kernel intervals (GPU busy), and kernel sum - busy
    (time won by overlap); None when the profile holds no device events (CPU runs)."""
    from torch.autograd import DeviceType

    spans = []
    for e in prof.events():
        if getattr(e, "device_type", None) == DeviceType.CUDA:
            spans.append((e.time_range.start, e.time_range.end, _kind_of(e.name)))
    if not spans:
        return None
    spans.sort()
    by_kind: dict[str, float] = {}
    busy, cur_start, cur_end = 0.0, spans[0][0], spans[0][1]
    for start, end, kind in spans:
        by_kind[kind] = by_kind.get(kind, 0.0) + (end - start)
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    total = sum(by_kind.values())
    out = {f"{k}_us": v / calls for k, v in sorted(by_kind.items())}
    out.update(kernel_sum_us=total / calls, gpu_busy_us=busy / calls, overlap_us=(total - busy) / calls,
               window_us=(spans[-1][1] - spans[0][0]) / calls)
    return out


def _averages(prof, sort_by: str, rows: int) -> list[dict[str, Any]]:
    items = sorted(prof.key_averages(), key=lambda a: getattr(a, sort_by, 0.0), reverse=True)[:rows]
    return [{"name": a.key, "count": a.count, "cpu_total_us": a.cpu_time_total,
             "self_cpu_us": a.self_cpu_time_total, "device_total_us": getattr(a, "device_time_total", 0.0),
             "self_device_us": getattr(a, "self_device_time_total", 0.0)} for a in items]


def profile_calls(fn: Callable[[], Any], device: torch.device, rank: int, calls: int, rows: int, label: str,
                  trace_dir: str | None) -> dict[str, Any] | None:
    """torch.profiler over `calls` calls on rank 0; the other ranks make the same calls. Prints there."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    if rank != 0:
        for _ in range(calls):
            fn()
        _sync(device)
        return None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    dist.barrier()
    cuda = device.type == "cuda"
    print(f"\n=== {label}: torch.profiler, {calls} calls on rank 0 ===", flush=True)
    if cuda:
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows), flush=True)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows), flush=True)
    summary = timeline_summary(prof, calls) if cuda else None
    if summary:
        print("GPU per call (us): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in summary.items()), flush=True)
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        path = os.path.join(trace_dir, label.replace(" ", "_").replace("=", "") + ".json")
        prof.export_chrome_trace(path)
        print(f"trace: {path}", flush=True)
    return {"timeline": summary,
            "top_device": _averages(prof, "self_device_time_total", rows) if cuda else [],
            "top_cpu": _averages(prof, "cpu_time_total", rows)}


# --- the run -----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from mxa2a.comm import all_to_all_single, init_distributed

    info = init_distributed()
    device = torch.device(info.device)
    rank, world = info.rank, info.world_size
    size = args.size or ((1 << 30) if device.type == "cuda" else (64 << 10))
    rows = max(world, size // (2 * args.hidden) // world * world)
    nbytes = rows * args.hidden * 2
    g = torch.Generator(device=device).manual_seed(1234 + rank)
    inp = torch.randn((rows, args.hidden), generator=g, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(inp)
    check_kw = {} if args.check is None else {"check": args.check}

    machine = bc.machine_description({"link": bc.link_label() if device.type == "cuda" else "gloo (CPU)"})
    if rank == 0:
        gpu = f"{machine['gpu_count']}x {machine['gpu']}" if machine["gpu"] else "no GPU"
        print(f"# profile_a2a: {world} ranks, {gpu}, backend {dist.get_backend()}, NCCL {machine['nccl']}, "
              f"torch {machine['torch']}; {bc.format_size(nbytes)} ({rows} rows x {args.hidden} bf16) "
              f"per rank, equal splits; check {args.check or 'default'}; link {machine['link']}; "
              f"env {machine['env'] or '{}'}", flush=True)

    settings = [(w, None if w == "nccl" else c) for w in args.wire
                for c in ([1] if w == "nccl" else args.chunks)]
    results: list[dict[str, Any]] = []
    for wire, chunks in settings:
        def call(wire: str = wire, chunks: int | None = chunks) -> None:
            if wire == "nccl":
                dist.all_to_all_single(out, inp)
            else:
                all_to_all_single(out, inp, wire=wire, chunks=chunks, **check_kw)

        label = "nccl bf16" if wire == "nccl" else f"{wire} chunks={chunks}"
        row: dict[str, Any] = {"wire": wire, "chunks": chunks, "check": args.check, "bytes": nbytes,
                               "rows": rows}
        row.update(time_call(call, device, args.iters, args.warmup))
        row["algbw_GBps"] = nbytes / (row["time_us"] * 1e-6) / 1e9
        if rank == 0:
            print(f"# {label:22s} time {row['time_us']:9.1f} us  host {row['host_us']:8.1f} us  "
                  f"algbw {row['algbw_GBps']:7.2f} GB/s", flush=True)
        if not args.no_profile and args.profile_calls > 0:
            row["profile"] = profile_calls(call, device, rank, args.profile_calls, args.rows, label,
                                           args.trace)
        results.append(row)

    if rank == 0:
        base = next((r["time_us"] for r in results if r["wire"] == "nccl"), None)
        cols = [bc.Column("wire", "wire", width=6), bc.Column("chunks", "chunks", "{}", 6),
                bc.Column("time_us", "time(us)", "{:.1f}", 10),
                bc.Column("host_us", "host(us)", "{:.1f}", 10),
                bc.Column("algbw_GBps", "algbw(GB/s)", "{:.2f}", 11),
                bc.Column("speedup", "vs nccl", "{:.2f}x", 8),
                bc.Column("gpu_busy_us", "gpu_busy", "{:.1f}", 9),
                bc.Column("overlap_us", "overlap", "{:.1f}", 9)]
        table = []
        for r in results:
            tl = (r.get("profile") or {}).get("timeline") or {}
            table.append({**r, "speedup": base / r["time_us"] if base else None,
                          "gpu_busy_us": tl.get("gpu_busy_us"), "overlap_us": tl.get("overlap_us")})
        print("\n# summary (time = slowest rank's median; host = host time to issue one call; gpu_busy and "
              "overlap per call from the profile)")
        print(bc.format_table(cols, table), flush=True)
        if args.json:
            config = {k: v for k, v in vars(args).items() if k != "nproc"}
            config.update(world_size=world, size=nbytes)
            bc.write_json(args.json, {"benchmark": "profile_a2a", "machine": machine, "config": config,
                                      "rows": results})
            print(f"# wrote {args.json}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.profile_calls < 0 or args.hidden < 1:
        parser.error("--iters must be >= 1, --warmup and --profile-calls >= 0, --hidden >= 1")
    return bc.run_or_spawn(parser, args, run)


if __name__ == "__main__":
    sys.exit(main())
