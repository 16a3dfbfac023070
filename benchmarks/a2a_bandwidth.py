#!/usr/bin/env python3
"""All-to-all bandwidth in the manner of nccl-tests: `mxa2a.comm.all_to_all_single` with each wire
format against the plain bf16 exchange, over a sweep of sizes, with equal or MoE-like uneven splits.

Launch (every rank runs this file):
    mpirun -np 8 python benchmarks/a2a_bandwidth.py -b 1M -e 1G -f 2        # one or more nodes
    torchrun --nproc-per-node 8 benchmarks/a2a_bandwidth.py ...
    python benchmarks/a2a_bandwidth.py --nproc auto                         # spawns every local GPU
                                                                            # (2 gloo ranks on CPU)
What one row means (one row per splits mode, size and wire):
- size: logical bytes each rank sends, `rows * hidden * 2` (the bf16 payload), the same for every
  wire so that rows compare directly. `-b/-e` give nominal sizes; rows = max(1, size // (2*hidden)),
  and the table shows the actual bytes of those rows.
- time: one whole call (encode + transfer + decode) timed by CUDA events (perf_counter after a barrier
  on CPU), median over `-n` iterations after `-w` warm-up calls; the slowest rank's median.
- algbw = size / time, busbw = algbw * (n-1)/n (GB/s = 1e9 B/s, as nccl-tests).
- speedup = time of the baseline row / time of this row, same size and splits, same run. The baseline
  is `nccl` (plain `torch.distributed.all_to_all_single` of the bf16 input, no mxa2a; labelled with the
  process group's backend, i.e. `gloo` on a CPU, where `--wire gloo` also names it) when measured,
  else `raw` (mxa2a moving the bf16 bytes unchanged, with its format check policy: by default once per
  call signature; `--format-check` every call, `--no-format-check` never), else `bf16`.
- max_rel_err (`--check`, on unless `--no-check`): for each received row,
  max_j |out - exact| / max_j |exact| (exact = the plain `torch.distributed` exchange of the same bf16
  input); the largest over rows and ranks. The output is filled with NaN before the checked call, so a
  row that is lost reads as `inf`; so do NaN or Inf in the output. nccl and raw must give exactly 0,
  and the script exits 1 when any row breaks its bound. Bounds from FORMATS.md: fp8 (E4M3, power-of-two tile
  scales) <= 2^-4, mxfp4 with rceil scales <= 0.2 (an element of 5 * 2^e rounds to 4 * 2^e), with
  floor scales <= 0.25 (a block maximum just below 8 * 2^e saturates to 6 * 2^e).
- `--breakdown`: encode, transfer and decode timed separately (each median, slowest rank): the wire
  codec of `mxa2a.quant.wire` alone, `torch.distributed.all_to_all_single` on the packed bytes alone,
  and the decode alone; `sum` = their total. A whole-call time below `sum` is overlap won by `--chunks`;
  above it is per-call overhead (the format check, launches).

MoE splits (`--splits moe`): each rank routes ceil(rows / topk) tokens top-`topk` over `experts`
experts (sampling without replacement, expert popularity Zipf(`--zipf`) over a fixed random order of
experts, seed `--seed`), experts spread evenly over ranks; the rows sent to a rank are the
assignments to its experts, the first `rows` assignments in all, so every rank sends exactly the same
bytes as with equal splits but ranks receive unequal amounts (`recv_imb` = max / mean received rows).

Output: the table on stdout (rank 0), a progress counter on stderr, `--json` with every row and the
machine description, `--plot` a PNG of algbw and speedup vs size per wire.

On a CPU the figures are functional, not performance: the codecs are the torch reference (the Triton
kernels run only on GPUs) and the baseline is gloo; the header says so.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels are only run through the interpreter without a GPU; must precede mxa2a imports.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import _bench_common as bc  # noqa: E402

# "nccl" is plain `torch.distributed.all_to_all_single` on the bf16 input, no mxa2a at all: the baseline
# that speedups refer to when it is measured. "raw" and "bf16" are mxa2a calls that move the same bytes
# (plus mxa2a's per-call format check), so raw vs nccl shows what the wrapper itself costs.
WIRES = ("nccl", "raw", "bf16", "fp8", "mxfp4")
BASELINE_ALIASES = {"gloo": "nccl"}  # --wire gloo: the same plain torch.distributed baseline, on CPU
BASELINE_WIRES = ("nccl", "raw", "bf16")  # in order of preference as the speedup baseline
SPLIT_MODES = ("equal", "moe")
# Largest relative error per row that each wire may show (see the module docstring). MXFP4 with
# `floor` scales saturates block maxima above 6 * 2^e (up to 8 * 2^e), hence its larger bound.
ERROR_BOUNDS = {"nccl": 0.0, "raw": 0.0, "bf16": 0.0, "fp8": 2.0 ** -4, "mxfp4": 0.2, "mxfp4/floor": 0.25}


def error_bound(wire: str, scale_mode: str) -> float:
    return ERROR_BOUNDS["mxfp4/floor" if wire == "mxfp4" and scale_mode == "floor" else wire]


# The torch reference codecs that run on CPU are slow, so a CPU run sweeps few, small sizes.
GPU_DEFAULTS = dict(minbytes=1 << 20, maxbytes=1 << 30, stepfactor=2.0, iters=20, warmup=5)
CPU_DEFAULTS = dict(minbytes=64 << 10, maxbytes=1 << 20, stepfactor=4.0, iters=3, warmup=1)
# Slack for the fp32 arithmetic of the error itself (0.2 is not a binary fraction).
ERROR_SLACK = 1e-6


@dataclass(frozen=True)
class MoESplitConfig:
    """How `--splits moe` routes tokens: top-`topk` of `experts`, Zipf(`zipf`) expert popularity."""
    experts: int = 256
    topk: int = 8
    zipf: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class SplitPlan:
    """Rows of one exchange: what this rank sends to / receives from each rank, and the whole
    `[src][dst]` matrix (rows) for the record."""
    rows: int
    send_splits: list[int]
    recv_splits: list[int]
    matrix: list[list[int]]

    @property
    def recv_rows(self) -> int:
        return sum(self.recv_splits)

    @property
    def recv_imbalance(self) -> float:
        received = [sum(col) for col in zip(*self.matrix)]
        mean = sum(received) / len(received)
        return max(received) / mean if mean > 0 else 1.0


# --- arguments ---------------------------------------------------------------------------------------

def _csv(choices: tuple[str, ...], name: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        items = [BASELINE_ALIASES.get(t, t) if choices is WIRES else t for t in items]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"{name} must be a comma-separated list of {', '.join(choices)}; got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="All-to-all bandwidth of mxa2a.comm per wire format (nccl-tests style).",
        epilog="Defaults: on GPU -b 1M -e 1G -f 2 -n 20 -w 5; on CPU -b 64K -e 1M -f 4 -n 3 -w 1.")
    p.add_argument("-b", "--minbytes", type=bc.size_arg,
                   help="smallest logical bf16 bytes per rank (1M, 256K, ...)")
    p.add_argument("-e", "--maxbytes", type=bc.size_arg, help="largest logical bf16 bytes per rank")
    p.add_argument("-f", "--stepfactor", type=float, help="size multiplication factor")
    p.add_argument("-n", "--iters", type=int, help="timed iterations per row")
    p.add_argument("-w", "--warmup_iters", type=int, help="untimed warm-up calls per row")
    p.add_argument("--wire", type=_csv(WIRES, "--wire"), default=["nccl", "raw", "fp8", "mxfp4"],
                   help="comma separated: nccl (plain torch.distributed bf16, the speedup baseline; "
                        "labelled gloo, and also named so, on a CPU), "
                        "raw (mxa2a moving the bf16 bytes), bf16, fp8, mxfp4")
    p.add_argument("--hidden", type=int, default=7168, help="row length H (7168, DeepSeek-V3)")
    p.add_argument("--splits", type=_csv(SPLIT_MODES, "--splits"), default=["equal"],
                   help="equal, moe, or both comma separated")
    p.add_argument("--chunks", type=int, default=None, help="passed to all_to_all_single (default: its own)")
    p.add_argument("--format-check", action=argparse.BooleanOptionalAction, default=None,
                   help="mxa2a's header check that all ranks agree on the format: by default mxa2a's own "
                        "policy (MXA2A_CHECK, else once per call signature); --format-check passes "
                        "check=True (every call: a header exchange and a host sync), --no-format-check "
                        "check=False (never)")
    p.add_argument("--scale-mode", default="rceil", choices=("rceil", "floor"), help="MXFP4 scale rule")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the error against the exact exchange (on by default, as in nccl-tests)")
    p.add_argument("--breakdown", action="store_true", help="also time encode / transfer / decode apart")
    p.add_argument("--json", metavar="PATH", help="write every row and the machine description here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of algbw and speedup vs size")
    p.add_argument("--nproc", help="spawn N local ranks ('auto': every local GPU, or 2 on CPU)")
    p.add_argument("--experts", type=int, default=256, help="moe splits: number of experts (256)")
    p.add_argument("--topk", type=int, default=8, help="moe splits: experts per token (8)")
    p.add_argument("--zipf", type=float, default=1.0, help="moe splits: Zipf exponent of expert popularity")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the routing")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("iters", "warmup_iters", "chunks"):
        value = getattr(args, name)
        if value is not None and value < (1 if name != "warmup_iters" else 0):
            p.error(f"--{name} must be {'>= 0' if name == 'warmup_iters' else '>= 1'}, got {value}")
    if args.stepfactor is not None and args.stepfactor <= 1:
        p.error(f"--stepfactor must be > 1, got {args.stepfactor}")
    if args.minbytes and args.maxbytes and args.maxbytes < args.minbytes:
        p.error(f"--maxbytes ({args.maxbytes}) must be >= --minbytes ({args.minbytes})")
    if args.hidden < 1:
        p.error(f"--hidden must be positive, got {args.hidden}")
    for wire, block in (("mxfp4", 32), ("fp8", 128)):
        if wire in args.wire and args.hidden % block:
            p.error(f"--hidden must be a multiple of {block} for wire {wire}, got {args.hidden}")
    if not 1 <= args.topk <= args.experts:
        p.error(f"--topk must be in [1, --experts={args.experts}], got {args.topk}")
    if args.zipf < 0:
        p.error(f"--zipf must be >= 0, got {args.zipf}")


# --- splits ------------------------------------------------------------------------------------------

def send_splits_for(mode: str, rows: int, world: int, rank: int, moe: MoESplitConfig) -> list[int]:
    """Rows this rank sends to each rank: `rows` in all."""
    if mode == "equal":
        base, extra = divmod(rows, world)
        return [base + (1 if d < extra else 0) for d in range(world)]
    g = torch.Generator().manual_seed(moe.seed)
    order = torch.randperm(moe.experts, generator=g)
    popularity = torch.empty(moe.experts, dtype=torch.float64)
    popularity[order] = torch.arange(1, moe.experts + 1, dtype=torch.float64).pow(-moe.zipf)
    tokens = -(-rows // moe.topk)
    g_rank = torch.Generator().manual_seed(moe.seed + 1 + rank)
    experts = torch.multinomial(popularity.float().expand(tokens, moe.experts), moe.topk,
                                replacement=False, generator=g_rank).flatten()[:rows]
    dest = experts * world // moe.experts  # experts spread evenly: rank d owns a contiguous slice
    return torch.bincount(dest, minlength=world).tolist()


def make_plan(mode: str, rows: int, world: int, rank: int, moe: MoESplitConfig,
              device: torch.device) -> SplitPlan:
    send = send_splits_for(mode, rows, world, rank, moe)
    mine = torch.tensor(send, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    matrix = [t.tolist() for t in gathered]
    return SplitPlan(rows=rows, send_splits=send, recv_splits=[matrix[s][rank] for s in range(world)],
                     matrix=matrix)


# --- measurement -------------------------------------------------------------------------------------

def max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def max_row_rel_error(out: torch.Tensor, ref: torch.Tensor, chunk_rows: int = 8192) -> float:
    """max over rows of max|out - ref| / max|ref| (module docstring); inf for non-finite output, a
    nonzero where the exact row is all zero, or an unwritten (NaN-filled) row."""
    worst = 0.0
    for s in range(0, ref.shape[0], chunk_rows):
        o = out[s:s + chunk_rows].float().flatten(1)
        r = ref[s:s + chunk_rows].float().flatten(1)
        err = (o - r).abs().amax(dim=1)
        scale = r.abs().amax(dim=1)
        rel = torch.where(scale > 0, err / scale.clamp_min(torch.finfo(torch.float32).tiny),
                          torch.where(err == 0, torch.zeros_like(err), torch.full_like(err, math.inf)))
        rel = torch.nan_to_num(rel, nan=math.inf, posinf=math.inf)
        if rel.numel():
            worst = max(worst, float(rel.max().item()))
    return worst


class Timer:
    """Times a zero-argument call on this rank and returns the slowest rank's median in us."""

    def __init__(self, device: torch.device, iters: int, warmup: int) -> None:
        self.device, self.iters, self.warmup = device, iters, warmup

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, list[float]]:
        if self.device.type == "cuda":
            times = bc.time_cuda(fn, self.iters, self.warmup)
        else:
            times = bc.time_host(fn, self.iters, self.warmup, barrier=dist.barrier)
        return max_over_ranks(bc.median(times), self.device), times


