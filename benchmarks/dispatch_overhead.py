#!/usr/bin/env python3
"""Where the time of an expert-parallel MoE layer goes, phase by phase, for each wire format: dynamic
dispatch (router in the layer, counts exchanged per layer, one host sync) against static dispatch (a
`DispatchPlan` built on the host before the step, no host sync in the layer).

    python benchmarks/dispatch_overhead.py --nproc auto     # every local GPU (2 gloo ranks on CPU)
    torchrun --nproc-per-node 2 benchmarks/dispatch_overhead.py ...   (or mpirun -np 2 python ...)
Default shape (DeepSeek-V2-Lite-like): 8192 tokens per rank, hidden 4096, 64 experts, top-6, expert
width 1408, bf16; a smoke size without a GPU (CPU_SHAPE). Each phase of `PHASES` runs inside
`torch.profiler.record_function("moe/<phase>")` and an NVTX range of the same name, timed by CUDA events
(perf_counter on CPU): median over `--iters`, then the slowest rank. `syncs/layer` counts the host syncs
of forward + backward under `torch.cuda.set_sync_debug_mode("warn")`; `identical`: static and dynamic
outputs are equal bit for bit. Each phase and column: benchmarks/README.md, "dispatch_overhead.py".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede mxa2a imports

import _bench_common as bc  # noqa: E402

PHASES = ("route", "plan", "permute", "dispatch_a2a", "regroup", "experts", "ungroup", "combine_a2a",
          "unpermute")
MOVE_PHASES = tuple(p for p in PHASES if p not in ("route", "experts"))  # disp+comb
MODES = ("dynamic", "static")
WIRES = ("raw", "fp8", "mxfp4")
GPU_SHAPE = dict(tokens=8192, hidden=4096, experts=64, topk=6, d_expert=1408, iters=20, warmup=5)
CPU_SHAPE = dict(tokens=64, hidden=128, experts=8, topk=2, d_expert=64, iters=3, warmup=1)
TARGET_RATIO = 0.7  # issue 7: static disp+comb at most 0.7x the dynamic one


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {choices}, got {text!r}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, help="tokens per rank (default 8192; CPU 64)")
    p.add_argument("--hidden", type=int, help="model width (default 4096; CPU 128)")
    p.add_argument("--experts", type=int, help="routed experts E (default 64; CPU 8)")
    p.add_argument("--topk", type=int, help="experts per token (default 6; CPU 2)")
    p.add_argument("--d-expert", type=int, help="expert SwiGLU width (default 1408; CPU 64)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--wire", type=_csv(WIRES), default=list(WIRES), help="wires (raw = the bf16 bytes)")
    p.add_argument("--mode", type=_csv(MODES), default=list(MODES))
    p.add_argument("-n", "--iters", type=int, help="timed iterations (default 20; CPU 3)")
    p.add_argument("-w", "--warmup", type=int, help="untimed iterations first (default 5; CPU 1)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the wire codec's encode, the packed transfer and the decode alone")
    p.add_argument("--dynamic-check", action="store_true",
                   help="dynamic path: mxa2a.comm's header check on every all-to-all (default: comm's policy, "
                        "checked once per signature, so the two paths differ only by the plan)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every row, the config and the machine description here")
    p.add_argument("--trace", help="directory for torch.profiler Chrome traces (rank 0)")
    p.add_argument("--nproc", help="spawn N local ranks ('auto': every local GPU, or 2 on CPU)")
    return p


# --- timing ------------------------------------------------------------------------------------------

class PhaseTimer:
    """Named phases of one iteration: a record_function range, an NVTX range (CUDA) and a pair of CUDA
    events (perf_counter on CPU). `times()` after the iteration gives microseconds per phase."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        nvtx = torch.cuda.nvtx.range(f"moe/{name}") if self.cuda else contextlib.nullcontext()
        with torch.profiler.record_function(f"moe/{name}"), nvtx:
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                start = time.perf_counter()
            yield
            if self.cuda:
                end.record()
            else:
                end = time.perf_counter()
        self.marks.append((name, start, end))

    def times(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {n: s.elapsed_time(e) * 1e3 for n, s, e in self.marks}
        return {n: (e - s) * 1e6 for n, s, e in self.marks}


def phased_forward(layer, x: torch.Tensor, mode: str, plan, timer: PhaseTimer) -> torch.Tensor:
    """`MoELayer.forward` (no shared experts, no intermediates) split into the phases, using the
    dispatcher's own pieces, so that each phase is timed on exactly the code the layer runs."""
    d = layer.dispatcher
    with timer("route"):
        record = layer.router(x) if mode == "dynamic" else plan.routing()
    with timer("plan"):
        layout = d.plan(record.topk_ids) if mode == "dynamic" else d.layout_from_plan(plan)
    with timer("permute"):
        rows = d.permute(x, layout)
    with timer("dispatch_a2a"):
        rows = d.send(rows, layout)
    with timer("regroup"):
        rows = d.regroup(rows, layout)
    with timer("experts"):
        y_local, _ = layer.experts(rows, layout.tokens_per_local_expert, offsets=layout.expert_offsets)
    with timer("ungroup"):
        y_local = d.ungroup(y_local, layout)
    with timer("combine_a2a"):
        y_local = d.send_back(y_local, layout)
    with timer("unpermute"):
        y = d.unpermute_weighted(y_local, layout, record.gates)
    return y


def count_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Device->host syncs made by `fn` (see the module docstring); None on CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_calls(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> float:
    """Median microseconds of `fn` on this rank (CUDA events, or perf_counter after a barrier)."""
    if device.type == "cuda":
        return bc.median(bc.time_cuda(fn, iters, warmup))
    return bc.median(bc.time_host(fn, iters, warmup, barrier=dist.barrier))


def slowest(values: dict[str, float | None], device: torch.device) -> dict[str, float | None]:
    """Each value's maximum over the ranks (None stays None)."""
    keys = [k for k, v in values.items() if v is not None]
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out = dict(values)
    out.update(zip(keys, t.tolist()))
    return out


# --- one (wire, mode) --------------------------------------------------------------------------------

def measure(args, layer, x: torch.Tensor, probe: torch.Tensor, wire: str, mode: str, ids_host: torch.Tensor,
            gates_host: torch.Tensor, device: torch.device, group) -> tuple[dict[str, Any], torch.Tensor]:
    from mxa2a.moe import DispatchPlan

    E = layer.config.num_experts
    build = lambda: DispatchPlan.build(ids_host, E, group=group, gates=gates_host, device=device)  # noqa: E731
    plan = build() if mode == "static" else None
    kwargs = {"plan": plan} if mode == "static" else {}
    row: dict[str, Any] = {"wire": wire, "mode": mode}

    with torch.no_grad():
        y_layer, _ = layer(x, **kwargs)
    per_iter: dict[str, list[float]] = {p: [] for p in PHASES}
    per_iter["disp+comb"] = []
    for i in range(args.warmup + args.iters):
        if device.type != "cuda":
            dist.barrier()
        timer = PhaseTimer(device)
        y = phased_forward(layer, x, mode, plan, timer)
        if i >= args.warmup:
            times = timer.times()
            for p in PHASES:
                per_iter[p].append(times[p])
            per_iter["disp+comb"].append(sum(times[p] for p in MOVE_PHASES))
        del y
    with torch.no_grad():
        y_phased = phased_forward(layer, x, mode, plan, PhaseTimer(device))
    row["phased_equals_layer"] = bool(torch.equal(y_phased, y_layer))
    values: dict[str, float | None] = {f"{p}_us": bc.median(v) for p, v in per_iter.items()}

    def fwd() -> None:
        layer(x, **kwargs)

    def fwd_bwd() -> None:
        xg = x.detach().requires_grad_(True)
        y, _ = layer(xg, **kwargs)
        y.backward(probe)

    values["layer_fwd_us"] = time_calls(fwd, device, args.iters, args.warmup)
    layer.zero_grad(set_to_none=True)
    values["fwd_bwd_us"] = time_calls(fwd_bwd, device, args.iters, args.warmup)
    layer.zero_grad(set_to_none=True)
    if mode == "static":
        t_plan = []
        for _ in range(args.warmup + args.iters):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            build()
            t_plan.append((time.perf_counter() - t0) * 1e6)
        values["plan_host_us"] = bc.median(t_plan[args.warmup:])
    values = slowest(values, device)
    row.update({k.replace("disp+comb", "disp_comb"): v for k, v in values.items()})
    row["syncs_per_layer"] = count_syncs(fwd_bwd, device)
    layer.zero_grad(set_to_none=True)
    row["plan_syncs_per_step"] = count_syncs(build, device) if mode == "static" else None
    if args.trace:  # every rank runs the steps (they are collectives); rank 0 writes the trace
        with torch.profiler.profile() as prof:
            for _ in range(2):
                fwd_bwd()
                phased_forward(layer, x, mode, plan, PhaseTimer(device))
        if dist.get_rank() == 0:
            os.makedirs(args.trace, exist_ok=True)
            prof.export_chrome_trace(os.path.join(args.trace, f"{wire}_{mode}.json"))
    layer.zero_grad(set_to_none=True)
    return row, y_layer


def breakdown(args, layer, x: torch.Tensor, wire: str, plan, device: torch.device) -> dict[str, float]:
    """The dispatch all-to-all's three parts alone, on the same rows: codec encode of the permuted rows,
    `torch.distributed.all_to_all_single` of the packed bytes, codec decode of the received bytes."""
    from mxa2a.quant.wire import get_codec

    layout = plan.layout
    rows = layer.dispatcher.permute(x, layout).detach().contiguous()
    codec = get_codec(wire)
    rb = codec.row_bytes(x.shape[1], x.dtype)
    packed = torch.empty((rows.shape[0], rb), dtype=torch.uint8, device=device)
    received = torch.empty((layout.num_local_rows, rb), dtype=torch.uint8, device=device)
    out = torch.empty((layout.num_local_rows, x.shape[1]), dtype=x.dtype, device=device)
    enc = time_calls(lambda: codec.encode(rows, packed), device, args.iters, args.warmup)
    xfer = time_calls(lambda: dist.all_to_all_single(received, packed, list(layout.recv_splits),
                                                     list(layout.send_splits)), device, args.iters, args.warmup)
    dec = time_calls(lambda: codec.decode(received, out), device, args.iters, args.warmup)
    if wire == "raw":  # mxa2a sends the rows' own memory: no encode, no decode
        enc = dec = 0.0
    return slowest({"encode_us": enc, "transfer_us": xfer, "decode_us": dec}, device)


# --- output ------------------------------------------------------------------------------------------

def columns(with_breakdown: bool) -> list[bc.Column]:
    cols = [bc.Column("wire", "wire", width=5), bc.Column("mode", "mode", width=7)]
    cols += [bc.Column(f"{p}_us", p if len(p) <= 9 else p.replace("_a2a", "A2A"), "{:.1f}", 9) for p in PHASES]
    cols += [bc.Column("disp_comb_us", "disp+comb", "{:.1f}", 9),
             bc.Column("ratio", "ratio", "{:.2f}x", 6),
             bc.Column("layer_fwd_us", "layer_fwd", "{:.1f}", 9),
             bc.Column("fwd_bwd_us", "fwd+bwd", "{:.1f}", 9),
             bc.Column("syncs_per_layer", "syncs/lyr", "{:d}", 9),
             bc.Column("plan_host_us", "plan_host", "{:.1f}", 9),
             bc.Column("plan_syncs_per_step", "plan_sync", "{:d}", 9),
             bc.Column("identical", "identical", width=9)]
    if with_breakdown:
        cols += [bc.Column("encode_us", "enc", "{:.1f}", 8), bc.Column("transfer_us", "xfer", "{:.1f}", 8),
                 bc.Column("decode_us", "dec", "{:.1f}", 8)]
    return cols


def run(args: argparse.Namespace) -> int:
    from mxa2a.comm import init_distributed
    from mxa2a.moe import MoELayer, MoELayerConfig

    info = init_distributed()
    device = torch.device(info.device)
    shape = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    for key in ("tokens", "hidden", "experts", "topk", "d_expert", "iters", "warmup"):
        if getattr(args, key) is None:
            setattr(args, key, shape[key])
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    group, lead = dist.group.WORLD, info.rank == 0
    machine = bc.machine_description({"link": bc.link_label() if device.type == "cuda" else "gloo over host (CPU)"})
    config = {k: getattr(args, k) for k in ("tokens", "hidden", "experts", "topk", "d_expert", "dtype", "wire",
                                            "mode", "iters", "warmup", "breakdown", "dynamic_check", "seed")}
    config.update(world_size=info.world_size, backend=str(dist.get_backend()), device_type=device.type,
                  target_ratio=TARGET_RATIO)
    cols = columns(args.breakdown)
    if lead:
        print(f"# MoE dispatch overhead: {info.world_size} ranks, {machine['gpu'] or 'CPU'}, "
              f"backend {config['backend']}, torch {machine['torch']}")
        print(f"# {args.tokens} tokens/rank, hidden {args.hidden}, E={args.experts}, top-{args.topk}, "
              f"d_expert {args.d_expert}, {args.dtype}; us, median of {args.iters} (slowest rank); "
              f"ratio = static disp+comb / dynamic disp+comb")
        print(bc.format_header(cols), flush=True)

    rows: list[dict[str, Any]] = []
    progress = bc.Progress(len(args.wire) * len(args.mode), enabled=lead, desc="dispatch")
    for wire in args.wire:
        torch.manual_seed(args.seed)
        cfg = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts,
                             top_k=args.topk, wire=wire, grad_wire="raw",
                             wire_check=True if args.dynamic_check else None)
        full = MoELayer(cfg)  # same weights on every rank; each keeps its experts
        layer = MoELayer(cfg, group=group)
        local = layer.dispatcher.local_experts
        layer.load_state_dict({k: (v[local.start:local.stop] if k.startswith("experts.") else v)
                               for k, v in full.state_dict().items()})
        del full
        layer = layer.to(device, dtype)
        gen = torch.Generator().manual_seed(args.seed + 1 + info.rank)
        x = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype)
        probe = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype)
        with torch.no_grad():
            record = layer.router(x)
        ids_host, gates_host = record.topk_ids.cpu(), record.gates.cpu()
        outputs = {}
        for mode in args.mode:
            progress.step(f"{wire} {mode}")
            row, outputs[mode] = measure(args, layer, x, probe, wire, mode, ids_host, gates_host, device, group)
            if args.breakdown:
                from mxa2a.moe import DispatchPlan
                plan = DispatchPlan.build(ids_host, args.experts, group=group, device=device)
                row.update(breakdown(args, layer, x, wire, plan, device))
            rows.append(row)
        wire_rows = [r for r in rows if r["wire"] == wire]
        same = len(outputs) < 2 or bool(torch.equal(outputs["dynamic"], outputs["static"]))
        flag = torch.tensor([int(same and all(r["phased_equals_layer"] for r in wire_rows))],
                            device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # identical on every rank
        dyn = next((r for r in wire_rows if r["mode"] == "dynamic"), None)
        for r in wire_rows:
            r["identical"] = bool(flag.item())
            r["ratio"] = (r["disp_comb_us"] / dyn["disp_comb_us"]) if dyn and dyn["disp_comb_us"] > 0 else None
            if lead:
                progress.clear()
                print(bc.format_row(cols, r), flush=True)
        del layer, x, probe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    if lead and device.type != "cuda":
        print("# CPU run: a smoke test of the script; the times say nothing about GPUs")
    if lead and device.type == "cuda":
        for r in rows:
            if r["mode"] == "static" and r["ratio"] is not None:
                ok = r["ratio"] <= TARGET_RATIO and r["syncs_per_layer"] in (0, None)
                print(f"# {r['wire']}: static disp+comb = {r['ratio']:.2f}x dynamic, "
                      f"{r['syncs_per_layer'] if r['syncs_per_layer'] is not None else 'n/a'} host syncs per "
                      f"layer (target <= {TARGET_RATIO}x and 0): {'met' if ok else 'NOT met'}")
    if lead:
        if args.json:
            bc.write_json(args.json, {"benchmark": "dispatch_overhead", "machine": machine, "config": config,
                                      "rows": rows})
            print(f"# wrote {args.json}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all(r["identical"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return bc.run_or_spawn(parser, args, run)


if __name__ == "__main__":
    sys.exit(main())
