#!/usr/bin/env python3
"""Does the recipe train as well as BF16? The MoE language model of examples/train_tiny_moe.py (byte
vocabulary) on the bytes of Python's standard library sources, one device, EP size 1, per variant:

    bf16            recipe="bf16"
    fp8             recipe="fp8"          (FP8 experts, FP8 dispatch, x and z kept in FP8)
    fp8-mxfp4       recipe="fp8-mxfp4"    (MXFP4 dispatch and kept activations, BF16 combine)
    mxfp4-combine   fp8-mxfp4 with combine_wire="mxfp4"
    fp8-grads       fp8-mxfp4 with both gradient wires "fp8"
    mxfp4-grads     fp8-mxfp4 with both gradient wires "mxfp4"
With EP size 1 there is no all-to-all, so every wire is applied where it would be, as the codec's
quantize-dequantize (`emulate_wire=True`; the dispatch in the FP8 domain: FP8 -> MXFP4 -> FP8).
Every variant starts from the same weights (seed) and reads the same batches (seed); fp32 master
weights, bf16 autocast on CUDA, AdamW with warmup and cosine decay. Reported: final validation loss
(mean of the last `--final-evals` evaluations), its difference to bf16, wall time; JSON and a PNG.
`--jobs N` trains N variants at once in separate processes (on one GPU: the small model leaves it
mostly idle between kernel launches). `--time-limit-s` stops a variant early (its steps are reported).
    python benchmarks/convergence.py --json out.json --png out.png
    python benchmarks/convergence.py --quick        # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import torch  # noqa: E402

import _bench_common as bc  # noqa: E402
from mxa2a.moe import MoELayerConfig, MoEModel, MoEModelConfig  # noqa: E402
from train_tiny_moe import batches, load_corpus  # noqa: E402

VARIANTS = {
    "bf16": dict(recipe="bf16"),
    "fp8": dict(recipe="fp8"),
    "fp8-mxfp4": dict(recipe="fp8-mxfp4"),
    "mxfp4-combine": dict(recipe="fp8-mxfp4", combine_wire="mxfp4"),
    "fp8-grads": dict(recipe="fp8-mxfp4", grad_wire="fp8", combine_grad_wire="fp8"),
    "mxfp4-grads": dict(recipe="fp8-mxfp4", grad_wire="mxfp4", combine_grad_wire="mxfp4"),
}
QUICK = dict(layers=1, hidden=128, d_expert=128, experts=4, top_k=2, heads=2, seq_len=32, batch=4,
             steps=20, eval_every=5, eval_batches=2, final_evals=2, data_mb=0.3, jobs=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--d-expert", type=int, default=256)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--final-evals", type=int, default=5)
    p.add_argument("--data-mb", type=float, default=32.0, help="MB of stdlib source (all .py files)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=0, help="variants trained at once (0: all on CUDA, 1 on CPU)")
    p.add_argument("--time-limit-s", type=float, default=0.0, help="stop each variant after this (0: none)")
    args = bc.parse_with_quick(p, argv, QUICK)
    args.variants = bc.choice_list(p, args.variants, VARIANTS, "variants")
    return args


def model_config(args, variant: str) -> MoEModelConfig:
    moe = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts, top_k=args.top_k,
                         n_shared=args.shared, emulate_wire=True, **VARIANTS[variant])
    return MoEModelConfig(moe=moe, vocab_size=256, seq_len=args.seq_len, n_layers=args.layers, n_heads=args.heads)


def lr_at(args, step: int) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args, variant: str) -> dict:
    """One variant, start to end; returns its curve and final validation loss."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(1)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else contextlib.nullcontext())
    data = load_corpus(args.data_mb, recursive=True)
    split = int(data.numel() * 0.98)
    val_stream = batches(data[split:], args.batch, args.seq_len, 10_000)
    val = [tuple(t.to(dev) for t in next(val_stream)) for _ in range(args.eval_batches)]
    torch.manual_seed(args.seed)
    with dev:
        model = MoEModel(model_config(args, variant))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    stream = batches(data[:split], args.batch, args.seq_len, args.seed)
    curve, t0 = [], time.perf_counter()
    for step in range(args.steps):
        ids, targets = (t.to(dev, non_blocking=True) for t in next(stream))
        for group in opt.param_groups:
            group["lr"] = lr_at(args, step)
        with autocast:
            loss = model(ids, targets).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = step + 1 == args.steps
        out_of_time = args.time_limit_s and time.perf_counter() - t0 > args.time_limit_s
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            curve.append((step + 1, evaluate(model, val, autocast)))
            print(f"{variant} step {step + 1}: val {curve[-1][1]:.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            if not math.isfinite(curve[-1][1]) or out_of_time:
                break
    tail = [v for _, v in curve[-args.final_evals:]]
    return {"variant": variant, "config": VARIANTS[variant], "steps": curve[-1][0], "curve": curve,
            "final_val": sum(tail) / len(tail), "wall_s": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model: MoEModel, val: list, autocast) -> float:
    model.eval()
    with autocast:
        losses = [model(ids, targets).lm_loss.float() for ids, targets in val]
    model.train()
    return torch.stack(losses).mean().item()


def _worker(args, variant: str, results) -> None:
    try:
        results.put((variant, train(args, variant)))
    except BaseException as exc:  # report to the parent instead of dying silently
        results.put((variant, {"variant": variant, "error": repr(exc)}))


def run_all(args) -> dict[str, dict]:
    jobs = args.jobs or (len(args.variants) if torch.cuda.is_available() else 1)
    if jobs <= 1:
        return {v: train(args, v) for v in args.variants}
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results, out, pending, procs = ctx.Queue(), {}, list(args.variants), {}
    while len(out) < len(args.variants):
        while pending and len(procs) - len(out) < jobs:
            variant = pending.pop(0)
            procs[variant] = ctx.Process(target=_worker, args=(args, variant, results))
            procs[variant].start()
        try:
            variant, result = results.get(timeout=30)
        except queue.Empty:  # a worker that died without reporting (killed, out of memory)
            for v, proc in procs.items():
                if v not in out and not proc.is_alive():
                    out[v] = {"variant": v, "error": f"process exited with code {proc.exitcode}"}
            continue
        out[variant] = result
        procs[variant].join()
        print(f"{variant}: {result.get('final_val', result.get('error'))}", flush=True)
    return {v: out[v] for v in args.variants}


COLUMNS = [bc.Column("variant", "variant", "{}", 14), bc.Column("steps", "steps", "{}", 6),
           bc.Column("final_val", "final val", "{:.4f}", 10), bc.Column("vs_bf16", "vs bf16 %", "{:+.2f}", 10),
           bc.Column("wall_s", "wall s", "{:.0f}", 7), bc.Column("error", "error", "{}", 8)]


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    finals = run_all(args)
    base = finals.get("bf16", {}).get("final_val")
    rows = []
    for v, f in finals.items():
        row = dict(f)
        if base and "final_val" in f:
            row["vs_bf16"] = 100 * (f["final_val"] - base) / base
        rows.append(row)
    shape = {k: getattr(args, k) for k in ("steps", "layers", "hidden", "d_expert", "experts", "top_k",
                                           "shared", "heads", "seq_len", "batch", "lr", "data_mb", "seed")}
    print(f"# MoE LM on stdlib bytes, EP size 1 (wires emulated), {shape}; {time.perf_counter() - t0:.0f} s")
    print(bc.format_table(COLUMNS, rows))
    if args.json:
        bc.write_json(args.json, {"machine": bc.machine_description(), "shape": shape, "runs": finals})
        print(f"wrote {args.json}")
    if args.png:
        plot(finals, args.png)
    return 0 if all("error" not in f for f in finals.values()) else 1


def plot(finals: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v, f in finals.items():
        if f.get("curve"):
            xs, ys = zip(*f["curve"])
            ax.plot(xs, ys, label=f"{v} ({f['final_val']:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    tail = [y for f in finals.values() for _, y in f.get("curve", [])[len(f.get("curve", [])) // 3:]]
    if tail:
        ax.set_ylim(min(tail) - 0.05, max(tail) + 0.1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