def measure_breakdown(wire: str, inp: torch.Tensor, out: torch.Tensor, plan: SplitPlan,
                      scale_mode: str, timer: Timer) -> dict[str, float]:
    """Encode, transfer of the packed rows, decode: each timed alone (slowest rank's median, us).
    The baseline wires move the bf16 input as it is, so their encode and decode are 0. `out` is
    overwritten."""
    if wire in BASELINE_WIRES:
        transfer, _ = timer(lambda: dist.all_to_all_single(out, inp, plan.recv_splits, plan.send_splits))
        return {"encode_us": 0.0, "transfer_us": transfer, "decode_us": 0.0, "serial_sum_us": transfer}
    from mxa2a.quant.wire import get_codec

    codec = get_codec(wire, scale_mode=scale_mode)
    row_bytes = codec.row_bytes(inp.shape[-1], inp.dtype)
    packed = torch.empty((inp.shape[0], row_bytes), dtype=torch.uint8, device=inp.device)
    received = torch.empty((out.shape[0], row_bytes), dtype=torch.uint8, device=inp.device)
    encode, _ = timer(lambda: codec.encode(inp, packed))
    transfer, _ = timer(lambda: dist.all_to_all_single(received, packed, plan.recv_splits, plan.send_splits))
    decode, _ = timer(lambda: codec.decode(received, out))
    return {"encode_us": encode, "transfer_us": transfer, "decode_us": decode,
            "serial_sum_us": encode + transfer + decode}


def wire_bytes_per_row(wire: str, hidden: int) -> int:
    """Payload bytes of one bf16 row on the wire (COMM.md, "Wire layout"), headers not counted."""
    from mxa2a.quant.wire import get_codec

    return get_codec("raw" if wire == "nccl" else wire).row_bytes(hidden, torch.bfloat16)


# --- output ------------------------------------------------------------------------------------------

def table_columns(breakdown: bool) -> list[bc.Column]:
    cols = [bc.Column("splits", "splits", width=6),
            bc.Column("bytes", "size(B)", "{:d}", 12),
            bc.Column("rows", "rows", "{:d}", 7),
            bc.Column("wire", "wire", width=5),
            bc.Column("time_us", "time(us)", "{:.1f}", 10),
            bc.Column("algbw_GBps", "algbw(GB/s)", "{:.2f}", 11),
            bc.Column("busbw_GBps", "busbw(GB/s)", "{:.2f}", 11),
            bc.Column("speedup", "speedup", "{:.2f}x", 7),
            bc.Column("max_rel_err", "max_rel_err", "{:.3e}", 11),
            bc.Column("recv_imbalance", "recv_imb", "{:.2f}", 8)]
    if breakdown:
        cols += [bc.Column("encode_us", "enc(us)", "{:.1f}", 9),
                 bc.Column("transfer_us", "xfer(us)", "{:.1f}", 9),
                 bc.Column("decode_us", "dec(us)", "{:.1f}", 9),
                 bc.Column("serial_sum_us", "sum(us)", "{:.1f}", 9)]
    return cols


def write_plot(path: str, rows: list[dict[str, Any]], title: str, baseline: str | None) -> str | None:
    """PNG of algbw (and speedup over `baseline`) vs size per wire; returns a reason when it cannot plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    fig, (ax_bw, ax_sp) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"equal": "-", "moe": "--"}
    colors = {w: f"C{i}" for i, w in enumerate(dict.fromkeys(r["wire"] for r in rows))}
    for (mode, wire) in dict.fromkeys((r["splits"], r["wire"]) for r in rows):
        sel = [r for r in rows if r["splits"] == mode and r["wire"] == wire]
        x = [r["bytes"] for r in sel]
        kw = dict(linestyle=styles[mode], color=colors[wire], marker="o", ms=3, label=f"{wire} ({mode})")
        ax_bw.plot(x, [r["algbw_GBps"] for r in sel], **kw)
        if wire != baseline and any(r["speedup"] is not None for r in sel):
            ax_sp.plot(x, [math.nan if r["speedup"] is None else r["speedup"] for r in sel], **kw)
    ax_sp.axhline(1.0, color="gray", linewidth=1, label=f"{baseline} bf16 = 1")
    ticks = sorted({r["nominal_bytes"] for r in rows})
    for ax, ylabel in ((ax_bw, "algbw (GB/s) = logical bf16 bytes / time"),
                       (ax_sp, f"speedup over {baseline} bf16 (same run)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [bc.format_size(t) for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("logical bytes per rank")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --- the sweep ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """Everything one rank needs to measure rows: the resolved flags and the process group."""
    rank: int
    world: int
    device: torch.device
    sizes: list[int]
    hidden: int
    wires: list[str]
    scale_mode: str
    chunks: int | None
    format_check: bool | None
    check: bool
    breakdown: bool
    moe: MoESplitConfig
    seed: int
    timer: Timer
    baseline_label: str = "nccl"  # what the plain torch.distributed rows are called: the group's backend

    def label(self, wire: str) -> str:
        return self.baseline_label if wire == "nccl" else wire


def measure_size(sw: Sweep, mode: str, nominal: int, call_a2a: Callable[..., Any], progress: bc.Progress,
                 on_row: Callable[[dict[str, Any]], None], failures: list[str]) -> None:
    """Rows of every wire at one size: input and output allocated once and shared by the wires."""
    n_rows = max(1, nominal // (2 * sw.hidden))
    nbytes = n_rows * sw.hidden * 2
    plan = make_plan(mode, n_rows, sw.world, sw.rank, sw.moe, sw.device)
    max_recv = int(max_over_ranks(plan.recv_rows, sw.device))
    g = torch.Generator(device=sw.device).manual_seed(sw.seed * 1000003 + sw.rank)
    inp = torch.randn((n_rows, sw.hidden), generator=g, device=sw.device, dtype=torch.bfloat16)
    out = torch.empty((plan.recv_rows, sw.hidden), dtype=torch.bfloat16, device=sw.device)
    ref = None
    if sw.check:
        ref = torch.empty_like(out)
        dist.all_to_all_single(ref, inp, plan.recv_splits, plan.send_splits)
    chunk_kw = {} if sw.chunks is None else {"chunks": sw.chunks}
    if sw.format_check is not None:
        chunk_kw["check"] = sw.format_check
    baseline, base_time = next((w for w in sw.wires if w in BASELINE_WIRES), None), None
    for wire in sw.wires:
        progress.step(f"{mode} {bc.format_size(nominal)} {sw.label(wire)}")

        def call(wire: str = wire) -> None:
            if wire == "nccl":
                dist.all_to_all_single(out, inp, plan.recv_splits, plan.send_splits)
            else:
                call_a2a(out, inp, plan.recv_splits, plan.send_splits, wire=wire, scale_mode=sw.scale_mode,
                         **chunk_kw)

        time_us, _ = sw.timer(call)
        algbw = nbytes / (time_us * 1e-6) / 1e9 if time_us > 0 else math.inf
        if wire == baseline:
            base_time = time_us
        row: dict[str, Any] = {
            "splits": mode, "nominal_bytes": nominal, "bytes": nbytes, "rows": n_rows,
            "wire": sw.label(wire),
            "wire_bytes": n_rows * wire_bytes_per_row(wire, sw.hidden), "time_us": time_us,
            "algbw_GBps": algbw, "busbw_GBps": algbw * (sw.world - 1) / sw.world,
            "speedup": base_time / time_us if base_time is not None and time_us > 0 else None,
            "max_rel_err": None, "recv_rows_max": max_recv, "recv_imbalance": plan.recv_imbalance,
            "send_splits_matrix": plan.matrix}
        if ref is not None:
            out.fill_(math.nan)  # a row the call does not write reads as an infinite error
            call()
            err = max_over_ranks(max_row_rel_error(out, ref), sw.device)
            row["max_rel_err"] = err
            bound = error_bound(wire, sw.scale_mode)
            if not err <= bound * (1 + ERROR_SLACK):
                failures.append(f"{mode} {nbytes} B {sw.label(wire)}: max_rel_err {err:.3e} > bound {bound:.3e}")
        if sw.breakdown:
            row.update(measure_breakdown(wire, inp, out, plan, sw.scale_mode, sw.timer))
        on_row(row)
    del inp, out, ref
    if sw.device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> int:
    from mxa2a.comm import all_to_all_single, init_distributed

    info = init_distributed()
    device = torch.device(info.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    minbytes = args.minbytes or defaults["minbytes"]
    stepfactor = args.stepfactor or defaults["stepfactor"]
    iters = args.iters or defaults["iters"]
    warmup = defaults["warmup"] if args.warmup_iters is None else args.warmup_iters
    sw = Sweep(rank=info.rank, world=info.world_size, device=device,
               # the baseline runs first at each size, so every later row has its speedup
               wires=sorted(args.wire, key=lambda w: BASELINE_WIRES.index(w) if w in BASELINE_WIRES
                            else len(BASELINE_WIRES)),
               sizes=bc.size_sweep(minbytes, args.maxbytes or max(defaults["maxbytes"], minbytes), stepfactor),
               hidden=args.hidden, scale_mode=args.scale_mode, chunks=args.chunks,
               format_check=args.format_check,
               check=args.check, breakdown=args.breakdown,
               moe=MoESplitConfig(args.experts, args.topk, args.zipf, args.seed), seed=args.seed,
               timer=Timer(device, iters, warmup),
               baseline_label="nccl" if device.type == "cuda" else str(dist.get_backend()))
    lead = sw.rank == 0

    hosts: list[Any] = [None] * sw.world
    dist.all_gather_object(hosts, os.uname().nodename)
    link = bc.link_label() if device.type == "cuda" else "gloo over host (CPU)"
    machine = bc.machine_description({"hosts": sorted(set(hosts)), "link": link})
    config = {"world_size": sw.world, "backend": dist.get_backend(), "device_type": device.type,
              "launcher": "--nproc" if os.environ.get(bc.SPAWNED_ENV) == "1" else bc.launcher(),
              "hidden": sw.hidden, "dtype": "bfloat16", "splits": args.splits,
              "wires": [sw.label(w) for w in sw.wires],
              "speedup_baseline": next((sw.label(w) for w in sw.wires if w in BASELINE_WIRES), None),
              "sizes": sw.sizes, "stepfactor": stepfactor, "iters": iters, "warmup": warmup,
              "chunks": sw.chunks, "format_check": sw.format_check, "scale_mode": sw.scale_mode, "check": sw.check,
              "breakdown": sw.breakdown, "moe": asdict(sw.moe),
              "error_bounds": {sw.label(w): error_bound(w, sw.scale_mode) for w in sw.wires},
              "figures": "performance" if device.type == "cuda" else "functional"}
    columns = table_columns(sw.breakdown)
    if lead:
        gpu = f"{machine['gpu_count']}x {machine['gpu']}" if machine["gpu"] else "no GPU"
        print(f"# mxa2a all_to_all_single: {sw.world} ranks on {len(machine['hosts'])} host(s), {gpu}, "
              f"backend {config['backend']}, "
              + (f"NCCL {machine['nccl']}, " if machine["nccl"] is not None else "") + f"torch {machine['torch']}")
        print(f"# link: {machine['link']}; env {machine['env'] or '{}'}")
        print(f"# hidden {sw.hidden} bf16, iters {iters}, warmup {warmup}, chunks {sw.chunks}, "
              f"format check {'default' if sw.format_check is None else sw.format_check}, "
              f"check {sw.check}; time = slowest rank's median; GB/s = 1e9 B/s; "
              f"speedup over {config['speedup_baseline']}")
        if device.type != "cuda":
            print(f"# CPU run: functional figures, not performance. The codecs are the torch reference "
                  f"(the Triton kernels run on GPUs) and the baseline is plain torch.distributed over "
                  f"{sw.baseline_label}, so speedups below 1x here say nothing about a GPU run.")
        print(bc.format_header(columns), flush=True)

    progress = bc.Progress(len(args.splits) * len(sw.sizes) * len(sw.wires), enabled=lead, desc="a2a")
    rows: list[dict[str, Any]] = []
    failures: list[str] = []

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        if lead:
            progress.clear()
            print(bc.format_row(columns, row), flush=True)

    for mode in args.splits:
        for nominal in sw.sizes:
            measure_size(sw, mode, nominal, all_to_all_single, progress, on_row, failures)
    progress.close()
    if lead:
        for msg in failures:
            print(f"# CHECK FAILED: {msg}", flush=True)
        if args.check and not failures:
            print("# check: every row within its bound "
                  f"({', '.join(f'{w} <= {b:g}' for w, b in config['error_bounds'].items())})", flush=True)
        if args.json:
            bc.write_json(args.json, {"benchmark": "a2a_bandwidth", "machine": machine,
                                      "config": config, "rows": rows, "check_failures": failures})
            print(f"# wrote {args.json}", flush=True)
        if args.plot:
            title = (f"mxa2a all-to-all, {sw.world} ranks, {machine['gpu'] or 'CPU/gloo'}, "
                     f"hidden {args.hidden}, link: {machine['link']}")
            reason = write_plot(args.plot, rows, title, config["speedup_baseline"])
            print(f"# plot skipped: {reason}" if reason else f"# wrote {args.plot}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return bc.run_or_spawn(parser, args, run)


if __name__ == "__main__":
    sys.exit(main())
